//! Issue 14, finding 10: a misconfiguration that puts the token itself where a URL or a path
//! belongs (`LS_URL=<PAT>`, `LS_PAT_FILE=<PAT>`, …) must not put the token into the error message,
//! which goes to logs. The real binary, a generated corpus of credential-shaped values (JWTs, the
//! two-part form, 40-hex legacy tokens, long random base64url), every flag that takes a URL, a path
//! or a name: the output never holds the value or any 8-character piece of it, the error is still
//! one line naming the flag, and the exit code is the one a usage error has always had.

use std::process::{Command, Stdio};

use proptest::prelude::*;

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Credential-shaped values: a JWT (header and payload are base64url JSON, the signature random), its
/// first two parts, a legacy token (40 hex, either case), and random base64url of 24..80 characters.
fn credential() -> impl Strategy<Value = String> {
    let json = "[a-z_]{1,10}".prop_flat_map(|k| {
        proptest::collection::vec(any::<u8>(), 8..40)
            .prop_map(move |v| format!(r#"{{"{k}":"{}","exp":1800000000}}"#, b64(&v)))
    });
    prop_oneof![
        (json.clone(), proptest::collection::vec(any::<u8>(), 32)).prop_map(|(p, sig)| format!(
            "{}.{}.{}",
            b64(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64(p.as_bytes()),
            b64(&sig)
        )),
        json.prop_map(|p| format!(
            "{}.{}",
            b64(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64(p.as_bytes())
        )),
        "[0-9a-f]{40}",
        "[0-9A-F]{40}",
        proptest::collection::vec(any::<u8>(), 18..60).prop_map(|v| b64(&v)),
    ]
}

/// How to run the binary with `value` misplaced: (environment, arguments, the flag the error names).
/// One way to misplace the value: (environment, arguments, what the error line names).
type Placement = (Vec<(&'static str, String)>, Vec<String>, &'static str);

/// `out` is a writable token directory.
fn placements(value: &str, out: &str) -> Vec<Placement> {
    let url = "http://127.0.0.1:9".to_owned();
    let args = |extra: &[&str]| -> Vec<String> {
        ["once", "--token-dir", out]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let pat = ("LS_PAT", "x".repeat(3));
    vec![
        (
            vec![("LS_URL", value.to_owned()), pat.clone()],
            args(&[]),
            "--url",
        ),
        (vec![pat.clone()], args(&["--url", value]), "--url"),
        (
            vec![("LS_URL", url.clone()), ("LS_PAT_FILE", value.to_owned())],
            args(&[]),
            "PAT file",
        ),
        (
            vec![
                ("LS_URL", url.clone()),
                ("LS_PAT_FILE", format!("/run/secrets/{value}")),
            ],
            args(&[]),
            "PAT file",
        ),
        (
            vec![("LS_URL", url.clone()), pat.clone()],
            vec![
                "once".into(),
                "--token-dir".into(),
                format!("/proc/{value}"),
            ],
            "--token-dir",
        ),
        (
            vec![("LS_URL", url.clone()), pat.clone()],
            args(&["--ca-file", value]),
            "--ca-file",
        ),
        (
            vec![("LS_URL", url.clone()), pat.clone()],
            args(&["--validate-path", value]),
            "--validate-path",
        ),
        (
            vec![("LS_URL", url.clone()), pat.clone()],
            args(&["--admin-addr", value]),
            "--admin-addr",
        ),
        (
            vec![("LS_URL", url), pat],
            args(&["--min-lead", value]),
            "--min-lead",
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn misplaced_tokens_are_never_echoed(value in credential()) {
        let dir = tempfile::tempdir().unwrap();
        let out_dir = dir.path().join("out").to_string_lossy().into_owned();
        for (env, args, flag) in placements(&value, &out_dir) {
            let out = Command::new(env!("CARGO_BIN_EXE_ls-token-refresher"))
                .env_clear()
                .envs(env.iter().map(|(k, v)| (*k, v)))
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let shown = || format!("{flag} {args:?}: exit {:?}, output:\n{text}", out.status.code());
            // A usage or configuration error: exit 2, as before.
            prop_assert_eq!(out.status.code(), Some(2), "{}", shown());
            let chars: Vec<char> = value.chars().collect();
            for piece in chars.windows(8) {
                let piece: String = piece.iter().collect();
                prop_assert!(!text.contains(&piece), "{:?} of the value is in the output: {}", piece, shown());
            }
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            prop_assert_eq!(lines.len(), 1, "one line: {}", shown());
            prop_assert!(lines[0].contains(flag), "the line names {}: {}", flag, shown());
        }
    }
}
