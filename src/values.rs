//! Typed command-line values. Each parses with `FromStr`, so a mistake fails at start-up with one
//! line naming the flag and its environment variable (see [`crate::cli::one_line_error`]).

use std::{fmt, str::FromStr, time::Duration};

use crate::secret::shown;

/// Longest accepted duration. No knob here means anything beyond a year, and the cap keeps every
/// later `Instant + Duration` and lead-time sum far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// A duration written like `90s`, `5m`, `1h30m`, `250ms` or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Dur).ok_or_else(|| {
            format!(
                "'{}' is not a duration up to 365d: write e.g. 90s, 5m, 1h30m or 250ms",
                shown(s)
            )
        })
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs_f64())
    }
}

/// A [`Dur`] greater than zero (timeouts, first retry delay): zero would mean "fail at once" or a
/// hot loop, never what anyone wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PositiveDur(pub Duration);

impl FromStr for PositiveDur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match Dur::from_str(s)? {
            Dur(d) if d.is_zero() => Err(format!("'{}' must be greater than 0", shown(s))),
            Dur(d) => Ok(PositiveDur(d)),
        }
    }
}

/// Parses `90s`, `1h30m`, `250ms`, `1.5s` or bare seconds; None for anything else or beyond a year.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs)).filter(|d| *d <= MAX_DURATION);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return None,
        };
        total = total.checked_add(Duration::try_from_secs_f64(value * scale).ok()?)?;
    }
    Some(total).filter(|d| *d <= MAX_DURATION)
}

/// A fraction strictly between 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Fraction(pub f64);

impl FromStr for Fraction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().parse::<f64>() {
            Ok(f) if f > 0.0 && f < 1.0 => Ok(Fraction(f)),
            _ => Err(format!(
                "'{}' must be a number between 0 and 1 (exclusive), e.g. 0.66",
                shown(s)
            )),
        }
    }
}

/// A number of connections: 1 to 4096.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCount(pub usize);

impl ConnectionCount {
    /// The most accepted: as many as the proxy accepts client connections (more could never be
    /// in use at once with HTTP/1 clients).
    pub const MAX: usize = 4096;
}

impl FromStr for ConnectionCount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().parse::<usize>() {
            Ok(n) if (1..=Self::MAX).contains(&n) => Ok(ConnectionCount(n)),
            _ => Err(format!(
                "'{}' must be a whole number from 1 to {}, e.g. 64",
                shown(s),
                Self::MAX
            )),
        }
    }
}

impl fmt::Display for ConnectionCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A Unix file mode written in octal, at most 0777, that lets the owner read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl FromStr for FileMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let t = t.strip_prefix("0o").unwrap_or(t);
        match u32::from_str_radix(t, 8) {
            Ok(m) if m <= 0o777 && m & 0o400 != 0 => Ok(FileMode(m)),
            Ok(_) => Err(format!(
                "'{}' must be an octal mode up to 0777 that the owner can read, e.g. 0600 or 0640",
                shown(s)
            )),
            Err(_) => Err(format!(
                "'{}' is not an octal file mode, e.g. 0600 or 0640",
                shown(s)
            )),
        }
    }
}

/// An `http(s)://` base URL with no query or fragment; a trailing slash is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// As written, without the trailing slash.
    text: String,
    /// The same URL parsed: validated once at start-up (a bad port or host is a usage error, not
    /// a network failure retried forever), and what the proxy builds request URLs from.
    parsed: reqwest::Url,
}

impl BaseUrl {
    /// Joins an absolute API path (starting with `/`).
    pub fn join(&self, path: &str) -> String {
        format!("{}{}", self.text, path)
    }
    /// The URL as given, without trailing slash.
    pub fn as_str(&self) -> &str {
        &self.text
    }
    /// The URL parsed (its path is `/` when none was given).
    pub fn parsed(&self) -> &reqwest::Url {
        &self.parsed
    }
    /// True for `https://`.
    pub fn is_https(&self) -> bool {
        self.text.starts_with("https://")
    }
    /// What follows `http(s)://`, as written.
    fn after_scheme(&self) -> &str {
        self.text
            .strip_prefix("https://")
            .or_else(|| self.text.strip_prefix("http://"))
            .unwrap_or(&self.text)
    }
    /// The authority (`host[:port]`), as written.
    pub fn authority(&self) -> &str {
        let rest = self.after_scheme();
        rest.split('/').next().unwrap_or(rest)
    }
    /// The host without port or IPv6 brackets.
    pub fn host(&self) -> &str {
        let a = self.authority();
        if let Some(v6) = a.strip_prefix('[') {
            return v6.split(']').next().unwrap_or(v6);
        }
        a.rsplit_once(':').map(|(h, _)| h).unwrap_or(a)
    }
    /// The path prefix after the authority (`""` or e.g. `/label-studio`).
    pub fn path_prefix(&self) -> &str {
        let rest = self.after_scheme();
        rest.find('/').map(|i| &rest[i..]).unwrap_or("")
    }
    /// True when the host is a loopback address or `localhost` (cleartext never leaves the machine).
    pub fn is_loopback(&self) -> bool {
        let h = self.host();
        h.eq_ignore_ascii_case("localhost")
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl FromStr for BaseUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().trim_end_matches('/');
        let rest = t
            .strip_prefix("http://")
            .or_else(|| t.strip_prefix("https://"))
            .ok_or_else(|| format!("'{}' must start with http:// or https://", shown(s)))?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("'{}' has no host", shown(s)));
        }
        if t.contains(['?', '#', ' ']) {
            return Err(format!(
                "'{}' must be a plain base URL without query, fragment or spaces",
                shown(s)
            ));
        }
        if t.contains('@') {
            // Not echoed: what is before the `@` is a password.
            return Err("do not put credentials (user:password@) in the URL".to_owned());
        }
        let parsed = reqwest::Url::parse(t)
            .map_err(|e| format!("'{}' is not a valid URL: {e}", shown(s)))?;
        Ok(BaseUrl {
            text: t.to_owned(),
            parsed,
        })
    }
}

