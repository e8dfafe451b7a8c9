//! The PAT lifecycle endpoints of Label Studio 1.22+ (`label_studio/jwt_auth/`), as read from the
//! 1.23.2 package: rotate (`POST /api/token/rotate/`), list (`GET /api/token/`), blacklist
//! (`POST /api/token/blacklist/`) and create (`POST /api/token/`). Every call is authenticated
//! with an *access* token (`Bearer`), except the blacklist, which Label Studio serves without
//! authentication. Same client, timeouts, size cap and request counter as the exchange.
//!
//! The sharp edges these calls live with are the rotation module's business; this layer only
//! tells a definite answer apart from a lost one ([`LifecycleError::is_lost`]): a rotate whose
//! answer never arrived may have been committed.

use std::future::Future;

use reqwest::{header, StatusCode};

use super::{classify_status, ExchangeError, HttpExchange, Reply};
use crate::{jwt, secret::Secret};

/// Label Studio's routes, byte for byte (trailing slashes included: the router has no others).
const ROTATE_PATH: &str = "/api/token/rotate/";
const TOKENS_PATH: &str = "/api/token/";
const BLACKLIST_PATH: &str = "/api/token/blacklist/";

/// Most live PATs we accept in a list answer: Label Studio allows one per user; a handful covers
/// a race with a person creating one, and a longer list is not the answer we asked for.
pub const MAX_LISTED: usize = 16;

/// A failed lifecycle call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LifecycleError {
    /// The request failed or was refused (the wrapped error says how).
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    /// `POST /api/token/` answered 409: the user already holds a live PAT.
    #[error("Label Studio refused to create a PAT: the user already holds a live one (HTTP 409)")]
    AlreadyHolds,
}

impl LifecycleError {
    /// True when the request may have reached Label Studio and been acted on without us seeing
    /// the answer (timeout, connection cut, 5xx from a proxy in front): the caller must find out.
    pub fn is_lost(&self) -> bool {
        match self {
            LifecycleError::Exchange(e) => {
                matches!(
                    e,
                    ExchangeError::Timeout { .. }
                        | ExchangeError::Network { .. }
                        | ExchangeError::InvalidResponse { .. }
                ) || matches!(e, ExchangeError::Http { status, .. } if *status >= 500)
            }
            LifecycleError::AlreadyHolds => false,
        }
    }

    /// Closed-set label.
    pub fn label(&self) -> &'static str {
        match self {
            LifecycleError::Exchange(e) => e.reason().as_str(),
            LifecycleError::AlreadyHolds => "already_holds",
        }
    }
}

/// A live PAT as `GET /api/token/` lists it: `header.payload`, without the signature. Not a
/// credential, but a prefix of one and enough to blacklist it: treated like one.
pub type Truncated = Secret;

/// The PAT lifecycle operations; a trait so the rotation logic runs against fakes.
pub trait PatApi: Send + Sync + 'static {
    /// Rotates `pat` (blacklisted at once by Label Studio) and returns the new PAT.
    fn rotate(
        &self,
        access: &Secret,
        pat: &Secret,
    ) -> impl Future<Output = Result<Secret, LifecycleError>> + Send;
    /// The caller's live PATs, truncated.
    fn list(
        &self,
        access: &Secret,
    ) -> impl Future<Output = Result<Vec<Truncated>, LifecycleError>> + Send;
    /// Blacklists a (truncated) PAT; Ok(false) when Label Studio says it is already dead.
    fn blacklist(
        &self,
        token: &Truncated,
    ) -> impl Future<Output = Result<bool, LifecycleError>> + Send;
    /// Creates a PAT for the caller (409 while the caller holds one).
    fn create(
        &self,
        access: &Secret,
    ) -> impl Future<Output = Result<Secret, LifecycleError>> + Send;
}

impl HttpExchange {
    fn bearer(
        &self,
        what: &'static str,
        access: &Secret,
    ) -> Result<header::HeaderValue, ExchangeError> {
        let mut v = header::HeaderValue::from_str(&format!("Bearer {}", access.expose())).map_err(
            |_| {
                self.invalid(
                    what,
                    "access token contains characters not allowed in a header",
                )
            },
        )?;
        v.set_sensitive(true);
        Ok(v)
    }

