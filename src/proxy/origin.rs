//! Who may talk to the proxy: the `Host` it is addressed by, and whether a browser sent the
//! request on behalf of a web page.
//!
//! The proxy attaches the token to whatever reaches its port, so to a browser it is a login
//! cookie for Label Studio's API: a page on any site could make the browser send state-changing
//! requests to `http://127.0.0.1:9418` (a form POST, a no-cors `fetch`), and with DNS rebinding
//! (a name of the attacker's that resolves to 127.0.0.1) read the answers too. Browsers always
//! send `Host` (the name the page used) and, for such requests, `Origin` and `Sec-Fetch-Site`;
//! API clients send `Host` and none of the others. So:
//!
//! - `Host` (and an HTTP/2 `:authority`) must name this proxy: a loopback address, the address
//!   the connection came in on, `localhost`, or a name given with `--proxy-allow-host` (a Service
//!   name). Rebinding needs a name of the attacker's, which is none of these. HTTP/1.1 without
//!   `Host`, or with two, is malformed (RFC 9112 §3.2) and refused.
//! - `Origin`, when present, must name one of the same hosts (`null`, an opaque origin, is
//!   refused), and `Sec-Fetch-Site: cross-site` is refused whatever else is sent.
//!
//! Ports are not compared: the proxy may be reached through a port-forward or a Service port.

use std::{fmt, net::IpAddr, str::FromStr};

use http::{header, uri::Authority, HeaderMap, Request, StatusCode, Version};

/// A host name (or IP address) the proxy answers to besides loopback and `localhost`:
/// lowercase, without port, scheme or trailing dot.
#[derive(Clone, PartialEq, Eq)]
pub struct HostName(String);

impl fmt::Debug for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for HostName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().trim_end_matches('.').to_ascii_lowercase();
        if parse_ip(&t).is_some() {
            return Ok(HostName(t));
        }
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if t.is_empty() || t.len() > 253 || !t.split('.').all(label_ok) {
            // The value is not echoed: whatever was put here by mistake (a token) stays out of logs.
            return Err(
                "not a host name: give a DNS name or IP address without scheme, port or path (e.g. my-proxy.my-namespace.svc)"
                    .into(),
            );
        }
        Ok(HostName(t))
    }
}

/// An IP literal as it appears in a `Host`: `127.0.0.1` or `[::1]` (brackets optional here).
fn parse_ip(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// Why a request was refused before its target was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// HTTP/1.1 without `Host`, several `Host`s or `Origin`s, or one that is not an authority.
    Malformed(&'static str),
    /// Addressed to a name this proxy does not answer to (DNS rebinding, or a misconfiguration).
    ForeignHost,
    /// Sent by a browser for a page of another site.
    CrossSite,
}

impl Refusal {
    /// The status to answer with.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
            Refusal::ForeignHost => StatusCode::MISDIRECTED_REQUEST,
            Refusal::CrossSite => StatusCode::FORBIDDEN,
        }
    }

    /// One line for the client.
    pub fn detail(self) -> &'static str {
        match self {
            Refusal::Malformed(why) => why,
            Refusal::ForeignHost => {
                "this proxy answers only to loopback addresses, localhost and the names given with --proxy-allow-host (LS_PROXY_ALLOW_HOSTS)"
            }
            Refusal::CrossSite => {
                "requests sent by a browser for another site are refused: the proxy holds a credential"
            }
        }
    }
}

/// The hosts one connection's requests may name.
#[derive(Debug, Clone)]
pub struct Admission {
    names: Vec<HostName>,
}

impl Admission {
    /// Loopback, `localhost` and `names`.
    pub fn new(names: &[HostName]) -> Self {
        Admission {
            names: names.to_vec(),
        }
    }

    /// Whether `host` (no port) names this proxy on a connection that came in on `local`.
    fn names_us(&self, host: &str, local: IpAddr) -> bool {
        let h = host.trim_end_matches('.').to_ascii_lowercase();
        if h == "localhost" {
            return true;
        }
        if let Some(ip) = parse_ip(&h) {
            return ip.is_loopback() || ip == local.to_canonical();
        }
        self.names.iter().any(|n| n.0 == h)
    }

    /// An authority (`host[:port]`, no user info) that names this proxy.
    fn authority_ok(&self, value: &[u8], local: IpAddr) -> Result<(), Refusal> {
        let a = Authority::try_from(value)
            .map_err(|_| Refusal::Malformed("the Host header is not a host[:port]"))?;
        if a.as_str().contains('@') {
            return Err(Refusal::Malformed("the Host header carries user info"));
        }
        if self.names_us(a.host(), local) {
            Ok(())
        } else {
            Err(Refusal::ForeignHost)
        }
    }

