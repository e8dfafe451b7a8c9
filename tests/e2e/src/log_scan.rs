//! Secret scans over the refresher's logs (which the tests run at `--log-level trace`).

use std::collections::BTreeSet;

/// Asserts that no JWT (every JWT starts with `eyJ`, the base64 of `{"`) and none of `secrets`
/// appear anywhere in `log`.
pub fn assert_no_secrets(log: &str, secrets: &[&str]) {
    assert!(!log.contains("eyJ"), "a JWT appears in the logs:\n{log}");
    for s in secrets {
        assert!(!s.is_empty());
        assert!(!log.contains(s), "a secret appears in the logs");
        // Not even a prefix or suffix of the distinctive part.
        let tail = &s[s.len().saturating_sub(16)..];
        assert!(!log.contains(tail), "part of a secret appears in the logs");
    }
}

/// Secret scan over every log of a test: every token issued, the PAT, `eyJ`. Prints a
/// `FAULTS-FIGURES … log_scan` line, and every log with `LSTR_FAULTS_PRINT_LOGS` set.
pub fn scan_logs(test: &str, logs: &[String], tokens: &BTreeSet<String>, pat: &str) {
    let mut secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    secrets.push(pat);
    let bytes: usize = logs.iter().map(String::len).sum();
    if std::env::var_os("LSTR_FAULTS_PRINT_LOGS").is_some() {
        for log in logs {
            eprintln!("----- refresher log ({test}) -----\n{log}");
        }
    }
    for log in logs {
        assert_no_secrets(log, &secrets);
    }
    eprintln!(
        "FAULTS-FIGURES test={test} log_scan logs={} log_bytes={bytes} tokens_scanned={} log_lines={}",
        logs.len(),
        tokens.len(),
        logs.iter()
            .map(|l| l.lines().count())
            .sum::<usize>()
    );
}
