//! Where the PAT comes from: a value, a file (re-read on change) or a watched Kubernetes Secret.
//! Every source publishes its current state on a `watch` channel; the refresher reads the latest
//! value before each exchange and wakes up when it changes.

pub mod file;
pub mod secret;

use std::{path::PathBuf, sync::Arc};

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::{metrics::Metrics, secret::Secret, values::ObjectRef};

/// Where the PAT comes from (exactly one is required).
#[derive(Debug, Clone, clap::Args)]
pub struct PatSourceArgs {
    /// The one source.
    #[command(flatten)]
    pub from: PatFrom,

    /// Key of the PAT inside --pat-secret.
    #[arg(
        long,
        env = "LS_PAT_SECRET_KEY",
        default_value = "pat",
        value_name = "KEY"
    )]
    pub pat_secret_key: String,
}

/// The PAT source flags; clap enforces exactly one.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct PatFrom {
    /// The PAT (or legacy token) itself. Handy locally; prefer --pat-file or --pat-secret in clusters.
    #[arg(long, env = "LS_PAT", hide_env_values = true, value_name = "TOKEN")]
    pub pat: Option<Secret>,

    /// File holding the PAT; re-read when it changes (works with mounted Secrets).
    #[arg(long, env = "LS_PAT_FILE", value_name = "PATH")]
    pub pat_file: Option<PathBuf>,

    /// Kubernetes Secret holding the PAT, `[namespace/]name`; watched, changes apply at once.
    #[arg(long, env = "LS_PAT_SECRET", value_name = "[NS/]NAME")]
    pub pat_secret: Option<ObjectRef>,
}

impl PatSourceArgs {
    /// The Secret reference, when the PAT comes from the Kubernetes API.
    pub fn secret_ref(&self) -> Option<&ObjectRef> {
        self.from.pat_secret.as_ref()
    }

    /// Starts the source. `kube` (a client and the default namespace) is needed only for a
    /// Secret source; the caller connects when [`PatSourceArgs::secret_ref`] says so.
    pub fn start(
        &self,
        kube: Option<(kube::Client, &str)>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> PatHandle {
        if let Some(pat) = &self.from.pat {
            return PatHandle::fixed(pat.clone());
        }
        if let Some(path) = &self.from.pat_file {
            return file::spawn(path.clone(), metrics, shutdown);
        }
        match (self.secret_ref(), kube) {
            (Some(r), Some((client, default_ns))) => {
                let key_ref = secret::SecretKeyRef {
                    namespace: r.namespace_or(default_ns).to_owned(),
                    name: r.name.clone(),
                    key: self.pat_secret_key.clone(),
                };
                secret::spawn(client, key_ref, metrics, shutdown)
            }
            // Unreachable through the CLI (clap requires one source; callers connect for a Secret).
            _ => {
                let (publisher, handle) = channel("value", "no source".into());
                publisher.set(PatState::Invalid(Problem::new(
                    "no PAT source is configured",
                    "no PAT source configured: set --pat, --pat-file or --pat-secret",
                )));
                handle
            }
        }
    }
}

/// A source problem: a fixed summary (for `/readyz` and Events, which many can read) and a
/// one-line detail with paths and names (for the log). Never the PAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Fixed text.
    pub summary: &'static str,
    /// Detail for the log.
    pub detail: String,
}

impl Problem {
    /// A problem with a fixed `summary` and a `detail`.
    pub fn new(summary: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            summary,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// What a source currently knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatState {
    /// Not read yet (e.g. the Secret watch has not synced).
    Pending,
    /// The current PAT.
    Ready(Secret),
    /// The source cannot give a PAT right now (e.g. the Secret does not exist yet); a one-line,
    /// secret-free explanation. The refresher waits for it.
    Unavailable(Problem),
    /// The source has something, but it is not usable (empty, not text, unreadable file): a
    /// configuration error at start-up, reported and waited out later.
    Invalid(Problem),
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
        let gone = Problem::new("the PAT source is unavailable", "gone");
        p.set(PatState::Unavailable(gone.clone()));
        h.changed().await;
        assert_eq!(h.current(), PatState::Unavailable(gone));

        let f = PatHandle::fixed(Secret::new("v"));
        assert_eq!(f.current(), PatState::Ready(Secret::new("v")));
    }
}