    /// Parses a JSON body field holding a new PAT (`refresh` or `token`), checked to be one.
    fn new_pat(&self, what: &'static str, r: &Reply, field: &str) -> Result<Secret, ExchangeError> {
        if r.truncated {
            return Err(self.invalid(what, "response body larger than 64 KiB"));
        }
        let v: serde_json::Value = serde_json::from_slice(&r.body)
            .map_err(|_| self.invalid(what, "invalid or truncated JSON body"))?;
        let pat = v
            .get(field)
            .and_then(|t| t.as_str())
            .map(Secret::new)
            .ok_or_else(|| self.invalid(what, "JSON body without the new PAT"))?;
        match jwt::classify(&pat) {
            Ok(jwt::CredentialKind::Pat(_)) => Ok(pat),
            _ => Err(self.invalid(what, "the new PAT is not a JWT refresh token")),
        }
    }
}

impl PatApi for HttpExchange {
    async fn rotate(&self, access: &Secret, pat: &Secret) -> Result<Secret, LifecycleError> {
        let what = "PAT rotation";
        let req = self
            .client
            .post(self.base.join(ROTATE_PATH))
            .header(header::AUTHORIZATION, self.bearer(what, access)?)
            .json(&serde_json::json!({ "refresh": pat.expose() }));
        let r = self.send("rotate", what, req).await?;
        if r.status == StatusCode::OK {
            return Ok(self.new_pat(what, &r, "refresh")?);
        }
        Err(classify_status(what, &r, Some(pat)).into())
    }

    async fn list(&self, access: &Secret) -> Result<Vec<Truncated>, LifecycleError> {
        let what = "PAT list";
        let req = self
            .client
            .get(self.base.join(TOKENS_PATH))
            .header(header::AUTHORIZATION, self.bearer(what, access)?);
        let r = self.send("list_pats", what, req).await?;
        if !r.status.is_success() {
            return Err(classify_status(what, &r, Some(access)).into());
        }
        parse_list(&r.body).ok_or_else(|| self.invalid(what, "not a list of tokens").into())
    }

    async fn blacklist(&self, token: &Truncated) -> Result<bool, LifecycleError> {
        let what = "PAT blacklist";
        let req = self
            .client
            .post(self.base.join(BLACKLIST_PATH))
            .json(&serde_json::json!({ "refresh": token.expose() }));
        let r = self.send("blacklist_pat", what, req).await?;
        match r.status.as_u16() {
            200..=299 => Ok(true),
            404 => Ok(false),
            _ => Err(classify_status(what, &r, Some(token)).into()),
        }
    }

    async fn create(&self, access: &Secret) -> Result<Secret, LifecycleError> {
        let what = "PAT creation";
        let req = self
            .client
            .post(self.base.join(TOKENS_PATH))
            .header(header::AUTHORIZATION, self.bearer(what, access)?);
        let r = self.send("create_pat", what, req).await?;
        match r.status {
            StatusCode::CREATED | StatusCode::OK => Ok(self.new_pat(what, &r, "token")?),
            StatusCode::CONFLICT => Err(LifecycleError::AlreadyHolds),
            _ => Err(classify_status(what, &r, Some(access)).into()),
        }
    }
}

/// `[{"token": "h.p"}, …]` (or a paginated `{"results": […]}`): the listed tokens, each checked to
/// be two or three base64url parts; None for any other shape or more than [`MAX_LISTED`].
pub fn parse_list(body: &[u8]) -> Option<Vec<Truncated>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let items = match &v {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(o) => o.get("results")?.as_array()?,
        _ => return None,
    };
    if items.len() > MAX_LISTED {
        return None;
    }
    items
        .iter()
        .map(|i| {
            let t = i.get("token")?.as_str()?;
            let parts: Vec<&str> = t.split('.').collect();
            let ok = (2..=3).contains(&parts.len())
                && parts[..2].iter().all(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            ok.then(|| Secret::new(t))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_answers_are_parsed_strictly() {
        let ok = parse_list(br#"[{"token":"aGVhZA.cGF5bG9hZA"}]"#).unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].expose(), "aGVhZA.cGF5bG9hZA");
        assert_eq!(
            parse_list(br#"{"results":[{"token":"a.b"},{"token":"c.d.e"}]}"#).map(|v| v.len()),
            Some(2)
        );
        assert_eq!(parse_list(b"[]").map(|v| v.len()), Some(0));
        for bad in [
            &br#"[{"token":"a b.c"}]"#[..],
            br#"[{"token":"abc"}]"#,
            br#"[{"token":".b"}]"#,
            br#"[{"token":1}]"#,
            br#"{"token":"a.b"}"#,
            b"<html>",
        ] {
            assert!(
                parse_list(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let many = format!("[{}]", vec![r#"{"token":"a.b"}"#; MAX_LISTED + 1].join(","));
        assert!(parse_list(many.as_bytes()).is_none());
    }
}
