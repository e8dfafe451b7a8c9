//! deploy/proxy-sidecar.yaml as pods: the stock ML backend server (label-studio-ml 1.0.9 with the test
//! model `tests/support/consumers/ml_backend/model.py`, in an image built offline by
//! [`image::ml_backend`]) beside our sidecar in proxy mode, in a JWT-only organization (legacy tokens
//! off) whose access tokens live [`TTL`] seconds. Label Studio, told about the backend through its API,
//! asks it for predictions again and again for more than three token lifetimes; every prediction
//! carries the sha256 of the task's uploaded image, which the backend could only get by downloading
//! it through the proxy. Label Studio's own access log shows no 401 in that time, the proxy no 4xx,
//! 5xx or upstream error, and the backend's process holds no credential (its environment has only
//! the placeholder key; the PAT's volume is not mounted in it). The control: the same image with
//! `LABEL_STUDIO_URL` pointing at Label Studio itself gets 401 on the download.
//!
//! What the test changes in the shipped file (read by kubectl as a user's `kubectl apply -f` would),
//! and nothing else:
//! - every object: the namespace (the test's own instead of `label-studio`);
//! - the pod: `hostNetwork: true` (the node has no pod network: tests/support/node/README.md), which is
//!   why every port below moves to a free one on the node's loopback;
//! - the sidecar `ls-token-refresher`: the image (ours, built from the binary under test), `LS_URL`
//!   (the test's Label Studio on 127.0.0.1), `LS_ADMIN_ADDR` 0.0.0.0:9417 → 127.0.0.1:<free> with its
//!   `ls-admin` container port, and the port of `LS_PROXY_ADDR` 127.0.0.1:9418 → 127.0.0.1:<free>;
//! - the backend `ml-backend`: the image (no registry here: the stock 1.0.9 server instead of
//!   `heartexlabs/label-studio-ml-backend:yolo-master`), args `--host 127.0.0.1 --port <free>` (the
//!   stock `_wsgi.py` options; the image's default is `--host 0.0.0.0 --port 9090`) with its `http`
//!   container port, which its probes name, and `LABEL_STUDIO_URL`, which follows the proxy's port.
//!
//! Everything else stays as shipped: the placeholder key, `MODEL_DIR` and `HOME`, both
//! securityContexts, resources, probes, volumes, the Service and the NetworkPolicy (accepted, not
//! enforced: no kube-proxy, no policy engine on this node; Label Studio reaches the backend on the
//! node's loopback).
//!
//! The test's own client of Label Studio (`ml_backend/driver.py`, label-studio-sdk 2.1.2, standing for
//! the user who clicks "retrieve predictions") goes through an [`AuthProxy`] of its own on the host:
//! the SDK given the PAT would refresh only once its access token has expired, and any request sent
//! in the last milliseconds of a token would be a 401 that is not the backend's.

use std::time::{Duration, Instant};

use ls_token_refresher_e2e::{
    auth_proxy::AuthProxy,
    fault_suite::SUCCESS,
    free_port, image,
    label_studio::{LabelStudio, LsOptions},
    log_scan::assert_no_secrets,
    ls_api::http_client,
    pods::{
        self, adapt_deploy, assert_hardened, container_mut, container_status, env, object_mut,
        set_env, set_port, NodeSite, Scope,
    },
    process,
    refresher::{metric_sum, metric_value},
    stock_clients::{self, PLACEHOLDER},
};
use serde_json::{json, Value};

use crate::{DEPLOY_PAT_SECRET, SIDECAR};

