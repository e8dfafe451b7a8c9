//! PAT rotation for token resources (`spec.rotatePatEvery`, `spec.rotatePatBeforeExpiry`): the
//! controller's side of [`crate::rotate`]. One [`Rotator`] per token resource, kept in its memory,
//! writing back only where [`guard::pat_write_back`] allows (the resource's own PAT Secret key),
//! driven by the reconcile: after each successful exchange (the fresh access token authenticates
//! the rotate call; the controller runs one reconcile of a resource at a time, so never during
//! another exchange of it), and after an exchange refused as blacklisted (a lost rotation of ours
//! is repaired). What the rotator reports comes back as notes, which the reconcile turns into
//! Events and the `PatRotation` status condition.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tracing::Instrument;

use super::{guard::WriteBack, reconcile::TokenKey};
use crate::{
    exchange::HttpExchange,
    leader::Leadership,
    metrics::Metrics,
    notify::Notifier,
    reason::Reason,
    rotate::{Access, Outcome, RotationPolicy, Rotator, SecretStore, MIN_ROTATE_EVERY},
    secret::Secret,
};

/// Longest single wait for a rotation: `Duration` must not see the 200-year lifetime of an
/// open-source PAT as one number, and a resource is reconciled at every refresh anyway.
pub const MAX_WAIT_SECS: f64 = 365.0 * 86_400.0;

/// Condition type of the rotation's outcome.
pub const CONDITION: &str = "PatRotation";

/// What a rotator said (a fixed Event reason and note; never a token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note {
    /// Warning (else Normal).
    pub warning: bool,
    /// PascalCase Event reason (`PatRotated`, `PatRotationRecovered`, `PatRotationRefused`,
    /// `PatRotationFailed`, `PatWriteBackFailed`).
    pub reason: &'static str,
    /// Fixed text.
    pub note: &'static str,
}

impl Note {
    /// The `PatRotation` condition's reason (closed set, snake_case).
    pub fn condition_reason(&self) -> &'static str {
        match self.reason {
            "PatRotated" => "rotated",
            "PatRotationRecovered" => "recovered",
            "PatRotationRefused" => "refused",
            "PatWriteBackFailed" => "write_back_failed",
            _ => "failed",
        }
    }
}

/// Collects the rotator's notes for the reconcile.
#[derive(Default)]
struct Notes(Mutex<Vec<Note>>);

impl Notes {
    fn drain(&self) -> Vec<Note> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Notifier for Notes {
    fn warning(&self, _: Reason, _: &'static str) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn recovered(&self, _: &'static str) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn rotation(
        &self,
        warning: bool,
        reason: &'static str,
        note: &'static str,
    ) -> BoxFuture<'_, ()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(Note {
            warning,
            reason,
            note,
        });
        Box::pin(async {})
    }
}

/// What a rotator was built for: a change of any part builds a new one (a new connection URL
/// must not keep the old client; a new PAT Secret must not keep the old store).
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The connection's name and resourceVersion (the HTTP client is built from it).
    pub connection: (String, String),
    /// Where the new PAT goes.
    pub write_back: WriteBack,
    /// When PATs are due.
    pub policy: RotationPolicy,
}

/// A resource's rotator and where its notes go.
pub struct Slot {
    identity: Identity,
    rotator: Rotator<HttpExchange>,
    notes: Arc<Notes>,
}

/// A slot, shared between the memory and the reconcile using it (async-locked: the rotator is
/// used across awaits; reconciles of one resource never overlap, so it is never contended).
pub type SlotRef = Arc<tokio::sync::Mutex<Slot>>;

/// What the controller keeps per resource for rotation.
#[derive(Default)]
pub struct RotationMemory {
    slot: Option<SlotRef>,
    /// A PAT a rotation of ours produced, and the fingerprint of the PAT it replaced: used while
    /// the PAT Secret (as cached) still holds the replaced one.
    pat_override: Option<(Secret, u64)>,
    /// The access token last published (repairs a lost rotation).
    pub last_access: Option<Secret>,
    /// Refresh at the next reconcile, whatever the schedule (a new PAT is to be proven and used).
    pub refresh_pending: bool,
    /// When a new PAT was last written back (our clock), for the status.
    pub rotated_at: Option<i64>,
    /// The last note (the status condition says it).
    pub last_note: Option<Note>,
}

