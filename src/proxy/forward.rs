//! One request through the proxy: refuse what a reverse proxy for one upstream must not do,
//! answer the token endpoints locally, attach the current token, stream the request to Label
//! Studio and its answer back.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{
    header::{self, HeaderMap, HeaderName, HeaderValue},
    Method, Request, Response, StatusCode, Version,
};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;

pub(crate) use super::upstream::Failure;
use tokio::sync::watch;

use super::{
    client::Peer,
    standin,
    target::{self, Route},
    Shared,
};
use crate::{health::Held, reason::Reason, sink::memory::MemorySink, token::TokenSet};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every answer: a local JSON document or Label Studio's streamed body.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// `Retry-After` (seconds) when no valid token is held: the refresh loop probes Label Studio
/// every 2 s during an outage, so asking clients to wait longer would only delay them.
const RETRY_AFTER_SECS: u64 = 2;

/// Most of a locally answered request's body that is read (to keep the connection usable): the
/// SDK's refresh POST carries a few hundred bytes; nothing answered here needs more.
const LOCAL_BODY_MAX: usize = 64 * 1024;
/// Longest wait for that body (its head has arrived; the rest is normally in flight).
const LOCAL_BODY_WAIT: Duration = Duration::from_secs(5);

/// Lifetime of a stand-in while the held token is a legacy one (which has no expiry).
const LEGACY_STANDIN_SECS: i64 = 3600;

// Header names checked once at compile time (`from_static` at run time validates every call).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Handles one request: every problem is an HTTP answer.
pub(super) async fn handle(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let resp = route(&shared, &peer, req, started).await;
    let class = match resp.status().as_u16() / 100 {
        1 => 0,
        2 => 1,
        3 => 2,
        4 => 3,
        _ => 4,
    };
    shared.answered[class].inc();
    resp
}

async fn route(
    shared: &Arc<Shared>,
    peer: &Peer,
    req: Request<Incoming>,
    started: Instant,
) -> Response<ProxyBody> {
    match decide(shared, peer.local, &req) {
        Decision::Forward(auth, url) => forward(shared, peer, req, auth, url, started).await,
        Decision::Answer(answer) => finish_local(req.into_body(), answer).await,
    }
}

/// Whether a request goes to Label Studio, and with which token.
enum Decision {
    /// Forward to this target with this token (its header value).
    Forward(HeaderValue, http::uri::PathAndQuery),
    /// Answer here.
    Answer(Response<ProxyBody>),
}

fn decide(shared: &Shared, local: IpAddr, req: &Request<Incoming>) -> Decision {
    if let Some(refused) = not_for_one_upstream(req, standin::ISSUER, "Label Studio") {
        return Decision::Answer(refused);
    }
    if let Err(refusal) = shared.admission.admit(req, local) {
        return Decision::Answer(json_error(refusal.status(), "refused", refusal.detail()));
    }
    let path = req.uri().path();
    if let Err(why) = target::check(path) {
        return Decision::Answer(json_error(
            StatusCode::BAD_REQUEST,
            "non_canonical",
            why.detail(),
        ));
    }
    match target::route(req.method(), path) {
        Route::LocalRefresh => return Decision::Answer(local_refresh(shared)),
        Route::Blocked => {
            return Decision::Answer(json_error(
                StatusCode::FORBIDDEN,
                "refused",
                "token management and authentication settings are not available through the proxy (it holds the credential so you do not have to)",
            ))
        }
        Route::Outside => {
            return Decision::Answer(json_error(
                StatusCode::FORBIDDEN,
                "refused",
                "only Label Studio's API and file URLs are forwarded (api/, data/, storage-data/, tasks|projects/<id>/resolve|presign/, health): web pages are not",
            ))
        }
        Route::Forward => {}
    }
    // What was classified is what is sent: the URL library must not change the path.
    let Some(url) = shared.http.target(req.uri(), path) else {
        return Decision::Answer(json_error(
            StatusCode::BAD_REQUEST,
            "non_canonical",
            "the request path cannot be sent to Label Studio unchanged",
        ));
    };
    match current(shared) {
        Some(auth) => Decision::Forward(auth, url),
        None => Decision::Answer(unavailable(shared)),
    }
}

