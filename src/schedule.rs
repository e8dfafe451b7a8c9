//! When to refresh and how long to back off: pure arithmetic over the token's own `iat`/`exp`
//! (never an assumed TTL), so it is unit-tested without clocks. The refresher feeds it Label
//! Studio's time (our clock corrected by the measured offset), so a skewed clock cannot shift it.

use std::time::Duration;

use crate::{
    clock::secs_to_duration,
    values::{Dur, Fraction, PositiveDur},
};

/// Refreshing more often than at this fraction of a token's lifetime gains nothing (every new token
/// is just as long), so a lead time larger than the lifetime degrades to this instead of a hot loop.
/// It is also the floor between receiving a token and refreshing it again, whatever the clocks say
/// (only a rejected token or a changed PAT refreshes sooner).
pub const MIN_FRACTION: f64 = 0.25;
/// Jitter never exceeds this share of the lifetime, so short tokens keep most of their schedule.
const MAX_JITTER_FRACTION: f64 = 0.1;
/// An `iat` this far in the future means our clock and Label Studio's disagree (or ours jumped back).
pub const CLOCK_SKEW_TOLERANCE_SECS: f64 = 5.0;

/// Longest planned wait, whatever `exp` says: bounds arithmetic on absurd claims (and a year is
/// far beyond any Label Studio token lifetime).
pub const MAX_WAIT: Duration = Duration::from_secs(365 * 86_400);

/// Refresh timing flags (shared by `run`, `once`, `token` and `check`).
#[derive(Debug, Clone, clap::Args)]
pub struct TimingArgs {
    /// Refresh when this fraction of the access token's lifetime has passed (0 < f < 1).
    #[arg(
        long,
        env = "LS_REFRESH_FRACTION",
        default_value = "0.66",
        value_name = "FRACTION"
    )]
    pub refresh_fraction: Fraction,

    /// Refresh at least this long before the access token expires.
    #[arg(
        long,
        env = "LS_MIN_LEAD",
        default_value = "30s",
        value_name = "DURATION"
    )]
    pub min_lead: Dur,

    /// Refresh up to this much earlier at random, so many replicas do not refresh in lock-step.
    #[arg(
        long,
        env = "LS_JITTER",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub jitter: Dur,

    /// First retry delay after a failed refresh (doubles per failure, with jitter).
    #[arg(
        long,
        env = "LS_BACKOFF_INITIAL",
        default_value = "1s",
        value_name = "DURATION"
    )]
    pub backoff_initial: PositiveDur,

    /// Longest retry delay; retries are also capped relative to the current token's remaining lifetime.
    #[arg(
        long,
        env = "LS_BACKOFF_MAX",
        default_value = "60s",
        value_name = "DURATION"
    )]
    pub backoff_max: Dur,

    /// How often a legacy token is re-validated (to notice revocation or legacy auth being disabled).
    #[arg(
        long,
        env = "LS_LEGACY_RECHECK",
        default_value = "60s",
        value_name = "DURATION"
    )]
    pub legacy_recheck: Dur,
}

/// Timing flags that contradict each other.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TimingError(&'static str);

impl TimingArgs {
    /// The policy, with `propagation_margin` of lead for Secret sinks (zero without one).
    pub fn policy(&self, propagation_margin: Duration) -> Result<Policy, TimingError> {
        if self.backoff_max.0 < self.backoff_initial.0 {
            return Err(TimingError("--backoff-max (LS_BACKOFF_MAX) must not be smaller than --backoff-initial (LS_BACKOFF_INITIAL)"));
        }
        if self.legacy_recheck.0 < Duration::from_secs(1) {
            return Err(TimingError(
                "--legacy-recheck (LS_LEGACY_RECHECK) must be at least 1s",
            ));
        }
        Ok(Policy {
            fraction: self.refresh_fraction.0,
            min_lead: self.min_lead.0,
            propagation_margin,
            jitter: self.jitter.0,
            backoff_initial: self.backoff_initial.0,
            backoff_max: self.backoff_max.0,
            legacy_recheck: self.legacy_recheck.0,
        })
    }
}

/// Refresh timing knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Refresh when this fraction of the lifetime has passed.
    pub fraction: f64,
    /// Refresh at least this long before `exp`.
    pub min_lead: Duration,
    /// Extra lead for Secret sinks (kubelet propagation delay); zero without one.
    pub propagation_margin: Duration,
    /// Up to this much earlier, at random.
    pub jitter: Duration,
    /// First retry delay.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How often a legacy token is re-validated.
    pub legacy_recheck: Duration,
}

