//! The published token's timing on our clocks. Everything is anchored on the monotonic,
//! suspend-aware clock at the moment the token was received, and on Label Studio's own clock as
//! the token (`iat`) and the `Date` header tell it: our wall clock may be minutes off theirs, and a
//! schedule computed on our wall clock against their `exp` would then refresh in a hot loop or
//! let tokens lapse (issue: 279 refreshes in 40 s with the sidecar 30 s ahead).

use std::time::Duration;

use crate::{
    clock::{secs_to_duration, Mono},
    jwt::MAX_NUMERIC_DATE,
    schedule::{self, Plan, Policy, MAX_WAIT, MIN_FRACTION},
};

/// Offsets up to this are clock agreement: `iat` and `Date` have one-second resolution and are
/// rounded down, so a same-clock measurement lands in (-1 s - RTT, 0]. Within it we trust our own
/// sub-second wall clock (readiness then flips at the exact `exp`).
pub const SKEW_TOLERANCE_SECS: f64 = 2.0;
/// Offsets beyond this are worth one warning: the README's "clocks agree to ±5 s" is exceeded.
pub const SKEW_WARN_SECS: f64 = 5.0;
/// The shortest time from receiving a token to refreshing it again, whatever its claims and the
/// clocks say: a server handing out tokens that are (or look) expired is asked at most once a
/// second, as a flapping PAT source is (`wait::EXCHANGE_MIN_INTERVAL`).
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Readings of Label Studio's clock further than this from ours are not believed. Real offsets are
/// seconds (NTP) to hours (a wrong time zone setting, a restored VM); the README asks for ±5 s. One
/// hostile `iat` or `Date` of year 9999 would otherwise move "Label Studio's time" by millennia: the
/// current token would look expired, and so would the PAT, which stops every later exchange.
pub const MAX_CLOCK_OFFSET_SECS: f64 = 86_400.0;

/// True when `ls_seen` (unix seconds, an `iat` or a `Date`) is a reading of Label Studio's clock we
/// believe, our wall clock reading `wall`: a date between 1970 and 9999 (not NaN, not ±1e19) within
/// [`MAX_CLOCK_OFFSET_SECS`] of ours.
pub fn believable(ls_seen: f64, wall: f64) -> bool {
    (0.0..=MAX_NUMERIC_DATE as f64).contains(&ls_seen)
        && (ls_seen - wall).abs() <= MAX_CLOCK_OFFSET_SECS
}

/// Label Studio's clock read `ls_time` (unix seconds) when ours read `at`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anchor {
    /// Our monotonic reading.
    pub at: Mono,
    /// Label Studio's time then.
    pub ls_time: f64,
}

impl Anchor {
    /// Anchors from one measurement of Label Studio's time `ls_seen` (an `iat` or a `Date`: whole
    /// seconds, rounded down) taken at our monotonic `at` and wall `wall`. Returns the anchor and
    /// the offset used (Label Studio minus us; 0 within [`SKEW_TOLERANCE_SECS`]) and the raw one.
    ///
    /// A reading that is not [`believable`] is not a measurement: the anchor is then our own wall
    /// clock (and the raw offset returned is zero).
    pub fn measure(at: Mono, wall: f64, ls_seen: Option<f64>) -> (Anchor, f64, f64) {
        let ls_seen = ls_seen.filter(|t| believable(*t, wall));
        let raw = ls_seen.map(|t| t - wall).unwrap_or(0.0);
        if raw.abs() <= SKEW_TOLERANCE_SECS {
            return (Anchor { at, ls_time: wall }, 0.0, raw);
        }
        // The measurement is rounded down and a little old: the true time is up to a second
        // later. Assuming the later end makes expiry and refresh earlier, never later.
        let ls_time = ls_seen.unwrap_or(wall) + 1.0;
        (Anchor { at, ls_time }, ls_time - wall, raw)
    }

    /// Label Studio's time at our monotonic `now`.
    pub fn ls_now(&self, now: Mono) -> f64 {
        self.ls_time + (now.0.as_secs_f64() - self.at.0.as_secs_f64())
    }

    /// Our monotonic reading when Label Studio's clock will read `ls`.
    pub fn mono_at(&self, ls: f64) -> Mono {
        self.at.offset_secs(ls - self.ls_time)
    }
}

/// An access token's timing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JwtTiming {
    /// When we received it.
    pub received: Mono,
    /// Our clock against Label Studio's.
    pub anchor: Anchor,
    /// `iat`, if the token has one.
    pub iat: Option<i64>,
    /// `exp`.
    pub exp: i64,
    /// The jitter draw for this token, in [0, 1).
    pub rand: f64,
}

