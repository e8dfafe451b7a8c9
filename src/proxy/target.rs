//! The request target: one canonical form decides what the proxy does, and exactly that form is
//! what Label Studio receives.
//!
//! A reverse proxy that classifies one spelling of a path and sends another is bypassed by every
//! difference between the two (a `\` that the URL library turns into `/`, a `..` that climbs out
//! of `--url`'s path prefix, `%74oken` that the server decodes). So instead of guessing how each
//! server normalises, the proxy accepts only targets that are *already* normal, in the sense that
//! no server or URL library has anything left to change:
//!
//! - the path starts with `/` and holds only RFC 3986 `pchar`s minus `;` (no `\`, no controls,
//!   no spaces, no non-ASCII bytes, no `"<>^`{|}`);
//! - every `%` starts a `%XX` triplet, and no triplet encodes an unreserved character (those
//!   have one spelling: their own), `/`, `\`, `;`, `%` (a second decoding would find more) or a
//!   control byte;
//! - no empty segment (`//`) except the last (a trailing `/`), no `.` or `..` segment.
//!
//! Label Studio's API and file URLs use none of what is refused (`label-studio-sdk`, requests,
//! httpx and the ML backend percent-encode with uppercase hex and never produce dot segments),
//! so nothing a real client sends is lost. What passes is then classified case-insensitively on
//! its decoded form against the endpoints that handle credentials or organization-wide auth
//! settings ([`route`]), appended to `--url`'s path prefix, and checked once more after the URL
//! library has built the upstream URL: if its path is not byte for byte the one classified, the
//! request is refused ([`upstream_url`]).

use http::Method;

/// Why a request target is refused before anything else is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonCanonical {
    /// Not an origin-form path (`/…`).
    NotAbsolute,
    /// A byte that is not a `pchar` (or is `;` or `\`).
    Byte,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// A `%XX` that encodes an unreserved character, a delimiter that changes the path's
    /// structure (`/`, `\`, `;`) or a control byte.
    Escape,
    /// `//` inside the path.
    EmptySegment,
    /// A `.` or `..` segment.
    DotSegment,
}

impl NonCanonical {
    /// One line for the client.
    pub fn detail(self) -> &'static str {
        match self {
            NonCanonical::NotAbsolute => "the request target must be a path starting with /",
            NonCanonical::Byte => {
                "the request path contains a character that must be percent-encoded (or ';' or '\\')"
            }
            NonCanonical::BadEscape => "the request path has a '%' not followed by two hex digits",
            NonCanonical::Escape => {
                "the request path percent-encodes a letter, digit, '-', '.', '_', '~', '/', '\\', ';', '%' or a control character: send it as itself (or not at all)"
            }
            NonCanonical::EmptySegment => "the request path contains '//'",
            NonCanonical::DotSegment => "the request path contains a '.' or '..' segment",
        }
    }
}

/// Whether `b` may appear raw in a canonical path: RFC 3986 `pchar` (unreserved, sub-delims,
/// `:`, `@`) and `/`, minus `;` (a path parameter delimiter for some servers and ingresses, never
/// used by Label Studio).
fn raw_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

/// Whether a byte may be sent percent-encoded: not one with a single spelling of its own
/// (unreserved), not one that changes the path's structure once decoded, not `%` itself (a
/// server or ingress that decodes twice would otherwise see `%2F` become `/`), not a control.
fn escape_ok(b: u8) -> bool {
    !(b.is_ascii_alphanumeric()
        || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/' | b'\\' | b';' | b'%')
        || b < 0x20
        || b == 0x7f)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Checks that `path` is canonical (see the module docs).
pub fn check(path: &str) -> Result<(), NonCanonical> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(NonCanonical::NotAbsolute);
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(NonCanonical::BadEscape);
            };
            if !escape_ok(h * 16 + l) {
                return Err(NonCanonical::Escape);
            }
            i += 3;
        } else if raw_ok(b) {
            i += 1;
        } else {
            return Err(NonCanonical::Byte);
        }
    }
    // The first segment is the empty one before the leading `/`; the last may be empty (a
    // trailing `/`).
    let mut segments = path[1..].split('/').peekable();
    while let Some(s) = segments.next() {
        match s {
            "" if segments.peek().is_some() => return Err(NonCanonical::EmptySegment),
            "." | ".." => return Err(NonCanonical::DotSegment),
            _ => {}
        }
    }
    Ok(())
}

/// What the proxy does with a request, by method and (canonical) path alone.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `POST /api/token/refresh[/]`: answered here with a stand-in.
    LocalRefresh,
    /// An endpoint that handles credentials or organization-wide auth settings: refused.
    Blocked,
    /// Not Label Studio's API or a file URL an API client follows: refused.
    Outside,
    /// Everything else goes to Label Studio.
    Forward,
}

