//! Where tokens go: a directory shared with the consumer (atomic kubelet-style swap), a Kubernetes
//! Secret (server-side apply) and, for the auth proxy, memory. Sinks are trait objects so tests
//! can inject failing ones.

pub mod file;
pub mod memory;
pub mod secret;

use std::{path::PathBuf, time::Duration};

use futures::future::BoxFuture;

pub use crate::token::TokenSet;
use crate::values::{Dur, FileMode, ObjectRef};

/// Where to publish (`run` and `once` need at least one; `check` tests those given).
#[derive(Debug, Clone, clap::Args)]
pub struct SinkArgs {
    /// Directory to publish `token`, `authorization`, `expires_at` and `token.json` into (atomic swap).
    #[arg(long, env = "LS_TOKEN_DIR", value_name = "DIR")]
    pub token_dir: Option<PathBuf>,

    /// Mode of the published files, octal (0640 lets a consumer in the same group read them).
    #[arg(
        long,
        env = "LS_FILE_MODE",
        default_value = "0600",
        value_name = "OCTAL"
    )]
    pub file_mode: FileMode,

    /// Numeric group id to own the published files (pair with fsGroup and --file-mode 0640).
    #[arg(long, env = "LS_FILE_GROUP", value_name = "GID")]
    pub file_group: Option<u32>,

    /// Kubernetes Secret to keep current, `[namespace/]name` (server-side apply of our keys only).
    #[arg(long, env = "LS_TARGET_SECRET", value_name = "[NS/]NAME")]
    pub target_secret: Option<ObjectRef>,

    /// Take ownership of target-Secret keys held by another field manager instead of reporting a conflict.
    #[arg(long, env = "LS_TARGET_SECRET_FORCE")]
    pub target_secret_force: bool,

    /// Extra lead time before expiry when a Secret sink is used: kubelet takes 60–90 s to update mounts.
    #[arg(
        long,
        env = "LS_PROPAGATION_MARGIN",
        default_value = "90s",
        value_name = "DURATION"
    )]
    pub propagation_margin: Dur,
}

impl SinkArgs {
    /// The lead the Secret sink needs (kubelet propagation), zero without one.
    pub fn propagation_margin(&self) -> Duration {
        if self.target_secret.is_some() {
            self.propagation_margin.0
        } else {
            Duration::ZERO
        }
    }

    /// True when no sink is configured.
    pub fn is_empty(&self) -> bool {
        self.token_dir.is_none() && self.target_secret.is_none()
    }
}

/// A publish (or preflight) failure: which sink, a fixed summary for `/readyz` and Events, and a
/// secret-free, one-line detail for the log.
#[derive(Debug, thiserror::Error)]
#[error("publishing to the {sink} sink failed: {message}")]
pub struct SinkError {
    /// Sink kind (`file`, `secret` or `proxy`), also the metric label.
    pub sink: &'static str,
    /// Fixed text (no paths, names or server text).
    pub summary: &'static str,
    /// What went wrong, in detail.
    pub message: String,
}

/// A place tokens are published to.
pub trait Sink: Send + Sync {
    /// `file`, `secret` or `proxy` (metric label).
    fn kind(&self) -> &'static str;
    /// Human description for logs.
    fn describe(&self) -> String;
    /// Proves, without publishing, that publishing can work (run at start-up and by `check`);
    /// Ok carries a one-line description of what was checked.
    fn preflight(&self) -> BoxFuture<'_, Result<String, SinkError>>;
    /// Publishes `set` as one consistent unit.
    fn publish<'a>(&'a self, set: &'a TokenSet) -> BoxFuture<'a, Result<(), SinkError>>;
    /// The token this sink holds now, read back (a restart's last resort for repairing a lost PAT
    /// rotation: the access token published before it). None when nothing is held or readable.
    fn read_back(&self) -> BoxFuture<'_, Option<crate::secret::Secret>> {
        Box::pin(async { None })
    }
    /// True when a failed preflight must stop start-up (a local misconfiguration); false when it
    /// may be transient (an API server away) and is only reported.
    fn preflight_is_fatal(&self) -> bool {
        true
    }
}
