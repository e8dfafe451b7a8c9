//! One attempt, in named steps: read the PAT, tell what it is, exchange it, validate the new
//! token, time it against Label Studio's clock, publish it to every sink. And what the loop does
//! with the outcome: plan the next refresh, or back off.

use super::{
    timing::{Anchor, JwtTiming, SKEW_WARN_SECS},
    wait::Next,
    AttemptError, LoopState, Published, Refresher, Timing, PUBLISH_TIMEOUT,
};
use crate::{
    clock::{rfc3339, Mono},
    exchange::{AccessToken, Exchange},
    health::Held,
    jwt::{self, CredentialKind, Usable},
    reason::Reason,
    rotate::{secs, Access, Outcome, MIN_ROTATE_EVERY},
    schedule,
    secret::Secret,
    source::PatState,
    token::{Authorization, Scheme, TokenSet},
};

/// Longest single wait for a rotation (a year: `Duration::from_secs_f64` must not see the
/// 200-year lifetime of an open-source PAT as one number of seconds, and the loop wakes for
/// refreshes every few minutes anyway).
const MAX_WAIT_SECS: f64 = 365.0 * 86_400.0;

impl<E: Exchange> Refresher<E> {
    /// One attempt: PAT → exchange → validate → publish. Counts and times it.
    pub async fn attempt(&mut self) -> Result<Published, AttemptError> {
        let timer = self.metrics.refresh_duration_seconds.start_timer();
        let result = self.attempt_steps().await;
        timer.observe_duration();
        match &result {
            Ok(p) => {
                self.metrics
                    .refresh_total
                    .with_label_values(&["success"])
                    .inc();
                self.metrics
                    .last_success_timestamp_seconds
                    .set(self.ls_wall_now());
                if let Some(exp) = p.set.expires_at {
                    self.metrics
                        .token_expiration_timestamp_seconds
                        .set(exp as f64);
                }
                self.current = Some(p.clone());
            }
            Err(e) => self.metrics.record_failure(e.reason),
        }
        self.metrics
            .token_valid
            .set(i64::from(self.health.is_ready()));
        result
    }

    async fn attempt_steps(&mut self) -> Result<Published, AttemptError> {
        let pat = self.read_pat()?;
        self.last_pat = Some(pat.clone());
        match self.tell_kind(&pat)? {
            Usable::Pat { .. } => {
                let (access, received, wall) = self.exchange_pat(&pat).await?;
                let timing = self.time_token(&access, received, wall)?;
                let auth = Authorization {
                    scheme: Scheme::Bearer,
                    token: access.token.clone(),
                };
                self.exchange.validate(&auth).await?;
                let set = TokenSet {
                    auth,
                    expires_at: Some(access.exp()),
                    refreshed_at: wall as i64,
                };
                self.publish(&set, Some(timing.expires())).await?;
                self.legacy_published = None;
                Ok(Published {
                    set,
                    timing: Timing::Jwt(timing),
                })
            }
            Usable::Legacy => self.legacy_step(pat).await,
        }
    }

    /// Step 1: the PAT the source holds now — or the one we rotated it to, while the source still
    /// shows the PAT that rotation replaced (our write-back is on its way through the watch).
    fn read_pat(&mut self) -> Result<Secret, AttemptError> {
        match self.pat.current() {
            PatState::Ready(p) => {
                if let Some((new, replaced)) = &self.pat_override {
                    if p.fingerprint() == *replaced {
                        return Ok(new.clone());
                    }
                    // The source moved on (our write-back arrived, or a person's change): it wins.
                    self.pat_override = None;
                }
                Ok(p)
            }
            PatState::Pending => Err(AttemptError::failed(
                Reason::SourceUnavailable,
                "waiting for the PAT source",
                format!("waiting for the PAT from {}", self.pat.describe),
            )),
            PatState::Unavailable(p) => Err(AttemptError::failed(
                Reason::SourceUnavailable,
                p.summary,
                p.detail,
            )),
            PatState::Invalid(p) => Err(AttemptError::config(
                Reason::SourceUnavailable,
                p.summary,
                p.detail,
            )),
        }
    }

