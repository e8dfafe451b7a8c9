//! Network, HTTP and body faults between the real binary and a real Label Studio 1.23.2, injected by
//! the fault proxy (`fault_proxy`); a consumer reads the published set every 20 ms and checks its
//! token against the real API. Figures (`FAULTS-FIGURES …` on stderr): docs/fault-injection.md.
//!
//! - `short_outages_cost_consumers_nothing`: 15 network / HTTP / body faults, each held 10 s (shorter
//!   than the token's remaining lifetime): zero expired, rejected or torn samples, readiness stays
//!   true, the reason is counted, `Retry-After` and the backoff bounds are honoured, recovery is quick.
//! - `long_outages_turn_readiness_false_at_expiry_and_recover`: outages longer than the lifetime:
//!   readiness turns false with the reason exactly when the last token expires, and comes back
//!   within one backoff step of the service returning.
//! - `recovery_after_an_outage_longer_than_the_token_does_not_wait_for_the_backoff`: connections
//!   refused until the token has expired and a failed attempt has put the next retry ≥ 10 s away
//!   (default backoff, 1 s doubling up to `--backoff-max 60s`), and 0.5–1.5 s longer; once Label
//!   Studio is reachable again a token is published within the `/health` probe interval (2 s)
//!   plus an attempt, not when the backoff says (the code before the probe waited up to 60 s).
//!
//! Every refresher runs at `--log-level trace`; each test scans every log for every token issued
//! (as seen by the proxy), the PAT and `eyJ`.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use ls_token_refresher_e2e::{
    clock::unix_now,
    consumer::{Consumer, ConsumerReport},
    fault_proxy::{Fault, FaultProxy},
    fault_suite::{
        errors_metric, fault_args, metric, refresh_gaps, setup, start_refresher, wait_next_success,
        Setup, BACKOFF_MAX, CHECK_EVERY, FAILURE, REQUEST_TIMEOUT, SUCCESS, TTL, WHOAMI,
    },
    http1::{http_get, http_status},
    jwt::jwt_exp,
    log_scan::scan_logs,
    token_dir::read_set,
    wait::{poll, wait_for},
};

/// How long a short outage lasts (< the 15 s a token has left when its refresh is due).
const SHORT_HOLD: Duration = Duration::from_secs(10);

struct ShortCase {
    fault: Fault,
    reason: Option<&'static str>,
    extra: &'static [&'static str],
    /// Longest expected gap between the restore and the next success (backoff step + attempt).
    recovery_bound: f64,
    /// Least gap between refresh requests while the fault is on (Retry-After).
    min_gap: Option<f64>,
}

struct ShortOutcome {
    name: String,
    fault_errors: f64,
    failures: f64,
    not_ready: u64,
    ready_samples: u64,
    recovery: Option<f64>,
    consumer: ConsumerReport,
    gaps: Vec<f64>,
    exit: Option<i32>,
    log: String,
    tokens: Vec<String>,
    hold: f64,
}

