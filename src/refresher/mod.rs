//! The refresh loop: read the PAT, exchange it, test the new token, publish it to every sink, then
//! sleep until the token's own schedule says to refresh again. Failures back off (capped by the
//! time the published token has left), a rejected PAT triggers an immediate re-read of its source,
//! and the last good token stays published until its own `exp`.
//!
//! The steps live in their own files: [`attempt`](self) (PAT → exchange → validate → publish),
//! `timing` (the token's schedule on our clocks, robust to skew with Label Studio's), and `wait`
//! (sleeping until a deadline or an event: a PAT change, a wall-clock step, a token reported
//! rejected, Label Studio coming back after an outage). Between refreshes nothing wakes up.
//!
//! Generic over [`Exchange`], with `dyn Sink`s, a [`PatHandle`] and a [`Clock`], so unit tests run
//! the whole loop against fakes on tokio's paused clock.

mod attempt;
pub mod timing;
mod wait;

#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use self::timing::{Anchor, JwtTiming, SKEW_TOLERANCE_SECS};
use crate::{
    clock::{Clock, Mono, SystemClock},
    exchange::{Exchange, ExchangeError, Identity},
    health::Health,
    leader::Leadership,
    metrics::Metrics,
    notify::{NoNotifier, Notifier},
    reason::Reason,
    rotate::Rotate,
    schedule::{Backoff, Policy},
    secret::Secret,
    sink::Sink,
    source::PatHandle,
    token::TokenSet,
};

/// Upper bound for one sink write; kube's own client timeouts are minutes long.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// How late the loop may be back before `/livez` fails: wake-up latency is milliseconds, but a
/// busy node can starve a container for a while; restarting us would not help within this.
const LIVENESS_GRACE: Duration = Duration::from_secs(30);
/// Default bound on one attempt for liveness (two requests at the default 10 s timeout, a
/// publish, and slack); `cmd` derives it from the real request timeout.
const DEFAULT_ATTEMPT_BUDGET: Duration = Duration::from_secs(90);

/// Lets others (the auth proxy) report that Label Studio rejected the current token. The loop
/// checks the token at once (rate-limited) and refreshes if it is indeed rejected.
#[derive(Clone, Default)]
pub struct RejectionReport(Arc<Notify>);

impl RejectionReport {
    /// Reports a rejection (cheap; repeated reports coalesce).
    pub fn token_rejected(&self) {
        self.0.notify_one();
    }

    /// Resolves at the next report (or at once if one is pending): the refresh loop's side.
    pub async fn reported(&self) {
        self.0.notified().await
    }
}

/// A failed attempt.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct AttemptError {
    /// Closed-set reason.
    pub reason: Reason,
    /// Fixed text for `/readyz` and Events.
    pub summary: &'static str,
    /// One line, secret-free, actionable (for logs and the CLI).
    pub message: String,
    /// Server's `Retry-After`.
    pub retry_after: Option<Duration>,
    /// A configuration mistake (fatal at start-up: exit 2).
    pub config: bool,
    /// The answer did not look like Label Studio's (worth asking `/api/version` who is there).
    pub foreign: bool,
}

impl AttemptError {
    fn failed(reason: Reason, summary: &'static str, message: impl Into<String>) -> Self {
        AttemptError {
            reason,
            summary,
            message: message.into(),
            retry_after: None,
            config: false,
            foreign: false,
        }
    }

    fn config(reason: Reason, summary: &'static str, message: impl Into<String>) -> Self {
        AttemptError {
            config: true,
            ..AttemptError::failed(reason, summary, message)
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
        let mut message = e.to_string();
        if e.reason() == Reason::RevokedPat {
            message.push_str(": the PAT was revoked or rotated; put the new PAT into the source");
        } else if e.reason() == Reason::ExpiredPat {
            message.push_str(": create a new Personal Access Token in Label Studio");
        }
        AttemptError {
            reason: e.reason(),
            summary: e.reason().summary(),
            retry_after: e.retry_after(),
            config: e.is_wrong_url(),
            foreign: e.looks_foreign(),
            message,
        }
    }
}

/// How the published token is timed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Timing {
    /// An access token.
    Jwt(JwtTiming),
    /// A legacy token: re-validated every `legacy_recheck`.
    Legacy,
}

/// The result of a successful attempt.
#[derive(Debug, Clone)]
pub struct Published {
    /// What was published.
    pub set: TokenSet,
    /// Its timing.
    pub timing: Timing,
}

