//! The upstream side of the proxy and the gate: HTTP/1.1 connections to one origin, at most
//! `cap` of them, each carrying one request at a time.
//!
//! Built on hyper's connection API rather than an HTTP client library, because the forwarding
//! path needs none of what a client adds per request (URL parsing, redirect and retry layers,
//! header-map copies: a third of the proxy's user-space CPU in `bench/RESULTS.md` §3) and needs
//! one thing no client pool gives: a hard bound on connections. hyper-util's legacy `Client`
//! (what reqwest wraps) has no limit on connections, and when a request waiting for a new
//! connection is handed an idle one, the new connection is still finished in the background and
//! pooled, so even with requests capped by a semaphore the upstream can see more connections than
//! the cap. Here a connection exists only while a slot holds it or in the idle list, a slot takes
//! an idle connection before it opens one, and a connection given up on keeps its slot until its
//! socket is closed: this process never has more than `cap` connections to the upstream open
//! (the upstream may count a closed one a moment longer, until it reads the FIN).
//!
//! - Slots: a request waits (queued, in arrival order) for one of `cap` slots for at most the
//!   proxy's timeout, then gets 503 `busy`. A slot is held until the answer's body has been
//!   sent to the client (or dropped), then its connection goes back to the idle list if hyper
//!   says it can carry another request. A stalled upload holds its slot only until the silence
//!   timeout answers it 408 (see `body.rs`); the other slots keep serving.
//! - Idle connections: most recently used first, closed after [`IDLE_TIMEOUT`] unused (one timer
//!   runs while any is idle: an idle process stays idle).
//! - A request sent on an idle connection that the upstream closed meanwhile comes back unsent
//!   from hyper and is sent once more on a new connection (what the legacy client does too).
//! - TLS is rustls with the platform verifier and `--ca-file` as extra roots, exactly what
//!   `reqwest` builds for the refresher's own requests (`exchange::client_builder`).

