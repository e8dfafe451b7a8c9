//! The auth gate: a reverse proxy in front of one ML backend (or any HTTP service) that admits a
//! request only when it carries a Label Studio credential Label Studio accepts, from a user the
//! policy admits — the other direction from the auth proxy, which *adds* a credential.
//!
//! - Credentials: `Authorization: Bearer <access token>` or `Token <legacy token>`, verified with
//!   Label Studio's `GET /api/current-user/whoami` (see [`verify`] for the cache and the bounds
//!   on Label Studio's load); or the Basic user/password configured for Label Studio's own calls
//!   (`--gate-basic-auth-file`: Label Studio calls ML backends with no auth or HTTP Basic only),
//!   compared in constant time. What can be refused without asking is: no credential, a scheme
//!   other than these, a JWT whose `exp` has passed, a PAT (a refresh JWT: the gate never takes
//!   or exchanges PATs, the caller exchanges it for an access token), anything that is neither
//!   a JWT nor a 40-hex legacy token.
//! - Policy: whoami's `active_organization` in `--gate-allow-org`, or the user's id/email in
//!   `--gate-allow-user` ([`policy`]). One of them is required: no default admits "any valid
//!   Label Studio user".
//! - Forwarding: the credential is removed (the backend never sees a user's token), the caller's
//!   identity is sent in `X-Label-Studio-User-Id`, `-User-Email`, `-Username`, `-Organization`
//!   and `-Auth` (`access`, `legacy` or `basic`; for Basic only `-Auth`), and every
//!   `X-Label-Studio-*` header the client sent is dropped first, so a backend may trust them.
//! - The HTTP hygiene is the auth proxy's, shared with it: one canonical request target, no
//!   `CONNECT` or absolute-form targets, hop-by-hop headers dropped, bodies streamed both ways
//!   with `--gate-timeout` bounding silences, connection limits and idle handling.
//! - Answers of its own: `401` with `WWW-Authenticate` (Bearer, and Basic when configured), `403`
//!   for a user outside the policy, `429` with `Retry-After` for a client that caused too many
//!   refusals, `503` when Label Studio cannot be asked and no verdict is cached, `502`/`504` for a
//!   backend that fails or stays silent.
//! - It is meant to be reachable from outside the pod, unlike the proxy: put it behind an ingress
//!   that terminates TLS (the gate speaks plain HTTP; credentials must not cross a network in
//!   cleartext).

pub mod policy;
pub mod verify;

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use base64::Engine;
use http::{
    header::{self, HeaderName, HeaderValue},
    Request, Response, StatusCode,
};
use hyper::body::Incoming;
use ring::hmac;
use tokio_util::sync::CancellationToken;

use crate::{
    exchange::{self, LabelStudioArgs},
    jwt::{self, CredentialKind},
    metrics::Metrics,
    proxy::{
        client::Peer,
        forward::{
            failure_answer, finish_local, json_error_from, not_for_one_upstream, outgoing_headers,
            ProxyBody,
        },
        target,
        upstream::Upstream,
        DEFAULT_UPSTREAM_CONNECTIONS,
    },
    secret::{shown_path, Secret},
    values::{BaseUrl, PositiveDur},
};
use policy::{Identity, Policy, Subject};
use verify::{Credential, Outcome, Verifier};

/// Where the gate listens by default: every interface (it is meant to be reached from outside
/// the pod); 9091, next to the ML backend's 9090.
pub const DEFAULT_GATE_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9091);
/// Who answers, in the JSON errors.
pub const SOURCE: &str = "ls-token-refresher-gate";
/// `Retry-After` of a limited client: one refusal's worth of budget comes back per second.
const LIMITED_RETRY_AFTER_SECS: u64 = 5;
/// `Retry-After` when Label Studio cannot be asked.
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 2;
/// Largest Basic credentials file read (`user:password`).
const MAX_BASIC_FILE_BYTES: u64 = 4 * 1024;
/// The realm in `WWW-Authenticate`.
const REALM: &str = "label-studio-ml";
/// Identity headers the gate sets; every incoming header with this prefix is dropped.
const IDENTITY_PREFIX: &str = "x-label-studio-";

