//! Time as the refresher sees it: the wall clock (for timestamps and talking about `exp`), and a
//! clock that never jumps and keeps counting while the machine is suspended (`CLOCK_BOOTTIME`) for
//! every deadline.
//!
//! Idle means idle: [`SystemClock::sleep_until`] arms one absolute `CLOCK_BOOTTIME` timerfd for the
//! deadline (it fires at once on resume if the deadline passed during a suspend) and waits on a
//! `CLOCK_REALTIME` timerfd armed with `TFD_TIMER_CANCEL_ON_SET`, which the kernel cancels when
//! the wall clock is stepped (NTP step, `date -s`, resume). Nothing wakes up in between.
//!
//! Tests drive the same code through [`Clock`] on tokio's paused clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;

/// A reading of the monotonic, suspend-aware clock (time since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mono(pub Duration);

impl Mono {
    /// `self + d`, saturating.
    pub fn after(self, d: Duration) -> Mono {
        Mono(self.0.saturating_add(d))
    }
    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Mono) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
    /// `self + secs` for a signed number of seconds, clamped at zero (NaN moves nothing).
    pub fn offset_secs(self, secs: f64) -> Mono {
        if secs >= 0.0 {
            self.after(secs_to_duration(secs))
        } else {
            Mono(self.0.saturating_sub(secs_to_duration(-secs)))
        }
    }
}

/// The one conversion of a computed number of seconds into a [`Duration`]. Seconds computed from
/// what Label Studio sends (claims, `Date`, `Retry-After`) can be negative, NaN or beyond any
/// `Duration`, and `Duration::from_secs_f64` panics on each (with `panic = "abort"`: a crash loop
/// from one hostile answer). Negative and NaN give zero, too large gives `Duration::MAX`; callers
/// cap the result at their own bound.
pub fn secs_to_duration(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

/// Why a sleep ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The deadline passed.
    Deadline,
    /// The wall clock was stepped (the deadline has not necessarily passed).
    WallClockStepped,
}

/// The clocks and the one kind of sleep the refresh loop needs.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time, seconds since the Unix epoch.
    fn wall(&self) -> f64;
    /// Monotonic time that includes suspend.
    fn now(&self) -> Mono;
    /// Sleeps until `deadline` (on [`Clock::now`]'s scale) or until the wall clock is stepped.
    /// A step that happened since the previous call is reported at once.
    fn sleep_until(&self, deadline: Mono) -> BoxFuture<'_, Wake>;
}

/// Seconds since the Unix epoch, now (wall clock).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Formats unix seconds as RFC 3339 UTC (`2026-11-25T12:00:00Z`).
pub fn rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The real clocks, with kernel timers.
pub struct SystemClock {
    /// Lazily created (it needs the runtime's reactor); `None` inside when timerfds are unavailable.
    realtime: tokio::sync::Mutex<Option<Option<sys::StepWatch>>>,
}

impl SystemClock {
    /// The system's clocks.
    pub fn new() -> Self {
        SystemClock {
            realtime: tokio::sync::Mutex::new(None),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn wall(&self) -> f64 {
        unix_now()
    }

    fn now(&self) -> Mono {
        sys::boottime()
    }

    fn sleep_until(&self, deadline: Mono) -> BoxFuture<'_, Wake> {
        Box::pin(async move {
            let mut guard = self.realtime.lock().await;
            let watch = guard.get_or_insert_with(|| match sys::StepWatch::new() {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!("no CLOCK_REALTIME timerfd ({e}): wall-clock steps are noticed only at the next deadline");
                    None
                }
            });
            let timer = sys::deadline_timer(deadline);
            let deadline_passed = async {
                match &timer {
                    Ok(t) => t.wait().await,
                    // No timerfd (e.g. a seccomp profile forbids it): tokio's monotonic timer.
                    Err(_) => tokio::time::sleep(deadline.since(sys::boottime())).await,
                }
            };
            match watch {
                Some(w) => tokio::select! {
                    biased;
                    _ = w.stepped() => Wake::WallClockStepped,
                    _ = deadline_passed => Wake::Deadline,
                },
                None => {
                    deadline_passed.await;
                    Wake::Deadline
                }
            }
        })
    }
}

