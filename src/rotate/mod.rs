//! PAT rotation: replace the long-lived PAT on a schedule, write the new one back where it came
//! from, and survive every crash or lost answer on the way without a person.
//!
//! Label Studio's rotate call (`POST /api/token/rotate/`) blacklists the old PAT *at once* and
//! answers with the new one; the two are not one transaction, and an answer lost on the way
//! leaves the old PAT dead and the new one unknown. What still works then is any access token
//! already issued (no blacklist check, ≤ 5 minutes left): with it, `GET /api/token/` lists the
//! user's live PATs, each of them is blacklisted (Label Studio allows one live PAT per user, and
//! the listed one is the lost one), and `POST /api/token/` creates a fresh PAT. Hence the order:
//!
//! 1. prove write-back works without writing ([`PatStore::check`]: a dry-run apply, ownership of
//!    the key, a kubelet mount, the file's directory) — otherwise never rotate, say why;
//! 2. record the intent where a restart sees it ([`PatStore::begin`]: which PAT we rotate away
//!    from, by a fingerprint of its `jti`, never the token);
//! 3. rotate (only the leader, never during a refresh: the refresh loop calls this between
//!    attempts);
//! 4. persist the new PAT, retrying while the access token in hand lasts, clearing the intent in
//!    the same write;
//! 5. use it (the refresh loop refreshes with it at once).
//!
//! A lost answer at step 3, or a crash between 3 and 4, is repaired by [`Rotator::recover`] as
//! soon as the old PAT is refused as blacklisted while an intent names it and an access token is
//! still valid (in memory, or read back from the published token directory or Secret).

mod store_file;
mod store_secret;

#[cfg(test)]
mod tests;

use std::{str::FromStr, sync::Arc, time::Duration};

use futures::future::BoxFuture;

pub use self::{
    store_file::FileStore,
    store_secret::{SecretStore, FIELD_MANAGER},
};
use crate::{
    clock::rfc3339,
    exchange::PatApi,
    jwt::{self, CredentialKind},
    leader::Leadership,
    metrics::Metrics,
    notify::{NoNotifier, Notifier},
    secret::{shown, Secret},
    source::PatSourceArgs,
    values::PositiveDur,
};

/// Annotation (PAT Secret) or file suffix (PAT file) holding the rotation intent.
pub const INTENT_ANNOTATION: &str = "ls-token-refresher/pat-rotation";

/// Shortest rotation period accepted: each rotation costs Label Studio three requests and us two
/// refreshes and a write; a few seconds is enough for a demonstration, and anything shorter only
/// turns the PAT into a second access token.
pub const MIN_ROTATE_EVERY: Duration = Duration::from_secs(5);
/// After a failed rotation, the next try waits this long, doubling up to [`RETRY_MAX`]: rotation is
/// never urgent (the PAT still works), so Label Studio is asked rarely.
pub const RETRY_FIRST: Duration = Duration::from_secs(30);
/// Longest wait between rotation tries.
pub const RETRY_MAX: Duration = Duration::from_secs(3600);
/// An intent older than this is not acted on: recovery needs an access token issued before the
/// rotation, and those live 5 minutes; twice that covers a slow restart. Later, a blacklisted PAT
/// is a person's doing, and blacklisting the user's other PATs would fight them.
pub const INTENT_TTL: Duration = Duration::from_secs(600);
/// A persisted PAT is retried until the access token in hand has this little left: the recovery
/// path needs it if we crash after that.
const PERSIST_RESERVE_SECS: f64 = 20.0;
/// First pause between persist retries (doubling, at most [`PERSIST_PAUSE_MAX`]).
const PERSIST_PAUSE_FIRST: Duration = Duration::from_millis(250);
const PERSIST_PAUSE_MAX: Duration = Duration::from_secs(5);

/// `--rotate-pat-every`: a period of at least [`MIN_ROTATE_EVERY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotateEvery(pub Duration);

impl FromStr for RotateEvery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let PositiveDur(d) = s.parse()?;
        if d < MIN_ROTATE_EVERY {
            return Err(format!(
                "'{}' is shorter than the minimum rotation period of {}s",
                shown(s),
                MIN_ROTATE_EVERY.as_secs()
            ));
        }
        Ok(RotateEvery(d))
    }
}

