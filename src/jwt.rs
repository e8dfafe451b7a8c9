//! Reading what a credential is, without verifying it: Label Studio signs its JWTs with the server's
//! own secret, which we never have. We only need the claims (`token_type`, `exp`, `iat`) to tell the
//! kinds apart and to schedule refreshes from the token's own lifetime.

use base64::Engine;
use serde::Deserialize;

use crate::{clock::rfc3339, reason::Reason, secret::Secret};

/// Claims we use from a Label Studio JWT. Unknown claims are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Claims {
    /// `refresh` for a PAT, `access` for an access token.
    #[serde(default)]
    pub token_type: Option<String>,
    /// Expiry, seconds since the epoch.
    #[serde(default, deserialize_with = "lenient_number")]
    pub exp: Option<i64>,
    /// Issued at, seconds since the epoch.
    #[serde(default, deserialize_with = "lenient_number")]
    pub iat: Option<i64>,
}

/// The last second a date can be written in RFC 3339 (9999-12-31T23:59:59Z): `expires_at` in the
/// token directory and the Secret is written that way, and no Label Studio issues tokens beyond it.
pub const MAX_NUMERIC_DATE: i64 = 253_402_300_799;

impl Claims {
    /// Why an access token's `iat`/`exp` cannot be a real token's, or None. A claim outside
    /// 1970..=9999 (JSON numbers like -1e19 saturate to `i64::MIN` on decoding) or an `iat` at or
    /// after `exp` comes from something that is not Label Studio (or a broken one): refusing it at
    /// receipt keeps absurd numbers out of every later computation and says so once, with a reason.
    pub fn implausible_times(&self) -> Option<&'static str> {
        let dated = |v: i64| (0..=MAX_NUMERIC_DATE).contains(&v);
        if self.exp.is_some_and(|e| !dated(e)) {
            return Some("access token whose exp is not a date between 1970 and 9999");
        }
        if self.iat.is_some_and(|i| !dated(i)) {
            return Some("access token whose iat is not a date between 1970 and 9999");
        }
        match (self.iat, self.exp) {
            (Some(iat), Some(exp)) if iat >= exp => {
                Some("access token that expires before it was issued (iat >= exp)")
            }
            _ => None,
        }
    }
}

/// What the user gave us as the "PAT".
#[derive(Debug, Clone, PartialEq)]
pub enum CredentialKind {
    /// A JWT refresh token (a Label Studio Personal Access Token).
    Pat(Claims),
    /// A JWT access token: short-lived, cannot be refreshed — a configuration mistake.
    Access(Claims),
    /// A JWT whose `token_type` is neither `refresh` nor `access`.
    OtherJwt(Claims),
    /// A 40-hex legacy API token (`Authorization: Token …`), which never expires and is never refreshed.
    Legacy,
}

/// Why a credential could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Empty after trimming.
    #[error("the token is empty")]
    Empty,
    /// Neither a three-part JWT nor a 40-hex legacy token.
    #[error("the token is neither a JWT (three dot-separated base64url parts) nor a 40-hex legacy token")]
    Malformed,
    /// The payload part is not base64url JSON with the expected claim types.
    #[error("the token's JWT payload is not valid base64url JSON")]
    BadPayload,
}

/// Length of a Label Studio legacy token: 20 random bytes, hex-encoded.
const LEGACY_TOKEN_LEN: usize = 40;
/// A JWT payload larger than this is not something Label Studio issues; refusing it bounds memory.
const MAX_JWT_LEN: usize = 16 * 1024;

/// Decodes the claims of a JWT (no signature check).
pub fn decode_claims(token: &str) -> Result<Claims, JwtError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(JwtError::Empty);
    }
    if token.len() > MAX_JWT_LEN {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    if header.is_empty() || payload.is_empty() {
        return Err(JwtError::Malformed);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| JwtError::BadPayload)?;
    serde_json::from_slice::<Claims>(&bytes).map_err(|_| JwtError::BadPayload)
}

