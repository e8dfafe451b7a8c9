//! The loop against a scripted Label Studio and recording sinks, on tokio's paused clock with a
//! manual wall clock: hours of schedule run in milliseconds, and nothing polls.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{
    clock::manual::ManualClock,
    exchange::{parse_refresh_body, Accepted, AccessToken, Identity, Reply},
    jwt::tests::make_jwt,
    metrics::Metrics,
    schedule::{Policy, MAX_WAIT},
    secret::Secret,
    sink::SinkError,
    source::{channel, PatPublisher, PatState},
    token::{Authorization, Scheme, TokenSet},
};

/// Where the manual wall clock starts (a fixed, realistic date).
const WALL0: f64 = 1_800_000_000.0;

/// Scripted Label Studio with its own clock (`skew` seconds ahead of ours).
struct FakeLs {
    clock: Arc<ManualClock>,
    origin: tokio::time::Instant,
    skew: AtomicI64,
    ttl: AtomicI64,
    refreshes: Mutex<VecDeque<Result<(), ExchangeError>>>,
    validations: Mutex<VecDeque<Result<(), ExchangeError>>>,
    /// While set, refreshes fail as unreachable and `/health` fails too.
    down: AtomicBool,
    /// While set, every validation is refused (an expired or revoked token).
    reject_all: AtomicBool,
    /// A refresh that never answers.
    hang: AtomicBool,
    identity: Mutex<Option<Identity>>,
    seen_pats: Mutex<Vec<String>>,
    seen_auth: Mutex<Vec<String>>,
    health_probes: AtomicU32,
    times: Mutex<Vec<f64>>,
    /// `iat` and `exp` as raw JSON text ("" leaves `iat` out) instead of a real token's: what a
    /// hostile or broken server could put in the answer.
    claims: Mutex<Option<(String, String)>>,
    /// The `Date` validation answers report instead of Label Studio's clock.
    date: Mutex<Option<Option<f64>>>,
    /// Wakes waiters on every refresh request.
    refreshed: Notify,
}

impl FakeLs {
    fn new(clock: Arc<ManualClock>) -> Arc<Self> {
        Arc::new(FakeLs {
            clock,
            origin: tokio::time::Instant::now(),
            skew: AtomicI64::new(0),
            ttl: AtomicI64::new(300),
            refreshes: Mutex::default(),
            validations: Mutex::default(),
            down: AtomicBool::new(false),
            reject_all: AtomicBool::new(false),
            hang: AtomicBool::new(false),
            identity: Mutex::new(None),
            seen_pats: Mutex::default(),
            seen_auth: Mutex::default(),
            health_probes: AtomicU32::new(0),
            times: Mutex::default(),
            claims: Mutex::default(),
            date: Mutex::default(),
            refreshed: Notify::new(),
        })
    }

    /// Label Studio's clock: its own (our wall clock's steps do not move it), `skew` ahead of
    /// where ours started.
    fn now(&self) -> i64 {
        (WALL0 + self.origin.elapsed().as_secs_f64()) as i64 + self.skew.load(Ordering::SeqCst)
    }

    fn refresh_times(&self) -> Vec<f64> {
        self.times.lock().unwrap().clone()
    }

    fn refreshes(&self) -> usize {
        self.seen_pats.lock().unwrap().len()
    }

    fn validations(&self) -> usize {
        self.seen_auth.lock().unwrap().len()
    }

    /// Waits (on the paused clock, without polling) until `n` refreshes were asked for.
    async fn until_refreshes(&self, n: usize) {
        loop {
            let notified = self.refreshed.notified();
            if self.refreshes() >= n {
                return;
            }
            notified.await;
        }
    }
}

fn network_error() -> ExchangeError {
    ExchangeError::Network {
        what: "token refresh",
        url: "u".into(),
        cause: "refused".into(),
    }
}

impl Exchange for Arc<FakeLs> {
    async fn refresh(&self, pat: &Secret) -> Result<AccessToken, ExchangeError> {
        self.seen_pats.lock().unwrap().push(pat.expose().to_owned());
        self.times
            .lock()
            .unwrap()
            .push(self.clock.now().0.as_secs_f64());
        self.refreshed.notify_waiters();
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(network_error());
        }
        if let Some(scripted) = self.refreshes.lock().unwrap().pop_front() {
            scripted?;
        }
        let n = self.now();
        let (iat, exp) = self.claims.lock().unwrap().clone().unwrap_or_else(|| {
            (
                n.to_string(),
                (n + self.ttl.load(Ordering::SeqCst)).to_string(),
            )
        });
        let iat = if iat.is_empty() {
            String::new()
        } else {
            format!(r#","iat":{iat}"#)
        };
        let token = make_jwt(&format!(
            r#"{{"token_type":"access"{iat},"exp":{exp},"jti":"{}"}}"#,
            fastrand::u64(..)
        ));
        // The answer goes through the same parsing as a real one.
        let reply = Reply {
            status: reqwest::StatusCode::OK,
            retry_after: None,
            server_date: None,
            content_type: "application/json".into(),
            body: serde_json::json!({ "access": token })
                .to_string()
                .into_bytes(),
            truncated: false,
        };
        parse_refresh_body(&reply).map_err(|problem| ExchangeError::InvalidResponse {
            what: "token refresh",
            url: "http://fake".into(),
            problem,
        })
    }

