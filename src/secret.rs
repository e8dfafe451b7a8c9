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

#[cfg(test)]
mod tests {
    use super::*;

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