async fn short_outage(
    ls_url: String,
    pat: String,
    base: PathBuf,
    case: &ShortCase,
) -> ShortOutcome {
    let name = case.fault.name()
        + if case.extra.is_empty() {
            ""
        } else {
            "+backoff-max-60s"
        };
    let dir = base.join(&name);
    let token_dir = dir.join("token");
    std::fs::create_dir_all(&token_dir).unwrap();
    let proxy = FaultProxy::start(&ls_url).await;
    let args = fault_args(&proxy.url(), &token_dir, case.extra);
    let mut proc = start_refresher(&dir, &name, &args, &pat);
    proc.wait_ready(200, Duration::from_secs(60)).await;
    let consumer = Consumer::start(&token_dir, &ls_url, CHECK_EVERY);
    // Start the fault at a random point of the 5 s refresh schedule.
    tokio::time::sleep(Duration::from_millis(fastrand::u64(300..4500))).await;
    let reason_metric = case.reason.map(errors_metric);
    let before = match &reason_metric {
        Some(m) => metric(&proc, m).await,
        None => 0.0,
    };
    let failures_before = metric(&proc, FAILURE).await;
    proxy.set(case.fault.clone());
    let t_fault = Instant::now();
    let (mut not_ready, mut ready_samples) = (0, 0);
    while t_fault.elapsed() < SHORT_HOLD {
        let (code, _) = proc.admin_get("/readyz").await;
        ready_samples += 1;
        if code != 200 {
            not_ready += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let successes = metric(&proc, SUCCESS).await;
    proxy.set(Fault::Pass);
    let hold = t_fault.elapsed().as_secs_f64();
    let recovery = wait_for(Duration::from_secs(20), || async {
        metric(&proc, SUCCESS).await > successes
    })
    .await;
    let fault_errors = match &reason_metric {
        Some(m) => metric(&proc, m).await - before,
        None => 0.0,
    };
    let failures = metric(&proc, FAILURE).await - failures_before;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let consumer = consumer.stop();
    let exit = proc.signal_and_wait("TERM").code();
    ShortOutcome {
        gaps: refresh_gaps(&proxy.requests(), &case.fault.name()),
        name,
        fault_errors,
        failures,
        not_ready,
        ready_samples,
        recovery,
        consumer,
        exit,
        log: proc.log_text(),
        tokens: proxy.tokens(),
        hold,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_outages_cost_consumers_nothing() {
    let t0 = Instant::now();
    let Setup { ls, pat, tmp } = setup().await;
    let step = BACKOFF_MAX + REQUEST_TIMEOUT + 2.0;
    let case = |fault: Fault, reason: Option<&'static str>| ShortCase {
        fault,
        reason,
        extra: &[],
        recovery_bound: step,
        min_gap: None,
    };
    let status = |code: u16, ra: Option<&str>| Fault::Status {
        code,
        retry_after: ra.map(str::to_owned),
    };
    let cases = vec![
        case(Fault::Refuse, Some("network")),
        // Default --backoff-max 60s: retries are still capped at a quarter of the remaining lifetime.
        ShortCase {
            extra: &["--backoff-max", "60s"],
            recovery_bound: TTL as f64 / 4.0 + REQUEST_TIMEOUT + 2.0,
            ..case(Fault::Refuse, Some("network"))
        },
        case(Fault::BlackHole, Some("timeout")),
        case(Fault::Slow(Duration::from_secs(2)), Some("timeout")),
        case(Fault::Drip(Duration::from_secs(3)), Some("timeout")),
        // Slow but inside the 1 s request timeout: no failure at all.
        ShortCase {
            // No failure pending at the restore: the next success is the scheduled one.
            recovery_bound: TTL as f64 / 4.0 + 2.0,
            ..case(Fault::Slow(Duration::from_millis(250)), None)
        },
        case(status(500, None), Some("server_error")),
        case(status(502, None), Some("server_error")),
        ShortCase {
            min_gap: Some(1.9),
            recovery_bound: 2.0 + 2.0,
            ..case(status(503, Some("2")), Some("server_error"))
        },
        ShortCase {
            min_gap: Some(2.9),
            recovery_bound: 3.0 + 2.0,
            ..case(status(429, Some("3")), Some("rate_limited"))
        },
        case(Fault::Html200, Some("invalid_response")),
        case(Fault::TruncatedJson, Some("invalid_response")),
        case(Fault::InvalidJson, Some("invalid_response")),
        case(Fault::Oversized(1 << 20), Some("invalid_response")),
        case(Fault::CutMidBody, Some("network")),
    ];
    let outcomes = futures::future::join_all(
        cases
            .iter()
            .map(|c| short_outage(ls.url(), pat.clone(), tmp.path().to_path_buf(), c)),
    )
    .await;

    let mut tokens = BTreeSet::new();
    let mut logs = Vec::new();
    let (mut samples, mut checks, mut consumer_secs, mut fault_secs) = (0, 0, 0.0, 0.0);
    let mut failed = Vec::new();
    for (c, o) in cases.iter().zip(&outcomes) {
        let fast = o.gaps.iter().cloned().fold(f64::INFINITY, f64::min);
        let slow = o.gaps.iter().cloned().fold(0.0, f64::max);
        eprintln!(
            "FAULTS-FIGURES test=short scenario={} hold_s={:.1} reason={} reason_errors={} failures={} recovery_s={} ready_samples={} not_ready={} consumer_samples={} api_checks={} tokens_seen={} expired={} rejected={} torn={} refresh_gaps_s=[{:.2},{:.2}] exit={:?}",
            o.name,
            o.hold,
            c.reason.unwrap_or("-"),
            o.fault_errors,
            o.failures,
            o.recovery.map(|r| format!("{r:.2}")).unwrap_or("never".into()),
            o.ready_samples,
            o.not_ready,
            o.consumer.samples,
            o.consumer.api_checks,
            o.consumer.tokens.len(),
            o.consumer.expired,
            o.consumer.rejected,
            o.consumer.torn,
            if o.gaps.is_empty() { 0.0 } else { fast },
            slow,
            o.exit,
        );
        samples += o.consumer.samples;
        checks += o.consumer.api_checks;
        consumer_secs += o.consumer.seconds;
        fault_secs += o.hold;
        tokens.extend(o.tokens.iter().cloned());
        tokens.extend(o.consumer.tokens.iter().cloned());
        logs.push(o.log.clone());

        let mut problems = Vec::new();
        if o.consumer.samples == 0 || o.consumer.expired + o.consumer.rejected + o.consumer.torn > 0
        {
            problems.push(format!("consumer: {:?}", o.consumer.problems));
        }
        if o.not_ready > 0 {
            problems.push(format!("readiness false in {} samples", o.not_ready));
        }
        match c.reason {
            Some(_) if o.fault_errors < 1.0 => problems.push("fault never counted".into()),
            None if o.failures > 0.0 => {
                problems.push(format!("{} failures without a fault", o.failures))
            }
            _ => {}
        }
        if !c.extra.is_empty() && o.fault_errors < 2.0 {
            problems.push("fewer than 2 attempts during the outage with --backoff-max 60s".into());
        }
        match o.recovery {
            Some(r) if r <= c.recovery_bound => {}
            other => problems.push(format!(
                "recovery {other:?} s, bound {:.1} s",
                c.recovery_bound
            )),
        }
        if let Some(min) = c.min_gap {
            if o.gaps.is_empty() || fast < min {
                problems.push(format!(
                    "Retry-After not honoured: gaps {:?}, want >= {min}",
                    o.gaps
                ));
            }
        } else if c.reason.is_some()
            && !o.gaps.is_empty()
            && (fast < 0.2 || slow > BACKOFF_MAX + REQUEST_TIMEOUT + 3.0)
        {
            problems.push(format!("retry pace out of bounds: gaps {:?}", o.gaps));
        }
        if o.exit != Some(0) {
            problems.push(format!("exit {:?} on SIGTERM", o.exit));
        }
        if !problems.is_empty() {
            failed.push(format!("{}: {}", o.name, problems.join("; ")));
        }
    }
    eprintln!(
        "FAULTS-FIGURES test=short scenarios={} fault_seconds={fault_secs:.0} consumer_seconds={consumer_secs:.0} consumer_samples={samples} api_checks={checks} api_checks_per_consumer_s={:.2} wall_s={:.0}",
        outcomes.len(),
        checks as f64 / consumer_secs.max(1.0),
        t0.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "short outages:\n{}", failed.join("\n"));
    scan_logs("short", &logs, &tokens, &pat);
}

// ------------------------------------------------------------------ long outages

struct LongOutcome {
    name: String,
    reason: &'static str,
    early: usize,
    early_not_ready: usize,
    late: usize,
    late_wrong: Vec<String>,
    first_503: Option<f64>,
    last_200: Option<f64>,
    valid_gauge_zero: bool,
    recovery: Option<f64>,
    recovered_api: Option<u16>,
    changed_during_outage: bool,
    exit: Option<i32>,
    log: String,
    tokens: Vec<String>,
    outage: f64,
    /// Refresh requests the proxy saw around the restore, seconds relative to it.
    around_restore: Vec<f64>,
}

async fn long_outage(
    ls_url: String,
    pat: String,
    base: PathBuf,
    fault: Fault,
    reason: &'static str,
) -> LongOutcome {
    let name = format!("long-{}", fault.name());
    let dir = base.join(&name);
    let token_dir = dir.join("token");
    std::fs::create_dir_all(&token_dir).unwrap();
    let proxy = FaultProxy::start(&ls_url).await;
    let mut proc = start_refresher(
        &dir,
        &name,
        &fault_args(&proxy.url(), &token_dir, &[]),
        &pat,
    );
    proc.wait_ready(200, Duration::from_secs(60)).await;
    // Start right after a refresh, so the outage outlasts a whole token lifetime.
    wait_next_success(&proc, Duration::from_secs(15)).await;
    proxy.set(fault.clone());
    let t_fault = Instant::now();
    let m = errors_metric(reason);
    wait_for(Duration::from_secs(15), || async {
        metric(&proc, &m).await >= 1.0
    })
    .await;
    let (token, _, _) = read_set(&token_dir).expect("a set is published");
    let exp = jwt_exp(&token).unwrap() as f64;
    let (mut early, mut early_not_ready, mut late) = (0, 0, 0);
    let mut late_wrong = Vec::new();
    let (mut first_503, mut last_200): (Option<f64>, Option<f64>) = (None, None);
    let mut changed_during_outage = false;
    // Sample readiness from now until 2.5 s after the last token's exp.
    while unix_now() < exp + 2.5 {
        let admin = proc.admin.clone();
        let (code, body) = tokio::task::spawn_blocking(move || http_get(&admin, "/readyz"))
            .await
            .unwrap()
            .unwrap_or_default();
        let rel = unix_now() - exp;
        if read_set(&token_dir).is_some_and(|s| s.0 != token) {
            changed_during_outage = true;
        }
        if code == 200 {
            last_200 = Some(rel);
        } else if first_503.is_none() {
            first_503 = Some(rel);
        }
        if rel < -0.3 {
            early += 1;
            if code != 200 {
                early_not_ready += 1;
            }
        } else if rel > 0.3 {
            late += 1;
            if code != 503 || !body.contains("expired") || !body.contains(reason) {
                late_wrong.push(format!("{code} {}", body.trim()));
            }
        }
        // Finer sampling around the expiry itself.
        let nap = if rel.abs() < 1.0 { 50 } else { 200 };
        tokio::time::sleep(Duration::from_millis(nap)).await;
    }
    let valid_gauge_zero = wait_for(Duration::from_secs(5), || async {
        metric(&proc, "ls_token_refresher_token_valid").await == 0.0
    })
    .await
    .is_some();
    proxy.set(Fault::Pass);
    let outage = t_fault.elapsed().as_secs_f64();
    let t_restore = Instant::now();
    let mut recovery = None;
    while t_restore.elapsed() < Duration::from_secs(20) {
        if proc.admin_get("/readyz").await.0 == 200 {
            recovery = Some(t_restore.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered_api = match read_set(&token_dir) {
        Some((_, auth, _)) => {
            let url = ls_url.clone();
            tokio::task::spawn_blocking(move || http_status(&url, WHOAMI, &auth))
                .await
                .unwrap()
        }
        None => None,
    };
    let exit = proc.signal_and_wait("TERM").code();
    let around_restore = proxy
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/api/token/refresh"))
        .map(|r| {
            r.at.saturating_duration_since(t_restore).as_secs_f64()
                - t_restore.saturating_duration_since(r.at).as_secs_f64()
        })
        .filter(|d| (-4.0..6.0).contains(d))
        .collect();
    LongOutcome {
        around_restore,
        name,
        reason,
        early,
        early_not_ready,
        late,
        late_wrong,
        first_503,
        last_200,
        valid_gauge_zero,
        recovery,
        recovered_api,
        changed_during_outage,
        exit,
        log: proc.log_text(),
        tokens: proxy.tokens(),
        outage,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_outages_turn_readiness_false_at_expiry_and_recover() {
    let t0 = Instant::now();
    let Setup { ls, pat, tmp } = setup().await;
    let base = tmp.path().to_path_buf();
    let longs = [
        (Fault::Refuse, "network"),
        (Fault::BlackHole, "timeout"),
        (
            Fault::Status {
                code: 503,
                retry_after: None,
            },
            "server_error",
        ),
    ];
    let outcomes = futures::future::join_all(
        longs
            .iter()
            .map(|(f, r)| long_outage(ls.url(), pat.clone(), base.clone(), f.clone(), r)),
    )
    .await;
    // An attempt in flight when the service returns (≤ the request timeout), then one backoff step,
    // plus slack for a loaded 2-core machine.
    let bound = REQUEST_TIMEOUT + BACKOFF_MAX + 2.5;
    let mut failed = Vec::new();
    let mut logs = Vec::new();
    let mut tokens = BTreeSet::new();
    for o in &outcomes {
        eprintln!(
            "FAULTS-FIGURES test=long scenario={} outage_s={:.1} reason={} ready_samples_before_exp={} not_ready_before_exp={} samples_after_exp={} wrong_after_exp={} last_200_rel_exp_s={} first_503_rel_exp_s={} token_valid_gauge_0={} recovery_s={} refresh_requests_rel_restore_s={:.2?} api_after_recovery={:?} exit={:?}",
            o.name,
            o.outage,
            o.reason,
            o.early,
            o.early_not_ready,
            o.late,
            o.late_wrong.len(),
            o.last_200.map(|v| format!("{v:.2}")).unwrap_or("-".into()),
            o.first_503.map(|v| format!("{v:.2}")).unwrap_or("-".into()),
            o.valid_gauge_zero,
            o.recovery.map(|v| format!("{v:.2}")).unwrap_or("never".into()),
            o.around_restore,
            o.recovered_api,
            o.exit
        );
        let mut p = Vec::new();
        if o.early == 0 || o.early_not_ready > 0 {
            p.push(format!(
                "readiness before exp: {} of {} false",
                o.early_not_ready, o.early
            ));
        }
        if o.late == 0 || !o.late_wrong.is_empty() {
            p.push(format!("readiness after exp: {:?}", o.late_wrong.first()));
        }
        if o.changed_during_outage {
            p.push("the published set changed during the outage".into());
        }
        if !o.valid_gauge_zero {
            p.push("token_valid stayed 1 after expiry".into());
        }
        match o.recovery {
            Some(r) if r <= bound => {}
            other => p.push(format!("recovery {other:?} s > {bound} s")),
        }
        if o.recovered_api != Some(200) {
            p.push(format!("API after recovery: {:?}", o.recovered_api));
        }
        if o.exit != Some(0) {
            p.push(format!("exit {:?}", o.exit));
        }
        if !p.is_empty() {
            failed.push(format!("{}: {}", o.name, p.join("; ")));
        }
        logs.push(o.log.clone());
        tokens.extend(o.tokens.iter().cloned());
    }
    eprintln!(
        "FAULTS-FIGURES test=long scenarios={} outage_seconds={:.0} wall_s={:.0}",
        outcomes.len(),
        outcomes.iter().map(|o| o.outage).sum::<f64>(),
        t0.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "long outages:\n{}", failed.join("\n"));
    scan_logs("long", &logs, &tokens, &pat);
}

// ------------------------------------------------------------------ recovery after a long outage

/// Least wait for the scheduled retry at the moment Label Studio comes back: the backoff alone
/// would keep a consumer without a token at least this long.
const MIN_PENDING_RETRY: f64 = 10.0;
/// `/health` is probed this often while no valid token is held (the binary's
/// `HEALTH_PROBE_INTERVAL`).
const HEALTH_PROBE_INTERVAL: f64 = 2.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_an_outage_longer_than_the_token_does_not_wait_for_the_backoff() {
    let t0 = Instant::now();
    let Setup { ls, pat, tmp } = setup().await;
    let dir = tmp.path().join("recovery");
    let token_dir = dir.join("token");
    std::fs::create_dir_all(&token_dir).unwrap();
    let proxy = FaultProxy::start(&ls.url()).await;
    // The default backoff: 1 s doubling to 60 s (capped by the remaining lifetime only while a
    // valid token is held).
    let args = fault_args(
        &proxy.url(),
        &token_dir,
        &["--backoff-initial", "1s", "--backoff-max", "60s"],
    );
    let mut proc = start_refresher(&dir, "recovery", &args, &pat);
    proc.wait_ready(200, Duration::from_secs(60)).await;
    wait_next_success(&proc, Duration::from_secs(15)).await;
    let (before, _, _) = read_set(&token_dir).expect("a set is published");
    proxy.set(Fault::Refuse);
    let t_fault = Instant::now();
    // The token expires (TTL s after its issue), readiness turns false...
    proc.wait_ready(503, Duration::from_secs(TTL + 10)).await;
    // ...and a failed attempt puts the next retry far away.
    let next = "ls_token_refresher_next_refresh_timestamp_seconds";
    let pending = poll(
        Duration::from_secs(120),
        Duration::from_millis(100),
        || async {
            let wait = metric(&proc, next).await - unix_now();
            (wait >= MIN_PENDING_RETRY).then_some(wait)
        },
    )
    .await
    .unwrap_or_else(|| {
        panic!(
            "the retry never got {MIN_PENDING_RETRY} s away; log:\n{}",
            proc.log_text()
        )
    });
    let outage_at_detection = t_fault.elapsed().as_secs_f64();
    // Label Studio returns at some moment of that wait — here inside its first probe interval,
    // where a probe that starts an interval late, or forgets what earlier probes saw, misses it.
    tokio::time::sleep(Duration::from_millis(fastrand::u64(500..1500))).await;
    let pending = pending - t_fault.elapsed().as_secs_f64() + outage_at_detection;
    let failures = metric(&proc, &errors_metric("network")).await;
    proxy.set(Fault::Pass);
    let outage = t_fault.elapsed().as_secs_f64();
    let t_restore = Instant::now();
    let recovery = wait_for(Duration::from_secs(90), || async {
        proc.admin_get("/readyz").await.0 == 200
    })
    .await;
    let fresh = read_set(&token_dir).filter(|s| s.0 != before);
    let api = match &fresh {
        Some((_, auth, _)) => {
            let (url, auth) = (ls.url(), auth.clone());
            tokio::task::spawn_blocking(move || http_status(&url, WHOAMI, &auth))
                .await
                .unwrap()
        }
        None => None,
    };
    let health_probes = proxy
        .requests()
        .iter()
        .filter(|r| r.path == "/health" && r.at >= t_restore)
        .count();
    let exit = proc.signal_and_wait("TERM").code();
    let log = proc.log_text();
    eprintln!(
        "FAULTS-FIGURES test=recovery outage_s={outage:.1} network_errors={failures} retry_pending_at_restore_s={pending:.1} recovery_s={} health_probes_after_restore={health_probes} api_after_recovery={api:?} exit={exit:?} wall_s={:.0}",
        recovery.map(|r| format!("{r:.2}")).unwrap_or("never".into()),
        t0.elapsed().as_secs_f64()
    );
    // A probe is due within its interval, then one exchange + validation (request timeout each),
    // plus slack for a loaded 2-core machine; still well under the pending retry.
    let bound = HEALTH_PROBE_INTERVAL + 2.0 * REQUEST_TIMEOUT + 1.0;
    assert!(
        recovery.is_some_and(|r| r <= bound),
        "recovery took {recovery:?} s (bound {bound} s; the backoff had the retry {pending:.1} s away); log:\n{}",
        proc.log_text()
    );
    assert_eq!(api, Some(200), "the token published after the outage");
    assert!(
        log.contains("Label Studio answers /health again"),
        "recovery not triggered by the probe"
    );
    assert_eq!(exit, Some(0));
    let tokens: BTreeSet<String> = proxy.tokens().into_iter().collect();
    scan_logs("recovery", &[log], &tokens, &pat);
}
