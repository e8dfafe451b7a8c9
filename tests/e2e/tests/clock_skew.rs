//! The real binary with its wall clock skewed against a real Label Studio 1.23.2 (issue 9, item 1):
//! `skewed_wall_clock_keeps_the_schedule_readiness_and_tokens_true`.
//!
//! Five refreshers share one Label Studio whose access tokens live [`TTL`] s; each runs under
//! libfaketime (see `ls_token_refresher_e2e::faketime` for what that fakes: the wall clock via
//! glibc, not the monotonic clocks, and not the rustix/vDSO `CLOCK_BOOTTIME` reads and raw timerfds
//! the refresher's deadlines use) with its wall clock [`SKEWS`] seconds off: a control at 0 (also
//! under libfaketime, so the library is the only other difference), ±30 s (less than a lifetime)
//! and ±80 s (twice the lifetime). Each talks to Label Studio through its own fault proxy, passing
//! everything, which counts the exchanges Label Studio actually answered. For [`WINDOW`]:
//!
//! - refreshes: within one of the control's count, and at most two per lifetime (the skew does
//!   not change the schedule; the old code made 279 refreshes in 40 s at +30 s with 60 s tokens);
//! - `/readyz` sampled every 250 ms answers 200 every time (a valid token is always published:
//!   Label Studio's clock, which is the test's, says so — the consumer below checks it);
//! - a consumer reading the published set every 20 ms never holds a token at or past its `exp`
//!   (by Label Studio's clock), never a torn set, and the real API accepts every new token;
//! - `ls_token_refresher_clock_offset_seconds` reports the skew (Label Studio minus ours, within the
//!   1 s rounding of `iat` plus slack), 0 for the control, and the skew warning is logged once.
//!
//! Figures: `SKEW-FIGURES …` lines on stderr. `LSTR_REFRESHER_BIN` runs it against another build.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use ls_token_refresher_e2e::{
    consumer::{Consumer, ConsumerReport},
    faketime,
    fault_proxy::FaultProxy,
    label_studio::LabelStudio,
    log_scan::scan_logs,
    refresher::RefresherProc,
    token_dir::read_set,
    wait::wait_for,
};

/// Access-token lifetime: short enough for several lifetimes in a test, long enough that a
/// refresh's own latency on a loaded machine is noise.
const TTL: u64 = 40;
/// Wall-clock offsets of the refreshers (positive: ahead of Label Studio). 0 is the control.
const SKEWS: [i64; 5] = [0, 30, -30, 2 * TTL as i64, -2 * (TTL as i64)];
/// How long refreshes are counted, from the first token on: a little over two lifetimes.
const WINDOW: Duration = Duration::from_secs(90);
/// Offset metric slack: `iat` is whole seconds rounded down and the refresher assumes the later
/// end (+1 s), plus the exchange's own latency.
const OFFSET_SLACK: f64 = 2.5;

struct Outcome {
    skew: i64,
    refreshes: usize,
    ready_samples: u64,
    not_ready: u64,
    /// The first few not-ready answers.
    not_ready_examples: Vec<String>,
    offset: Option<f64>,
    warnings: usize,
    consumer: ConsumerReport,
    exit: Option<i32>,
    log: String,
    tokens: Vec<String>,
}