    /// Step 2: what the credential is (a PAT, a legacy token, or a configuration mistake).
    fn tell_kind(&self, pat: &Secret) -> Result<Usable, AttemptError> {
        let (pat_iat, pat_exp) = match jwt::classify(pat) {
            Ok(CredentialKind::Pat(c)) => (c.iat.unwrap_or(0), c.exp.unwrap_or(0)),
            _ => (0, 0),
        };
        self.metrics
            .pat_expiration_timestamp_seconds
            .set(pat_exp as f64);
        self.metrics
            .pat_issued_timestamp_seconds
            .set(pat_iat as f64);
        jwt::usable(pat, &self.pat.describe, self.ls_wall_now())
            .map_err(|e| AttemptError::config(e.reason(), e.reason().summary(), e.to_string()))
    }

    /// Step 3: the exchange, and when (monotonic and wall) its answer arrived.
    async fn exchange_pat(&self, pat: &Secret) -> Result<(AccessToken, Mono, f64), AttemptError> {
        let access = self.exchange.refresh(pat).await?;
        Ok((access, self.clock.now(), self.clock.wall()))
    }

    /// Step 4: anchor the new token's life on our clocks, measuring the offset to Label Studio's.
    /// A token whose claims cannot be a real one (see [`jwt::Claims::implausible_times`]), or that
    /// had expired when received (by Label Studio's own clock), is an answer Label Studio does not
    /// give: refused here, before any arithmetic on its claims. It is reported (`invalid_response`),
    /// retried on the backoff, never published, and never validated (an expired token's 401 would
    /// otherwise blame the PAT). Not a configuration error: the server at `--url` does speak the
    /// token API, so the loop keeps going instead of exiting.
    fn time_token(
        &mut self,
        access: &AccessToken,
        received: Mono,
        wall: f64,
    ) -> Result<JwtTiming, AttemptError> {
        let refuse = |message: String| {
            AttemptError::failed(
                Reason::InvalidResponse,
                Reason::InvalidResponse.summary(),
                message,
            )
        };
        if let Some(problem) = access.claims.implausible_times() {
            return Err(refuse(format!(
                "token refresh: {} answered with an {problem}; not using it",
                self.exchange.base()
            )));
        }
        let iat = access.claims.iat;
        let (anchor, used, raw) = Anchor::measure(received, wall, iat.map(|i| i as f64));
        self.note_offset(used, raw);
        let timing = JwtTiming {
            received,
            anchor,
            iat,
            exp: access.exp(),
            rand: fastrand::f64(),
        };
        if !self.lead_warned && schedule::lead_exceeds_lifetime(&self.policy, timing.lifetime()) {
            self.lead_warned = true;
            tracing::warn!(
                lifetime_s = timing.lifetime(),
                "access tokens live shorter than --min-lead plus --propagation-margin; refreshing at a quarter of their lifetime instead"
            );
        }
        if timing.expires() <= received {
            return Err(refuse(format!(
                "token refresh: {} answered with an access token that had already expired when it arrived (exp {}, Label Studio's clock {}); not using it",
                self.exchange.base(),
                rfc3339(timing.exp),
                rfc3339(timing.anchor.ls_now(received) as i64)
            )));
        }
        Ok(timing)
    }

    /// Records the measured offset to Label Studio's clock (metric; one warning when large).
    pub(super) fn note_offset(&mut self, used: f64, raw: f64) {
        self.offset = used;
        self.metrics.clock_offset_seconds.set(used);
        if raw.abs() > SKEW_WARN_SECS && !self.offset_warned {
            self.offset_warned = true;
            tracing::warn!(
                offset_s = format!("{raw:.0}"),
                "this host's clock and Label Studio's disagree by {raw:.0}s (Label Studio minus ours); \
                 refreshes are timed on Label Studio's clock, but fix NTP: consumers comparing expires_at \
                 with their own clock will be wrong by as much"
            );
        }
    }

