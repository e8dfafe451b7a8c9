//! Talking to Label Studio: the PAT → access-token exchange (`POST /api/token/refresh`), the
//! validation call that proves a token works before we publish it, and the health/version probes
//! used by `check`. Every request has a timeout, a size-capped body and a counter; every outcome
//! is classified into a [`Reason`] using the real server's responses (see the shared API facts).

use std::{future::Future, sync::Arc, time::Duration};

use reqwest::{header, StatusCode};

use crate::{
    config::{BaseUrl, Options},
    jwt::{self, Claims},
    metrics::Metrics,
    reason::Reason,
    secret::Secret,
};

/// Largest response body we read. An access token response is ~300 bytes and error bodies < 1 KiB;
/// HTML pages of a wrong host can be larger, and anything beyond this is not Label Studio.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest server `detail` text we keep for messages (it is never used as a label).
const MAX_DETAIL_CHARS: usize = 200;

/// How a token is presented to the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Bearer <access JWT>`.
    Bearer,
    /// `Authorization: Token <legacy token>`.
    Token,
}

impl Scheme {
    /// The scheme word, as Label Studio expects it (case-sensitive for Bearer).
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Bearer => "Bearer",
            Scheme::Token => "Token",
        }
    }
}

/// A token and the scheme to present it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// Presentation scheme.
    pub scheme: Scheme,
    /// The token.
    pub token: Secret,
}

impl Authorization {
    /// The full header value, e.g. `Bearer eyJ…` (kept secret).
    pub fn header_value(&self) -> Secret {
        Secret::new(format!("{} {}", self.scheme.as_str(), self.token.expose()))
    }
}

/// A freshly issued access token and its claims.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The access JWT.
    pub token: Secret,
    /// Its decoded claims (`exp` is guaranteed present).
    pub claims: Claims,
}

impl AccessToken {
    /// `exp` of the token (always present: checked on receipt).
    pub fn exp(&self) -> i64 {
        self.claims.exp.unwrap_or_default()
    }
}

/// Everything that can go wrong talking to Label Studio.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    /// The server answered with a classified HTTP error.
    #[error("{what}: HTTP {status}{}", detail_suffix(.detail))]
    Http {
        /// Closed-set reason.
        reason: Reason,
        /// What we were doing ("token refresh", "token validation", …).
        what: &'static str,
        /// HTTP status.
        status: u16,
        /// Server `detail`, sanitised and shortened.
        detail: Option<String>,
        /// `Retry-After`, if the server sent one.
        retry_after: Option<Duration>,
    },
    /// The exchange worked but the API rejects `Bearer` access tokens.
    #[error("Label Studio issued an access token but its API rejects it (HTTP {status} on {path}): JWT API tokens look disabled for the organization. Enable them (Organization → Access Token Settings, or POST /api/jwt/settings {{\"api_tokens_enabled\": true}}) or configure a legacy token instead of a PAT")]
    JwtDisabled {
        /// Status of the validation call.
        status: u16,
        /// Validation path.
        path: String,
    },
    /// The API says legacy token authentication is disabled.
    #[error("legacy token authentication has been disabled for this Label Studio organization: enable legacy tokens for the organization or use a Personal Access Token")]
    LegacyDisabled,
    /// No (complete) answer in time.
    #[error("{what}: timed out after {timeout:?}")]
    Timeout {
        /// What we were doing.
        what: &'static str,
        /// The timeout that fired.
        timeout: Duration,
    },
    /// Transport failure.
    #[error("{what}: cannot reach Label Studio at {url}: {cause}")]
    Network {
        /// What we were doing.
        what: &'static str,
        /// Base URL.
        url: String,
        /// Cause chain, secret-free (transport errors never contain our headers or body).
        cause: String,
    },
    /// TLS failure.
    #[error("{what}: TLS to {url} failed (use --ca-file / LS_CA_FILE for a private CA): {cause}")]
    Tls {
        /// What we were doing.
        what: &'static str,
        /// Base URL.
        url: String,
        /// Cause.
        cause: String,
    },
    /// A 2xx/3xx answer that is not what Label Studio sends.
    #[error("{what}: unexpected answer from {url}: {problem}")]
    InvalidResponse {
        /// What we were doing.
        what: &'static str,
        /// Base URL.
        url: String,
        /// What was wrong (static text).
        problem: &'static str,
    },
}