    async fn validate(&self, auth: &Authorization) -> Result<Accepted, ExchangeError> {
        self.seen_auth
            .lock()
            .unwrap()
            .push(auth.header_value().expose().to_owned());
        if self.reject_all.load(Ordering::SeqCst) {
            return Err(ExchangeError::JwtDisabled {
                status: 401,
                path: "/x".into(),
            });
        }
        self.validations
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Ok(()))?;
        let date = *self.date.lock().unwrap();
        Ok(Accepted {
            server_date: date.unwrap_or(Some(self.now() as f64)),
            user: None,
        })
    }

    async fn health(&self) -> Result<(), ExchangeError> {
        self.health_probes.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            Err(network_error())
        } else {
            Ok(())
        }
    }

    async fn identify(&self) -> Identity {
        self.identity
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| Identity::LabelStudio("1.23.2".into()))
    }

    fn base(&self) -> String {
        "http://fake".into()
    }
}

/// Records published sets; fails while `fail` is set. `published` wakes waiters.
#[derive(Default)]
struct FakeSink {
    sets: Mutex<Vec<TokenSet>>,
    fail: AtomicBool,
    published: Notify,
}

impl FakeSink {
    fn count(&self) -> usize {
        self.sets.lock().unwrap().len()
    }

    /// Waits (on the paused clock, without polling) until `n` sets were published.
    async fn until(&self, n: usize) {
        loop {
            let notified = self.published.notified();
            if self.count() >= n {
                return;
            }
            notified.await;
        }
    }
}

impl Sink for Arc<FakeSink> {
    fn kind(&self) -> &'static str {
        "file"
    }
    fn describe(&self) -> String {
        "fake".into()
    }
    fn preflight(&self) -> BoxFuture<'_, Result<String, SinkError>> {
        Box::pin(async { Ok("fake".into()) })
    }
    fn publish<'a>(&'a self, set: &'a TokenSet) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if self.fail.load(Ordering::SeqCst) {
                return Err(SinkError {
                    sink: "file",
                    summary: "writing the token directory failed",
                    message: "disk full".into(),
                });
            }
            self.sets.lock().unwrap().push(set.clone());
            self.published.notify_waiters();
            Ok(())
        })
    }
}

fn pat() -> String {
    make_jwt(&format!(
        r#"{{"token_type":"refresh","iat":{},"exp":{},"jti":"{}"}}"#,
        WALL0 as i64,
        WALL0 as i64 + 10_000_000,
        fastrand::u64(..)
    ))
}

fn policy() -> Policy {
    Policy {
        jitter: Duration::ZERO,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        legacy_recheck: Duration::from_millis(50),
        ..Policy::default()
    }
}

fn http_err(reason: Reason, status: u16) -> ExchangeError {
    ExchangeError::Http {
        reason,
        what: "token refresh",
        status,
        detail: Some("x".into()),
        retry_after: None,
    }
}

struct Rig {
    clock: Arc<ManualClock>,
    ls: Arc<FakeLs>,
    sinks: Vec<Arc<FakeSink>>,
    publisher: PatPublisher,
    health: Health,
    metrics: Arc<Metrics>,
    refresher: Refresher<Arc<FakeLs>>,
}

fn rig_with(nsinks: usize, pat_value: &str, policy: Policy) -> Rig {
    let clock = Arc::new(ManualClock::new(WALL0));
    let ls = FakeLs::new(clock.clone());
    let sinks: Vec<Arc<FakeSink>> = (0..nsinks).map(|_| Arc::default()).collect();
    let (publisher, handle) = channel("file", "test source".into());
    publisher.set(PatState::Ready(Secret::new(pat_value)));
    let metrics = Arc::new(Metrics::new());
    let refresher = Refresher::new(
        ls.clone(),
        handle,
        sinks
            .iter()
            .map(|s| Box::new(s.clone()) as Box<dyn Sink>)
            .collect(),
        policy,
        metrics.clone(),
    )
    .with_clock(clock.clone());
    Rig {
        health: refresher.health(),
        clock,
        ls,
        sinks,
        publisher,
        metrics,
        refresher,
    }
}

fn rig(nsinks: usize, pat_value: &str) -> Rig {
    rig_with(nsinks, pat_value, policy())
}

fn metric(m: &Metrics, needle: &str) -> f64 {
    m.render()
        .lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Starts the loop; returns the shutdown token and the task.
fn spawn(
    r: Refresher<Arc<FakeLs>>,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), AttemptError>>,
) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(r.run(shutdown.clone()));
    (shutdown, task)
}

