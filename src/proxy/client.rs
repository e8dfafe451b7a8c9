//! The client side of one served connection: what its requests know of it ([`Peer`]), and for
//! HTTP/1 its socket shared between hyper and the requests in flight on it, so a request that
//! waits can notice that its client left ([`Departure`]).
//!
//! A client that goes away while its request waits (for an upstream slot, or for Label Studio)
//! must not leave the request behind: queued, it would still be sent upstream, and under overload
//! clients that time out and retry would pile up requests nobody reads. HTTP/2 says so itself (a
//! reset stream); for HTTP/1 hyper would notice by reading the socket mid-request, which costs a
//! second read buffer per connection (see `Builders` in `mod.rs`), so [`Departure`] peeks
//! one byte instead, and only for requests that wait (`upstream.rs` decides when).

use std::{
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::HeaderValue;
use tokio::net::TcpStream;

/// What a request's handler knows of the connection it came on (made once per connection).
pub(crate) struct Peer {
    /// The client's address.
    pub ip: IpAddr,
    /// The address the client connected to.
    pub local: IpAddr,
    /// `ip` as an `X-Forwarded-For` value (formatted once, not per request).
    pub forwarded_for: Option<HeaderValue>,
    /// For HTTP/1, a watch on the socket for the client's departure.
    pub departure: Option<Departure>,
}

impl Peer {
    /// The peer `ip` connected to `local`, watched by `departure`.
    pub fn new(ip: IpAddr, local: IpAddr, departure: Option<Departure>) -> Peer {
        Peer {
            ip,
            local,
            forwarded_for: HeaderValue::from_str(&ip.to_string()).ok(),
            departure,
        }
    }
}

/// An HTTP/1 client's socket, shared between hyper (which reads and writes it through
/// [`ClientIo`]) and the requests in flight on it (which watch it for the client's departure).
#[derive(Clone)]
pub(crate) struct Departure(Arc<TcpStream>);

impl Departure {
    /// Shares `stream`: the I/O object for hyper, and the watch.
    pub fn share(stream: TcpStream) -> (ClientIo, Departure) {
        let stream = Arc::new(stream);
        (ClientIo(stream.clone()), Departure(stream))
    }

    /// Resolves when the client has closed (end of stream) or reset the connection. Stays
    /// pending once bytes are waiting to be read (a request body, a pipelined request): hyper
    /// reads those itself and notices an end there. The look is a `recv` that usually finds
    /// nothing: callers start it only for a request that waits.
    pub async fn gone(&self) {
        let mut byte = [0u8; 1];
        match self.0.peek(&mut byte).await {
            Ok(0) | Err(_) => {}
            Ok(_) => std::future::pending().await,
        }
    }
}

/// A shared socket as hyper's I/O: reads and writes through the socket's readiness and
/// `try_*` calls, which take `&TcpStream`, so [`Departure`] can peek at the same socket.
pub(crate) struct ClientIo(Arc<TcpStream>);

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