    /// Decides whether `req`, received on a connection to `local`, may be served.
    pub fn admit<B>(&self, req: &Request<B>, local: IpAddr) -> Result<(), Refusal> {
        let headers = req.headers();
        let mut hosts = headers.get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(_), Some(_)) => return Err(Refusal::Malformed("more than one Host header")),
            (Some(h), None) => self.authority_ok(h.as_bytes(), local)?,
            (None, _) => {
                if req.version() == Version::HTTP_11 {
                    return Err(Refusal::Malformed(
                        "HTTP/1.1 requests must carry a Host header",
                    ));
                }
            }
        }
        // HTTP/2's :authority (hyper puts it in the URI); absolute-form HTTP/1 targets are
        // refused before this, so for HTTP/1 the URI has none.
        if let Some(a) = req.uri().authority() {
            self.authority_ok(a.as_str().as_bytes(), local)?;
        }
        self.not_cross_site(headers, local)
    }

    fn not_cross_site(&self, headers: &HeaderMap, local: IpAddr) -> Result<(), Refusal> {
        if headers
            .get_all("sec-fetch-site")
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
        {
            return Err(Refusal::CrossSite);
        }
        let mut origins = headers.get_all(header::ORIGIN).iter();
        let origin = match (origins.next(), origins.next()) {
            (None, _) => return Ok(()),
            (Some(_), Some(_)) => return Err(Refusal::Malformed("more than one Origin header")),
            (Some(o), None) => o.as_bytes(),
        };
        // `scheme://host[:port]`, nothing else (RFC 6454 §7); `null` and anything unparsable
        // are not ours.
        let rest = origin
            .strip_prefix(b"http://")
            .or_else(|| origin.strip_prefix(b"https://"))
            .ok_or(Refusal::CrossSite)?;
        match self.authority_ok(rest, local) {
            Ok(()) => Ok(()),
            Err(_) => Err(Refusal::CrossSite),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn req(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/api/projects/").version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_names_parse_strictly() {
        for ok in ["proxy.ns.svc", "Proxy.NS.svc.", "10.0.0.7", "[::1]", "a"] {
            assert!(ok.parse::<HostName>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "http://x",
            "x:80",
            "x/y",
            "-x",
            "a..b",
            "*.example",
            "x y",
        ] {
            let e = bad.parse::<HostName>().unwrap_err();
            if bad.len() > 3 {
                assert!(!e.contains(bad), "{e}");
            }
        }
    }

    #[test]
    fn api_clients_pass_and_browsers_of_other_sites_do_not() {
        let a = Admission::new(&["ls-proxy.team.svc".parse().unwrap()]);
        let pod_ip: IpAddr = "10.1.2.3".parse().unwrap();
        for host in [
            "127.0.0.1:9418",
            "127.0.0.2",
            "localhost:9418",
            "LOCALHOST",
            "[::1]:9418",
            "ls-proxy.team.svc:80",
            "ls-proxy.team.svc.",
        ] {
            assert_eq!(
                a.admit(&req(Version::HTTP_11, &[("host", host)]), LO),
                Ok(()),
                "{host}"
            );
        }
        assert_eq!(
            a.admit(&req(Version::HTTP_11, &[("host", "10.1.2.3:9418")]), pod_ip),
            Ok(())
        );
        // DNS rebinding: a name of the attacker's pointing at us.
        for host in [
            "evil.example:9418",
            "10.1.2.3",
            "localhost.evil.example",
            "u@127.0.0.1",
        ] {
            assert_ne!(
                a.admit(&req(Version::HTTP_11, &[("host", host)]), LO),
                Ok(()),
                "{host}"
            );
        }
        assert_eq!(
            a.admit(&req(Version::HTTP_11, &[]), LO),
            Err(Refusal::Malformed(
                "HTTP/1.1 requests must carry a Host header"
            ))
        );
        assert_eq!(a.admit(&req(Version::HTTP_10, &[]), LO), Ok(()));
        let two = req(
            Version::HTTP_11,
            &[("host", "localhost"), ("host", "localhost")],
        );
        assert!(matches!(a.admit(&two, LO), Err(Refusal::Malformed(_))));
        // What a browser sends for a page of another site, and for one of ours.
        let h = ("host", "127.0.0.1:9418");
        for headers in [
            vec![h, ("origin", "https://evil.example")],
            vec![h, ("origin", "null")],
            vec![h, ("origin", "http://127.0.0.1.evil.example")],
            vec![h, ("sec-fetch-site", "cross-site")],
            vec![
                h,
                ("sec-fetch-site", "Cross-Site"),
                ("origin", "http://localhost:3000"),
            ],
            vec![
                h,
                ("sec-fetch-mode", "no-cors"),
                ("sec-fetch-site", "cross-site"),
            ],
        ] {
            assert_eq!(
                a.admit(&req(Version::HTTP_11, &headers), LO),
                Err(Refusal::CrossSite),
                "{headers:?}"
            );
        }
        for headers in [
            vec![
                h,
                ("origin", "http://localhost:3000"),
                ("sec-fetch-site", "same-site"),
            ],
            vec![
                h,
                ("origin", "http://127.0.0.1:9418"),
                ("sec-fetch-site", "same-origin"),
            ],
            vec![h, ("sec-fetch-site", "none")],
        ] {
            assert_eq!(
                a.admit(&req(Version::HTTP_11, &headers), LO),
                Ok(()),
                "{headers:?}"
            );
        }
    }
}
