//! Used by bench/run.sh (not a test): starts a real kube-apiserver, a namespace with the chart's
//! ServiceAccount, least-privilege Role and empty target Secret `ls-token`, and the PAT Secret `ls-pat`
//! holding `$LSTR_BENCH_PAT`; writes `KUBECONFIG=…` (the ServiceAccount's identity) and `NAMESPACE=…`
//! to `$LSTR_BENCH_KUBE_ENV`, then keeps everything running until `$LSTR_BENCH_KUBE_STOP` exists (at
//! most 10 minutes).
//!
//! ```sh
//! cargo build -p ls-token-refresher-e2e --bin bench-kube-env
//! LSTR_BENCH_PAT=… LSTR_BENCH_KUBE_ENV=/tmp/kube.env LSTR_BENCH_KUBE_STOP=/tmp/kube.stop \
//!     "$CARGO_TARGET_DIR/debug/bench-kube-env"
//! ```

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use ls_token_refresher_e2e::{chart, kube_api::create_secret, kube_apiserver::ApiServer};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let var = |name: &str| {
        std::env::var_os(name).unwrap_or_else(|| {
            eprintln!(
                "bench-kube-env: {name} is not set (see the comment at the top of this file)"
            );
            std::process::exit(2)
        })
    };
    let pat = var("LSTR_BENCH_PAT")
        .into_string()
        .expect("LSTR_BENCH_PAT is UTF-8");
    let (env_file, stop_file) = (var("LSTR_BENCH_KUBE_ENV"), var("LSTR_BENCH_KUBE_STOP"));
    let server = ApiServer::start().await;
    let ns = server.create_namespace("bench").await;
    let admin = server.admin_client().await;
    let identity = chart::install_rbac(&server, &ns, "ls-pat", "ls-token").await;
    create_secret(&admin, &ns, "ls-pat", &[("pat", &pat)]).await;
    let kubeconfig = identity.kubeconfig;
    let tmp = PathBuf::from(&env_file).with_extension("tmp");
    std::fs::write(
        &tmp,
        format!("KUBECONFIG={}\nNAMESPACE={ns}\n", kubeconfig.display()),
    )
    .unwrap();
    std::fs::rename(&tmp, &env_file).unwrap();
    eprintln!(
        "bench: kube-apiserver {} namespace {ns} ready",
        server.url()
    );
    let t0 = Instant::now();
    while !Path::new(&stop_file).exists() && t0.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let target = Api::<Secret>::namespaced(admin, &ns)
        .get_opt("ls-token")
        .await
        .ok()
        .flatten();
    let (apiserver, etcd) = server.rss_kib();
    eprintln!(
        "bench: target Secret ls-token {} (keys: {:?}); apiserver RSS {apiserver} KiB, etcd {etcd} KiB",
        if target.is_some() { "present" } else { "MISSING" },
        target
            .and_then(|s| s.data)
            .map(|d| d.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    );
}
