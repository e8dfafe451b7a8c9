//! The auth proxy's promise, proven with the stock clients and the real Label Studio 1.23.2: in a
//! JWT-only organization (legacy tokens off) whose access tokens live [`TTL`] seconds, clients
//! configured with nothing but the proxy's URL and a placeholder key work across several token
//! lifetimes, while the same clients pointed at Label Studio directly fail with 401.
//!
//! - `sdk_with_a_plain_placeholder_works_across_token_lifetimes`: label-studio-sdk 2.1.2 with
//!   `placeholder-not-a-token` (sent as `Token …`, replaced by the proxy): project, JSON import,
//!   file upload, `get_local_path` download (bytes compared), paginated listing, for more than
//!   three lifetimes, zero 401s; the control fails with 401s.
//! - `sdk_with_a_jwt_placeholder_refreshes_locally_without_extra_exchanges`: the SDK with the
//!   README's JWT-shaped placeholder POSTs it to `/api/token/refresh/`; the proxy answers with a
//!   stand-in whose `exp` is the real token's expiry, so the SDK refreshes once per lifetime.
//!   Three such clients at once: each gets ≥ 3 local answers, and the real exchanges stay at the
//!   schedule's rate (as in a window without consumers). The control fails on its refresh POST.
//! - `ml_backend_downloads_task_images_through_the_proxy`: the ML backend server 1.0.9 (own venv)
//!   with `LABEL_STUDIO_URL` = the proxy, registered through Label Studio's API; every prediction
//!   Label Studio asks for carries the sha256 of the task's uploaded image, across the lifetimes.
//!   The control (backend pointed at Label Studio) fails with 401 on the download.
//!
//! The proxy runs as the real binary (`proxy`, PAT from a file) at trace level; its log is
//! scanned for the PAT and any JWT.

use std::time::{Duration, Instant};

use ls_token_refresher_e2e::{
    auth_proxy::{AuthProxy, EXCHANGES, VALIDATIONS},
    fault_suite::SUCCESS,
    label_studio::{LabelStudio, LsOptions},
    log_scan::assert_no_secrets,
    stock_clients::{self, MlBackend, PLACEHOLDER},
};

/// Access-token lifetime: short, so a run spans several of them.
const TTL: u64 = 10;
/// The shortest gap between the starts of two exchanges when only the schedule drives them:
/// `--refresh-fraction` 0.66 (default) of [`TTL`] with `--min-lead 1s` and no jitter
/// (`AuthProxy::start`), less one second because the schedule is anchored on the token's
/// `iat`/`exp`, which are whole seconds.
const MIN_EXCHANGE_GAP: f64 = 0.66 * TTL as f64 - 1.0;
/// The longest an exchange takes on this loaded machine: the counter moves when an exchange
/// ends, so a window's count may include one that started this much before it.
const EXCHANGE_LATENCY: f64 = 2.0;
/// How long each client loops: more than three lifetimes.
const SPAN: Duration = Duration::from_secs(3 * TTL + 5);

async fn jwt_only_label_studio(extra_env: &[(&str, &str)]) -> LabelStudio {
    let ls = LabelStudio::start(LsOptions {
        access_ttl_secs: TTL,
        extra_env: extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..LsOptions::default()
    })
    .await;
    assert_eq!(
        ls.api().org_tokens().await,
        (true, false),
        "the organization must accept JWTs only (legacy tokens off)"
    );
    ls
}