/// Request outcomes (the `outcome` label of `gate_requests_total`): a closed set.
pub const OUTCOMES: [&str; 11] = [
    "forwarded",
    "no_credential",
    "malformed",
    "pat",
    "expired",
    "refused",
    "forbidden",
    "limited",
    "unavailable",
    "bad_request",
    "upstream_error",
];

/// Auth gate flags.
#[derive(Debug, Clone, clap::Args)]
pub struct GateArgs {
    /// The backend the gate admits callers to, e.g. http://127.0.0.1:9090 (an ML backend in the same pod).
    #[arg(long, env = "LS_BACKEND_URL", value_name = "URL")]
    pub backend_url: BaseUrl,

    /// Serve the gate on this address (behind an ingress that terminates TLS).
    #[arg(long, env = "LS_GATE_ADDR", default_value_t = DEFAULT_GATE_ADDR, value_name = "ADDR")]
    pub gate_addr: SocketAddr,

    /// Longest a verified credential is trusted without asking Label Studio again (also bounded by the token's own exp); a deactivated user keeps access at most this long.
    #[arg(
        long,
        env = "LS_GATE_CACHE_TTL",
        default_value = "60s",
        value_name = "DURATION"
    )]
    pub gate_cache_ttl: PositiveDur,

    /// Longest silence while forwarding: waiting for the backend's answer, or for the next piece of a body either way.
    #[arg(
        long,
        env = "LS_GATE_TIMEOUT",
        default_value = "300s",
        value_name = "DURATION"
    )]
    pub gate_timeout: PositiveDur,

    /// Admit users whose active organization is this id. Repeatable or comma-separated.
    #[arg(
        long = "gate-allow-org",
        env = "LS_GATE_ALLOW_ORGS",
        value_delimiter = ','
    )]
    pub gate_allow_orgs: Vec<u64>,

    /// Admit this user (a user id or an email). Repeatable or comma-separated.
    #[arg(
        long = "gate-allow-user",
        env = "LS_GATE_ALLOW_USERS",
        value_name = "ID|EMAIL",
        value_delimiter = ','
    )]
    pub gate_allow_users: Vec<Subject>,

    /// File holding `user:password`: Label Studio's Basic credentials for calling the backend (the ML backend's Basic auth settings in Label Studio).
    #[arg(long, env = "LS_GATE_BASIC_AUTH_FILE", value_name = "PATH")]
    pub gate_basic_auth_file: Option<PathBuf>,
}

