//! What `/livez` and `/readyz` report. The refresher writes, the admin server reads.
//!
//! Ready means: not draining, and every configured sink holds a token that is valid right now
//! (unexpired JWT, or a legacy token the API last accepted). Alive means the refresh loop has
//! ticked recently (it wakes at least every [`crate::refresher::TICK`]).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::reason::Reason;

/// The loop is considered stuck when it has not ticked for this long (several ticks plus the longest
/// possible attempt: two requests at the default 10 s timeout and a publish).
pub const LIVENESS_STALL: Duration = Duration::from_secs(120);

/// What one sink holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Held {
    /// Token expiry (unix seconds); None for a legacy token.
    pub exp: Option<f64>,
    /// False once the API rejected the held (legacy) token.
    pub valid: bool,
}

#[derive(Debug)]
struct Inner {
    sinks: Vec<(&'static str, Option<Held>)>,
    draining: bool,
    heartbeat: Instant,
    last_problem: Option<(Reason, String)>,
}

/// Shared health state.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Mutex<Inner>>,
}

impl Health {
    /// Health for the given sink kinds (in publish order).
    pub fn new(sinks: &[&'static str]) -> Self {
        Health {
            inner: Arc::new(Mutex::new(Inner {
                sinks: sinks.iter().map(|s| (*s, None)).collect(),
                draining: false,
                heartbeat: Instant::now(),
                last_problem: None,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that sink `index` now holds `held`.
    pub fn set_held(&self, index: usize, held: Held) {
        if let Some(s) = self.lock().sinks.get_mut(index) {
            s.1 = Some(held);
        }
    }

    /// Marks every held token invalid (the API rejected it).
    pub fn invalidate_all(&self) {
        for s in self.lock().sinks.iter_mut() {
            if let Some(h) = &mut s.1 {
                h.valid = false;
            }
        }
    }

    /// The earliest expiry across sinks that hold a JWT.
    pub fn earliest_exp(&self) -> Option<f64> {
        self.lock()
            .sinks
            .iter()
            .filter_map(|s| s.1.and_then(|h| h.exp))
            .fold(None, |acc: Option<f64>, e| {
                Some(acc.map_or(e, |a| a.min(e)))
            })
    }

    /// Records the latest problem (cleared by a success).
    pub fn set_problem(&self, problem: Option<(Reason, String)>) {
        self.lock().last_problem = problem;
    }

    /// Starts draining: readiness goes false.
    pub fn set_draining(&self) {
        self.lock().draining = true;
    }

    /// The loop is alive.
    pub fn beat(&self) {
        self.lock().heartbeat = Instant::now();
    }

    /// Liveness: Ok, or why not.
    pub fn live(&self) -> Result<(), String> {
        let age = self.lock().heartbeat.elapsed();
        if age > LIVENESS_STALL {
            Err(format!(
                "refresh loop has not ticked for {}s",
                age.as_secs()
            ))
        } else {
            Ok(())
        }
    }

    /// Readiness at wall time `now` (unix seconds): Ok, or a one-line reason.
    pub fn ready(&self, now: f64) -> Result<(), String> {
        let g = self.lock();
        if g.draining {
            return Err("draining: shutting down".into());
        }
        let why = |base: String| match &g.last_problem {
            Some((r, msg)) => format!("{base}; last error ({r}): {msg}"),
            None => base,
        };
        for (kind, held) in &g.sinks {
            match held {
                None => return Err(why(format!("no token published to the {kind} sink yet"))),
                Some(h) if !h.valid => {
                    return Err(why(format!(
                        "the token in the {kind} sink was rejected by the API"
                    )))
                }
                Some(Held { exp: Some(exp), .. }) if *exp <= now => {
                    return Err(why(format!("the token in the {kind} sink has expired")))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// True when `ready(now)` is Ok.
    pub fn is_ready(&self, now: f64) -> bool {
        self.ready(now).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_sink_holds_a_valid_token() {
        let h = Health::new(&["file", "secret"]);
        assert!(h.ready(0.0).unwrap_err().contains("file"));
        h.set_held(
            0,
            Held {
                exp: Some(100.0),
                valid: true,
            },
        );
        assert!(h.ready(0.0).unwrap_err().contains("secret"));
        h.set_held(
            1,
            Held {
                exp: Some(90.0),
                valid: true,
            },
        );
        assert!(h.is_ready(50.0));
        assert_eq!(h.earliest_exp(), Some(90.0));
        h.set_problem(Some((Reason::RevokedPat, "Token is blacklisted".into())));
        let e = h.ready(95.0).unwrap_err();
        assert!(e.contains("expired") && e.contains("revoked_pat"), "{e}");
        h.set_draining();
        assert!(h.ready(0.0).unwrap_err().contains("draining"));
    }

    #[test]
    fn legacy_tokens_do_not_expire_but_can_be_invalidated() {
        let h = Health::new(&["file"]);
        h.set_held(
            0,
            Held {
                exp: None,
                valid: true,
            },
        );
        assert!(h.is_ready(1e12));
        h.invalidate_all();
        assert!(h.ready(0.0).unwrap_err().contains("rejected"));
        assert!(h.live().is_ok());
    }
}
