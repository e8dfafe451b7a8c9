//! Wall-clock helpers: Unix time now, RFC 3339 as consumers read it, sleeping past a JWT `exp`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the epoch, with fractions.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Whole seconds since the epoch (comparable with JWT `iat`/`exp`).
pub fn now() -> i64 {
    unix_now() as i64
}

/// Unix seconds as RFC 3339 UTC (`2026-11-25T12:00:00Z`), the format of the published `expires_at`;
/// empty if out of range. Written here rather than imported so the tests pin the format.
pub fn rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Sleeps until `exp` (a JWT `exp`, Unix seconds) plus `margin`.
pub async fn sleep_past(exp: i64, margin: Duration) {
    let wait = (exp as f64 - unix_now()).max(0.0) + margin.as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
}

/// Seconds since boot (CLOCK_BOOTTIME, from /proc/uptime, 10 ms resolution): the clock a pod's
/// container and the test process read alike (containers here get no time namespace), so times
/// taken inside a pod and in the test compare directly.
pub fn boot_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/uptime").expect("read /proc/uptime");
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("/proc/uptime starts with seconds")
}
