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

    /// `Retry-After` parsing never panics and never asks for more than a day, for garbage and for
    /// delta-seconds of any size.
    #[test]
    fn retry_after_is_bounded(s in "\\PC{0,40}", n in proptest::num::u64::ANY) {
        use ls_token_refresher::exchange::parse_retry_after;
        for v in [s.clone(), n.to_string(), format!(" {n} ")] {
            if let Some(d) = parse_retry_after(&v) {
                proptest::prop_assert!(d <= Duration::from_secs(86_400));
            }
        }
        proptest::prop_assert_eq!(
            parse_retry_after(&n.to_string()),
            Some(Duration::from_secs(n.min(86_400)))
        );
    }

    /// Issue 14, finding 5: real HTTP-dates (IMF-fixdate, RFC 850 and asctime, each with the weekday
    /// that matches the date, which the parser checks) in years 0000..=9999, and near-misses of
    /// them. Every answer is capped at a day like the seconds form; a date in the past (1970 included)
    /// means "now"; a date more than a day ahead means exactly a day; a date the parser cannot
    /// represent (before 1970) means no `Retry-After`.
    #[test]
    fn retry_after_dates_are_capped_like_seconds(
        date in http_date(),
        garbage in "\\PC{0,6}",
        cut in 0usize..40,
    ) {
        use ls_token_refresher::exchange::parse_retry_after;
        let (text, unix, valid) = date;
        let before = unix_now();
        let got = parse_retry_after(&text);
        let after = unix_now();
        const DAY: i64 = 86_400;
        if !valid {
            proptest::prop_assert_eq!(got, None, "{}", text);
        } else if unix <= before {
            proptest::prop_assert_eq!(got, Some(Duration::ZERO), "{}", text);
        } else if unix > after + DAY {
            proptest::prop_assert_eq!(got, Some(Duration::from_secs(DAY as u64)), "{}", text);
        } else {
            let d = got.expect("a valid date within a day");
            proptest::prop_assert!(d <= Duration::from_secs(DAY as u64), "{} -> {:?}", text, d);
        }
        // Near-misses: cut short, with something appended or prepended.
        let cut_text: String = text.chars().take(cut).collect();
        for v in [cut_text, format!("{text}{garbage}"), format!("{garbage}{text}")] {
            if let Some(d) = parse_retry_after(&v) {
                proptest::prop_assert!(d <= Duration::from_secs(DAY as u64), "{:?} -> {:?}", v, d);
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

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// An HTTP-date in one of the three forms RFC 9110 lets a recipient accept, for a date in years
/// 0000..=9999: (text, unix seconds, whether the parser must accept it). The weekday always
/// matches the date (the parser checks it); RFC 850's two-digit year is read as 1970..=2069;
/// nothing before 1970 is representable.
fn http_date() -> impl proptest::strategy::Strategy<Value = (String, i64, bool)> {
    use proptest::prelude::*;
    let year = prop_oneof![
        0i16..=9999,
        1960i16..=2100,
        Just(9999i16),
        Just(1970i16),
        Just(1969i16)
    ];
    (year, 1i8..=12, 1i8..=31, 0i8..24, 0i8..60, 0i8..60, 0u8..3).prop_filter_map(
        "a day that exists in that month",
        |(y, mo, d, h, mi, s, form)| {
            let date = jiff::civil::date(y, mo, 1)
                .checked_add(jiff::Span::new().days(i64::from(d) - 1))
                .ok()?;
            if date.month() != mo {
                return None;
            }
            let at = date.at(h, mi, s, 0);
            let unix = at
                .to_zoned(jiff::tz::TimeZone::UTC)
                .ok()?
                .timestamp()
                .as_second();
            let day = at.strftime("%a").to_string();
            let text = match form {
                0 => at.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string(),
                1 => format!(
                    "{}, {}",
                    at.strftime("%A"),
                    at.strftime("%d-%b-%y %H:%M:%S GMT")
                ),
                _ => format!(
                    "{day} {} {:>2} {} {:04}",
                    at.strftime("%b"),
                    d,
                    at.strftime("%H:%M:%S"),
                    y
                ),
            };
            if form == 1 {
                // The parser reads the two-digit year as 1970..=2069 and checks the weekday there:
                // a date 400 years off has the same weekday and is (rightly) read as the near one.
                let yy = y % 100;
                let near = if yy < 70 { 2000 + yy } else { 1900 + yy };
                let near_date = jiff::civil::Date::new(near, mo, d).ok();
                return Some(match near_date.filter(|n| n.weekday() == date.weekday()) {
                    Some(n) => (
                        text,
                        n.at(h, mi, s, 0)
                            .to_zoned(jiff::tz::TimeZone::UTC)
                            .ok()?
                            .timestamp()
                            .as_second(),
                        true,
                    ),
                    None => (text, unix, false),
                });
            }
            Some((text, unix, y >= 1970))
        },
    )
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
