//! What `/livez` and `/readyz` report. The refresher writes, the admin server reads.
//!
//! Ready means: not draining, and every sink holds a token that is valid right now (an access
//! token before its expiry, or a legacy token the API last accepted). Expiry is kept on the
//! suspend-aware monotonic clock, anchored on when the token was received and corrected for clock
//! skew with Label Studio, so a wrong wall clock cannot make readiness lie.
//!
//! A standby (leader election, another replica writes) is ready when its PAT source holds a PAT:
//! it could take over at once. It cannot vouch for the token another replica published; that is
//! the leader's readiness, and the `ls_token_refresher_leader` gauge says which replica leads.
//!
//! Alive means the refresh loop has not missed its own deadline: before every sleep or attempt the
//! loop says by when it will be back ([`Health::expect_by`]); no heartbeat ticks in between.

use std::sync::{Arc, Mutex};

use crate::{
    clock::{Clock, Mono},
    reason::Reason,
};

/// What one sink holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Held {
    /// When the token stops working, on the monotonic clock; None for a legacy token.
    pub expires: Option<Mono>,
    /// False once the API rejected the held token.
    pub valid: bool,
}

struct Slot {
    kind: &'static str,
    held: Option<Held>,
}

struct Inner {
    slots: Vec<Slot>,
    draining: bool,
    loop_deadline: Option<Mono>,
    problem: Option<(Reason, &'static str)>,
    /// Some while standing by (another replica leads): whether the PAT source holds a PAT.
    standby: Option<bool>,
}

/// Shared health state (cheap to clone).
#[derive(Clone)]
pub struct Health {
    inner: Arc<Mutex<Inner>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("ready", &self.ready())
            .finish()
    }
}