impl RotationMemory {
    /// The rotator for `identity`, built by `build` when there is none or it was built for
    /// something else.
    pub fn slot(
        &mut self,
        identity: &Identity,
        build: impl FnOnce() -> Rotator<HttpExchange>,
    ) -> SlotRef {
        if let Some(s) = &self.slot {
            if s.try_lock()
                .map(|g| g.identity == *identity)
                .unwrap_or(true)
            {
                return s.clone();
            }
        }
        let notes = Arc::new(Notes::default());
        let rotator = build().with_notifier(notes.clone());
        let s = Arc::new(tokio::sync::Mutex::new(Slot {
            identity: identity.clone(),
            rotator,
            notes,
        }));
        self.slot = Some(s.clone());
        s
    }

    /// Rotation is off (or has nowhere to write): the rotator and a new PAT held for it go.
    pub fn clear(&mut self) {
        self.slot = None;
        self.pat_override = None;
        self.refresh_pending = false;
    }

    /// The PAT to use, given the one the PAT Secret holds: ours while the Secret still shows the
    /// PAT our rotation replaced; the Secret's as soon as it moved on (our write-back arrived, or
    /// a person's change, which wins).
    pub fn pat_to_use(&mut self, from_secret: Secret) -> Secret {
        match &self.pat_override {
            Some((new, replaced)) if from_secret.fingerprint() == *replaced => new.clone(),
            Some(_) => {
                self.pat_override = None;
                from_secret
            }
            None => from_secret,
        }
    }

    /// Puts a new PAT from `outcome` in use instead of `old` (the PAT just used); Some: the PAT to
    /// refresh with now.
    pub fn adopt(&mut self, outcome: Outcome, old: &Secret, wall: f64) -> Option<Secret> {
        let (new, written) = match outcome {
            Outcome::Rotated(n) | Outcome::Recovered(n) => (n, true),
            Outcome::Unpersisted(n) => (n, false),
            Outcome::Unchanged => return None,
        };
        if written {
            self.rotated_at = Some(wall as i64);
        }
        if new == *old {
            return None;
        }
        let replaced = match &self.pat_override {
            // A rotation of a PAT we rotated to: the Secret may still show the one before.
            Some((current, replaced)) if current == old => *replaced,
            _ => old.fingerprint(),
        };
        self.pat_override = Some((new.clone(), replaced));
        self.refresh_pending = true;
        Some(new)
    }

    /// Keeps the last of `notes` for the status.
    pub fn note(&mut self, notes: &[Note]) {
        if let Some(n) = notes.last() {
            self.last_note = Some(*n);
        }
    }
}

/// Builds a rotator writing back to `write_back` only.
pub fn build(
    client: kube::Client,
    write_back: &WriteBack,
    exchange: HttpExchange,
    policy: RotationPolicy,
    metrics: Arc<Metrics>,
    leadership: Leadership,
) -> Rotator<HttpExchange> {
    let store = SecretStore::new(
        client,
        &write_back.namespace,
        &write_back.name,
        &write_back.key,
    );
    Rotator::new(
        Arc::new(exchange),
        Box::new(store),
        policy,
        metrics,
        leadership,
    )
}

fn span(key: &TokenKey) -> tracing::Span {
    tracing::info_span!("pat_rotation", namespace = %key.namespace, name = %key.name)
}

/// Seconds (Label Studio's clock) until `pat` is due; 0 when due; None when never.
pub async fn due_in(slot: &SlotRef, pat: &Secret, ls_now: f64) -> Option<f64> {
    slot.lock().await.rotator.due_in(pat, ls_now)
}

/// How long the reconcile may sleep before the next rotation of `pat` (never shorter than the
/// minimum period, whatever the claims: a PAT that stays due costs at most one refresh per it).
pub fn wait_for(due_in: Option<f64>) -> Option<std::time::Duration> {
    due_in.map(|s| {
        let s = if s.is_nan() { 0.0 } else { s };
        std::time::Duration::from_secs_f64(s.clamp(MIN_ROTATE_EVERY.as_secs_f64(), MAX_WAIT_SECS))
    })
}

