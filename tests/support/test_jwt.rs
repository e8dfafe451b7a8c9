//! Unsigned-looking HS256 JWTs with a given payload, for the root crate's tests against fake Label
//! Studio answers (`tests/exchange_http.rs`, `tests/hostile_answers.rs` include this file). The
//! refresher never checks signatures (Label Studio does), so a fixed `sig` is enough.

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// A JWT with `payload` (JSON text) as its claims.
pub fn jwt(payload: &str) -> String {
    format!(
        "{}.{}.{}",
        b64(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64(payload),
        b64("sig")
    )
}