fn detail_suffix(detail: &Option<String>) -> String {
    detail
        .as_ref()
        .map(|d| format!(" \"{d}\""))
        .unwrap_or_default()
}

impl ExchangeError {
    /// Closed-set reason for metrics and readiness.
    pub fn reason(&self) -> Reason {
        match self {
            ExchangeError::Http { reason, .. } => *reason,
            ExchangeError::JwtDisabled { .. } => Reason::JwtDisabled,
            ExchangeError::LegacyDisabled => Reason::LegacyDisabled,
            ExchangeError::Timeout { .. } => Reason::Timeout,
            ExchangeError::Network { .. } => Reason::Network,
            ExchangeError::Tls { .. } => Reason::Tls,
            ExchangeError::InvalidResponse { .. } => Reason::InvalidResponse,
        }
    }

    /// `Retry-After` sent with the error, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ExchangeError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// True when the answer shows `--url` points at something that is not Label Studio's API
    /// (HTML page, login redirect, 404): a configuration error at start-up.
    pub fn is_wrong_url(&self) -> bool {
        matches!(self, ExchangeError::InvalidResponse { .. })
            || matches!(
                self,
                ExchangeError::Http {
                    reason: Reason::NotFound,
                    ..
                }
            )
    }
}

/// The operations the refresher needs from Label Studio; a trait so the loop can be driven by fakes.
pub trait Exchange: Send + Sync + 'static {
    /// Exchanges a PAT for an access token.
    fn refresh(
        &self,
        pat: &Secret,
    ) -> impl Future<Output = Result<AccessToken, ExchangeError>> + Send;
    /// Proves `auth` is accepted by the API.
    fn validate(
        &self,
        auth: &Authorization,
    ) -> impl Future<Output = Result<(), ExchangeError>> + Send;
}

/// The real HTTP client (rustls, keep-alive, timeouts, no redirects).
#[derive(Clone)]
pub struct HttpExchange {
    client: reqwest::Client,
    base: BaseUrl,
    validate_path: Option<String>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

/// Could not build the HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file could not be read or parsed.
    #[error("--ca-file (LS_CA_FILE) {path}: {cause}")]
    CaFile {
        /// Path.
        path: String,
        /// Cause.
        cause: String,
    },
    /// reqwest refused the configuration.
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

impl HttpExchange {
    /// Builds the client from options. Redirects are not followed: a redirect means a login page or
    /// a wrong URL, which must be diagnosed, not silently followed with our PAT.
    pub fn new(opts: &Options, metrics: Arc<Metrics>) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("ls-token-refresher/", env!("CARGO_PKG_VERSION")))
            .timeout(opts.request_timeout.0)
            .connect_timeout(opts.connect_timeout.0)
            .redirect(reqwest::redirect::Policy::none())
            // Keep one warm connection: a refresh every few minutes should not pay a TLS handshake.
            .pool_idle_timeout(Duration::from_secs(600))
            .pool_max_idle_per_host(2)
            .no_proxy();
        if let Some(path) = &opts.ca_file {
            let err = |cause: String| ClientError::CaFile {
                path: path.display().to_string(),
                cause,
            };
            let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(e.to_string()))?;
            if certs.is_empty() {
                return Err(err("no PEM certificates found".into()));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(HttpExchange {
            client,
            base: opts.base_url().clone(),
            validate_path: (!opts.no_validate).then(|| opts.validate_path.0.clone()),
            timeout: opts.request_timeout.0,
            metrics,
        })
    }

    /// The base URL.
    pub fn base_url(&self) -> &BaseUrl {
        &self.base
    }