/// After a successful exchange: rotate `pat` if due (or write back a new PAT still held). Returns
/// the outcome and the notes.
pub async fn after_refresh(
    slot: &SlotRef,
    key: &TokenKey,
    access: &Access,
    pat: &Secret,
    ls_now: f64,
    wall: f64,
) -> (Outcome, Vec<Note>) {
    let mut g = slot.lock().await;
    let outcome = g
        .rotator
        .rotate(access, pat, ls_now, wall)
        .instrument(span(key))
        .await;
    let notes = g.notes.drain();
    (outcome, notes)
}

/// After an exchange refused as blacklisted: repair a lost rotation of ours with one of
/// `candidates` (access tokens of the PAT's user, newest first).
pub async fn recover(
    slot: &SlotRef,
    key: &TokenKey,
    pat: &Secret,
    candidates: Vec<Secret>,
    ls_now: f64,
    wall: f64,
) -> (Option<Outcome>, Vec<Note>) {
    let mut g = slot.lock().await;
    let outcome = g
        .rotator
        .recover(pat, candidates, ls_now, wall)
        .instrument(span(key))
        .await;
    let notes = g.notes.drain();
    (outcome, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Secret {
        Secret::new(v)
    }

    #[test]
    fn a_new_pat_is_used_until_the_secret_moves_on() {
        let mut m = RotationMemory::default();
        let (p1, p2, p3) = (s("p1"), s("p2"), s("p3"));
        assert_eq!(m.pat_to_use(p1.clone()), p1);
        assert_eq!(m.adopt(Outcome::Unchanged, &p1, 10.0), None);
        assert_eq!(m.rotated_at, None);
        assert_eq!(
            m.adopt(Outcome::Rotated(p2.clone()), &p1, 10.0),
            Some(p2.clone())
        );
        assert!(m.refresh_pending);
        assert_eq!(m.rotated_at, Some(10));
        // The cache still shows p1: p2 is used.
        assert_eq!(m.pat_to_use(p1.clone()), p2);
        // Rotated again before the watch delivered p2: the Secret's p1 still maps to the newest.
        assert_eq!(
            m.adopt(Outcome::Unpersisted(p3.clone()), &p2, 20.0),
            Some(p3.clone())
        );
        assert_eq!(
            m.rotated_at,
            Some(10),
            "not written back: not a rotation in the status"
        );
        assert_eq!(m.pat_to_use(p1.clone()), p3);
        // The Secret moved on (our write-back, or a person's PAT): it wins, for good.
        assert_eq!(m.pat_to_use(p2.clone()), p2);
        assert_eq!(m.pat_to_use(p1.clone()), p1);
        // Turning rotation off forgets a held PAT.
        assert!(m.adopt(Outcome::Recovered(p3.clone()), &p1, 30.0).is_some());
        // The same PAT back (a write-back retried) is nothing new to refresh with.
        assert_eq!(m.adopt(Outcome::Rotated(p3.clone()), &p3, 31.0), None);
        assert_eq!(m.rotated_at, Some(31));
        m.clear();
        assert_eq!(m.pat_to_use(p1.clone()), p1);
        assert!(!m.refresh_pending);
    }

    #[test]
    fn notes_map_to_a_closed_set_of_condition_reasons() {
        let n = |reason| Note {
            warning: false,
            reason,
            note: "",
        };
        for (r, want) in [
            ("PatRotated", "rotated"),
            ("PatRotationRecovered", "recovered"),
            ("PatRotationRefused", "refused"),
            ("PatWriteBackFailed", "write_back_failed"),
            ("PatRotationFailed", "failed"),
        ] {
            assert_eq!(n(r).condition_reason(), want);
        }
        let mut m = RotationMemory::default();
        m.note(&[]);
        assert_eq!(m.last_note, None);
        m.note(&[n("PatRotationFailed"), n("PatRotated")]);
        assert_eq!(m.last_note.map(|n| n.reason), Some("PatRotated"));
    }

    #[test]
    fn rotation_waits_are_bounded() {
        assert_eq!(wait_for(None), None);
        assert_eq!(wait_for(Some(0.0)), Some(MIN_ROTATE_EVERY));
        assert_eq!(wait_for(Some(f64::NAN)), Some(MIN_ROTATE_EVERY));
        assert_eq!(
            wait_for(Some(1e300)),
            Some(std::time::Duration::from_secs_f64(MAX_WAIT_SECS))
        );
        assert_eq!(
            wait_for(Some(60.0)),
            Some(std::time::Duration::from_secs(60))
        );
    }
}