impl JwtTiming {
    /// When the token stops working, on our monotonic clock.
    pub fn expires(&self) -> Mono {
        self.anchor.mono_at(self.exp as f64)
    }

    /// The token's own lifetime (`exp - iat`), or what was left of it when received. In `f64`:
    /// claims are `i64` from outside, and their difference may not fit one.
    pub fn lifetime(&self) -> f64 {
        match self.iat {
            Some(iat) if iat < self.exp => self.exp as f64 - iat as f64,
            _ => (self.exp as f64 - self.anchor.ls_now(self.received)).max(0.0),
        }
    }

    /// When to refresh: the schedule on Label Studio's clock, never sooner than a quarter of the
    /// lifetime after receipt (whatever the clocks say, a token is not refreshed in a hot loop) —
    /// unless a later measurement of Label Studio's clock shows the token has less than a quarter
    /// of its life left (then at once: each new token is anchored on its own `iat`, so this
    /// cannot repeat). Whatever the claims, the answer lies between [`MIN_REFRESH_INTERVAL`] after
    /// receipt (never a hot loop) and [`MAX_WAIT`] after `now` (never parked for good).
    pub fn refresh_at(&self, policy: &Policy, now: Mono) -> Mono {
        let quarter = secs_to_duration(MIN_FRACTION * self.lifetime());
        let floor = self
            .received
            .after(quarter)
            .min(Mono(self.expires().0.saturating_sub(quarter)))
            .max(self.received.after(MIN_REFRESH_INTERVAL));
        let planned = match schedule::plan(
            policy,
            self.anchor.ls_now(now),
            self.iat,
            self.exp,
            self.rand,
        ) {
            Plan::In(d) => now.after(d),
            Plan::Expired | Plan::ClockBehind => now,
        };
        // `now` is never before receipt, so the cap never undercuts the one-second floor.
        planned.max(floor).min(now.after(MAX_WAIT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mono(s: f64) -> Mono {
        Mono(Duration::from_secs_f64(s))
    }

    fn timing(wall_at_receipt: f64, iat: i64, exp: i64) -> JwtTiming {
        let received = mono(1000.0);
        let (anchor, _, _) = Anchor::measure(received, wall_at_receipt, Some(iat as f64));
        JwtTiming {
            received,
            anchor,
            iat: Some(iat),
            exp,
            rand: 0.0,
        }
    }

    #[test]
    fn agreeing_clocks_use_our_wall_clock_exactly() {
        let (a, used, raw) = Anchor::measure(mono(10.0), 5000.4, Some(5000.0));
        assert_eq!((used, a.ls_time), (0.0, 5000.4));
        assert!((raw + 0.4).abs() < 1e-9);
        let t = timing(5000.4, 5000, 5060);
        assert_eq!(t.expires(), mono(1059.6));
    }

    /// 60 s tokens with our clock 30 s ahead, 30 s behind, 70 s ahead (the cases) and
    /// hours off: the refresh lands at the same point of the token's life, and expiry is where
    /// Label Studio's clock puts it.
    #[test]
    fn skew_in_either_direction_keeps_the_schedule() {
        let policy = Policy {
            jitter: Duration::ZERO,
            ..Policy::default()
        };
        for skew in [30.0, -30.0, 70.0, -70.0, 7200.0, -86_400.0] {
            let t = timing(5000.0 + skew, 5000, 5060);
            let at = t.refresh_at(&policy, t.received);
            // 60 s lifetime: max(0.66*60, ...) capped by exp - 30 s = 30 s, minus the 1 s rounding.
            let wait = at.since(t.received).as_secs_f64();
            assert!((28.9..=30.0).contains(&wait), "skew {skew}: wait {wait}");
            let left = t.expires().since(t.received).as_secs_f64();
            assert!(
                (58.9..=60.0).contains(&left),
                "skew {skew}: expires in {left}"
            );
        }
    }

    #[test]
    fn never_sooner_than_a_quarter_of_the_lifetime() {
        let policy = Policy {
            min_lead: Duration::from_secs(600),
            jitter: Duration::ZERO,
            ..Policy::default()
        };
        let t = timing(5000.0, 5000, 5060);
        assert_eq!(t.refresh_at(&policy, t.received), mono(1015.0));
        // Even asked long after (a missed deadline), the floor holds relative to receipt only.
        assert_eq!(t.refresh_at(&policy, mono(2000.0)), mono(2000.0));
    }
}
