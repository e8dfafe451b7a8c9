//! A small HTTP/1.1 proxy of our own that sits between the real `ls-token-refresher` binary and a
//! real Label Studio and misbehaves on demand.
//!
//! Each request is forwarded on its own upstream connection (`Connection: close`), the answer is read
//! in full, and then — depending on the [`Fault`] in force *when the request arrived* — passed on,
//! delayed, dripped, replaced, truncated or never answered. Switching to [`Fault::Refuse`] closes the
//! listening socket and every open connection (connects are refused); switching away binds the same
//! port again. A fault can be limited to one path prefix ([`FaultProxy::scope`]). Every access token
//! seen in an upstream answer is kept (see [`FaultProxy::tokens`]) so the suite can scan the logs for
//! each token ever issued, and every request's path and header names (never values) are recorded.
//! Chunked request bodies are passed on with a `Content-Length`. Keep-alive to the client is
//! preserved.
//!
//! Listens on 127.0.0.1 only, every wait is bounded, and it stops on drop.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
    sync::watch,
};
use tokio_util::sync::CancellationToken;

use crate::http1::{
    forward, read_request, render, socket_addr_of, HttpRequest, Response, TokenLog,
};

/// Longest a black-holed request is held when the client never gives up.
const BLACK_HOLE_MAX: Duration = Duration::from_secs(120);

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
        /// The status code.
        code: u16,
        /// The `Retry-After` value, if any.
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
    /// Forward (Label Studio acts on the request), then close without a byte of the answer: an
    /// answer lost after the server committed.
    DropAnswer,
    /// Forward, write the whole answer, then SIGKILL this process at once: a crash right after
    /// the answer arrived, before the client could act on it.
    AnswerThenKill(u32),
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
            Fault::DropAnswer => "drop-answer".into(),
            Fault::AnswerThenKill(_) => "answer-then-kill".into(),
        }
    }
}

/// One request as the proxy saw it. It is recorded once it has arrived in full (head and body).
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// When it arrived.
    pub at: Instant,
    /// Request path.
    pub path: String,
    /// Name of the fault in force.
    pub fault: String,
    /// Bytes of the request (head and body) that arrived.
    pub bytes: usize,
    /// A complete answer was written back (false while it is being handled, and for good under
    /// [`Fault::BlackHole`], [`Fault::CutMidBody`] or when the client went away first).
    pub answered: bool,
    /// When the client closed the connection while its request was held ([`Fault::BlackHole`]).
    pub client_gone: Option<Instant>,
    /// Names of the request's header fields, lower case, in order (never values).
    pub header_names: Vec<String>,
}

struct Shared {
    /// Every `refresh` (a new PAT) seen in an answer of `/api/token/rotate/`, delivered or not.
    rotated: Mutex<Vec<String>>,
    upstream: SocketAddr,
    fault: watch::Sender<Fault>,
    tokens: TokenLog,
    requests: Mutex<Vec<RequestRecord>>,
    /// Only requests whose path starts with this meet the fault (None: every request).
    scope: Mutex<Option<String>>,
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
            rotated: Mutex::new(Vec::new()),
            upstream,
            fault,
            tokens: TokenLog::default(),
            requests: Mutex::new(Vec::new()),
            scope: Mutex::new(None),
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

    /// Limits the fault to requests whose path starts with `prefix` (the others pass); None: every
    /// request. [`Fault::Refuse`] closes the listener whatever the scope.
    pub fn scope(&self, prefix: Option<&str>) {
        *self.shared.scope.lock().unwrap() = prefix.map(str::to_owned);
    }

    /// The behaviour in force.
    pub fn fault(&self) -> Fault {
        self.shared.fault.borrow().clone()
    }

    /// Every access token Label Studio handed out through this proxy (delivered or not).
    pub fn tokens(&self) -> Vec<String> {
        self.shared.tokens.all()
    }

    /// Every new PAT Label Studio answered a rotation with through this proxy (delivered or not).
    pub fn rotated_pats(&self) -> Vec<String> {
        self.shared.rotated.lock().unwrap().clone()
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
        let fault = match &*shared.scope.lock().unwrap() {
            Some(prefix) if !req.path.starts_with(prefix.as_str()) => Fault::Pass,
            _ => shared.fault.borrow().clone(),
        };
        let rec = {
            let mut reqs = shared.requests.lock().unwrap();
            reqs.push(RequestRecord {
                at: Instant::now(),
                path: req.path.clone(),
                fault: fault.name(),
                bytes: req.head.len() + req.body.len(),
                answered: false,
                client_gone: None,
                header_names: header_names(&req.head),
            });
            reqs.len() - 1
        };
        let keep = tokio::select! {
            _ = kill.cancelled() => return,
            k = respond(&mut s, &shared, &req, &fault, rec) => k,
        };
        // Every branch of `respond` keeps the connection exactly when it wrote a whole answer.
        shared.requests.lock().unwrap()[rec].answered = keep;
        if !keep {
            let _ = s.shutdown().await;
            return;
        }
    }
}

fn header_names(head: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(head)
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, _)| k.trim().to_ascii_lowercase())
        .collect()
}

/// Answers one request (record number `rec`) according to `fault`; true when a whole answer was
/// written and the connection can be kept, false when it must be closed.
async fn respond<S>(
    s: &mut S,
    shared: &Shared,
    req: &HttpRequest,
    fault: &Fault,
    rec: usize,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let forward = || async {
        let resp = forward(shared.upstream, req).await;
        shared.tokens.capture(&req.path, &resp);
        if req.path.starts_with("/api/token/rotate") {
            if let Some(p) = serde_json::from_slice::<serde_json::Value>(&resp.body)
                .ok()
                .and_then(|v| v["refresh"].as_str().map(str::to_owned))
            {
                shared.rotated.lock().unwrap().push(p);
            }
        }
        resp
    };
    let ok = |r: std::io::Result<()>| r.is_ok();
    match fault {
        Fault::Pass => {
            let resp = forward().await;
            ok(s.write_all(&render(&resp, false)).await)
        }
        Fault::Refuse => false,
        Fault::DropAnswer => {
            let _ = forward().await;
            false
        }
        Fault::AnswerThenKill(pid) => {
            let resp = forward().await;
            let written =
                s.write_all(&render(&resp, false)).await.is_ok() && s.flush().await.is_ok();
            // kill(2) directly: microseconds, while the client still has to read the answer and
            // make its next request (a `kill` process would take milliseconds to start).
            if let Some(p) = rustix::process::Pid::from_raw(*pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
            written
        }
        Fault::BlackHole => {
            // Hold the request until the client gives up (EOF) or the limit; discard anything sent.
            let mut sink = [0u8; 4096];
            let until = tokio::time::Instant::now() + BLACK_HOLE_MAX;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => return false,
                    r = s.read(&mut sink) => match r {
                        Ok(0) | Err(_) => {
                            shared.requests.lock().unwrap()[rec].client_gone = Some(Instant::now());
                            return false;
                        }
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