impl Default for Policy {
    /// The command line's defaults, without a Secret sink.
    fn default() -> Self {
        Policy {
            fraction: 0.66,
            min_lead: Duration::from_secs(30),
            propagation_margin: Duration::ZERO,
            jitter: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            legacy_recheck: Duration::from_secs(60),
        }
    }
}

/// Why a refresh is due now rather than on schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Refresh after this many seconds (wall-clock based).
    In(Duration),
    /// `iat` is in the future: the clock moved backwards or disagrees with Label Studio.
    ClockBehind,
    /// Already at or past `exp`.
    Expired,
}

/// Plans the next refresh of a token issued at `iat`, expiring at `exp`, seen at wall time `now`
/// (unix seconds). `rand01` in [0,1) picks the jitter.
pub fn plan(policy: &Policy, now: f64, iat: Option<i64>, exp: i64, rand01: f64) -> Plan {
    let exp = exp as f64;
    if now >= exp {
        return Plan::Expired;
    }
    let iat = match iat.map(|i| i as f64) {
        Some(i) if i < exp => i,
        // No usable iat: treat the remaining time as the lifetime.
        _ => now,
    };
    if iat > now + CLOCK_SKEW_TOLERANCE_SECS {
        return Plan::ClockBehind;
    }
    let lifetime = exp - iat;
    let lead = (policy.min_lead + policy.propagation_margin).as_secs_f64();
    let mut target = (iat + policy.fraction * lifetime).min(exp - lead);
    target = target.max(iat + MIN_FRACTION * lifetime);
    let jitter = policy
        .jitter
        .as_secs_f64()
        .min(MAX_JITTER_FRACTION * lifetime);
    target -= jitter * rand01.clamp(0.0, 1.0);
    // A token claiming to live for centuries is still re-checked within the longest sane wait.
    Plan::In(secs_to_duration(target - now).min(MAX_WAIT))
}

/// True when `policy`'s lead times cannot be honoured for tokens of `lifetime` seconds (worth a warning).
pub fn lead_exceeds_lifetime(policy: &Policy, lifetime_secs: f64) -> bool {
    (policy.min_lead + policy.propagation_margin).as_secs_f64()
        > (1.0 - MIN_FRACTION) * lifetime_secs
}

