//! Where tokens go: a directory shared with the consumer (atomic kubelet-style swap) and/or a
//! Kubernetes Secret (server-side apply). Sinks are trait objects so tests can inject failing ones.

pub mod file;
pub mod secret;

use futures::future::BoxFuture;

use crate::exchange::Authorization;

/// One consistent set of published values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSet {
    /// The token and its scheme.
    pub auth: Authorization,
    /// `exp` of the token (unix seconds); None for legacy tokens, which do not expire.
    pub expires_at: Option<i64>,
    /// When it was obtained (unix seconds).
    pub refreshed_at: i64,
}

impl TokenSet {
    /// `expires_at` as RFC 3339 UTC, or empty for legacy tokens.
    pub fn expires_at_rfc3339(&self) -> String {
        self.expires_at.map(rfc3339).unwrap_or_default()
    }
}

/// Formats unix seconds as RFC 3339 UTC (`2026-11-25T12:00:00Z`).
pub fn rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// A publish failure: which sink and a secret-free, one-line cause.
#[derive(Debug, thiserror::Error)]
#[error("publishing to the {sink} sink failed: {message}")]
pub struct SinkError {
    /// Sink kind (`file` or `secret`), also the metric label.
    pub sink: &'static str,
    /// What went wrong.
    pub message: String,
}

/// A place tokens are published to.
pub trait Sink: Send + Sync {
    /// `file` or `secret` (metric label).
    fn kind(&self) -> &'static str;
    /// Human description for logs.
    fn describe(&self) -> String;
    /// Publishes `set` as one consistent unit.
    fn publish<'a>(&'a self, set: &'a TokenSet) -> BoxFuture<'a, Result<(), SinkError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_072_000), "2025-11-25T12:00:00Z");
    }
}
