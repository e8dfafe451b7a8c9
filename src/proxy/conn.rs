//! One client connection's life: closed when it has been idle for the header timeout, whatever
//! protocol it speaks, and drained on shutdown.
//!
//! hyper's HTTP/1 server can close a keep-alive connection whose next request head does not arrive
//! within `header_read_timeout`, but it arms a new boxed timer for every request to do so; its
//! HTTP/2 server has no such timeout at all, so an idle HTTP/2 connection would hold one of the
//! proxy's `MAX_CONNECTIONS` slots forever, and 4,096 of them would lock every other client out.
//! Here a connection counts the requests it has in flight (from the moment the service is called
//! until the answer body has been sent or dropped) and stamps when the last one ended; one timer
//! per connection looks at that only when it fires, so a request costs two atomic updates and a
//! clock read, not a timer. When none has been in flight for the idle time (a head that has not
//! arrived whole counts as none: the slow-loris case), the connection is shut down gracefully
//! (HTTP/2: GOAWAY, HTTP/1: close after the current exchange), and dropped if it has not ended
//! `drain` later. The same path serves shutdown of the whole proxy.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::forward::ProxyBody;

/// Counts one connection's requests in flight (the service side; HTTP/2 streams run on tasks of
/// their own, hence atomics).
#[derive(Clone)]
pub(super) struct Activity(Arc<Counts>);

/// Watches the count (the connection side).
pub(super) struct Idle(Arc<Counts>);

struct Counts {
    in_flight: AtomicUsize,
    /// When a request last ended (or the connection started), in nanoseconds since `base`.
    last_end: AtomicU64,
    base: Instant,
}

impl Counts {
    fn last_end(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_end.load(Ordering::Acquire))
    }
}

impl Activity {
    /// A counter at zero, idle from now, and its watcher.
    pub fn new() -> (Activity, Idle) {
        let counts = Arc::new(Counts {
            in_flight: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
            base: Instant::now(),
        });
        (Activity(counts.clone()), Idle(counts))
    }

    /// A request has started: in flight until the returned guard is dropped.
    pub fn start(&self) -> Busy {
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.0.clone())
    }
}

/// One request in flight.
pub(super) struct Busy(Arc<Counts>);

impl Drop for Busy {
    fn drop(&mut self) {
        // Stamped before the count falls, so a watcher that sees the count at zero sees this end
        // too. Saturating: a connection would have to live for 584 years to overflow.
        let since = u64::try_from(self.0.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.last_end.fetch_max(since, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Busy {
    /// Keeps the request in flight until its answer's body has been sent (or dropped): a long
    /// download is activity, not idleness.
    pub fn hold_until_sent(self, resp: Response<ProxyBody>) -> Response<Holding> {
        resp.map(|body| Holding { body, _busy: self })
    }
}

/// A body that keeps its request counted as in flight while it lives (what the served
/// connections answer with: not boxed again, the answer's body already is).
pub(super) struct Holding {
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

/// The size of a request's head as sent (request line and header lines), from its parts.
///
/// hyper's `max_buf_size` is not a bound on the head: a read fills whatever spare capacity the
/// buffer has grown to, so a head of up to about twice the limit can be parsed whole (a 70 KiB one
/// went through with a 64 KiB limit). The proxy bounds it here instead, exactly.
pub(super) fn head_len<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    // "METHOD target HTTP/1.1\r\n", each "name: value\r\n", the closing "\r\n".
    let line = req.method().as_str().len() + 1 + target + 11;
    req.headers()
        .iter()
        .fold(line + 2, |n, (k, v)| n + k.as_str().len() + 2 + v.len() + 2)
}

/// The answer to a head over the limit: 431, as hyper gives when it notices, and the connection
/// closed after it (what follows the head cannot be trusted to be framed as the client meant).
pub(super) fn head_too_large() -> Response<ProxyBody> {
    let mut resp = empty();
    *resp.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn empty() -> Response<ProxyBody> {
    Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
}

impl Idle {
    /// Returns once no request has been in flight for `idle`. One timer, moved only when it
    /// fires: requests in flight then → look again `idle` later; none → at the last one's end
    /// plus `idle`, or now if that has passed.
    pub async fn elapsed(&self, idle: Duration) {
        let timer = tokio::time::sleep_until(self.0.base + idle);
        tokio::pin!(timer);
        loop {
            timer.as_mut().await;
            let now = Instant::now();
            let next = if self.0.in_flight.load(Ordering::Acquire) > 0 {
                now + idle
            } else {
                let at = self.0.last_end() + idle;
                if at <= now {
                    return;
                }
                at
            };
            timer.as_mut().reset(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_is_measured_from_the_last_request_in_flight() {
        let idle_for = Duration::from_secs(30);
        // No request at all: idle from the start.
        let (_activity, idle) = Activity::new();
        let t0 = Instant::now();
        idle.elapsed(idle_for).await;
        assert_eq!(t0.elapsed(), idle_for);

        // One request 0–100 s, another 50–140 s, one 150-155 s: idle from 155 s.
        let (activity, idle) = Activity::new();
        let t0 = Instant::now();
        let first = activity.start();
        let requests = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(50)).await;
            let second = activity.start();
            tokio::time::sleep(Duration::from_secs(50)).await;
            drop(first);
            tokio::time::sleep(Duration::from_secs(40)).await;
            drop(second);
            // Idle for 10 s here: less than the idle time, so this counts as activity.
            tokio::time::sleep(Duration::from_secs(10)).await;
            let third = activity.start();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(third);
        });
        idle.elapsed(idle_for).await;
        requests.await.unwrap();
        // Never idle while a request was in flight, and idle for exactly 30 s after the last.
        assert_eq!(t0.elapsed(), Duration::from_secs(185));
    }
}
