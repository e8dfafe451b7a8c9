//! The stand-in access token the proxy hands out on `POST /api/token/refresh`.
//!
//! label-studio-sdk treats a JWT-shaped API key as a refresh token: it POSTs it to
//! `/api/token/refresh/` and caches the `access` it gets until that token's `exp` (it decodes the
//! claims without verifying them). Behind the proxy the SDK must keep doing that — but it must
//! never hold the real access token. So the proxy answers with a JWT-shaped stand-in whose `exp`
//! is when the real token stops working, on this host's clock (the SDK, sharing it, then
//! refreshes when we do, even if Label Studio's clock is off) and which is useless anywhere else:
//! unsigned (`alg: none`), marked as ours, and dropped by the proxy on every request.

use base64::Engine;

/// The `iss` claim that marks a stand-in.
pub const ISSUER: &str = "ls-token-refresher-proxy";

/// A stand-in access token expiring at `exp` (unix seconds), issued at `iat`.
pub fn token(exp: i64, iat: i64) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = e.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "token_type": "access",
        "exp": exp,
        "iat": iat,
        "jti": format!("{:032x}", fastrand::u128(..)),
        "iss": ISSUER,
    });
    let payload = e.encode(claims.to_string());
    format!("{header}.{payload}.{}", e.encode(b"stand-in"))
}

/// A placeholder API key for clients that need a JWT-shaped one (label-studio-sdk): a "refresh
/// token" that never expires before the year 2200. It is not a credential.
pub fn placeholder_key() -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = e.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = e.encode(
        br#"{"token_type":"refresh","exp":7258118400,"iat":0,"iss":"ls-token-refresher-proxy"}"#,
    );
    format!("{header}.{payload}.{}", e.encode(b"placeholder"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{jwt, secret::Secret};

    #[test]
    fn standin_is_an_access_jwt_with_the_real_exp() {
        let t = token(2_000_000_000, 1_999_999_700);
        let c = jwt::decode_claims(&t).unwrap();
        assert_eq!(c.token_type.as_deref(), Some("access"));
        assert_eq!((c.exp, c.iat), (Some(2_000_000_000), Some(1_999_999_700)));
        assert_ne!(token(1, 0), token(1, 0), "each stand-in is unique");
    }

    /// The README prints the placeholder for users to copy: it must be this one.
    #[test]
    fn readme_shows_the_placeholder() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
        assert!(readme.contains(&placeholder_key()));
    }

    #[test]
    fn placeholder_is_a_far_future_refresh_jwt() {
        let p = placeholder_key();
        match jwt::classify(&Secret::new(p)).unwrap() {
            jwt::CredentialKind::Pat(c) => assert_eq!(c.exp, Some(7_258_118_400)),
            other => panic!("{other:?}"),
        }
    }
}