/// Exponential backoff with jitter, capped relative to the current token's remaining lifetime.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// Forgets past failures (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Delay before the next attempt. `remaining` is the lifetime left of the token currently
    /// published (None when none is valid); `retry_after` is the server's request. `rand01` in [0,1).
    ///
    /// The exponential step doubles from `backoff_initial` up to `backoff_max`, but while a token is
    /// still valid it is also capped at a quarter of its remaining lifetime, so several retries fit
    /// before it expires (a minutes-long cap is wrong for a 5-minute token). Jitter takes the step down
    /// by up to half ("equal jitter"), so replicas spread out yet never retry in a tight loop.
    /// `Retry-After` is honoured, except that it never makes us wait past the current token's expiry.
    pub fn next_delay(
        &mut self,
        policy: &Policy,
        remaining: Option<Duration>,
        retry_after: Option<Duration>,
        rand01: f64,
    ) -> Duration {
        let exp = self.failures.min(30);
        self.failures = self.failures.saturating_add(1);
        let mut cap = policy.backoff_max;
        if let Some(rem) = remaining {
            cap = cap.min(rem / 4).max(policy.backoff_initial);
        }
        let step = policy
            .backoff_initial
            .saturating_mul(1u32 << exp.min(20))
            .min(cap);
        let mut delay = step.mul_f64(1.0 - 0.5 * rand01.clamp(0.0, 1.0));
        if let Some(ra) = retry_after {
            let ra = match remaining {
                // One attempt just before expiry beats politely letting the token lapse.
                Some(rem) => ra.min(rem.saturating_sub(Duration::from_secs(1))),
                None => ra,
            };
            delay = delay.max(ra);
        }
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::default()
    }

    fn secs(p: Plan) -> f64 {
        match p {
            Plan::In(d) => d.as_secs_f64(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refreshes_at_fraction_of_lifetime() {
        // 300 s token issued now: 0.66 * 300 = 198 s, well before exp - 30 s.
        assert!((secs(plan(&policy(), 1000.0, Some(1000), 1300, 0.0)) - 198.0).abs() < 1e-6);
        // Jitter takes up to 10 s off.
        assert!((secs(plan(&policy(), 1000.0, Some(1000), 1300, 0.999)) - 188.01).abs() < 0.01);
    }

    #[test]
    fn min_lead_and_propagation_margin_win_when_larger() {
        let mut p = policy();
        p.propagation_margin = Duration::from_secs(90);
        // exp - 120 = 180 s after iat, earlier than 198.
        assert!((secs(plan(&p, 1000.0, Some(1000), 1300, 0.0)) - 180.0).abs() < 1e-6);
    }

    #[test]
    fn lead_longer_than_lifetime_degrades_to_quarter() {
        // 20 s tokens with a 30 s lead: refresh at 5 s, not in a hot loop.
        assert!((secs(plan(&policy(), 1000.0, Some(1000), 1020, 0.0)) - 5.0).abs() < 1e-6);
        assert!(lead_exceeds_lifetime(&policy(), 20.0));
        assert!(!lead_exceeds_lifetime(&policy(), 300.0));
        // Jitter is capped at 10 % of the lifetime: 2 s here.
        assert!((secs(plan(&policy(), 1000.0, Some(1000), 1020, 0.999)) - 3.002).abs() < 0.01);
    }

    #[test]
    fn schedule_uses_tokens_own_times_not_a_ttl() {
        // Seen 100 s after issue: 98 s left until the 198 s mark.
        assert!((secs(plan(&policy(), 1100.0, Some(1000), 1300, 0.0)) - 98.0).abs() < 1e-6);
        // A 1-hour token is scheduled at 0.66 h.
        assert!((secs(plan(&policy(), 0.0, Some(0), 3600, 0.0)) - 2376.0).abs() < 1e-6);
        // Past the mark: due now.
        assert_eq!(secs(plan(&policy(), 1250.0, Some(1000), 1300, 0.0)), 0.0);
    }

    #[test]
    fn absurd_claims_do_not_overflow() {
        assert_eq!(
            secs(plan(&policy(), 0.0, Some(i64::MIN), i64::MAX, 0.5)),
            MAX_WAIT.as_secs_f64()
        );
        assert!(matches!(
            plan(&policy(), 0.0, None, i64::MAX, 0.5),
            Plan::In(_)
        ));
    }

    #[test]
    fn clock_jumps_refresh_at_once() {
        assert_eq!(
            plan(&policy(), 1300.0, Some(1000), 1300, 0.0),
            Plan::Expired
        );
        assert_eq!(
            plan(&policy(), 5000.0, Some(1000), 1300, 0.0),
            Plan::Expired
        );
        assert_eq!(
            plan(&policy(), 900.0, Some(1000), 1300, 0.0),
            Plan::ClockBehind
        );
        // Small skew is tolerated.
        assert!(matches!(
            plan(&policy(), 997.0, Some(1000), 1300, 0.0),
            Plan::In(_)
        ));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = policy();
        let mut b = Backoff::default();
        let got: Vec<u64> = (0..9)
            .map(|_| b.next_delay(&p, None, None, 0.0).as_secs())
            .collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.reset();
        assert_eq!(b.next_delay(&p, None, None, 0.0), Duration::from_secs(1));
    }

    #[test]
    fn backoff_cap_follows_remaining_lifetime() {
        let p = policy();
        let mut b = Backoff::default();
        for _ in 0..10 {
            let d = b.next_delay(&p, Some(Duration::from_secs(40)), None, 0.0);
            assert!(d <= Duration::from_secs(10), "{d:?}");
        }
        // Jitter stays within [step/2, step].
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.next_delay(&p, None, None, 0.0);
        }
        let d = b.next_delay(&p, None, None, 0.999);
        assert!(
            d >= Duration::from_secs(16) && d <= Duration::from_secs(32),
            "{d:?}"
        );
    }

    #[test]
    fn retry_after_is_honoured_but_not_past_expiry() {
        let p = policy();
        let mut b = Backoff::default();
        assert_eq!(
            b.next_delay(&p, None, Some(Duration::from_secs(120)), 0.0),
            Duration::from_secs(120)
        );
        let mut b = Backoff::default();
        assert_eq!(
            b.next_delay(
                &p,
                Some(Duration::from_secs(50)),
                Some(Duration::from_secs(120)),
                0.0
            ),
            Duration::from_secs(49)
        );
    }
}