/// What an API client reaches through the proxy (an allow-list, first path segment): the API,
/// and the file URLs that task data points at (uploads and local files under `data/`, cloud and
/// local storage under `storage-data/`, `tasks/<id>/resolve|presign/` and
/// `projects/<id>/resolve|presign/`), and `health`. Everything else is a web page for a
/// browser, and Label Studio authenticates our bearer token on every view
/// (`jwt_auth.middleware.JWTAuthenticationMiddleware`, with CSRF checks off): `/user/account/`
/// would show the legacy token, `/people/` the invite link.
const FORWARDED_ROOTS: &[&str] = &["api", "data", "storage-data", "health"];

/// The storage-resolving views outside `api/` (`io_storages/urls.py`): `<root>/<id>/<leaf>/`.
const RESOLVE_ROOTS: &[&str] = &["tasks", "projects"];
const RESOLVE_LEAVES: &[&str] = &["resolve", "presign"];

/// Label Studio 1.23.2's API endpoints that hand out, create, rotate or revoke credentials, or
/// set authentication for the whole organization (read from the installed package's URL
/// configuration: `jwt_auth/urls.py`, `users/urls.py`, `organizations/urls.py`,
/// `session_policy/urls.py`). Each entry covers the path and everything under it.
///
/// - `api/token`: PAT list/create, `refresh` (answered locally instead), `rotate`, `blacklist`;
/// - `api/jwt`: `settings`, JWT and legacy tokens on or off for the organization;
/// - `api/current-user/token`, `api/current-user/reset-token`: the legacy token (never expires);
/// - `api/invite`: the organization's invite link and its `reset-token`, a standing credential
///   to join the organization;
/// - `api/session-policy`: the organization's session lifetime.
const BLOCKED: &[&str] = &[
    "api/token",
    "api/jwt",
    "api/current-user/token",
    "api/current-user/reset-token",
    "api/invite",
    "api/session-policy",
];

/// The path percent-decoded once (what Label Studio's WSGI server hands Django) and lowercased,
/// without the leading `/` and a trailing one. Canonical paths decode to no `/` of their own.
fn decoded_lower(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    text.trim_start_matches('/')
        .trim_end_matches('/')
        .to_owned()
}

