//! Talking to Label Studio: the PAT → access-token exchange (`POST /api/token/refresh`), the
//! validation call that proves a token works before we publish it, and the cheap probes
//! (`/health`, `/api/version`) used for fast recovery, for telling a wrong `--url` apart, and by
//! `check`. Every request has a timeout, a size-capped body and a counter; every outcome is
//! classified into a [`Reason`] using the real server's responses (see the shared API facts).

mod lifecycle;

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

pub use self::lifecycle::{parse_list, LifecycleError, PatApi, Truncated, MAX_LISTED};

use reqwest::{header, StatusCode};

use crate::{
    jwt::{self, Claims},
    metrics::Metrics,
    reason::Reason,
    secret::Secret,
    token::{Authorization, Scheme},
    values::{ApiPath, BaseUrl, PositiveDur},
};

/// Largest response body we read. An access token response is ~300 bytes and error bodies < 1 KiB;
/// HTML pages of a wrong host can be larger, and anything beyond this is not Label Studio.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest server `detail` text we keep for messages (it is never used as a label).
const MAX_DETAIL_CHARS: usize = 200;
/// Timeout of a `/health` probe during an outage: the probe only asks "are you back?", and a
/// black-holed server must not hold the loop for a whole request timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How to reach Label Studio (shared by every command).
#[derive(Debug, Clone, clap::Args)]
pub struct LabelStudioArgs {
    /// Label Studio base URL, e.g. http://label-studio:8080.
    #[arg(long, env = "LS_URL", value_name = "URL")]
    pub url: BaseUrl,

    /// Timeout of each HTTP request to Label Studio (connect + response).
    #[arg(
        long,
        env = "LS_REQUEST_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub request_timeout: PositiveDur,

    /// TCP/TLS connect timeout to Label Studio.
    #[arg(
        long,
        env = "LS_CONNECT_TIMEOUT",
        default_value = "5s",
        value_name = "DURATION"
    )]
    pub connect_timeout: PositiveDur,

    /// PEM file of CA certificates to trust in addition to the system ones (private CAs).
    #[arg(long, env = "LS_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,

    /// API path used to test each new token before publishing it.
    #[arg(
        long,
        env = "LS_VALIDATE_PATH",
        default_value = "/api/current-user/whoami",
        value_name = "PATH"
    )]
    pub validate_path: ApiPath,

    /// Publish new tokens without testing them against the API first.
    #[arg(long, env = "LS_NO_VALIDATE")]
    pub no_validate: bool,

    /// Refuse a plain http:// URL to anything but loopback (the PAT would cross the network in cleartext).
    #[arg(long, env = "LS_REQUIRE_HTTPS")]
    pub require_https: bool,
}

/// Why the Label Studio arguments cannot work.
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
    /// Cleartext to a remote host with `--require-https`.
    #[error("--url (LS_URL) {0} is plain http:// to a host that is not loopback, and --require-https (LS_REQUIRE_HTTPS) is set: use https://")]
    Cleartext(String),
    /// reqwest refused the configuration.
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

impl LabelStudioArgs {
    /// A warning for plain `http://` to a host that is not loopback: the PAT travels in cleartext
    /// on every refresh (in-cluster `http://label-studio:8080` is common, so not refused by default).
    pub fn cleartext_warning(&self) -> Option<String> {
        (!self.url.is_https() && !self.url.is_loopback()).then(|| {
            format!(
                "--url {} is plain http:// to a remote host: the PAT and tokens cross the network in cleartext (use https://, or --require-https to refuse this)",
                self.url
            )
        })
    }

    /// Builds the client; `validate` false skips the pre-publish API test (`--no-validate`).
    pub fn client(&self, metrics: Arc<Metrics>) -> Result<HttpExchange, ClientError> {
        if self.require_https && self.cleartext_warning().is_some() {
            return Err(ClientError::Cleartext(self.url.to_string()));
        }
        HttpExchange::new(
            ClientConfig {
                base: self.url.clone(),
                request_timeout: self.request_timeout.0,
                connect_timeout: self.connect_timeout.0,
                ca_file: self.ca_file.clone(),
                ca_pem: None,
                validate_path: (!self.no_validate).then(|| self.validate_path.0.clone()),
            },
            metrics,
        )
    }
}

/// Everything the HTTP client needs (no CLI types, so tests build it directly).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL.
    pub base: BaseUrl,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Extra CA bundle.
    pub ca_file: Option<PathBuf>,
    /// Extra CA bundle given as PEM text (the controller's connections).
    pub ca_pem: Option<Vec<u8>>,
    /// Path that proves a token works; None skips validation.
    pub validate_path: Option<String>,
}

impl ClientConfig {
    /// Defaults as on the command line, for `base`.
    pub fn new(base: BaseUrl) -> Self {
        ClientConfig {
            base,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            ca_file: None,
            ca_pem: None,
            validate_path: Some("/api/current-user/whoami".into()),
        }
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

/// A token the API accepted, and Label Studio's clock as its `Date` header said (unix seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// The server's `Date`, if it sent one.
    pub server_date: Option<f64>,
    /// Whose token it is, when the validation path answered like `whoami` (`id`, `username`).
    pub user: Option<LsUser>,
}

/// A Label Studio user as `whoami` names them (no email: status fields are widely readable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LsUser {
    /// User id.
    pub id: i64,
    /// Username.
    pub username: String,
}

