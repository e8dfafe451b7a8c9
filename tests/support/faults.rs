//! Fault injection for `tests/faults.rs`: a small HTTP/1.1 proxy of our own that sits between the real
//! `ls-token-refresher` binary and a real Label Studio and misbehaves on demand, a TLS endpoint with a
//! self-signed certificate, a consumer that keeps reading the published token set and checking it
//! against the real API, and a tmpfs helper for publish-side faults.
//!
//! The proxy understands just enough HTTP/1.1 for our client (hyper): request heads, `Content-Length`
//! bodies, keep-alive. Each request is forwarded on its own upstream connection (`Connection: close`),
//! the answer is read in full, and then — depending on the [`Fault`] in force *when the request
//! arrived* — passed on, delayed, dripped, replaced, truncated or never answered. Switching to
//! [`Fault::Refuse`] closes the listening socket and every open connection (connects are refused);
//! switching away binds the same port again. Every access token seen in an upstream answer is kept
//! (see [`FaultProxy::tokens`]) so the suite can scan the logs for each token ever issued.
//!
//! Everything listens on 127.0.0.1 only, every wait is bounded, and everything stops on drop.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
    sync::watch,
};
use tokio_util::sync::CancellationToken;

/// Longest request head or body the proxy accepts (our client sends a few hundred bytes).
const MAX_REQUEST: usize = 1 << 20;
/// Longest a black-holed request is held when the client never gives up.
const BLACK_HOLE_MAX: Duration = Duration::from_secs(120);
/// Upstream (Label Studio) connect + answer limit.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// What the proxy does with each request.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Forward to Label Studio and pass the answer on.
    Pass,
    /// Not listening at all: connects are refused, open connections are closed.
    Refuse,
    /// Accept and read the request, never answer (the client times out).
    BlackHole,
    /// Forward, but hold the answer back this long.
    Slow(Duration),
    /// Forward, then send the answer in small pieces spread over this long.
    Drip(Duration),
    /// Answer with this status and an HTML error page (as a reverse proxy would), with an optional
    /// `Retry-After` header value.
    Status {
        code: u16,
        retry_after: Option<String>,
    },
    /// 200 with an HTML login page.
    Html200,
    /// Forward, then pass on only the first half of the real JSON body (consistent Content-Length).
    TruncatedJson,
    /// Forward, then answer 200 with a JSON body whose `access` is not a string.
    InvalidJson,
    /// 200 `application/json` with a body of this many bytes.
    Oversized(usize),
    /// Forward, send the real head (real Content-Length) and half the body, then close.
    CutMidBody,
}

impl Fault {
    /// Short name for figures and messages.
    pub fn name(&self) -> String {
        match self {
            Fault::Pass => "pass".into(),
            Fault::Refuse => "refuse".into(),
            Fault::BlackHole => "black-hole".into(),
            Fault::Slow(d) => format!("slow-{}ms", d.as_millis()),
            Fault::Drip(d) => format!("drip-{}ms", d.as_millis()),
            Fault::Status { code, retry_after } => match retry_after {
                Some(r) => format!("{code}-retry-after-{r}"),
                None => format!("{code}"),
            },
            Fault::Html200 => "200-html".into(),
            Fault::TruncatedJson => "200-truncated-json".into(),
            Fault::InvalidJson => "200-invalid-json".into(),
            Fault::Oversized(n) => format!("200-oversized-{}KiB", n / 1024),
            Fault::CutMidBody => "cut-mid-body".into(),
        }
    }
}

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// When it arrived.
    pub at: Instant,
    /// Request path.
    pub path: String,
    /// Name of the fault in force.
    pub fault: String,
}

/// Access tokens seen in answers (shared by the proxy and the TLS endpoint).
#[derive(Clone, Default)]
pub struct TokenLog(Arc<Mutex<BTreeSet<String>>>);

impl TokenLog {
    fn capture(&self, path: &str, resp: &Response) {
        if resp.status != 200 || !path.contains("/api/token/refresh") {
            return;
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&resp.body) {
            if let Some(a) = v.get("access").and_then(|a| a.as_str()) {
                self.0.lock().unwrap().insert(a.to_owned());
            }
        }
    }

