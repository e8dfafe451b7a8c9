//! Property tests on public parsing and scheduling entry points that the unit proptests in `src/`
//! do not reach (`Retry-After`, duration flags, the schedule with absurd claims, backoff bounds, error
//! details that must never echo the PAT), and regressions they found. Pure functions only: fast, part
//! of plain `cargo test`.

use std::time::Duration;

use ls_token_refresher::secret::Secret;

proptest::proptest! {
    // Integration tests have no lib.rs next to them for proptest's regression files; a failure
    // prints its minimal input and seed instead.
    #![proptest_config(proptest::prelude::ProptestConfig {
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// `Retry-After` parsing never panics and never asks for more than a day.
    #[test]
    fn retry_after_is_bounded(s in "\\PC{0,40}", n in proptest::num::u64::ANY) {
        use ls_token_refresher::exchange::parse_retry_after;
        for v in [s.clone(), n.to_string(), format!(" {n} ")] {
            if let Some(d) = parse_retry_after(&v) {
                proptest::prop_assert!(d <= Duration::from_secs(86_400));
            }
        }
    }

    /// Durations on the command line either parse (to at most `MAX_DURATION`) or are refused; they
    /// never panic, however large the numbers.
    #[test]
    fn duration_flags_parse_or_refuse(
        s in "([0-9]{1,25}(\\.[0-9]{1,3})?(ms|s|m|h|d|x)?){1,3}|\\PC{0,24}",
    ) {
        if let Ok(d) = s.parse::<ls_token_refresher::values::Dur>() {
            proptest::prop_assert!(d.0 <= ls_token_refresher::values::MAX_DURATION);
        }
    }

    /// Any claims at all (absurd `iat`/`exp` included) plan without panicking, within `MAX_WAIT`.
    #[test]
    fn schedule_never_panics_on_absurd_claims(
        iat in proptest::option::of(proptest::num::i64::ANY),
        exp in proptest::num::i64::ANY,
        now in -1e13f64..1e13,
        rand in 0.0f64..1.0,
    ) {
        use ls_token_refresher::schedule::{plan, Plan, Policy, MAX_WAIT};
        let policy = Policy {
            fraction: 0.66,
            min_lead: Duration::from_secs(30),
            propagation_margin: Duration::from_secs(90),
            jitter: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            legacy_recheck: Duration::from_secs(60),
        };
        if let Plan::In(d) = plan(&policy, now, iat, exp, rand) {
            proptest::prop_assert!(d <= MAX_WAIT);
        }
    }

    /// The schedule never plans a refresh after the token's own expiry, and says Expired / ClockBehind
    /// exactly when it should.
    #[test]
    fn schedule_stays_inside_the_lifetime(
        iat in 1_000_000_000i64..3_000_000_000,
        ttl in 1i64..100_000,
        seen in -10.0f64..200_000.0,
        fraction in 0.01f64..0.99,
        lead in 0u64..100_000,
        jitter in 0u64..100_000,
        rand in 0.0f64..1.0,
    ) {
        use ls_token_refresher::schedule::{plan, Plan, Policy};
        let policy = Policy {
            fraction,
            min_lead: Duration::from_secs(lead),
            propagation_margin: Duration::ZERO,
            jitter: Duration::from_secs(jitter),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            legacy_recheck: Duration::from_secs(60),
        };
        let exp = iat + ttl;
        let now = iat as f64 + seen;
        match plan(&policy, now, Some(iat), exp, rand) {
            Plan::In(d) => {
                proptest::prop_assert!(now < exp as f64);
                proptest::prop_assert!(now + d.as_secs_f64() <= exp as f64 + 1e-6);
            }
            Plan::Expired => proptest::prop_assert!(now >= exp as f64),
            Plan::ClockBehind => proptest::prop_assert!(iat as f64 > now + 5.0),
        }
    }

    /// Backoff is never a hot loop (≥ half the initial step) and never exceeds its caps: the max, a
    /// quarter of the remaining lifetime, and `Retry-After` only up to a second before expiry.
    #[test]
    fn backoff_is_bounded(
        failures in 0usize..40,
        initial_ms in 1u64..5_000,
        max_ms in 1u64..600_000,
        remaining_ms in proptest::option::of(0u64..3_600_000),
        retry_after_s in proptest::option::of(0u64..100_000),
        rand in 0.0f64..1.0,
    ) {
        use ls_token_refresher::schedule::{Backoff, Policy};
        let initial = Duration::from_millis(initial_ms);
        let max = Duration::from_millis(max_ms.max(initial_ms));
        let policy = Policy {
            fraction: 0.66,
            min_lead: Duration::from_secs(30),
            propagation_margin: Duration::ZERO,
            jitter: Duration::ZERO,
            backoff_initial: initial,
            backoff_max: max,
            legacy_recheck: Duration::from_secs(60),
        };
        let remaining = remaining_ms.map(Duration::from_millis);
        let retry_after = retry_after_s.map(Duration::from_secs);
        let mut b = Backoff::default();
        for _ in 0..failures {
            b.next_delay(&policy, remaining, None, rand);
        }
        let d = b.next_delay(&policy, remaining, retry_after, rand);
        let cap = match remaining {
            Some(r) => max.min(r / 4).max(initial),
            None => max,
        };
        proptest::prop_assert!(d >= initial / 2, "{d:?} < half of {initial:?}");
        let ra_cap = match (retry_after, remaining) {
            (Some(ra), Some(r)) => ra.min(r.saturating_sub(Duration::from_secs(1))),
            (Some(ra), None) => ra,
            (None, _) => Duration::ZERO,
        };
        proptest::prop_assert!(d <= cap.max(ra_cap), "{d:?} > {cap:?} / {ra_cap:?}");
    }

    /// Whatever a server (or a proxy echoing the request) puts in an error body, the detail we keep
    /// never contains the PAT.
    #[test]
    fn error_detail_never_echoes_the_pat(
        before in "\\PC{0,80}",
        after in "\\PC{0,80}",
        pat in "eyJ[A-Za-z0-9_-]{10,40}\\.[A-Za-z0-9_-]{10,80}\\.[A-Za-z0-9_-]{10,43}",
        in_field in proptest::bool::ANY,
    ) {
        use ls_token_refresher::exchange::extract_detail;
        let text = format!("{before}{pat}{after}");
        let body = if in_field {
            serde_json::json!({"detail": "Validation error", "validation_errors": {"refresh": [text]}})
        } else {
            serde_json::json!({"detail": text})
        };
        let d = extract_detail(body.to_string().as_bytes(), Some(&Secret::new(pat.clone())));
        if let Some(d) = d {
            proptest::prop_assert!(!d.contains(&pat));
            proptest::prop_assert!(!d.contains(&pat[pat.len() - 10..]));
        }
    }
}

/// Regression: two duration parts that each fit but whose sum overflowed `Duration` made
/// `Dur::from_str` panic (`total += …`), which aborted the release binary (panic = "abort") instead of
/// the promised one-line error and exit 2. Found by this suite; fixed in src/config.rs (checked_add and a
/// one-year cap).
#[test]
fn duration_flag_overflow_is_refused() {
    let r = std::panic::catch_unwind(|| {
        "10000000000000000000s10000000000000000000s".parse::<ls_token_refresher::values::Dur>()
    });
    assert!(
        matches!(r, Ok(Err(_))),
        "overflowing duration must be refused, not panic"
    );
}