    fn count(&self, endpoint: &'static str, status: Option<StatusCode>) {
        let code = match status.map(|s| s.as_u16() / 100) {
            Some(1) => "1xx",
            Some(2) => "2xx",
            Some(3) => "3xx",
            Some(4) => "4xx",
            Some(5) => "5xx",
            _ => "error",
        };
        self.metrics
            .http_requests_total
            .with_label_values(&[endpoint, code])
            .inc();
    }

    fn transport_error(&self, what: &'static str, e: reqwest::Error) -> ExchangeError {
        classify_transport(what, self.base.as_str(), self.timeout, &e)
    }

    /// Sends a request, reads a capped body, counts it.
    async fn send(
        &self,
        endpoint: &'static str,
        what: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<Reply, ExchangeError> {
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.count(endpoint, None);
                return Err(self.transport_error(what, e));
            }
        };
        let status = resp.status();
        self.count(endpoint, Some(status));
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let (body, truncated) = read_capped(resp)
            .await
            .map_err(|e| self.transport_error(what, e))?;
        Ok(Reply {
            status,
            retry_after,
            content_type,
            body,
            truncated,
        })
    }

    /// `GET /health`: true when Label Studio says `UP`.
    pub async fn health(&self) -> Result<(), ExchangeError> {
        let what = "health check";
        let r = self
            .send("health", what, self.client.get(self.base.join("/health")))
            .await?;
        if r.status.is_success() && String::from_utf8_lossy(&r.body).contains("UP") {
            Ok(())
        } else if r.status.is_success() {
            Err(self.invalid(what, "/health did not say UP: is this Label Studio?"))
        } else {
            Err(classify_status(what, &r, None))
        }
    }

    /// `GET /api/version`: the release string.
    pub async fn version(&self) -> Result<String, ExchangeError> {
        let what = "version query";
        let r = self
            .send(
                "version",
                what,
                self.client.get(self.base.join("/api/version")),
            )
            .await?;
        if !r.status.is_success() {
            return Err(classify_status(what, &r, None));
        }
        let v: serde_json::Value = serde_json::from_slice(&r.body)
            .map_err(|_| self.invalid(what, "/api/version is not JSON: is this Label Studio?"))?;
        Ok(v.get("release")
            .and_then(|x| x.as_str())
            .map(|s| {
                s.chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(40)
                    .collect()
            })
            .unwrap_or_else(|| "unknown".into()))
    }

    fn invalid(&self, what: &'static str, problem: &'static str) -> ExchangeError {
        ExchangeError::InvalidResponse {
            what,
            url: self.base.to_string(),
            problem,
        }
    }
}

impl Exchange for HttpExchange {
    async fn refresh(&self, pat: &Secret) -> Result<AccessToken, ExchangeError> {
        let what = "token refresh";
        let body = serde_json::json!({ "refresh": pat.expose() });
        let req = self
            .client
            .post(self.base.join("/api/token/refresh"))
            .json(&body);
        let r = self.send("refresh", what, req).await?;
        if r.status == StatusCode::OK {
            return parse_refresh_body(&r).map_err(|problem| self.invalid(what, problem));
        }
        if r.status.is_redirection() {
            return Err(self.invalid(what, "redirect (a login page or a proxy?): check --url"));
        }
        Err(classify_status(what, &r, Some(pat)))
    }

