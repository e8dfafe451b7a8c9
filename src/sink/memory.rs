//! A sink that keeps the current token in memory for in-process readers (the auth proxy). It never
//! fails, and readers see every publish at once through a `watch` channel.

use futures::future::BoxFuture;
use tokio::sync::watch;

use super::{Sink, SinkError, TokenSet};

/// The in-memory sink.
pub struct MemorySink {
    tx: watch::Sender<Option<TokenSet>>,
}

impl MemorySink {
    /// Its kind: the name of its slot in [`crate::health::Health`].
    pub const KIND: &'static str = "proxy";

    /// A sink and the receiver its readers clone.
    pub fn new() -> (Self, watch::Receiver<Option<TokenSet>>) {
        let (tx, rx) = watch::channel(None);
        (MemorySink { tx }, rx)
    }
}

impl Sink for MemorySink {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn describe(&self) -> String {
        "the auth proxy (memory)".into()
    }

    fn preflight(&self) -> BoxFuture<'_, Result<String, SinkError>> {
        Box::pin(async { Ok("in memory".to_owned()) })
    }

    fn publish<'a>(&'a self, set: &'a TokenSet) -> BoxFuture<'a, Result<(), SinkError>> {
        self.tx.send_replace(Some(set.clone()));
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        secret::Secret,
        token::{Authorization, Scheme},
    };

    #[tokio::test]
    async fn readers_see_each_publish() {
        let (sink, mut rx) = MemorySink::new();
        assert!(rx.borrow().is_none());
        let set = TokenSet {
            auth: Authorization {
                scheme: Scheme::Bearer,
                token: Secret::new("t1"),
            },
            expires_at: Some(10),
            refreshed_at: 0,
        };
        sink.publish(&set).await.unwrap();
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().as_ref(), Some(&set));
    }
}
