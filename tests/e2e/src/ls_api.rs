//! A client for the Label Studio API as the tests use it: the admin's session (login with CSRF),
//! PATs (create, list, blacklist, rotate), the legacy token, the organisation's token switches,
//! `POST /api/token/refresh/` and a whoami probe. Independent of how the server runs (see
//! [`crate::label_studio`] for the process harness).
//!
//! Helpers never print tokens; panics carry statuses and error details only.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use crate::http1::percent_encode;

/// The HTTP client the harness uses towards Label Studio: no proxy, no redirects, 30 s limit.
pub fn http_client() -> reqwest::Client {
    crate::init_crypto();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build reqwest client")
}

/// The API of one Label Studio, as its admin user.
pub struct LsApi {
    base: String,
    email: String,
    password: String,
    http: reqwest::Client,
    /// Session cookies of the admin (name → value); empty until the first session call.
    cookies: Mutex<BTreeMap<String, String>>,
}

impl LsApi {
    /// A client for `base_url` (`http://127.0.0.1:PORT`) logging in as `email` / `password`.
    pub fn new(base_url: &str, email: &str, password: &str) -> LsApi {
        LsApi {
            base: base_url.trim_end_matches('/').to_owned(),
            email: email.to_owned(),
            password: password.to_owned(),
            http: http_client(),
            cookies: Mutex::new(BTreeMap::new()),
        }
    }

    /// The base URL (no trailing slash).
    pub fn url(&self) -> &str {
        &self.base
    }

    fn api(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    // ---------------------------------------------------------------- session

    fn cookie_header(&self) -> String {
        let c = self.cookies.lock().unwrap();
        c.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn cookie(&self, name: &str) -> Option<String> {
        self.cookies.lock().unwrap().get(name).cloned()
    }

    fn absorb_cookies(&self, headers: &reqwest::header::HeaderMap) {
        let mut c = self.cookies.lock().unwrap();
        for v in headers.get_all(reqwest::header::SET_COOKIE) {
            let Ok(v) = v.to_str() else { continue };
            let first = v.split(';').next().unwrap_or("");
            if let Some((k, val)) = first.split_once('=') {
                c.insert(k.trim().to_string(), val.trim().to_string());
            }
        }
    }

    /// Session login of the admin (GET the form for the CSRF cookie, POST credentials → 302).
    pub async fn login(&self) {
        self.cookies.lock().unwrap().clear();
        let login = self.api("/user/login/");
        let r = self
            .http
            .get(&login)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /user/login/: {e}"));
        self.absorb_cookies(r.headers());
        let csrf = self
            .cookie("csrftoken")
            .unwrap_or_else(|| panic!("GET /user/login/ ({}) set no csrftoken cookie", r.status()));
        let body = format!(
            "email={}&password={}&csrfmiddlewaretoken={}",
            percent_encode(&self.email),
            percent_encode(&self.password),
            percent_encode(&csrf)
        );
        let r = self
            .http
            .post(&login)
            .header(reqwest::header::COOKIE, self.cookie_header())
            .header(reqwest::header::REFERER, &login)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /user/login/: {e}"));
        let status = r.status().as_u16();
        self.absorb_cookies(r.headers());
        assert!(
            status == 302 && self.cookie("sessionid").is_some(),
            "session login as {} failed: HTTP {status} (expected 302 with a sessionid cookie)",
            self.email
        );
    }

    /// A request authenticated with the admin's session cookie (logs in on first use and again once
    /// if the session was rejected).
    pub async fn session_request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        for attempt in 0..2 {
            if attempt == 1 || self.cookie("sessionid").is_none() {
                self.login().await;
            }
            let csrf = self.cookie("csrftoken").unwrap_or_default();
            let mut rb = self
                .http
                .request(method.clone(), self.api(path))
                .header(reqwest::header::COOKIE, self.cookie_header())
                .header("X-CSRFToken", csrf)
                .header(reqwest::header::REFERER, self.api("/"));
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let r = rb
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            self.absorb_cookies(r.headers());
            let status = r.status().as_u16();
            if attempt == 0 && (status == 401 || status == 403) {
                continue;
            }
            return (status, body_json(r).await);
        }
        unreachable!()
    }

    // ---------------------------------------------------------------- plain requests

    /// POST a JSON body; `authorization` is the full header value (e.g. `"Bearer …"`).
    pub async fn post_json(
        &self,
        path: &str,
        authorization: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        self.send(
            "POST",
            path,
            self.http.post(self.api(path)).json(body),
            authorization,
        )
        .await
    }

    /// GET; `authorization` is the full header value.
    pub async fn get(&self, path: &str, authorization: Option<&str>) -> (u16, Value) {
        self.send("GET", path, self.http.get(self.api(path)), authorization)
            .await
    }

    /// Sends `rb` with an optional `Authorization` header value; panics on transport errors.
    async fn send(
        &self,
        method: &str,
        path: &str,
        mut rb: reqwest::RequestBuilder,
        authorization: Option<&str>,
    ) -> (u16, Value) {
        if let Some(a) = authorization {
            rb = rb.header(reqwest::header::AUTHORIZATION, a);
        }
        let r = rb
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status().as_u16();
        (status, body_json(r).await)
    }

    /// A session request that must answer `want` (any 2xx when None); the JSON body.
    async fn session_expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        want: Option<u16>,
    ) -> Value {
        let (status, answer) = self.session_request(method.clone(), path, body).await;
        let ok = match want {
            Some(w) => status == w,
            None => (200..300).contains(&status),
        };
        assert!(ok, "{method} {path}: HTTP {status}: {}", detail(&answer));
        answer
    }

    // ---------------------------------------------------------------- tokens

