//! A string that never shows itself: tokens and PATs travel in [`Secret`] so that no `Debug`,
//! `Display` or `tracing` field can leak them (not even a prefix).

use std::fmt;

/// An owned credential (PAT, access token, legacy token). Its `Debug`/`Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential, trimming surrounding whitespace (files and Secrets often end in a newline,
    /// and Label Studio trims it too).
    pub fn new(value: impl Into<String>) -> Self {
        let v: String = value.into();
        let trimmed = v.trim();
        if trimmed.len() == v.len() {
            Secret(v)
        } else {
            Secret(trimmed.to_owned())
        }
    }

    /// The raw value: only for putting it on the wire or into a sink.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the credential is empty after trimming.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A stable, non-reversible identity of the value for "did it change?" checks. Uses
    /// std's SipHash with fixed keys: never logged, only compared in memory.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.0.hash(&mut h);
        h.finish()
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    /// Lets clap parse `--pat` straight into a `Secret`, so the raw value never sits in a `String`
    /// that a derived `Debug` could print.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret::new(s))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// What replaces a credential-looking part of user input in a message.
pub const REDACTED_INPUT: &str = "[redacted: looks like a token]";
/// A run of at least this many characters can be a random secret (a JWT signature is 43, a legacy
/// token 40); shorter ones are names (hosts, files, namespaces) and stay readable.
const MIN_SECRET_RUN: usize = 20;
/// Hex runs from this length are tokens (Label Studio's legacy token is 40 hex digits; 32 covers
/// other 128-bit hex secrets), not the short hashes of generated names.
const MIN_HEX_SECRET: usize = 32;
/// Share of changes between upper case, lower case and digits, per character, from which a run
/// reads as random: ~0.62 on average for random base64url, ~0 for words and names
/// (`label-studio`, `my_token_file`). Set low because a miss leaks a secret and a false hit only
/// costs readability of one error message (CamelCase words, names with hashes): at 0.25, 1 in
/// ~3,000 random 24-character values escaped (CI caught one); at 0.15 none of the 200,000 in
/// `random_base64url_is_always_redacted`.
const MIN_CLASS_CHANGES: f64 = 0.15;

/// User input (a flag's value, a path, a URL) as it may appear in an error message: every run that
/// looks like a credential is replaced by [`REDACTED_INPUT`]. A misconfigured `LS_URL` or
/// `LS_PAT_FILE` often holds the token itself, and error messages go to logs.
///
/// Runs are maximal sequences of base64url/base64 characters and dots (what a token is made of), so
/// a token inside a path or URL is removed whole, and the rest stays readable. A run looks like a
/// credential when it has a JWT part (a base64url JSON object: `eyJ…`), is 32+ hex digits (a legacy
/// token), or has a dot-separated part of 20+ characters that changes between upper case, lower case
/// and digits like random text does.
pub fn shown(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if looks_like_credential(run) {
            out.push_str(REDACTED_INPUT);
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in input.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=' | '+' | '~') {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// [`shown`] for a path.
pub fn shown_path(path: &std::path::Path) -> String {
    shown(&path.to_string_lossy())
}

fn looks_like_credential(run: &str) -> bool {
    let hex = run.len() >= MIN_HEX_SECRET && run.bytes().all(|b| b.is_ascii_hexdigit());
    hex || run.split('.').any(|part| {
        let part = part.trim_end_matches('=');
        // `{"` in base64url: the start of every JWT header and payload.
        let jwt_part = part.starts_with("eyJ") && part.len() >= 10;
        jwt_part || (part.len() >= MIN_SECRET_RUN && random_looking(part))
    })
}

/// Changes between character classes (upper, lower, digit; `-` and `_` ignored) per character.
fn random_looking(part: &str) -> bool {
    let classes: Vec<u8> = part
        .bytes()
        .filter_map(|b| match b {
            b'A'..=b'Z' => Some(0),
            b'a'..=b'z' => Some(1),
            b'0'..=b'9' => Some(2),
            _ => None,
        })
        .collect();
    let changes = classes.windows(2).filter(|w| w[0] != w[1]).count();
    changes as f64 >= MIN_CLASS_CHANGES * part.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_keeps_names_and_removes_tokens() {
        for keep in [
            "http://label-studio:8080",
            "https://ls.example.org/label-studio",
            "/var/run/secrets/ls/pat",
            "/etc/ls-token-refresher/my_token_file_for_label_studio.txt",
            "label-studio.default.svc.cluster.local",
            "ls-7d9f8b6c5-x2k4p",
            "90s",
        ] {
            assert_eq!(shown(keep), keep);
        }
        let jwt =
            "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJlX3NpZ25hdHVyZQ";
        let legacy = "0123456789abcdef0123456789ABCDEF01234567";
        let random = "Zq3xV9bK2mT7wR1yL8nP4sD6";
        for secret in [jwt, &jwt[..jwt.rfind('.').unwrap()], legacy, random] {
            for input in [
                secret.to_owned(),
                format!("/secrets/{secret}"),
                format!("http://{secret}:8080/x"),
            ] {
                let s = shown(&input);
                assert!(!s.contains(&secret[..8]), "{input} -> {s}");
                assert!(s.contains(REDACTED_INPUT), "{input} -> {s}");
            }
        }
        assert_eq!(
            shown(&format!("/secrets/{legacy}")),
            format!("/secrets/{REDACTED_INPUT}")
        );
    }

    /// Random secrets of the lengths the CLI redaction corpus generates (24..80 base64url), from a
    /// fixed-seed generator so the result is the same on every run: not one may escape.
    #[test]
    fn random_base64url_is_always_redacted() {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            // xorshift64*: enough for a uniform pick from 64 symbols.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let mut escaped = Vec::new();
        for i in 0..200_000u64 {
            let len = 24 + (i % 57) as usize;
            let value: String = (0..len)
                .map(|_| ALPHABET[(next() >> 58) as usize] as char)
                .collect();
            if !looks_like_credential(&value) {
                escaped.push(value);
            }
        }
        assert!(
            escaped.is_empty(),
            "{} escaped, e.g. {:?}",
            escaped.len(),
            escaped.first()
        );
    }

    #[test]
    fn never_formats_its_value() {
        let s = Secret::new("  eyJhbGciOiJIUzI1NiJ9.payload.sig\n");
        assert_eq!(s.expose(), "eyJhbGciOiJIUzI1NiJ9.payload.sig");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert!(!format!("{:?}", Some(&s)).contains("eyJ"));
    }

    #[test]
    fn fingerprint_tracks_value() {
        assert_eq!(
            Secret::new("a").fingerprint(),
            Secret::new("a\n").fingerprint()
        );
        assert_ne!(
            Secret::new("a").fingerprint(),
            Secret::new("b").fingerprint()
        );
        assert!(Secret::new(" \n").is_empty());
    }
}