/// The loop and its dependencies. Build with [`Refresher::new`] and the `with_*` methods.
pub struct Refresher<E: Exchange> {
    exchange: E,
    sinks: Vec<Box<dyn Sink>>,
    pat: PatHandle,
    policy: Policy,
    metrics: Arc<Metrics>,
    health: Health,
    clock: Arc<dyn Clock>,
    notifier: Arc<dyn Notifier>,
    rejections: RejectionReport,
    attempt_budget: Duration,
    /// Whether this replica may refresh and write (always, without leader election).
    leadership: Leadership,
    /// What every sink holds now (None before the first success).
    current: Option<Published>,
    /// Fingerprint of the legacy token every sink already holds (skip rewriting unchanged files).
    legacy_published: Option<u64>,
    /// Label Studio's clock minus ours, as last measured (0 within the tolerance).
    offset: f64,
    /// The offset warning is given once.
    offset_warned: bool,
    /// The lead-time warning is given once.
    lead_warned: bool,
    /// PAT rotation, when configured.
    rotation: Option<Box<dyn Rotate>>,
    /// A PAT rotated (or repaired) by us, used instead of the source's value while the source
    /// still holds the PAT it replaced (fingerprint): until our write-back shows up in the watch.
    pat_override: Option<(Secret, u64)>,
    /// The PAT the last attempt used.
    last_pat: Option<Secret>,
}

impl<E: Exchange> Refresher<E> {
    /// A refresher publishing to `sinks`; its health (one slot per sink) is built here and
    /// available from [`Refresher::health`].
    pub fn new(
        exchange: E,
        pat: PatHandle,
        sinks: Vec<Box<dyn Sink>>,
        policy: Policy,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::with_parts(
            exchange,
            pat,
            sinks,
            policy,
            metrics,
            Arc::new(SystemClock::new()),
        )
    }

    fn with_parts(
        exchange: E,
        pat: PatHandle,
        sinks: Vec<Box<dyn Sink>>,
        policy: Policy,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let kinds: Vec<&'static str> = sinks.iter().map(|s| s.kind()).collect();
        for kind in &kinds {
            metrics.register_sink(kind);
        }
        Refresher {
            exchange,
            health: Health::new(clock.clone(), &kinds),
            sinks,
            pat,
            policy,
            metrics,
            clock,
            notifier: Arc::new(NoNotifier),
            rejections: RejectionReport::default(),
            attempt_budget: DEFAULT_ATTEMPT_BUDGET,
            leadership: Leadership::always(),
            current: None,
            legacy_published: None,
            offset: 0.0,
            offset_warned: false,
            lead_warned: false,
            rotation: None,
            pat_override: None,
            last_pat: None,
        }
    }

    /// Rotates the PAT on the rotator's schedule, between refreshes (never during one), and
    /// repairs a rotation whose answer was lost.
    pub fn with_rotation(mut self, rotation: Box<dyn Rotate>) -> Self {
        self.rotation = Some(rotation);
        self
    }

