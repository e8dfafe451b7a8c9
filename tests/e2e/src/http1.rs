//! Just enough HTTP/1.1 for the fault proxy and the TLS endpoint (request heads, `Content-Length`
//! bodies, chunked answers, keep-alive), forwarding to an upstream on a fresh connection, and two
//! blocking one-shot GETs that sample a server in a few hundred microseconds on loopback.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Longest request head or body accepted (our client sends a few hundred bytes).
const MAX_REQUEST: usize = 1 << 20;
/// Upstream (Label Studio) connect + answer limit.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// Body.
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
    if let Some(te) = header(&head_text, "transfer-encoding") {
        if !te.eq_ignore_ascii_case("chunked") {
            return Err(());
        }
        // Chunked (the auth proxy forwards bodies of unknown length so): passed on with a
        // Content-Length, which every upstream understands (Label Studio's dev server does not
        // read chunked request bodies).
        let Some((body, used)) = chunked_body(&buf[end..])? else {
            return if buf.len() > MAX_REQUEST {
                Err(())
            } else {
                Ok(None)
            };
        };
        let mut head: String = head_text
            .split("\r\n")
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                !l.is_empty()
                    && !l.starts_with("transfer-encoding:")
                    && !l.starts_with("content-length:")
            })
            .map(|l| format!("{l}\r\n"))
            .collect();
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        buf.drain(..end + used);
        return Ok(Some(parse_request(head.into_bytes(), body)));
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

/// A complete chunked body at the start of `rest`: (decoded body, bytes used); None while
/// incomplete; Err when malformed or too large.
fn chunked_body(rest: &[u8]) -> Result<Option<(Vec<u8>, usize)>, ()> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = rest[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&rest[at..at + line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| ())?;
        if size > MAX_REQUEST || body.len() + size > MAX_REQUEST {
            return Err(());
        }
        at += line_end + 2;
        if size == 0 {
            // No trailers from our clients: the final CRLF.
            return Ok((rest.len() >= at + 2).then(|| (body, at + 2)));
        }
        if rest.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[at..at + size]);
        at += size + 2;
    }
}

/// Reads the next request from `s` (`buf` keeps what arrived beyond it); None at EOF, on an error
/// or a malformed request.
pub async fn read_request<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Option<HttpRequest> {
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

/// Reads one request from a blocking stream; None at EOF, on an error or a malformed request.
pub fn read_request_sync<S: Read>(s: &mut S) -> Option<HttpRequest> {
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

/// The 502 page the harness answers with when the upstream fails.
pub fn bad_gateway() -> Response {
    Response {
        status: 502,
        reason: "Bad Gateway".into(),
        headers: vec![("Content-Type".into(), "text/html".into())],
        body: b"<html><body><h1>502 Bad Gateway</h1></body></html>".to_vec(),
    }
}

/// Forwards `req` to `upstream` on a fresh connection and reads the whole answer (502 if that fails
/// or takes longer than 30 s).
pub async fn forward(upstream: SocketAddr, req: &HttpRequest) -> Response {
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

/// [`forward`], blocking.
pub fn forward_sync(upstream: SocketAddr, req: &HttpRequest) -> Response {
    exchange_sync(
        upstream,
        UPSTREAM_TIMEOUT,
        UPSTREAM_TIMEOUT,
        &upstream_request(req),
    )
    .unwrap_or_else(bad_gateway)
}

/// Sends `request` on a fresh blocking connection and reads the answer until EOF.
fn exchange_sync(
    addr: SocketAddr,
    connect_limit: Duration,
    io_limit: Duration,
    request: &[u8],
) -> Option<Response> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, connect_limit).ok()?;
    s.set_read_timeout(Some(io_limit)).ok()?;
    s.set_write_timeout(Some(io_limit)).ok()?;
    s.write_all(request).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    parse_response(&raw)
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
    assert!(addr.ip().is_loopback(), "the harness stays on loopback");
    addr
}

/// Access tokens seen in answers (shared by the proxy and the TLS endpoint).
#[derive(Clone, Default)]
pub struct TokenLog(Arc<Mutex<BTreeSet<String>>>);

impl TokenLog {
    /// Keeps the `access` token of a 200 answer to `/api/token/refresh`.
    pub fn capture(&self, path: &str, resp: &Response) {
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

/// `GET path` on a fresh connection (blocking, 5 s limit): status and body. A few hundred
/// microseconds on loopback, so readiness can be sampled finely.
pub fn http_get(base_url: &str, path: &str) -> Option<(u16, String)> {
    let r = get_once(base_url, path, None, Duration::from_secs(5))?;
    Some((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

/// `GET path` with an `Authorization` header on a fresh connection (blocking, 10 s limit); the status.
pub fn http_status(base_url: &str, path: &str, authorization: &str) -> Option<u16> {
    get_once(base_url, path, Some(authorization), Duration::from_secs(10)).map(|r| r.status)
}

fn get_once(
    base_url: &str,
    path: &str,
    authorization: Option<&str>,
    io_limit: Duration,
) -> Option<Response> {
    let addr = socket_addr_of(base_url);
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    exchange_sync(addr, Duration::from_secs(5), io_limit, request.as_bytes())
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for forms and query strings).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