    /// Step 5: publish to every sink (each failure counted; the others still updated).
    async fn publish(&mut self, set: &TokenSet, expires: Option<Mono>) -> Result<(), AttemptError> {
        let mut failures = Vec::new();
        let mut summary = Reason::PublishFailed.summary();
        for (i, sink) in self.sinks.iter().enumerate() {
            let result = match tokio::time::timeout(PUBLISH_TIMEOUT, sink.publish(set)).await {
                Ok(r) => r,
                Err(_) => Err(crate::sink::SinkError {
                    sink: sink.kind(),
                    summary: "publishing timed out",
                    message: format!(
                        "publishing to the {} sink timed out after {PUBLISH_TIMEOUT:?}",
                        sink.kind()
                    ),
                }),
            };
            match result {
                Ok(()) => self.health.set_held(
                    i,
                    Held {
                        expires,
                        valid: true,
                    },
                ),
                Err(e) => {
                    self.metrics
                        .sink_write_errors_total
                        .with_label_values(&[sink.kind()])
                        .inc();
                    tracing::warn!(sink = sink.kind(), reason = "publish_failed", "{e}");
                    summary = e.summary;
                    failures.push(e.to_string());
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            self.legacy_published = None;
            Err(AttemptError::failed(
                Reason::PublishFailed,
                summary,
                failures.join("; "),
            ))
        }
    }

    /// A legacy token: validated as is (never exchanged), published only when it changed.
    async fn legacy_step(&mut self, pat: Secret) -> Result<Published, AttemptError> {
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
            refreshed_at: self.clock.wall() as i64,
        };
        if self.legacy_published != Some(pat.fingerprint()) {
            self.publish(&set, None).await?;
            self.legacy_published = Some(pat.fingerprint());
        } else {
            for i in 0..self.sinks.len() {
                self.health.set_held(
                    i,
                    Held {
                        expires: None,
                        valid: true,
                    },
                );
            }
        }
        Ok(Published {
            set,
            timing: Timing::Legacy,
        })
    }

    /// After a success: forget the failure streak, plan the next refresh.
    pub(super) async fn after_success(&mut self, p: Published, st: &mut LoopState) -> Next {
        st.attempts += 1;
        st.backoff.reset();
        st.succeeded = true;
        st.identified = false;
        st.seen_down = false;
        let exp_text = p
            .set
            .expires_at
            .map(rfc3339)
            .unwrap_or_else(|| "never (legacy token)".into());
        if st.failing.take().is_some() {
            self.notifier
                .recovered("access token refreshed again")
                .await;
        }
        self.health.set_problem(None);
        let now = self.clock.now();
        let at = match p.timing {
            Timing::Jwt(t) => t.refresh_at(&self.policy, now),
            Timing::Legacy => now.after(self.policy.legacy_recheck),
        };
        tracing::info!(
            scheme = p.set.auth.scheme.as_str(),
            expires_at = %exp_text,
            next_in_s = format!("{:.1}", at.since(now).as_secs_f64()),
            sinks = self.sinks.len(),
            "token published"
        );
        if self.rotation_step(&p, st).await {
            // Refresh with the new PAT at once: proves it, and the published token is its own.
            return Next::Refresh(self.clock.now());
        }
        Next::Refresh(at)
    }

    /// After a success: rotate the PAT if due (the fresh access token authenticates the call),
    /// and plan the wake-up for the next rotation. True when a new PAT is to be used now.
    async fn rotation_step(&mut self, p: &Published, st: &mut LoopState) -> bool {
        st.rotate_at = None;
        let (Some(pat), Some(exp)) = (self.last_pat.clone(), p.set.expires_at) else {
            return false;
        };
        let ls_now = self.ls_wall_now();
        let Some(rotation) = self.rotation.as_mut() else {
            return false;
        };
        let access = Access {
            token: p.set.auth.token.clone(),
            exp,
        };
        let outcome = rotation
            .rotate(&access, &pat, ls_now, self.clock.wall())
            .await;
        if let Some(new) = self.take_new_pat(outcome, &pat) {
            return new;
        }
        let ls_now = self.ls_wall_now();
        let now = self.clock.now();
        st.rotate_at = self
            .rotation
            .as_mut()
            .and_then(|r| r.due_in(&pat, ls_now))
            // Never sooner than the minimum period: whatever the claims say, a PAT that stays due
            // (a refused write-back backs off inside the rotator) costs at most one refresh per it.
            .map(|s| now.after(secs(s.max(MIN_ROTATE_EVERY.as_secs_f64()), MAX_WAIT_SECS)));
        false
    }

    /// Puts a new PAT from a rotation in use. Some(true): refresh with it now; Some(false): it is
    /// already in use (a write-back still pending); None: nothing new.
    fn take_new_pat(&mut self, outcome: Outcome, old: &Secret) -> Option<bool> {
        let new = match outcome {
            Outcome::Rotated(n) | Outcome::Recovered(n) | Outcome::Unpersisted(n) => n,
            Outcome::Unchanged => return None,
        };
        if new == *old {
            return Some(false);
        }
        let replaced = match &self.pat_override {
            // A rotation of a PAT we rotated to: the source still shows the one before.
            Some((current, replaced)) if current == old => *replaced,
            _ => old.fingerprint(),
        };
        self.pat_override = Some((new, replaced));
        Some(true)
    }

    /// After a refresh refused as blacklisted: if a rotation of ours was lost, repair it with an
    /// access token still valid (in memory, or read back from the sinks). Some: retry now.
    async fn try_recover(&mut self) -> Option<Next> {
        let pat = self.last_pat.clone()?;
        self.rotation.as_ref()?;
        let mut candidates = Vec::new();
        if let Some(p) = &self.current {
            candidates.push(p.set.auth.token.clone());
        }
        for sink in &self.sinks {
            if let Ok(Some(t)) = tokio::time::timeout(PUBLISH_TIMEOUT, sink.read_back()).await {
                candidates.push(t);
            }
        }
        let ls_now = self.ls_wall_now();
        let wall = self.clock.wall();
        let outcome = self
            .rotation
            .as_mut()?
            .recover(&pat, candidates, ls_now, wall)
            .await?;
        match self.take_new_pat(outcome, &pat)? {
            true => Some(Next::Retry {
                at: self.clock.now(),
                probe: false,
            }),
            false => None,
        }
    }

    /// After a failure: report it (once per streak), ask the source to re-read a rejected PAT,
    /// and back off. Configuration errors before the first success are returned (exit 2).
    pub(super) async fn after_failure(
        &mut self,
        mut e: AttemptError,
        st: &mut LoopState,
    ) -> Result<Next, AttemptError> {
        st.attempts += 1;
        let mut identified_now = false;
        if e.foreign && !st.succeeded && !st.identified {
            st.identified = true;
            identified_now = true;
            e = self.identify_url(e).await;
        }
        if e.config && (st.attempts == 1 || (identified_now && !st.succeeded)) {
            return Err(e);
        }
        if e.reason == Reason::RevokedPat {
            if let Some(next) = self.try_recover().await {
                return Ok(next);
            }
        }
        tracing::warn!(
            reason = e.reason.as_str(),
            failures = st.backoff.failures() + 1,
            "refresh failed: {}",
            e.message
        );
        if st.failing != Some(e.reason) {
            st.failing = Some(e.reason);
            self.notifier.warning(e.reason, e.summary).await;
        }
        self.health.set_problem(Some((e.reason, e.summary)));
        if e.reason.blames_pat() {
            // The user may have rotated the PAT: look again before waiting.
            self.pat.request_reread();
        }
        let now = self.clock.now();
        let remaining = self.health.earliest_expiry().map(|exp| exp.since(now));
        let remaining = remaining.filter(|r| !r.is_zero());
        let wait = st
            .backoff
            .next_delay(&self.policy, remaining, e.retry_after, fastrand::f64());
        Ok(Next::Retry {
            at: now.after(wait),
            probe: e.reason.is_outage() && !self.health.any_valid(),
        })
    }

    /// Wall-clock "now" on Label Studio's clock (ours corrected by the measured offset): the
    /// timestamps we export and compare with Label Studio's `exp`.
    pub(super) fn ls_wall_now(&self) -> f64 {
        self.clock.wall() + self.offset
    }
}
