//! The shared vocabulary of what is published: a token, the scheme it is presented with, and the
//! consistent set of values every sink writes.

use crate::{clock::rfc3339, secret::Secret};

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

/// One consistent set of published values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSet {
    /// The token and its scheme.
    pub auth: Authorization,
    /// `exp` of the token (unix seconds, Label Studio's clock); None for legacy tokens.
    pub expires_at: Option<i64>,
    /// When it was obtained (unix seconds).
    pub refreshed_at: i64,
}

impl TokenSet {
    /// `expires_at` as RFC 3339 UTC, or empty for legacy tokens.
    pub fn expires_at_rfc3339(&self) -> String {
        self.expires_at.map(rfc3339).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_value_and_expiry_text() {
        let set = TokenSet {
            auth: Authorization {
                scheme: Scheme::Bearer,
                token: Secret::new("abc"),
            },
            expires_at: Some(60),
            refreshed_at: 0,
        };
        assert_eq!(set.auth.header_value().expose(), "Bearer abc");
        assert_eq!(set.expires_at_rfc3339(), "1970-01-01T00:01:00Z");
        assert!(
            !format!("{set:?}").contains("abc"),
            "Debug never shows the token"
        );
    }
}
