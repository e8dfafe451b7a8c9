//! Signals to the real binary while a real Label Studio 1.23.2 issues tokens through the fault proxy:
//!
//! - `kills_of_the_real_binary_leave_a_whole_set`: SIGTERM / SIGKILL alternately, at random moments
//!   and aimed at a write (the moment a new generation directory appears), restarting on the same
//!   directory each time; after every kill the set on disk is whole, and unexpired tokens work.
//! - `sigterm_mid_request_exits_at_once`: SIGTERM while a request hangs (black hole,
//!   `--request-timeout 20s`), the request provably in flight (the fault proxy holds it in full,
//!   unanswered, with the connection open): exit 0 within ~1 s, the connection closed by the exit
//!   (the attempt is cancelled, not waited for).
//!
//! Figures (`FAULTS-FIGURES …` on stderr): docs/fault-injection.md.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use ls_token_refresher_e2e::{
    clock::{rfc3339, unix_now},
    fault_proxy::{Fault, FaultProxy},
    fault_suite::{fault_args, setup, start_refresher, Setup, WHOAMI},
    http1::http_status,
    jwt::jwt_exp,
    log_scan::scan_logs,
    process,
    token_dir::{debris, generation_names, read_set, visible_set},
    wait::poll,
};

struct KillOutcome {
    problems: Vec<String>,
    kills: usize,
    /// Kills that left a half-written generation behind (so they landed mid-write).
    mid_write: usize,
    /// Kills sent the moment a new generation directory appeared.
    aimed_hits: usize,
    logs: Vec<String>,
    tokens: Vec<String>,
    max_debris: usize,
}

/// The real binary killed (SIGTERM / SIGKILL alternately) at random moments, restarted each time on
/// the same directory; the set on disk is checked after every kill.
async fn kill_real_binary(
    ls_url: String,
    pat: String,
    base: PathBuf,
    rounds: usize,
) -> KillOutcome {
    let dir = base.join("kills");
    let token_dir = dir.join("token");
    std::fs::create_dir_all(&token_dir).unwrap();
    let proxy = FaultProxy::start(&ls_url).await;
    let args = fault_args(&proxy.url(), &token_dir, &[]);
    let mut problems = Vec::new();
    let mut logs = Vec::new();
    let (mut max_debris, mut mid_write, mut aimed_hits) = (0, 0, 0);
    for i in 0..rounds {
        let mut proc = start_refresher(&dir, &format!("kill{i}"), &args, &pat);
        proc.wait_ready(200, Duration::from_secs(60)).await;
        let sig = if i % 2 == 0 { "TERM" } else { "KILL" };
        let aimed = i >= rounds * 2 / 5;
        if !aimed {
            // Anywhere in the 5 s schedule.
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..5000))).await;
        } else {
            // Aimed at a write: watch for the next generation directory (the first step of a write;
            // the files and their fsyncs follow) and signal the moment it appears.
            let (td, pid, sig) = (token_dir.clone(), proc.pid(), sig.to_owned());
            let known: BTreeSet<String> = generation_names(&td);
            let hit = tokio::task::spawn_blocking(move || {
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(8) {
                    if generation_names(&td).difference(&known).next().is_some() {
                        process::kill(pid, &sig);
                        return true;
                    }
                    std::thread::sleep(Duration::from_micros(300));
                }
                false
            })
            .await
            .unwrap();
            if hit {
                aimed_hits += 1;
            }
        }
        let status = proc.signal_and_wait(sig);
        if sig == "TERM" && status.code() != Some(0) {
            problems.push(format!("round {i}: SIGTERM exit {status:?}"));
        }
        logs.push(proc.log_text());
        let (gens, tmp) = debris(&token_dir);
        let left = gens.saturating_sub(1) + usize::from(tmp);
        max_debris = max_debris.max(left);
        if left > 0 {
            mid_write += 1;
        }
        match (read_set(&token_dir), visible_set(&token_dir)) {
            (Some((token, auth, exp)), Some((vt, va, ve, json))) => {
                let e = jwt_exp(&token).unwrap_or(0);
                let whole = auth == format!("Bearer {token}")
                    && exp == rfc3339(e)
                    && (vt, va, ve) == (token.clone(), auth.clone(), exp.clone())
                    && json["token"] == token.as_str()
                    && json["authorization"] == auth.as_str();
                if !whole {
                    problems.push(format!("round {i} ({sig}): mixed or partial set"));
                }
                if e as f64 > unix_now() + 1.0 {
                    let url = ls_url.clone();
                    let api = tokio::task::spawn_blocking(move || http_status(&url, WHOAMI, &auth))
                        .await
                        .unwrap();
                    if api != Some(200) {
                        problems.push(format!("round {i} ({sig}): API answered {api:?}"));
                    }
                }
            }
            _ => problems.push(format!("round {i} ({sig}): no readable set after the kill")),
        }
    }
    KillOutcome {
        problems,
        kills: rounds,
        mid_write,
        aimed_hits,
        logs,
        tokens: proxy.tokens(),
        max_debris,
    }
}

/// `--request-timeout` of the SIGTERM test: far longer than the exit bound, so an exit that
/// waits for the hanging request (the behaviour before in-flight attempts were cancelled) cannot
/// pass.
const HANG_TIMEOUT_S: u64 = 20;
/// SIGTERM to exit: signal delivery, cancelling the attempt, closing the admin server. Measured
/// in tens of milliseconds; the bound leaves room for a loaded 2-core machine.
const EXIT_BOUND_S: f64 = 1.5;
/// How long the request has been hanging when SIGTERM is sent.
const HELD_BEFORE_TERM: Duration = Duration::from_millis(500);

