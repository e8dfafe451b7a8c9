//! The refresh loop: read the PAT, exchange it, test the new token, publish it to every sink, then
//! sleep until the token's own schedule says to refresh again. Failures back off (capped by the
//! time the published token has left), a rejected PAT triggers an immediate re-read of its source,
//! and the last good token stays published until its own `exp`.
//!
//! Generic over [`Exchange`] and driven by a [`PatHandle`] and `dyn Sink`s, so unit tests run the
//! whole loop against fakes with a paused clock.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    exchange::{Authorization, Exchange, ExchangeError, Scheme},
    health::{Health, Held},
    jwt::{self, CredentialKind, JwtError},
    metrics::Metrics,
    reason::Reason,
    schedule::{self, Backoff, Plan, Policy},
    sink::{rfc3339, Sink, TokenSet},
    source::{PatHandle, PatState},
};

/// The loop wakes at least this often to beat the liveness heartbeat and to notice wall-clock jumps
/// (suspend/resume, NTP steps) against the token's absolute `exp`. Every wake-up costs CPU (measured
/// ~0.25 ms on a small VM, bench/RESULTS.md); 15 s notices a jump well inside the default 100 s of
/// lead a 5-minute token has at its refresh, and is far below the liveness stall limit.
pub const TICK: Duration = Duration::from_secs(15);
/// Upper bound for one sink write; kube's own client timeouts are minutes long.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Receives noteworthy transitions (a Kubernetes Event recorder in clusters, nothing otherwise).
/// Notes must be secret-free: they are built from [`Reason`]s and our own messages only.
pub trait Notifier: Send + Sync {
    /// Something went wrong (`reason` changed to a failure).
    fn warning(&self, reason: Reason, note: String) -> BoxFuture<'_, ()>;
    /// Recovered after a failure.
    fn recovered(&self, note: String) -> BoxFuture<'_, ()>;
}

/// A notifier that does nothing.
pub struct NoNotifier;

impl Notifier for NoNotifier {
    fn warning(&self, _: Reason, _: String) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn recovered(&self, _: String) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A failed attempt.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct AttemptError {
    /// Closed-set reason.
    pub reason: Reason,
    /// One line, secret-free, actionable.
    pub message: String,
    /// Server's `Retry-After`.
    pub retry_after: Option<Duration>,
    /// A configuration mistake (fatal at start-up: exit 2).
    pub config: bool,
}

impl AttemptError {
    fn failed(reason: Reason, message: impl Into<String>) -> Self {
        AttemptError {
            reason,
            message: message.into(),
            retry_after: None,
            config: false,
        }
    }
    fn config(reason: Reason, message: impl Into<String>) -> Self {
        AttemptError {
            reason,
            message: message.into(),
            retry_after: None,
            config: true,
        }
    }

    /// True when retrying cannot help until someone changes something (used by `once`/`token`).
    pub fn is_permanent(&self) -> bool {
        self.config
            || self.reason.blames_pat()
            || matches!(self.reason, Reason::JwtDisabled | Reason::LegacyDisabled)
    }
}

impl From<ExchangeError> for AttemptError {
    fn from(e: ExchangeError) -> Self {
        let config = e.is_wrong_url();
        let mut message = e.to_string();
        if e.reason() == Reason::RevokedPat {
            message.push_str(": the PAT was revoked or rotated; put the new PAT into the source");
        } else if e.reason() == Reason::ExpiredPat {
            message.push_str(": create a new Personal Access Token in Label Studio");
        }
        AttemptError {
            reason: e.reason(),
            retry_after: e.retry_after(),
            message,
            config,
        }
    }
}

/// How the current token is scheduled.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Basis {
    Jwt {
        iat: Option<i64>,
        exp: i64,
        rand: f64,
    },
    Legacy,
}

/// The result of a successful attempt.
#[derive(Debug, Clone)]
pub struct Published {
    /// What was published.
    pub set: TokenSet,
    basis: Basis,
}