/// Opt-in PAT rotation (`run`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RotateArgs {
    /// Rotate the PAT this long after it was issued (its iat), e.g. 720h; needs a writable source.
    #[arg(long, env = "LS_ROTATE_PAT_EVERY", value_name = "DURATION")]
    pub rotate_pat_every: Option<RotateEvery>,

    /// Rotate the PAT when its own expiry is closer than this, e.g. 168h; needs a writable source.
    #[arg(long, env = "LS_ROTATE_PAT_BEFORE_EXPIRY", value_name = "DURATION")]
    pub rotate_pat_before_expiry: Option<PositiveDur>,
}

impl RotateArgs {
    /// Rotation needs a source we can write back: refused (exit 2) for `--pat`.
    pub fn check_source(&self, pat: &PatSourceArgs) -> Result<(), String> {
        if self.policy().is_some() && pat.from.pat.is_some() {
            return Err(
                "--rotate-pat-every / --rotate-pat-before-expiry need a PAT source the new PAT can be written back to: \
                 use --pat-secret (LS_PAT_SECRET) or --pat-file (LS_PAT_FILE) instead of --pat"
                    .into(),
            );
        }
        Ok(())
    }

    /// The write-back store for `pat` (`kube`: a client and the default namespace, for a Secret).
    pub fn store(
        &self,
        pat: &PatSourceArgs,
        kube: Option<(kube::Client, &str)>,
    ) -> Result<Box<dyn PatStore>, String> {
        self.check_source(pat)?;
        if let Some(path) = &pat.from.pat_file {
            return Ok(Box::new(FileStore::new(path.clone())));
        }
        match (pat.secret_ref(), kube) {
            (Some(r), Some((client, ns))) => Ok(Box::new(SecretStore::new(
                client,
                r.namespace_or(ns),
                &r.name,
                &pat.pat_secret_key,
            ))),
            _ => Err("PAT rotation: no PAT source to write back to".into()),
        }
    }

    /// The policy, when rotation is asked for.
    pub fn policy(&self) -> Option<RotationPolicy> {
        (self.rotate_pat_every.is_some() || self.rotate_pat_before_expiry.is_some()).then(|| {
            RotationPolicy {
                every: self.rotate_pat_every.map(|e| e.0),
                before_expiry: self.rotate_pat_before_expiry.map(|b| b.0),
            }
        })
    }
}

/// When a PAT is due for rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// Rotate this long after `iat`.
    pub every: Option<Duration>,
    /// Rotate when `exp` is closer than this.
    pub before_expiry: Option<Duration>,
}

impl RotationPolicy {
    /// When (Label Studio's wall clock, unix seconds) a PAT with these claims is due; None when no
    /// trigger applies (no `iat`/`exp` for the one configured). Saturating: claims are outside
    /// values and were only checked to be numbers.
    pub fn due(&self, iat: Option<i64>, exp: Option<i64>) -> Option<f64> {
        let by_age = self
            .every
            .zip(iat)
            .map(|(e, iat)| iat as f64 + e.as_secs_f64());
        let by_expiry = self
            .before_expiry
            .zip(exp)
            .map(|(b, exp)| exp as f64 - b.as_secs_f64());
        match (by_age, by_expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True when `--rotate-pat-before-expiry` would make a PAT of this lifetime due at once: the
    /// organization's PAT TTL is shorter than the margin, and rotating would never stop.
    pub fn margin_exceeds_lifetime(&self, iat: Option<i64>, exp: Option<i64>) -> bool {
        match (self.before_expiry, iat, exp) {
            (Some(b), Some(iat), Some(exp)) => (exp.saturating_sub(iat) as f64) <= b.as_secs_f64(),
            _ => false,
        }
    }
}

/// What a restart must know about a rotation in progress: which PAT it started from and when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Intent {
    /// [`jwt::jti_fingerprint`] of the PAT being rotated away from.
    pub from: String,
    /// When the rotation started (unix seconds, our clock).
    pub at: i64,
}

impl Intent {
    /// The one form we write (and the only one we honour: anything else is not ours).
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("serialising two plain fields cannot fail")
    }

    /// Parses our own encoding; None for anything else (a hand edit, another tool).
    pub fn decode(s: &str) -> Option<Intent> {
        let i: Intent = serde_json::from_str(s).ok()?;
        let ok = i.from.len() == 16 && i.from.bytes().all(|b| b.is_ascii_hexdigit());
        (ok && i.encode() == s).then_some(i)
    }