/// Could not start the gate.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// An HTTP client.
    #[error(transparent)]
    Client(#[from] exchange::ClientError),
    /// No policy.
    #[error(transparent)]
    Policy(#[from] policy::EmptyPolicy),
    /// The Basic credentials file.
    #[error("--gate-basic-auth-file (LS_GATE_BASIC_AUTH_FILE) {path}: {why}")]
    BasicFile {
        /// Path, as shown.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The listener.
    #[error("--gate-addr (LS_GATE_ADDR) {addr}: cannot listen: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Label Studio's Basic credentials, held only as an HMAC tag (compared in constant time).
struct Basic {
    key: hmac::Key,
    tag: hmac::Tag,
}

impl Basic {
    fn read(path: &Path) -> Result<Basic, GateError> {
        let bad = |why: String| GateError::BasicFile {
            path: shown_path(path),
            why,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        if meta.len() > MAX_BASIC_FILE_BYTES {
            return Err(bad(format!("{} bytes: not `user:password`", meta.len())));
        }
        let text = std::fs::read(path)
            .map_err(|e| bad(format!("cannot read: {e}")))
            .and_then(|b| String::from_utf8(b).map_err(|_| bad("not UTF-8 text".into())))?;
        let line = Secret::new(text.trim_end_matches(['\n', '\r']).to_owned());
        match line.expose().split_once(':') {
            Some((user, pass)) if !user.is_empty() && !pass.is_empty() => {}
            _ => {
                return Err(bad(
                    "must hold one line `user:password` (both non-empty)".into()
                ))
            }
        }
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| bad("no random source for the comparison key".into()))?;
        let tag = hmac::sign(&key, line.expose().as_bytes());
        Ok(Basic { key, tag })
    }

    fn matches(&self, presented: &[u8]) -> bool {
        hmac::verify(&self.key, presented, self.tag.as_ref()).is_ok()
    }
}

struct Shared {
    http: Upstream,
    verifier: Verifier,
    policy: Policy,
    basic: Option<Basic>,
    metrics: Arc<Metrics>,
}

/// The gate, ready to bind.
pub struct Gate {
    shared: Arc<Shared>,
}

impl Gate {
    /// A gate to `args.backend_url`, verifying with the Label Studio at `ls.url`.
    pub fn new(
        args: &GateArgs,
        ls: &LabelStudioArgs,
        metrics: Arc<Metrics>,
    ) -> Result<Self, GateError> {
        let policy = Policy::new(args.gate_allow_orgs.clone(), args.gate_allow_users.clone())?;
        let basic = args
            .gate_basic_auth_file
            .as_deref()
            .map(Basic::read)
            .transpose()?;
        let build = |e: reqwest::Error| exchange::ClientError::Build(e.to_string());
        let ls_client = exchange::client_builder(ls.ca_file.as_deref(), ls.connect_timeout.0)?
            .timeout(ls.request_timeout.0)
            .build()
            .map_err(build)?;
        // The backend gets the proxy's default cap: an ML backend serves a handful of requests
        // at once, so more connections would only queue there instead of here.
        let http = Upstream::new(
            &args.backend_url,
            None,
            ls.connect_timeout.0,
            args.gate_timeout.0,
            DEFAULT_UPSTREAM_CONNECTIONS,
            None,
        )?;
        let whoami = reqwest::Url::parse(&ls.url.join("/api/current-user/whoami"))
            .map_err(|e| exchange::ClientError::Build(e.to_string()))?;
        metrics.register_gate(&OUTCOMES);
        Ok(Gate {
            shared: Arc::new(Shared {
                http,
                verifier: Verifier::new(ls_client, whoami, args.gate_cache_ttl.0, metrics.clone()),
                policy,
                basic,
                metrics,
            }),
        })
    }

    /// Binds now and returns the bound address and the server future (ends after `shutdown`).
    pub async fn bind(
        self,
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> Result<(SocketAddr, impl Future<Output = std::io::Result<()>>), GateError> {
        let (listener, local) = crate::proxy::listen(addr)
            .await
            .map_err(|source| GateError::Listen { addr, source })?;
        let connections = self.shared.metrics.gate_connections.clone();
        let shared = self.shared;
        let handler = move |peer, req| handle(shared.clone(), peer, req);
        Ok((
            local,
            crate::proxy::serve(listener, handler, connections, "gate", shutdown),
        ))
    }
}

/// Who a request was admitted as.
enum Admitted {
    User(Arc<Identity>, &'static str),
    LabelStudio,
}

/// A request answered here: its answer and its outcome label.
struct Refusal(Response<ProxyBody>, &'static str);

async fn handle(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let (resp, outcome) = match admit(&shared, peer.ip, &req).await {
        Ok((who, url)) => forward_to(&shared, &peer, req, who, url).await,
        Err(Refusal(answer, outcome)) => (finish_local(req.into_body(), answer).await, outcome),
    };
    shared
        .metrics
        .gate_requests_total
        .with_label_values(&[outcome])
        .inc();
    resp
}

async fn admit(
    shared: &Shared,
    peer: IpAddr,
    req: &Request<Incoming>,
) -> Result<(Admitted, http::uri::PathAndQuery), Refusal> {
    if let Some(refused) = not_for_one_upstream(req, SOURCE, "the backend") {
        return Err(Refusal(refused, "bad_request"));
    }
    let path = req.uri().path();
    let bad = |detail: &str| {
        Refusal(
            json_error_from(SOURCE, StatusCode::BAD_REQUEST, "non_canonical", detail),
            "bad_request",
        )
    };
    target::check(path).map_err(|why| bad(why.detail()))?;
    let url = shared
        .http
        .target(req.uri(), path)
        .ok_or_else(|| bad("the request path cannot be sent to the backend unchanged"))?;
    let who = authenticate(shared, peer, req).await?;
    Ok((who, url))
}

async fn authenticate(
    shared: &Shared,
    peer: IpAddr,
    req: &Request<Incoming>,
) -> Result<Admitted, Refusal> {
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        let none = req.headers().get(header::AUTHORIZATION).is_none();
        return Err(unauthorized(
            shared,
            if none { "no_credential" } else { "malformed" },
            if none {
                "send a Label Studio access token (Authorization: Bearer <token>) or legacy token (Authorization: Token <token>)"
            } else {
                "send one Authorization header"
            },
        ));
    };
    let malformed = |detail| unauthorized(shared, "malformed", detail);
    let text = value
        .to_str()
        .map_err(|_| malformed("the Authorization header is not ASCII"))?;
    let Some((scheme, cred)) = text.split_once(' ') else {
        return Err(malformed(
            "the Authorization header must be `<scheme> <credential>`",
        ));
    };
    if cred.is_empty() || cred.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(malformed(
            "the Authorization header must be `<scheme> <credential>` with one space",
        ));
    }
    let now = crate::clock::unix_now() as i64;
    let (credential, kind) = match scheme {
        // Label Studio's own spelling: `Bearer` is case-sensitive there, `Token` is not.
        "Bearer" => match jwt::classify(&Secret::new(cred)) {
            Ok(CredentialKind::Access(c)) => {
                let exp = match (c.exp, c.implausible_times()) {
                    (Some(exp), None) => exp,
                    _ => return Err(malformed("the access token's claims are not a Label Studio token's")),
                };
                if exp <= now {
                    return Err(unauthorized(shared, "expired", "the access token has expired: refresh it (POST /api/token/refresh with your PAT)"));
                }
                (Credential::Bearer { token: cred, exp }, "access")
            }
            Ok(CredentialKind::Pat(_)) => {
                return Err(unauthorized(shared, "pat", "a Personal Access Token was sent: send an access token instead (exchange the PAT with POST /api/token/refresh); the gate never takes PATs"))
            }
            Ok(CredentialKind::Legacy) => {
                return Err(malformed("a legacy token goes in `Authorization: Token <token>`"))
            }
            Ok(CredentialKind::OtherJwt(_)) | Err(_) => {
                return Err(malformed("the bearer token is not a Label Studio access token"))
            }
        },
        s if s.eq_ignore_ascii_case("token") => match jwt::classify(&Secret::new(cred)) {
            Ok(CredentialKind::Legacy) => (Credential::Token(cred), "legacy"),
            _ => {
                return Err(malformed(
                    "`Token` takes a 40-hex legacy token; send access tokens as `Bearer`",
                ))
            }
        },
        s if s.eq_ignore_ascii_case("basic") => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(cred)
                .unwrap_or_default();
            return match &shared.basic {
                Some(b) if b.matches(&decoded) => Ok(Admitted::LabelStudio),
                _ => Err(unauthorized(shared, "refused", "the Basic credentials are not the ones configured for Label Studio")),
            };
        }
        _ => return Err(malformed("unsupported Authorization scheme: use Bearer or Token")),
    };
    match shared.verifier.verify(credential, peer, now).await {
        Outcome::Admitted(who) if shared.policy.admits(&who) => Ok(Admitted::User(who, kind)),
        Outcome::Admitted(_) => Err(Refusal(
            json_error_from(
                SOURCE,
                StatusCode::FORBIDDEN,
                "forbidden",
                "this Label Studio user is not admitted to this backend",
            ),
            "forbidden",
        )),
        Outcome::Refused => Err(unauthorized(
            shared,
            "refused",
            "Label Studio does not accept this token",
        )),
        Outcome::Limited => Err(retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            "limited",
            "too many refused credentials from this address: retry later",
            LIMITED_RETRY_AFTER_SECS,
        )),
        Outcome::Unavailable => Err(retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Label Studio cannot be asked to verify the token right now",
            UNAVAILABLE_RETRY_AFTER_SECS,
        )),
    }
}

/// An answer saying when to try again; `outcome` is also its `reason`.
fn retry_later(status: StatusCode, outcome: &'static str, detail: &str, secs: u64) -> Refusal {
    let mut r = json_error_from(SOURCE, status, outcome, detail);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    Refusal(r, outcome)
}

/// 401 with the challenges the gate accepts (RFC 9110 §11.6.1).
fn unauthorized(shared: &Shared, outcome: &'static str, detail: &str) -> Refusal {
    let mut r = json_error_from(SOURCE, StatusCode::UNAUTHORIZED, outcome, detail);
    let bearer = if outcome == "no_credential" {
        format!("Bearer realm=\"{REALM}\"")
    } else {
        format!("Bearer realm=\"{REALM}\", error=\"invalid_token\"")
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&bearer) {
        h.append(header::WWW_AUTHENTICATE, v);
    }
    if shared.basic.is_some() {
        if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{REALM}\"")) {
            h.append(header::WWW_AUTHENTICATE, v);
        }
    }
    Refusal(r, outcome)
}