async fn skewed(ls_url: String, pat: String, base: PathBuf, skew: i64) -> Outcome {
    let name = format!("skew{skew:+}");
    let dir = base.join(&name);
    let token_dir = dir.join("token");
    std::fs::create_dir_all(&token_dir).unwrap();
    let proxy = FaultProxy::start(&ls_url).await;
    let url = proxy.url();
    let args = [
        "--url",
        &url,
        "--token-dir",
        token_dir.to_str().unwrap(),
        "--log-level",
        "trace",
        // Refresh at 0.66 of the lifetime (26 s), 2 s of jitter: a schedule the skew must not move.
        "--min-lead",
        "5s",
        "--jitter",
        "2s",
    ];
    let fake = faketime::env(skew);
    let mut env: Vec<(&str, &str)> = fake.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("LS_PAT", &pat));
    let proc = RefresherProc::start(&dir, &name, &args, &env);
    // The first token on disk (not /readyz: whether that turns 200 is under test).
    let published = wait_for(Duration::from_secs(60), || async {
        read_set(&token_dir).is_some()
    })
    .await;
    assert!(
        published.is_some(),
        "skew {skew:+}: nothing published within 60 s; log:\n{}",
        proc.log_text()
    );
    let consumer = Consumer::start(&token_dir, &ls_url, Duration::from_secs(5));
    let refreshes_before = exchanges(&proxy);
    let t0 = Instant::now();
    let (mut ready_samples, mut not_ready, mut not_ready_examples) = (0, 0, Vec::new());
    while t0.elapsed() < WINDOW {
        let (code, body) = proc.admin_get("/readyz").await;
        ready_samples += 1;
        if code != 200 {
            not_ready += 1;
        }
        if code != 200 && not_ready_examples.len() < 5 {
            not_ready_examples.push(format!(
                "+{:.1}s {code} {}",
                t0.elapsed().as_secs_f64(),
                body.trim()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let refreshes = exchanges(&proxy) - refreshes_before;
    let offset = proc.metric("ls_token_refresher_clock_offset_seconds").await;
    let consumer = consumer.stop();
    let mut proc = proc;
    let exit = proc.signal_and_wait("TERM").code();
    let log = proc.log_text();
    Outcome {
        skew,
        refreshes,
        ready_samples,
        not_ready,
        not_ready_examples,
        offset,
        warnings: log.matches("disagree by").count(),
        consumer,
        exit,
        log,
        tokens: proxy.tokens(),
    }
}

/// Exchanges Label Studio answered through `proxy`.
fn exchanges(proxy: &FaultProxy) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/api/token/refresh") && r.answered)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_wall_clock_keeps_the_schedule_readiness_and_tokens_true() {
    let t_start = Instant::now();
    faketime::library(); // provision before anything starts
    let ls = LabelStudio::start_with_ttl(TTL).await;
    let pat = ls.api().create_pat().await;
    let tmp = tempfile::tempdir().unwrap();
    let outcomes = futures::future::join_all(
        SKEWS
            .iter()
            .map(|s| skewed(ls.url(), pat.clone(), tmp.path().to_path_buf(), *s)),
    )
    .await;
    let lifetimes = WINDOW.as_secs_f64() / TTL as f64;
    let control = outcomes.iter().find(|o| o.skew == 0).unwrap().refreshes;
    let mut failed = Vec::new();
    for o in &outcomes {
        let c = &o.consumer;
        eprintln!(
            "SKEW-FIGURES skew_s={:+} ttl_s={TTL} window_s={} refreshes={} per_lifetime={:.2} ready_samples={} not_ready={} offset_metric={} skew_warnings={} consumer_samples={} tokens_seen={} expired={} rejected={} torn={} exit={:?}",
            o.skew,
            WINDOW.as_secs(),
            o.refreshes,
            o.refreshes as f64 / lifetimes,
            o.ready_samples,
            o.not_ready,
            o.offset.map(|v| format!("{v:.1}")).unwrap_or("-".into()),
            o.warnings,
            c.samples,
            c.tokens.len(),
            c.expired,
            c.rejected,
            c.torn,
            o.exit,
        );
        let mut p = Vec::new();
        if o.refreshes.abs_diff(control) > 1 || o.refreshes as f64 > 2.0 * lifetimes + 1.0 {
            p.push(format!(
                "{} refreshes in {} s (control {control}, at most {:.0})",
                o.refreshes,
                WINDOW.as_secs(),
                2.0 * lifetimes + 1.0
            ));
        }
        if o.refreshes < 2 {
            p.push(format!(
                "only {} refreshes: the schedule stalled",
                o.refreshes
            ));
        }
        if o.not_ready > 0 {
            p.push(format!(
                "/readyz not 200 in {} samples while a valid token was published: {:?}",
                o.not_ready, o.not_ready_examples
            ));
        }
        if c.samples == 0 || c.expired + c.rejected + c.torn > 0 || c.tokens.len() < 2 {
            p.push(format!(
                "consumer: {} tokens, expired {} rejected {} torn {}: {:?}",
                c.tokens.len(),
                c.expired,
                c.rejected,
                c.torn,
                c.problems
            ));
        }
        match o.offset {
            Some(v) if (v + o.skew as f64).abs() <= OFFSET_SLACK && (o.skew != 0 || v == 0.0) => {}
            other => p.push(format!(
                "clock offset metric {other:?}, want {} ± {OFFSET_SLACK}",
                -o.skew
            )),
        }
        let want_warnings = usize::from(o.skew.abs() > 5);
        if o.warnings != want_warnings {
            p.push(format!(
                "{} skew warnings, want {want_warnings}",
                o.warnings
            ));
        }
        if o.exit != Some(0) {
            p.push(format!("exit {:?} on SIGTERM", o.exit));
        }
        if !p.is_empty() {
            failed.push(format!("skew {:+} s: {}", o.skew, p.join("; ")));
        }
    }
    eprintln!("SKEW-FIGURES wall_s={:.0}", t_start.elapsed().as_secs_f64());
    assert!(failed.is_empty(), "clock skew:\n{}", failed.join("\n"));
    let logs: Vec<String> = outcomes.iter().map(|o| o.log.clone()).collect();
    let tokens: BTreeSet<String> = outcomes
        .iter()
        .flat_map(|o| o.tokens.iter().chain(&o.consumer.tokens).cloned())
        .collect();
    scan_logs("clock-skew", &logs, &tokens, &pat);
}