async fn stop(
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), AttemptError>>,
) {
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn success_validates_then_publishes_everywhere() {
    let mut r = rig(2, &pat());
    let p = r.refresher.attempt().await.unwrap();
    assert_eq!(p.set.auth.scheme, Scheme::Bearer);
    for s in &r.sinks {
        assert_eq!(
            s.sets.lock().unwrap().as_slice(),
            std::slice::from_ref(&p.set)
        );
    }
    assert_eq!(
        r.ls.seen_auth.lock().unwrap()[0],
        format!("Bearer {}", p.set.auth.token.expose())
    );
    assert!(r.health.is_ready());
    assert_eq!(
        metric(
            &r.metrics,
            "ls_token_refresher_refresh_total{result=\"success\"}"
        ),
        1.0
    );
    assert_eq!(metric(&r.metrics, "ls_token_refresher_token_valid"), 1.0);
    assert_eq!(
        metric(
            &r.metrics,
            "ls_token_refresher_token_expiration_timestamp_seconds"
        ),
        p.set.expires_at.unwrap() as f64
    );
}

#[tokio::test(start_paused = true)]
async fn rejected_token_is_never_published() {
    let mut r = rig(1, &pat());
    r.ls.validations
        .lock()
        .unwrap()
        .push_back(Err(ExchangeError::JwtDisabled {
            status: 401,
            path: "/x".into(),
        }));
    let e = r.refresher.attempt().await.unwrap_err();
    assert_eq!(e.reason, Reason::JwtDisabled);
    assert!(
        e.message.contains("JWT API tokens look disabled"),
        "{}",
        e.message
    );
    assert_eq!(r.sinks[0].count(), 0);
    assert!(!r.health.is_ready());
    assert_eq!(
        metric(
            &r.metrics,
            "ls_token_refresher_refresh_errors_total{reason=\"jwt_disabled\"}"
        ),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn wrong_kinds_of_token_are_config_errors() {
    let access_as_pat = make_jwt(r#"{"token_type":"access","exp":99999999999}"#);
    let expired = make_jwt(r#"{"token_type":"refresh","exp":1000}"#);
    for (value, reason) in [
        (access_as_pat.as_str(), Reason::WrongTokenType),
        (expired.as_str(), Reason::ExpiredPat),
        ("not a token", Reason::Unauthorized),
    ] {
        let mut r = rig(1, value);
        let e = r.refresher.attempt().await.unwrap_err();
        assert!(e.config, "{value}");
        assert_eq!(e.reason, reason);
        assert_eq!(r.ls.refreshes(), 0, "no exchange attempted");
        assert!(!e.message.contains(value), "messages never echo the token");
    }
}

#[tokio::test(start_paused = true)]
async fn legacy_token_is_validated_published_once_and_invalidated() {
    let legacy = "0123456789abcdef0123456789abcdef01234567";
    let mut r = rig(1, legacy);
    let p = r.refresher.attempt().await.unwrap();
    assert_eq!(p.set.auth.scheme, Scheme::Token);
    assert_eq!(p.set.expires_at, None);
    r.refresher.attempt().await.unwrap();
    assert_eq!(
        r.sinks[0].count(),
        1,
        "unchanged legacy token is not rewritten"
    );
    assert_eq!(r.ls.refreshes(), 0, "legacy tokens are never refreshed");
    assert_eq!(r.ls.seen_auth.lock().unwrap()[0], format!("Token {legacy}"));
    r.ls.validations
        .lock()
        .unwrap()
        .push_back(Err(ExchangeError::LegacyDisabled));
    assert_eq!(
        r.refresher.attempt().await.unwrap_err().reason,
        Reason::LegacyDisabled
    );
    assert!(r.health.ready().unwrap_err().contains("rejected"));
}

#[tokio::test(start_paused = true)]
async fn sink_failure_is_counted_and_others_still_updated() {
    let mut r = rig(2, &pat());
    r.sinks[1].fail.store(true, Ordering::SeqCst);
    let e = r.refresher.attempt().await.unwrap_err();
    assert_eq!(e.reason, Reason::PublishFailed);
    assert_eq!(e.summary, "writing the token directory failed");
    assert_eq!(r.sinks[0].count(), 1);
    assert_eq!(
        metric(
            &r.metrics,
            "ls_token_refresher_sink_write_errors_total{sink=\"file\"}"
        ),
        1.0
    );
    assert!(!r.health.is_ready(), "ready needs every sink");
}

#[tokio::test(start_paused = true)]
async fn run_retries_transient_failures_and_keeps_last_good_token() {
    let r = rig(1, &pat());
    r.ls.refreshes
        .lock()
        .unwrap()
        .push_back(Err(network_error()));
    let (shutdown, task) = spawn(r.refresher);
    r.sinks[0].until(1).await;
    assert_eq!(r.ls.refreshes(), 2);
    assert_eq!(
        metric(
            &r.metrics,
            "ls_token_refresher_refresh_errors_total{reason=\"network\"}"
        ),
        1.0
    );
    assert!(r.health.is_ready());
    stop(shutdown, task).await;
}

/// `/readyz` (and Events) carry the reason code and a fixed summary, never the detail with URLs,
/// paths or server text (that goes to the log).
#[tokio::test(start_paused = true)]
async fn readiness_says_reason_and_summary_not_details() {
    let r = rig(1, &pat());
    r.ls.down.store(true, Ordering::SeqCst);
    let (shutdown, task) = spawn(r.refresher);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let why = r.health.ready().unwrap_err();
    assert!(
        why.contains("network") && why.contains(Reason::Network.summary()),
        "{why}"
    );
    assert!(
        !why.contains("refused") && !why.contains("token refresh"),
        "{why}"
    );
    stop(shutdown, task).await;
}

#[tokio::test(start_paused = true)]
async fn run_stops_at_startup_on_config_error() {
    let r = rig(1, &make_jwt(r#"{"token_type":"access","exp":99999999999}"#));
    let e = r.refresher.run(CancellationToken::new()).await.unwrap_err();
    assert!(e.config && e.reason == Reason::WrongTokenType);
}

#[tokio::test(start_paused = true)]
async fn revoked_pat_triggers_reread_and_new_pat_is_used_at_once() {
    let first = pat();
    let r = rig(1, &first);
    let ls = r.ls.clone();
    let sink = r.sinks[0].clone();
    let (shutdown, task) = spawn(r.refresher);
    sink.until(1).await;
    // The next refresh is minutes away. The PAT is revoked and rotated: the scheduled exchange
    // fails, and the source must be asked to re-read (paused time: the wait is instant).
    ls.refreshes
        .lock()
        .unwrap()
        .push_back(Err(http_err(Reason::RevokedPat, 401)));
    tokio::time::timeout(Duration::from_secs(300), r.publisher.reread_requested())
        .await
        .expect("re-read requested");
    let failed_at = r.clock.now();
    let second = pat();
    r.publisher
        .set(PatState::Ready(Secret::new(second.clone())));
    sink.until(2).await;
    assert!(
        r.clock.now().since(failed_at) < Duration::from_secs(2),
        "new PAT published without waiting for the schedule"
    );
    let pats = ls.seen_pats.lock().unwrap().clone();
    assert_eq!(pats.first(), Some(&first));
    assert_eq!(pats.last(), Some(&second));
    stop(shutdown, task).await;
}

#[tokio::test(start_paused = true)]
async fn once_gives_up_on_permanent_errors_and_retries_transient_ones() {
    let mut r = rig(1, &pat());
    r.ls.refreshes.lock().unwrap().extend([
        Err(http_err(Reason::ServerError, 503)),
        Err(http_err(Reason::ServerError, 500)),
        Ok(()),
    ]);
    let p = r
        .refresher
        .once(Duration::from_secs(5), &CancellationToken::new())
        .await
        .unwrap();
    assert!(p.set.expires_at.is_some());
    r.ls.refreshes
        .lock()
        .unwrap()
        .push_back(Err(http_err(Reason::RevokedPat, 401)));
    let e = r
        .refresher
        .once(Duration::from_secs(5), &CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(e.reason, Reason::RevokedPat);
    assert!(e.message.contains("revoked or rotated"));
}

/// At the real cadence (300 s tokens, default policy) the loop refreshes exactly on schedule and
/// talks to Label Studio for nothing in between: one exchange and one validation per refresh.
#[tokio::test(start_paused = true)]
async fn idle_between_refreshes_and_on_schedule() {
    let r = rig_with(
        1,
        &pat(),
        Policy {
            jitter: Duration::ZERO,
            ..Policy::default()
        },
    );
    let (shutdown, task) = spawn(r.refresher);
    r.sinks[0].until(1).await;
    // 0.66 × 300 s = 198 s.
    tokio::time::sleep(Duration::from_millis(197_900)).await;
    assert_eq!((r.ls.refreshes(), r.ls.validations()), (1, 1));
    r.sinks[0].until(2).await;
    assert_eq!((r.ls.refreshes(), r.ls.validations()), (2, 2));
    // An hour: 18 refreshes after the first, nothing else.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(r.ls.refreshes(), 20);
    assert_eq!(r.ls.validations(), 20);
    assert_eq!(r.ls.health_probes.load(Ordering::SeqCst), 0);
    assert!(r.health.live().is_ok() && r.health.is_ready());
    stop(shutdown, task).await;
}

/// The issue's case: 60 s tokens, our clock 30 s ahead of Label Studio's (and the other skews):
/// about one refresh per refresh interval, never a hot loop; readiness true; `expires_at` is
/// Label Studio's `exp`; the offset is reported.
#[tokio::test(start_paused = true)]
async fn clock_skew_in_either_direction_keeps_the_cadence() {
    for skew in [-30, 30, -70, 70, -3600, 86_400] {
        let r = rig(1, &pat());
        r.ls.ttl.store(60, Ordering::SeqCst);
        r.ls.skew.store(skew, Ordering::SeqCst);
        let (shutdown, task) = spawn(r.refresher);
        r.sinks[0].until(1).await;
        tokio::time::sleep(Duration::from_secs(600)).await;
        // 60 s tokens refresh at exp - 30 s: every ~29 s, so ~21 in 600 s (plus the first).
        let n = r.ls.refreshes();
        assert!(
            (20..=23).contains(&n),
            "skew {skew}: {n} refreshes in 600 s"
        );
        assert!(r.health.is_ready(), "skew {skew}: {:?}", r.health.ready());
        let offset = metric(&r.metrics, "ls_token_refresher_clock_offset_seconds");
        assert!(
            (offset - skew as f64).abs() <= 1.5,
            "skew {skew}: offset metric {offset}"
        );
        let last = r.sinks[0].sets.lock().unwrap().last().cloned().unwrap();
        let ls_now = r.ls.now();
        assert!(
            last.expires_at.unwrap() > ls_now && last.expires_at.unwrap() <= ls_now + 60,
            "skew {skew}"
        );
        stop(shutdown, task).await;
    }
}

/// A wall-clock step wakes the loop at once; it checks the token with one GET (not a refresh)
/// when Label Studio still accepts it, and refreshes at once when it does not. Steps in a burst
/// cost at most one check per 10 s.
#[tokio::test(start_paused = true)]
async fn wall_clock_steps_are_noticed_at_once_and_bounded() {
    let r = rig_with(
        1,
        &pat(),
        Policy {
            jitter: Duration::ZERO,
            ..Policy::default()
        },
    );
    let (shutdown, task) = spawn(r.refresher);
    r.sinks[0].until(1).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    r.clock.step_wall(3600.0);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        (r.ls.refreshes(), r.ls.validations()),
        (1, 2),
        "a step costs one validation, no refresh (Label Studio's clock did not move)"
    );
    // Only our clock moved: the offset is now about -3600 s, and readiness stays true.
    let offset = metric(&r.metrics, "ls_token_refresher_clock_offset_seconds");
    assert!((offset + 3600.0).abs() < 2.0, "{offset}");
    assert!(r.health.is_ready());
    // A burst of steps, one per second for a minute: at most one check per 10 s.
    for _ in 0..60 {
        r.clock.step_wall(1.0);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let checks = r.ls.validations() - 2;
    assert!((5..=7).contains(&checks), "{checks} checks for 60 steps");
    assert_eq!(r.ls.refreshes(), 1);
    // Label Studio shares the clock and it jumps: the token is refused, so a refresh happens at once.
    r.ls.reject_all.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(11)).await;
    r.clock.step_wall(600.0);
    tokio::time::sleep(Duration::from_millis(10)).await;
    r.ls.reject_all.store(false, Ordering::SeqCst);
    r.sinks[0].until(2).await;
    // The first new token may still meet the refusal (the fake refuses every token meanwhile).
    assert!((2..=3).contains(&r.ls.refreshes()));
    stop(shutdown, task).await;
}

/// Label Studio's clock moves against ours while the token is held (the host it shares with us
/// stepped): the check re-times the token, so readiness and the schedule follow Label Studio.
#[tokio::test(start_paused = true)]
async fn label_studios_clock_moving_retimes_the_token() {
    let r = rig(1, &pat());
    let (shutdown, task) = spawn(r.refresher);
    r.sinks[0].until(1).await;
    // Label Studio's clock jumps 250 s ahead (ours does not): the 300 s token has 50 s left.
    r.ls.skew.store(250, Ordering::SeqCst);
    r.clock.step_wall(0.0);
    // The refresh is due at once (past 0.66 of the lifetime on Label Studio's clock).
    r.sinks[0].until(2).await;
    assert!(r.clock.now().0 < Duration::from_secs(5));
    stop(shutdown, task).await;
}

/// An outage longer than the token's life: while nothing valid is held, `/health` is probed
/// every 2 s and the refresh happens within a probe interval of Label Studio's return, though
/// the backoff had grown to its 60 s cap.
#[tokio::test(start_paused = true)]
async fn recovery_after_a_long_outage_is_prompt() {
    let r = outage_rig();
    let (shutdown, task) = spawn(r.refresher);
    r.sinks[0].until(1).await;
    r.ls.down.store(true, Ordering::SeqCst);
    // Ten minutes down: the token expired long ago, backoff is at its cap.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(!r.health.is_ready());
    let attempts_down = r.ls.refreshes();
    // Retries are capped at a quarter of the remaining life (so several fit before expiry), then
    // at --backoff-max with equal jitter: never closer than half of it once nothing is valid.
    let times = r.ls.refresh_times();
    assert!(attempts_down < 40, "{attempts_down} exchanges: {times:?}");
    let after_expiry: Vec<f64> = times.iter().copied().filter(|t| *t > 75.0).collect();
    assert!(
        after_expiry.windows(2).all(|w| w[1] - w[0] >= 29.9),
        "{times:?}"
    );
    let probes = r.ls.health_probes.load(Ordering::SeqCst);
    assert!((200..=330).contains(&probes), "{probes} probes in 600 s");
    assert_prompt_return(&r.ls, &r.sinks[0], &r.clock).await;
    assert!(r.health.is_ready());
    stop(shutdown, task).await;
}

/// The rig of the outage tests: 60 s tokens, no jitter.
fn outage_rig() -> Rig {
    let r = rig_with(
        1,
        &pat(),
        Policy {
            jitter: Duration::ZERO,
            ..Policy::default()
        },
    );
    r.ls.ttl.store(60, Ordering::SeqCst);
    r
}

/// Brings Label Studio back and asserts the next publish follows within a probe interval and
/// an attempt.
async fn assert_prompt_return(ls: &FakeLs, sink: &Arc<FakeSink>, clock: &ManualClock) {
    ls.down.store(false, Ordering::SeqCst);
    let back = clock.now();
    sink.until(sink.count() + 1).await;
    let gap = clock.now().since(back);
    assert!(
        gap <= Duration::from_secs(3),
        "recovered {gap:?} after the return"
    );
}

/// Label Studio back just after a failed attempt put the next retry up to a minute away (before
/// the wait's first probe interval is over): recovery still within a probe interval. Found by the
/// e2e test: the probe used to start only one interval into each wait, and to forget between
/// waits that Label Studio had been down.
#[tokio::test(start_paused = true)]
async fn recovery_when_label_studio_returns_right_after_an_attempt() {
    let r = outage_rig();
    let (shutdown, task) = spawn(r.refresher);
    r.sinks[0].until(1).await;
    r.ls.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(!r.health.is_ready());
    // Wait for the next (failing) attempt, and bring Label Studio back right after it.
    let n = r.ls.refreshes();
    let t0 = r.clock.now();
    while r.ls.refreshes() == n {
        assert!(r.clock.now().since(t0) < Duration::from_secs(120));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_prompt_return(&r.ls, &r.sinks[0], &r.clock).await;
    stop(shutdown, task).await;
}

/// A server that is up (`/health` fine) but fails refreshes is never probed into a fast loop.
#[tokio::test(start_paused = true)]
async fn failing_but_up_server_is_not_hammered() {
    let r = rig_with(
        1,
        &pat(),
        Policy {
            jitter: Duration::ZERO,
            ..Policy::default()
        },
    );
    r.ls.refreshes
        .lock()
        .unwrap()
        .extend((0..100).map(|_| Err(http_err(Reason::ServerError, 500))));
    let (shutdown, task) = spawn(r.refresher);
    tokio::time::sleep(Duration::from_secs(600)).await;
    let n = r.ls.refreshes();
    // Backoff steps 1, 2, 4, … capped at 60 s, each shortened by up to half (equal jitter, drawn at
    // random): attempts at 0, 1, 3, 7, 15, 31, 63, then every 60 s (15 in 10 minutes) when no
    // draw shortens, at 0, 0.5, 1.5, …, 31.5, then every 30 s (25) when every draw halves.
    assert!((15..=25).contains(&n), "{n} attempts");
    stop(shutdown, task).await;
}

/// `--url` at a web server that is not Label Studio (501 to the POST, no /api/version): `run`
/// stops at start-up with a configuration error naming --url; `once` too, without waiting out
/// its timeout.
#[tokio::test(start_paused = true)]
async fn wrong_url_is_diagnosed_at_once() {
    let foreign = || ExchangeError::Http {
        reason: Reason::ServerError,
        what: "token refresh",
        status: 501,
        detail: None,
        retry_after: None,
    };
    let r = rig(1, &pat());
    r.ls.refreshes.lock().unwrap().push_back(Err(foreign()));
    *r.ls.identity.lock().unwrap() = Some(Identity::NotLabelStudio("no /api/version"));
    let e = r.refresher.run(CancellationToken::new()).await.unwrap_err();
    assert!(e.config && e.message.contains("--url (LS_URL)"), "{e}");

    let mut r = rig(1, &pat());
    r.ls.refreshes
        .lock()
        .unwrap()
        .extend((0..100).map(|_| Err(foreign())));
    *r.ls.identity.lock().unwrap() = Some(Identity::NotLabelStudio("no /api/version"));
    let t0 = tokio::time::Instant::now();
    let e = r
        .refresher
        .once(Duration::from_secs(60), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        e.config && e.message.contains("does not point at Label Studio"),
        "{e}"
    );
    assert!(t0.elapsed() < Duration::from_secs(1));

    // The same answer from a real Label Studio (a 5xx it may give) is retried.
    let mut r = rig(1, &pat());
    r.ls.refreshes.lock().unwrap().push_back(Err(foreign()));
    r.refresher
        .once(Duration::from_secs(60), &CancellationToken::new())
        .await
        .unwrap();
}

/// `/livez` means "the loop is not late": fine across long sleeps, failing once an attempt hangs
/// past its budget.
#[tokio::test(start_paused = true)]
async fn liveness_fails_only_when_the_loop_misses_its_deadline() {
    let r = rig(1, &pat());
    let refresher = r.refresher.with_attempt_budget(Duration::from_secs(60));
    let (shutdown, task) = spawn(refresher);
    r.sinks[0].until(1).await;
    tokio::time::sleep(Duration::from_secs(1000)).await;
    assert!(r.health.live().is_ok());
    r.ls.hang.store(true, Ordering::SeqCst);
    let n = r.ls.refreshes();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if r.ls.refreshes() > n {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(89)).await;
    assert!(r.health.live().is_ok(), "within budget and grace");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(r.health.live().unwrap_err().contains("missed its deadline"));
    stop(shutdown, task).await;
}

/// A consumer reports a rejection (the proxy saw a 401): one validation; a refresh only if the
/// token is indeed refused; repeated reports coalesce.
#[tokio::test(start_paused = true)]
async fn rejection_reports_check_then_refresh_and_are_rate_limited() {
    let r = rig(1, &pat());
    let report = r.refresher.rejection_report();
    let (shutdown, task) = spawn(r.refresher);
    r.sinks[0].until(1).await;
    for _ in 0..50 {
        report.token_rejected();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(r.ls.refreshes(), 1, "accepted token: no refresh");
    assert!(r.ls.validations() <= 2 + 1, "{}", r.ls.validations());
    r.ls.reject_all.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    report.token_rejected();
    tokio::time::sleep(Duration::from_millis(10)).await;
    r.ls.reject_all.store(false, Ordering::SeqCst);
    r.sinks[0].until(2).await;
    stop(shutdown, task).await;
}

/// A PAT source that flaps cannot make the loop exchange faster than once a second.
#[tokio::test(start_paused = true)]
async fn pat_changes_refresh_at_once_but_bounded() {
    let r = rig(1, &pat());
    let (shutdown, task) = spawn(r.refresher);
    r.sinks[0].until(1).await;
    for _ in 0..100 {
        r.publisher.set(PatState::Ready(Secret::new(pat())));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let n = r.ls.refreshes();
    assert!((2..=3).contains(&n), "{n} exchanges for 100 changes in 1 s");
    stop(shutdown, task).await;
}

/// A claim value as the JSON text a hostile or broken server might send: `i64` extremes and
/// neighbours, values near ±2^63 and ±1e19 written as floats (they saturate to `i64::MIN`/`MAX` on
/// decoding), the edges of the dates RFC 3339 can write, arbitrary integers and floats, and
/// realistic values around Label Studio's clock.
fn hostile_claim() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        prop::sample::select(vec![
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775806",
            "-9223372036854775807",
            "9.223372036854776e18",
            "-9.223372036854776e18",
            "1e19",
            "-1e19",
            "10000000000000000000",
            "-10000000000000000000",
            "1.7976931348623157e308",
            "-1e308",
            "0",
            "-1",
            "253402300799",
            "253402300800",
        ])
        .prop_map(str::to_owned),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        (-1_000_000i64..1_000_000).prop_map(|d| (WALL0 as i64 + d).to_string()),
        (0i64..100_000).prop_map(|d| (WALL0 as i64 + d).to_string()),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Issue 14, finding 4: whatever `iat`/`exp` the exchange answer carries (absent, iat > exp,
    /// iat = exp, i64 extremes, ±1e19) and whatever `Date` a later check reads, the whole
    /// path (answer parsing → timing → schedule → backoff → health, in the real loop) never panics
    /// and never wraps: the loop keeps running, consecutive exchanges are at least half a second
    /// apart (a success waits `MIN_REFRESH_INTERVAL`, a failure at least half of
    /// `--backoff-initial`) and at most `MAX_WAIT` apart, and a refused answer is reported as
    /// `invalid_response`, never published.
    #[test]
    fn hostile_claims_keep_the_loop_running_within_bounds(
        // `iat` may also be there and not a number (then it is ignored); an `exp` that is not a
        // number makes the answer malformed, a start-up configuration error tested elsewhere.
        iat in proptest::option::of(proptest::prop_oneof![
            9 => hostile_claim(),
            1 => proptest::sample::select(vec!["null".to_owned(), "\"1800000000\"".to_owned()]),
        ]),
        exp in hostile_claim(),
        same in proptest::bool::weighted(0.1),
        date in proptest::option::of(proptest::prop_oneof![
            proptest::strategy::Just(f64::NAN),
            proptest::strategy::Just(-1e19),
            proptest::strategy::Just(1e19),
            proptest::strategy::Just(f64::INFINITY),
            proptest::strategy::Just(253_402_300_799.0),
            (WALL0 - 1e9..WALL0 + 1e9),
            (WALL0 - 2e5..WALL0 + 2e5),
        ]),
    ) {
        let iat = if same { Some(exp.clone()) } else { iat };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async move {
            // The command line's defaults: 1 s first backoff step. A PAT that outlives the test's
            // years of paused time (an expired PAT stops exchanges, rightly).
            let pat = make_jwt(&format!(
                r#"{{"token_type":"refresh","iat":{},"exp":{}}}"#,
                WALL0 as i64,
                WALL0 as i64 + 100 * 365 * 86_400
            ));
            let r = rig_with(1, &pat, Policy::default());
            *r.ls.claims.lock().unwrap() = Some((iat.clone().unwrap_or_default(), exp.clone()));
            *r.ls.date.lock().unwrap() = Some(date);
            let (ls, clock, health, sink) = (r.ls.clone(), r.clock.clone(), r.health.clone(), r.sinks[0].clone());
            let (shutdown, task) = spawn(r.refresher);
            // Long enough for three of the longest waits: a loop parked for longer fails here.
            let bound = MAX_WAIT * 3 + Duration::from_secs(3600);
            let parked = |n| format!("iat {iat:?} exp {exp}: fewer than {n} exchanges within {bound:?}");
            tokio::time::timeout(bound, ls.until_refreshes(3)).await.unwrap_or_else(|_| panic!("{}", parked(3)));
            // A wall-clock step (to the same time) makes the loop check the token, reading the
            // (hostile) `Date`.
            clock.step_wall(0.0);
            tokio::time::timeout(bound, ls.until_refreshes(5)).await.unwrap_or_else(|_| panic!("{}", parked(5)));
            assert!(!task.is_finished(), "the loop ended: iat {iat:?} exp {exp}");
            let times = ls.refresh_times();
            for w in times.windows(2) {
                let gap = w[1] - w[0];
                assert!(gap >= 0.5, "exchanges {gap} s apart (hot loop): iat {iat:?} exp {exp} date {date:?}");
                assert!(gap <= MAX_WAIT.as_secs_f64() + 1.0, "exchanges {gap} s apart: iat {iat:?} exp {exp}");
            }
            if sink.count() == 0 {
                let problem = health.problem().map(|(reason, _)| reason);
                assert_eq!(problem, Some(Reason::InvalidResponse), "nothing published: iat {iat:?} exp {exp}");
                assert!(health.ready().is_err());
            }
            for set in sink.sets.lock().unwrap().iter() {
                let e = set.expires_at.expect("a JWT has an expiry");
                assert!((0..=253_402_300_799).contains(&e), "published exp {e}");
            }
            stop(shutdown, task).await;
        });
    }
}

/// A standby exchanges nothing and writes nothing, is ready while its PAT source holds a PAT, and
/// refreshes at once on taking over; a leader whose margin runs out during its sleep stands by
/// at that moment, not at its next scheduled refresh.
#[tokio::test(start_paused = true)]
async fn standby_refreshes_only_while_leading_and_at_once_on_takeover() {
    let (leadership, set) = crate::leader::Leadership::manual();
    let mut r = rig(1, &pat());
    r.refresher = r.refresher.with_leadership(leadership);
    let (shutdown, task) = spawn(r.refresher);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(r.ls.refreshes(), 0, "a standby does not exchange");
    assert!(r.sinks[0].sets.lock().unwrap().is_empty(), "nor write");
    assert!(r.health.is_ready(), "{:?}", r.health.ready());
    r.publisher.set(PatState::Pending);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        r.health.ready().unwrap_err().contains("standby"),
        "{:?}",
        r.health.ready()
    );
    r.publisher.set(PatState::Ready(Secret::new(pat())));

    let t0 = tokio::time::Instant::now();
    set(Some(Duration::from_secs(30)));
    r.ls.until_refreshes(1).await;
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(r.sinks[0].sets.lock().unwrap().len(), 1);
    assert!(r.health.is_ready());

    // The margin runs out (no renewal) long before the token's refresh is due.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(r.ls.refreshes(), 1, "no exchange after the margin ran out");
    assert_eq!(r.sinks[0].sets.lock().unwrap().len(), 1);
    assert!(
        r.health.is_ready(),
        "a standby again: {:?}",
        r.health.ready()
    );
    set(Some(Duration::from_secs(30)));
    r.ls.until_refreshes(2).await;
    stop(shutdown, task).await;
}

/// A scripted rotator: due at a fixed Label Studio time, answers rotations and repairs from a
/// script, records what it was given.
struct FakeRotate {
    due_at: f64,
    rotations: VecDeque<crate::rotate::Outcome>,
    repairs: VecDeque<Option<crate::rotate::Outcome>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl crate::rotate::Rotate for FakeRotate {
    fn due_in(&mut self, _pat: &Secret, ls_now: f64) -> Option<f64> {
        Some((self.due_at - ls_now).max(0.0))
    }
    fn rotate<'a>(
        &'a mut self,
        access: &'a crate::rotate::Access,
        pat: &'a Secret,
        ls_now: f64,
        _wall: f64,
    ) -> BoxFuture<'a, crate::rotate::Outcome> {
        Box::pin(async move {
            if ls_now < self.due_at {
                return crate::rotate::Outcome::Unchanged;
            }
            self.log.lock().unwrap().push(format!(
                "rotate {} with access exp {}",
                pat.expose(),
                access.exp
            ));
            self.due_at = f64::MAX;
            self.rotations
                .pop_front()
                .unwrap_or(crate::rotate::Outcome::Unchanged)
        })
    }
    fn recover<'a>(
        &'a mut self,
        pat: &'a Secret,
        candidates: Vec<Secret>,
        _ls_now: f64,
        _wall: f64,
    ) -> BoxFuture<'a, Option<crate::rotate::Outcome>> {
        Box::pin(async move {
            self.log.lock().unwrap().push(format!(
                "recover {} with {} candidate(s)",
                pat.expose(),
                candidates.len()
            ));
            self.repairs.pop_front().flatten()
        })
    }
}

/// Attaches a [`FakeRotate`] to the rig's refresher; returns its log.
fn with_fake_rotation(
    r: &mut Rig,
    due_at: f64,
    rotations: Vec<crate::rotate::Outcome>,
    repairs: Vec<Option<crate::rotate::Outcome>>,
) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let refresher = std::mem::replace(&mut r.refresher, rig(0, "x").refresher);
    r.refresher = refresher.with_rotation(Box::new(FakeRotate {
        due_at,
        rotations: rotations.into(),
        repairs: repairs.into(),
        log: log.clone(),
    }));
    log
}

#[tokio::test(start_paused = true)]
async fn a_due_rotation_wakes_the_loop_and_the_new_pat_is_used_at_once() {
    let (old, new) = (pat(), pat());
    let mut r = rig(1, &old);
    let log = with_fake_rotation(
        &mut r,
        WALL0 + 60.0,
        vec![crate::rotate::Outcome::Rotated(Secret::new(new.clone()))],
        vec![],
    );
    let (ls, sink) = (r.ls.clone(), r.sinks[0].clone());
    let (shutdown, task) = spawn(r.refresher);
    sink.until(1).await;
    ls.until_refreshes(3).await;
    let times = ls.refresh_times();
    let pats = ls.seen_pats.lock().unwrap().clone();
    assert_eq!(
        pats[..3],
        [old.clone(), old.clone(), new.clone()],
        "old, old (woken for the rotation), then the new one at once"
    );
    // The 300 s token would be refreshed after ~200 s: the second refresh is the rotation's.
    assert!(
        (times[1] - times[0] - 60.0).abs() < 6.0,
        "woke for the rotation at 60 s: {times:?}"
    );
    assert!(
        times[2] - times[1] < 2.0,
        "the new PAT is used at once: {times:?}"
    );
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "one rotation: {:?}",
        log.lock().unwrap()
    );
    // The source still shows the old PAT (the write-back has not arrived): the new one stays in use.
    sink.until(3).await;
    ls.until_refreshes(4).await;
    assert_eq!(ls.seen_pats.lock().unwrap()[3], new);
    stop(shutdown, task).await;
}

#[tokio::test(start_paused = true)]
async fn a_blacklisted_pat_goes_to_the_rotator_for_repair_with_the_token_in_hand() {
    let (old, new) = (pat(), pat());
    let mut r = rig(1, &old);
    let log = with_fake_rotation(
        &mut r,
        f64::MAX,
        vec![],
        vec![Some(crate::rotate::Outcome::Recovered(Secret::new(
            new.clone(),
        )))],
    );
    let (ls, sink) = (r.ls.clone(), r.sinks[0].clone());
    let (shutdown, task) = spawn(r.refresher);
    sink.until(1).await;
    ls.refreshes
        .lock()
        .unwrap()
        .push_back(Err(http_err(Reason::RevokedPat, 401)));
    sink.until(2).await;
    let times = ls.refresh_times();
    let pats = ls.seen_pats.lock().unwrap().clone();
    assert_eq!(pats[1..3], [old.clone(), new.clone()]);
    assert!(
        times[2] - times[1] < 2.0,
        "repaired and used without a backoff: {times:?}"
    );
    // The in-memory token and the sink's (this fake sink reads nothing back): one candidate.
    assert_eq!(
        *log.lock().unwrap(),
        [format!("recover {old} with 1 candidate(s)")]
    );
    stop(shutdown, task).await;
}