/// Refuses what a reverse proxy for one `upstream` must not do: `CONNECT`, and HTTP/1
/// absolute-form targets (a forward proxy's); `source` names who answers.
pub(crate) fn not_for_one_upstream<B>(
    req: &Request<B>,
    source: &'static str,
    upstream: &str,
) -> Option<Response<ProxyBody>> {
    if req.method() == Method::CONNECT {
        return Some(json_error_from(
            source,
            StatusCode::METHOD_NOT_ALLOWED,
            "refused",
            &format!("CONNECT is not supported: this proxy only forwards to {upstream}"),
        ));
    }
    if req.version() < Version::HTTP_2 && req.uri().scheme().is_some() {
        return Some(json_error_from(
            source,
            StatusCode::BAD_REQUEST,
            "refused",
            &format!("absolute-form request targets are refused: this is not a forward proxy; send requests as to {upstream} itself"),
        ));
    }
    None
}

/// Reads what the client sent along with a locally answered request before answering: hyper
/// closes a connection whose request body was left unread (without saying so when the body had
/// not arrived yet, so the client's next request on it fails). A body too large or too slow to
/// read is left, and the answer says the connection closes.
pub(crate) async fn finish_local(
    body: Incoming,
    mut answer: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let read_all = async {
        let mut body = body;
        let mut read = 0usize;
        while let Some(frame) = body.frame().await {
            read += frame.ok()?.data_ref().map_or(0, Bytes::len);
            if read > LOCAL_BODY_MAX {
                return None;
            }
        }
        Some(())
    };
    let done = matches!(
        tokio::time::timeout(LOCAL_BODY_WAIT, read_all).await,
        Ok(Some(()))
    );
    if !done {
        answer
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    answer
}

/// What the proxy's own sink holds, if it is valid now. Judged on the proxy's slot, not on every
/// sink's: a failing Secret sink must not change what the proxy serves or the stand-ins' expiry.
fn held(shared: &Shared) -> Option<Held> {
    shared.health.held_valid(MemorySink::KIND)
}

/// The current token's header value, if the token is valid now.
fn current(shared: &Shared) -> Option<HeaderValue> {
    held(shared)?;
    shared.auth_header.get()
}

/// The current token's `Authorization` value, made once per token rather than once per request
/// (a copy of the token, a `format!` and a validation pass each time, on every request).
pub(super) struct AuthHeader(
    std::sync::Mutex<(watch::Receiver<Option<TokenSet>>, Option<HeaderValue>)>,
);

impl AuthHeader {
    /// Follows `tokens` (the memory sink's channel).
    pub(super) fn new(tokens: watch::Receiver<Option<TokenSet>>) -> AuthHeader {
        AuthHeader(std::sync::Mutex::new((tokens, None)))
    }

    /// The value for the token published last (None: none yet, or one that cannot be a header
    /// value). Marked sensitive: hyper's HPACK never indexes it and `Debug` does not show it.
    fn get(&self) -> Option<HeaderValue> {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, value) = &mut *guard;
        if tokens.has_changed().unwrap_or(false) || value.is_none() {
            *value = tokens.borrow_and_update().as_ref().and_then(|set| {
                let mut v = HeaderValue::from_str(set.auth.header_value().expose()).ok()?;
                v.set_sensitive(true);
                Some(v)
            });
        }
        value.clone()
    }
}

fn local_refresh(shared: &Shared) -> Response<ProxyBody> {
    let Some(held) = held(shared) else {
        return unavailable(shared);
    };
    let now = crate::clock::unix_now() as i64;
    // The client reads `exp` on this host's clock: when the proxy's token stops working here, as
    // the refresh loop measured it (monotonic, corrected for Label Studio's clock), so the client
    // refreshes when we do even if Label Studio's `exp` claim is skewed. A legacy token never
    // expires; the stand-in then lasts an hour (the SDK asks again). Saturating: the expiry comes
    // from Label Studio's claims, and no claim may make this wrap.
    let left = match held.expires {
        Some(at) => {
            i64::try_from(at.since(shared.health.clock().now()).as_secs()).unwrap_or(i64::MAX)
        }
        None => LEGACY_STANDIN_SECS,
    };
    let body = serde_json::json!({ "access": standin::token(now.saturating_add(left), now) });
    json(StatusCode::OK, &body)
}