use std::{
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{
    header::{self, HeaderMap, HeaderValue},
    uri::PathAndQuery,
    Method, Request, Response, Uri,
};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1,
};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::{
    net::TcpStream,
    sync::{oneshot, OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use super::{
    body::{IdleTimeout, Progress, Stall, Watched},
    client::Departure,
};
use crate::{exchange::ClientError, reason::Reason, values::BaseUrl};

/// What is sent upstream: the client's body, watched for silences.
type ReqBody = Watched<Incoming>;
type Sender = http1::SendRequest<ReqBody>;

/// One upstream connection: hyper's handle for sending on it, and word of its end (its driver
/// task drops the sender when the socket is closed).
struct Conn {
    tx: Sender,
    closed: oneshot::Receiver<()>,
}

/// An idle upstream connection is closed after this long unused (what reqwest's pool used here
/// before). A server that closes idle connections sooner (nginx's `keepalive_timeout` 75 s,
/// gunicorn's 2 s) is noticed: hyper's connection task ends, the connection is skipped when taken
/// from the idle list, and a request that raced the close is sent again on a new connection.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a request waits for its answer before its client's departure is watched for: a
/// departure matters for requests that wait (a slow Label Studio), and most answers come sooner.
const DEPARTURE_CHECK_AFTER: Duration = Duration::from_millis(100);

/// Largest read buffer of one upstream connection. hyper grows a connection's buffer from 8 KiB
/// while reads fill it and shrinks it again when they do not, so small answers keep 8 KiB; the cap
/// bounds the worst case at `cap` × 256 KiB (16 MiB at the default 64) and lets a large download
/// move in few system calls. Not tuned further: at this size a 512 MiB download ran at 2.7×
/// nginx's rate (`bench/RESULTS.md` §3), so the read size is not what limits it.
const READ_BUF_MAX: usize = 256 * 1024;

/// Gauges for the slots (the proxy's; the gate has none).
#[derive(Clone)]
pub(crate) struct Gauges {
    /// Requests holding a slot.
    pub in_flight: prometheus::IntGauge,
    /// Requests waiting for one.
    pub queued: prometheus::IntGauge,
}

/// Why a request could not be sent upstream (an answer's head was not received).
pub(crate) enum Failure {
    /// Every slot stayed taken for the whole timeout.
    Busy,
    /// The client closed its connection while the request waited.
    ClientGone,
    /// The client's body stopped arriving for the whole timeout.
    ClientTimeout,
    /// Reading the client's body failed.
    ClientAborted,
    /// The upstream failed or stayed silent (timeout, network, TLS).
    Upstream(Reason),
}

/// The connections to one upstream, with the longest silence allowed while forwarding.
pub(crate) struct Upstream {
    pool: Arc<Pool>,
    /// The base URL's path, without trailing slash (`""` or e.g. `/label-studio`).
    prefix: String,
    timeout: Duration,
}

struct Pool {
    origin: Origin,
    slots: Arc<Semaphore>,
    idle: Mutex<Idle>,
    gauges: Option<Gauges>,
    /// Longest wait for a connection given up on to close before its slot is free again.
    close_wait: Duration,
}

#[derive(Default)]
struct Idle {
    /// Most recently returned last.
    conns: Vec<(Conn, Instant)>,
    /// Whether the task closing expired connections runs.
    reaping: bool,
}

/// Where and how to connect.
struct Origin {
    /// Host for the resolver (no IPv6 brackets) and port.
    host: String,
    port: u16,
    /// `Host` for requests that do not carry the client's (`host[:port]`, the port only when it is
    /// not the scheme's default — what HTTP clients send).
    host_header: HeaderValue,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
}

impl Upstream {
    /// Connections to `base` (at most `cap`), trusting `ca_file` in addition to the system roots
    /// for `https://`. No total or read timeout (uploads and exports are large, and a read
    /// timeout would also fire while a long upload is still being sent): `timeout` bounds
    /// silences, judged per request here and in `body.rs`, and the wait for a slot.
    pub(crate) fn new(
        base: &BaseUrl,
        ca_file: Option<&std::path::Path>,
        connect_timeout: Duration,
        timeout: Duration,
        cap: usize,
        gauges: Option<Gauges>,
    ) -> Result<Self, ClientError> {
        let url = base.parsed();
        let host_str = url
            .host_str()
            .ok_or_else(|| ClientError::Build("the URL has no host".into()))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| ClientError::Build("the URL has no port".into()))?;
        let host_header = match url.port() {
            Some(p) => HeaderValue::from_str(&format!("{host_str}:{p}")),
            None => HeaderValue::from_str(host_str),
        }
        .map_err(|e| ClientError::Build(e.to_string()))?;
        let host = host_str
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host_str)
            .to_owned();
        let tls = if url.scheme() == "https" {
            let name = ServerName::try_from(host.clone())
                .map_err(|e| ClientError::Build(e.to_string()))?;
            Some((tls_connector(ca_file)?, name))
        } else {
            None
        };
        Ok(Upstream {
            pool: Arc::new(Pool {
                origin: Origin {
                    host,
                    port,
                    host_header,
                    tls,
                    connect_timeout,
                },
                slots: Arc::new(Semaphore::new(cap)),
                idle: Mutex::new(Idle::default()),
                gauges,
                close_wait: timeout,
            }),
            prefix: url.path().trim_end_matches('/').to_owned(),
            timeout,
        })
    }

    /// The request target for a request to `uri`, whose path `path` has been found canonical,
    /// under the base URL's path prefix, or `None` when it would not be sent as exactly that path
    /// and `uri`'s query (see `target.rs`). Without a prefix, that is `uri`'s own path and query as
    /// parsed from the request line, sent as they are (not parsed a second time).
    pub(crate) fn target(&self, uri: &Uri, path: &str) -> Option<PathAndQuery> {
        match uri.path_and_query() {
            Some(own) if self.prefix.is_empty() && own.path() == path => Some(own.clone()),
            _ => super::target::upstream_target(&self.prefix, path, uri.query()),
        }
    }

    /// Sends a request with the client's streamed `body` and waits for the answer's head. The
    /// timeout bounds silence, not the transfer: an upload may take as long as it keeps moving,
    /// and a silence is blamed on the side that was waited for (see `body.rs`). Without a `Host`
    /// in `headers`, the upstream's is sent. With `departure`, a client that leaves while the
    /// request waits (queued for a slot, or for the answer once it has waited
    /// [`DEPARTURE_CHECK_AFTER`]) takes the request with it: never sent, or its connection closed.
    pub(crate) async fn send(
        &self,
        method: Method,
        target: PathAndQuery,
        mut headers: HeaderMap,
        body: Incoming,
        departure: Option<&Departure>,
    ) -> Result<Response<Returning>, Failure> {
        let slot = self.pool.slot(self.timeout, departure).await?;
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, self.pool.origin.host_header.clone());
        }
        let mut now = Instant::now();
        let progress = Progress::new(now);
        let mut req = Request::new(Watched::new(body, progress.clone()));
        *req.method_mut() = method;
        *req.uri_mut() = Uri::from(target);
        *req.headers_mut() = headers;
        // Boxed: every request's future is as large as its largest state, and a request waiting
        // for a slot (or answered locally) should not carry this one's (~2 KiB with a connect
        // in it) for its whole life: with 1,000 clients, 936 wait while 64 are here.
        let mut exchange = Box::pin(self.pool.clone().exchange(req, slot));
        // One timer per request serves both the silence and the departure watch: it first fires
        // when the watch is due (a `recv` that usually finds nothing, so not started for answers
        // that come sooner), then at the silence deadline.
        let watch_from = now + DEPARTURE_CHECK_AFTER;
        let mut watching = false;
        let answer = loop {
            let deadline = match progress.stall(self.timeout, now) {
                Stall::Until(deadline) => deadline,
                Stall::Client => return Err(Failure::ClientTimeout),
                Stall::Upstream => return Err(Failure::Upstream(Reason::Timeout)),
            };
            let wake = match departure {
                Some(_) if !watching => deadline.min(watch_from),
                _ => deadline,
            };
            // Biased: an answer that is ready wins over a departure noticed in the same poll.
            tokio::select! {
                biased;
                answer = &mut exchange => break answer,
                () = gone(departure), if watching => return Err(Failure::ClientGone),
                () = tokio::time::sleep_until(wake) => {
                    now = Instant::now();
                    watching = departure.is_some() && now >= watch_from;
                }
            }
        };
        match answer {
            Err(_) if progress.client_failed() => Err(Failure::ClientAborted),
            Err(reason) => Err(Failure::Upstream(reason)),
            Ok(r) => Ok(r),
        }
    }

    /// The upstream's answer as ours: hop-by-hop headers dropped, the body streamed and cut when
    /// it stays silent for the timeout (`on_cut` counts that).
    pub(crate) fn stream(
        &self,
        resp: Response<Returning>,
        on_cut: Option<prometheus::IntCounter>,
    ) -> Response<super::forward::ProxyBody> {
        use http_body_util::BodyExt;
        let mut resp = resp;
        super::forward::strip_hop_by_hop(resp.headers_mut());
        let timeout = self.timeout;
        resp.map(|b| IdleTimeout::new(b, timeout, on_cut).boxed_unsync())
    }
}