/// Registers a file descriptor we own with tokio's reactor.
///
/// tokio 1.54 deprecates the safe `AsyncFd::new` because a generic `T: AsRawFd` might change or
/// close its descriptor while registered. An `OwnedFd` cannot: it returns the same descriptor for
/// its whole life and closes it only when the `AsyncFd` drops it. So the deprecated constructor is
/// sound here, and it keeps the crate free of `unsafe`.
#[allow(deprecated)]
pub(crate) fn async_fd(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    tokio::io::unix::AsyncFd::new(fd)
}

/// The kernel side: timerfds through rustix (safe wrappers) and tokio's `AsyncFd`.
mod sys {
    use std::{os::fd::OwnedFd, time::Duration};

    use rustix::{
        io::Errno,
        time::{
            clock_gettime, timerfd_create, timerfd_settime, ClockId, Itimerspec, TimerfdClockId,
            TimerfdFlags, TimerfdTimerFlags, Timespec,
        },
    };
    use tokio::io::unix::AsyncFd;

    use super::Mono;

    /// Far enough ahead never to expire, near enough to be valid on every kernel (year ~2160).
    const FAR_FUTURE_SECS: i64 = 6_000_000_000;

    pub fn boottime() -> Mono {
        let t = clock_gettime(ClockId::Boottime);
        Mono(Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
    }

    fn spec(d: Duration) -> Timespec {
        Timespec {
            tv_sec: d.as_secs() as i64,
            tv_nsec: d.subsec_nanos() as _,
        }
    }

    fn flags() -> TimerfdFlags {
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC
    }

    /// One absolute timer on `CLOCK_BOOTTIME`.
    pub struct DeadlineTimer(AsyncFd<OwnedFd>);

    pub fn deadline_timer(deadline: Mono) -> std::io::Result<DeadlineTimer> {
        let fd = timerfd_create(TimerfdClockId::Boottime, flags())?;
        // An all-zero it_value disarms the timer: a deadline "at boot" means "now" anyway.
        let at = deadline.0.max(Duration::from_nanos(1));
        timerfd_settime(
            &fd,
            TimerfdTimerFlags::ABSTIME,
            &Itimerspec {
                it_interval: spec(Duration::ZERO),
                it_value: spec(at),
            },
        )?;
        Ok(DeadlineTimer(super::async_fd(fd)?))
    }

    impl DeadlineTimer {
        pub async fn wait(&self) {
            loop {
                let Ok(mut guard) = self.0.readable().await else {
                    return std::future::pending().await;
                };
                let mut buf = [0u8; 8];
                match rustix::io::read(self.0.get_ref(), &mut buf) {
                    Ok(_) => return,
                    Err(Errno::AGAIN) => guard.clear_ready(),
                    Err(_) => return,
                }
            }
        }
    }

    /// A `CLOCK_REALTIME` timer that only ever "fires" by being cancelled when the clock is set.
    pub struct StepWatch(AsyncFd<OwnedFd>);

    impl StepWatch {
        pub fn new() -> std::io::Result<StepWatch> {
            let fd = timerfd_create(TimerfdClockId::Realtime, flags())?;
            arm(&fd)?;
            Ok(StepWatch(super::async_fd(fd)?))
        }

        /// Resolves when the wall clock has been stepped since the last call (then re-arms).
        pub async fn stepped(&self) {
            loop {
                let Ok(mut guard) = self.0.readable().await else {
                    return std::future::pending().await;
                };
                let mut buf = [0u8; 8];
                match rustix::io::read(self.0.get_ref(), &mut buf) {
                    Err(Errno::CANCELED) => {
                        let _ = arm(self.0.get_ref());
                        return;
                    }
                    Err(Errno::AGAIN) => guard.clear_ready(),
                    // Expired (a clock set past the far future) or an odd error: re-arm, keep waiting.
                    _ => {
                        let _ = arm(self.0.get_ref());
                        guard.clear_ready();
                    }
                }
            }
        }
    }

    fn arm(fd: &OwnedFd) -> std::io::Result<()> {
        timerfd_settime(
            fd,
            TimerfdTimerFlags::ABSTIME | TimerfdTimerFlags::CANCEL_ON_SET,
            &Itimerspec {
                it_interval: spec(Duration::ZERO),
                it_value: Timespec {
                    tv_sec: FAR_FUTURE_SECS,
                    tv_nsec: 0,
                },
            },
        )?;
        Ok(())
    }
}

/// A clock for unit tests on tokio's paused clock: `now` follows tokio's (auto-advancing) time,
/// the wall clock can be stepped, and steps wake sleepers the way the kernel does.
#[cfg(test)]
pub mod manual {
    use std::{
        sync::{
            atomic::{AtomicBool, Ordering},
            Mutex,
        },
        time::Duration,
    };