/// Access-token lifetime: three lifetimes take three minutes. The sidecar runs with the shipped
/// defaults and refreshes when 30-36 s are left (`--min-lead` 30 s beats 0.66 of 60 s).
const TTL: u64 = 60;
/// The shipped file's Deployment (and pod label) and its backend container.
const DEPLOYMENT: &str = "ml-backend-proxy";
const BACKEND: &str = "ml-backend";
/// Where the sidecar mounts the PAT Secret (the chart's fixed path).
const PAT_MOUNT: &str = "/etc/ls-token-refresher/pat";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_sidecar_serves_the_stock_ml_backend_without_a_credential_in_it() {
    let t0 = Instant::now();
    let (ls, scope, ml_image) = tokio::join!(
        LabelStudio::start(LsOptions {
            access_ttl_secs: TTL,
            // The backend's URL is on 127.0.0.1 (in a cluster: a private Service address).
            extra_env: [
                ("ML_BLOCK_LOCAL_IP", "false"),
                ("SSRF_PROTECTION_ENABLED", "false")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .to_vec(),
            ..LsOptions::default()
        }),
        Scope::new("proxy-sidecar"),
        async {
            let t = Instant::now();
            let image = tokio::task::spawn_blocking(image::ml_backend)
                .await
                .unwrap();
            (image, t.elapsed())
        },
    );
    let (ml_image, built_in) = ml_image;
    assert_eq!(
        ls.api().org_tokens().await,
        (true, false),
        "the organization must accept JWTs only (legacy tokens off)"
    );
    let t_import = Instant::now();
    tokio::task::block_in_place(|| scope.node.import(&[&ml_image.tar]));
    let imported_in = t_import.elapsed();
    let pat = ls.api().create_pat().await;
    scope
        .create_secret(DEPLOY_PAT_SECRET, &[("pat", &pat)])
        .await;

    // The shipped file, adapted (see the module doc).
    let (admin, proxy_port, backend_port) = (free_port(), free_port(), free_port());
    let mut objects = scope.manifest("proxy-sidecar.yaml").await;
    let deployment = object_mut(&mut objects, "Deployment");
    assert_eq!(deployment["metadata"]["name"], DEPLOYMENT);
    // The manifest's contract: the backend talks to Label Studio through the sidecar's proxy.
    let shipped_proxy = env(container_mut(deployment, SIDECAR), "LS_PROXY_ADDR")
        .expect("the sidecar serves the proxy")
        .to_string();
    assert_eq!(
        env(container_mut(deployment, BACKEND), "LABEL_STUDIO_URL"),
        Some(format!("http://{shipped_proxy}").as_str())
    );
    let site = NodeSite {
        namespace: scope.ns(),
        image: &scope.node.image().reference,
        ls_url: &ls.url(),
        admin_port: admin,
        proxy_port: Some(proxy_port),
    };
    let proxy_url = format!("http://127.0.0.1:{proxy_port}");
    adapt_deploy(&mut objects, &site, |c: &mut Value| {
        assert_eq!(c["name"], BACKEND);
        assert!(c.get("args").is_none() && c.get("command").is_none());
        c["image"] = json!(ml_image.reference);
        c["args"] = json!(["--host", "127.0.0.1", "--port", backend_port.to_string()]);
        set_port(c, "http", backend_port);
        set_env(c, "LABEL_STUDIO_URL", &proxy_url);
    });
    scope.apply(&objects).await;
    let selector = format!("app.kubernetes.io/name={DEPLOYMENT}");
    let pod = scope
        .wait_ready(&selector, 1, Duration::from_secs(180))
        .await
        .remove(0);
    let ready_in = t0.elapsed();
    let pod_name = pods::name(&pod).to_string();

    // Who holds what, as the kernel sees it. The sidecar: 65532, hardened, the PAT mounted.
    let sidecar_pid = assert_hardened(&scope.node, &pod, SIDECAR, 65532, 65532);
    let pat_mount = process::mounts(sidecar_pid)
        .unwrap()
        .into_iter()
        .find(|(_, _, at)| at == PAT_MOUNT)
        .expect("the sidecar has the PAT volume");
    // The backend: the pod's user 10001 with the shipped securityContext, the placeholder as its only
    // key, nothing of the PAT or of any token in its environment, and the PAT's volume (its tmpfs)
    // nowhere among its mounts.
    let backend_pid = assert_hardened(&scope.node, &pod, BACKEND, 10001, 10001);
    let environ = process::environ(backend_pid).expect("the backend's environment");
    assert!(
        environ.contains(&format!("LABEL_STUDIO_API_KEY={PLACEHOLDER}"))
            && environ.contains(&format!("LABEL_STUDIO_URL={proxy_url}")),
        "{environ:?}"
    );
    assert!(
        !environ
            .iter()
            .any(|v| v.contains(&pat) || v.contains("eyJ")),
        "the backend's environment holds the PAT or a JWT"
    );
    let backend_mounts = process::mounts(backend_pid).unwrap();
    assert!(
        !backend_mounts.iter().any(
            |(dev, root, at)| (dev, root) == (&pat_mount.0, &pat_mount.1)
                || at.starts_with("/etc/ls-token-refresher")
        ),
        "the PAT's volume {pat_mount:?} is mounted in the backend: {backend_mounts:?}"
    );

    // Label Studio asks the backend for predictions for more than three lifetimes.
    let tmp = tempfile::tempdir().unwrap();
    let driver_proxy = AuthProxy::start("proxy", &ls.url(), &pat, tmp.path(), "driver", &[]).await;
    let metrics = || async {
        let url = format!("http://127.0.0.1:{admin}/metrics");
        let r = http_client()
            .get(url)
            .send()
            .await
            .expect("sidecar /metrics");
        r.text().await.unwrap()
    };
    let series = |text: &str, s: &str| metric_value(text, s).unwrap_or(0.0);
    let before = metrics().await;
    let log_from = ls_log_len(&ls);
    let backend_url = format!("http://127.0.0.1:{backend_port}");
    let span = Duration::from_secs(3 * TTL + 10);
    let s = stock_clients::ml_driver(
        &driver_proxy.url(),
        &backend_url,
        &tmp.path().join("home"),
        span,
        &[],
    )
    .await;
    let after = metrics().await;
    let window = ls_requests(&ls, log_from);
    s.assert_clean("the driver");
    let (predictions, interactive) = (s.num("predictions_verified"), s.num("interactive_verified"));
    let refreshes = series(&after, SUCCESS) - series(&before, SUCCESS);
    let proxied = |code: &str| {
        let name = format!("ls_token_refresher_proxy_requests_total{{code=\"{code}\"}}");
        series(&after, &name) - series(&before, &name)
    };
    let upstream_errors = metric_sum(&after, "ls_token_refresher_proxy_upstream_errors_total{");
    let downloads = window
        .iter()
        .filter(|(m, path, code)| m == "GET" && path.starts_with("/data/upload/") && *code == 200)
        .count();
    let unauthorized: Vec<_> = window.iter().filter(|(_, _, code)| *code == 401).collect();
    eprintln!(
        "proxy sidecar: image {:.1} s, import {:.1} s, pod Ready {:.1} s after the start; {} s of \
         predictions: {predictions} retrieved + {interactive} interactive, all with the image's sha256; \
         {refreshes} refreshes; through the proxy 2xx {} 4xx {} 5xx {}, upstream errors {upstream_errors}; \
         Label Studio served {downloads} upload downloads, {} 401s",
        built_in.as_secs_f64(),
        imported_in.as_secs_f64(),
        ready_in.as_secs_f64(),
        s.json["elapsed_s"],
        proxied("2xx"),
        proxied("4xx"),
        proxied("5xx"),
        unauthorized.len()
    );
    assert!(
        s.json["elapsed_s"].as_f64().unwrap_or(0.0) >= (3 * TTL) as f64,
        "{}",
        s.brief()
    );
    assert!(predictions >= 3 && interactive >= 3, "{}", s.brief());
    assert!(
        refreshes >= 3.0,
        "only {refreshes} refreshes while the driver ran"
    );
    // Every download went through the proxy and was accepted: Label Studio refused nothing in the
    // window, served at least one upload per verified prediction, and each through the sidecar's proxy
    // (the backend's only requests to Label Studio; the driver downloads nothing).
    assert!(unauthorized.is_empty(), "{unauthorized:?}");
    assert!(
        downloads as u64 >= predictions + interactive,
        "{downloads} downloads for {} predictions",
        predictions + interactive
    );
    assert_eq!(proxied("2xx"), downloads as f64);
    assert_eq!(
        (proxied("4xx"), proxied("5xx"), upstream_errors),
        (0.0, 0.0, 0.0)
    );
    let sidecar_log = scope
        .node
        .kubectl_ok(&["-n", scope.ns(), "logs", &pod_name, "-c", SIDECAR])
        .await;
    assert_no_secrets(&sidecar_log, &[&pat]);
    // Still the same containers: nothing restarted along the way.
    let pod = scope.pod(&pod_name).await;
    for c in [SIDECAR, BACKEND] {
        let st = container_status(&pod, c).expect("container status");
        assert_eq!(st.restart_count, 0, "{c} restarted: {st:?}");
    }

    // Control: the same image, pointed at Label Studio itself, in a pod of its own (no sidecar, no
    // PAT): its download is refused.
    let direct_port = free_port();
    let mut direct = container_mut(object_mut(&mut objects, "Deployment"), BACKEND).clone();
    direct["args"] = json!(["--host", "127.0.0.1", "--port", direct_port.to_string()]);
    set_port(&mut direct, "http", direct_port);
    set_env(&mut direct, "LABEL_STUDIO_URL", &ls.url());
    let template = &object_mut(&mut objects, "Deployment")["spec"]["template"];
    let control = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ml-backend-direct", "namespace": scope.ns(),
                     "labels": {"app.kubernetes.io/name": "ml-backend-direct"}},
        "spec": {
            "hostNetwork": true,
            "automountServiceAccountToken": false,
            "securityContext": template["spec"]["securityContext"],
            "containers": [direct],
            "volumes": template["spec"]["volumes"].as_array().unwrap().iter()
                .filter(|v| v.get("secret").is_none()).cloned().collect::<Vec<_>>(),
        },
    });
    scope.apply(&[control]).await;
    scope
        .wait_ready(
            "app.kubernetes.io/name=ml-backend-direct",
            1,
            Duration::from_secs(120),
        )
        .await;
    let log_from = ls_log_len(&ls);
    stock_clients::assert_ml_download_refused(
        &driver_proxy.url(),
        &format!("http://127.0.0.1:{direct_port}"),
        &tmp.path().join("home-direct"),
    )
    .await;
    let refused = ls_requests(&ls, log_from)
        .into_iter()
        .filter(|(m, path, code)| m == "GET" && path.starts_with("/data/upload/") && *code == 401)
        .count();
    assert!(
        refused >= 1,
        "Label Studio's log shows no refused download (the 401 count above could not fail)"
    );
    eprintln!(
        "proxy sidecar: control refused ({refused} download(s) answered 401); test wall time {:.0} s",
        t0.elapsed().as_secs_f64()
    );
}

/// The length of Label Studio's log now (a window's start for [`ls_requests`]).
fn ls_log_len(ls: &LabelStudio) -> usize {
    std::fs::read(ls.log_path()).map_or(0, |b| b.len())
}

/// `(method, path, status)` of every request Label Studio logged after byte `from` of its log. Its
/// development server logs `[time] [django.server…] [INFO] "GET /path HTTP/1.1" 200 1234`, each line
/// twice in this file: a line counts once (two downloads differ in path: every upload has its own
/// name).
fn ls_requests(ls: &LabelStudio, from: usize) -> Vec<(String, String, u16)> {
    let log = std::fs::read(ls.log_path()).unwrap_or_default();
    let text = String::from_utf8_lossy(&log[from.min(log.len())..]).into_owned();
    let lines: std::collections::BTreeSet<&str> = text.lines().collect();
    lines
        .into_iter()
        .filter_map(|l| {
            let (request, rest) = l.split_once("\" ")?;
            let request = request.rsplit_once('"')?.1;
            let mut r = request.split(' ');
            let (method, path) = (r.next()?, r.next()?);
            let code = rest.split(' ').next()?.parse().ok()?;
            Some((method.to_string(), path.to_string(), code))
        })
        .collect()
}