/// A slot: the right to hold one upstream connection (counted while it lives). A connection
/// given up on (an answer cut short, a failed or abandoned request) keeps the slot taken until
/// its socket is closed (at most `close_wait`), so a new connection never overlaps it.
struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    gauges: Option<Gauges>,
    /// The end of the connection this slot holds, if it holds one.
    conn_closed: Option<oneshot::Receiver<()>>,
    close_wait: Duration,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(g) = &self.gauges {
            g.in_flight.dec();
        }
        if let (Some(closed), Some(permit)) = (self.conn_closed.take(), self.permit.take()) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let wait = self.close_wait;
                rt.spawn(async move {
                    let _ = tokio::time::timeout(wait, closed).await;
                    drop(permit);
                });
            }
        }
    }
}

/// Counts a request as queued while it lives (a client that goes away while queued drops it).
struct Queued<'a>(Option<&'a Gauges>);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.0 {
            g.queued.dec();
        }
    }
}

/// Resolves when the client behind `departure` has left (never without one).
async fn gone(departure: Option<&Departure>) {
    match departure {
        Some(d) => d.gone().await,
        None => std::future::pending().await,
    }
}

impl Pool {
    /// A slot, waiting at most `wait` for one while the client behind `departure` stays.
    async fn slot(&self, wait: Duration, departure: Option<&Departure>) -> Result<Slot, Failure> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let gauges = self.gauges.as_ref();
                if let Some(g) = gauges {
                    g.queued.inc();
                }
                let _queued = Queued(gauges);
                let acquire = tokio::time::timeout(wait, self.slots.clone().acquire_owned());
                tokio::select! {
                    biased;
                    permit = acquire => match permit {
                        Ok(Ok(p)) => p,
                        // Timed out, or (never: the pool does not close it) a closed semaphore.
                        _ => return Err(Failure::Busy),
                    },
                    () = gone(departure) => return Err(Failure::ClientGone),
                }
            }
        };
        if let Some(g) = &self.gauges {
            g.in_flight.inc();
        }
        Ok(Slot {
            permit: Some(permit),
            gauges: self.gauges.clone(),
            conn_closed: None,
            close_wait: self.close_wait,
        })
    }

    /// Sends `req` on an idle connection or a new one, and returns the answer's head with a body
    /// that gives the connection back when it has been read.
    async fn exchange(
        self: Arc<Self>,
        req: Request<ReqBody>,
        mut slot: Slot,
    ) -> Result<Response<Returning>, Reason> {
        let mut req = req;
        let mut fresh = false;
        let Conn { mut tx, closed } = match self.take_idle() {
            Some(conn) => conn,
            None => {
                fresh = true;
                Box::pin(self.origin.connect()).await?
            }
        };
        slot.conn_closed = Some(closed);
        let resp = loop {
            match tx.try_send_request(req).await {
                Ok(resp) => break resp,
                Err(mut e) => match e.take_message() {
                    // Not sent: the idle connection had been closed by the upstream.
                    Some(unsent) if !fresh => {
                        req = unsent;
                        fresh = true;
                        let conn = Box::pin(self.origin.connect()).await?;
                        tx = conn.tx;
                        slot.conn_closed = Some(conn.closed);
                    }
                    _ => return Err(classify(e.error())),
                },
            }
        };
        let pool = self.clone();
        Ok(resp.map(|body| Returning {
            body,
            ended: false,
            tx: Some(tx),
            pool,
            slot: Some(slot),
        }))
    }

    /// The most recently used idle connection that can take a request.
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((conn, _)) = idle.conns.pop() {
            if conn.tx.is_ready() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `tx` for the next request (called before its slot is released).
    fn put_idle(self: &Arc<Self>, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.conns.push((conn, Instant::now()));
        if !idle.reaping {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                idle.reaping = true;
                rt.spawn(reap(Arc::downgrade(self)));
            }
        }
    }
}

