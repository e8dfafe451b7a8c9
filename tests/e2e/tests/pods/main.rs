//! Real pods on a real kubelet (tests/support/node: kubelet 1.20 + containerd + the control plane),
//! from what users install: the Helm chart in Secret mode, deploy/classic-sidecar.yaml,
//! deploy/job-once.yaml and deploy/proxy-sidecar.yaml, with our image built without Docker from the
//! binary the other tests run.
//! Label Studio runs as a process on 127.0.0.1 and the pods reach it through the node's loopback
//! (`hostNetwork: true`).
//!
//! One test binary, one scenario group per module, one node for all: a node costs ~10 s and ~650 MB,
//! and cargo runs test binaries one after another but the tests inside one in parallel, so the
//! scenarios (several minutes each: real token lifetimes, the kubelet's real sync period) overlap on a
//! single node instead of adding up. Each test has its own namespace, its own Label Studio and its
//! own host ports (see [`ls_token_refresher_e2e::pods::Scope`]).
//!
//! - [`chart`]: `helm install` → Ready pod with the chart's securityContext as the kernel applied it →
//!   target Secret current and accepted; the kubelet's Secret propagation delay measured against
//!   `--propagation-margin`; readiness through a Label Studio outage; then `helm test` on that install
//!   (passes with the good PAT, fails naming the reason once Label Studio revoked it).
//! - [`classic_sidecar`]: a consumer under another uid reads the token per request across three
//!   lifetimes; pod deletion stops the sidecar with exit 0, files intact until then.
//! - [`controller`]: the chart in controller mode; a tenant's token resource → consumer pods in
//!   another namespace read accepted tokens across lifetimes from its Secret.
//! - [`job_once`]: the Job completes and its task used the token.
//! - [`restart`]: a killed sidecar restarts without the consumer ever reading an expired token.
//! - [`proxy_sidecar`]: the stock ML backend server (its own image, built offline) behind the
//!   sidecar in proxy mode downloads every task image Label Studio asks it about across three
//!   lifetimes, with no credential in its container; pointed at Label Studio itself it gets 401.
//! - here: the image against its Dockerfile.

mod chart;
mod classic_sidecar;
mod controller;
mod job_once;
mod proxy_sidecar;
mod restart;

use std::time::Duration;

use ls_token_refresher_e2e::{
    free_port, image,
    label_studio::{LabelStudio, LsOptions},
    pods::{
        self, adapt_deploy, make_consumer, object_mut, set_port, Logs, NodeSite, Sample, Scope,
    },
};
use serde_json::Value;

/// Label Studio with access tokens living `ttl_secs`, and a PAT of its admin.
async fn label_studio(ttl_secs: u64) -> (LabelStudio, String) {
    let ls = LabelStudio::start(LsOptions {
        access_ttl_secs: ttl_secs,
        ..LsOptions::default()
    })
    .await;
    let pat = ls.api().create_pat().await;
    (ls, pat)
}

/// `helm install RELEASE` of the chart as the release packages it ([`chart::packaged`]:
/// deploy/package-chart.sh, which deploy/release.sh runs) into `scope`'s namespace with our image
/// and `sets`, waiting for it (`helm --wait`); returns the release's one Ready pod.
async fn helm_install(
    scope: &Scope,
    release: &str,
    sets: &[String],
) -> k8s_openapi::api::core::v1::Pod {
    let (registry, repository, tag) = scope.node.image().parts();
    let mut all = vec![
        format!("image.registry={registry}"),
        format!("image.repository={repository}"),
        format!("image.tag={tag}"),
    ];
    all.extend_from_slice(sets);
    let package = ls_token_refresher_e2e::chart::packaged()
        .to_str()
        .expect("UTF-8 temp path");
    let mut args = vec![
        "install",
        release,
        package,
        "--namespace",
        scope.ns(),
        "--wait",
        "--timeout",
        "180s",
    ];
    for s in &all {
        args.extend(["--set", s.as_str()]);
    }
    let out = ls_token_refresher_e2e::tools::helm(&args, Some(&scope.node.kubeconfig())).await;
    assert!(
        out.status.success(),
        "helm install failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        scope.diagnose().await
    );
    let selector = format!("app.kubernetes.io/instance={release}");
    scope
        .wait_ready(&selector, 1, Duration::from_secs(60))
        .await
        .remove(0)
}