    /// True when the intent names `pat` and is recent enough to act on at wall time `now`.
    pub fn names(&self, pat: &Secret, now: f64) -> bool {
        let fresh = (now - self.at as f64) <= INTENT_TTL.as_secs_f64();
        fresh && jwt::jti_fingerprint(pat.expose()).as_deref() == Some(self.from.as_str())
    }
}

/// Why write-back is impossible: rotation is then never attempted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Refusal {
    /// Closed-set label (`owned_by_other`, `forbidden`, `kubelet_mount`, `not_writable`, …).
    pub reason: &'static str,
    /// One actionable, secret-free line.
    pub detail: String,
}

/// A failed write or read of the store.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// Where the PAT lives and can be written back to.
pub trait PatStore: Send + Sync {
    /// For logs (`Secret ns/name key "pat"`, `file /path`).
    fn describe(&self) -> String;
    /// Proves, without changing anything, that [`PatStore::persist`] would work; Ok carries what
    /// was checked.
    fn check(&self) -> BoxFuture<'_, Result<String, Refusal>>;
    /// Records `intent` next to the PAT, which must still be `pat` (the PAT itself unchanged).
    fn begin<'a>(
        &'a self,
        intent: &'a Intent,
        pat: &'a Secret,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The recorded intent, if any (ours, well-formed).
    fn intent(&self) -> BoxFuture<'_, Result<Option<Intent>, StoreError>>;
    /// Writes `pat` and clears the intent (in one write where the store allows).
    fn persist<'a>(&'a self, pat: &'a Secret) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// What the refresh loop should do after asking the rotator.
#[derive(Debug)]
pub enum Outcome {
    /// A new PAT is in use and persisted: refresh with it now.
    Rotated(Secret),
    /// A lost rotation was repaired: a new PAT is persisted; refresh with it now.
    Recovered(Secret),
    /// A new PAT exists but could not be persisted: it lives in memory (refresh with it; persisting
    /// is retried after every refresh).
    Unpersisted(Secret),
    /// Nothing changed; the old PAT stays in use (refused, failed before the rotate call, not the
    /// leader).
    Unchanged,
}

/// An access token that can authenticate lifecycle calls, and its `exp` (Label Studio's clock).
#[derive(Clone)]
pub struct Access {
    /// The token.
    pub token: Secret,
    /// Its expiry.
    pub exp: i64,
}

impl Access {
    /// Reads an access token's expiry; None when it is not an access JWT.
    pub fn from_token(token: Secret) -> Option<Access> {
        match jwt::classify(&token) {
            Ok(CredentialKind::Access(c)) => c.exp.map(|exp| Access { token, exp }),
            _ => None,
        }
    }
}

/// The rotation engine (one per PAT). Stateful: backoff after failures, the one-time warnings, a
/// new PAT waiting to be persisted.
pub struct Rotator<A: PatApi> {
    api: Arc<A>,
    store: Box<dyn PatStore>,
    policy: RotationPolicy,
    metrics: Arc<Metrics>,
    leadership: Leadership,
    /// Failures in a row (backoff exponent).
    failures: u32,
    /// No try before this (our monotonic clock).
    not_before: Option<tokio::time::Instant>,
    /// The refusal last reported (reported again only when it changes).
    refused: Option<Refusal>,
    /// `--rotate-pat-before-expiry` longer than the PAT lifetime: warned once, trigger ignored.
    margin_warned: bool,
    /// A new PAT not yet written back.
    unpersisted: Option<Secret>,
    notifier: Arc<dyn Notifier>,
}

impl<A: PatApi> Rotator<A> {
    /// A rotator writing back to `store`.
    pub fn new(
        api: Arc<A>,
        store: Box<dyn PatStore>,
        policy: RotationPolicy,
        metrics: Arc<Metrics>,
        leadership: Leadership,
    ) -> Self {
        metrics.register_rotation();
        Rotator {
            api,
            store,
            policy,
            metrics,
            leadership,
            failures: 0,
            not_before: None,
            refused: None,
            margin_warned: false,
            unpersisted: None,
            notifier: Arc::new(NoNotifier),
        }
    }

    /// Reports rotations as Kubernetes Events.
    pub fn with_notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifier = notifier;
        self
    }