impl LsUser {
    /// Reads `id` and `username` from a `whoami` answer; None for any other shape. The username is
    /// shortened to Kubernetes-friendly size (Label Studio allows 256 characters).
    pub fn from_whoami(body: &[u8]) -> Option<LsUser> {
        #[derive(serde::Deserialize)]
        struct WhoAmI {
            id: i64,
            #[serde(default)]
            username: String,
        }
        let w: WhoAmI = serde_json::from_slice(body).ok()?;
        let username: String = w
            .username
            .chars()
            .filter(|c| !c.is_control())
            .take(150)
            .collect();
        Some(LsUser { id: w.id, username })
    }
}

/// What `/api/version` says about the server at `--url`.
#[derive(Debug, Clone)]
pub enum Identity {
    /// Label Studio, with its release.
    LabelStudio(String),
    /// Something answered, and it is not Label Studio.
    NotLabelStudio(&'static str),
    /// No conclusive answer (down, timeout, 5xx): say nothing.
    Unknown(ExchangeError),
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
        /// Server `detail`, sanitised and shortened; None when the body was not Label Studio's
        /// error JSON.
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

    /// True for answers Label Studio never gives on its token endpoint: 404/405/501, HTML, or a 4xx
    /// whose body is not Label Studio's error JSON. Worth asking `/api/version` who is there.
    /// (5xx pages of a proxy in front of a Label Studio that is down are not counted: transient.)
    pub fn looks_foreign(&self) -> bool {
        match self {
            ExchangeError::InvalidResponse { .. } => true,
            ExchangeError::Http { status, detail, .. } => {
                matches!(status, 404 | 405 | 501)
                    || ((400..500).contains(status) && detail.is_none())
            }
            _ => false,
        }
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
    ) -> impl Future<Output = Result<Accepted, ExchangeError>> + Send;
    /// `GET /health` with a short timeout: Ok when Label Studio says it is up.
    fn health(&self) -> impl Future<Output = Result<(), ExchangeError>> + Send;
    /// `GET /api/version`: who answers at the base URL.
    fn identify(&self) -> impl Future<Output = Identity> + Send;
    /// The base URL, for messages.
    fn base(&self) -> String;
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

/// A reqwest builder for Label Studio: rustls with the extra CA bundle, the connect timeout, no
/// redirects (a redirect means a login page or a wrong URL: diagnosed, never followed with our
/// credentials), no environment proxy. Shared by the exchange and the auth proxy.
pub fn client_builder(
    ca_file: Option<&std::path::Path>,
    connect_timeout: Duration,
) -> Result<reqwest::ClientBuilder, ClientError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if let Some(path) = ca_file {
        let err = |cause: String| ClientError::CaFile {
            path: crate::secret::shown_path(path),
            cause,
        };
        let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        builder = with_ca_pem(builder, &pem).map_err(err)?;
    }
    Ok(builder)
}

/// Adds the certificates of a PEM bundle to the trusted roots; Err names what is wrong with it.
pub fn with_ca_pem(
    builder: reqwest::ClientBuilder,
    pem: &[u8],
) -> Result<reqwest::ClientBuilder, String> {
    let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificates found".into());
    }
    Ok(builder.tls_certs_merge(certs))
}

impl HttpExchange {
    /// Builds the client.
    pub fn new(config: ClientConfig, metrics: Arc<Metrics>) -> Result<Self, ClientError> {
        let mut builder = client_builder(config.ca_file.as_deref(), config.connect_timeout)?;
        if let Some(pem) = &config.ca_pem {
            builder = with_ca_pem(builder, pem).map_err(|cause| ClientError::CaFile {
                path: "caBundle".into(),
                cause,
            })?;
        }
        let builder = builder
            .user_agent(concat!("ls-token-refresher/", env!("CARGO_PKG_VERSION")))
            .timeout(config.request_timeout)
            // Keep one warm connection: a refresh every few minutes should not pay a TLS handshake.
            .pool_idle_timeout(Duration::from_secs(600))
            .pool_max_idle_per_host(2);
        let client = builder
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(HttpExchange {
            client,
            base: config.base,
            validate_path: config.validate_path,
            timeout: config.request_timeout,
            metrics,
        })
    }

    /// The base URL.
    pub fn base_url(&self) -> &BaseUrl {
        &self.base
    }

    /// The same client, always validating at `path` (used by `check`, whatever `--no-validate` says).
    pub fn always_validating(mut self, path: &str) -> Self {
        self.validate_path = Some(path.to_owned());
        self
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
        let text = |name: header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = text(header::RETRY_AFTER).and_then(|v| parse_retry_after(&v));
        let server_date = text(header::DATE)
            .and_then(|v| httpdate::parse_http_date(&v).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64());
        let content_type = text(header::CONTENT_TYPE)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let (body, truncated) = read_capped(resp)
            .await
            .map_err(|e| self.transport_error(what, e))?;
        Ok(Reply {
            status,
            retry_after,
            server_date,
            content_type,
            body,
            truncated,
        })
    }