/// Seconds since the epoch, now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// A credential that can be used: a PAT to exchange, or a legacy token to present as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    /// A JWT refresh token (its `exp`, if any, is in the future).
    Pat {
        /// The PAT's own expiry.
        exp: Option<i64>,
    },
    /// A 40-hex legacy token.
    Legacy,
}

/// Rejects what cannot work as "the PAT" (empty, garbage, an access token, another JWT type, an
/// expired PAT) with a configuration error naming the fix; `describe` names the source. Shared by
/// the refresh loop and `check`, so both say the same thing.
pub fn usable_credential(
    kind: Result<CredentialKind, JwtError>,
    describe: &str,
    now: f64,
) -> Result<Usable, AttemptError> {
    match kind {
        Err(JwtError::Empty) => Err(AttemptError::config(Reason::SourceUnavailable, format!("the PAT from {describe} is empty"))),
        Err(_) => Err(AttemptError::config(
            Reason::Unauthorized,
            format!("the token from {describe} is neither a Label Studio Personal Access Token (a JWT) nor a 40-hex legacy token"),
        )),
        Ok(CredentialKind::Access(_)) => Err(AttemptError::config(
            Reason::WrongTokenType,
            "the configured token is an access token (token_type=access), which expires in minutes: configure the Personal Access Token (a refresh token) from Label Studio's Account & Settings instead",
        )),
        Ok(CredentialKind::OtherJwt(c)) => Err(AttemptError::config(
            Reason::WrongTokenType,
            format!(
                "the configured JWT has token_type={:?}, not \"refresh\": configure a Label Studio Personal Access Token",
                c.token_type.unwrap_or_default()
            ),
        )),
        Ok(CredentialKind::Pat(c)) => match c.exp {
            Some(exp) if (exp as f64) <= now => Err(AttemptError::config(
                Reason::ExpiredPat,
                format!("the PAT expired at {}: create a new Personal Access Token in Label Studio", rfc3339(exp)),
            )),
            exp => Ok(Usable::Pat { exp }),
        },
        Ok(CredentialKind::Legacy) => Ok(Usable::Legacy),
    }
}

/// The loop and its dependencies.
pub struct Refresher<E: Exchange> {
    exchange: E,
    sinks: Vec<Box<dyn Sink>>,
    pat: PatHandle,
    policy: Policy,
    legacy_recheck: Duration,
    metrics: Arc<Metrics>,
    health: Health,
    notifier: Arc<dyn Notifier>,
    /// Fingerprint of the legacy token every sink already holds (skip rewriting unchanged files).
    legacy_published: Option<u64>,
}

