//! High availability on a real kube-apiserver (+ etcd) and a real Label Studio 1.23.2: two `run`
//! processes (the real binary, as the chart's ServiceAccount under the chart's Role, which grants
//! get/update on the chart's Lease only) write one target Secret with `--leader-elect`.
//!
//! - `two_replicas_one_writer_through_stop_cont_and_kill`: a reader reads the Secret every 0.5 s
//!   throughout and checks every token it sees against the clock and against Label Studio's API;
//!   SIGSTOP of the leader (a partitioned node: it keeps the Lease until it expires) → the standby
//!   takes over within the lease duration; SIGCONT → the old leader stands by and writes nothing;
//!   SIGKILL of the new leader → the first takes over again. Before that, the control: two replicas
//!   without election both exchange and write.
//! - `a_writer_never_replaces_a_later_expiring_token`: `once` finds the Secret holding a token
//!   whose published expiry is later than its own and leaves it (resourceVersion unchanged).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use ls_token_refresher_e2e::{
    chart,
    clock::{rfc3339, unix_now},
    jwt::jwt_exp,
    kube_api::data_of,
    log_scan::assert_no_secrets,
    process,
    refresher::{run_to_end, RefresherProc},
    secret_mode::{SecretMode, PAT_SECRET, TARGET},
    wait::{poll, wait_for},
};

/// The chart's Lease (named like the release's objects).
const LEASE: &str = chart::FULLNAME;
/// Access-token lifetime: short, so that refreshes (every ~20 s) happen during each phase.
const TTL: u64 = 30;
/// Lease timings of the test (the chart's defaults are 15 s / 10 s / 2 s): a takeover is due
/// within LEASE_DURATION + RETRY (+20 % jitter) of the leader's last renewal.
const LEASE_DURATION: u64 = 6;
const RENEW_DEADLINE: u64 = 4;
const RETRY: u64 = 1;

/// The shared fixture, with this file's helpers.
struct Env(SecretMode);

impl std::ops::Deref for Env {
    type Target = SecretMode;
    fn deref(&self) -> &SecretMode {
        &self.0
    }
}

async fn setup() -> Env {
    Env(SecretMode::start(TTL, "ha").await)
}

impl Env {
    /// Starts `run` as the chart's ServiceAccount with `LS_POD_NAME=name` (the holder identity),
    /// with the test's lease timings when `elect`.
    fn start(&self, name: &str, elect: bool) -> RefresherProc {
        let mut extra: Vec<String> = ["--min-lead", "5s", "--jitter", "0s"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if elect {
            extra.extend([
                "--leader-elect".into(),
                "--lease-name".into(),
                LEASE.into(),
                "--lease-duration".into(),
                format!("{LEASE_DURATION}s"),
                "--lease-renew-deadline".into(),
                format!("{RENEW_DEADLINE}s"),
                "--lease-retry-period".into(),
                format!("{RETRY}s"),
            ]);
        }
        self.start_run(name, "debug", &extra, &[("LS_POD_NAME", name)])
    }

    async fn holder(&self) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.admin.clone(), &self.ns);
        leases
            .get(LEASE)
            .await
            .ok()?
            .spec?
            .holder_identity
            .filter(|h| !h.is_empty())
    }

    async fn wait_holder(&self, who: &str, timeout: Duration) -> f64 {
        wait_for(timeout, || async {
            self.holder().await.as_deref() == Some(who)
        })
        .await
        .unwrap_or_else(|| panic!("{who} did not take the Lease within {timeout:?}"))
    }

    /// Sends `signal` to the leader `from`; `to` must take the Lease within the lease duration plus
    /// two (jittered) retry periods and write a new token. Returns that token.
    async fn takeover(&self, from: &RefresherProc, signal: &str, to: &str) -> String {
        let before = self.token().await.unwrap();
        process::kill(from.pid(), signal);
        let t0 = Instant::now();
        let took = self
            .wait_holder(to, Duration::from_secs(LEASE_DURATION + 3 * RETRY + 5))
            .await;
        let token = self
            .wait_token_other_than(&before, Duration::from_secs(10))
            .await;
        eprintln!(
            "HA-FIGURES SIG{signal}: {to} held the Lease after {took:.1} s and wrote after {:.1} s (lease {LEASE_DURATION} s, retry {RETRY} s)",
            t0.elapsed().as_secs_f64()
        );
        assert!(
            took <= (LEASE_DURATION + 2 * RETRY) as f64 + 1.0,
            "takeover after SIG{signal} took {took:.1} s"
        );
        token
    }

    async fn token(&self) -> Option<String> {
        let s = self.secrets().get_opt(TARGET).await.ok()??;
        data_of(&s, "token").filter(|t| !t.is_empty())
    }

    async fn wait_token_other_than(&self, old: &str, timeout: Duration) -> String {
        poll(timeout, Duration::from_millis(200), || async {
            self.token().await.filter(|t| t != old)
        })
        .await
        .unwrap_or_else(|| panic!("the target Secret was not rewritten within {timeout:?}"))
    }
}