    async fn validate(&self, auth: &Authorization) -> Result<(), ExchangeError> {
        let Some(path) = &self.validate_path else {
            return Ok(());
        };
        let what = "token validation";
        let mut value =
            header::HeaderValue::from_str(auth.header_value().expose()).map_err(|_| {
                self.invalid(
                    what,
                    "token contains characters not allowed in an HTTP header",
                )
            })?;
        // Sensitive headers are never indexed by HPACK nor shown by hyper/h2 debug output.
        value.set_sensitive(true);
        let req = self
            .client
            .get(self.base.join(path))
            .header(header::AUTHORIZATION, value);
        let r = self.send("validate", what, req).await?;
        if r.status.is_success() {
            if looks_like_html(&r) {
                return Err(self.invalid(
                    what,
                    "validation path answered an HTML page: check --validate-path",
                ));
            }
            return Ok(());
        }
        if r.status.is_redirection() {
            return Err(self.invalid(
                what,
                "validation redirected (login page?): the token was not accepted",
            ));
        }
        if matches!(r.status.as_u16(), 401 | 403) {
            let detail = extract_detail(&r.body, Some(&auth.token)).unwrap_or_default();
            return Err(match auth.scheme {
                Scheme::Bearer => ExchangeError::JwtDisabled {
                    status: r.status.as_u16(),
                    path: path.clone(),
                },
                Scheme::Token
                    if detail.contains("legacy token authentication has been disabled") =>
                {
                    ExchangeError::LegacyDisabled
                }
                Scheme::Token => ExchangeError::Http {
                    reason: Reason::Unauthorized,
                    what,
                    status: r.status.as_u16(),
                    detail: Some(detail),
                    retry_after: None,
                },
            });
        }
        if r.status == StatusCode::NOT_FOUND {
            return Err(ExchangeError::Http {
                reason: Reason::ValidationFailed,
                what: "token validation (path not found: check --validate-path)",
                status: 404,
                detail: None,
                retry_after: None,
            });
        }
        Err(classify_status(what, &r, Some(&auth.token)))
    }
}

/// A response, read.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Parsed `Retry-After`.
    pub retry_after: Option<Duration>,
    /// Lower-cased content type.
    pub content_type: String,
    /// Body, at most [`MAX_BODY_BYTES`].
    pub body: Vec<u8>,
    /// True when the body was longer than the cap.
    pub truncated: bool,
}

async fn read_capped(mut resp: reqwest::Response) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = MAX_BODY_BYTES - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

fn looks_like_html(r: &Reply) -> bool {
    let start = r
        .body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map(|i| r.body[i]);
    r.content_type.starts_with("text/html") && start != Some(b'{') || start == Some(b'<')
}

/// Parses a 200 refresh answer: `{"access": "<access JWT>"}` (extra fields allowed).
pub fn parse_refresh_body(r: &Reply) -> Result<AccessToken, &'static str> {
    if r.truncated {
        return Err("response body larger than 64 KiB: not Label Studio's token endpoint");
    }
    if looks_like_html(r) {
        return Err("an HTML page instead of JSON: --url points at a web page (login page, wrong host or path)");
    }
    #[derive(serde::Deserialize)]
    struct Body {
        access: Option<String>,
    }
    let parsed: Body =
        serde_json::from_slice(&r.body).map_err(|_| "invalid or truncated JSON body")?;
    let token = Secret::new(
        parsed
            .access
            .ok_or("JSON body without an \"access\" token")?,
    );
    let claims = jwt::decode_claims(token.expose()).map_err(|_| "\"access\" is not a JWT")?;
    if claims.token_type.as_deref() != Some("access") {
        return Err("\"access\" is not an access token (token_type)");
    }
    if claims.exp.is_none() {
        return Err("access token without an exp claim");
    }
    Ok(AccessToken { token, claims })
}

/// Maps a non-success status (and Label Studio's `detail`) to an error.
pub fn classify_status(what: &'static str, r: &Reply, secret: Option<&Secret>) -> ExchangeError {
    let detail = extract_detail(&r.body, secret);
    let d = detail.as_deref().unwrap_or("");
    let status = r.status.as_u16();
    let reason = match status {
        401 | 403 => {
            if d.contains("Token is expired") {
                Reason::ExpiredPat
            } else if d.contains("blacklisted") {
                Reason::RevokedPat
            } else if d.contains("wrong type") {
                Reason::WrongTokenType
            } else if d.contains("No active account") {
                Reason::InactiveUser
            } else if d.contains("legacy token authentication has been disabled") {
                Reason::LegacyDisabled
            } else {
                Reason::Unauthorized
            }
        }
        404 => Reason::NotFound,
        429 => Reason::RateLimited,
        400..=499 => Reason::BadRequest,
        500..=599 => Reason::ServerError,
        _ => Reason::InvalidResponse,
    };
    ExchangeError::Http {
        reason,
        what,
        status,
        detail,
        retry_after: r.retry_after,
    }
}

