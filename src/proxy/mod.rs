//! The auth proxy: a local reverse proxy in front of Label Studio that attaches the current token
//! to every request, so any HTTP client works unchanged and holds no usable credential (the way
//! Vault Agent's API proxy injects its auto-auth token).
//!
//! - Forwards only to `--url` (its path prefix kept), and only Label Studio's API and file URLs;
//!   one canonical request target decides and is sent byte for byte, everything else is refused
//!   (see `target.rs`). Absolute-form targets and `CONNECT` are refused: it is never an open proxy.
//!   `Upgrade` is a hop-by-hop header and is dropped (RFC 9110 §7.8 lets a server ignore it): the
//!   request goes on as plain HTTP/1.1, so no protocol switch ever happens through the proxy.
//! - Browsers are refused: `Host` must name the proxy, and `Origin`/`Sec-Fetch-Site` must not
//!   say another site (see [`origin`]): otherwise any web page could use the proxy as a login
//!   cookie for Label Studio's API, and DNS rebinding could read the answers.
//! - Every forwarded request carries exactly our `Authorization`; whatever the client sent
//!   (`Authorization`, `X-Api-Key`, `Proxy-Authorization`) is dropped.
//! - `POST /api/token/refresh[/]` is answered here with a stand-in token (see [`standin`]) whose
//!   `exp` is the proxy's own token's, so the SDK's own refresh logic works and N clients cause
//!   no exchanges. The endpoints that handle credentials or the organization's auth settings are
//!   refused: through the proxy, a client could otherwise rotate the PAT away, read a
//!   long-lived credential or switch PATs off.
//! - Whatever is answered here has its request body read first (up to 64 KiB), so the
//!   client's keep-alive connection stays usable; a larger body gets `Connection: close`.
//! - No valid token: 503 with a JSON reason and `Retry-After`, never an unauthenticated forward.
//!   Label Studio unreachable or slow: 502/504 with a reason. A 401 from Label Studio reports the
//!   token rejected (the refresh loop checks it and refreshes at once if it is).
//! - Bodies stream both ways, unbuffered and uncapped. `--proxy-timeout` bounds silences, not
//!   transfers (see `body.rs`): a client whose upload stops gets 408, Label Studio silent past it
//!   504, an answer body that stops is cut.
//! - Framing is hyper's (RFC 9112): differing `Content-Length`s, a `Transfer-Encoding` not ending
//!   in chunked, and heads of more than 100 fields are answered 400/431 before a request exists;
//!   a head over `MAX_HEAD_BYTES` is answered 431 (and the connection closed) here, by its exact
//!   size, because hyper's buffer limit lets heads of up to about twice it through. With both `Transfer-Encoding: chunked` and `Content-Length`, hyper frames the
//!   body as chunked, drops `Content-Length` and closes the connection after the answer (§6.3):
//!   what follows the chunked body is never read as a request, and the forwarded request has our
//!   framing only. It is not turned into a 400 because hyper removes `Content-Length` before the
//!   request reaches us (telling the two cases apart would mean parsing heads a second time).
//! - Label Studio gets at most `--proxy-upstream-connections` connections, each carrying one
//!   request at a time and kept alive; more concurrent requests wait for one (up to
//!   `--proxy-timeout`, then 503 `busy`), see `upstream.rs`.
//! - A request body without a length (chunked) is forwarded chunked. Label Studio's own server
//!   (`label-studio start`, Django's development server) does not read chunked request bodies:
//!   observed with 1.23.2, such a request runs with an empty body. Clients behind the proxy must
//!   send a length, as label-studio-sdk, requests and httpx do for bytes, JSON and files.
//! - Connections: at most `MAX_CONNECTIONS`; a client must send a complete request head within
//!   `HEADER_READ_TIMEOUT` of connecting or of its previous answer (or its connection is closed,
//!   at most `DRAIN` later), and the first bytes, which
//!   tell HTTP/1 from HTTP/2 and which hyper itself would wait for forever, within the same time;
//!   a connection of either protocol with no request in flight for that long is closed (see
//!   `conn.rs`). A client that goes away while its request waits (queued for an upstream
//!   connection, or for Label Studio's answer) takes the request with it: it is never sent, or
//!   its upstream connection is closed and the slot freed.
//! - Hop-by-hop headers are handled per RFC 9110 §7.6.1; the client's `Host` is passed through,
//!   because Label Studio builds its absolute URLs (pagination `next`) from it and they must lead
//!   back through the proxy (docs/consumers.md has the experiment). Behind an ingress that routes by `Host`, set
//!   `--proxy-upstream-host`: the upstream's `Host` is sent and `Location` headers are mapped back.