    /// Every access token seen so far.
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().cloned().collect()
    }
}

struct Shared {
    upstream: SocketAddr,
    fault: watch::Sender<Fault>,
    tokens: TokenLog,
    requests: Mutex<Vec<RequestRecord>>,
}

/// The fault-injecting proxy. Stops (listener and every connection) on drop.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl FaultProxy {
    /// Starts a proxy on a free 127.0.0.1 port in front of `upstream_url` (`http://127.0.0.1:P`).
    pub async fn start(upstream_url: &str) -> FaultProxy {
        let upstream = socket_addr_of(upstream_url);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let (fault, _) = watch::channel(Fault::Pass);
        let shared = Arc::new(Shared {
            upstream,
            fault,
            tokens: TokenLog::default(),
            requests: Mutex::new(Vec::new()),
        });
        let shutdown = CancellationToken::new();
        tokio::spawn(accept_loop(
            Some(listener),
            port,
            shared.clone(),
            shutdown.clone(),
        ));
        FaultProxy {
            port,
            shared,
            shutdown,
        }
    }

    /// `http://127.0.0.1:PORT` (stable across [`Fault::Refuse`]).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Switches the behaviour; applies to every request that arrives from now on.
    pub fn set(&self, fault: Fault) {
        self.shared.fault.send_replace(fault);
    }

    /// The behaviour in force.
    pub fn fault(&self) -> Fault {
        self.shared.fault.borrow().clone()
    }

    /// Every access token Label Studio handed out through this proxy (delivered or not).
    pub fn tokens(&self) -> Vec<String> {
        self.shared.tokens.all()
    }

    /// Every request seen so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `127.0.0.1:P` of an `http(s)://127.0.0.1:P` URL.
pub fn socket_addr_of(url: &str) -> SocketAddr {
    let hostport = url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let addr: SocketAddr = hostport
        .parse()
        .unwrap_or_else(|_| panic!("not a 127.0.0.1:PORT URL: {url}"));
    assert!(addr.ip().is_loopback(), "fault tests stay on loopback");
    addr
}

async fn accept_loop(
    mut first: Option<TcpListener>,
    port: u16,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let mut rx = shared.fault.subscribe();
    loop {
        // Refusing: no listening socket at all.
        while *rx.borrow_and_update() == Fault::Refuse {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
        let listener = match first.take() {
            Some(l) => l,
            None => match rebind(port, &shutdown).await {
                Some(l) => l,
                None => return,
            },
        };
        let conns = shutdown.child_token();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => {
                    if let Ok((s, _)) = r {
                        let _ = s.set_nodelay(true);
                        tokio::spawn(serve_conn(s, shared.clone(), conns.child_token()));
                    }
                }
                r = rx.changed() => {
                    if r.is_err() {
                        return;
                    }
                    if *rx.borrow() == Fault::Refuse {
                        conns.cancel();
                        break; // drops the listener
                    }
                }
            }
        }
    }
}