    /// Creates a PAT for the admin (`POST /api/token/`). Label Studio allows one valid PAT per user: on
    /// 409 every listed PAT (and any other live one) is blacklisted first, then creation is retried once.
    pub async fn create_pat(&self) -> String {
        let (status, body) = self
            .session_request(reqwest::Method::POST, "/api/token/", None)
            .await;
        let (status, body) = if status == 409 {
            for t in self.list_pats().await {
                let (s, _) = self
                    .post_json("/api/token/blacklist/", None, &json!({ "refresh": t }))
                    .await;
                assert!(
                    s == 204 || s == 404,
                    "blacklisting an existing PAT: HTTP {s}"
                );
            }
            self.session_request(reqwest::Method::POST, "/api/token/", None)
                .await
        } else {
            (status, body)
        };
        assert_eq!(
            status,
            201,
            "POST /api/token/: HTTP {status}: {}",
            detail(&body)
        );
        body["token"]
            .as_str()
            .unwrap_or_else(|| panic!("POST /api/token/ 201 without a token field"))
            .to_string()
    }

    /// The admin's live PATs as Label Studio lists them (`header.payload`, no signature).
    pub async fn list_pats(&self) -> Vec<String> {
        let body = self
            .session_expect(reqwest::Method::GET, "/api/token/", None, Some(200))
            .await;
        body.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t["token"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The admin's legacy token (40 hex chars), whatever the org switches are.
    pub async fn legacy_token(&self) -> String {
        let body = self
            .session_expect(
                reqwest::Method::GET,
                "/api/current-user/token",
                None,
                Some(200),
            )
            .await;
        body["token"]
            .as_str()
            .expect("legacy token field")
            .to_string()
    }

    /// Replaces the admin's legacy token and returns the new one.
    pub async fn reset_legacy_token(&self) -> String {
        let (status, body) = self
            .session_request(
                reqwest::Method::POST,
                "/api/current-user/reset-token/",
                None,
            )
            .await;
        assert!(
            status == 200 || status == 201,
            "POST /api/current-user/reset-token/: HTTP {status}: {}",
            detail(&body)
        );
        body["token"]
            .as_str()
            .expect("legacy token field")
            .to_string()
    }

    /// Current org switches: `(api_tokens_enabled, legacy_api_tokens_enabled)`.
    pub async fn org_tokens(&self) -> (bool, bool) {
        let body = self
            .session_expect(reqwest::Method::GET, "/api/jwt/settings", None, Some(200))
            .await;
        (
            body["api_tokens_enabled"]
                .as_bool()
                .expect("api_tokens_enabled"),
            body["legacy_api_tokens_enabled"]
                .as_bool()
                .expect("legacy_api_tokens_enabled"),
        )
    }

    /// Sets the org switches (JWT/PAT auth, legacy token auth). Effective from the next request.
    pub async fn set_org_tokens(&self, api_tokens_enabled: bool, legacy_enabled: bool) {
        let want = json!({
            "api_tokens_enabled": api_tokens_enabled,
            "legacy_api_tokens_enabled": legacy_enabled,
        });
        self.session_expect(
            reqwest::Method::POST,
            "/api/jwt/settings",
            Some(&want),
            None,
        )
        .await;
        assert_eq!(
            self.org_tokens().await,
            (api_tokens_enabled, legacy_enabled)
        );
    }

    /// Revokes a PAT (`POST /api/token/blacklist/`, expects 204).
    pub async fn blacklist(&self, pat: &str) {
        let (status, body) = self
            .post_json("/api/token/blacklist/", None, &json!({ "refresh": pat }))
            .await;
        assert_eq!(
            status,
            204,
            "POST /api/token/blacklist/: HTTP {status}: {}",
            detail(&body)
        );
    }

    /// `POST /api/token/rotate/` authenticated with `access`, rotating `pat`: returns the new PAT; the old
    /// one is blacklisted at once. (Label Studio needs the PAT in the body: the access token alone → 400.)
    pub async fn rotate(&self, access: &str, pat: &str) -> String {
        let (status, body) = self
            .post_json(
                "/api/token/rotate/",
                Some(&format!("Bearer {access}")),
                &json!({ "refresh": pat }),
            )
            .await;
        assert_eq!(
            status,
            200,
            "POST /api/token/rotate/: HTTP {status}: {}",
            detail(&body)
        );
        body["refresh"].as_str().expect("refresh field").to_string()
    }

    /// `POST /api/token/refresh/ {"refresh": pat}` → (status, JSON body).
    pub async fn refresh(&self, pat: &str) -> (u16, Value) {
        self.post_json("/api/token/refresh/", None, &json!({ "refresh": pat }))
            .await
    }

    /// Exchanges `pat` for an access token, asserting 200.
    pub async fn access_token(&self, pat: &str) -> String {
        let (status, body) = self.refresh(pat).await;
        assert_eq!(status, 200, "refresh: HTTP {status}: {}", detail(&body));
        body["access"].as_str().expect("access field").to_string()
    }

    /// `GET /api/current-user/whoami` with `Authorization: <authorization>` → HTTP status.
    pub async fn whoami(&self, authorization: &str) -> u16 {
        self.get("/api/current-user/whoami", Some(authorization))
            .await
            .0
    }
}

/// `GET url` with `Authorization: <authorization>` → HTTP status (0 when no answer arrived).
pub async fn status_with(client: &reqwest::Client, url: &str, authorization: &str) -> u16 {
    match client
        .get(url)
        .header("authorization", authorization)
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// The `detail` of a Label Studio error body (or the body itself if it has none).
pub fn detail(body: &Value) -> String {
    match body.get("detail") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => body.to_string(),
    }
}

async fn body_json(r: reqwest::Response) -> Value {
    let text = r.text().await.unwrap_or_default();
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}
