//! JWT claims, decoded without verification (the tests only look at `exp`, `iat`, `token_type`…).

use base64::Engine as _;
use serde_json::Value;

/// The claims (payload) of a JWT, or None if `token` is not one.
pub fn claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The claims of a JWT; panics (without printing the token) if it is not one.
pub fn jwt_claims(token: &str) -> Value {
    claims(token).expect("a JWT with a base64url JSON payload")
}

/// `exp` of a JWT, None if it is not one or has no numeric `exp`.
pub fn jwt_exp(token: &str) -> Option<i64> {
    claims(token)?.get("exp")?.as_i64()
}

/// A JWT with `claims` and a signature that verifies nowhere: enough for the refresher to treat
/// it as a PAT (it only reads the claims) when the server under test never checks it.
pub fn unsigned(claims: &Value) -> String {
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.{}",
        b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes()),
        b64(b"not-a-signature")
    )
}