async fn rebind(port: u16, shutdown: &CancellationToken) -> Option<TcpListener> {
    let t0 = Instant::now();
    loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => return Some(l),
            Err(e) if t0.elapsed() > Duration::from_secs(30) => {
                eprintln!("fault proxy: cannot listen on 127.0.0.1:{port} again: {e}");
                return None;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

async fn serve_conn<S>(mut s: S, shared: Arc<Shared>, kill: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    loop {
        let req = tokio::select! {
            _ = kill.cancelled() => return,
            r = read_request(&mut s, &mut buf) => match r {
                Some(r) => r,
                None => return,
            },
        };
        let fault = shared.fault.borrow().clone();
        shared.requests.lock().unwrap().push(RequestRecord {
            at: Instant::now(),
            path: req.path.clone(),
            fault: fault.name(),
        });
        let keep = tokio::select! {
            _ = kill.cancelled() => return,
            k = respond(&mut s, &shared, &req, &fault) => k,
        };
        if !keep {
            let _ = s.shutdown().await;
            return;
        }
    }
}

/// Answers one request according to `fault`; false when the connection must be closed.
async fn respond<S>(s: &mut S, shared: &Shared, req: &HttpRequest, fault: &Fault) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let forward = || async {
        let resp = forward(shared.upstream, req).await;
        shared.tokens.capture(&req.path, &resp);
        resp
    };
    let ok = |r: std::io::Result<()>| r.is_ok();
    match fault {
        Fault::Pass => {
            let resp = forward().await;
            ok(s.write_all(&render(&resp, false)).await)
        }
        Fault::Refuse => false,
        Fault::BlackHole => {
            // Hold the request until the client gives up (EOF) or the limit; discard anything sent.
            let mut sink = [0u8; 4096];
            let until = tokio::time::Instant::now() + BLACK_HOLE_MAX;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => return false,
                    r = s.read(&mut sink) => match r {
                        Ok(0) | Err(_) => return false,
                        Ok(_) => {}
                    },
                }
            }
        }
        Fault::Slow(d) => {
            let resp = forward().await;
            tokio::time::sleep(*d).await;
            ok(s.write_all(&render(&resp, false)).await)
        }
        Fault::Drip(total) => {
            let bytes = render(&forward().await, false);
            let pieces = 20usize;
            let step = bytes.len().div_ceil(pieces).max(1);
            for chunk in bytes.chunks(step) {
                tokio::time::sleep(*total / pieces as u32).await;
                if s.write_all(chunk).await.is_err() || s.flush().await.is_err() {
                    return false;
                }
            }
            true
        }
        Fault::Status { code, retry_after } => {
            let mut headers = vec![("Content-Type".into(), "text/html".into())];
            if let Some(r) = retry_after {
                headers.push(("Retry-After".into(), r.clone()));
            }
            let body = format!(
                "<html>\r\n<head><title>{code} {r}</title></head>\r\n<body>\r\n<center><h1>{code} {r}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
                r = reason_phrase(*code)
            );
            let resp = Response {
                status: *code,
                reason: reason_phrase(*code).into(),
                headers,
                body: body.into_bytes(),
            };
            ok(s.write_all(&render(&resp, false)).await)
        }
        Fault::Html200 => {
            let resp = Response {
                status: 200,
                reason: "OK".into(),
                headers: vec![("Content-Type".into(), "text/html; charset=utf-8".into())],
                body: b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body><form method=\"post\" action=\"/user/login/\"><input name=\"email\"><input name=\"password\" type=\"password\"></form></body></html>\n".to_vec(),
            };
            ok(s.write_all(&render(&resp, false)).await)
        }
        Fault::TruncatedJson => {
            let mut resp = forward().await;
            let half = resp.body.len() / 2;
            resp.body.truncate(half);
            resp.status = 200;
            resp.reason = "OK".into();
            ok(s.write_all(&render(&resp, false)).await)
        }
        Fault::InvalidJson => {
            let _ = forward().await; // the token is minted (and kept for the log scan), never delivered
            let resp = Response {
                status: 200,
                reason: "OK".into(),
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: br#"{"access": 12345, "detail": ["not", "a", "token"]}"#.to_vec(),
            };
            ok(s.write_all(&render(&resp, false)).await)
        }
        Fault::Oversized(n) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"access\":\"",
                n + 13
            );
            if s.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            let chunk = vec![b'A'; 16 * 1024];
            let mut left = *n;
            while left > 0 {
                let k = left.min(chunk.len());
                // The client stops reading after its cap and drops the connection: stop there.
                match tokio::time::timeout(Duration::from_secs(5), s.write_all(&chunk[..k])).await {
                    Ok(Ok(())) => left -= k,
                    _ => return false,
                }
            }
            ok(s.write_all(b"\"}").await)
        }
        Fault::CutMidBody => {
            let resp = forward().await;
            let full = render(&resp, false);
            let cut = full.len() - resp.body.len() / 2;
            let _ = s.write_all(&full[..cut]).await;
            let _ = s.flush().await;
            false
        }
    }
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Temporarily Unavailable",
        504 => "Gateway Time-out",
        _ => "Error",
    }
}

// ------------------------------------------------------------------ minimal HTTP/1.1

/// A request as read from the client.
#[derive(Clone, Debug)]
pub struct HttpRequest {
    /// Head including the final blank line.
    pub head: Vec<u8>,
    /// Body (`Content-Length` bytes).
    pub body: Vec<u8>,
    /// Request path.
    pub path: String,
}

