//! Waiting between attempts — on kernel timers and events only. The loop sleeps until its next
//! deadline and wakes early for: shutdown, a changed PAT, a wall-clock step (the current token is
//! then checked against Label Studio, whose clock may have moved too), a report that the token was
//! rejected, and — only while no valid token is held during an outage — Label Studio answering
//! `/health` again.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{timing::Anchor, LoopState, Refresher, Timing};
use crate::{
    clock::{Mono, Wake},
    exchange::{Exchange, ExchangeError},
    health::Held,
};

/// Between two checks of the current token after clock steps or rejection reports: a clock that
/// keeps stepping, or a consumer that keeps reporting, costs Label Studio at most one cheap GET
/// per this interval.
const CHECK_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// A changed PAT is exchanged at once, but a source that flaps cannot make us exchange more often.
const EXCHANGE_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How often `/health` is asked while Label Studio is down and nothing valid is published:
/// recovery within a few seconds of its return, at one cheap request per interval.
pub const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// What the loop waits for next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    /// The current token's scheduled refresh (re-planned if Label Studio's clock is re-measured).
    Refresh(Mono),
    /// A retry after a failure; `probe` asks `/health` meanwhile (outage, nothing valid held).
    Retry {
        /// When.
        at: Mono,
        /// Probe for Label Studio's return.
        probe: bool,
    },
}

impl Next {
    fn at(self) -> Mono {
        match self {
            Next::Refresh(at) | Next::Retry { at, .. } => at,
        }
    }
}

/// Why the wait ended (for the log).
enum Woke {
    Due,
    Shutdown,
    PatChanged,
    Stepped,
    Rejected,
    Back,
    Lost,
}

/// The result of checking the current token.
enum Check {
    /// Label Studio refuses it: refresh now.
    Rejected,
    /// Accepted (timing possibly re-anchored), or no conclusion: keep going.
    Keep,
}