    /// Proves write-back (start-up, `check`, and before every rotation).
    pub async fn check(&self) -> Result<String, Refusal> {
        self.store.check().await
    }

    /// Seconds (Label Studio's clock) until `pat` is due, 0 when due; None when it never is (no
    /// trigger applies, a legacy token). A failure backoff is applied by [`Rotator::rotate`].
    pub fn due_in(&mut self, pat: &Secret, ls_now: f64) -> Option<f64> {
        let Ok(CredentialKind::Pat(c)) = jwt::classify(pat) else {
            return None;
        };
        let mut policy = self.policy;
        if policy.margin_exceeds_lifetime(c.iat, c.exp) {
            if !self.margin_warned {
                self.margin_warned = true;
                tracing::warn!(
                    reason = "margin_exceeds_lifetime",
                    "--rotate-pat-before-expiry is not shorter than the lifetime Label Studio gives PATs ({}s); ignoring it (it would rotate without end)",
                    c.exp.unwrap_or(0).saturating_sub(c.iat.unwrap_or(0))
                );
            }
            policy.before_expiry = None;
        }
        let due = policy.due(c.iat, c.exp)?;
        let mut wait = (due - ls_now).max(0.0);
        if let Some(nb) = self.not_before {
            let left = nb
                .saturating_duration_since(tokio::time::Instant::now())
                .as_secs_f64();
            wait = wait.max(left);
        }
        Some(wait)
    }

    /// Rotates `pat` if due, in the crash-safe order of the module docs. `access` is a token just
    /// issued for `pat`; `wall_now` is our wall clock (intent times).
    pub async fn rotate(
        &mut self,
        access: &Access,
        pat: &Secret,
        ls_now: f64,
        wall_now: f64,
    ) -> Outcome {
        if let Some(new) = self.unpersisted.clone() {
            return self.retry_persist(new).await;
        }
        if self.due_in(pat, ls_now).is_none_or(|w| w > 0.0) {
            return Outcome::Unchanged;
        }
        if !self.leadership.is_leader() {
            return Outcome::Unchanged;
        }
        // 1. Write-back must work, or nothing happens.
        match self.store.check().await {
            Ok(_) => {
                if self.refused.take().is_some() {
                    tracing::info!(store = %self.store.describe(), "PAT write-back works again: rotation resumes");
                }
            }
            Err(r) => {
                self.count("refused");
                if self.refused.as_ref() != Some(&r) {
                    tracing::warn!(reason = r.reason, "not rotating the PAT: {}", r.detail);
                    self.refused = Some(r);
                    self.notifier
                        .rotation(true, "PatRotationRefused", "PAT rotation is configured but the PAT cannot be written back: see the log")
                        .await;
                }
                self.back_off();
                return Outcome::Unchanged;
            }
        }
        let Some(from) = jwt::jti_fingerprint(pat.expose()) else {
            self.fail("the PAT has no jti claim: cannot record which PAT a rotation starts from")
                .await;
            return Outcome::Unchanged;
        };
        // 2. The intent, where a restart sees it.
        let intent = Intent {
            from,
            at: wall_now as i64,
        };
        if let Err(e) = self.store.begin(&intent, pat).await {
            self.fail(&format!(
                "recording the rotation intent failed, not rotating: {e}"
            ))
            .await;
            return Outcome::Unchanged;
        }
        // 3. Rotate (fenced again: the intent write took a round trip).
        if !self.leadership.is_leader() {
            return Outcome::Unchanged;
        }
        match self.api.rotate(&access.token, pat).await {
            Ok(new) => self.settle(new, access, ls_now, "rotated").await,
            Err(e) if e.is_lost() => {
                tracing::warn!(
                    reason = e.label(),
                    "the PAT rotation's answer was lost ({e}); finding out whether Label Studio rotated"
                );
                match self.repair(access, pat, ls_now).await {
                    Some(outcome) => outcome,
                    None => Outcome::Unchanged,
                }
            }
            Err(e) => {
                self.fail(&format!("Label Studio refused the PAT rotation: {e}"))
                    .await;
                Outcome::Unchanged
            }
        }
    }