impl<E: Exchange> Refresher<E> {
    /// Assembles a refresher. `health` must have been created with the sinks' kinds, in order.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        exchange: E,
        sinks: Vec<Box<dyn Sink>>,
        pat: PatHandle,
        policy: Policy,
        legacy_recheck: Duration,
        metrics: Arc<Metrics>,
        health: Health,
        notifier: Arc<dyn Notifier>,
    ) -> Self {
        for s in &sinks {
            metrics.register_sink(s.kind());
        }
        Refresher {
            exchange,
            sinks,
            pat,
            policy,
            legacy_recheck,
            metrics,
            health,
            notifier,
            legacy_published: None,
        }
    }

    /// One attempt: PAT → exchange → validate → publish. Counts and times it.
    pub async fn attempt(&mut self) -> Result<Published, AttemptError> {
        let timer = self.metrics.refresh_duration_seconds.start_timer();
        let result = self.attempt_inner().await;
        timer.observe_duration();
        match &result {
            Ok(p) => {
                self.metrics
                    .refresh_total
                    .with_label_values(&["success"])
                    .inc();
                self.metrics.last_success_timestamp_seconds.set(unix_now());
                if let Some(exp) = p.set.expires_at {
                    self.metrics
                        .token_expiration_timestamp_seconds
                        .set(self.health.earliest_exp().unwrap_or(exp as f64));
                }
            }
            Err(e) => self.metrics.record_failure(e.reason),
        }
        self.update_valid_gauge();
        result
    }

    async fn attempt_inner(&mut self) -> Result<Published, AttemptError> {
        let pat = match self.pat.current() {
            PatState::Ready(p) => p,
            PatState::Pending => {
                return Err(AttemptError::failed(
                    Reason::SourceUnavailable,
                    format!("waiting for the PAT from {}", self.pat.describe),
                ))
            }
            PatState::Unavailable(why) => {
                return Err(AttemptError::failed(Reason::SourceUnavailable, why))
            }
            PatState::Invalid(why) => {
                return Err(AttemptError::config(Reason::SourceUnavailable, why))
            }
        };
        let now = unix_now();
        let kind = jwt::classify(&pat);
        let pat_exp = match &kind {
            Ok(CredentialKind::Pat(c)) => c.exp.unwrap_or(0),
            _ => 0,
        };
        self.metrics
            .pat_expiration_timestamp_seconds
            .set(pat_exp as f64);
        match usable_credential(kind, &self.pat.describe, now)? {
            Usable::Pat { .. } => {
                let access = self.exchange.refresh(&pat).await?;
                let auth = Authorization {
                    scheme: Scheme::Bearer,
                    token: access.token.clone(),
                };
                self.exchange.validate(&auth).await?;
                let set = TokenSet {
                    auth,
                    expires_at: Some(access.exp()),
                    refreshed_at: now as i64,
                };
                self.publish(&set).await?;
                self.legacy_published = None;
                Ok(Published {
                    set,
                    basis: Basis::Jwt {
                        iat: access.claims.iat,
                        exp: access.exp(),
                        rand: fastrand::f64(),
                    },
                })
            }
            Usable::Legacy => {
                let auth = Authorization {
                    scheme: Scheme::Token,
                    token: pat.clone(),
                };
                if let Err(e) = self.exchange.validate(&auth).await {
                    let e = AttemptError::from(e);
                    if matches!(e.reason, Reason::LegacyDisabled | Reason::Unauthorized) {
                        // The API says no: what is published no longer works.
                        self.health.invalidate_all();
                    }
                    return Err(e);
                }
                let set = TokenSet {
                    auth,
                    expires_at: None,
                    refreshed_at: now as i64,
                };
                if self.legacy_published != Some(pat.fingerprint()) {
                    self.publish(&set).await?;
                    self.legacy_published = Some(pat.fingerprint());
                } else {
                    for i in 0..self.sinks.len() {
                        self.health.set_held(
                            i,
                            Held {
                                exp: None,
                                valid: true,
                            },
                        );
                    }
                }
                Ok(Published {
                    set,
                    basis: Basis::Legacy,
                })
            }
        }
    }

    async fn publish(&mut self, set: &TokenSet) -> Result<(), AttemptError> {
        let mut failures = Vec::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let result = match tokio::time::timeout(PUBLISH_TIMEOUT, sink.publish(set)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "publishing to the {} sink timed out after {PUBLISH_TIMEOUT:?}",
                    sink.kind()
                )),
            };
            match result {
                Ok(()) => self.health.set_held(
                    i,
                    Held {
                        exp: set.expires_at.map(|e| e as f64),
                        valid: true,
                    },
                ),
                Err(msg) => {
                    self.metrics
                        .sink_write_errors_total
                        .with_label_values(&[sink.kind()])
                        .inc();
                    tracing::warn!(sink = sink.kind(), reason = "publish_failed", "{msg}");
                    failures.push(msg);
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            self.legacy_published = None;
            Err(AttemptError::failed(
                Reason::PublishFailed,
                failures.join("; "),
            ))
        }
    }

    fn update_valid_gauge(&self) {
        self.metrics
            .token_valid
            .set(i64::from(self.health.is_ready(unix_now())));
    }

    fn remaining(&self) -> Option<Duration> {
        let exp = self.health.earliest_exp()?;
        let left = exp - unix_now();
        (left > 0.0).then(|| Duration::from_secs_f64(left.min(schedule::MAX_WAIT.as_secs_f64())))
    }

    /// Runs until `shutdown`. Returns Err only for a configuration error on the very first attempt
    /// (the caller exits 2); later problems are reported and retried, never fatal.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), AttemptError> {
        // Wait for the source's first answer so a Secret watch that is still syncing is not an error.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.pat.ready() => break,
                // Still alive while a Secret watch is syncing (or the API server is away at start-up).
                _ = tokio::time::sleep(TICK) => self.health.beat(),
            }
        }
        let mut backoff = Backoff::default();
        let mut first = true;
        let mut failing: Option<Reason> = None;
        let mut lead_warned = false;
        loop {
            self.pat.mark_seen();
            // SIGTERM must not wait for a hanging request (two request timeouts plus a publish can
            // exceed Kubernetes' 30 s grace period). Dropping the attempt is safe: a file write in
            // flight finishes on its blocking thread and swaps atomically, or never swaps.
            let result = tokio::select! {
                r = self.attempt() => r,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let (wait, basis) = match result {
                Ok(p) => {
                    backoff.reset();
                    let exp_text = p
                        .set
                        .expires_at
                        .map(rfc3339)
                        .unwrap_or_else(|| "never (legacy token)".into());
                    if failing.take().is_some() {
                        self.notifier
                            .recovered(format!("access token refreshed again, expires {exp_text}"))
                            .await;
                    }
                    self.health.set_problem(None);
                    let wait = match p.basis {
                        Basis::Jwt { iat, exp, rand } => {
                            let lifetime = exp.saturating_sub(iat.unwrap_or(exp)) as f64;
                            if !lead_warned
                                && schedule::lead_exceeds_lifetime(&self.policy, lifetime)
                            {
                                lead_warned = true;
                                tracing::warn!(lifetime_s = lifetime, "access tokens live shorter than --min-lead plus --propagation-margin; refreshing at a quarter of their lifetime instead");
                            }
                            match schedule::plan(&self.policy, unix_now(), iat, exp, rand) {
                                Plan::In(d) => d,
                                other => {
                                    tracing::warn!(plan = ?other, "the new token's iat/exp disagree with our clock (clock skew with Label Studio?); retrying soon");
                                    backoff.next_delay(
                                        &self.policy,
                                        self.remaining(),
                                        None,
                                        fastrand::f64(),
                                    )
                                }
                            }
                        }
                        Basis::Legacy => self.legacy_recheck,
                    };
                    tracing::info!(
                        scheme = p.set.auth.scheme.as_str(),
                        expires_at = %exp_text,
                        next_in_s = format!("{:.1}", wait.as_secs_f64()),
                        sinks = self.sinks.len(),
                        "token published"
                    );
                    (wait, Some(p.basis))
                }
                Err(e) => {
                    if first && e.config {
                        return Err(e);
                    }
                    tracing::warn!(
                        reason = e.reason.as_str(),
                        failures = backoff.failures() + 1,
                        "refresh failed: {}",
                        e.message
                    );
                    if failing != Some(e.reason) {
                        failing = Some(e.reason);
                        self.notifier.warning(e.reason, e.message.clone()).await;
                    }
                    self.health.set_problem(Some((e.reason, e.message.clone())));
                    if e.reason.blames_pat() {
                        // The user may have rotated the PAT: look again before waiting.
                        self.pat.request_reread();
                    }
                    let wait = backoff.next_delay(
                        &self.policy,
                        self.remaining(),
                        e.retry_after,
                        fastrand::f64(),
                    );
                    (wait, None)
                }
            };
            first = false;
            let mut deadline = Instant::now() + wait;
            self.metrics
                .next_refresh_timestamp_seconds
                .set(unix_now() + wait.as_secs_f64());
            // Wait for the deadline, a PAT change or shutdown, ticking for liveness and clock jumps.
            loop {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let nap = (deadline - now).min(TICK);
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = self.pat.changed() => {
                        tracing::info!(source = %self.pat.describe, "PAT source changed; refreshing now");
                        break;
                    }
                    _ = tokio::time::sleep(nap) => {}
                }
                self.health.beat();
                if let Some(Basis::Jwt { iat, exp, rand }) = basis {
                    // Re-plan against the wall clock: a suspended VM or a stepped clock moves `exp` closer.
                    match schedule::plan(&self.policy, unix_now(), iat, exp, rand) {
                        Plan::In(d) => {
                            let replanned = Instant::now() + d;
                            if replanned + Duration::from_secs(1) < deadline {
                                tracing::info!("wall clock moved; refreshing earlier");
                                deadline = replanned;
                                self.metrics
                                    .next_refresh_timestamp_seconds
                                    .set(unix_now() + d.as_secs_f64());
                            }
                        }
                        _ => {
                            tracing::warn!(
                                "wall clock jumped past the token's schedule; refreshing now"
                            );
                            break;
                        }
                    }
                }
            }
        }
    }

    /// `once`/`token`: attempts until success, a permanent failure, or `timeout`.
    pub async fn once(
        &mut self,
        timeout: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Published, AttemptError> {
        let give_up = Instant::now() + timeout;
        let mut pat = self.pat.clone();
        tokio::select! {
            _ = pat.ready() => {}
            _ = tokio::time::sleep_until(give_up) => {}
            _ = shutdown.cancelled() => {}
        }
        let mut backoff = Backoff::default();
        loop {
            let err = match self.attempt().await {
                Ok(p) => return Ok(p),
                Err(e) => e,
            };
            let wait = backoff.next_delay(&self.policy, None, err.retry_after, fastrand::f64());
            if err.is_permanent() || Instant::now() + wait > give_up || shutdown.is_cancelled() {
                return Err(err);
            }
            tracing::warn!(
                reason = err.reason.as_str(),
                "attempt failed, retrying in {:.1}s: {}",
                wait.as_secs_f64(),
                err.message
            );
            if err.reason.blames_pat() {
                self.pat.request_reread();
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return Err(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        sync::{
            atomic::{AtomicBool, Ordering},
            Mutex,
        },
    };

    use super::*;
    use crate::{
        exchange::AccessToken,
        jwt::tests::make_jwt,
        secret::Secret,
        sink::SinkError,
        source::{channel, PatPublisher},
    };

    /// Scripted Label Studio: answers refreshes and validations from queues, records what it saw.
    #[derive(Default)]
    struct FakeLs {
        refreshes: Mutex<VecDeque<Result<AccessToken, ExchangeError>>>,
        validations: Mutex<VecDeque<Result<(), ExchangeError>>>,
        seen_pats: Mutex<Vec<String>>,
        seen_auth: Mutex<Vec<String>>,
    }

    impl Exchange for Arc<FakeLs> {
        async fn refresh(&self, pat: &Secret) -> Result<AccessToken, ExchangeError> {
            self.seen_pats.lock().unwrap().push(pat.expose().to_owned());
            self.refreshes
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Ok(access(300)))
        }
        async fn validate(&self, auth: &Authorization) -> Result<(), ExchangeError> {
            self.seen_auth
                .lock()
                .unwrap()
                .push(auth.header_value().expose().to_owned());
            self.validations
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Ok(()))
        }
    }

    /// Records published sets; fails while `fail` is set.
    #[derive(Default)]
    struct FakeSink {
        published: Mutex<Vec<TokenSet>>,
        fail: AtomicBool,
    }

    impl Sink for Arc<FakeSink> {
        fn kind(&self) -> &'static str {
            "file"
        }
        fn describe(&self) -> String {
            "fake".into()
        }
        fn publish<'a>(&'a self, set: &'a TokenSet) -> BoxFuture<'a, Result<(), SinkError>> {
            Box::pin(async move {
                if self.fail.load(Ordering::SeqCst) {
                    return Err(SinkError {
                        sink: "file",
                        message: "disk full".into(),
                    });
                }
                self.published.lock().unwrap().push(set.clone());
                Ok(())
            })
        }
    }

    fn now() -> i64 {
        unix_now() as i64
    }

    fn access(ttl: i64) -> AccessToken {
        let n = now();
        let token = make_jwt(&format!(
            r#"{{"token_type":"access","iat":{n},"exp":{},"jti":"{}"}}"#,
            n + ttl,
            fastrand::u64(..)
        ));
        let claims = jwt::decode_claims(&token).unwrap();
        AccessToken {
            token: Secret::new(token),
            claims,
        }
    }

    fn pat() -> String {
        make_jwt(&format!(
            r#"{{"token_type":"refresh","iat":{},"exp":{},"jti":"{}"}}"#,
            now(),
            now() + 1_000_000,
            fastrand::u64(..)
        ))
    }

    fn policy() -> Policy {
        Policy {
            fraction: 0.66,
            min_lead: Duration::from_secs(30),
            propagation_margin: Duration::ZERO,
            jitter: Duration::ZERO,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
        }
    }

    fn http_err(reason: Reason, status: u16) -> ExchangeError {
        ExchangeError::Http {
            reason,
            what: "token refresh",
            status,
            detail: None,
            retry_after: None,
        }
    }

    struct Rig {
        ls: Arc<FakeLs>,
        sinks: Vec<Arc<FakeSink>>,
        publisher: PatPublisher,
        health: Health,
        metrics: Arc<Metrics>,
        refresher: Refresher<Arc<FakeLs>>,
    }

    fn rig(nsinks: usize, pat_value: &str) -> Rig {
        let ls = Arc::new(FakeLs::default());
        let sinks: Vec<Arc<FakeSink>> = (0..nsinks).map(|_| Arc::default()).collect();
        let (publisher, handle) = channel("file", "test source".into());
        publisher.set(PatState::Ready(Secret::new(pat_value)));
        let health = Health::new(&vec!["file"; nsinks]);
        let metrics = Arc::new(Metrics::new());
        let refresher = Refresher::new(
            ls.clone(),
            sinks
                .iter()
                .map(|s| Box::new(s.clone()) as Box<dyn Sink>)
                .collect(),
            handle,
            policy(),
            Duration::from_millis(50),
            metrics.clone(),
            health.clone(),
            Arc::new(NoNotifier),
        );
        Rig {
            ls,
            sinks,
            publisher,
            health,
            metrics,
            refresher,
        }
    }

    fn metric(m: &Metrics, needle: &str) -> f64 {
        m.render()
            .lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }

    #[tokio::test]
    async fn success_validates_then_publishes_everywhere() {
        let mut r = rig(2, &pat());
        let p = r.refresher.attempt().await.unwrap();
        assert_eq!(p.set.auth.scheme, Scheme::Bearer);
        for s in &r.sinks {
            assert_eq!(
                s.published.lock().unwrap().as_slice(),
                std::slice::from_ref(&p.set)
            );
        }
        assert_eq!(
            r.ls.seen_auth.lock().unwrap()[0],
            format!("Bearer {}", p.set.auth.token.expose())
        );
        assert!(r.health.is_ready(unix_now()));
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

    #[tokio::test]
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
        assert!(r.sinks[0].published.lock().unwrap().is_empty());
        assert!(!r.health.is_ready(unix_now()));
        assert_eq!(
            metric(
                &r.metrics,
                "ls_token_refresher_refresh_errors_total{reason=\"jwt_disabled\"}"
            ),
            1.0
        );
    }

    #[tokio::test]
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
            assert!(
                r.ls.seen_pats.lock().unwrap().is_empty(),
                "no exchange attempted"
            );
            assert!(!e.message.contains(value), "messages never echo the token");
        }
    }

    #[tokio::test]
    async fn legacy_token_is_validated_published_once_and_invalidated() {
        let legacy = "0123456789abcdef0123456789abcdef01234567";
        let mut r = rig(1, legacy);
        let p = r.refresher.attempt().await.unwrap();
        assert_eq!(p.set.auth.scheme, Scheme::Token);
        assert_eq!(p.set.expires_at, None);
        r.refresher.attempt().await.unwrap();
        assert_eq!(
            r.sinks[0].published.lock().unwrap().len(),
            1,
            "unchanged legacy token is not rewritten"
        );
        assert!(
            r.ls.seen_pats.lock().unwrap().is_empty(),
            "legacy tokens are never refreshed"
        );
        assert_eq!(r.ls.seen_auth.lock().unwrap()[0], format!("Token {legacy}"));
        r.ls.validations
            .lock()
            .unwrap()
            .push_back(Err(ExchangeError::LegacyDisabled));
        assert_eq!(
            r.refresher.attempt().await.unwrap_err().reason,
            Reason::LegacyDisabled
        );
        assert!(r.health.ready(unix_now()).unwrap_err().contains("rejected"));
    }

    #[tokio::test]
    async fn sink_failure_is_counted_and_others_still_updated() {
        let mut r = rig(2, &pat());
        r.sinks[1].fail.store(true, Ordering::SeqCst);
        let e = r.refresher.attempt().await.unwrap_err();
        assert_eq!(e.reason, Reason::PublishFailed);
        assert_eq!(r.sinks[0].published.lock().unwrap().len(), 1);
        assert_eq!(
            metric(
                &r.metrics,
                "ls_token_refresher_sink_write_errors_total{sink=\"file\"}"
            ),
            1.0
        );
        assert!(!r.health.is_ready(unix_now()), "ready needs every sink");
    }

    #[tokio::test]
    async fn run_retries_transient_failures_and_keeps_last_good_token() {
        let r = rig(1, &pat());
        {
            let mut q = r.ls.refreshes.lock().unwrap();
            q.push_back(Err(ExchangeError::Network {
                what: "token refresh",
                url: "u".into(),
                cause: "refused".into(),
            }));
            q.push_back(Ok(access(300)));
        }
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(r.refresher.run(shutdown.clone()));
        for _ in 0..200 {
            if !r.sinks[0].published.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(r.sinks[0].published.lock().unwrap().len(), 1);
        assert_eq!(
            metric(
                &r.metrics,
                "ls_token_refresher_refresh_errors_total{reason=\"network\"}"
            ),
            1.0
        );
        assert!(r.health.is_ready(unix_now()));
        shutdown.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn run_stops_at_startup_on_config_error() {
        let r = rig(1, &make_jwt(r#"{"token_type":"access","exp":99999999999}"#));
        let e = r.refresher.run(CancellationToken::new()).await.unwrap_err();
        assert!(e.config && e.reason == Reason::WrongTokenType);
    }

    #[tokio::test]
    async fn revoked_pat_triggers_reread_and_new_pat_is_used_at_once() {
        let first = pat();
        let r = rig(1, &first);
        let shutdown = CancellationToken::new();
        let ls = r.ls.clone();
        let sink = r.sinks[0].clone();
        let task = tokio::spawn(r.refresher.run(shutdown.clone()));
        // First token published; the next refresh is minutes away.
        for _ in 0..200 {
            if !sink.published.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The PAT is revoked and rotated: the next exchange fails, and the source must be asked to re-read.
        ls.refreshes
            .lock()
            .unwrap()
            .push_back(Err(http_err(Reason::RevokedPat, 401)));
        let second = pat();
        r.publisher
            .set(PatState::Ready(Secret::new(second.clone())));
        tokio::time::timeout(Duration::from_secs(5), r.publisher.reread_requested())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "re-read requested; pats seen {}, published {}",
                    ls.seen_pats.lock().unwrap().len(),
                    sink.published.lock().unwrap().len()
                )
            });
        for _ in 0..300 {
            if sink.published.lock().unwrap().len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let pats = ls.seen_pats.lock().unwrap().clone();
        assert_eq!(pats.first(), Some(&first));
        assert_eq!(pats.last(), Some(&second));
        assert_eq!(
            sink.published.lock().unwrap().len(),
            2,
            "new PAT published without waiting for the schedule"
        );
        shutdown.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn once_gives_up_on_permanent_errors_and_retries_transient_ones() {
        let mut r = rig(1, &pat());
        r.ls.refreshes.lock().unwrap().extend([
            Err(http_err(Reason::ServerError, 503)),
            Err(http_err(Reason::ServerError, 500)),
            Ok(access(300)),
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
}