/// A short, non-reversible identity of a JWT's `jti` claim (16 hex digits of a domain-separated
/// SHA-256), readable from a full token or from the `header.payload` form Label Studio lists. The
/// rotation intent records it: it names which PAT a rotation started from without storing any
/// part of the token (the payload alone is enough to blacklist a PAT, unauthenticated).
pub fn jti_fingerprint(token: &str) -> Option<String> {
    let token = token.trim();
    if token.len() > MAX_JWT_LEN {
        return None;
    }
    let mut parts = token.split('.');
    let (Some(_header), Some(payload)) = (parts.next(), parts.next()) else {
        return None;
    };
    if parts.nth(1).is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    #[derive(serde::Deserialize)]
    struct Jti {
        jti: String,
    }
    let Jti { jti } = serde_json::from_slice(&bytes).ok()?;
    if jti.is_empty() {
        return None;
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"ls-token-refresher/jti\0");
    ctx.update(jti.as_bytes());
    let digest = ctx.finish();
    Some(
        digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// The `user_id` claim of a JWT (a number or a string in Label Studio's tokens, rendered as
/// text), or None. Used to tell whether an access token and a PAT belong to the same user before
/// one is used to repair the other's lost rotation; the signature is not checked (we cannot), so
/// this guards against mistakes and stale tokens, not forgeries.
pub fn user_id(token: &str) -> Option<String> {
    let token = token.trim();
    if token.len() > MAX_JWT_LEN {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    #[derive(serde::Deserialize)]
    struct Subject {
        user_id: serde_json::Value,
    }
    let Subject { user_id } = serde_json::from_slice(&bytes).ok()?;
    match user_id {
        serde_json::Value::String(s) if !s.is_empty() => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Tells which kind of credential `secret` is.
pub fn classify(secret: &Secret) -> Result<CredentialKind, JwtError> {
    let value = secret.expose();
    if value.is_empty() {
        return Err(JwtError::Empty);
    }
    if value.len() == LEGACY_TOKEN_LEN && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(CredentialKind::Legacy);
    }
    let claims = decode_claims(value)?;
    Ok(match claims.token_type.as_deref() {
        Some("refresh") => CredentialKind::Pat(claims),
        Some("access") => CredentialKind::Access(claims),
        _ => CredentialKind::OtherJwt(claims),
    })
}

/// A credential that can be used: a PAT to exchange, or a legacy token to present as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    /// A JWT refresh token (its `exp`, if any, is in the future).
    Pat {
        /// The PAT's own expiry.
        exp: Option<i64>,
    },
    /// A 40-hex legacy token.
    Legacy,
}

/// Why a configured credential cannot work. Each names the fix; none contains the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Empty after trimming.
    #[error("the PAT from {0} is empty")]
    Empty(String),
    /// Neither a JWT nor a legacy token.
    #[error("the token from {0} is neither a Label Studio Personal Access Token (a JWT) nor a 40-hex legacy token")]
    Unrecognised(String),
    /// An access token where the PAT belongs.
    #[error("the configured token is an access token (token_type=access), which expires in minutes: configure the Personal Access Token (a refresh token) from Label Studio's Account & Settings instead")]
    AccessToken,
    /// Another JWT type.
    #[error("the configured JWT has token_type={0:?}, not \"refresh\": configure a Label Studio Personal Access Token")]
    OtherJwt(String),
    /// The PAT's own `exp` has passed.
    #[error("the PAT expired at {0}: create a new Personal Access Token in Label Studio")]
    Expired(String),
}

impl CredentialError {
    /// The closed-set reason.
    pub fn reason(&self) -> Reason {
        match self {
            CredentialError::Empty(_) => Reason::SourceUnavailable,
            CredentialError::Unrecognised(_) => Reason::Unauthorized,
            CredentialError::AccessToken | CredentialError::OtherJwt(_) => Reason::WrongTokenType,
            CredentialError::Expired(_) => Reason::ExpiredPat,
        }
    }
}

/// Rejects what cannot work as "the PAT" (empty, garbage, an access token, another JWT type, an
/// expired PAT); `describe` names the source, `now` is the wall clock. Shared by the refresh loop
/// and `check`, so both say the same thing.
pub fn usable(secret: &Secret, describe: &str, now: f64) -> Result<Usable, CredentialError> {
    match classify(secret) {
        Err(JwtError::Empty) => Err(CredentialError::Empty(describe.to_owned())),
        Err(_) => Err(CredentialError::Unrecognised(describe.to_owned())),
        Ok(CredentialKind::Access(_)) => Err(CredentialError::AccessToken),
        Ok(CredentialKind::OtherJwt(c)) => {
            Err(CredentialError::OtherJwt(c.token_type.unwrap_or_default()))
        }
        Ok(CredentialKind::Pat(c)) => match c.exp {
            Some(exp) if (exp as f64) <= now => Err(CredentialError::Expired(rfc3339(exp))),
            exp => Ok(Usable::Pat { exp }),
        },
        Ok(CredentialKind::Legacy) => Ok(Usable::Legacy),
    }
}

/// `exp`/`iat` are integers in Label Studio's tokens, but RFC 7519 allows any NumericDate (float).
fn lenient_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match v {
        Some(serde_json::Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
        _ => None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds an unsigned JWT with the given payload JSON (tests only).
    pub(crate) fn make_jwt(payload: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.{}",
            e.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            e.encode(payload),
            e.encode("signature")
        )
    }

    #[test]
    fn decodes_label_studio_pat() {
        let t = make_jwt(
            r#"{"token_type":"refresh","exp":8071163563,"iat":1764000000,"jti":"ab","user_id":"1"}"#,
        );
        match classify(&Secret::new(t)).unwrap() {
            CredentialKind::Pat(c) => {
                assert_eq!(c.exp, Some(8071163563));
                assert_eq!(c.iat, Some(1764000000));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn tells_access_and_legacy_apart() {
        let access = make_jwt(r#"{"token_type":"access","exp":10,"iat":1}"#);
        assert!(matches!(
            classify(&Secret::new(access)),
            Ok(CredentialKind::Access(_))
        ));
        let legacy = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(classify(&Secret::new(legacy)), Ok(CredentialKind::Legacy));
        // 39 hex chars is not a legacy token.
        assert_eq!(
            classify(&Secret::new(&legacy[1..])),
            Err(JwtError::Malformed)
        );
        let other = make_jwt(r#"{"exp":10}"#);
        assert!(matches!(
            classify(&Secret::new(other)),
            Ok(CredentialKind::OtherJwt(_))
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(classify(&Secret::new("")), Err(JwtError::Empty));
        assert_eq!(decode_claims("a.b"), Err(JwtError::Malformed));
        assert_eq!(decode_claims("a.b.c.d"), Err(JwtError::Malformed));
        assert_eq!(decode_claims(".b.c"), Err(JwtError::Malformed));
        assert_eq!(decode_claims("a.!!!.c"), Err(JwtError::BadPayload));
        let not_json = format!(
            "a.{}.c",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("hi")
        );
        assert_eq!(decode_claims(&not_json), Err(JwtError::BadPayload));
        let huge = "a".repeat(MAX_JWT_LEN + 1);
        assert_eq!(decode_claims(&huge), Err(JwtError::Malformed));
    }

    #[test]
    fn accepts_float_dates_and_padding() {
        let t = make_jwt(r#"{"token_type":"access","exp":12.7,"iat":"x"}"#);
        let c = decode_claims(&t).unwrap();
        assert_eq!(c.exp, Some(12));
        assert_eq!(c.iat, None);
    }

    #[test]
    fn usable_names_the_problem_without_the_token() {
        let access = make_jwt(r#"{"token_type":"access","exp":99999999999}"#);
        let expired = make_jwt(r#"{"token_type":"refresh","exp":1000}"#);
        let other = make_jwt(r#"{"token_type":"id","exp":99999999999}"#);
        let good = make_jwt(r#"{"token_type":"refresh","exp":5000}"#);
        for (value, reason) in [
            (access.as_str(), Reason::WrongTokenType),
            (expired.as_str(), Reason::ExpiredPat),
            (other.as_str(), Reason::WrongTokenType),
            ("not a token", Reason::Unauthorized),
            ("  ", Reason::SourceUnavailable),
        ] {
            let e = usable(&Secret::new(value), "file /x", 2000.0).unwrap_err();
            assert_eq!(e.reason(), reason, "{value}");
            assert!(value.trim().is_empty() || !e.to_string().contains(value));
        }
        assert_eq!(
            usable(&Secret::new(good), "x", 2000.0),
            Ok(Usable::Pat { exp: Some(5000) })
        );
        assert_eq!(
            usable(
                &Secret::new("0123456789abcdef0123456789abcdef01234567"),
                "x",
                0.0
            ),
            Ok(Usable::Legacy)
        );
    }

    proptest::proptest! {
        /// Decoding arbitrary input never panics (the fuzz target for claim decoding).
        #[test]
        fn decode_never_panics(s in ".{0,300}") {
            let _ = decode_claims(&s);
            let _ = classify(&Secret::new(s));
        }

        /// Any payload bytes behind a syntactically valid JWT never panic the decoder.
        #[test]
        fn decode_arbitrary_payload(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let _ = decode_claims(&format!("h.{}.s", e.encode(&bytes)));
        }
    }
}