/// Label Studio wraps errors as `{"detail": "…", "validation_errors": {…}}`. Returns a short,
/// single-line, printable detail with any occurrence of `secret` removed (a misbehaving proxy could
/// echo the request), or None when the body is not such JSON (HTML error pages say nothing useful).
pub fn extract_detail(body: &[u8], secret: Option<&Secret>) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut d = v.get("detail")?.as_str()?.to_owned();
    if let Some(errs) = v.get("validation_errors").and_then(|e| e.as_object()) {
        for (field, msgs) in errs {
            if let Some(m) = msgs
                .as_array()
                .and_then(|a| a.first())
                .and_then(|m| m.as_str())
            {
                d.push_str(&format!("; {field}: {m}"));
            }
        }
    }
    if let Some(s) = secret.filter(|s| !s.is_empty()) {
        d = d.replace(s.expose(), "[redacted]");
    }
    // Anything that looks like a JWT or a legacy token is removed as well.
    let cleaned: Vec<String> = d
        .split(' ')
        .map(|w| {
            let jwtish = w.matches('.').count() >= 2 && w.len() > 40;
            let hexish = w.len() >= 32 && w.chars().all(|c| c.is_ascii_hexdigit());
            if jwtish || hexish {
                "[redacted]".to_owned()
            } else {
                w.to_owned()
            }
        })
        .collect();
    let d: String = cleaned
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_DETAIL_CHARS)
        .collect();
    Some(d)
}