    /// Uses `clock` (tests: a manual clock on tokio's paused time). Rebuilds the health state.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        let kinds: Vec<&'static str> = self.sinks.iter().map(|s| s.kind()).collect();
        self.health = Health::new(clock.clone(), &kinds);
        self.clock = clock;
        self
    }

    /// Reports failures and recoveries to `notifier` (Kubernetes Events).
    pub fn with_notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifier = notifier;
        self
    }

    /// The longest one attempt can take (for liveness): derive it from the request timeout.
    pub fn with_attempt_budget(mut self, budget: Duration) -> Self {
        self.attempt_budget = budget;
        self
    }

    /// Refreshes only while `leadership` leads; stands by (PAT source watched, HTTP client built,
    /// no exchange, no write) otherwise, and refreshes at once on taking over.
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.leadership = leadership;
        self
    }

    /// Readiness and liveness, as the admin server reports them.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// A handle for reporting that Label Studio rejected the current token.
    pub fn rejection_report(&self) -> RejectionReport {
        self.rejections.clone()
    }

    /// Runs until `shutdown`. Returns Err only for a configuration error before the first
    /// success (the caller exits 2); later problems are reported and retried, never fatal.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), AttemptError> {
        if !self.wait_for_source(&shutdown).await {
            return Ok(());
        }
        let mut state = LoopState::default();
        loop {
            if !self.leadership.is_leader() && !self.stand_by(&shutdown).await {
                return Ok(());
            }
            self.expect_back_in(self.attempt_budget);
            // SIGTERM must not wait for a hanging request (two request timeouts plus a publish can
            // exceed Kubernetes' 30 s grace period). Dropping the attempt is safe: a file write in
            // flight finishes on its blocking thread and swaps atomically, or never swaps.
            self.pat.mark_seen();
            let result = tokio::select! {
                r = self.attempt() => r,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let next = match result {
                Ok(p) => self.after_success(p, &mut state).await,
                Err(e) => self.after_failure(e, &mut state).await?,
            };
            if !self.wait(next, &mut state, &shutdown).await {
                return Ok(());
            }
        }
    }

    /// Waits, as a standby, until this replica leads (true) or shutdown (false). Another replica
    /// keeps the published token, and nobody knows when it last refreshed: on taking over, the
    /// loop refreshes at once (one exchange per takeover) rather than trust a stale schedule.
    async fn stand_by(&mut self, shutdown: &CancellationToken) -> bool {
        tracing::info!(
            identity = %self.leadership.identity(),
            "standing by: another replica holds the Lease and writes the target"
        );
        self.health.expect_by(None);
        self.metrics.next_refresh_timestamp_seconds.set(0.0);
        let leadership = self.leadership.clone();
        loop {
            let pat_ready = matches!(self.pat.current(), crate::source::PatState::Ready(_));
            self.health.set_standby(Some(pat_ready));
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                led = leadership.wait_leader() => {
                    if !led {
                        return false;
                    }
                    break;
                }
                _ = self.pat.changed() => {}
            }
        }
        self.health.set_standby(None);
        tracing::info!(
            identity = %self.leadership.identity(),
            "this replica leads: refreshing now"
        );
        true
    }

    /// `once`/`token`: attempts until success, a permanent failure, or `timeout`.
    pub async fn once(
        &mut self,
        timeout: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Published, AttemptError> {
        let give_up = tokio::time::Instant::now() + timeout;
        let mut pat = self.pat.clone();
        tokio::select! {
            _ = pat.ready() => {}
            _ = tokio::time::sleep_until(give_up) => {}
            _ = shutdown.cancelled() => {}
        }
        let mut backoff = Backoff::default();
        let mut identified = false;
        loop {
            let err = match self.attempt().await {
                Ok(p) => return Ok(p),
                Err(e) => e,
            };
            let err = if err.foreign && !identified {
                identified = true;
                self.identify_url(err).await
            } else {
                err
            };
            let wait = backoff.next_delay(&self.policy, None, err.retry_after, fastrand::f64());
            if err.is_permanent()
                || tokio::time::Instant::now() + wait > give_up
                || shutdown.is_cancelled()
            {
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

    /// An answer Label Studio never gives: ask `/api/version` who is at `--url`. Not Label Studio
    /// → a configuration error naming `--url`; otherwise the original error stands.
    async fn identify_url(&self, err: AttemptError) -> AttemptError {
        match self.exchange.identify().await {
            Identity::NotLabelStudio(why) => AttemptError::config(
                err.reason,
                "--url does not point at Label Studio",
                format!(
                    "--url (LS_URL) {} does not point at Label Studio ({why}); the token endpoint answered: {}",
                    self.exchange.base(),
                    err.message
                ),
            ),
            Identity::LabelStudio(_) | Identity::Unknown(_) => err,
        }
    }

    /// Tells `/livez` when the loop will be back.
    fn expect_back_in(&self, d: Duration) {
        self.expect_back_at(self.clock.now().after(d));
    }

    fn expect_back_at(&self, at: Mono) {
        self.health.expect_by(Some(at.after(LIVENESS_GRACE)));
    }
}

/// What the loop remembers between attempts.
#[derive(Default)]
struct LoopState {
    backoff: Backoff,
    /// Any success yet (configuration errors before it are fatal).
    succeeded: bool,
    /// Attempts so far.
    attempts: u64,
    /// The reason of the current failure streak (Events are sent on changes only).
    failing: Option<Reason>,
    /// `/api/version` was asked during this failure streak.
    identified: bool,
    /// When the last exchange started (PAT changes refresh at once, but not faster than this).
    last_exchange: Option<Mono>,
    /// When the current token was last checked after a clock step or a rejection report.
    last_check: Option<Mono>,
    /// `/health` failed during this failure streak: Label Studio answering it again is news.
    seen_down: bool,
    /// When the PAT is due for rotation (None: never, or no rotation configured).
    rotate_at: Option<Mono>,
}