    /// The old PAT was refused as blacklisted: if an intent of ours names it and one of
    /// `candidates` (access tokens, newest first) is still valid, repair. None when there is
    /// nothing to repair (the blacklisting was not ours, or no access token is left).
    pub async fn recover(
        &mut self,
        pat: &Secret,
        candidates: Vec<Secret>,
        ls_now: f64,
        wall_now: f64,
    ) -> Option<Outcome> {
        let intent = match self.store.intent().await {
            Ok(Some(i)) => i,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(
                    reason = "store_unavailable",
                    "cannot read the rotation intent: {e}"
                );
                return None;
            }
        };
        if !intent.names(pat, wall_now) {
            tracing::info!(
                "the PAT was blacklisted, and no recent rotation of ours started from it: not repairing (put the new PAT into {})",
                self.store.describe()
            );
            return None;
        }
        if !self.leadership.is_leader() {
            return None;
        }
        // The store may have changed hands since the intent was recorded (another controller now
        // writes the key): a repair would write where it must not.
        if let Err(r) = self.store.check().await {
            self.count("refused");
            tracing::warn!(
                reason = r.reason,
                "not repairing the lost rotation: {}",
                r.detail
            );
            return None;
        }
        let access = candidates
            .into_iter()
            .filter_map(Access::from_token)
            .filter(|a| a.exp as f64 > ls_now + 2.0)
            .max_by_key(|a| a.exp);
        let Some(access) = access else {
            self.count("failed");
            tracing::error!(
                reason = "no_access_token",
                "a PAT rotation was lost and no valid access token is left to repair it: create a new PAT in Label Studio and put it into {} (see README, PAT rotation)",
                self.store.describe()
            );
            return None;
        };
        tracing::warn!(
            "the PAT was blacklisted by an unfinished rotation (intent from {}): repairing with an access token valid until {}",
            rfc3339(intent.at),
            rfc3339(access.exp)
        );
        self.repair(&access, pat, ls_now).await
    }

    /// List the live PATs with `access`: the old one still listed means the rotation did not happen
    /// (the intent stays: a late commit would still be repaired); otherwise blacklist the unknown
    /// one(s) and create a fresh PAT.
    async fn repair(&mut self, access: &Access, old: &Secret, ls_now: f64) -> Option<Outcome> {
        let listed = match self.api.list(&access.token).await {
            Ok(l) => l,
            Err(e) => {
                self.fail(&format!(
                    "repairing the rotation: listing the PATs failed: {e}"
                ))
                .await;
                return None;
            }
        };
        let old_id = jwt::jti_fingerprint(old.expose());
        if old_id.is_some()
            && listed
                .iter()
                .any(|t| jwt::jti_fingerprint(t.expose()) == old_id)
        {
            self.fail(
                "the rotation did not happen (the old PAT is still live); it will be retried",
            )
            .await;
            return None;
        }
        for t in &listed {
            match self.api.blacklist(t).await {
                Ok(_) => {}
                Err(e) => {
                    self.fail(&format!(
                        "repairing the rotation: blacklisting the lost PAT failed: {e}"
                    ))
                    .await;
                    return None;
                }
            }
        }
        match self.api.create(&access.token).await {
            Ok(new) => Some(self.settle(new, access, ls_now, "recovered").await),
            Err(e) => {
                self.fail(&format!(
                    "repairing the rotation: creating a PAT failed: {e}"
                ))
                .await;
                None
            }
        }
    }

    /// 4. Persist the new PAT while `access` lasts.
    async fn settle(
        &mut self,
        new: Secret,
        access: &Access,
        ls_now: f64,
        result: &'static str,
    ) -> Outcome {
        let deadline = tokio::time::Instant::now()
            + secs(access.exp as f64 - PERSIST_RESERVE_SECS - ls_now, 600.0);
        let mut pause = PERSIST_PAUSE_FIRST;
        loop {
            match self.store.persist(&new).await {
                Ok(()) => {
                    self.count(result);
                    self.failures = 0;
                    self.not_before = None;
                    self.unpersisted = None;
                    let iat = match jwt::classify(&new) {
                        Ok(CredentialKind::Pat(c)) => c.iat,
                        _ => None,
                    };
                    tracing::info!(
                        result,
                        store = %self.store.describe(),
                        issued_at = %iat.map(rfc3339).unwrap_or_default(),
                        "PAT rotated and written back"
                    );
                    return if result == "recovered" {
                        self.notifier
                            .rotation(
                                false,
                                "PatRotationRecovered",
                                "a lost PAT rotation was repaired: a new PAT is written back",
                            )
                            .await;
                        Outcome::Recovered(new)
                    } else {
                        self.notifier
                            .rotation(
                                false,
                                "PatRotated",
                                "the PAT was rotated and the new one written back",
                            )
                            .await;
                        Outcome::Rotated(new)
                    };
                }
                Err(e) if tokio::time::Instant::now() + pause < deadline => {
                    tracing::warn!(
                        reason = "persist_failed",
                        "writing the new PAT back failed (retrying): {e}"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(PERSIST_PAUSE_MAX);
                }
                Err(e) => {
                    self.count("failed");
                    tracing::error!(
                        reason = "persist_failed",
                        "the new PAT could not be written back to {} ({e}); it is used from memory and writing is retried after every refresh — if this process stops first, a person must create a new PAT (README, PAT rotation)",
                        self.store.describe()
                    );
                    self.unpersisted = Some(new.clone());
                    self.notifier
                        .rotation(true, "PatWriteBackFailed", "the new PAT could not be written back: it lives only in memory; see the log")
                        .await;
                    return Outcome::Unpersisted(new);
                }
            }
        }
    }

    async fn retry_persist(&mut self, new: Secret) -> Outcome {
        match self.store.persist(&new).await {
            Ok(()) => {
                self.unpersisted = None;
                self.count("rotated");
                tracing::info!(store = %self.store.describe(), "the new PAT is written back at last");
                Outcome::Rotated(new)
            }
            Err(e) => {
                tracing::warn!(
                    reason = "persist_failed",
                    "writing the new PAT back failed again: {e}"
                );
                Outcome::Unpersisted(new)
            }
        }
    }

    async fn fail(&mut self, message: &str) {
        self.count("failed");
        tracing::warn!(reason = "rotation_failed", "PAT rotation failed: {message}");
        self.back_off();
        self.notifier
            .rotation(
                true,
                "PatRotationFailed",
                "PAT rotation failed (the PAT in use is unchanged): see the log",
            )
            .await;
    }

    fn back_off(&mut self) {
        let wait = RETRY_FIRST
            .saturating_mul(1u32.checked_shl(self.failures.min(16)).unwrap_or(u32::MAX))
            .min(RETRY_MAX);
        self.failures = self.failures.saturating_add(1);
        self.not_before = Some(tokio::time::Instant::now() + wait);
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .pat_rotations_total
            .with_label_values(&[result])
            .inc();
    }
}