/// `Retry-After` as delta-seconds or an HTTP-date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        // A day is far beyond any sensible retry for a 5-minute token; larger values are bogus.
        return Some(Duration::from_secs(secs.min(86_400)));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn classify_transport(
    what: &'static str,
    url: &str,
    timeout: Duration,
    e: &reqwest::Error,
) -> ExchangeError {
    if e.is_timeout() {
        return ExchangeError::Timeout { what, timeout };
    }
    let mut cause = String::new();
    let mut tls = false;
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.downcast_ref::<rustls::Error>().is_some() {
            tls = true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
            {
                tls = true;
            }
            if io.kind() == std::io::ErrorKind::TimedOut {
                return ExchangeError::Timeout { what, timeout };
            }
        }
        let text = s.to_string();
        if !cause.contains(&text) {
            if !cause.is_empty() {
                cause.push_str(": ");
            }
            cause.push_str(&text);
        }
        src = s.source();
    }
    let lower = cause.to_ascii_lowercase();
    if tls || lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")
    {
        ExchangeError::Tls {
            what,
            url: url.to_owned(),
            cause,
        }
    } else {
        ExchangeError::Network {
            what,
            url: url.to_owned(),
            cause,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::tests::make_jwt;

    fn reply(status: u16, ct: &str, body: &str) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after: None,
            content_type: ct.into(),
            body: body.as_bytes().to_vec(),
            truncated: false,
        }
    }

    fn ls_error(status: u16, detail: &str) -> Reply {
        reply(
            status,
            "application/json",
            &format!(
                r#"{{"id":"x","status_code":{status},"version":"1.23.2","detail":"{detail}","exc_info":null}}"#
            ),
        )
    }

    #[test]
    fn classifies_real_server_table() {
        let cases = [
            (401, "Token is invalid", Reason::Unauthorized),
            (401, "Token has wrong type", Reason::WrongTokenType),
            (401, "Token is expired", Reason::ExpiredPat),
            (401, "Token is blacklisted", Reason::RevokedPat),
            (
                401,
                "No active account found for the given token.",
                Reason::InactiveUser,
            ),
            (400, "Validation error", Reason::BadRequest),
            (415, "Unsupported media type", Reason::BadRequest),
            (404, "Not found", Reason::NotFound),
            (429, "slow down", Reason::RateLimited),
            (
                500,
                "User matching query does not exist.",
                Reason::ServerError,
            ),
            (503, "unavailable", Reason::ServerError),
        ];
        for (status, detail, want) in cases {
            assert_eq!(
                classify_status("t", &ls_error(status, detail), None).reason(),
                want,
                "{status} {detail}"
            );
        }
    }

    #[test]
    fn parses_access_token() {
        let access = make_jwt(r#"{"token_type":"access","exp":1000,"iat":700}"#);
        let t = parse_refresh_body(&reply(
            200,
            "application/json",
            &format!(r#"{{"access":"{access}"}}"#),
        ))
        .unwrap();
        assert_eq!(t.exp(), 1000);
        assert_eq!(t.token.expose(), access);
    }

    #[test]
    fn rejects_bodies_label_studio_never_sends() {
        let html = reply(
            200,
            "text/html; charset=utf-8",
            "<!DOCTYPE html><html>login</html>",
        );
        assert!(parse_refresh_body(&html).unwrap_err().contains("HTML"));
        let truncated = reply(200, "application/json", r#"{"access":"eyJ"#);
        assert!(parse_refresh_body(&truncated).unwrap_err().contains("JSON"));
        let no_access = reply(200, "application/json", r#"{"refresh":"x"}"#);
        assert!(parse_refresh_body(&no_access)
            .unwrap_err()
            .contains("access"));
        let refresh_type = make_jwt(r#"{"token_type":"refresh","exp":1}"#);
        let wrong = reply(
            200,
            "application/json",
            &format!(r#"{{"access":"{refresh_type}"}}"#),
        );
        assert!(parse_refresh_body(&wrong).is_err());
        let mut big = reply(200, "application/json", "{}");
        big.truncated = true;
        assert!(parse_refresh_body(&big).unwrap_err().contains("64 KiB"));
        let no_exp = make_jwt(r#"{"token_type":"access"}"#);
        assert!(parse_refresh_body(&reply(
            200,
            "application/json",
            &format!(r#"{{"access":"{no_exp}"}}"#)
        ))
        .is_err());
    }

    #[test]
    fn detail_never_carries_secrets() {
        let pat = Secret::new(make_jwt(r#"{"token_type":"refresh"}"#));
        let body = format!(
            r#"{{"detail":"bad token {} and 0123456789abcdef0123456789abcdef01234567"}}"#,
            pat.expose()
        );
        let d = extract_detail(body.as_bytes(), Some(&pat)).unwrap();
        assert!(
            !d.contains(pat.expose()) && !d.contains("0123456789abcdef"),
            "{d}"
        );
        let with_fields = r#"{"detail":"Validation error","validation_errors":{"refresh":["This field may not be blank."]}}"#;
        assert_eq!(
            extract_detail(with_fields.as_bytes(), None).unwrap(),
            "Validation error; refresh: This field may not be blank."
        );
        assert_eq!(extract_detail(b"<html>", None), None);
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("99999999"),
            Some(Duration::from_secs(86_400))
        );
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let d = parse_retry_after(&later).unwrap();
        assert!(
            d <= Duration::from_secs(30) && d >= Duration::from_secs(28),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    proptest::proptest! {
        /// Response parsing never panics on any body (fuzzing with proptest).
        #[test]
        fn parsing_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..2048), status in 100u16..600) {
            let r = Reply { status: StatusCode::from_u16(status).unwrap(), retry_after: None, content_type: "application/json".into(), body, truncated: false };
            let _ = parse_refresh_body(&r);
            let _ = classify_status("t", &r, None);
            let _ = extract_detail(&r.body, None);
        }

        /// Arbitrary JSON-ish text in `access` or `detail` never panics.
        #[test]
        fn json_shapes_never_panic(s in "\\PC{0,200}") {
            let body = serde_json::json!({"access": s.clone(), "detail": s}).to_string();
            let r = Reply { status: StatusCode::OK, retry_after: None, content_type: String::new(), body: body.into_bytes(), truncated: false };
            let _ = parse_refresh_body(&r);
            let _ = extract_detail(&r.body, Some(&Secret::new("x")));
        }
    }
}