struct SigtermOutcome {
    /// Path of the black-holed request.
    path: String,
    /// Its bytes as the proxy received them.
    bytes: usize,
    /// Answered before SIGTERM (must be false: it was in flight).
    answered_at_term: bool,
    /// The client (the refresher) had closed it before SIGTERM (must be false).
    gone_at_term: bool,
    /// How long it had been held when SIGTERM was sent.
    held_s: f64,
    /// SIGTERM to exit.
    exit_s: f64,
    exit: Option<i32>,
    /// SIGTERM to the proxy seeing the connection closed.
    closed_after_term_s: Option<f64>,
    log: String,
    tokens: Vec<String>,
}

/// SIGTERM while a request hangs (black hole, `--request-timeout 20s`): how long until exit, and
/// proof that the request was in flight.
async fn sigterm_mid_request(ls_url: String, pat: String, base: PathBuf) -> SigtermOutcome {
    let dir = base.join("sigterm-mid-request");
    let token_dir = dir.join("token");
    std::fs::create_dir_all(&token_dir).unwrap();
    let proxy = FaultProxy::start(&ls_url).await;
    let timeout = format!("{HANG_TIMEOUT_S}s");
    let args = fault_args(&proxy.url(), &token_dir, &["--request-timeout", &timeout]);
    let mut proc = start_refresher(&dir, "sigterm", &args, &pat);
    proc.wait_ready(200, Duration::from_secs(60)).await;
    proxy.set(Fault::BlackHole);
    let seen = proxy.requests().len();
    // The next request (the scheduled refresh, ~5 s away) arrives in full and is held.
    let idx = poll(
        Duration::from_secs(15),
        Duration::from_millis(10),
        || async {
            let reqs = proxy.requests();
            (seen..reqs.len()).find(|&i| reqs[i].fault == "black-hole")
        },
    )
    .await
    .expect("no request reached the black hole within 15 s");
    tokio::time::sleep(HELD_BEFORE_TERM).await;
    let at_term = proxy.requests()[idx].clone();
    let t = Instant::now();
    let exit = proc.signal_and_wait("TERM").code();
    let exit_s = t.elapsed().as_secs_f64();
    let closed = poll(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || async { proxy.requests()[idx].client_gone },
    )
    .await;
    SigtermOutcome {
        path: at_term.path.clone(),
        bytes: at_term.bytes,
        answered_at_term: at_term.answered,
        gone_at_term: at_term.client_gone.is_some(),
        held_s: (t - at_term.at).as_secs_f64(),
        exit_s,
        exit,
        closed_after_term_s: closed.map(|c| {
            c.saturating_duration_since(t).as_secs_f64()
                - t.saturating_duration_since(c).as_secs_f64()
        }),
        log: proc.log_text(),
        tokens: proxy.tokens(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_of_the_real_binary_leave_a_whole_set() {
    let t0 = Instant::now();
    let Setup { ls, pat, tmp } = setup().await;
    let kills = kill_real_binary(ls.url(), pat.clone(), tmp.path().to_path_buf(), 10).await;
    eprintln!(
        "FAULTS-FIGURES test=publish real_binary_kills={} (SIGTERM {}, SIGKILL {}) aimed_at_a_write={} kills_leaving_debris={} max_debris_after_kill={} wall_s={:.0}",
        kills.kills,
        kills.kills.div_ceil(2),
        kills.kills / 2,
        kills.aimed_hits,
        kills.mid_write,
        kills.max_debris,
        t0.elapsed().as_secs_f64()
    );
    assert!(
        kills.problems.is_empty(),
        "kills:\n{}",
        kills.problems.join("\n")
    );
    let tokens: BTreeSet<String> = kills.tokens.iter().cloned().collect();
    scan_logs("kills", &kills.logs, &tokens, &pat);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_request_exits_at_once() {
    let Setup { ls, pat, tmp } = setup().await;
    let o = sigterm_mid_request(ls.url(), pat.clone(), tmp.path().to_path_buf()).await;
    eprintln!(
        "FAULTS-FIGURES test=long scenario=sigterm-mid-request request_timeout_s={HANG_TIMEOUT_S} path={} request_bytes={} held_at_term_s={:.2} answered_at_term={} closed_before_term={} exit_after_s={:.3} connection_closed_after_term_s={} exit={:?}",
        o.path,
        o.bytes,
        o.held_s,
        o.answered_at_term,
        o.gone_at_term,
        o.exit_s,
        o.closed_after_term_s.map(|c| format!("{c:.3}")).unwrap_or("never".into()),
        o.exit
    );
    // In flight at SIGTERM: it had arrived in full, was held unanswered, and the refresher still
    // had it open (it closes it only when it exits).
    assert!(
        o.bytes > 0 && !o.answered_at_term && !o.gone_at_term && o.held_s >= 0.4,
        "the request was not provably in flight at SIGTERM"
    );
    assert_eq!(o.exit, Some(0), "exit code on SIGTERM; log:\n{}", o.log);
    assert!(
        o.exit_s <= EXIT_BOUND_S,
        "exit {:.2} s after SIGTERM with a request hanging (bound {EXIT_BOUND_S} s, request timeout {HANG_TIMEOUT_S} s)",
        o.exit_s
    );
    assert!(
        o.closed_after_term_s
            .is_some_and(|c| (0.0..=EXIT_BOUND_S).contains(&c)),
        "the hanging connection was not closed by the exit: {:?}",
        o.closed_after_term_s
    );
    let tokens: BTreeSet<String> = o.tokens.into_iter().collect();
    scan_logs("sigterm", &[o.log], &tokens, &pat);
}