impl<E: Exchange> Refresher<E> {
    /// Waits for the PAT source's first answer (a Secret watch may still be syncing). No deadline:
    /// the loop is idle, not late. False on shutdown.
    pub(super) async fn wait_for_source(&mut self, shutdown: &CancellationToken) -> bool {
        self.health.expect_by(None);
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = self.pat.ready() => true,
        }
    }

    /// Sleeps until `next` is due or something worth acting on happens. False on shutdown.
    pub(super) async fn wait(
        &mut self,
        mut next: Next,
        st: &mut LoopState,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut check_due: Option<Mono> = None;
        loop {
            // A rotation due before the refresh wakes the loop for an attempt: rotation needs a
            // fresh access token, and runs right after it.
            let due = st.rotate_at.map_or(next.at(), |r| r.min(next.at()));
            let wake_at = check_due.map_or(due, |c| c.min(due));
            self.expect_back_at(wake_at);
            let in_secs = due.since(self.clock.now()).as_secs_f64();
            self.metrics
                .next_refresh_timestamp_seconds
                .set(self.ls_wall_now() + in_secs);
            let probe = matches!(next, Next::Retry { probe: true, .. });
            let rejections = self.rejections.clone();
            let leadership = self.leadership.clone();
            let woke = tokio::select! {
                _ = shutdown.cancelled() => Woke::Shutdown,
                w = self.clock.sleep_until(wake_at) => match w {
                    Wake::Deadline if check_due.is_some_and(|c| c <= self.clock.now()) => Woke::Stepped,
                    Wake::Deadline => Woke::Due,
                    Wake::WallClockStepped => Woke::Stepped,
                },
                _ = self.pat.changed() => Woke::PatChanged,
                _ = rejections.reported() => Woke::Rejected,
                _ = wait_until_back(&self.exchange, &mut st.seen_down), if probe => Woke::Back,
                _ = leadership.lost() => Woke::Lost,
            };
            match woke {
                Woke::Shutdown => return false,
                Woke::Due => return true,
                Woke::Lost => {
                    tracing::warn!("this replica no longer holds the Lease: standing by");
                    return true;
                }
                Woke::PatChanged => {
                    tracing::info!(source = %self.pat.describe, "PAT source changed; refreshing now");
                    self.space_exchanges(st).await;
                    return true;
                }
                Woke::Back => {
                    tracing::info!("Label Studio answers /health again; refreshing now");
                    // The next shortcut needs a new failed probe: a server that answers /health
                    // but still fails refreshes is then retried on the backoff, not every probe.
                    st.seen_down = false;
                    return true;
                }
                Woke::Stepped | Woke::Rejected => {
                    let now = self.clock.now();
                    if let Some(last) = st.last_check.filter(|l| now.since(*l) < CHECK_MIN_INTERVAL)
                    {
                        // Coalesce: one check at the end of the interval.
                        check_due = Some(last.after(CHECK_MIN_INTERVAL));
                        continue;
                    }
                    check_due = None;
                    st.last_check = Some(now);
                    let why = if matches!(woke, Woke::Stepped) {
                        "the wall clock was stepped"
                    } else {
                        "a consumer reported the token rejected"
                    };
                    match self.check_current(why).await {
                        Check::Rejected => return true,
                        Check::Keep => {
                            if let (Next::Refresh(_), Some(p)) = (next, &self.current) {
                                if let Timing::Jwt(t) = p.timing {
                                    next =
                                        Next::Refresh(t.refresh_at(&self.policy, self.clock.now()));
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Keeps exchanges at least [`EXCHANGE_MIN_INTERVAL`] apart.
    async fn space_exchanges(&mut self, st: &mut LoopState) {
        let now = self.clock.now();
        if let Some(last) = st.last_exchange {
            let ready = last.after(EXCHANGE_MIN_INTERVAL);
            if ready > now {
                self.clock.sleep_until(ready).await;
            }
        }
        st.last_exchange = Some(self.clock.now());
    }

    /// Asks Label Studio whether the current token still works. Its `Date` header re-measures
    /// Label Studio's clock: if it moved against ours (it shares a stepped clock, or NTP corrected
    /// one of them), the token's expiry and schedule are re-anchored.
    async fn check_current(&mut self, why: &str) -> Check {
        let Some(current) = self.current.clone() else {
            return Check::Keep;
        };
        if let Timing::Jwt(t) = current.timing {
            if t.expires() <= self.clock.now() {
                // Already expired: a retry is on its way anyway.
                return Check::Keep;
            }
        }
        match self.exchange.validate(&current.set.auth).await {
            Ok(accepted) => {
                // A `Date` beyond belief (year 9999, days off ours) re-times nothing.
                let wall = self.clock.wall();
                let date = accepted
                    .server_date
                    .filter(|d| super::timing::believable(*d, wall));
                if let (Timing::Jwt(t), Some(date)) = (current.timing, date) {
                    let now = self.clock.now();
                    let predicted = t.anchor.ls_now(now);
                    // `Date` is whole seconds, rounded down: it may trail by up to a second.
                    if (date - predicted).abs() > super::SKEW_TOLERANCE_SECS + 1.0 {
                        let (anchor, used, raw) =
                            Anchor::measure(now, self.clock.wall(), Some(date));
                        self.note_offset(used, raw);
                        self.reanchor(t, anchor);
                        tracing::warn!("{why}: Label Studio's clock moved against ours; re-timed the current token");
                    } else {
                        // Our offset may have changed even if theirs did not (our own clock stepped).
                        let (_, used, raw) =
                            Anchor::measure(now, self.clock.wall(), Some(predicted.floor()));
                        self.note_offset(used, raw);
                        tracing::info!("{why}: the current token is still accepted");
                    }
                } else {
                    tracing::info!("{why}: the current token is still accepted");
                }
                Check::Keep
            }
            Err(e) if rejected(&e) => {
                tracing::warn!("{why}: Label Studio rejects the current token; refreshing now");
                self.health.invalidate_all();
                Check::Rejected
            }
            Err(e) => {
                tracing::info!(
                    "{why}: could not check the current token ({e}); keeping the schedule"
                );
                Check::Keep
            }
        }
    }

    fn reanchor(&mut self, t: super::JwtTiming, anchor: Anchor) {
        let t = super::JwtTiming { anchor, ..t };
        if let Some(p) = &mut self.current {
            p.timing = Timing::Jwt(t);
        }
        for i in 0..self.sinks.len() {
            self.health.set_held(
                i,
                Held {
                    expires: Some(t.expires()),
                    valid: true,
                },
            );
        }
    }
}

/// 401/403 on validation: the token itself is refused.
fn rejected(e: &ExchangeError) -> bool {
    match e {
        ExchangeError::JwtDisabled { .. } | ExchangeError::LegacyDisabled => true,
        ExchangeError::Http { status, .. } => matches!(status, 401 | 403),
        _ => false,
    }
}

/// Resolves when `/health` answers after having failed at least once during this failure streak
/// (`seen_down`, kept by the loop across waits). A server whose `/health` never failed is not
/// "back" (its refresh endpoint failing is not an outage we can shortcut), so a failing-but-up
/// server is never probed into a tight retry loop.
///
/// The first probe goes out at once (the attempt has just failed): if Label Studio is down, that
/// is known before it returns, however soon — otherwise a return within the first probe interval
/// of a long wait would go unnoticed until the backoff ran out (up to `--backoff-max`).
async fn wait_until_back<E: Exchange>(exchange: &E, seen_down: &mut bool) {
    loop {
        match exchange.health().await {
            Ok(()) if *seen_down => return,
            Ok(()) => {}
            Err(_) => *seen_down = true,
        }
        tokio::time::sleep(HEALTH_PROBE_INTERVAL).await;
    }
}
