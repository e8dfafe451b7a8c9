//! Where noteworthy transitions go: a Kubernetes Event recorder in clusters
//! ([`crate::cluster::EventNotifier`]), nowhere otherwise. Notes must be secret-free and short:
//! they are built from a [`Reason`] and a fixed summary, never from server text or URLs.

use futures::future::BoxFuture;

use crate::reason::Reason;

/// Receives failures and recoveries.
pub trait Notifier: Send + Sync {
    /// Something went wrong (the failure reason changed).
    fn warning(&self, reason: Reason, note: &'static str) -> BoxFuture<'_, ()>;
    /// Recovered after a failure.
    fn recovered(&self, note: &'static str) -> BoxFuture<'_, ()>;
    /// A PAT rotation ended: `reason` is a fixed PascalCase Event reason (`PatRotated`, …).
    fn rotation(
        &self,
        warning: bool,
        reason: &'static str,
        note: &'static str,
    ) -> BoxFuture<'_, ()> {
        let _ = (warning, reason, note);
        Box::pin(async {})
    }
}

/// A notifier that does nothing.
pub struct NoNotifier;

impl Notifier for NoNotifier {
    fn warning(&self, _: Reason, _: &'static str) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn recovered(&self, _: &'static str) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