fn unavailable(shared: &Shared) -> Response<ProxyBody> {
    let (reason, summary) = shared
        .health
        .problem()
        .map(|(r, s)| (r.as_str(), s))
        .unwrap_or(("starting", "no token has been obtained yet"));
    let mut resp = json(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({
            "detail": format!("no valid Label Studio token is held: {summary}"),
            "reason": reason,
            "status_code": 503,
            "source": standin::ISSUER,
        }),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    resp
}

async fn forward(
    shared: &Arc<Shared>,
    peer: &Peer,
    req: Request<Incoming>,
    auth: HeaderValue,
    url: http::uri::PathAndQuery,
    started: Instant,
) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let client_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let mut headers = outgoing_headers(parts.headers, peer);
    if let Some(h) = &client_host {
        headers.insert(X_FORWARDED_HOST, h.clone());
        if !shared.upstream_host {
            // Label Studio builds absolute URLs (pagination `next`) from Host: they must lead
            // back through us (docs/consumers.md).
            headers.insert(header::HOST, h.clone());
        }
    }
    headers.insert(header::AUTHORIZATION, auth);
    let prepared = started.elapsed();
    let sent = shared
        .http
        .send(parts.method, url, headers, body, peer.departure.as_ref());
    let resp = match sent.await {
        Ok(r) => r,
        Err(f) => {
            let (resp, reason) =
                failure_answer(f, standin::ISSUER, "Label Studio", "--proxy-timeout");
            if let Some(reason) = reason {
                shared
                    .metrics
                    .proxy_upstream_errors_total
                    .with_label_values(&[reason.as_str()])
                    .inc();
            }
            return resp;
        }
    };
    let answered = Instant::now();
    if resp.status() == StatusCode::UNAUTHORIZED {
        // Our token was refused: the loop checks it and refreshes at once if so (rate-limited).
        shared.rejections.token_rejected();
    }
    let mut resp = shared.http.stream(resp, Some(shared.answer_cut.clone()));
    if shared.upstream_host {
        if let Some(h) = &client_host {
            map_location_back(resp.headers_mut(), shared.upstream.as_str(), h);
        }
    }
    shared
        .metrics
        .proxy_added_latency_seconds
        .observe((prepared + answered.elapsed()).as_secs_f64());
    resp
}

/// The request headers to send upstream: hop-by-hop headers and every credential the client
/// sent (`Authorization`, `X-Api-Key`; `Proxy-Authorization` is hop-by-hop) dropped, `Host` and
/// `Expect` left to the upstream client, `X-Forwarded-For`/`-Proto` set.
pub(crate) fn outgoing_headers(mut headers: HeaderMap, peer: &Peer) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    for name in [
        header::AUTHORIZATION,
        header::HOST,
        header::EXPECT,
        X_API_KEY,
    ] {
        headers.remove(name);
    }
    if let Some(v) = &peer.forwarded_for {
        headers.append(X_FORWARDED_FOR, v.clone());
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    headers
}

/// The answer to a request that could not be sent (from `source`, about `upstream`, whose
/// silence is bounded by `timeout_flag`), and the upstream's failure reason to count, if it was
/// the upstream's.
pub(crate) fn failure_answer(
    failure: Failure,
    source: &'static str,
    upstream: &str,
    timeout_flag: &str,
) -> (Response<ProxyBody>, Option<Reason>) {
    match failure {
        Failure::Busy => {
            let mut resp = json_error_from(
                source,
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                &format!(
                    "every connection to {upstream} stayed busy for longer than {timeout_flag}"
                ),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            (resp, None)
        }
        Failure::ClientTimeout => (
            json_error_from(
                source,
                StatusCode::REQUEST_TIMEOUT,
                "client_timeout",
                &format!("the request body stopped arriving for longer than {timeout_flag}"),
            ),
            None,
        ),
        // The client left while its request waited: nobody reads this (nginx logs 499, "client
        // closed request", for the same case).
        Failure::ClientGone => (
            json_error_from(
                source,
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                "client_gone",
                "the client closed the connection while its request waited",
            ),
            None,
        ),
        // The client broke off its own upload: not the upstream's failure (and nobody is left
        // to read this answer).
        Failure::ClientAborted => (
            json_error_from(
                source,
                StatusCode::BAD_REQUEST,
                "client_aborted",
                "the request body could not be read from the client",
            ),
            None,
        ),
        Failure::Upstream(reason) => {
            let (status, detail) = if reason == Reason::Timeout {
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("{upstream} did not answer in time"),
                )
            } else {
                (StatusCode::BAD_GATEWAY, reason.summary().to_owned())
            };
            (
                json_error_from(source, status, reason.as_str(), &detail),
                Some(reason),
            )
        }
    }
}

