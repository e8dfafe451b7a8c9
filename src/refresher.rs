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
/// (suspend/resume, NTP steps) against the token's absolute `exp`.
pub const TICK: Duration = Duration::from_secs(5);
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
        };
        let now = unix_now();
        match jwt::classify(&pat) {
            Err(JwtError::Empty) => Err(AttemptError::config(
                Reason::SourceUnavailable,
                format!("the PAT from {} is empty", self.pat.describe),
            )),
            Err(_) => Err(AttemptError::config(
                Reason::Unauthorized,
                format!(
                    "the token from {} is neither a Label Studio Personal Access Token (a JWT) nor a 40-hex legacy token",
                    self.pat.describe
                ),
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
            Ok(CredentialKind::Pat(claims)) => {
                if let Some(exp) = claims.exp {
                    self.metrics.pat_expiration_timestamp_seconds.set(exp as f64);
                    if (exp as f64) <= now {
                        return Err(AttemptError::config(
                            Reason::ExpiredPat,
                            format!("the PAT expired at {}: create a new Personal Access Token in Label Studio", rfc3339(exp)),
                        ));
                    }
                }
                let access = self.exchange.refresh(&pat).await?;
                let auth = Authorization { scheme: Scheme::Bearer, token: access.token.clone() };
                self.exchange.validate(&auth).await?;
                let set = TokenSet { auth, expires_at: Some(access.exp()), refreshed_at: now as i64 };
                self.publish(&set).await?;
                self.legacy_published = None;
                Ok(Published {
                    set,
                    basis: Basis::Jwt { iat: access.claims.iat, exp: access.exp(), rand: fastrand::f64() },
                })
            }
            Ok(CredentialKind::Legacy) => {
                self.metrics.pat_expiration_timestamp_seconds.set(0.0);
                let auth = Authorization { scheme: Scheme::Token, token: pat.clone() };
                if let Err(e) = self.exchange.validate(&auth).await {
                    let e = AttemptError::from(e);
                    if matches!(e.reason, Reason::LegacyDisabled | Reason::Unauthorized) {
                        // The API says no: what is published no longer works.
                        self.health.invalidate_all();
                    }
                    return Err(e);
                }
                let set = TokenSet { auth, expires_at: None, refreshed_at: now as i64 };
                if self.legacy_published != Some(pat.fingerprint()) {
                    self.publish(&set).await?;
                    self.legacy_published = Some(pat.fingerprint());
                } else {
                    for i in 0..self.sinks.len() {
                        self.health.set_held(i, Held { exp: None, valid: true });
                    }
                }
                Ok(Published { set, basis: Basis::Legacy })
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
        (left > 0.0).then(|| Duration::from_secs_f64(left))
    }

    /// Runs until `shutdown`. Returns Err only for a configuration error on the very first attempt
    /// (the caller exits 2); later problems are reported and retried, never fatal.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), AttemptError> {
        // Wait for the source's first answer so a Secret watch that is still syncing is not an error.
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = self.pat.ready() => {}
        }
        let mut backoff = Backoff::default();
        let mut first = true;
        let mut failing: Option<Reason> = None;
        let mut lead_warned = false;
        loop {
            self.pat.mark_seen();
            let result = self.attempt().await;
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
                            let lifetime = (exp - iat.unwrap_or(exp)) as f64;
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
                self.update_valid_gauge();
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
