//! Where the PAT comes from: a value, a file (re-read on change) or a watched Kubernetes Secret.
//! Every source publishes its current state on a `watch` channel; the refresher reads the latest
//! value before each exchange and wakes up when it changes.

pub mod file;
pub mod secret;

use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::secret::Secret;

/// What a source currently knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatState {
    /// Not read yet (e.g. the Secret watch has not synced).
    Pending,
    /// The current PAT.
    Ready(Secret),
    /// The source cannot give a PAT right now (e.g. the Secret does not exist yet); a one-line,
    /// secret-free explanation. The refresher waits for it.
    Unavailable(String),
    /// The source has something, but it is not usable (empty, not text, unreadable file): a
    /// configuration error at start-up, reported and waited out later.
    Invalid(String),
}

/// The refresher's end of a source.
#[derive(Clone)]
pub struct PatHandle {
    rx: watch::Receiver<PatState>,
    reread: Arc<Notify>,
    /// Short description for logs and `check` (`value`, `file:/path`, `secret:ns/name[key]`).
    pub describe: String,
    /// Metric label of the source kind.
    pub kind: &'static str,
}

/// The source's end: publishes states and listens for re-read requests.
pub struct PatPublisher {
    tx: watch::Sender<PatState>,
    reread: Arc<Notify>,
}

/// Creates a connected publisher/handle pair.
pub fn channel(kind: &'static str, describe: String) -> (PatPublisher, PatHandle) {
    let (tx, rx) = watch::channel(PatState::Pending);
    let reread = Arc::new(Notify::new());
    (
        PatPublisher {
            tx,
            reread: reread.clone(),
        },
        PatHandle {
            rx,
            reread,
            describe,
            kind,
        },
    )
}

impl PatPublisher {
    /// Publishes `state` if it differs from the current one; returns true if it changed.
    pub fn set(&self, state: PatState) -> bool {
        self.tx.send_if_modified(|cur| {
            if *cur == state {
                false
            } else {
                *cur = state;
                true
            }
        })
    }

    /// Resolves when the refresher asks for an immediate re-read.
    pub async fn reread_requested(&self) {
        self.reread.notified().await
    }

    /// True once every handle is gone (the refresher stopped).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl PatHandle {
    /// A source that never changes (`--pat`).
    pub fn fixed(pat: Secret) -> PatHandle {
        let (publisher, handle) = channel("value", "value (--pat / LS_PAT)".into());
        publisher.set(PatState::Ready(pat));
        // A closed watch channel still returns its last value, and `changed` then waits for ever.
        drop(publisher);
        handle
    }

    /// The latest state.
    pub fn current(&self) -> PatState {
        self.rx.borrow().clone()
    }

    /// Waits until the state changes (pending forever once the source has stopped).
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await
        }
    }

    /// Marks the current value as seen, so `changed` waits for a newer one.
    pub fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Waits until the source has produced something other than `Pending`.
    pub async fn ready(&mut self) -> PatState {
        loop {
            let cur = self.rx.borrow_and_update().clone();
            if cur != PatState::Pending {
                return cur;
            }
            self.changed().await;
        }
    }

    /// Asks the source to re-read now (the PAT was rejected: the user may have rotated it).
    pub fn request_reread(&self) {
        self.reread.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn handle_sees_changes_and_fixed_keeps_value() {
        let (p, mut h) = channel("file", "x".into());
        assert_eq!(h.current(), PatState::Pending);
        assert!(p.set(PatState::Ready(Secret::new("a"))));
        assert!(
            !p.set(PatState::Ready(Secret::new("a"))),
            "same value is not a change"
        );
        assert_eq!(h.ready().await, PatState::Ready(Secret::new("a")));
        p.set(PatState::Unavailable("gone".into()));
        h.changed().await;
        assert_eq!(h.current(), PatState::Unavailable("gone".into()));

        let f = PatHandle::fixed(Secret::new("v"));
        assert_eq!(f.current(), PatState::Ready(Secret::new("v")));
    }
}