/// Whether a header is hop-by-hop by definition (see [`HOP_BY_HOP`]).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): the fixed set and whatever `Connection` names.
/// One scan of the map when there are none (the usual request); otherwise lookups by name, with
/// no list built for the usual `Connection: keep-alive` (an answer from a keep-alive upstream).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Names `Connection` lists beyond the fixed set (rare: no allocation without one).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !is_hop_by_hop(n))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The fixed hop-by-hop set: RFC 9110 §7.6.1's, with the non-standard `Keep-Alive` and
/// `Proxy-Connection`.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// `Location: <upstream>/x` → `http://<client host>/x`, only when the location is the upstream
/// itself or under it on a path boundary (`https://ls.example/ls` does not cover
/// `https://ls.example.org/x` or `https://ls.example/lsx`).
fn map_location_back(headers: &mut HeaderMap, upstream: &str, client_host: &HeaderValue) {
    let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let Some(rest) = loc.strip_prefix(upstream) else {
        return;
    };
    if !(rest.is_empty() || rest.starts_with(['/', '?', '#'])) {
        return;
    }
    let Ok(host) = client_host.to_str() else {
        return;
    };
    if let Ok(v) = HeaderValue::from_str(&format!("http://{host}{rest}")) {
        headers.insert(header::LOCATION, v);
    }
}

fn json_error(status: StatusCode, reason: &str, detail: &str) -> Response<ProxyBody> {
    json_error_from(standin::ISSUER, status, reason, detail)
}

/// A JSON error answer in the shape Label Studio's own errors have (`detail`), with a
/// closed-set `reason` and the component that answered (`source`).
pub(crate) fn json_error_from(
    source: &'static str,
    status: StatusCode,
    reason: &str,
    detail: &str,
) -> Response<ProxyBody> {
    json(
        status,
        &serde_json::json!({
            "detail": detail,
            "reason": reason,
            "status_code": status.as_u16(),
            "source": source,
        }),
    )
}

pub(crate) fn json(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_named_ones_too() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("content-type", "application/json"),
            ("content-length", "12"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type", "content-length"]);
    }

    #[test]
    fn headers_without_hop_by_hop_ones_are_left_alone() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.append(header::ACCEPT, HeaderValue::from_static("a"));
        h.append(header::ACCEPT, HeaderValue::from_static("b"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        h.insert(
            HeaderName::from_static("proxy-connection"),
            HeaderValue::from_static("keep-alive"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn locations_map_back_to_the_proxy_on_a_boundary_only() {
        let proxy = "http://127.0.0.1:9418";
        for (upstream, location, mapped) in [
            (
                "https://ls.example/ls",
                "https://ls.example/ls/projects/1/",
                true,
            ),
            ("https://ls.example/ls", "https://ls.example/ls", true),
            (
                "https://ls.example/ls",
                "https://ls.example/ls?next=1",
                true,
            ),
            (
                "https://ls.example",
                "https://ls.example/lsx/projects/",
                true,
            ),
            // Another path segment, another host, another port: left alone.
            (
                "https://ls.example/ls",
                "https://ls.example/lsx/projects/",
                false,
            ),
            ("https://ls.example", "https://ls.example.org/x", false),
            ("https://ls.example", "https://ls.example:8443/ls/x", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::LOCATION, HeaderValue::from_str(location).unwrap());
            map_location_back(
                &mut h,
                upstream,
                &HeaderValue::from_static("127.0.0.1:9418"),
            );
            let want = if mapped {
                location.replacen(upstream, proxy, 1)
            } else {
                location.to_owned()
            };
            assert_eq!(
                h[header::LOCATION],
                want.as_str(),
                "{upstream} + {location}"
            );
        }
    }
}
