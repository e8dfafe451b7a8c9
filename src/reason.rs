//! The closed set of failure reasons. Every error in the crate maps to one of these `&'static str`
//! labels, so metrics, readiness and Events never carry free-form (possibly secret) text.

/// Why a refresh, validation, source read or publish failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// 401 "Token is invalid" and similar: the PAT is not accepted (malformed, other server's, bad signature).
    Unauthorized,
    /// 401 "Token is expired", or the PAT's own `exp` has passed.
    ExpiredPat,
    /// 401 "Token is blacklisted": revoked or rotated away.
    RevokedPat,
    /// 401 "Token has wrong type": an access token was given where a PAT belongs.
    WrongTokenType,
    /// 401 "No active account found": the PAT's user is deactivated.
    InactiveUser,
    /// 400/405/415: the request was refused as malformed.
    BadRequest,
    /// 404: wrong URL or path.
    NotFound,
    /// 5xx from Label Studio (or a proxy in front of it).
    ServerError,
    /// 429 Too Many Requests.
    RateLimited,
    /// A request timed out.
    Timeout,
    /// Connection refused/reset, DNS failure and other transport errors.
    Network,
    /// TLS handshake or certificate verification failed.
    Tls,
    /// 200 with a body that is not what Label Studio sends (HTML, bad JSON, oversized, no access token).
    InvalidResponse,
    /// The validation call failed for a reason other than the ones below (e.g. path not found).
    ValidationFailed,
    /// The exchange worked but the API rejects `Bearer` access tokens: JWT tokens are off for the organization.
    JwtDisabled,
    /// The API says legacy token authentication is disabled for the organization.
    LegacyDisabled,
    /// The PAT source (file, Secret) is missing, unreadable, empty or lacks the key.
    SourceUnavailable,
    /// Publishing to a sink failed (disk full, read-only, API server refused).
    PublishFailed,
}

impl Reason {
    /// Every reason, for pre-registering metric series at zero.
    pub const ALL: [Reason; 18] = [
        Reason::Unauthorized,
        Reason::ExpiredPat,
        Reason::RevokedPat,
        Reason::WrongTokenType,
        Reason::InactiveUser,
        Reason::BadRequest,
        Reason::NotFound,
        Reason::ServerError,
        Reason::RateLimited,
        Reason::Timeout,
        Reason::Network,
        Reason::Tls,
        Reason::InvalidResponse,
        Reason::ValidationFailed,
        Reason::JwtDisabled,
        Reason::LegacyDisabled,
        Reason::SourceUnavailable,
        Reason::PublishFailed,
    ];

    /// The metric label / readiness reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unauthorized => "unauthorized",
            Reason::ExpiredPat => "expired_pat",
            Reason::RevokedPat => "revoked_pat",
            Reason::WrongTokenType => "wrong_token_type",
            Reason::InactiveUser => "inactive_user",
            Reason::BadRequest => "bad_request",
            Reason::NotFound => "not_found",
            Reason::ServerError => "server_error",
            Reason::RateLimited => "rate_limited",
            Reason::Timeout => "timeout",
            Reason::Network => "network",
            Reason::Tls => "tls",
            Reason::InvalidResponse => "invalid_response",
            Reason::ValidationFailed => "validation_failed",
            Reason::JwtDisabled => "jwt_disabled",
            Reason::LegacyDisabled => "legacy_disabled",
            Reason::SourceUnavailable => "source_unavailable",
            Reason::PublishFailed => "publish_failed",
        }
    }

    /// A short, fixed, secret-free explanation for `/readyz`, Events and the proxy's 503 bodies
    /// (details with server text and URLs go to the log only).
    pub fn summary(self) -> &'static str {
        match self {
            Reason::Unauthorized => "Label Studio does not accept the PAT",
            Reason::ExpiredPat => "the PAT has expired: create a new one",
            Reason::RevokedPat => "the PAT was revoked or rotated: put the new PAT into the source",
            Reason::WrongTokenType => "the configured token is not a Personal Access Token",
            Reason::InactiveUser => "the PAT's user is deactivated",
            Reason::BadRequest => "Label Studio refused the request as malformed",
            Reason::NotFound => "the URL or path does not exist on Label Studio",
            Reason::ServerError => "Label Studio answered with a server error",
            Reason::RateLimited => "Label Studio asked us to slow down",
            Reason::Timeout => "Label Studio did not answer in time",
            Reason::Network => "cannot reach Label Studio",
            Reason::Tls => "TLS to Label Studio failed",
            Reason::InvalidResponse => "the answer was not what Label Studio sends",
            Reason::ValidationFailed => "the new token could not be validated",
            Reason::JwtDisabled => "JWT API tokens are disabled for the organization",
            Reason::LegacyDisabled => "legacy tokens are disabled for the organization",
            Reason::SourceUnavailable => "the PAT source is unavailable",
            Reason::PublishFailed => "publishing to a sink failed",
        }
    }

    /// True when Label Studio looks unreachable or down (rather than refusing us): worth probing
    /// `/health` to retry the moment it is back.
    pub fn is_outage(self) -> bool {
        matches!(
            self,
            Reason::Network | Reason::Timeout | Reason::ServerError | Reason::Tls
        )
    }

    /// True when the PAT itself is the problem: the user may have rotated it, so re-read the source
    /// before backing off.
    pub fn blames_pat(self) -> bool {
        matches!(
            self,
            Reason::Unauthorized
                | Reason::ExpiredPat
                | Reason::RevokedPat
                | Reason::WrongTokenType
                | Reason::InactiveUser
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let s = r.as_str();
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
            assert!(seen.insert(s), "duplicate {s}");
            let summary = r.summary();
            assert!(!summary.is_empty() && !summary.contains('\n'), "{s}");
        }
    }
}