/// For messages: as written, except parts that look like a credential (see [`shown`]).
impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shown(&self.text))
    }
}

/// An absolute API path such as `/api/current-user/whoami`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath(pub String);

impl FromStr for ApiPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if !t.starts_with('/') || t.contains(char::is_whitespace) {
            return Err(format!(
                "'{}' must be an absolute path like /api/current-user/whoami",
                shown(s)
            ));
        }
        Ok(ApiPath(t.to_owned()))
    }
}

/// A DNS-subdomain object name (lowercase letters, digits, '-' and '.', alphanumeric at both ends,
/// no empty label).
pub fn is_object_name(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && v.as_bytes()[0].is_ascii_alphanumeric()
        && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric()
        && !v.contains("..")
}

/// A Kubernetes object name (a Lease, a namespace), in its one canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectName(pub String);

impl FromStr for ObjectName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if is_object_name(s) {
            Ok(ObjectName(s.to_owned()))
        } else {
            Err(format!(
                "'{}' is not an object name (lowercase letters, digits, '-' and '.', at most 253)",
                shown(s)
            ))
        }
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shown(&self.0))
    }
}

/// A `[namespace/]name` reference to a namespaced Kubernetes object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// Namespace, if given; otherwise the pod's own / the kubeconfig's default.
    pub namespace: Option<String>,
    /// Object name.
    pub name: String,
}

impl ObjectRef {
    /// The namespace, falling back to `default_ns`.
    pub fn namespace_or<'a>(&'a self, default_ns: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(default_ns)
    }
}

impl FromStr for ObjectRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (ns, name) = match t.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, t),
        };
        let valid = is_object_name;
        if !valid(name) || ns.is_some_and(|n| !valid(n) || n.len() > 63 || n.contains('.')) {
            return Err(format!(
                "'{}' must be `name` or `namespace/name` (lowercase letters, digits, '-' and '.')",
                shown(s)
            ));
        }
        Ok(ObjectRef {
            namespace: ns.map(str::to_owned),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A 40-hex legacy token is a valid object name: never shown.
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}", shown(ns), shown(&self.name)),
            None => f.write_str(&shown(&self.name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("42"), Some(Duration::from_secs(42)));
        assert_eq!(parse_duration("365d"), Some(MAX_DURATION));
        for bad in [
            "",
            "s",
            "5x",
            "-1s",
            "1h m",
            "1.2.3s",
            "366d",
            "99999999999",
            "1e400s",
            "10000000000000000000s10000000000000000000s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert!("0s"
            .parse::<PositiveDur>()
            .unwrap_err()
            .contains("greater than 0"));
        assert_eq!(
            "2s".parse::<PositiveDur>().unwrap(),
            PositiveDur(Duration::from_secs(2))
        );
    }

    #[test]
    fn object_refs() {
        let r: ObjectRef = "ns-1/my.secret".parse().unwrap();
        assert_eq!(
            (r.namespace.as_deref(), r.name.as_str()),
            (Some("ns-1"), "my.secret")
        );
        let r: ObjectRef = "name".parse().unwrap();
        assert_eq!(r.namespace_or("pod-ns"), "pod-ns");
        for bad in ["", "/x", "x/", "A/b", "a/b/c", "a_b", "-a"] {
            assert!(bad.parse::<ObjectRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_modes_fractions() {
        assert_eq!(
            "http://ls:8080/".parse::<BaseUrl>().unwrap().join("/api"),
            "http://ls:8080/api"
        );
        for bad in [
            "ls:8080",
            "ftp://x",
            "http://",
            "http://u:p@h",
            "http://h/?q",
            // Shaped like a URL but not one: refused here, not retried as network errors later.
            "http://127.0.0.1:99999",
            "http://h:port",
            "http://exa<mple",
        ] {
            assert!(bad.parse::<BaseUrl>().is_err(), "{bad}");
        }
        assert_eq!("0640".parse::<FileMode>().unwrap(), FileMode(0o640));
        assert!("0040".parse::<FileMode>().is_err());
        assert!("0999".parse::<FileMode>().is_err());
        assert!("1".parse::<Fraction>().is_err());
        assert!("0.5".parse::<Fraction>().is_ok());
    }

    #[test]
    fn url_parts_and_loopback() {
        let u: BaseUrl = "http://label-studio:8080/ls/".parse().unwrap();
        assert_eq!(
            (u.authority(), u.host(), u.path_prefix()),
            ("label-studio:8080", "label-studio", "/ls")
        );
        assert!(!u.is_loopback() && !u.is_https());
        for local in ["http://127.0.0.1:1", "http://localhost", "http://[::1]:80"] {
            assert!(local.parse::<BaseUrl>().unwrap().is_loopback(), "{local}");
        }
        assert!("https://ls.example".parse::<BaseUrl>().unwrap().is_https());
    }
}
