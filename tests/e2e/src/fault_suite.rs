//! What the fault tests (`faults_*.rs`, `kills.rs`) share: a Label Studio whose access tokens live
//! [`TTL`] seconds, refresher flags that make refreshes frequent and retries quick, the metric series
//! they watch, and a few steps. The figures each test prints (`FAULTS-FIGURES …` on stderr) are
//! described in docs/fault-injection.md.

use std::{path::Path, time::Duration};

use crate::{
    fault_proxy::RequestRecord, label_studio::LabelStudio, refresher::RefresherProc, wait::wait_for,
};

/// Access-token lifetime of the test Label Studio: with `--refresh-fraction 0.25` a token is
/// refreshed 5 s after issue, leaving 15 s for outages.
pub const TTL: u64 = 20;
/// `--backoff-max`.
pub const BACKOFF_MAX: f64 = 2.0;
/// `--request-timeout`.
pub const REQUEST_TIMEOUT: f64 = 1.0;
/// The consumer's API checks: on every new token, otherwise at most this often.
pub const CHECK_EVERY: Duration = Duration::from_secs(3);

/// What every fault test starts from.
pub struct Setup {
    /// A Label Studio whose access tokens live [`TTL`] seconds.
    pub ls: LabelStudio,
    /// A PAT of its admin.
    pub pat: String,
    /// A temp dir for the refreshers' logs and token directories.
    pub tmp: tempfile::TempDir,
}

/// Starts a Label Studio with [`TTL`], creates a PAT and a temp dir.
pub async fn setup() -> Setup {
    let ls = LabelStudio::start_with_ttl(TTL).await;
    let pat = ls.api().create_pat().await;
    let tmp = tempfile::tempdir().unwrap();
    Setup { ls, pat, tmp }
}

/// The API path consumers check tokens against.
pub const WHOAMI: &str = "/api/current-user/whoami";

/// The refresh-error counter for `reason`.
pub fn errors_metric(reason: &str) -> String {
    format!("ls_token_refresher_refresh_errors_total{{reason=\"{reason}\"}}")
}
/// Successful refreshes.
pub const SUCCESS: &str = "ls_token_refresher_refresh_total{result=\"success\"}";
/// Failed refreshes.
pub const FAILURE: &str = "ls_token_refresher_refresh_total{result=\"failure\"}";
/// Failed writes of the file sink.
pub const SINK_ERRORS: &str = "ls_token_refresher_sink_write_errors_total{sink=\"file\"}";

/// Flags that make refreshes frequent and retries quick (see the constants above); `extra` holds
/// flag/value pairs that replace or add to them.
pub fn fault_args(url: &str, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--url",
        url,
        "--token-dir",
        dir.to_str().unwrap(),
        "--log-level",
        "trace",
        "--refresh-fraction",
        "0.25",
        "--min-lead",
        "1s",
        "--jitter",
        "1s",
        "--backoff-initial",
        "500ms",
        "--backoff-max",
        "2s",
        "--request-timeout",
        "1s",
        "--connect-timeout",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // clap refuses a repeated flag: replace the value instead of appending.
    for pair in extra.chunks(2) {
        match v.iter().position(|a| a == pair[0]) {
            Some(i) => v[i + 1] = pair[1].to_owned(),
            None => v.extend(pair.iter().map(|s| s.to_string())),
        }
    }
    v
}

/// Starts `run` with `args` and the PAT in `LS_PAT`, logging to `base/name.log`.
pub fn start_refresher(base: &Path, name: &str, args: &[String], pat: &str) -> RefresherProc {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    RefresherProc::start(base, name, &refs, &[("LS_PAT", pat)])
}

/// A metric's value, 0 when the series is not there (yet).
pub async fn metric(p: &RefresherProc, name: &str) -> f64 {
    p.metric(name).await.unwrap_or(0.0)
}

/// Waits for the next successful refresh; the seconds it took, None after `timeout`.
pub async fn wait_next_success(p: &RefresherProc, timeout: Duration) -> Option<f64> {
    let before = metric(p, SUCCESS).await;
    wait_for(timeout, || async { metric(p, SUCCESS).await > before }).await
}

/// Gaps (seconds) between successive refresh requests whose first request met `fault`.
pub fn refresh_gaps(reqs: &[RequestRecord], fault: &str) -> Vec<f64> {
    let refreshes: Vec<&RequestRecord> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/api/token/refresh"))
        .collect();
    refreshes
        .windows(2)
        .filter(|w| w[0].fault == fault)
        .map(|w| (w[1].at - w[0].at).as_secs_f64())
        .collect()
}
