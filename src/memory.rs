//! Giving the heap a burst left behind back to the system.
//!
//! glibc's allocator returns freed memory only from the top of its heap: after a burst of
//! connections the freed pages below the last live allocation stay resident (measured: 8 MiB idle,
//! 25 MiB under 1,000 active connections, still 24 MiB two minutes after they closed, all of it
//! `[heap]`). Its tunables do not change that (a lower `mmap_threshold` returned 1 MiB). What does
//! is `malloc_trim(0)`, which also releases free pages inside the heap: servers call it at a quiet
//! point. [`BurstWatch`] finds that point from connection counts alone, so an idle process stays
//! idle: no timer runs until a burst has shrunk to a quarter of its peak.
//!
//! The one `unsafe` call of the crate lives here (the crate denies `unsafe_code`; this module
//! allows it for that call only).
#![allow(unsafe_code)]

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};
use std::time::Duration;

use tokio::sync::Notify;

/// Asks the allocator to give the pages it holds free back to the system; whether any were.
/// glibc only; elsewhere (musl, other allocators) nothing to do.
pub fn release() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` takes no pointers and touches only glibc's own free lists, which
        // it locks while it runs; any thread may call it at any time.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// A burst is this many open connections or more: below it, what is freed (~17 KiB per HTTP/1
/// connection with a request in flight, bench/RESULTS.md §3) is not worth a walk of the heap.
pub const BURST_MIN: usize = 128;
/// A burst is over when the open connections have fallen to this fraction of its peak...
const OVER_AT_DIVISOR: usize = 4;
/// ...and stayed there this long (clients that reconnect right away are part of the burst).
const SETTLE: Duration = Duration::from_secs(2);

/// Counts a server's open connections and returns memory once a burst of them is over.
#[derive(Debug, Default)]
pub struct BurstWatch {
    open: AtomicUsize,
    /// The most open at once since the last release.
    peak: AtomicUsize,
    over: Notify,
}

impl BurstWatch {
    /// A watch with nothing open.
    pub fn new() -> Arc<BurstWatch> {
        Arc::new(BurstWatch::default())
    }

    /// A connection opened.
    pub fn opened(&self) {
        let open = self.open.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        self.peak.fetch_max(open, Ordering::AcqRel);
    }

    /// A connection closed.
    pub fn closed(&self) {
        let open = self.open.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        if self.is_over(open) {
            self.over.notify_one();
        }
    }

    fn is_over(&self, open: usize) -> bool {
        let peak = self.peak.load(Ordering::Acquire);
        peak >= BURST_MIN && open <= peak / OVER_AT_DIVISOR
    }

    /// Runs for the server's life: each time a burst is over (and stays over for [`SETTLE`]),
    /// calls `release` once and starts counting the next burst from what is open then.
    pub async fn run(self: Arc<Self>, release: impl Fn() -> bool) {
        loop {
            self.over.notified().await;
            tokio::time::sleep(SETTLE).await;
            let open = self.open.load(Ordering::Acquire);
            if !self.is_over(open) {
                continue;
            }
            let started = std::time::Instant::now();
            let released = release();
            self.peak.store(open, Ordering::Release);
            tracing::debug!(
                released,
                took_us = started.elapsed().as_micros() as u64,
                "returned freed memory after a burst of connections"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[tokio::test(start_paused = true)]
    async fn memory_is_released_once_per_burst_after_it_settles() {
        let watch = BurstWatch::new();
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let runner = tokio::spawn(watch.clone().run(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            true
        }));
        let settle = || tokio::time::sleep(SETTLE + Duration::from_millis(1));

        // Fewer than BURST_MIN connections come and go: no release.
        for _ in 0..BURST_MIN - 1 {
            watch.opened();
        }
        for _ in 0..BURST_MIN - 1 {
            watch.closed();
        }
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 0, "not a burst");

        // A burst of 400 falls to 101 (above a quarter): not over yet.
        watch.peak.store(0, Ordering::SeqCst);
        for _ in 0..400 {
            watch.opened();
        }
        for _ in 0..299 {
            watch.closed();
        }
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 0, "still a third open");

        // Down to 100: over, released once after it settled, however many closes follow.
        watch.closed();
        assert_eq!(calls.load(Ordering::SeqCst), 0, "not before it settles");
        for _ in 0..100 {
            watch.closed();
        }
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one release per burst");

        // A burst that falls and rises again within the settle time is not over.
        for _ in 0..200 {
            watch.opened();
        }
        for _ in 0..200 {
            watch.closed();
        }
        for _ in 0..200 {
            watch.opened();
        }
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "it came back");
        for _ in 0..200 {
            watch.closed();
        }
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the second burst");
        runner.abort();
    }
}
