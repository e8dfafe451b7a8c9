//! The auth proxy in-process, against a tiny upstream on 127.0.0.1 that records everything it
//! receives: header replacement, hop-by-hop handling, `Host` passthrough and the upstream-host mode
//! with `Location` mapping, the local answers (503 without a token, the stand-in refresh, refusals),
//! protocol abuse (CONNECT, absolute-form, `Transfer-Encoding` + `Content-Length`, oversized heads,
//! silent connections), upstream failures, the 401 report, timeouts and streaming both ways.
//!
//! The proxy is built the way `cmd` builds it: a [`MemorySink`] feeding its watch channel and a
//! [`Health`] whose single slot the test sets. The stock clients and the real Label Studio are
//! proven in `tests/e2e/tests/proxy_*.rs`.

use std::{
    collections::hash_map::DefaultHasher,
    convert::Infallible,
    hash::Hasher,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use ls_token_refresher::{
    clock::SystemClock,
    exchange::LabelStudioArgs,
    health::{Health, Held},
    metrics::Metrics,
    proxy::{Proxy, ProxyArgs},
    reason::Reason,
    refresher::RejectionReport,
    secret::Secret,
    sink::{memory::MemorySink, Sink},
    token::{Authorization, Scheme, TokenSet},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
};
use tokio_util::sync::CancellationToken;

#[path = "support/hostile_targets.rs"]
mod hostile;

/// The token the proxy holds in these tests (not a JWT: the proxy never looks inside).
const TOKEN: &str = "test-access-token-8f3a1c";
/// Lifetime of [`TOKEN`] from the test's start.
const TOKEN_TTL: i64 = 300;

type Body = UnsyncBoxBody<Bytes, Infallible>;

// ------------------------------------------------------------------------------------------------
// The recording upstream

/// One request as the upstream received it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Default)]
struct UpstreamState {
    seen: Mutex<Vec<Seen>>,
    /// Bytes of the body of the request to `/upload` received so far.
    upload_progress: AtomicU64,
    /// `/download` sends its first part, then waits for this before the rest.
    download_gate: Notify,
    /// Connections open to the upstream now, the most at once, and all it accepted.
    open: AtomicUsize,
    open_peak: AtomicUsize,
    accepted: AtomicUsize,
    /// Requests to `/parked` that have arrived; they answer once `unpark` says true.
    parked: AtomicUsize,
    unpark: tokio::sync::watch::Sender<bool>,
}

struct Upstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpstreamState::default());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                st.accepted.fetch_add(1, Ordering::SeqCst);
                let open = st.open.fetch_add(1, Ordering::SeqCst) + 1;
                st.open_peak.fetch_max(open, Ordering::SeqCst);
                tokio::spawn(async move {
                    let counter = st.clone();
                    let service = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(upstream_answer(st, addr, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    counter.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed_unsync());
    *r.status_mut() = status;
    r
}

/// A deterministic byte pattern (so both ends can check a body without keeping it).
fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) * 31 % 251) as u8)
        .collect()
}

fn digest(bytes: &[u8], h: &mut DefaultHasher) {
    h.write(bytes);
}