mod body;
pub(crate) mod client;
mod conn;
pub(crate) mod forward;
pub mod origin;
pub mod standin;
pub(crate) mod target;
pub(crate) mod upstream;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{watch, Semaphore};

use forward::ProxyBody;
use tokio_util::sync::CancellationToken;

use crate::{
    exchange::{self, LabelStudioArgs},
    health::Health,
    metrics::Metrics,
    refresher::RejectionReport,
    token::TokenSet,
    values::{BaseUrl, ConnectionCount, PositiveDur},
};

/// Where `proxy` listens by default: loopback (a sidecar's consumer shares the pod's network).
pub const DEFAULT_PROXY_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9418);
/// Open client connections beyond this are closed at once: memory stays bounded whatever a
/// misbehaving client does (an idle connection costs a few KiB).
const MAX_CONNECTIONS: usize = ConnectionCount::MAX;
/// A client must send a request's headers within this (slow-loris clients are dropped), starting
/// from the connection's first moment and between keep-alive requests.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head accepted (request line + headers); beyond it hyper answers 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// On shutdown, requests in flight get this long to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// Auth proxy flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Serve the auth proxy on this address (`proxy` defaults to 127.0.0.1:9418; `run` serves it only when set).
    #[arg(long, env = "LS_PROXY_ADDR", value_name = "ADDR")]
    pub proxy_addr: Option<SocketAddr>,

    /// Longest silence while forwarding: waiting for Label Studio's answer, or for the next piece of a body either way.
    #[arg(
        long,
        env = "LS_PROXY_TIMEOUT",
        default_value = "120s",
        value_name = "DURATION"
    )]
    pub proxy_timeout: PositiveDur,

    /// Send the upstream's Host (for a --url behind an ingress that routes by Host) and map Location headers back.
    #[arg(long, env = "LS_PROXY_UPSTREAM_HOST")]
    pub proxy_upstream_host: bool,

    /// Also answer requests addressed to this host name (e.g. a Service name); loopback, localhost and the listening address always are. Repeatable or comma-separated.
    #[arg(
        long = "proxy-allow-host",
        env = "LS_PROXY_ALLOW_HOSTS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub proxy_allow_hosts: Vec<origin::HostName>,

    /// Most connections to Label Studio, each carrying one request at a time; more concurrent requests wait for one (at most --proxy-timeout, then 503).
    #[arg(
        long,
        env = "LS_PROXY_UPSTREAM_CONNECTIONS",
        default_value_t = ConnectionCount(DEFAULT_UPSTREAM_CONNECTIONS),
        value_name = "N"
    )]
    pub proxy_upstream_connections: ConnectionCount,
}

/// Default of `--proxy-upstream-connections` (and the gate's fixed cap): nginx's usual upstream
/// `keepalive` pool and more than the request workers a Label Studio replica usually runs, so the
/// cap queues only bursts Label Studio would queue anyway; at ~35 KiB per upstream connection
/// (`bench/RESULTS.md` §3) that side stays near 2 MiB however many clients connect.
pub const DEFAULT_UPSTREAM_CONNECTIONS: usize = 64;