async fn forward_to(
    shared: &Shared,
    peer: &Peer,
    req: Request<Incoming>,
    who: Admitted,
    url: http::uri::PathAndQuery,
) -> (Response<ProxyBody>, &'static str) {
    let (parts, body) = req.into_parts();
    let mut headers = outgoing_headers(parts.headers, peer);
    let theirs: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with(IDENTITY_PREFIX))
        .cloned()
        .collect();
    for name in theirs {
        headers.remove(name);
    }
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(&header_safe(value)) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    match &who {
        Admitted::User(who, kind) => {
            set("x-label-studio-user-id", &who.id.to_string());
            set("x-label-studio-user-email", &who.email);
            set("x-label-studio-username", &who.username);
            if let Some(org) = who.organization {
                set("x-label-studio-organization", &org.to_string());
            }
            set("x-label-studio-auth", kind);
        }
        Admitted::LabelStudio => set("x-label-studio-auth", "basic"),
    }
    let sent = shared
        .http
        .send(parts.method, url, headers, body, peer.departure.as_ref());
    match sent.await {
        Ok(resp) => {
            let resp = shared.http.stream(resp, None);
            (resp, "forwarded")
        }
        Err(f) => (
            failure_answer(f, SOURCE, "the backend", "--gate-timeout").0,
            "upstream_error",
        ),
    }
}

/// `value` as one header value: printable ASCII kept, `%` and everything else percent-encoded
/// (UTF-8 bytes), so an email or username with non-ASCII letters or control characters can
/// neither break the header nor smuggle another one.
fn header_safe(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_made_safe() {
        assert_eq!(header_safe("ann@x.org"), "ann@x.org");
        assert_eq!(header_safe("Zoë"), "Zo%C3%AB");
        assert_eq!(header_safe("a\r\nX-Evil: 1"), "a%0D%0AX-Evil: 1");
        assert_eq!(header_safe("100%"), "100%25");
    }
}
