//! One client connection's life: closed when it has been idle for the header timeout, whatever
//! protocol it speaks, and drained on shutdown.
//!
//! hyper's HTTP/1 server closes a keep-alive connection whose next request head does not arrive
//! within `header_read_timeout`; its HTTP/2 server has no such timeout, so an idle HTTP/2
//! connection would hold one of the proxy's `MAX_CONNECTIONS` slots forever, and 4,096 of them
//! would lock every other client out. Here a connection counts the requests it has in flight
//! (from the moment the service is called until the answer body has been sent or dropped); when
//! none has been in flight for the idle time, the connection is shut down gracefully (HTTP/2:
//! GOAWAY, HTTP/1: close after the current exchange), and dropped if it has not ended `drain`
//! later. The same path serves shutdown of the whole proxy.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::Response;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::watch;

use super::forward::ProxyBody;

/// Counts one connection's requests in flight (the service side).
#[derive(Clone)]
pub(super) struct Activity(watch::Sender<usize>);

/// Watches the count (the connection side).
pub(super) struct Idle(watch::Receiver<usize>);

impl Activity {
    /// A counter at zero and its watcher.
    pub fn new() -> (Activity, Idle) {
        let (tx, rx) = watch::channel(0);
        (Activity(tx), Idle(rx))
    }

    /// A request has started: in flight until the returned guard is dropped.
    pub fn start(&self) -> Busy {
        self.0.send_modify(|n| *n += 1);
        Busy(self.0.clone())
    }
}

/// One request in flight.
pub(super) struct Busy(watch::Sender<usize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Busy {
    /// Keeps the request in flight until its answer's body has been sent (or dropped): a long
    /// download is activity, not idleness.
    pub fn hold_until_sent(self, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        resp.map(|body| Holding { body, _busy: self }.boxed_unsync())
    }
}

/// A body that keeps its request counted as in flight while it lives.
struct Holding {
    body: ProxyBody,
    _busy: Busy,
}

impl Body for Holding {
    type Data = <ProxyBody as Body>::Data;
    type Error = <ProxyBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Idle {
    /// Returns once no request has been in flight for `idle`.
    pub async fn elapsed(&mut self, idle: Duration) {
        loop {
            if *self.0.borrow_and_update() == 0 {
                match tokio::time::timeout(idle, self.0.changed()).await {
                    Err(_) => return,
                    Ok(Ok(())) => {}
                    // Every sender is gone: the service was dropped, no request can start.
                    Ok(Err(_)) => return,
                }
            } else if self.0.changed().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_is_measured_from_the_last_request_in_flight() {
        let (activity, mut idle) = Activity::new();
        let t0 = tokio::time::Instant::now();
        let busy = activity.start();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(100)).await;
            drop(busy);
        });
        idle.elapsed(Duration::from_secs(30)).await;
        release.await.unwrap();
        // In flight for 100 s, then idle for 30: never idle while a request was in flight.
        assert_eq!(t0.elapsed(), Duration::from_secs(130));
    }
}