/// The PAT Secret the deploy/ manifests read (`label-studio-pat`, key `pat`).
const DEPLOY_PAT_SECRET: &str = "label-studio-pat";
/// The classic sidecar's Deployment, pod label, app and sidecar containers (deploy/classic-sidecar.yaml).
const CLASSIC: &str = "ml-backend-classic";
const CLASSIC_APP: &str = "ml-backend";
const SIDECAR: &str = "ls-token-refresher";

/// Access-token lifetime for the classic sidecar's tests: three lifetimes take three minutes. The
/// refresher refreshes when 30-36 s are left (`--min-lead` 30 s beats 0.66 of the lifetime; up to
/// 6 s of jitter).
const CLASSIC_TTL: u64 = 60;

/// deploy/classic-sidecar.yaml running, Ready, with the busybox [`pods::CONSUMER`] as its app.
struct Classic {
    /// Its Label Studio (tokens live [`CLASSIC_TTL`]), running as long as the pod needs it.
    _ls: LabelStudio,
    /// Its namespace on the shared node.
    scope: Scope,
    /// The pod's name.
    pod: String,
    /// The app's log, followed from its start.
    consumer: Logs,
}

/// Starts Label Studio and the classic sidecar's pod in a namespace `<prefix>-…`; the app calls Label
/// Studio every `every` seconds and serves the probes deploy/ gives it on a free port.
async fn classic_sidecar(prefix: &str, every: &str) -> Classic {
    let ((ls, pat), scope) = tokio::join!(label_studio(CLASSIC_TTL), Scope::new(prefix));
    scope
        .create_secret(DEPLOY_PAT_SECRET, &[("pat", &pat)])
        .await;
    let (admin, http) = (free_port(), free_port());
    let mut objects = scope.manifest("classic-sidecar.yaml").await;
    let site = NodeSite {
        namespace: scope.ns(),
        image: &scope.node.image().reference,
        ls_url: &ls.url(),
        admin_port: admin,
        proxy_port: None,
    };
    let livez = format!("http://127.0.0.1:{admin}/livez");
    let http_port = http.to_string();
    let busybox = scope.node.busybox().to_string();
    adapt_deploy(&mut objects, &site, |c: &mut Value| {
        make_consumer(
            c,
            &busybox,
            &ls.url(),
            &[
                ("SAMPLE_ON", "each"),
                ("SAMPLE_EVERY", every),
                ("SIDECAR_LIVEZ", &livez),
                ("HTTP_PORT", &http_port),
            ],
        );
        set_port(c, "http", http);
    });
    // The manifest's own objects, all of them (the NetworkPolicy and Service are accepted, not enforced:
    // no CNI here enforces policies, no kube-proxy serves ClusterIPs).
    assert_eq!(
        object_mut(&mut objects, "Deployment")["metadata"]["name"],
        CLASSIC
    );
    scope.apply(&objects).await;
    let selector = format!("app.kubernetes.io/name={CLASSIC}");
    let pod = scope
        .wait_ready(&selector, 1, Duration::from_secs(180))
        .await
        .remove(0);
    let pod = pods::name(&pod).to_string();
    let consumer = scope.follow(&pod, CLASSIC_APP);
    Classic {
        _ls: ls,
        scope,
        pod,
        consumer,
    }
}

/// Every call got a 200 with a token that had not expired when it was read.
fn assert_every_call_succeeded(samples: &[Sample], lines: &[String]) {
    let bad: Vec<_> = samples
        .iter()
        .filter(|s| !s.ok() || s.expires_at.is_none_or(|e| e <= s.unix))
        .collect();
    assert!(
        bad.is_empty() && !samples.is_empty(),
        "{} of {} calls failed or read an expired token: {bad:?}\n{}",
        bad.len(),
        samples.len(),
        lines.join("\n")
    );
}

#[test]
fn image_matches_the_dockerfile() {
    let dir = tempfile::tempdir().unwrap();
    let image = image::build(dir.path());
    let (ok, report) = image::check_against_dockerfile(&image);
    assert!(ok, "deploy/image/check.py:\n{report}");
    let summary = report
        .lines()
        .find(|l| l.starts_with("image-check:"))
        .unwrap_or_default();
    assert!(
        summary.ends_with(" 0 failed") && !summary.starts_with("image-check: 0 passed"),
        "{report}"
    );
}