async fn upstream_answer(
    st: Arc<UpstreamState>,
    me: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    // Routes answer under a `--url` path prefix too.
    let path = parts.uri.path();
    // The test routes live under `/api/t/` (the proxy forwards only the API and file URLs).
    let path = path.strip_prefix("/prefix").unwrap_or(path);
    let path = path.strip_prefix("/api/t").unwrap_or(path).to_owned();
    let mut kept = Vec::new();
    let mut hash = DefaultHasher::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            len += data.len() as u64;
            if path == "/upload" {
                digest(&data, &mut hash);
                st.upload_progress.store(len, Ordering::SeqCst);
            } else {
                kept.extend_from_slice(&data);
            }
        }
    }
    st.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        target: target.clone(),
        headers: parts.headers.clone(),
        body: kept,
    });
    match path.as_str() {
        "/status/401" => full(StatusCode::UNAUTHORIZED, r#"{"detail":"nope"}"#),
        "/redirect" => {
            let mut r = full(StatusCode::FOUND, "");
            r.headers_mut().insert(
                header::LOCATION,
                format!("http://{me}/prefix/landed?x=1").parse().unwrap(),
            );
            r
        }
        "/hold" => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            full(StatusCode::OK, "held")
        }
        "/parked" => {
            st.parked.fetch_add(1, Ordering::SeqCst);
            let _ = st.unpark.subscribe().wait_for(|go| *go).await;
            full(StatusCode::OK, "unparked")
        }
        "/slow-head" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            full(StatusCode::OK, "late")
        }
        "/upload" => full(
            StatusCode::OK,
            format!("{len} {:x}", hash.finish()).into_bytes(),
        ),
        "/drip" => drip(30, Duration::from_millis(100), false),
        "/stall" => drip(3, Duration::from_millis(10), true),
        "/download" => {
            let total: u64 = parts
                .uri
                .query()
                .and_then(|q| q.strip_prefix("n="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            download(st, total)
        }
        _ => {
            let mut r = full(StatusCode::OK, r#"{"ok":true}"#);
            let h = r.headers_mut();
            h.insert(header::CONNECTION, "x-resp-private".parse().unwrap());
            h.insert("x-resp-private", "1".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("x-kept", "1".parse().unwrap());
            r
        }
    }
}

/// Streams `total` pattern bytes: the first [`GATE_AT`] at once, the rest only after
/// `download_gate` is notified (so a proxy that buffered the answer would never deliver the start).
fn download(st: Arc<UpstreamState>, total: u64) -> Response<Body> {
    const PIECE: u64 = 64 * 1024;
    let stream = futures::stream::unfold(0u64, move |sent| {
        let st = st.clone();
        async move {
            if sent >= total {
                return None;
            }
            if sent == GATE_AT.min(total) && sent > 0 {
                st.download_gate.notified().await;
            }
            let end = (sent + PIECE).min(total);
            let end = if sent < GATE_AT {
                end.min(GATE_AT)
            } else {
                end
            };
            let data = Bytes::from(pattern(sent, (end - sent) as usize));
            Some((Ok::<_, Infallible>(Frame::data(data)), end))
        }
    });
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/octet-stream".parse().unwrap(),
    );
    r
}

/// `pieces` pieces of 1000 pattern bytes, `gap` apart; with `hang`, then silence (no end).
fn drip(pieces: u64, gap: Duration, hang: bool) -> Response<Body> {
    let stream = futures::stream::unfold(0u64, move |i| async move {
        if i == pieces {
            if hang {
                std::future::pending::<()>().await;
            }
            return None;
        }
        tokio::time::sleep(gap).await;
        let data = Bytes::from(pattern(i * 1000, 1000));
        Some((Ok::<_, Infallible>(Frame::data(data)), i + 1))
    });
    Response::new(StreamBody::new(stream).boxed_unsync())
}

/// Where the gated download pauses.
const GATE_AT: u64 = 1024 * 1024;

// ------------------------------------------------------------------------------------------------
// The proxy under test

struct Harness {
    proxy: SocketAddr,
    upstream: Upstream,
    health: Health,
    sink: MemorySink,
    rejections: RejectionReport,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct Options {
    url_suffix: &'static str,
    timeout: &'static str,
    upstream_host: bool,
    /// Publish [`TOKEN`] and mark it valid before the first request.
    with_token: bool,
    /// Point the proxy at this URL instead of the recording upstream.
    url: Option<String>,
    /// `--proxy-allow-host` values.
    allow_hosts: &'static [&'static str],
    /// `--proxy-upstream-connections`.
    upstream_connections: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            url_suffix: "",
            timeout: "5s",
            upstream_host: false,
            with_token: true,
            url: None,
            allow_hosts: &[],
            upstream_connections: "64",
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn token_set() -> TokenSet {
    TokenSet {
        auth: Authorization {
            scheme: Scheme::Bearer,
            token: Secret::new(TOKEN),
        },
        expires_at: Some(unix_now() + TOKEN_TTL),
        refreshed_at: unix_now(),
    }
}

impl Harness {
    async fn start(opts: Options) -> Harness {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let upstream = Upstream::start().await;
        let url = opts
            .url
            .clone()
            .unwrap_or_else(|| format!("{}{}", upstream.url(), opts.url_suffix));
        let ls = LabelStudioArgs {
            url: url.parse().unwrap(),
            request_timeout: "10s".parse().unwrap(),
            connect_timeout: "1s".parse().unwrap(),
            ca_file: None,
            validate_path: "/api/current-user/whoami".parse().unwrap(),
            no_validate: false,
            require_https: false,
        };
        let args = ProxyArgs {
            proxy_addr: None,
            proxy_timeout: opts.timeout.parse().unwrap(),
            proxy_upstream_host: opts.upstream_host,
            proxy_allow_hosts: opts
                .allow_hosts
                .iter()
                .map(|h| h.parse().unwrap())
                .collect(),
            proxy_upstream_connections: opts.upstream_connections.parse().unwrap(),
        };
        let (sink, tokens) = MemorySink::new();
        // The proxy's slot first, as `run --proxy-addr --target-secret` has a second one.
        let health = Health::new(Arc::new(SystemClock::new()), &["proxy", "secret"]);
        let rejections = RejectionReport::default();
        let metrics = Arc::new(Metrics::new());
        let proxy = Proxy::new(
            &args,
            &ls,
            tokens,
            health.clone(),
            rejections.clone(),
            metrics.clone(),
        )
        .unwrap();
        let shutdown = CancellationToken::new();
        let (addr, server) = proxy
            .bind("127.0.0.1:0".parse().unwrap(), shutdown.clone())
            .await
            .unwrap();
        tokio::spawn(server);
        let h = Harness {
            proxy: addr,
            upstream,
            health,
            sink,
            rejections,
            metrics,
            shutdown,
        };
        if opts.with_token {
            h.publish_valid().await;
        }
        h
    }

    /// Publishes [`TOKEN`] and marks it valid for [`TOKEN_TTL`].
    async fn publish_valid(&self) {
        self.sink.publish(&token_set()).await.unwrap();
        let now = self.health.clock().now();
        self.health.set_held(
            0,
            Held {
                expires: Some(now.after(Duration::from_secs(TOKEN_TTL as u64))),
                valid: true,
            },
        );
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    fn metric(&self, series: &str) -> f64 {
        self.metrics
            .render()
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Sends raw bytes on a fresh connection and reads until the server closes it (or 5 s pass:
/// then `closed` is false).
async fn raw(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_until_close(&mut s, Duration::from_secs(5)).await
}

async fn read_until_close(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn status_lines(answer: &str) -> Vec<&str> {
    answer
        .split("\r\n")
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .collect()
}

fn json_body(answer: &str) -> serde_json::Value {
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn values<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Forwarding

#[tokio::test]
async fn every_forwarded_request_carries_exactly_our_authorization() {
    let h = Harness::start(Options::default()).await;
    let r = client()
        .post(h.url("/api/projects/7/import?commit_to_project=true&x=%2F"))
        .header(
            header::AUTHORIZATION,
            "Bearer a-stale-token-of-someone-else",
        )
        .header("x-api-key", "a-foreign-key")
        .header("proxy-authorization", "Basic Zm9yZWlnbg==")
        .header("x-custom", "kept")
        .header(header::CONTENT_TYPE, "application/json")
        .body(r#"[{"image":"x"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = h.upstream.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "POST");
    assert_eq!(
        s.target,
        "/api/projects/7/import?commit_to_project=true&x=%2F"
    );
    assert_eq!(
        values(&s.headers, "authorization"),
        [format!("Bearer {TOKEN}")]
    );
    assert!(values(&s.headers, "x-api-key").is_empty());
    assert!(values(&s.headers, "proxy-authorization").is_empty());
    assert_eq!(values(&s.headers, "x-custom"), ["kept"]);
    assert_eq!(values(&s.headers, "content-type"), ["application/json"]);
    assert_eq!(s.body, br#"[{"image":"x"}]"#);
    // The answer carries nothing of ours.
    let body = r.text().await.unwrap();
    assert!(!body.contains(TOKEN));

    // Legacy scheme: `Token`, and still only ours.
    h.sink
        .publish(&TokenSet {
            auth: Authorization {
                scheme: Scheme::Token,
                token: Secret::new("legacy40hex"),
            },
            expires_at: None,
            refreshed_at: unix_now(),
        })
        .await
        .unwrap();
    let r = client()
        .get(h.url("/api/current-user/whoami"))
        .header(header::AUTHORIZATION, "Token placeholder-not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = h.upstream.seen();
    assert_eq!(
        values(&seen[1].headers, "authorization"),
        ["Token legacy40hex"]
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_both_ways() {
    let h = Harness::start(Options::default()).await;
    let req = format!(
        "GET /api/projects/ HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive, x-private\r\nX-Private: secret-hop\r\nKeep-Alive: timeout=9\r\nTE: trailers\r\nTrailer: x-t\r\nUpgrade: websocket\r\nProxy-Connection: keep-alive\r\nX-End-To-End: yes\r\n\r\n",
        h.proxy
    );
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("\r\nx-kept: 1\r\n"), "{answer}");
    assert!(!answer.contains("x-resp-private"), "{answer}");
    assert!(!answer.contains("keep-alive: timeout=5"), "{answer}");
    let seen = h.upstream.seen();
    let got = &seen[0].headers;
    for name in [
        "x-private",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
    ] {
        assert!(values(got, name).is_empty(), "{name} was forwarded");
    }
    assert!(values(got, "connection")
        .iter()
        .all(|v| !v.contains("x-private")));
    assert_eq!(values(got, "x-end-to-end"), ["yes"]);
}

#[tokio::test]
async fn host_passes_through_and_the_path_prefix_is_kept() {
    let h = Harness::start(Options {
        url_suffix: "/prefix",
        ..Options::default()
    })
    .await;
    let r = client()
        .get(h.url("/api/projects/?page=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client().get(h.url("/api/t/redirect")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let seen = h.upstream.seen();
    assert_eq!(seen[0].target, "/prefix/api/projects/?page=2");
    let client_host = h.proxy.to_string();
    assert_eq!(values(&seen[0].headers, "host"), [client_host.as_str()]);
    assert_eq!(
        values(&seen[0].headers, "x-forwarded-host"),
        [client_host.as_str()]
    );
    assert_eq!(values(&seen[0].headers, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values(&seen[0].headers, "x-forwarded-proto"), ["http"]);
    // Host passthrough: Location is left alone (Label Studio built it from our Host already).
    assert_eq!(
        r.headers()[header::LOCATION],
        format!("http://{}/prefix/landed?x=1", h.upstream.addr).as_str()
    );
}

#[tokio::test]
async fn upstream_host_mode_sends_the_upstreams_host_and_maps_location_back() {
    let h = Harness::start(Options {
        url_suffix: "/prefix",
        upstream_host: true,
        ..Options::default()
    })
    .await;
    let r = client().get(h.url("/api/t/redirect")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let seen = h.upstream.seen();
    let up = h.upstream.addr.to_string();
    assert_eq!(values(&seen[0].headers, "host"), [up.as_str()]);
    assert_eq!(
        values(&seen[0].headers, "x-forwarded-host"),
        [h.proxy.to_string().as_str()]
    );
    // `<upstream>/prefix/landed` → `http://<proxy>/landed`: back through the proxy, prefix removed.
    assert_eq!(
        r.headers()[header::LOCATION],
        format!("http://{}/landed?x=1", h.proxy).as_str()
    );
}

// ------------------------------------------------------------------------------------------------
// Local answers

#[tokio::test]
async fn without_a_valid_token_the_answer_is_503_json_and_nothing_is_forwarded() {
    let h = Harness::start(Options {
        with_token: false,
        ..Options::default()
    })
    .await;
    let check = |r: &reqwest::Response| {
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    };
    // Nothing obtained yet.
    let r = client()
        .get(h.url("/api/projects/"))
        .header(header::AUTHORIZATION, "Token placeholder")
        .send()
        .await
        .unwrap();
    check(&r);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "starting");
    assert_eq!(body["status_code"], 503);
    assert_eq!(body["source"], "ls-token-refresher-proxy");
    assert!(body["detail"].as_str().unwrap().contains("no valid"));

    // A token that Label Studio rejected, with the loop's reason (PAT revoked).
    h.publish_valid().await;
    h.health.invalidate_all();
    h.health
        .set_problem(Some((Reason::RevokedPat, Reason::RevokedPat.summary())));
    let r = client().get(h.url("/api/projects/")).send().await.unwrap();
    check(&r);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], Reason::RevokedPat.as_str());
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains(Reason::RevokedPat.summary()));
    // The SDK's refresh is refused the same way (it retries 503s honouring Retry-After).
    let r = client()
        .post(h.url("/api/token/refresh/"))
        .json(&serde_json::json!({"refresh": "placeholder"}))
        .send()
        .await
        .unwrap();
    check(&r);

    // An expired token is no better.
    h.sink.publish(&token_set()).await.unwrap();
    h.health.set_held(
        0,
        Held {
            expires: Some(h.health.clock().now()),
            valid: true,
        },
    );
    let r = client().get(h.url("/api/projects/")).send().await.unwrap();
    check(&r);
    assert!(h.upstream.seen().is_empty(), "forwarded without a token");
    assert_eq!(
        h.metric("ls_token_refresher_proxy_requests_total{code=\"5xx\"}"),
        4.0
    );
}

#[tokio::test]
async fn the_sdks_refresh_is_answered_locally_with_a_standin_mirroring_exp() {
    let h = Harness::start(Options::default()).await;
    let exp = token_set().expires_at.unwrap();
    let mut standins = Vec::new();
    for path in ["/api/token/refresh/", "/api/token/refresh"] {
        let r = client()
            .post(h.url(path))
            .json(&serde_json::json!({"refresh": "placeholder.jwt.key"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let text = r.text().await.unwrap();
        assert!(!text.contains(TOKEN), "the real token left the proxy");
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        let access = body["access"].as_str().unwrap().to_owned();
        let claims = claims(&access);
        // The SDK needs a decodable JWT with a future exp; it then refreshes when we do.
        assert!(
            (claims["exp"].as_i64().unwrap() - exp).abs() <= 1,
            "{claims}"
        );
        assert_eq!(claims["token_type"], "access");
        assert_eq!(claims["iss"], "ls-token-refresher-proxy");
        standins.push(access);
    }
    assert_ne!(standins[0], standins[1]);
    // Token management through the proxy is refused, whatever the spelling.
    for (method, path) in [
        ("GET", "/api/token/"),
        ("POST", "/api/token/rotate/"),
        ("POST", "/api/token/blacklist/"),
        ("GET", "/api/current-user/token"),
        ("POST", "/api/jwt/settings"),
        ("POST", "/api/current-user/reset-token/"),
        ("GET", "/api/token/refresh/"),
    ] {
        let r = client()
            .request(method.parse().unwrap(), h.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{method} {path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["reason"], "refused");
    }
    // Other spellings of them are not canonical: refused before they are classified.
    for path in ["/api/%74oken/rotate/", "/api/projects/../token/rotate/"] {
        let (a, _) = raw(
            h.proxy,
            format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(
            status_lines(&a),
            ["HTTP/1.1 400 Bad Request"],
            "{path}: {a}"
        );
        assert_eq!(json_body(&a)["reason"], "non_canonical", "{path}");
    }
    assert!(
        h.upstream.seen().is_empty(),
        "a token endpoint was forwarded"
    );
    // A stand-in sent back is dropped like any other credential.
    let r = client()
        .get(h.url("/api/current-user/whoami"))
        .bearer_auth(&standins[0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        values(&h.upstream.seen()[0].headers, "authorization"),
        [format!("Bearer {TOKEN}")]
    );
}

/// The stand-in's `exp` is read by a client on this host's clock: it must be when the held token
/// stops working here (the refresh loop's skew-corrected expiry), not Label Studio's claim, which
/// a Label Studio clock running behind would put in the past.
#[tokio::test]
async fn the_standin_expires_on_the_clients_clock_whatever_label_studios_says() {
    let h = Harness::start(Options::default()).await;
    // Label Studio's clock is 400 s behind ours: its `exp` claim is already past for us, though
    // the token has TOKEN_TTL seconds left (as the loop measured).
    h.sink
        .publish(&TokenSet {
            expires_at: Some(unix_now() + TOKEN_TTL - 400),
            ..token_set()
        })
        .await
        .unwrap();
    let exp = standin_exp(&h).await;
    let want = unix_now() + TOKEN_TTL;
    assert!(
        (exp - want).abs() <= 2,
        "stand-in exp {exp}, want about {want}"
    );
}

/// The `exp` of a stand-in the proxy hands the SDK's refresh POST.
async fn standin_exp(h: &Harness) -> i64 {
    let r = client()
        .post(h.url("/api/token/refresh/"))
        .json(&serde_json::json!({"refresh": "placeholder"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    claims(body["access"].as_str().unwrap())["exp"]
        .as_i64()
        .unwrap()
}

fn claims(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// A locally answered request's body is read before the answer, so the client's keep-alive
/// connection stays usable even when the body arrives after the head (as http.client and httpx
/// send them); a body too large to read is answered with `Connection: close` instead.
#[tokio::test]
async fn local_answers_keep_the_connection_usable() {
    let h = Harness::start(Options::default()).await;
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    let body = r#"{"refresh":"placeholder"}"#;
    for round in 0..3 {
        s.write_all(
            format!(
                "POST /api/token/refresh/ HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(body.as_bytes()).await.unwrap();
        let answer = read_one_answer(&mut s).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "round {round}: {answer}"
        );
        assert!(!answer.to_ascii_lowercase().contains("connection: close"));
    }
    // The same connection still carries an ordinary request.
    s.write_all(b"GET /api/t/after HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = read_one_answer(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(h.upstream.seen().len(), 1);

    // 1 MiB sent to a local answer: not read; the answer says the connection closes.
    let big = format!(
        "POST /api/token/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        1024 * 1024
    );
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    s.write_all(big.as_bytes()).await.unwrap();
    s.write_all(&vec![b'x'; 128 * 1024]).await.unwrap();
    let answer = read_one_answer(&mut s).await.to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 403"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
}

/// Reads one answer with a Content-Length body (5 s limit); "" if the connection closed first.
async fn read_one_answer(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if rest.len() >= len {
                return text;
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "no complete answer within 5 s: {}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Protocol abuse

#[tokio::test]
async fn connect_and_absolute_form_targets_are_refused_and_nothing_is_forwarded() {
    let h = Harness::start(Options::default()).await;
    let (a, _) = raw(
        h.proxy,
        b"GET http://example.com/api/projects/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_lines(&a), ["HTTP/1.1 400 Bad Request"], "{a}");
    assert_eq!(json_body(&a)["reason"], "refused");
    let (a, _) = raw(
        h.proxy,
        format!(
            "GET http://{}/api/projects/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            h.upstream.addr, h.upstream.addr
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status_lines(&a), ["HTTP/1.1 400 Bad Request"], "{a}");
    // CONNECT, followed at once by what a tunnel would carry (a TLS ClientHello): 405, and the
    // bytes after it are read as HTTP (garbage: 400), never relayed anywhere.
    let (a, closed) = raw(
        h.proxy,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    )
    .await;
    let statuses = status_lines(&a);
    assert_eq!(statuses[0], "HTTP/1.1 405 Method Not Allowed", "{a}");
    assert!(
        statuses[1..].iter().all(|s| s.starts_with("HTTP/1.1 400")),
        "{a}"
    );
    assert!(closed, "the connection after a refused CONNECT stays open");
    assert!(h.upstream.seen().is_empty(), "{:?}", h.upstream.seen());
}

/// RFC 9112 §6.3: with both `Transfer-Encoding: chunked` and `Content-Length`, hyper frames the
/// body by the chunked coding, drops `Content-Length` and closes the connection after answering,
/// so bytes after the chunked body are never read as a request. Both orders of the two headers.
#[tokio::test]
async fn transfer_encoding_with_content_length_never_smuggles_a_request() {
    let h = Harness::start(Options::default()).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    // CL.TE: Content-Length covers the smuggled request too.
    let chunked = "5\r\nhello\r\n0\r\n\r\n";
    let cl = chunked.len() + smuggled.len();
    let te_cl = [
        format!("POST /api/t/first HTTP/1.1\r\nHost: localhost\r\nContent-Length: {cl}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}{smuggled}"),
        format!("POST /api/t/first HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: {cl}\r\n\r\n{chunked}{smuggled}"),
        // TE.CL: a short Content-Length, the smuggled request inside a chunk.
        format!(
            "POST /api/t/first HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
            smuggled.len()
        ),
    ];
    for (i, req) in te_cl.iter().enumerate() {
        let (a, closed) = raw(h.proxy, req.as_bytes()).await;
        assert_eq!(status_lines(&a), ["HTTP/1.1 200 OK"], "case {i}: {a}");
        assert!(closed, "case {i}: the connection stays open after TE+CL");
    }
    let seen = h.upstream.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for s in &seen {
        assert_eq!(s.target, "/api/t/first");
        assert!(values(&s.headers, "content-length")
            .iter()
            .all(|v| *v != cl.to_string()));
    }
    assert_eq!(seen[0].body, b"hello");
    assert_eq!(seen[1].body, b"hello");
    // The smuggled bytes arrive as body data (framed by us), never as a request.
    assert_eq!(seen[2].body, smuggled.as_bytes());
    assert!(seen.iter().all(|s| !s.target.contains("smuggled")));
}

#[tokio::test]
async fn differing_content_lengths_and_bad_codings_are_400_and_oversized_heads_431() {
    let h = Harness::start(Options::default()).await;
    let (a, closed) = raw(
        h.proxy,
        b"POST /api/t/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 30\r\n\r\nhelloGET /smuggled HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(status_lines(&a), ["HTTP/1.1 400 Bad Request"], "{a}");
    assert!(closed);
    let (a, _) = raw(
        h.proxy,
        b"POST /api/t/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    )
    .await;
    assert_eq!(status_lines(&a), ["HTTP/1.1 400 Bad Request"], "{a}");
    // A head beyond 64 KiB: 431, and the next client is served as usual.
    let big = format!(
        "GET /api/t/x HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let (a, closed) = raw(h.proxy, big.as_bytes()).await;
    assert_eq!(
        status_lines(&a),
        ["HTTP/1.1 431 Request Header Fields Too Large"],
        "{a}"
    );
    assert!(closed);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (a, _) = raw(
        h.proxy,
        format!("GET /api/t/x HTTP/1.1\r\nHost: localhost\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        status_lines(&a),
        ["HTTP/1.1 431 Request Header Fields Too Large"],
        "{a}"
    );
    assert!(h.upstream.seen().is_empty(), "{:?}", h.upstream.seen());
    let r = client().get(h.url("/api/t/fine")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_head_of_exactly_64_kib_passes_and_one_byte_more_is_431() {
    const LIMIT: usize = 64 * 1024;
    let h = Harness::start(Options::default()).await;
    let head = |len: usize| {
        let bare = "GET /api/t/limit HTTP/1.1\r\nHost: localhost\r\nX-Big: \r\n\r\n".len();
        format!(
            "GET /api/t/limit HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
            "a".repeat(len - bare)
        )
    };
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    s.write_all(head(LIMIT).as_bytes()).await.unwrap();
    let a = read_one_answer(&mut s).await;
    assert_eq!(status_lines(&a), ["HTTP/1.1 200 OK"], "{a}");
    let (a, closed) = raw(h.proxy, head(LIMIT + 1).as_bytes()).await;
    assert_eq!(
        status_lines(&a),
        ["HTTP/1.1 431 Request Header Fields Too Large"],
        "{a}"
    );
    assert!(closed, "the connection stays open after a 431");
    assert_eq!(
        h.upstream.seen().len(),
        1,
        "the oversized head was forwarded"
    );
}

// ------------------------------------------------------------------------------------------------
// Upstream failures and rejections

#[tokio::test]
async fn a_401_from_label_studio_reports_the_token_rejected() {
    let h = Harness::start(Options::default()).await;
    let reported = h.rejections.clone();
    let waiter = tokio::spawn(async move { reported.reported().await });
    let r = client().get(h.url("/api/projects/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "a 200 reported a rejection");
    let r = client()
        .get(h.url("/api/t/status/401"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the 401 itself is passed on");
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("no rejection reported after a 401")
        .unwrap();
}

/// Polls `cond` every 10 ms until it holds (panics with `what` after 10 s: something is stuck).
async fn until(what: &str, cond: impl Fn() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn upstream_connections_never_exceed_the_cap_and_are_reused() {
    // 20 concurrent requests that Label Studio holds until told: with a cap of 4, four reach it
    // on four connections and sixteen wait in the proxy; released, all are answered, and the
    // four connections carry every later request (sequential ones too).
    const CAP: usize = 4;
    const BURST: usize = 20;
    let h = Harness::start(Options {
        upstream_connections: "4",
        ..Options::default()
    })
    .await;
    let st = h.upstream.state.clone();
    let c = client();
    let burst = tokio::spawn({
        let c = c.clone();
        let urls: Vec<String> = (0..BURST).map(|_| h.url("/api/t/parked")).collect();
        async move { futures::future::join_all(urls.into_iter().map(|u| c.get(u).send())).await }
    });
    until("the cap's worth of requests arrived upstream", || {
        st.parked.load(Ordering::SeqCst) == CAP
    })
    .await;
    until("the rest queued in the proxy", || {
        h.metric("ls_token_refresher_proxy_upstream_queued") == (BURST - CAP) as f64
    })
    .await;
    assert_eq!(
        h.metric("ls_token_refresher_proxy_upstream_in_flight"),
        CAP as f64
    );
    assert_eq!(st.parked.load(Ordering::SeqCst), CAP, "past the cap");
    assert_eq!(st.open.load(Ordering::SeqCst), CAP);
    st.unpark.send_replace(true);
    for a in burst.await.unwrap() {
        assert_eq!(a.unwrap().status(), 200);
    }
    assert_eq!(st.parked.load(Ordering::SeqCst), BURST);
    for _ in 0..10 {
        let r = c.get(h.url("/api/t/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        st.open_peak.load(Ordering::SeqCst),
        CAP,
        "more connections than the cap"
    );
    assert_eq!(
        st.accepted.load(Ordering::SeqCst),
        CAP,
        "connections were not reused"
    );
    assert_eq!(h.metric("ls_token_refresher_proxy_upstream_in_flight"), 0.0);
    assert_eq!(h.metric("ls_token_refresher_proxy_upstream_queued"), 0.0);
}

/// Starts an upload of `len` bytes on a raw connection, sends `first` of them and stops.
async fn stalled_upload(h: &Harness, len: usize, first: usize) -> TcpStream {
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    let head =
        format!("POST /api/t/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&pattern(0, first)).await.unwrap();
    let progress = &h.upstream.state.upload_progress;
    until("the upload's start reached the upstream", || {
        progress.load(Ordering::SeqCst) == first as u64
    })
    .await;
    s
}

#[tokio::test]
async fn a_stalled_upload_holds_one_slot_and_only_until_the_timeout() {
    // Cap 2: an upload that stops sending holds one connection; requests keep going through the
    // other one meanwhile.
    let h = Harness::start(Options {
        upstream_connections: "2",
        timeout: "2s",
        ..Options::default()
    })
    .await;
    let mut upload = stalled_upload(&h, 1_000_000, 1000).await;
    let c = client();
    for _ in 0..20 {
        let r = c.get(h.url("/api/t/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        h.upstream.state.upload_progress.load(Ordering::SeqCst),
        1000,
        "the upload is still stalled"
    );
    assert_eq!(h.upstream.state.open_peak.load(Ordering::SeqCst), 2);
    let (a, _) = read_until_close(&mut upload, Duration::from_secs(10)).await;
    assert_eq!(status_lines(&a), ["HTTP/1.1 408 Request Timeout"], "{a}");

    // Cap 1: a request behind a stalled upload waits, and is served (not refused) once the
    // silence timeout has answered the upload: the stall blocks others no longer than that.
    let h = Harness::start(Options {
        upstream_connections: "1",
        timeout: "2s",
        ..Options::default()
    })
    .await;
    let mut upload = stalled_upload(&h, 1_000_000, 1000).await;
    let waiting = tokio::spawn(client().get(h.url("/api/t/x")).send());
    until("the request queued behind the upload", || {
        h.metric("ls_token_refresher_proxy_upstream_queued") == 1.0
    })
    .await;
    let (a, _) = read_until_close(&mut upload, Duration::from_secs(10)).await;
    assert_eq!(status_lines(&a), ["HTTP/1.1 408 Request Timeout"], "{a}");
    let r = waiting.await.unwrap().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(h.upstream.state.open_peak.load(Ordering::SeqCst), 1);

    // Cap 1 and a download that keeps moving for three times the timeout: it is never silent,
    // so it keeps its connection, and a request waiting for one gets 503 after the timeout.
    let h = Harness::start(Options {
        upstream_connections: "1",
        timeout: "1s",
        ..Options::default()
    })
    .await;
    let download = client().get(h.url("/api/t/drip")).send().await.unwrap();
    assert_eq!(download.status(), 200);
    let r = client().get(h.url("/api/t/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "busy");
    assert_eq!(download.bytes().await.unwrap().len(), 30_000);
}

/// Sends one request head on a raw connection and returns it (unanswered) for the test to drop.
async fn raw_request(h: &Harness, target: &str) -> TcpStream {
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    let head = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn a_client_that_goes_away_leaves_the_queue_and_frees_its_slot() {
    // Cap 2, both held by parked requests; a third client queues and hangs up. The proxy timeout
    // (60 s) is far beyond the waits here: only noticing the departure removes the queued request,
    // and it is never sent to Label Studio. A client that hangs up while Label Studio works on its
    // request frees the slot too.
    let h = Harness::start(Options {
        upstream_connections: "2",
        timeout: "60s",
        ..Options::default()
    })
    .await;
    let st = h.upstream.state.clone();
    let kept = tokio::spawn(client().get(h.url("/api/t/parked")).send());
    let in_flight = raw_request(&h, "/api/t/parked").await;
    until("both slots taken upstream", || {
        st.parked.load(Ordering::SeqCst) == 2
    })
    .await;
    let queued = raw_request(&h, "/api/t/gone-while-queued").await;
    until("the third request queued", || {
        h.metric("ls_token_refresher_proxy_upstream_queued") == 1.0
    })
    .await;
    drop(queued);
    until("the departed client's request left the queue", || {
        h.metric("ls_token_refresher_proxy_upstream_queued") == 0.0
    })
    .await;
    assert_eq!(h.metric("ls_token_refresher_proxy_upstream_in_flight"), 2.0);
    drop(in_flight);
    until("the departed client's slot was freed", || {
        h.metric("ls_token_refresher_proxy_upstream_in_flight") == 1.0
    })
    .await;
    st.unpark.send_replace(true);
    assert_eq!(kept.await.unwrap().unwrap().status(), 200);
    let after = client().get(h.url("/api/t/after")).send().await.unwrap();
    assert_eq!(after.status(), 200);
    let targets: Vec<String> = h.upstream.seen().into_iter().map(|s| s.target).collect();
    assert!(
        !targets.iter().any(|t| t.contains("gone-while-queued")),
        "a departed client's request was sent: {targets:?}"
    );
    assert!(targets.iter().any(|t| t.ends_with("/after")), "{targets:?}");
}

#[tokio::test]
async fn refused_upstream_is_502_and_a_silent_one_504_with_reasons() {
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let h = Harness::start(Options {
        url: Some(dead),
        ..Options::default()
    })
    .await;
    let r = client().get(h.url("/api/projects/")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "network");
    assert_eq!(
        h.metric("ls_token_refresher_proxy_upstream_errors_total{reason=\"network\"}"),
        1.0
    );

    let h = Harness::start(Options {
        timeout: "1s",
        ..Options::default()
    })
    .await;
    let t0 = std::time::Instant::now();
    let r = client()
        .get(h.url("/api/t/slow-head"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(
        t0.elapsed() < Duration::from_millis(2900),
        "{:?}",
        t0.elapsed()
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "timeout");
    assert_eq!(
        h.metric("ls_token_refresher_proxy_upstream_errors_total{reason=\"timeout\"}"),
        1.0
    );
}

// ------------------------------------------------------------------------------------------------
// Bodies and timeouts

/// An upload's first part reaches Label Studio while the client still holds the rest, and a
/// download's first part reaches the client while Label Studio still holds the rest: neither side
/// is buffered. Then both bodies complete byte for byte.
#[tokio::test]
async fn bodies_stream_both_ways_without_buffering() {
    let h = Harness::start(Options::default()).await;
    const TOTAL: u64 = 8 * 1024 * 1024;
    const FIRST: u64 = 2 * 1024 * 1024;
    let (tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let upload = tokio::spawn(
        client()
            .post(h.url("/api/t/upload"))
            .header(header::CONTENT_LENGTH, TOTAL)
            .body(reqwest::Body::wrap_stream(rx))
            .send(),
    );
    let mut tx = tx;
    let mut sent = 0u64;
    let mut expect = DefaultHasher::new();
    use futures::SinkExt;
    while sent < FIRST {
        let piece = pattern(sent, 64 * 1024);
        digest(&piece, &mut expect);
        sent += piece.len() as u64;
        tx.send(Ok(Bytes::from(piece))).await.unwrap();
    }
    let progress = &h.upstream.state.upload_progress;
    let t0 = std::time::Instant::now();
    while progress.load(Ordering::SeqCst) < FIRST {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the upload's start never reached the upstream ({} bytes): the proxy buffers request bodies",
            progress.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while sent < TOTAL {
        let piece = pattern(sent, 64 * 1024);
        digest(&piece, &mut expect);
        sent += piece.len() as u64;
        tx.send(Ok(Bytes::from(piece))).await.unwrap();
    }
    drop(tx);
    let r = upload.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        format!("{TOTAL} {:x}", expect.finish())
    );

    let r = client()
        .get(h.url(&format!("/api/t/download?n={TOTAL}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut got = 0u64;
    let mut gate_opened = false;
    while let Some(piece) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the download's start never reached the client: the proxy buffers answers")
    {
        let piece = piece.unwrap();
        assert_eq!(piece.as_ref(), pattern(got, piece.len()).as_slice());
        got += piece.len() as u64;
        if got >= GATE_AT && !gate_opened {
            gate_opened = true;
            h.upstream.state.download_gate.notify_one();
        }
    }
    assert_eq!(got, TOTAL);
}

/// `--proxy-timeout` bounds silence, not size: an upload or a download that keeps moving for
/// longer than the timeout completes; an upload that stops is cut with 408 (the client's fault,
/// not counted as Label Studio's), a download that stops is cut mid-body (counted).
#[tokio::test]
async fn the_timeout_bounds_silence_not_the_length_of_a_transfer() {
    let h = Harness::start(Options {
        timeout: "1s",
        ..Options::default()
    })
    .await;
    // 3 s of upload in 100 ms steps: three times the timeout, never silent for long.
    let pieces = 30u64;
    let stream = futures::stream::unfold(0u64, move |i| async move {
        if i == pieces {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((
            Ok::<_, std::io::Error>(Bytes::from(pattern(i * 1000, 1000))),
            i + 1,
        ))
    });
    let r = client()
        .post(h.url("/api/t/upload"))
        .header(header::CONTENT_LENGTH, pieces * 1000)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert!(r
        .text()
        .await
        .unwrap()
        .starts_with(&format!("{} ", pieces * 1000)));

    // A client that stops sending its body: 408, and nothing is counted as an upstream failure.
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    s.write_all(
        b"POST /api/t/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nonly-part",
    )
    .await
    .unwrap();
    let (a, _) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert_eq!(status_lines(&a), ["HTTP/1.1 408 Request Timeout"], "{a}");
    assert_eq!(json_body(&a)["reason"], "client_timeout");
    assert_eq!(
        h.metric("ls_token_refresher_proxy_upstream_errors_total{reason=\"timeout\"}"),
        0.0
    );

    // 3 s of download in 100 ms steps.
    let r = client().get(h.url("/api/t/drip")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.expect("a slow but moving download is cut");
    assert_eq!(body.len(), 30_000);
    // A download that stops: the head and the first pieces arrive, then the body is cut.
    let r = client().get(h.url("/api/t/stall")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let t0 = std::time::Instant::now();
    let cut = r.bytes().await;
    assert!(cut.is_err(), "a stalled download ended normally");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(
        h.metric("ls_token_refresher_proxy_upstream_errors_total{reason=\"timeout\"}"),
        1.0
    );
}

/// A client that connects and sends nothing (or only part of the HTTP/2 preface) is dropped after
/// the header timeout instead of holding a connection slot forever.
#[tokio::test(start_paused = true)]
async fn silent_connections_are_closed() {
    let h = Harness::start(Options {
        with_token: false,
        ..Options::default()
    })
    .await;
    let mut silent = TcpStream::connect(h.proxy).await.unwrap();
    let mut partial = TcpStream::connect(h.proxy).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut idle = TcpStream::connect(h.proxy).await.unwrap();
    idle.write_all(b"GET /api/t/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 503"));
    // Slow loris: a head that never ends, as the first request and after an answered one.
    let mut loris = TcpStream::connect(h.proxy).await.unwrap();
    loris
        .write_all(b"GET /api/t/x HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1")
        .await
        .unwrap();
    let mut loris_later = TcpStream::connect(h.proxy).await.unwrap();
    loris_later
        .write_all(b"GET /api/t/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let n = loris_later.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 503"));
    loris_later
        .write_all(b"GET /api/t/x HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    // Time is paused: the reads below return when the server closes (time auto-advances while
    // every task waits), or fail the test after an hour of virtual time. Closed 30 s (the header
    // timeout) after the connection's last activity, a head still arriving at most 5 s (the
    // drain time) later.
    let t0 = tokio::time::Instant::now();
    for (name, s) in [
        ("silent", &mut silent),
        ("partial preface", &mut partial),
        ("idle keep-alive", &mut idle),
        ("slow first head", &mut loris),
        ("slow next head", &mut loris_later),
    ] {
        let r = tokio::time::timeout(Duration::from_secs(3600), s.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "{name} connection still open"
        );
    }
    assert!(
        t0.elapsed() <= Duration::from_secs(35),
        "closed after {:?}",
        t0.elapsed()
    );
}

// ------------------------------------------------------------------------------------------------
// Request targets, hosts and browsers (security review, issue 14)

/// Issue 14, findings 1, 2 and 7: whatever the spelling, the upstream sees nothing or a canonical
/// path under `--url`'s prefix that is not token management. Raw requests, so nothing on the
/// client side normalises them; targets `http` cannot even parse are sent too (the proxy must
/// refuse them itself).
#[tokio::test]
async fn no_spelling_reaches_token_management_or_leaves_the_prefix() {
    let h = Harness::start(Options {
        url_suffix: "/prefix",
        ..Options::default()
    })
    .await;
    let seed = hostile::corpus_seed();
    let mut targets = hostile::hand_spellings();
    targets.extend(hostile::generated_spellings(seed, 1500));
    let mut answered = 0;
    for target in &targets {
        for method in ["GET", "POST"] {
            let (a, _) = raw(
                h.proxy,
                format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            if !status_lines(&a).is_empty() {
                answered += 1;
            }
        }
    }
    assert!(
        answered > targets.len(),
        "the proxy answered {answered} of {} requests",
        2 * targets.len()
    );
    // The absolute form names another host or the upstream itself: refused either way.
    for target in [
        format!("http://{}/prefix/api/token/", h.upstream.addr),
        "http://evil.example/x".to_owned(),
    ] {
        let (a, _) = raw(
            h.proxy,
            format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(status_lines(&a), ["HTTP/1.1 400 Bad Request"], "{target}");
    }
    let seen = h.upstream.seen();
    for s in &seen {
        if let Some(why) = hostile::escaped(&s.target, "/prefix") {
            panic!("{} {why}", s.method);
        }
    }
    assert!(
        seen.len() >= 100,
        "only {} of {} generated requests were forwarded: the corpus tests refusals only",
        seen.len(),
        2 * targets.len()
    );
    // The corpus did forward something (the property is not vacuous): the plain API paths in it.
    let (a, _) = raw(
        h.proxy,
        b"GET /api/projects/%C3%A9 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_lines(&a), ["HTTP/1.1 200 OK"], "{a}");
    assert_eq!(
        h.upstream.seen().last().unwrap().target,
        "/prefix/api/projects/%C3%A9"
    );
}

/// One request with the given head lines; the status line that came back.
async fn status_of(addr: SocketAddr, request_line: &str, headers: &[&str]) -> String {
    let mut head = format!("{request_line}\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    let (a, _) = raw(addr, head.as_bytes()).await;
    status_lines(&a)
        .first()
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// Issue 14, finding 3: what a browser sends for a page of another site (a form POST, a no-cors
/// fetch, an image) and for a DNS-rebound name is refused before anything is forwarded; API
/// clients (which send neither `Origin` nor `Sec-Fetch-*`) and names given with
/// `--proxy-allow-host` pass. The header sets are Chromium's for each case.
#[tokio::test]
async fn browser_requests_for_other_sites_and_rebound_names_are_refused() {
    let h = Harness::start(Options {
        allow_hosts: &["ls-proxy.team.svc"],
        ..Options::default()
    })
    .await;
    let port = h.proxy.port();
    let us = format!("Host: 127.0.0.1:{port}");
    let refused: Vec<(&str, Vec<String>)> = vec![
        (
            "cross-site form POST",
            vec![
                us.clone(),
                "Origin: https://evil.example".into(),
                "Content-Type: application/x-www-form-urlencoded".into(),
                "Sec-Fetch-Site: cross-site".into(),
                "Sec-Fetch-Mode: navigate".into(),
                "Sec-Fetch-Dest: document".into(),
            ],
        ),
        (
            "no-cors fetch",
            vec![
                us.clone(),
                "Origin: https://evil.example".into(),
                "Sec-Fetch-Site: cross-site".into(),
                "Sec-Fetch-Mode: no-cors".into(),
                "Sec-Fetch-Dest: empty".into(),
            ],
        ),
        (
            "image GET (no Origin)",
            vec![
                us.clone(),
                "Sec-Fetch-Site: cross-site".into(),
                "Sec-Fetch-Mode: no-cors".into(),
                "Sec-Fetch-Dest: image".into(),
            ],
        ),
        (
            "sandboxed page (Origin: null)",
            vec![us.clone(), "Origin: null".into()],
        ),
        (
            "older browser, Origin only",
            vec![us.clone(), "Origin: http://evil.example:8080".into()],
        ),
        (
            "DNS rebinding (same-origin to the attacker's name)",
            vec![
                format!("Host: rebind.evil.example:{port}"),
                format!("Origin: http://rebind.evil.example:{port}"),
                "Sec-Fetch-Site: same-origin".into(),
                "Sec-Fetch-Mode: cors".into(),
            ],
        ),
        (
            "rebound name, no Origin",
            vec![format!("Host: rebind.evil.example:{port}")],
        ),
        ("no Host", vec![]),
        ("two Hosts", vec![us.clone(), "Host: evil.example".into()]),
    ];
    for (what, headers) in &refused {
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let status = status_of(h.proxy, "POST /api/projects/ HTTP/1.1", &headers).await;
        assert!(
            [
                "HTTP/1.1 403 Forbidden",
                "HTTP/1.1 421 Misdirected Request",
                "HTTP/1.1 400 Bad Request"
            ]
            .contains(&status.as_str()),
            "{what}: {status}"
        );
    }
    assert!(h.upstream.seen().is_empty(), "{:?}", h.upstream.seen());
    for (what, headers) in [
        (
            "python-requests",
            vec![us.clone(), "User-Agent: python-requests/2.32".into()],
        ),
        (
            "localhost with a port-forward's port",
            vec!["Host: localhost:18418".to_owned()],
        ),
        (
            "a Service name",
            vec!["Host: ls-proxy.team.svc:9418".to_owned()],
        ),
        (
            "a page served by the proxy's own origin",
            vec![
                us.clone(),
                format!("Origin: http://127.0.0.1:{port}"),
                "Sec-Fetch-Site: same-origin".into(),
            ],
        ),
        (
            "typed into the address bar",
            vec![us.clone(), "Sec-Fetch-Site: none".into()],
        ),
    ] {
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let status = status_of(h.proxy, "GET /api/projects/ HTTP/1.1", &headers).await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{what}");
    }
    assert_eq!(h.upstream.seen().len(), 5);
}

/// Issue 14, finding 9: the stand-in's `exp` is the proxy's own token's, not the earliest of all
/// sinks: a Secret sink still holding an older token (its write failing) must not make every
/// stand-in expire with it (the SDK would then refresh before every call).
#[tokio::test]
async fn the_standin_follows_the_proxys_token_not_another_sinks() {
    let h = Harness::start(Options::default()).await;
    let now = h.health.clock().now();
    h.health.set_held(
        1,
        Held {
            expires: Some(now.after(Duration::from_secs(5))),
            valid: true,
        },
    );
    let exp = standin_exp(&h).await;
    let want = unix_now() + TOKEN_TTL;
    assert!(
        (exp - want).abs() <= 2,
        "stand-in exp {exp}, the proxy's token expires at {want}"
    );
}

/// Issue 14, finding 6: an HTTP/2 connection that is idle (after its preface and settings, or
/// after its requests) is closed after the header timeout, like an HTTP/1 keep-alive one, so idle
/// HTTP/2 clients cannot hold every connection slot.
#[tokio::test(start_paused = true)]
async fn idle_http2_connections_are_closed() {
    let h = Harness::start(Options::default()).await;
    // Preface + an empty SETTINGS frame, then nothing.
    let mut idle = TcpStream::connect(h.proxy).await.unwrap();
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // A real HTTP/2 client that made a request and keeps its connection.
    let c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .pool_idle_timeout(None)
        .build()
        .unwrap();
    let r = c.get(h.url("/api/projects/")).send().await.unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    assert_eq!(h.metric("ls_token_refresher_proxy_connections"), 2.0);
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(3600), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle HTTP/2 connection is still open");
    // The client's connection is closed by the proxy too (virtual time runs on while waiting).
    let mut waited = 0;
    while h.metric("ls_token_refresher_proxy_connections") > 0.0 && waited < 3600 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        waited += 1;
    }
    assert_eq!(h.metric("ls_token_refresher_proxy_connections"), 0.0);
    drop(c);
}