/// `s` seconds as a Duration within `0..=max`; anything not finite is zero (claims and clocks
/// are outside values: no arithmetic on them may panic).
pub fn secs(s: f64, max: f64) -> Duration {
    if s.is_finite() {
        Duration::from_secs_f64(s.clamp(0.0, max))
    } else {
        Duration::ZERO
    }
}

/// The rotator as the refresh loop sees it (object-safe, so the loop stays generic over its
/// exchange and tests can count calls).
pub trait Rotate: Send + Sync {
    /// See [`Rotator::due_in`].
    fn due_in(&mut self, pat: &Secret, ls_now: f64) -> Option<f64>;
    /// See [`Rotator::rotate`].
    fn rotate<'a>(
        &'a mut self,
        access: &'a Access,
        pat: &'a Secret,
        ls_now: f64,
        wall_now: f64,
    ) -> BoxFuture<'a, Outcome>;
    /// See [`Rotator::recover`].
    fn recover<'a>(
        &'a mut self,
        pat: &'a Secret,
        candidates: Vec<Secret>,
        ls_now: f64,
        wall_now: f64,
    ) -> BoxFuture<'a, Option<Outcome>>;
}

impl<A: PatApi> Rotate for Rotator<A> {
    fn due_in(&mut self, pat: &Secret, ls_now: f64) -> Option<f64> {
        Rotator::due_in(self, pat, ls_now)
    }
    fn rotate<'a>(
        &'a mut self,
        access: &'a Access,
        pat: &'a Secret,
        ls_now: f64,
        wall_now: f64,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(Rotator::rotate(self, access, pat, ls_now, wall_now))
    }
    fn recover<'a>(
        &'a mut self,
        pat: &'a Secret,
        candidates: Vec<Secret>,
        ls_now: f64,
        wall_now: f64,
    ) -> BoxFuture<'a, Option<Outcome>> {
        Box::pin(Rotator::recover(self, pat, candidates, ls_now, wall_now))
    }
}