/// Closes idle connections [`IDLE_TIMEOUT`] after their last use; ends when none is left.
async fn reap(pool: Weak<Pool>) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else { return };
            let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            idle.conns
                .retain(|(conn, since)| !conn.tx.is_closed() && *since + IDLE_TIMEOUT > now);
            match idle.conns.iter().map(|(_, since)| *since).min() {
                Some(oldest) => oldest + IDLE_TIMEOUT,
                None => {
                    idle.reaping = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(next).await;
    }
}

impl Origin {
    /// A new connection (TCP, then TLS for `https://`), its driver task spawned.
    async fn connect(&self) -> Result<Conn, Reason> {
        let connecting = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|_| Reason::Network)?;
            let _ = tcp.set_nodelay(true);
            let mut builder = http1::Builder::new();
            builder.max_buf_size(READ_BUF_MAX);
            match &self.tls {
                None => {
                    let (tx, conn) = builder
                        .handshake(TokioIo::new(tcp))
                        .await
                        .map_err(|_| Reason::Network)?;
                    Ok(drive(tx, conn))
                }
                Some((tls, name)) => {
                    let stream = tls
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| classify(&e))?;
                    let (tx, conn) = builder
                        .handshake(TokioIo::new(stream))
                        .await
                        .map_err(|_| Reason::Network)?;
                    Ok(drive(tx, conn))
                }
            }
        };
        tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .unwrap_or(Err(Reason::Timeout))
    }
}

