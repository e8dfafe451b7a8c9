//! Hostile request targets for the auth proxy's tests, shared by the in-process tests
//! (`tests/proxy_http.rs`) and the real-binary ones (`tests/e2e/tests/proxy_faults.rs`), which
//! include this file as a module: spellings a reviewer tries first, a generated corpus, and a
//! model of the most lenient server behind the proxy, written independently of the proxy's own
//! classification (issue 14).

/// `path` percent-decoded once (bytes, lossily as text).
pub fn decode_once(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the most lenient server or ingress behind the proxy could make of a path: percent-decoded
/// until nothing changes, `\` read as `/`, `;parameters` dropped, case folded, `.`/`..` resolved and
/// empty segments collapsed. Written independently of the proxy's own classification.
pub fn leniently_normalised(path: &str) -> String {
    let mut p = path.to_owned();
    for _ in 0..4 {
        let next = decode_once(&p);
        if next == p {
            break;
        }
        p = next;
    }
    let p = p.replace('\\', "/").to_ascii_lowercase();
    let mut segments: Vec<&str> = Vec::new();
    for s in p.split('/') {
        let s = s.split(';').next().unwrap_or("");
        match s {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

/// Whether a server has nothing left to normalise in `path` but one percent-decoding that adds
/// no structure: no `\`, `;`, `%` (so no second decoding), `/`, `.` or `..` segment appears.
pub fn is_canonical(path: &str) -> bool {
    let once = decode_once(path);
    let segments: Vec<&str> = once.split('/').collect();
    let last = segments.len() - 1;
    path.starts_with('/')
        && !path.contains(['\\', ';'])
        && !once.contains(['\\', ';', '%'])
        && once.matches('/').count() == path.matches('/').count()
        && segments
            .iter()
            .enumerate()
            .all(|(n, s)| !matches!(*s, "." | "..") && (n == 0 || n == last || !s.is_empty()))
}

/// Label Studio 1.23.2's routes that hand out or change credentials or the organization's auth
/// settings, and its web pages that show them (`/user/account/` renders the legacy token): no
/// request may reach any of these, in any spelling.
pub const CREDENTIAL_PATHS: &[&str] = &[
    "/api/token",
    "/api/jwt",
    "/api/current-user/token",
    "/api/current-user/reset-token",
    "/api/invite",
    "/api/session-policy",
    "/user",
    "/logout",
    "/api-auth",
    "/admin",
    "/people",
];

/// Why a request target that reached the upstream should not have: it left `prefix`, reached a
/// credential endpoint however leniently read, or was not canonical. `None` when it is fine.
pub fn escaped(target: &str, prefix: &str) -> Option<String> {
    let path = target.split('?').next().unwrap_or("");
    let normal = leniently_normalised(path);
    let Some(rest) = normal.strip_prefix(prefix).filter(|r| r.starts_with('/')) else {
        return Some(format!(
            "{target:?} left the prefix {prefix:?} (read as {normal})"
        ));
    };
    if CREDENTIAL_PATHS
        .iter()
        .any(|c| rest == *c || rest.starts_with(&format!("{c}/")))
    {
        return Some(format!(
            "{target:?} reached a credential endpoint (read as {normal})"
        ));
    }
    // It must arrive exactly as classified: already canonical, nothing left to normalise.
    (!is_canonical(path)).then(|| format!("{target:?} was not canonical"))
}

/// The corpus seed: `LSTR_CORPUS_SEED` to replay one, else a new one (printed).
pub fn corpus_seed() -> u64 {
    let seed = std::env::var("LSTR_CORPUS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("corpus seed {seed} (LSTR_CORPUS_SEED={seed} replays it)");
    seed
}

/// Spellings of credential endpoints a reviewer would try first: `\`, percent-encoding of every
/// character of `/api/token`, `;` parameters, `//`, `/./`, `/../` before and after the prefix,
/// mixed case, absolute-form.
pub fn hand_spellings() -> Vec<String> {
    let mut v: Vec<String> = [
        "/api\\current-user\\token",
        "/api\\token\\rotate\\",
        "/api/token\\rotate/",
        "/../x",
        "/../prefix/api/token/rotate/",
        "/api/../../prefix/api/token/",
        "/api/projects/../token/rotate/",
        "/api/projects/%2e%2e/token/rotate/",
        "/api/projects/%2E%2E/token/",
        "/api/projects/.%2e/token/",
        "/api%2ftoken%2frotate/",
        "/api%2Ftoken/",
        "/api%5ctoken%5crotate/",
        "/api/%74oken/",
        "/api/t%6fken/rotate/",
        "/api/token;x=1/rotate/",
        "/api;/token/rotate/",
        "/api/token%3B/rotate/",
        "//api//token//rotate/",
        "/./api/./token/./rotate/",
        "/API/TOKEN/ROTATE/",
        "/Api/Jwt/Settings",
        "/api/jwt/settings",
        "/api/current-user/token",
        "/api/current-user/reset-token/",
        "/api/invite/reset-token",
        "/user/account/",
        "/api/%252e%252e/token/",
        "/api/token%00/rotate/",
        "/%61pi/token/",
        "/api/token/refresh/../rotate/",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Every character of `/api/token/rotate/` percent-encoded, one at a time and all at once.
    let plain = "/api/token/rotate/";
    let enc = |b: u8| format!("%{b:02X}");
    for i in 0..plain.len() {
        v.push(format!(
            "{}{}{}",
            &plain[..i],
            enc(plain.as_bytes()[i]),
            &plain[i + 1..]
        ));
    }
    v.push(plain.bytes().map(enc).collect());
    v
}

/// A generated corpus: paths assembled from pieces that servers and URL libraries normalise.
pub fn generated_spellings(seed: u64, n: usize) -> Vec<String> {
    const PIECES: &[&str] = &[
        "/",
        "/",
        "/",
        "\\",
        "%2F",
        "%2f",
        "%5C",
        "%5c",
        ".",
        "..",
        "%2E",
        "%2e",
        "%252F",
        ";",
        ";x",
        "%3B",
        "%00",
        "%",
        "%zz",
        "api",
        "API",
        "Api",
        "token",
        "TOKEN",
        "%74oken",
        "t%6Fken",
        "tok%65n",
        "refresh",
        "rotate",
        "blacklist",
        "jwt",
        "settings",
        "current-user",
        "reset-token",
        "invite",
        "user",
        "account",
        "prefix",
        "projects",
        "data",
        "upload",
        "x",
        "1",
        "é",
        "%C3%A9",
        "?",
        "#",
        "*",
        "@",
        ":",
        "+",
        "~",
    ];
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n)
        .map(|_| {
            // Rooted where the proxy forwards half of the time, so the property is tested on
            // forwarded requests too, not only on refusals.
            const STARTS: &[&str] = &["", "/", "/api/", "/api", "/data/upload/", "/prefix/api/"];
            let mut p = String::from(STARTS[rng.usize(..STARTS.len())]);
            for _ in 0..rng.usize(1..12) {
                p.push_str(PIECES[rng.usize(..PIECES.len())]);
            }
            p
        })
        .collect()
}