async fn count(p: &RefresherProc, series: &str) -> f64 {
    p.metric(series).await.unwrap_or(0.0)
}

const APPLIES: &str =
    r#"ls_token_refresher_kube_requests_total{operation="apply_secret",result="ok"}"#;
const EXCHANGES: &str = r#"ls_token_refresher_refresh_total{result="success"}"#;
const LEADER: &str = "ls_token_refresher_leader ";

/// What the reader saw.
#[derive(Default)]
struct Seen {
    reads: usize,
    tokens: Vec<String>,
    problems: Vec<String>,
    /// The published expiry of every read, in order.
    expiries: Vec<i64>,
}

/// Reads the Secret every 0.5 s until `stop`; every token must be unexpired (its JWT `exp` and the
/// published `expires_at` after now) and accepted by Label Studio (`whoami` 200).
fn spawn_reader(env: &Env, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Seen> {
    let secrets = env.secrets();
    let whoami = format!("{}/api/current-user/whoami", env.ls.url());
    let http = ls_token_refresher_e2e::ls_api::http_client();
    use ls_token_refresher_e2e::ls_api::status_with;
    tokio::spawn(async move {
        let mut seen = Seen::default();
        while !stop.load(Ordering::SeqCst) {
            if let Ok(Some(s)) = secrets.get_opt(TARGET).await {
                let token = data_of(&s, "token").unwrap_or_default();
                let auth = data_of(&s, "authorization").unwrap_or_default();
                let exp_key = data_of(&s, "expires_at").unwrap_or_default();
                let now = unix_now();
                seen.reads += 1;
                match jwt_exp(&token) {
                    Some(exp) if (exp as f64) > now && rfc3339(exp) == exp_key => {
                        seen.expiries.push(exp);
                        let code = status_with(&http, &whoami, &auth).await;
                        if code != 200 {
                            seen.problems
                                .push(format!("read {}: Label Studio answered {code}", seen.reads));
                        }
                    }
                    other => seen.problems.push(format!(
                        "read {}: token exp {other:?}, expires_at {exp_key:?}, now {now:.0}",
                        seen.reads
                    )),
                }
                if seen.tokens.last() != Some(&token) {
                    seen.tokens.push(token);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_writer_through_stop_cont_and_kill() {
    let env = setup().await;

    // Control (what the issue describes): two replicas without election both exchange and write.
    let (mut x, mut y) = (env.start("plain-x", false), env.start("plain-y", false));
    x.wait_metric(APPLIES, 1.0, Duration::from_secs(60)).await;
    y.wait_metric(APPLIES, 1.0, Duration::from_secs(60)).await;
    let (xe, ye) = (count(&x, EXCHANGES).await, count(&y, EXCHANGES).await);
    eprintln!("HA-FIGURES control without election: exchanges x={xe} y={ye}");
    assert!(
        xe >= 1.0 && ye >= 1.0,
        "both replicas exchange without election"
    );
    assert!(x.signal_and_wait("TERM").success() && y.signal_and_wait("TERM").success());

    // Two replicas with election: one leads and writes, the other stands by, ready.
    let mut a = env.start("replica-a", true);
    a.wait_ready(200, Duration::from_secs(60)).await;
    env.wait_holder("replica-a", Duration::from_secs(10)).await;
    let mut b = env.start("replica-b", true);
    let body = b.wait_ready(200, Duration::from_secs(60)).await;
    assert_eq!(count(&a, LEADER).await, 1.0);
    assert_eq!(count(&b, LEADER).await, 0.0);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = spawn_reader(&env, stop.clone());
    // A whole refresh cycle (~20 s of a 30 s token): the leader refreshes, the standby does nothing.
    let first = env.token().await.unwrap();
    env.wait_token_other_than(&first, Duration::from_secs(TTL))
        .await;
    assert_eq!(
        count(&b, EXCHANGES).await,
        0.0,
        "a standby does not exchange: {body}"
    );
    assert_eq!(count(&b, APPLIES).await, 0.0, "a standby does not write");
    assert_eq!(env.holder().await.as_deref(), Some("replica-a"));

    // SIGSTOP the leader: a partitioned node, which keeps the Lease until it expires.
    let a_applies = count(&a, APPLIES).await;
    let b_token = env.takeover(&a, "STOP", "replica-b").await;
    assert_eq!(count(&b, LEADER).await, 1.0);

    // SIGCONT: the old leader finds its margin gone, stands by and writes nothing, through one of
    // the new leader's refreshes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    process::kill(a.pid(), "CONT");
    env.wait_token_other_than(&b_token, Duration::from_secs(TTL))
        .await;
    tokio::time::sleep(Duration::from_secs(2 * LEASE_DURATION)).await;
    assert_eq!(
        count(&a, LEADER).await,
        0.0,
        "the resumed leader stood down"
    );
    assert_eq!(
        count(&a, APPLIES).await,
        a_applies,
        "the resumed leader wrote nothing; log:\n{}",
        a.log_text()
    );
    assert_eq!(env.holder().await.as_deref(), Some("replica-b"));
    assert!(
        count(
            &a,
            r#"ls_token_refresher_leader_transitions_total{direction="lost"}"#
        )
        .await
            >= 1.0
    );
    let (code, ready) = a.admin_get("/readyz").await;
    assert_eq!(code, 200, "a standby with its PAT is ready: {ready}");

    // SIGKILL the new leader: the old one takes over again.
    env.takeover(&b, "KILL", "replica-a").await;
    // And one more regular refresh under the new leader.
    let last = env.token().await.unwrap();
    env.wait_token_other_than(&last, Duration::from_secs(TTL))
        .await;

    stop.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();
    eprintln!(
        "HA-FIGURES reader: {} reads, {} distinct tokens, {} problems",
        seen.reads,
        seen.tokens.len(),
        seen.problems.len()
    );
    assert!(seen.problems.is_empty(), "{:#?}", seen.problems);
    assert!(
        seen.reads >= 60 && seen.tokens.len() >= 5,
        "{} reads, {} tokens",
        seen.reads,
        seen.tokens.len()
    );
    assert!(
        seen.expiries.windows(2).all(|w| w[0] <= w[1]),
        "the published expiry went backwards: {:?}",
        seen.expiries
    );

    // What the API server saw from the process that led twice and stood by in between.
    let (_, text) = a.admin_get("/metrics").await;
    let figures: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("ls_token_refresher_kube_requests_total")
                || l.starts_with("ls_token_refresher_secret_writes_skipped_total")
        })
        .collect();
    eprintln!("HA-FIGURES replica-a API requests: {figures:?}");

    // SIGTERM releases the Lease: nobody holds it afterwards.
    assert!(a.signal_and_wait("TERM").success());
    assert_eq!(env.holder().await, None, "released on SIGTERM");
    let mut secrets: Vec<&str> = seen.tokens.iter().map(String::as_str).collect();
    secrets.push(&env.pat);
    assert_no_secrets(&a.log_text(), &secrets);
    assert_no_secrets(&b.log_text(), &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_never_replaces_a_later_expiring_token() {
    let env = setup().await;
    // Another writer published a token whose expiry is later than any this run can get.
    let other = env.ls.api().access_token(&env.pat).await;
    let later = rfc3339(jwt_exp(&other).unwrap() + 3600);
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
    let body = serde_json::json!({"apiVersion":"v1","kind":"Secret",
        "metadata":{"name":TARGET,"namespace":env.ns,
            "annotations":{"ls-token-refresher/expires-at": later}},
        "data":{"token": b64(&other), "authorization": b64(&format!("Bearer {other}")),
            "expires_at": b64(&later)}});
    let written = env.apply_target_as("ls-token-refresher", &body).await;
    let rv = written.metadata.resource_version.clone();

    let url = env.ls.url();
    let out = run_to_end(
        &[
            "once",
            "--url",
            &url,
            "--pat-secret",
            PAT_SECRET,
            "--target-secret",
            TARGET,
        ],
        &[
            ("KUBECONFIG", env.sa.kubeconfig.to_str().unwrap()),
            ("HOME", "/nonexistent"),
        ],
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("newer_published"),
        "the skip is reported: {}",
        out.stderr
    );
    let now = env.secrets().get(TARGET).await.unwrap();
    assert_eq!(
        now.metadata.resource_version, rv,
        "the Secret was not written"
    );
    assert_eq!(data_of(&now, "token").as_deref(), Some(other.as_str()));
    assert_no_secrets(&out.stderr, &[&other, &env.pat]);
}

/// `--leader-elect` coordinates writers of one Secret: with a token directory or the proxy (whose
/// standby copies would stay empty), or without a Secret, it is refused with one line and exit 2;
/// inconsistent lease timings too. No server is needed: this is decided before connecting.
#[test]
fn leader_elect_without_a_lone_secret_sink_or_with_bad_timings_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().to_str().unwrap();
    let base = ["run", "--url", "http://127.0.0.1:9", "--pat", "not-used"];
    for (extra, want) in [
        (
            &["--token-dir", tokens, "--leader-elect"][..],
            "--leader-elect (LS_LEADER_ELECT) needs --target-secret as the only output",
        ),
        (
            &["--target-secret", "t", "--token-dir", tokens, "--leader-elect"][..],
            "--leader-elect (LS_LEADER_ELECT) needs --target-secret as the only output",
        ),
        (
            &["--target-secret", "t", "--proxy-addr", "127.0.0.1:0", "--leader-elect"][..],
            "--leader-elect (LS_LEADER_ELECT) needs --target-secret as the only output",
        ),
        (
            &["--target-secret", "t", "--leader-elect", "--lease-duration", "10s"][..],
            "--lease-renew-deadline (LS_LEASE_RENEW_DEADLINE) 10s must be below --lease-duration 10s",
        ),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = run_to_end(&args, &[("HOME", "/nonexistent")]);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", out.stderr);
        let lines: Vec<&str> = out.stderr.lines().filter(|l| l.contains("error")).collect();
        assert!(
            lines.len() == 1 && lines[0].contains(want),
            "{extra:?}: {}",
            out.stderr
        );
    }
}