fn scan(proxy: &AuthProxy, pats: &[&str]) {
    assert_no_secrets(&proxy.proc.log_text(), pats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_with_a_plain_placeholder_works_across_token_lifetimes() {
    let ls = jwt_only_label_studio(&[]).await;
    let pat = ls.api().create_pat().await;
    let tmp = tempfile::tempdir().unwrap();
    let proxy = AuthProxy::start("proxy", &ls.url(), &pat, tmp.path(), "proxy", &[]).await;
    let refreshes = proxy.metric(SUCCESS).await;

    let s = stock_clients::sdk_flow(
        &proxy.url(),
        PLACEHOLDER,
        &tmp.path().join("home"),
        SPAN,
        &[],
    )
    .await;
    s.assert_clean("SDK through the proxy");
    eprintln!(
        "PROXY-FIGURES sdk-token iterations={} requests={} downloads={} elapsed_s={}",
        s.num("iterations"),
        s.num("wire.requests"),
        s.num("downloads_verified"),
        s.json["elapsed_s"]
    );
    assert!(s.num("downloads_verified") >= 3, "{}", s.brief());
    assert!(s.num("files_uploaded") >= 3, "{}", s.brief());
    assert!(
        s.num("pages_listed") > s.num("list_calls"),
        "pagination unused"
    );
    assert!(
        s.num("wire.auth_schemes_sent.Token") > 0,
        "the SDK did not send its placeholder: {}",
        s.brief()
    );
    // The refresher replaced the token at least three times while the client ran.
    let lifetimes = proxy.metric(SUCCESS).await - refreshes;
    assert!(
        lifetimes >= 3.0,
        "only {lifetimes} refreshes during the run"
    );

    // Control: the same client, pointed at Label Studio itself.
    let direct = stock_clients::sdk_flow(
        &ls.url(),
        PLACEHOLDER,
        &tmp.path().join("home-direct"),
        Duration::ZERO,
        &[],
    )
    .await;
    assert!(!direct.ok(), "the placeholder worked without the proxy");
    assert!(direct.num("wire.status_401") > 0, "{}", direct.brief());
    scan(&proxy, &[&pat]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_with_a_jwt_placeholder_refreshes_locally_without_extra_exchanges() {
    const CONSUMERS: usize = 3;
    let ls = jwt_only_label_studio(&[]).await;
    let pat = ls.api().create_pat().await;
    let tmp = tempfile::tempdir().unwrap();
    let proxy = AuthProxy::start("proxy", &ls.url(), &pat, tmp.path(), "proxy", &[]).await;
    // The JWT-shaped placeholder the README tells users to copy.
    let key = ls_token_refresher::proxy::standin::placeholder_key();

    // Exchanges over a span with no consumer at all, then over the consumers' run.
    let (e0, v0) = (
        proxy.metric(EXCHANGES).await,
        proxy.metric(VALIDATIONS).await,
    );
    let t0 = Instant::now();
    tokio::time::sleep(SPAN).await;
    let (e1, v1) = (
        proxy.metric(EXCHANGES).await,
        proxy.metric(VALIDATIONS).await,
    );
    let t1 = Instant::now();
    let runs =
        (0..CONSUMERS).map(|i| {
            let (url, key, home) = (
                proxy.url(),
                key.clone(),
                tmp.path().join(format!("home-{i}")),
            );
            async move {
                stock_clients::sdk_flow(&url, &key, &home, SPAN, &["--min-refreshes", "3"]).await
            }
        });
    let summaries = futures::future::join_all(runs).await;
    let (e2, v2) = (
        proxy.metric(EXCHANGES).await,
        proxy.metric(VALIDATIONS).await,
    );
    let (idle_s, busy_s) = ((t1 - t0).as_secs_f64(), t1.elapsed().as_secs_f64());
    let (idle, busy) = (e1 - e0, e2 - e1);

    let mut local = 0;
    for (i, s) in summaries.iter().enumerate() {
        s.assert_clean(&format!("SDK {i} with a JWT placeholder"));
        // Each SDK POSTed its key to /api/token/refresh/ at least three times (one per lifetime),
        // got a stand-in every time, and used it as Bearer.
        assert!(s.num("wire.refresh_posts") >= 3, "{}", s.brief());
        assert!(s.num("wire.auth_schemes_sent.Bearer") > 0, "{}", s.brief());
        assert!(s.num("downloads_verified") >= 1, "{}", s.brief());
        local += s.num("wire.refresh_posts");
    }
    eprintln!(
        "PROXY-FIGURES sdk-jwt consumers={CONSUMERS} local_refresh_answers={local} exchanges_idle={idle} in {idle_s:.1}s exchanges_busy={busy} in {busy_s:.1}s validations_idle={} validations_busy={}",
        v1 - v0,
        v2 - v1,
    );
    let gap = min_publish_gap(&proxy.proc.log_text());
    eprintln!("PROXY-FIGURES sdk-jwt min_gap_between_publishes_s={gap:.2}");
    // Exchange starts are at least MIN_EXCHANGE_GAP apart when only the schedule drives them, so
    // a window of T seconds counts at most (T + latency) / gap + 1, with or without consumers.
    let most = |secs: f64| ((secs + EXCHANGE_LATENCY) / MIN_EXCHANGE_GAP).floor() + 1.0;
    assert!(
        idle >= 3.0 && idle <= most(idle_s),
        "{idle} exchanges in {idle_s:.1}s without consumers"
    );
    assert!(
        busy <= most(busy_s),
        "{busy} exchanges in {busy_s:.1}s with {CONSUMERS} consumers (their {local} refreshes cost exchanges)"
    );
    assert!(
        v2 - v1 <= most(busy_s),
        "consumers caused validations (a 401 reached the proxy)"
    );
    assert!(local as f64 > most(busy_s) + 3.0);

    // Control: the SDK with the same key at Label Studio itself fails on its refresh POST.
    let direct = stock_clients::sdk_flow(
        &ls.url(),
        &key,
        &tmp.path().join("home-direct"),
        Duration::ZERO,
        &[],
    )
    .await;
    assert!(!direct.ok(), "the JWT placeholder worked without the proxy");
    assert!(direct.num("wire.status_401") > 0, "{}", direct.brief());
    assert!(direct.num("wire.refresh_posts") >= 1, "{}", direct.brief());
    scan(&proxy, &[&pat]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ml_backend_downloads_task_images_through_the_proxy() {
    // Label Studio must be allowed to call a backend on 127.0.0.1 (docs/consumers.md).
    let ls = jwt_only_label_studio(&[
        ("ML_BLOCK_LOCAL_IP", "false"),
        ("SSRF_PROTECTION_ENABLED", "false"),
    ])
    .await;
    let pat = ls.api().create_pat().await;
    let tmp = tempfile::tempdir().unwrap();
    let proxy = AuthProxy::start("proxy", &ls.url(), &pat, tmp.path(), "proxy", &[]).await;
    let refreshes = proxy.metric(SUCCESS).await;

    let backend = MlBackend::start(&proxy.url(), &tmp.path().join("ml")).await;
    let s = stock_clients::ml_driver(
        &proxy.url(),
        &backend.url,
        &tmp.path().join("home"),
        SPAN,
        &[],
    )
    .await;
    s.assert_clean("ML backend through the proxy");
    eprintln!(
        "PROXY-FIGURES ml-backend iterations={} predictions_verified={} interactive_verified={}",
        s.num("iterations"),
        s.num("predictions_verified"),
        s.num("interactive_verified")
    );
    assert!(s.num("predictions_verified") >= 3, "{}", s.brief());
    assert!(s.num("interactive_verified") >= 3, "{}", s.brief());
    assert!(proxy.metric(SUCCESS).await - refreshes >= 3.0);

    // Control: a backend configured with Label Studio's own URL and the placeholder.
    let direct = MlBackend::start(&ls.url(), &tmp.path().join("ml-direct")).await;
    stock_clients::assert_ml_download_refused(
        &proxy.url(),
        &direct.url,
        &tmp.path().join("home-direct"),
    )
    .await;
    scan(&proxy, &[&pat]);
}

/// The shortest time between two "token published" log lines (seconds).
fn min_publish_gap(log: &str) -> f64 {
    let times: Vec<jiff::Timestamp> = log
        .lines()
        .filter(|l| l.contains("token published"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(times.len() >= 3, "too few publishes in the log:\n{log}");
    times
        .windows(2)
        .map(|w| (w[1] - w[0]).total(jiff::Unit::Second).unwrap())
        .fold(f64::INFINITY, f64::min)
}