    use futures::future::BoxFuture;
    use tokio::{sync::Notify, time::Instant};

    use super::{Clock, Mono, Wake};

    /// See the module docs.
    pub struct ManualClock {
        origin: Instant,
        wall0: f64,
        wall_offset: Mutex<f64>,
        step_pending: AtomicBool,
        stepped: Notify,
    }

    impl ManualClock {
        /// Wall clock starting at `wall0` (unix seconds).
        pub fn new(wall0: f64) -> Self {
            ManualClock {
                origin: Instant::now(),
                wall0,
                wall_offset: Mutex::new(0.0),
                step_pending: AtomicBool::new(false),
                stepped: Notify::new(),
            }
        }

        /// Steps the wall clock by `secs` (either sign), like an NTP step or `date -s`.
        pub fn step_wall(&self, secs: f64) {
            *self.wall_offset.lock().unwrap() += secs;
            self.step_pending.store(true, Ordering::SeqCst);
            self.stepped.notify_one();
        }
    }

    impl Clock for ManualClock {
        fn wall(&self) -> f64 {
            self.wall0 + self.origin.elapsed().as_secs_f64() + *self.wall_offset.lock().unwrap()
        }

        fn now(&self) -> Mono {
            // Offset by a second so that no reading is ever Mono(0).
            Mono(self.origin.elapsed() + Duration::from_secs(1))
        }

        fn sleep_until(&self, deadline: Mono) -> BoxFuture<'_, Wake> {
            Box::pin(async move {
                let at = self.origin + deadline.0.saturating_sub(Duration::from_secs(1));
                loop {
                    if self.step_pending.swap(false, Ordering::SeqCst) {
                        return Wake::WallClockStepped;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => return Wake::Deadline,
                        _ = self.stepped.notified() => {}
                    }
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_072_000), "2025-11-25T12:00:00Z");
    }

    #[test]
    fn seconds_convert_without_panicking() {
        assert_eq!(secs_to_duration(f64::NAN), Duration::ZERO);
        assert_eq!(secs_to_duration(-1e19), Duration::ZERO);
        assert_eq!(secs_to_duration(f64::NEG_INFINITY), Duration::ZERO);
        assert_eq!(secs_to_duration(1e30), Duration::MAX);
        assert_eq!(secs_to_duration(f64::INFINITY), Duration::MAX);
        assert_eq!(secs_to_duration(1.5), Duration::from_millis(1500));
        assert_eq!(
            Mono(Duration::from_secs(3)).offset_secs(f64::NAN),
            Mono(Duration::from_secs(3))
        );
    }

    #[test]
    fn mono_arithmetic_saturates() {
        let m = Mono(Duration::from_secs(10));
        assert_eq!(m.offset_secs(-20.0), Mono(Duration::ZERO));
        assert_eq!(m.offset_secs(2.5), Mono(Duration::from_millis(12_500)));
        assert_eq!(Mono(Duration::ZERO).since(m), Duration::ZERO);
    }

    /// The real kernel timers: a deadline fires on time, and setting the wall clock (to the value it
    /// already has, so nothing else on the machine notices) wakes a sleeper at once. Needs
    /// CAP_SYS_TIME for the second half; without it the test fails (see `skip`).
    #[tokio::test]
    async fn system_clock_wakes_for_deadlines_and_clock_steps() {
        let clock = SystemClock::new();
        let t0 = clock.now();
        let woke = clock.sleep_until(t0.after(Duration::from_millis(50))).await;
        assert_eq!(woke, Wake::Deadline);
        let slept = clock.now().since(t0);
        assert!(
            slept >= Duration::from_millis(50) && slept < Duration::from_secs(2),
            "{slept:?}"
        );
        // A step while nobody sleeps is reported by the next sleep.
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
        match rustix::time::clock_settime(rustix::time::ClockId::Realtime, now) {
            Ok(()) => {
                let t1 = clock.now();
                let woke = clock.sleep_until(t1.after(Duration::from_secs(30))).await;
                assert_eq!(woke, Wake::WallClockStepped);
                assert!(clock.now().since(t1) < Duration::from_secs(1));
            }
            Err(e) => crate::skip::cannot_run(
                "system_clock_wakes_for_deadlines_and_clock_steps",
                &format!("clock_settime(CLOCK_REALTIME) needs CAP_SYS_TIME ({e})"),
            ),
        }
    }
}
