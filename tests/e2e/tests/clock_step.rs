//! The real binary notices a wall-clock step at once (issue 8): it sleeps on a `CLOCK_BOOTTIME`
//! timerfd until its next refresh, minutes away, and watches a `CLOCK_REALTIME` timerfd armed with
//! `TFD_TIMER_CANCEL_ON_SET`, which the kernel cancels whenever the wall clock is set.
//!
//! `wall_clock_step_is_noticed_at_once_and_costs_one_validation`: the test sets `CLOCK_REALTIME` to
//! its own current value (`clock_settime(clock_gettime())`: a step of a few microseconds back that
//! nothing else notices, but a "set" all the same, so the kernel cancels every cancel-on-set timer).
//! Within 1 s the refresher logs "the wall clock was stepped" and asks Label Studio — through the
//! fault proxy, which records every request — exactly once whether the current token still works
//! (`/api/current-user/whoami`), and does not refresh. A second step 2 s later falls inside the
//! 10 s between such checks: it is coalesced into one check at the end of that interval, not
//! answered at once (a clock that keeps stepping costs one GET per 10 s).
//!
//! Needs CAP_SYS_TIME (root here); without it (EPERM) the test says so and returns.
//!
//! **Its own test binary, on purpose**: setting the clock wakes the cancel-on-set timers of every
//! process on the machine, so a refresher of another test running at the same moment would make
//! one extra validation request and could fail a test that counts requests. cargo runs test
//! binaries one after another, so nothing else of this suite runs beside this one.

use std::time::{Duration, Instant};

use ls_token_refresher_e2e::{
    fault_proxy::{FaultProxy, RequestRecord},
    fault_suite::{SUCCESS, WHOAMI},
    label_studio::LabelStudio,
    log_scan::assert_no_secrets,
    refresher::{workdir, RefresherProc},
    token_dir::read_set,
    wait::poll,
};
use rustix::{
    io::Errno,
    time::{clock_gettime, clock_settime, ClockId},
};

/// What the log says when the step wakes the loop.
const STEPPED: &str = "the wall clock was stepped";
/// The loop checks the token at most this often after steps (the binary's `CHECK_MIN_INTERVAL`).
const CHECK_MIN_INTERVAL: f64 = 10.0;

/// Sets the wall clock to its own value; Err(EPERM) without CAP_SYS_TIME.
fn step_wall_clock() -> Result<Instant, Errno> {
    clock_settime(ClockId::Realtime, clock_gettime(ClockId::Realtime))?;
    Ok(Instant::now())
}

/// Requests the proxy saw after the first `skip`.
fn since(proxy: &FaultProxy, skip: usize) -> Vec<RequestRecord> {
    proxy.requests().into_iter().skip(skip).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_step_is_noticed_at_once_and_costs_one_validation() {
    // Stock lifetime: the next refresh is minutes away, so nothing but the step can wake the loop.
    let ls = LabelStudio::start_with_ttl(300).await;
    let pat = ls.api().create_pat().await;
    let proxy = FaultProxy::start(&ls.url()).await;
    let (tmp, dir, d) = workdir();
    let url = proxy.url();
    let mut proc = RefresherProc::start(
        tmp.path(),
        "step",
        &["--url", &url, "--token-dir", &d, "--log-level", "debug"],
        &[("LS_PAT", &pat)],
    );
    proc.wait_ready(200, Duration::from_secs(30)).await;
    // Let the start-up requests (exchange, validation) settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let quiet = proxy.requests().len();
    let successes = proc.metric(SUCCESS).await;

    let t_step = match step_wall_clock() {
        Ok(t) => t,
        Err(Errno::PERM) => {
            ls_token_refresher_e2e::skip::cannot_run(
                "wall_clock_step_is_noticed_at_once_and_costs_one_validation",
                "clock_settime(CLOCK_REALTIME) needs CAP_SYS_TIME (EPERM)",
            );
            return;
        }
        Err(e) => panic!("clock_settime: {e}"),
    };
    let first = poll(Duration::from_secs(5), Duration::from_millis(5), || async {
        since(&proxy, quiet).first().map(|r| r.at)
    })
    .await;
    // Whatever else it would do in reaction (a refresh, more checks) has time to show.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let after_first = since(&proxy, quiet);
    let log_first = proc.log_text();

    // A second step inside the check interval: coalesced, answered at the interval's end.
    let quiet2 = proxy.requests().len();
    let t_step2 = step_wall_clock().expect("clock_settime worked a moment ago");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let soon_after_second = since(&proxy, quiet2).len();
    let second = poll(
        Duration::from_secs(15),
        Duration::from_millis(20),
        || async { since(&proxy, quiet2).first().map(|r| r.at) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after_second = since(&proxy, quiet2);

    let latency = first.map(|a| (a - t_step).as_secs_f64());
    let second_after_first = match (first, second) {
        (Some(a), Some(b)) => Some((b - a).as_secs_f64()),
        _ => None,
    };
    let paths = |v: &[RequestRecord]| v.iter().map(|r| r.path.clone()).collect::<Vec<_>>();
    eprintln!(
        "STEP-FIGURES first_step_request_after_s={} requests_after_first={:?} second_step_requests_within_1.5s={soon_after_second} second_check_after_first_s={} requests_after_second={:?} step2_after_step1_s={:.2}",
        latency.map(|l| format!("{l:.3}")).unwrap_or("none".into()),
        paths(&after_first),
        second_after_first.map(|l| format!("{l:.2}")).unwrap_or("none".into()),
        paths(&after_second),
        (t_step2 - t_step).as_secs_f64(),
    );
    assert!(
        latency.is_some_and(|l| l <= 1.0),
        "no reaction within 1 s of the step ({latency:?}); log:\n{log_first}"
    );
    assert_eq!(
        paths(&after_first),
        vec![WHOAMI.to_string()],
        "exactly one validation and no refresh after the step"
    );
    assert_eq!(log_first.matches(STEPPED).count(), 1, "{log_first}");
    assert_eq!(
        soon_after_second, 0,
        "a second step inside 10 s was answered at once"
    );
    assert_eq!(
        paths(&after_second),
        vec![WHOAMI.to_string()],
        "the coalesced check after the second step"
    );
    let gap = second_after_first.unwrap_or(0.0);
    assert!(
        (CHECK_MIN_INTERVAL - 0.5..=CHECK_MIN_INTERVAL + 2.0).contains(&gap),
        "the coalesced check came {gap:.2} s after the first (interval {CHECK_MIN_INTERVAL} s)"
    );
    assert_eq!(proc.metric(SUCCESS).await, successes, "no refresh");
    assert_eq!(proc.admin_get("/readyz").await.0, 200);
    let (token, _, _) = read_set(&dir).unwrap();
    assert_eq!(proc.signal_and_wait("TERM").code(), Some(0));
    assert_no_secrets(&proc.log_text(), &[&pat, &token]);
}