/// Could not start the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The HTTP client for Label Studio.
    #[error(transparent)]
    Client(#[from] exchange::ClientError),
    /// The listener.
    #[error("--proxy-addr (LS_PROXY_ADDR) {addr}: cannot listen: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// What every request handler shares.
struct Shared {
    upstream: BaseUrl,
    http: upstream::Upstream,
    upstream_host: bool,
    admission: origin::Admission,
    auth_header: forward::AuthHeader,
    health: Health,
    rejections: RejectionReport,
    metrics: Arc<Metrics>,
    /// `proxy_upstream_errors_total{reason="timeout"}`, counting answers cut for silence
    /// (resolved once: a label lookup per request would hash the label every time).
    answer_cut: prometheus::IntCounter,
    /// `proxy_requests_total` for 1xx … 5xx, resolved once for the same reason.
    answered: [prometheus::IntCounter; 5],
}

/// The proxy, ready to bind.
pub struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    /// A proxy to `ls.url`, taking tokens from `tokens` (the memory sink) and validity from
    /// `health`, reporting rejections to the refresh loop.
    pub fn new(
        args: &ProxyArgs,
        ls: &LabelStudioArgs,
        tokens: watch::Receiver<Option<TokenSet>>,
        health: Health,
        rejections: RejectionReport,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ProxyError> {
        let http = upstream::Upstream::new(
            &ls.url,
            ls.ca_file.as_deref(),
            ls.connect_timeout.0,
            args.proxy_timeout.0,
            args.proxy_upstream_connections.0,
            Some(upstream::Gauges {
                in_flight: metrics.proxy_upstream_in_flight.clone(),
                queued: metrics.proxy_upstream_queued.clone(),
            }),
        )?;
        metrics.register_proxy();
        Ok(Proxy {
            shared: Arc::new(Shared {
                upstream: ls.url.clone(),
                http,
                upstream_host: args.proxy_upstream_host,
                admission: origin::Admission::new(&args.proxy_allow_hosts),
                auth_header: forward::AuthHeader::new(tokens),
                health,
                rejections,
                answered: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                    .map(|class| metrics.proxy_requests_total.with_label_values(&[class])),
                answer_cut: metrics
                    .proxy_upstream_errors_total
                    .with_label_values(&[crate::reason::Reason::Timeout.as_str()]),
                metrics,
            }),
        })
    }

    /// Binds now (a busy port fails at start-up) and returns the bound address and the server
    /// future, which ends after `shutdown` once requests in flight finished (or [`DRAIN`] passed).
    pub async fn bind(
        self,
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> Result<
        (
            SocketAddr,
            impl std::future::Future<Output = std::io::Result<()>>,
        ),
        ProxyError,
    > {
        let (listener, local) = listen(addr)
            .await
            .map_err(|source| ProxyError::Listen { addr, source })?;
        if !local.ip().is_loopback() {
            tracing::warn!(
                proxy = %local,
                "the auth proxy listens on a non-loopback address: whoever reaches it acts as the PAT's user (restrict it with a NetworkPolicy)"
            );
        }
        let connections = self.shared.metrics.proxy_connections.clone();
        let shared = self.shared;
        let handler = move |peer, req| forward::handle(shared.clone(), peer, req);
        Ok((
            local,
            serve(listener, handler, connections, "proxy", shutdown),
        ))
    }
}

/// Binds `addr` now (a busy port fails at start-up): the listener and the address it got.
pub(crate) async fn listen(
    addr: SocketAddr,
) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Runs one served connection until it ends, its client idles past the header timeout, or
/// shutdown; the last two end it gracefully (requests in flight get `DRAIN`). The connection is
/// boxed so the task holds only what its protocol needs (hyper's HTTP/2 state is several times its
/// HTTP/1 state, and 1,000 HTTP/1 connections should not each carry it). A macro: hyper's HTTP/1
/// and HTTP/2 connections are different types, and a generic function over them trips the
/// compiler's higher-ranked `Send` inference inside `tokio::spawn`.
macro_rules! drive {
    ($conn:expr, $idle:expr, $shutdown:expr) => {{
        let mut conn = Box::pin($conn);
        let idle = $idle;
        let ended = tokio::select! {
            _ = conn.as_mut() => true,
            _ = idle.elapsed(HEADER_READ_TIMEOUT) => false,
            _ = $shutdown.cancelled() => false,
        };
        if !ended {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }};
}

/// A client connection by the protocol its first bytes showed.
enum Client {
    Http1(client::ClientIo),
    Http2(tokio::net::TcpStream),
}

/// hyper's servers for both protocols, configured once.
struct Builders {
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new() -> Builders {
        let mut h1 = hyper::server::conn::http1::Builder::new();
        // No timer for hyper's own header timeout: it boxes and arms a new one for every request
        // (an allocation, a clock read and a timer-wheel insert and removal each), and
        // `conn::Idle` bounds a slow head the same way (no request in flight for `HEADER_READ_TIMEOUT`) with one timer
        // per connection.
        h1.header_read_timeout(None)
            .max_buf_size(MAX_HEAD_BYTES)
            // Not for half-closing clients (a client that closes is gone, see `Departure`): with
            // it off, hyper reads the socket while a request is in flight to notice a close, and
            // that read needs a second 8 KiB buffer per connection while the parsed head still
            // holds the first (7 MiB at 1,000 connections, measured). `Departure` notices with
            // a one-byte peek instead.
            .half_close(true);
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.max_concurrent_streams(256);
        Builders { h1, h2 }
    }
}

/// Serves HTTP/1.1 and HTTP/2 connections on `listener` with `handler` (called with what is known
/// of each request's connection) until `shutdown`, with the connection
/// hygiene described in the module docs; `connections` counts open connections and `what` names
/// the server in logs.
pub(crate) async fn serve<H, F>(
    listener: tokio::net::TcpListener,
    handler: H,
    connections: prometheus::IntGauge,
    what: &'static str,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    H: Fn(Arc<client::Peer>, http::Request<hyper::body::Incoming>) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = http::Response<ProxyBody>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let builders = Arc::new(Builders::new());
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // The memory a burst of connections leaves behind goes back to the system once it is over.
    let bursts = crate::memory::BurstWatch::new();
    let trimming = tokio::spawn(bursts.clone().run(crate::memory::release));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    tracing::warn!("{what} accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(peer = %peer, "{what} connection limit ({MAX_CONNECTIONS}) reached; closing a new connection");
            continue;
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connections = connections.clone();
        let for_requests = handler.clone();
        let builders = builders.clone();
        let shutdown = shutdown.clone();
        let bursts = bursts.clone();
        connections.inc();
        bursts.opened();
        tokio::spawn(async move {
            // Protocol detection waits for the first bytes: hyper has no timeout for that, and
            // a client that sends nothing would hold its slot forever.
            let spoke = tokio::select! {
                _ = shutdown.cancelled() => None,
                r = tokio::time::timeout(HEADER_READ_TIMEOUT, first_bytes(&stream)) => r.ok().flatten(),
            };
            if let Some(h2) = spoke {
                // HTTP/2 tells a client's departure itself (a reset stream, a closed connection).
                let (io, departure) = if h2 {
                    (Client::Http2(stream), None)
                } else {
                    let (io, departure) = client::Departure::share(stream);
                    (Client::Http1(io), Some(departure))
                };
                let peer = Arc::new(client::Peer::new(peer.ip(), local.ip(), departure));
                let (activity, idle) = conn::Activity::new();
                let service = hyper::service::service_fn(move |req| {
                    let busy = activity.start();
                    // Boxed once here: hyper moves the service's future into its connection
                    // state, and a request's future is large (`forward::handle`: 2.8 KiB), so
                    // every move of it inline was a copy of that size (`memmove` was the top
                    // user-space symbol in the profile, bench/RESULTS.md §3).
                    let handled = (conn::head_len(&req) <= MAX_HEAD_BYTES)
                        .then(|| Box::pin(for_requests(peer.clone(), req)));
                    async move {
                        let answer = match handled {
                            Some(handled) => handled.await,
                            None => conn::head_too_large(),
                        };
                        Ok::<_, std::convert::Infallible>(busy.hold_until_sent(answer))
                    }
                });
                match io {
                    Client::Http1(io) => {
                        drive!(
                            builders.h1.serve_connection(TokioIo::new(io), service),
                            idle,
                            shutdown
                        )
                    }
                    Client::Http2(stream) => {
                        drive!(
                            builders.h2.serve_connection(TokioIo::new(stream), service),
                            idle,
                            shutdown
                        )
                    }
                }
            }
            connections.dec();
            bursts.closed();
            drop(slot);
        });
    }
    drop(listener);
    trimming.abort();
    // Every connection task holds a slot until it ends: all slots back means all drained (each
    // task bounds its own drain by DRAIN).
    let _ = tokio::time::timeout(
        DRAIN + Duration::from_secs(1),
        slots.acquire_many(MAX_CONNECTIONS as u32),
    )
    .await;
    Ok(())
}

/// The HTTP/2 connection preface (RFC 9113 §3.4): until a client has sent all of it or something
/// else, it is not known which protocol it speaks.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How often a partial preface is looked at again (only a client that splits the preface across
/// packets, or stalls in it on purpose, ever waits here).
const PREFACE_POLL: Duration = Duration::from_millis(20);

/// Waits until the client has sent enough to tell HTTP/1 from HTTP/2: whether it is HTTP/2 (None:
/// it closed first). Peeks, so hyper reads the same bytes again.
async fn first_bytes(stream: &tokio::net::TcpStream) -> Option<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) if n == H2_PREFACE.len() || buf[..n] != H2_PREFACE[..n] => {
                return Some(buf[..n] == *H2_PREFACE)
            }
            // A part of the preface: a peek would return the same bytes at once.
            Ok(_) => tokio::time::sleep(PREFACE_POLL).await,
        }
    }
}