impl Health {
    /// Health for sinks of the given kinds (in publish order).
    pub fn new(clock: Arc<dyn Clock>, kinds: &[&'static str]) -> Self {
        Health {
            inner: Arc::new(Mutex::new(Inner {
                slots: kinds
                    .iter()
                    .map(|&kind| Slot { kind, held: None })
                    .collect(),
                draining: false,
                loop_deadline: None,
                problem: None,
                standby: None,
            })),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The clock readiness is judged by.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Records that sink `index` now holds `held`.
    pub fn set_held(&self, index: usize, held: Held) {
        if let Some(s) = self.lock().slots.get_mut(index) {
            s.held = Some(held);
        }
    }

    /// Marks every held token invalid (the API rejected it).
    pub fn invalidate_all(&self) {
        for s in self.lock().slots.iter_mut() {
            if let Some(h) = &mut s.held {
                h.valid = false;
            }
        }
    }

    /// The earliest expiry across sinks that hold a valid access token.
    pub fn earliest_expiry(&self) -> Option<Mono> {
        self.lock()
            .slots
            .iter()
            .filter_map(|s| s.held.filter(|h| h.valid).and_then(|h| h.expires))
            .min()
    }

    /// What the sink of `kind` holds, if that token still works now.
    pub fn held_valid(&self, kind: &str) -> Option<Held> {
        let now = self.clock.now();
        self.lock()
            .slots
            .iter()
            .find(|s| s.kind == kind)
            .and_then(|s| s.held)
            .filter(|h| h.valid && h.expires.is_none_or(|e| e > now))
    }

    /// True when some sink holds a token that still works (so consumers are served).
    pub fn any_valid(&self) -> bool {
        let now = self.clock.now();
        self.lock().slots.iter().any(|s| {
            s.held
                .is_some_and(|h| h.valid && h.expires.is_none_or(|e| e > now))
        })
    }

    /// The latest problem, if the last attempt failed.
    pub fn problem(&self) -> Option<(Reason, &'static str)> {
        self.lock().problem
    }

    /// Records the latest problem (None after a success).
    pub fn set_problem(&self, problem: Option<(Reason, &'static str)>) {
        self.lock().problem = problem;
    }

    /// Standing by (Some: whether the PAT source holds a PAT) or leading (None).
    pub fn set_standby(&self, pat_ready: Option<bool>) {
        self.lock().standby = pat_ready;
    }

    /// Starts draining: readiness goes false.
    pub fn set_draining(&self) {
        self.lock().draining = true;
    }

    /// The loop promises to be back by `deadline` (None: it waits for an event with no deadline).
    pub fn expect_by(&self, deadline: Option<Mono>) {
        self.lock().loop_deadline = deadline;
    }

    /// Liveness: Ok, or why not.
    pub fn live(&self) -> Result<(), String> {
        let deadline = self.lock().loop_deadline;
        match deadline {
            Some(d) if self.clock.now() > d => Err(format!(
                "the refresh loop missed its deadline by {}s",
                self.clock.now().since(d).as_secs()
            )),
            _ => Ok(()),
        }
    }

    /// Readiness now: Ok, or a one-line reason (a reason code and a fixed summary, no details).
    pub fn ready(&self) -> Result<(), String> {
        let now = self.clock.now();
        let g = self.lock();
        if g.draining {
            return Err("draining: shutting down".into());
        }
        match g.standby {
            Some(true) => return Ok(()),
            Some(false) => return Err("standby: waiting for the PAT source".into()),
            None => {}
        }
        let why = |base: String| match g.problem {
            Some((r, summary)) => format!("{base}; last error: {r} ({summary})"),
            None => base,
        };
        for s in &g.slots {
            match s.held {
                None => {
                    return Err(why(format!(
                        "no token published to the {} sink yet",
                        s.kind
                    )))
                }
                Some(h) if !h.valid => {
                    return Err(why(format!(
                        "the token in the {} sink was rejected by the API",
                        s.kind
                    )))
                }
                Some(Held {
                    expires: Some(exp), ..
                }) if exp <= now => {
                    return Err(why(format!("the token in the {} sink has expired", s.kind)))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// True when [`Health::ready`] is Ok.
    pub fn is_ready(&self) -> bool {
        self.ready().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::manual::ManualClock;

    fn at(secs: u64) -> Mono {
        Mono(Duration::from_secs(secs))
    }

    #[tokio::test(start_paused = true)]
    async fn ready_only_when_every_sink_holds_a_valid_token() {
        let clock = Arc::new(ManualClock::new(1e9));
        let h = Health::new(clock.clone(), &["file", "secret"]);
        assert!(h.ready().unwrap_err().contains("file"));
        h.set_held(
            0,
            Held {
                expires: Some(at(100)),
                valid: true,
            },
        );
        assert!(h.ready().unwrap_err().contains("secret"));
        h.set_held(
            1,
            Held {
                expires: Some(at(90)),
                valid: true,
            },
        );
        tokio::time::sleep(Duration::from_secs(49)).await;
        assert!(h.is_ready());
        assert_eq!(h.earliest_expiry(), Some(at(90)));
        h.set_problem(Some((Reason::RevokedPat, Reason::RevokedPat.summary())));
        tokio::time::sleep(Duration::from_secs(45)).await;
        let e = h.ready().unwrap_err();
        assert!(e.contains("expired") && e.contains("revoked_pat"), "{e}");
        assert!(h.any_valid(), "the file sink's token still works");
        h.set_draining();
        assert!(h.ready().unwrap_err().contains("draining"));
    }

    #[tokio::test(start_paused = true)]
    async fn legacy_tokens_do_not_expire_but_can_be_invalidated() {
        let h = Health::new(Arc::new(ManualClock::new(0.0)), &["file"]);
        h.set_held(
            0,
            Held {
                expires: None,
                valid: true,
            },
        );
        tokio::time::sleep(Duration::from_secs(1_000_000)).await;
        assert!(h.is_ready());
        h.invalidate_all();
        assert!(h.ready().unwrap_err().contains("rejected"));
        assert!(!h.any_valid());
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_follows_the_loops_own_deadline() {
        let clock = Arc::new(ManualClock::new(0.0));
        let h = Health::new(clock.clone(), &["file"]);
        assert!(h.live().is_ok(), "no deadline: waiting for an event");
        h.expect_by(Some(clock.now().after(Duration::from_secs(300))));
        tokio::time::sleep(Duration::from_secs(299)).await;
        assert!(h.live().is_ok());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(h.live().unwrap_err().contains("missed its deadline by 4s"));
    }
}