/// Classifies a canonical path (callers [`check`] it first). Case-insensitive, although Django's
/// routes are not: an ingress or a future Label Studio may fold case, and refusing more costs
/// nothing.
pub fn route(method: &Method, path: &str) -> Route {
    let p = decoded_lower(path);
    let under = |prefix: &str| {
        p == prefix
            || p.strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    if p == "api/token/refresh" && method == Method::POST {
        return Route::LocalRefresh;
    }
    if BLOCKED.iter().any(|b| under(b)) {
        return Route::Blocked;
    }
    // Segments as an iterator (this runs for every request): the first, and whether there are
    // exactly three.
    let mut segments = p.split('/');
    let root = segments.next().unwrap_or_default();
    let allowed = FORWARDED_ROOTS.contains(&root)
        || match (segments.next(), segments.next(), segments.next()) {
            (Some(id), Some(leaf), None) => {
                RESOLVE_ROOTS.contains(&root)
                    && !id.is_empty()
                    && id.bytes().all(|b| b.is_ascii_digit())
                    && RESOLVE_LEAVES.contains(&leaf)
            }
            _ => false,
        };
    if allowed {
        Route::Forward
    } else {
        Route::Outside
    }
}

/// The upstream request target (origin-form) of a request with a canonical `path`: the base
/// URL's path `prefix` (without trailing slash) and the path, then the client's query. `None`
/// when the URI library would send a path or query other than exactly those strings (then the
/// request is refused: what was classified must be what is sent).
pub fn upstream_target(
    prefix: &str,
    path: &str,
    query: Option<&str>,
) -> Option<http::uri::PathAndQuery> {
    let mut s = String::with_capacity(prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1));
    s.push_str(prefix);
    s.push_str(path);
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    let target = http::uri::PathAndQuery::try_from(s).ok()?;
    let path_sent = target.path().strip_prefix(prefix)?;
    (path_sent == path && target.query() == query).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_endpoints_are_answered_or_refused_in_every_canonical_spelling() {
        let post = Method::POST;
        for p in ["/api/token/refresh", "/api/token/refresh/"] {
            assert_eq!(route(&post, p), Route::LocalRefresh, "{p}");
        }
        for p in [
            "/api/token/rotate/",
            "/api/token/",
            "/api/token",
            "/api/token/blacklist/",
            "/API/TOKEN/ROTATE/",
            "/api/jwt/settings",
            "/api/jwt/settings/",
            "/Api/Jwt/Settings",
            "/api/current-user/token",
            "/api/current-user/reset-token/",
            "/api/invite",
            "/api/invite/reset-token",
            "/api/session-policy/",
        ] {
            assert_eq!(route(&post, p), Route::Blocked, "{p}");
        }
        assert_eq!(route(&Method::GET, "/api/token/refresh"), Route::Blocked);
        for p in [
            "/user/account/",
            "/user/login/",
            "/logout",
            "/api-auth/login/",
            "/admin/",
            "/django-rq/",
            "/people/",
            "/projects/1/settings/",
            "/projects/",
            "/tasks/x/presign/",
            "/tasks/1/presign/extra",
            "/",
        ] {
            assert_eq!(route(&Method::GET, p), Route::Outside, "{p}");
        }
        for p in [
            "/api/projects/",
            "/api/tokenizer",
            "/api/token%21/",
            "/api/users/",
            "/api/users/1/",
            "/api/current-user/whoami",
            "/data/upload/1/x.png",
            "/data/local-files/",
            "/storage-data/uploaded/",
            "/tasks/12/presign/",
            "/projects/3/resolve/",
            "/health",
        ] {
            assert_eq!(route(&Method::GET, p), Route::Forward, "{p}");
        }
    }

    #[test]
    fn only_canonical_targets_pass() {
        for ok in [
            "/",
            "/api/projects/",
            "/api/tasks",
            "/data/upload/1/x%20y.png",
            "/data/upload/1/%C3%A9t%C3%A9.png",
            "/a:b@c!$&'()*+,=",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", NonCanonical::NotAbsolute),
            ("*", NonCanonical::NotAbsolute),
            ("api/x", NonCanonical::NotAbsolute),
            ("/api\\current-user\\token", NonCanonical::Byte),
            ("/api/token;x/rotate/", NonCanonical::Byte),
            ("/a\"b", NonCanonical::Byte),
            ("/a{b}", NonCanonical::Byte),
            ("/a%", NonCanonical::BadEscape),
            ("/a%2", NonCanonical::BadEscape),
            ("/a%zz", NonCanonical::BadEscape),
            ("/api/%74oken/rotate/", NonCanonical::Escape),
            ("/api%2Ftoken%2Frotate/", NonCanonical::Escape),
            ("/api%2ftoken", NonCanonical::Escape),
            ("/api%5Ctoken", NonCanonical::Escape),
            ("/api/%2E%2E/x", NonCanonical::Escape),
            ("/api/%2e/x", NonCanonical::Escape),
            ("/api/x%3B", NonCanonical::Escape),
            ("/api/%252e%252e/token/", NonCanonical::Escape),
            ("/api/x%00", NonCanonical::Escape),
            ("/api/x%7F", NonCanonical::Escape),
            ("//api/token/refresh/", NonCanonical::EmptySegment),
            ("/api//token", NonCanonical::EmptySegment),
            ("/api/./token", NonCanonical::DotSegment),
            ("/../x", NonCanonical::DotSegment),
            ("/api/projects/..", NonCanonical::DotSegment),
            ("/.", NonCanonical::DotSegment),
        ] {
            assert_eq!(check(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn upstream_targets_keep_the_prefix_and_the_exact_path() {
        for prefix in ["", "/ls", "/a/b"] {
            for (path, query) in [
                ("/", None),
                ("/api/projects/", None),
                ("/api/projects/", Some("page=2&page_size=10")),
                ("/api/tasks", Some("ids=1,2&q=%20x")),
                ("/data/upload/1/x%20y.png", None),
                ("/x", Some("a=%zz&b=%C3%A9")),
                ("/x", Some("")),
            ] {
                check(path).unwrap();
                let t = upstream_target(prefix, path, query).unwrap();
                assert_eq!(t.path(), format!("{prefix}{path}"), "{prefix} + {path}");
                assert_eq!(t.query(), query);
                let q = query.map(|q| format!("?{q}")).unwrap_or_default();
                assert_eq!(t.as_str(), format!("{prefix}{path}{q}"));
            }
        }
    }

    #[test]
    fn a_target_the_uri_library_would_change_is_refused() {
        // A fragment would be cut, a space or a control byte is not a URI byte: nothing that is
        // not sent byte for byte as classified leaves the proxy.
        assert_eq!(upstream_target("", "/api/x#frag", None), None);
        assert_eq!(upstream_target("", "/api/x", Some("a=1#frag")), None);
        assert_eq!(upstream_target("", "/api/x y", None), None);
        assert_eq!(upstream_target("", "/api/x", Some("a\n")), None);
        assert_eq!(upstream_target("", "/api/x", Some("a b")), None);
    }
}
