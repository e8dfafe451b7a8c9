//! A skewed wall clock for one child process: libfaketime (Debian's `libfaketime` 0.9.10, unpacked
//! into the cache by `tests/support/faketime/provision.sh`) preloaded with a fixed offset.
//!
//! What it fakes in the refresher, and what it cannot:
//! - The wall clock: Rust's `SystemTime::now()` calls glibc's `clock_gettime(CLOCK_REALTIME)`,
//!   which the preloaded library interposes and shifts by the offset. Every wall-clock reading of
//!   the binary (JWT `iat`/`exp` comparisons, metrics timestamps, log times) is skewed — exactly
//!   a host whose clock is off.
//! - The monotonic clocks are *not* shifted: `FAKETIME_DONT_FAKE_MONOTONIC=1` keeps glibc's
//!   `CLOCK_MONOTONIC`/`CLOCK_BOOTTIME` readings real (tokio's timers, `std::time::Instant`). A
//!   real host's skew is on CLOCK_REALTIME only, so this is the faithful setting; shifting the
//!   monotonic clocks as well would also desynchronise them from the kernel's timers.
//! - The refresher's own deadlines read `CLOCK_BOOTTIME` through rustix, which calls the vDSO
//!   directly (its linux_raw backend), and arm `timerfd`s with raw system calls: an LD_PRELOAD
//!   library cannot interpose either, so they are real whatever libfaketime does. The
//!   `CLOCK_REALTIME` cancel-on-set timerfd never fires: libfaketime shifts readings, it never sets
//!   the clock.
//!
//! The test process itself, Label Studio and everything else keep the real clock.

use std::{path::PathBuf, sync::OnceLock};

/// Path of `libfaketime.so.1`, provisioned once per test process.
pub fn library() -> &'static str {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let hint =
            "run `bash tests/support/faketime/provision.sh` by hand (needs Debian's package index)";
        let p = PathBuf::from(crate::provision("faketime", &[], hint).trim());
        assert!(p.is_file(), "{} missing after provisioning", p.display());
        p
    })
    .to_str()
    .expect("UTF-8 cache path")
}

/// Environment that runs a child with its wall clock `offset_secs` ahead (negative: behind).
pub fn env(offset_secs: i64) -> Vec<(&'static str, String)> {
    vec![
        ("LD_PRELOAD", library().to_owned()),
        ("FAKETIME", format!("{offset_secs:+}s")),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
    ]
}
