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
//!
//! A client that goes away while its request waits (for an upstream slot, or for Label Studio)
//! must not leave the request behind: queued, it would still be sent upstream, and under overload
//! clients that time out and retry would pile up requests nobody reads. HTTP/2 says so itself (a
//! reset stream); for HTTP/1 hyper would notice by reading the socket mid-request, which costs a
//! second read buffer per connection (see `Builders`), so [`Departure`] peeks one byte instead.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, StatusCode};
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

/// How long a request runs before its client's departure is watched for: a departure matters
/// for requests that wait (queued for a slot, a slow Label Studio), and a request answered sooner
/// costs no system call for the watch (a timer entry instead).
const DEPARTURE_CHECK_AFTER: Duration = Duration::from_millis(100);

/// An HTTP/1 client's socket, shared between hyper (which reads and writes it through
/// [`ClientIo`]) and the requests in flight on it (which watch it for the client's departure).
#[derive(Clone)]
pub(super) struct Departure(Arc<tokio::net::TcpStream>);

impl Departure {
    /// Shares `stream`: the I/O object for hyper, and the watch.
    pub fn share(stream: tokio::net::TcpStream) -> (ClientIo, Departure) {
        let stream = Arc::new(stream);
        (ClientIo(stream.clone()), Departure(stream))
    }

    /// Resolves when the client has closed (end of stream) or reset the connection. Stays
    /// pending once bytes are waiting to be read (a request body, a pipelined request): hyper
    /// reads those itself and notices an end there. Looks only after [`DEPARTURE_CHECK_AFTER`]:
    /// the look is a `recv` that usually finds nothing, and most requests are answered sooner.
    pub async fn gone(&self) {
        tokio::time::sleep(DEPARTURE_CHECK_AFTER).await;
        let mut byte = [0u8; 1];
        match self.0.peek(&mut byte).await {
            Ok(0) | Err(_) => {}
            Ok(_) => std::future::pending().await,
        }
    }

    /// The answer put in place of one for a departed client: nobody reads it (nginx logs 499,
    /// "client closed request", for the same case).
    pub fn answer() -> Response<ProxyBody> {
        let mut resp = empty();
        *resp.status_mut() = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
        resp
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

/// A shared socket as hyper's I/O: reads and writes through the socket's readiness and
/// `try_*` calls, which take `&TcpStream`, so [`Departure`] can peek at the same socket.
pub(super) struct ClientIo(Arc<tokio::net::TcpStream>);

/// Repeats a `try_*` call until it does not find the socket unready: each `WouldBlock` clears the
/// readiness, so the next `poll_*_ready` registers the waker and waits.
macro_rules! retry_ready {
    ($ready:expr, $attempt:expr) => {
        loop {
            if let Err(e) = std::task::ready!($ready) {
                return Poll::Ready(Err(e));
            }
            match $attempt {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    };
}

impl tokio::io::AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        retry_ready!(
            self.0.poll_read_ready(cx),
            self.0.try_read_buf(buf).map(|_| ())
        )
    }
}

impl tokio::io::AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        retry_ready!(self.0.poll_write_ready(cx), self.0.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        retry_ready!(self.0.poll_write_ready(cx), self.0.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Writes go straight to the socket: nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

fn empty() -> Response<ProxyBody> {
    Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
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