/// An answer, body already de-chunked.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn parse_request(head: Vec<u8>, body: Vec<u8>) -> HttpRequest {
    let text = String::from_utf8_lossy(&head);
    let path = text
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .to_owned();
    HttpRequest { head, body, path }
}

/// Splits a complete request off the front of `buf`, if there is one. Err when it is malformed.
fn take_request(buf: &mut Vec<u8>) -> Result<Option<HttpRequest>, ()> {
    let Some(end) = find_head_end(buf) else {
        return if buf.len() > MAX_REQUEST {
            Err(())
        } else {
            Ok(None)
        };
    };
    let head_text = String::from_utf8_lossy(&buf[..end]).into_owned();
    if header(&head_text, "transfer-encoding").is_some() {
        return Err(()); // our client never sends chunked requests
    }
    let len: usize = match header(&head_text, "content-length") {
        Some(v) => v.parse().map_err(|_| ())?,
        None => 0,
    };
    if len > MAX_REQUEST {
        return Err(());
    }
    if buf.len() < end + len {
        return Ok(None);
    }
    let head = buf[..end].to_vec();
    let body = buf[end..end + len].to_vec();
    buf.drain(..end + len);
    Ok(Some(parse_request(head, body)))
}

async fn read_request<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<HttpRequest> {
    loop {
        match take_request(buf) {
            Ok(Some(r)) => return Some(r),
            Ok(None) => {}
            Err(()) => return None,
        }
        let mut tmp = [0u8; 8192];
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

fn read_request_sync<S: Read>(s: &mut S) -> Option<HttpRequest> {
    let mut buf = Vec::new();
    loop {
        match take_request(&mut buf) {
            Ok(Some(r)) => return Some(r),
            Ok(None) => {}
            Err(()) => return None,
        }
        let mut tmp = [0u8; 8192];
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

/// The request head for upstream: same request, `Connection: close`.
fn upstream_request(req: &HttpRequest) -> Vec<u8> {
    let text = String::from_utf8_lossy(&req.head);
    let mut out = String::new();
    for (i, line) in text.split("\r\n").enumerate() {
        if line.is_empty() {
            continue;
        }
        let lower = line.to_ascii_lowercase();
        if i > 0 && (lower.starts_with("connection:") || lower.starts_with("keep-alive:")) {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&req.body);
    bytes
}

/// Parses a complete answer (read until EOF). De-chunks chunked bodies.
pub fn parse_response(raw: &[u8]) -> Option<Response> {
    let end = find_head_end(raw)?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    let _version = parts.next()?;
    let status: u16 = parts.next()?.parse().ok()?;
    let reason = parts.next().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let rest = &raw[end..];
    let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        rest.get(..len)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(Response {
        status,
        reason,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// The answer as bytes for the client: framing headers rewritten (Content-Length), keep-alive unless `close`.
pub fn render(resp: &Response, close: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {} {}\r\n", resp.status, resp.reason);
    for (k, v) in &resp.headers {
        let l = k.to_ascii_lowercase();
        if matches!(
            l.as_str(),
            "connection" | "content-length" | "transfer-encoding" | "keep-alive"
        ) {
            continue;
        }
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&resp.body);
    bytes
}

fn bad_gateway() -> Response {
    Response {
        status: 502,
        reason: "Bad Gateway".into(),
        headers: vec![("Content-Type".into(), "text/html".into())],
        body: b"<html><body><h1>502 Bad Gateway</h1></body></html>".to_vec(),
    }
}

async fn forward(upstream: SocketAddr, req: &HttpRequest) -> Response {
    let attempt = async {
        let mut up = tokio::net::TcpStream::connect(upstream).await.ok()?;
        up.write_all(&upstream_request(req)).await.ok()?;
        let mut raw = Vec::new();
        up.read_to_end(&mut raw).await.ok()?;
        parse_response(&raw)
    };
    match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
        Ok(Some(r)) => r,
        _ => bad_gateway(),
    }
}

fn forward_sync(upstream: SocketAddr, req: &HttpRequest) -> Response {
    let attempt = || -> Option<Response> {
        let mut up = std::net::TcpStream::connect_timeout(&upstream, UPSTREAM_TIMEOUT).ok()?;
        up.set_read_timeout(Some(UPSTREAM_TIMEOUT)).ok()?;
        up.set_write_timeout(Some(UPSTREAM_TIMEOUT)).ok()?;
        up.write_all(&upstream_request(req)).ok()?;
        let mut raw = Vec::new();
        up.read_to_end(&mut raw).ok()?;
        parse_response(&raw)
    };
    attempt().unwrap_or_else(bad_gateway)
}

// ------------------------------------------------------------------ TLS endpoint

/// Writes a self-signed certificate (CN and SAN 127.0.0.1/localhost, `CA:FALSE`, serverAuth) and its
/// key into `dir` with the `openssl` CLI; returns (cert.pem, key.pem).
pub fn self_signed_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "keyUsage=critical,digitalSignature",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (the fault suite needs the openssl CLI)");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// An HTTPS front for Label Studio with a self-signed certificate (rustls with the ring provider, no
/// ALPN so clients speak HTTP/1.1). One thread per connection, one request per connection.
pub struct TlsEndpoint {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Access tokens seen.
    pub tokens: TokenLog,
}

impl TlsEndpoint {
    /// Serves `cert`/`key` on a free 127.0.0.1 port, forwarding to `upstream_url`.
    pub fn start(cert: &Path, key: &Path, upstream_url: &str) -> TlsEndpoint {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let upstream = socket_addr_of(upstream_url);
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("read cert")
            .collect::<Result<_, _>>()
            .expect("parse cert");
        let key = PrivateKeyDer::from_pem_file(key).expect("read key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server cert");
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind TLS endpoint");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let tokens = TokenLog::default();
        let thread = {
            let (stop, tokens) = (stop.clone(), tokens.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((tcp, _)) => {
                            let (config, tokens) = (config.clone(), tokens.clone());
                            std::thread::spawn(move || serve_tls(tcp, config, upstream, tokens));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        TlsEndpoint {
            port,
            stop,
            thread: Some(thread),
            tokens,
        }
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_tls(
    tcp: std::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    upstream: SocketAddr,
    tokens: TokenLog,
) {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(10)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // The handshake happens on the first read; a client that rejects the certificate aborts here.
    let Some(req) = read_request_sync(&mut tls) else {
        return;
    };
    let resp = forward_sync(upstream, &req);
    tokens.capture(&req.path, &resp);
    let _ = tls.write_all(&render(&resp, true));
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

// ------------------------------------------------------------------ consumer

/// Seconds since the epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `exp` of a JWT (no verification), None if it is not one.
pub fn jwt_exp(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("exp")?.as_i64()
}

/// `GET path` on a fresh connection (blocking, 5 s limit): status and body. A few hundred
/// microseconds on loopback, so readiness can be sampled finely.
pub fn http_get(base_url: &str, path: &str) -> Option<(u16, String)> {
    let addr = socket_addr_of(base_url);
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let r = parse_response(&raw)?;
    Some((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

/// `GET path` with an `Authorization` header on a fresh connection (blocking, 10 s limit); the status.
pub fn http_status(base_url: &str, path: &str, authorization: &str) -> Option<u16> {
    let addr = socket_addr_of(base_url);
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    parse_response(&raw).map(|r| r.status)
}

/// What a consumer saw.
#[derive(Clone, Debug, Default)]
pub struct ConsumerReport {
    /// Reads that found a published set.
    pub samples: u64,
    /// Reads that found nothing (before the first publish, or a generation removed mid-read).
    pub empty: u64,
    /// Sets whose files disagree with each other.
    pub torn: u64,
    /// Samples holding a token at or past its `exp`.
    pub expired: u64,
    /// API checks that did not answer 200 (token still unexpired by more than a second).
    pub rejected: u64,
    /// API checks made.
    pub api_checks: u64,
    /// Distinct tokens seen.
    pub tokens: BTreeSet<String>,
    /// First few problems, secret-free.
    pub problems: Vec<String>,
    /// How long it ran.
    pub seconds: f64,
}

/// A workload that reads the published set every 20 ms (resolving `..data` once per read) and checks
/// the token it holds against the real API on every new token and at most every `check_every`.
pub struct Consumer {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<ConsumerReport>>,
}

impl Consumer {
    /// Starts reading `dir`; API checks go straight to `ls_url` (not through any proxy).
    pub fn start(dir: &Path, ls_url: &str, check_every: Duration) -> Consumer {
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, ls_url, stop2) = (dir.to_path_buf(), ls_url.to_owned(), stop.clone());
        let handle = std::thread::spawn(move || consume(&dir, &ls_url, check_every, &stop2));
        Consumer {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops and returns what it saw.
    pub fn stop(mut self) -> ConsumerReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().expect("consumer thread")
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn consume(dir: &Path, ls_url: &str, check_every: Duration, stop: &AtomicBool) -> ConsumerReport {
    let mut r = ConsumerReport::default();
    let t0 = Instant::now();
    let mut last_token = String::new();
    let mut last_check: Option<Instant> = None;
    let problem = |r: &mut ConsumerReport, p: String| {
        if r.problems.len() < 5 {
            r.problems.push(p);
        }
    };
    // Bounded: stops when asked, or after 15 minutes whatever happens.
    while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(900) {
        match super::refresher::read_set(dir) {
            None => r.empty += 1,
            Some((token, auth, exp_text)) => {
                r.samples += 1;
                let now = unix_now();
                let exp = jwt_exp(&token);
                let consistent = auth == format!("Bearer {token}")
                    && exp.is_some_and(|e| exp_text == ls_token_refresher::sink::rfc3339(e));
                if !consistent {
                    r.torn += 1;
                    problem(
                        &mut r,
                        format!("torn set at +{:.2}s", t0.elapsed().as_secs_f64()),
                    );
                }
                let exp = exp.unwrap_or(0) as f64;
                if exp <= now {
                    r.expired += 1;
                    problem(
                        &mut r,
                        format!(
                            "expired token held at +{:.2}s ({:.2}s past exp)",
                            t0.elapsed().as_secs_f64(),
                            now - exp
                        ),
                    );
                }
                let due =
                    token != last_token || last_check.is_none_or(|t| t.elapsed() >= check_every);
                if due && exp - now > 1.0 {
                    r.api_checks += 1;
                    last_check = Some(Instant::now());
                    let status = http_status(ls_url, "/api/current-user/whoami", &auth);
                    if status != Some(200) {
                        r.rejected += 1;
                        problem(
                            &mut r,
                            format!(
                                "API answered {status:?} at +{:.2}s for a token valid {:.1}s more",
                                t0.elapsed().as_secs_f64(),
                                exp - now
                            ),
                        );
                    }
                }
                if token != last_token {
                    r.tokens.insert(token.clone());
                    last_token = token;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    r.seconds = t0.elapsed().as_secs_f64();
    r
}

// ------------------------------------------------------------------ tmpfs

/// A tmpfs mounted on a fresh temp dir (needs root); unmounted on drop.
pub struct Tmpfs {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Tmpfs {
    /// `mount -t tmpfs -o size=SIZE,mode=0755 tmpfs <tempdir>`.
    pub fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::Builder::new()
            .prefix("lstr-faults-tmpfs-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let path = dir.path().to_path_buf();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            dir: Some(dir),
            path,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `mount -o remount,OPTS`; retried for a second (a remount read-only fails with EBUSY while a
    /// file is open for writing), then panics.
    pub fn remount(&self, opts: &str) {
        let mut last = String::new();
        for _ in 0..50 {
            let out = Command::new("mount")
                .args(["-o", &format!("remount,{opts}")])
                .arg(&self.path)
                .output()
                .expect("run mount");
            if out.status.success() {
                return;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("mount -o remount,{opts} {}: {last}", self.path.display());
    }

    /// Fills the file system with a file named `name` until ENOSPC; returns its path and size.
    pub fn fill(&self, name: &str) -> (PathBuf, u64) {
        let path = self.path.join(name);
        let mut f = std::fs::File::create(&path).expect("create filler");
        let block = [0u8; 4096];
        let mut written = 0u64;
        // Bounded by the (small) size of the file system.
        for _ in 0..1_000_000 {
            match f.write(&block) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
                    break;
                }
            }
        }
        (path, written)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
        drop(self.dir.take());
    }
}