    /// `GET /health` with the request timeout (for `check`).
    pub async fn health_check(&self) -> Result<(), ExchangeError> {
        self.get_health(self.timeout).await
    }

    async fn get_health(&self, timeout: Duration) -> Result<(), ExchangeError> {
        let what = "health check";
        let req = self.client.get(self.base.join("/health")).timeout(timeout);
        let r = self.send("health", what, req).await?;
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
        let release = v.get("release").and_then(|x| x.as_str()).ok_or_else(|| {
            self.invalid(
                what,
                "/api/version has no \"release\": is this Label Studio?",
            )
        })?;
        Ok(release
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(40)
            .collect())
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

    async fn validate(&self, auth: &Authorization) -> Result<Accepted, ExchangeError> {
        let Some(path) = &self.validate_path else {
            return Ok(Accepted {
                server_date: None,
                user: None,
            });
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
            return Ok(Accepted {
                server_date: r.server_date,
                user: LsUser::from_whoami(&r.body),
            });
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

    async fn health(&self) -> Result<(), ExchangeError> {
        self.get_health(PROBE_TIMEOUT.min(self.timeout)).await
    }

    async fn identify(&self) -> Identity {
        match self.version().await {
            Ok(release) => Identity::LabelStudio(release),
            Err(ExchangeError::InvalidResponse { problem, .. }) => {
                Identity::NotLabelStudio(problem)
            }
            Err(e) if e.looks_foreign() => Identity::NotLabelStudio(
                "/api/version is not there (404/405/501 or a page that is not Label Studio's)",
            ),
            Err(e) => Identity::Unknown(e),
        }
    }

    fn base(&self) -> String {
        self.base.to_string()
    }
}

/// A response, read. Its `Debug` omits the body, which may hold an access token.
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Parsed `Retry-After`.
    pub retry_after: Option<Duration>,
    /// The server's `Date` (unix seconds).
    pub server_date: Option<f64>,
    /// Lower-cased content type.
    pub content_type: String,
    /// Body, at most [`MAX_BODY_BYTES`].
    pub body: Vec<u8>,
    /// True when the body was longer than the cap.
    pub truncated: bool,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("retry_after", &self.retry_after)
            .field("server_date", &self.server_date)
            .field("content_type", &self.content_type)
            .field("body_bytes", &self.body.len())
            .field("truncated", &self.truncated)
            .finish()
    }
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

/// Longest `Retry-After` honoured, in either form: a day is far beyond any sensible retry for a
/// 5-minute token, and larger values (`99999999`, `Fri, 31 Dec 9999 …`) would park the loop while
/// `/livez` stays green.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// `Retry-After` as delta-seconds or an HTTP-date, at most [`MAX_RETRY_AFTER`]; a date in the past
/// means zero.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let wait = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
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
            server_date: None,
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
    fn foreign_answers_are_told_apart_from_label_studio_errors() {
        let foreign = |status: u16, ct: &str, body: &str| {
            classify_status("t", &reply(status, ct, body), None).looks_foreign()
        };
        assert!(foreign(501, "text/html", "<h1>Not Implemented</h1>"));
        assert!(foreign(405, "application/json", r#"{"error":"nope"}"#));
        assert!(foreign(404, "text/html", "<html>"));
        assert!(foreign(400, "text/plain", "bad"));
        assert!(!classify_status("t", &ls_error(401, "Token is invalid"), None).looks_foreign());
        assert!(!classify_status("t", &ls_error(400, "Validation error"), None).looks_foreign());
        assert!(
            !foreign(502, "text/html", "<h1>Bad Gateway</h1>"),
            "proxy 5xx is transient"
        );
    }

    #[test]
    fn reply_debug_never_shows_the_body() {
        let access = make_jwt(r#"{"token_type":"access","exp":1000}"#);
        let r = reply(
            200,
            "application/json",
            &format!(r#"{{"access":"{access}"}}"#),
        );
        let text = format!("{r:?}");
        assert!(
            !text.contains(&access) && text.contains("body_bytes"),
            "{text}"
        );
        let t = parse_refresh_body(&r).unwrap();
        assert!(!format!("{t:?}").contains(&access));
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
            let r = Reply { status: StatusCode::from_u16(status).unwrap(), retry_after: None, server_date: None, content_type: "application/json".into(), body, truncated: false };
            let _ = parse_refresh_body(&r);
            let _ = classify_status("t", &r, None);
            let _ = extract_detail(&r.body, None);
        }

        /// Arbitrary JSON-ish text in `access` or `detail` never panics.
        #[test]
        fn json_shapes_never_panic(s in "\\PC{0,200}") {
            let body = serde_json::json!({"access": s.clone(), "detail": s}).to_string();
            let r = Reply { status: StatusCode::OK, retry_after: None, server_date: None, content_type: String::new(), body: body.into_bytes(), truncated: false };
            let _ = parse_refresh_body(&r);
            let _ = extract_detail(&r.body, Some(&Secret::new("x")));
        }
    }
}