/// Spawns the task that drives a connection until it closes, and says when it has.
fn drive<F>(tx: Sender, conn: F) -> Conn
where
    F: std::future::Future + Send + 'static,
{
    let (done, closed) = oneshot::channel();
    tokio::spawn(async move {
        let _ = conn.await;
        drop(done);
    });
    Conn { tx, closed }
}

/// The reason for a transport failure: TLS when rustls is anywhere in its causes. tokio-rustls
/// wraps rustls' error in an `io::Error`, whose `source()` skips the wrapped error itself, so
/// `io::Error`s are opened explicitly.
fn classify(e: &(dyn std::error::Error + 'static)) -> Reason {
    let mut src = Some(e);
    while let Some(s) = src {
        if s.is::<rustls::Error>() {
            return Reason::Tls;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return Reason::Tls;
            }
        }
        src = s.source();
    }
    Reason::Network
}

/// The TLS setup reqwest builds for the refresher's own client (`exchange::client_builder`):
/// the process's crypto provider (ring, installed at start-up), the platform verifier with
/// `ca_file`'s certificates as extra roots, HTTP/1.1 by ALPN.
fn tls_connector(
    ca_file: Option<&std::path::Path>,
) -> Result<tokio_rustls::TlsConnector, ClientError> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let extra = match ca_file {
        None => Vec::new(),
        Some(path) => {
            let err = |cause: String| ClientError::CaFile {
                path: crate::secret::shown_path(path),
                cause,
            };
            let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(e.to_string()))?;
            if certs.is_empty() {
                return Err(err("no PEM certificates found".into()));
            }
            certs
        }
    };
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
            .map_err(|e| ClientError::Build(e.to_string()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Build(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// An answer's body that gives its connection back to the idle list once it has been read to
/// the end (before its slot is released: a connection is always either counted by a slot or
/// idle), and otherwise lets the slot wait for the connection to close.
pub(crate) struct Returning {
    body: Incoming,
    /// The body ended (a chunked one says so only by its last poll).
    ended: bool,
    tx: Option<Sender>,
    pool: Arc<Pool>,
    slot: Option<Slot>,
}

impl Drop for Returning {
    fn drop(&mut self) {
        let Some(mut slot) = self.slot.take() else {
            return;
        };
        if let Some(tx) = self.tx.take() {
            // Read to the end and hyper is ready for the next request on it (an answer cut short
            // or a request body still being sent leave it unusable: hyper closes it).
            if (self.ended || self.body.is_end_stream()) && tx.is_ready() {
                if let Some(closed) = slot.conn_closed.take() {
                    self.pool.put_idle(Conn { tx, closed });
                }
            }
        }
        drop(slot);
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_are_told_from_network_ones() {
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::General("bad certificate".into()),
        );
        assert_eq!(classify(&tls), Reason::Tls);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&refused), Reason::Network);
        assert_eq!(classify(&rustls::Error::General("x".into())), Reason::Tls);
    }
}
