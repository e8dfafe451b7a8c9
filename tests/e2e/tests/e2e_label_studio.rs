//! End to end against a real Label Studio 1.23.2 (installed from PyPI, started per test on a free
//! 127.0.0.1 port with a short access-token lifetime): the real binary refreshes, validates and
//! publishes, and every published token is checked against the real API.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use ls_token_refresher_e2e::{
    clock::{now, rfc3339},
    jwt::jwt_claims,
    label_studio::{LabelStudio, LsOptions},
    log_scan::assert_no_secrets,
    refresher::{run_to_end, workdir, RefresherProc},
    token_dir::read_set,
    wait::{poll, wait_for},
};

/// Common `run` flags: trace logs (to prove nothing leaks even there) and quick retries.
fn run_args<'a>(url: &'a str, dir: &'a str) -> Vec<&'a str> {
    vec![
        "--url",
        url,
        "--token-dir",
        dir,
        "--log-level",
        "trace",
        "--backoff-initial",
        "200ms",
        "--backoff-max",
        "2s",
    ]
}

/// Waits until the published token differs from `old` (or anything is published, for None).
async fn wait_new_token(
    dir: &Path,
    old: Option<&str>,
    timeout: Duration,
) -> (String, String, String) {
    poll(timeout, Duration::from_millis(100), || async {
        read_set(dir).filter(|set| Some(set.0.as_str()) != old)
    })
    .await
    .unwrap_or_else(|| panic!("no new token within {timeout:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successive_refreshes_are_published_atomically_and_accepted() {
    let ls = LabelStudio::start_with_ttl(12).await;
    let pat = ls.api().create_pat().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("token");
    std::fs::create_dir(&dir).unwrap();
    let url = ls.url();
    let dir_s = dir.to_str().unwrap().to_owned();
    let mut proc = RefresherProc::start(
        tmp.path(),
        "run",
        &run_args(&url, &dir_s),
        &[("LS_PAT", &pat)],
    );
    proc.wait_ready(200, Duration::from_secs(30)).await;

    // A reader checks every set it sees for consistency while refreshes happen.
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, torn) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader = {
        let (dir, stop, reads, torn) = (dir.clone(), stop.clone(), reads.clone(), torn.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some((token, auth, exp)) = read_set(&dir) {
                    reads.fetch_add(1, Ordering::Relaxed);
                    let claim_exp = jwt_claims(&token)["exp"].as_i64().unwrap_or_default();
                    if auth != format!("Bearer {token}") || exp != rfc3339(claim_exp) {
                        torn.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    let mut seen = Vec::new();
    let mut last: Option<String> = None;
    while seen.len() < 4 {
        let (token, auth, _) = wait_new_token(&dir, last.as_deref(), Duration::from_secs(20)).await;
        let claims = jwt_claims(&token);
        assert_eq!(claims["token_type"], "access");
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            12,
            "schedule uses the real TTL"
        );
        assert_eq!(
            ls.api().whoami(&auth).await,
            200,
            "published token accepted by the real API"
        );
        last = Some(token.clone());
        seen.push(token);
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert!(
        reads.load(Ordering::Relaxed) > 100,
        "reader made too few reads"
    );
    assert_eq!(
        torn.load(Ordering::Relaxed),
        0,
        "reader saw a torn or mixed set"
    );

    // Metrics agree with what is on disk.
    assert!(
        proc.metric("ls_token_refresher_refresh_total{result=\"success\"}")
            .await
            .unwrap()
            >= 4.0
    );
    assert_eq!(
        proc.metric("ls_token_refresher_token_valid").await,
        Some(1.0)
    );
    let exp_metric = proc
        .metric("ls_token_refresher_token_expiration_timestamp_seconds")
        .await
        .unwrap() as i64;
    let (token, _, exp_file) = read_set(&dir).unwrap();
    let exp_claim = jwt_claims(&token)["exp"].as_i64().unwrap();
    assert!(
        (exp_metric - exp_claim).abs() <= 12,
        "metric {exp_metric} vs published {exp_claim}"
    );
    assert_eq!(exp_file, rfc3339(exp_claim));
    let pat_exp = proc
        .metric("ls_token_refresher_pat_expiration_timestamp_seconds")
        .await
        .unwrap() as i64;
    assert_eq!(pat_exp, jwt_claims(&pat)["exp"].as_i64().unwrap());

    // SIGTERM: exit 0, files left intact.
    let status = proc.signal_and_wait("TERM");
    assert_eq!(status.code(), Some(0), "log:\n{}", proc.log_text());
    let after = read_set(&dir).expect("files left in place");
    assert_eq!(after.0, token);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("token")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "owner-only by default");

    let log = proc.log_text();
    assert!(log.contains("token published"));
    let all: Vec<&str> = seen
        .iter()
        .map(String::as_str)
        .chain([pat.as_str()])
        .collect();
    assert_no_secrets(&log, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_token_check_and_startup_diagnosis() {
    let ls = LabelStudio::start_with_ttl(300).await;
    let pat = ls.api().create_pat().await;
    let url = ls.url();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    std::fs::create_dir(&dir).unwrap();
    let dir_s = dir.to_str().unwrap();

    // once: publishes and exits 0.
    let out = run_to_end(
        &[
            "once",
            "--url",
            &url,
            "--token-dir",
            dir_s,
            "--log-level",
            "trace",
        ],
        &[("LS_PAT", &pat)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let (token, auth, _) = read_set(&dir).unwrap();
    assert_eq!(ls.api().whoami(&auth).await, 200);
    assert_no_secrets(&out.stderr, &[&pat, &token]);

    // token: prints a working access token and nothing else.
    let out = run_to_end(&["token"], &[("LS_URL", &url), ("LS_PAT", &pat)]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let printed = out.stdout.trim();
    assert_eq!(jwt_claims(printed)["token_type"], "access");
    assert_eq!(ls.api().whoami(&format!("Bearer {printed}")).await, 200);
    assert_no_secrets(&out.stderr, &[&pat, printed]);

    // check: every step passes.
    let out = run_to_end(
        &["check", "--url", &url, "--token-dir", dir_s],
        &[("LS_PAT", &pat)],
    );
    assert_eq!(out.status.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    for step in [
        "[ok]   PAT",
        "[ok]   reachable",
        "[ok]   version: Label Studio 1.23.2",
        "[ok]   exchange",
        "[ok]   api",
        "all checks passed",
    ] {
        assert!(
            out.stdout.contains(step),
            "missing {step:?} in\n{}",
            out.stdout
        );
    }
    assert_no_secrets(&out.stdout, &[&pat]);

    // Start-up diagnosis: exit 2 with one actionable line, nothing published.
    let empty = tmp.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let access = ls.api().access_token(&pat).await;
    let short = ls.mint_short_pat(1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let empty_dir = tmp.path().join("untouched");
    std::fs::create_dir(&empty_dir).unwrap();
    let ed = empty_dir.to_str().unwrap();
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("LS_PAT_FILE", empty.to_str().unwrap())],
            vec![],
            "empty",
        ),
        (vec![("LS_PAT", &access)], vec![], "access token"),
        (vec![("LS_PAT", &short)], vec![], "expired"),
        (vec![("LS_PAT", "not-a-token")], vec![], "neither"),
        (
            vec![("LS_PAT", &pat)],
            vec!["--url", "http://127.0.0.1:1/"],
            "cannot reach",
        ),
    ];
    for (env, extra, want) in cases {
        let mut env = env;
        env.push(("LS_URL", &url));
        env.push(("LS_TOKEN_DIR", ed));
        env.push(("LS_ONCE_TIMEOUT", "1s"));
        // Unreachable is not a configuration error for `run` (it waits); `once` gives up with exit 1.
        // (`once` has no admin server, so it takes no --admin-addr.)
        let mut args = if want == "cannot reach" {
            vec!["once"]
        } else {
            vec!["run", "--admin-addr", "127.0.0.1:0"]
        };
        args.extend(extra.iter().copied());
        let out = run_to_end(&args, &env);
        let expect_code = if want == "cannot reach" { 1 } else { 2 };
        assert_eq!(
            out.status.code(),
            Some(expect_code),
            "{want}: {}",
            out.stderr
        );
        let last = out.stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains(want),
            "{want}: {last}"
        );
        assert_no_secrets(&out.stderr, &[&pat, &access, &short]);
    }
    // A URL that is not Label Studio's API (404 HTML page) is a configuration error too.
    let wrong = format!("{url}/user/login");
    let out = run_to_end(
        &[
            "run",
            "--admin-addr",
            "127.0.0.1:0",
            "--url",
            &wrong,
            "--token-dir",
            ed,
        ],
        &[("LS_PAT", &pat)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("404"), "{}", out.stderr);
    assert_eq!(
        std::fs::read_dir(&empty_dir).unwrap().count(),
        0,
        "nothing published on bad input"
    );
    // Bad flags: one line naming the flag and its variable.
    let out = run_to_end(&["run", "--min-lead", "5x"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("LS_MIN_LEAD"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_token_mode_detects_disabled_legacy_auth() {
    let ls = LabelStudio::start(LsOptions {
        legacy_enabled_at_start: true,
        ..Default::default()
    })
    .await;
    let legacy = ls.api().legacy_token().await;
    let (tmp, dir, d) = workdir();
    let url = ls.url();
    let mut args = run_args(&url, &d);
    args.extend(["--legacy-recheck", "1s"]);
    let mut proc = RefresherProc::start(tmp.path(), "legacy", &args, &[("LS_PAT", &legacy)]);
    proc.wait_ready(200, Duration::from_secs(30)).await;
    let (token, auth, exp) = read_set(&dir).unwrap();
    assert_eq!(token, legacy);
    assert_eq!(auth, format!("Token {legacy}"));
    assert_eq!(exp, "", "legacy tokens never expire");
    assert_eq!(ls.api().whoami(&auth).await, 200);
    assert_eq!(
        proc.metric("ls_token_refresher_pat_expiration_timestamp_seconds")
            .await,
        Some(0.0)
    );

    // The organization switches legacy tokens off: detected on the next re-check, reported.
    ls.api().set_org_tokens(true, false).await;
    let body = proc.wait_ready(503, Duration::from_secs(15)).await;
    assert!(
        body.contains("rejected") && body.contains("legacy_disabled"),
        "{body}"
    );
    assert!(
        proc.metric("ls_token_refresher_refresh_errors_total{reason=\"legacy_disabled\"}")
            .await
            .unwrap()
            >= 1.0
    );
    assert_eq!(
        proc.metric("ls_token_refresher_token_valid").await,
        Some(0.0)
    );
    // Switched back on: recovers without restart.
    ls.api().set_org_tokens(true, true).await;
    proc.wait_ready(200, Duration::from_secs(15)).await;
    assert_eq!(
        proc.metric("ls_token_refresher_refresh_total{result=\"success\"}")
            .await
            .map(|v| v >= 2.0),
        Some(true)
    );
    assert_eq!(proc.signal_and_wait("INT").code(), Some(0));
    assert_no_secrets(&proc.log_text(), &[&legacy]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_disabled_for_org_is_diagnosed_and_nothing_published() {
    let ls = LabelStudio::start(LsOptions {
        api_tokens_enabled_at_start: false,
        ..Default::default()
    })
    .await;
    let pat = ls.api().create_pat().await;
    let (tmp, dir, d) = workdir();
    let url = ls.url();
    let mut proc = RefresherProc::start(
        tmp.path(),
        "jwtoff",
        &run_args(&url, &d),
        &[("LS_PAT", &pat)],
    );
    proc.wait_metric(
        "ls_token_refresher_refresh_errors_total{reason=\"jwt_disabled\"}",
        1.0,
        Duration::from_secs(30),
    )
    .await;
    let (code, body) = proc.admin_get("/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("jwt_disabled"), "{body}");
    assert!(proc
        .log_text()
        .contains("JWT API tokens look disabled for the organization"));
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "a token the API rejects is never published"
    );

    // `check` and `once` say so too, and fail.
    let out = run_to_end(&["check", "--url", &url], &[("LS_PAT", &pat)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.contains("[FAIL] api") && out.stdout.contains("legacy token"),
        "{}",
        out.stdout
    );
    let out = run_to_end(
        &["once", "--url", &url, "--token-dir", &d],
        &[("LS_PAT", &pat)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("jwt_disabled"), "{}", out.stderr);

    // Switched on: the running refresher recovers by itself.
    ls.api().set_org_tokens(true, false).await;
    proc.wait_ready(200, Duration::from_secs(20)).await;
    let (_, auth, _) = read_set(&dir).unwrap();
    assert_eq!(ls.api().whoami(&auth).await, 200);
    assert_eq!(proc.signal_and_wait("TERM").code(), Some(0));
    assert_no_secrets(&proc.log_text(), &[&pat]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_pat_keeps_last_token_until_its_expiry() {
    let ls = LabelStudio::start_with_ttl(15).await;
    let pat = ls.api().create_pat().await;
    let (tmp, dir, d) = workdir();
    let url = ls.url();
    let mut proc = RefresherProc::start(
        tmp.path(),
        "revoked",
        &run_args(&url, &d),
        &[("LS_PAT", &pat)],
    );
    proc.wait_ready(200, Duration::from_secs(30)).await;
    ls.api().blacklist(&pat).await;
    // The refresher notices at its next refresh; from then on the last good token must stay.
    proc.wait_metric(
        "ls_token_refresher_refresh_errors_total{reason=\"revoked_pat\"}",
        1.0,
        Duration::from_secs(30),
    )
    .await;
    let (token, auth, _) = read_set(&dir).unwrap();
    let exp = jwt_claims(&token)["exp"].as_i64().unwrap();
    // Until exp: the same token stays published, the API accepts it, and we stay ready.
    while now() < exp - 1 {
        let (t, _, _) = read_set(&dir).unwrap();
        assert_eq!(t, token, "the last good token was replaced or removed");
        assert_eq!(
            ls.api().whoami(&auth).await,
            200,
            "the kept token must still work before its exp"
        );
        assert_eq!(proc.admin_get("/readyz").await.0, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // After exp: not ready, and the reason is reported.
    let body = proc.wait_ready(503, Duration::from_secs(10)).await;
    assert!(
        body.contains("expired") && body.contains("revoked_pat"),
        "{body}"
    );
    assert_eq!(read_set(&dir).unwrap().0, token, "files are left in place");
    let t0 = Instant::now();
    while proc.metric("ls_token_refresher_token_valid").await != Some(0.0) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "token_valid stayed 1 after expiry"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(proc.signal_and_wait("TERM").code(), Some(0));
    assert_no_secrets(&proc.log_text(), &[&pat, &token]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_pat_file_is_picked_up_without_restart() {
    let ls = LabelStudio::start_with_ttl(60).await;
    let pat = ls.api().create_pat().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    std::fs::create_dir(&dir).unwrap();
    let pat_file = tmp.path().join("pat");
    std::fs::write(&pat_file, format!("{pat}\n")).unwrap();
    let (url, d) = (ls.url(), dir.to_str().unwrap().to_owned());
    let mut proc = RefresherProc::start(
        tmp.path(),
        "rotate",
        &run_args(&url, &d),
        &[("LS_PAT_FILE", pat_file.to_str().unwrap())],
    );
    proc.wait_ready(200, Duration::from_secs(30)).await;
    let (before, _, _) = read_set(&dir).unwrap();

    // Rotate in Label Studio (the old PAT is blacklisted at once), then replace the file atomically.
    let new_pat = ls.api().rotate(&before, &pat).await;
    assert_eq!(ls.api().refresh(&pat).await.0, 401, "old PAT is dead");
    let tmp_file = tmp.path().join("pat.new");
    std::fs::write(&tmp_file, &new_pat).unwrap();
    std::fs::rename(&tmp_file, &pat_file).unwrap();
    // Picked up within the poll interval and used at once (the schedule said ~40 s away).
    let (after, auth, _) = wait_new_token(&dir, Some(&before), Duration::from_secs(10)).await;
    assert_eq!(ls.api().whoami(&auth).await, 200);
    assert!(
        proc.metric("ls_token_refresher_source_reloads_total{result=\"changed\",source=\"file\"}")
            .await
            .unwrap()
            >= 1.0
    );
    assert_eq!(proc.admin_get("/readyz").await.0, 200);
    assert_eq!(proc.signal_and_wait("TERM").code(), Some(0));
    let log = proc.log_text();
    assert!(log.contains("PAT file changed"));
    assert_no_secrets(&log, &[&pat, &new_pat, &before, &after]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_studio_restart_mid_run_costs_consumers_nothing() {
    let mut ls = LabelStudio::start_with_ttl(40).await;
    let pat = ls.api().create_pat().await;
    let (tmp, dir, d) = workdir();
    let url = ls.url();
    let mut args = run_args(&url, &d);
    // Refresh early so an outage of ~15 s fits in the remaining lifetime.
    args.extend([
        "--refresh-fraction",
        "0.25",
        "--min-lead",
        "1s",
        "--jitter",
        "0s",
    ]);
    let mut proc = RefresherProc::start(tmp.path(), "restart", &args, &[("LS_PAT", &pat)]);
    proc.wait_ready(200, Duration::from_secs(30)).await;

    // A consumer samples the published token; it must never hold an expired one.
    let stop = Arc::new(AtomicBool::new(false));
    let expired_seen = Arc::new(AtomicU64::new(0));
    let consumer = {
        let (dir, stop, expired_seen) = (dir.clone(), stop.clone(), expired_seen.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some((token, _, _)) = read_set(&dir) {
                    if jwt_claims(&token)["exp"].as_i64().unwrap() <= now() {
                        expired_seen.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let (before, _, _) = read_set(&dir).unwrap();
    // Down until a refresh attempt has failed against it (refreshes come every ~10 s, so a fixed
    // few seconds of outage may fall between two attempts and test nothing), bounded well inside
    // the token's remaining ~30 s.
    let failed = || async {
        let m = |r: &'static str| {
            let p = &proc;
            async move {
                p.metric(&format!(
                    "ls_token_refresher_refresh_errors_total{{reason=\"{r}\"}}"
                ))
                .await
                .unwrap_or(0.0)
            }
        };
        m("network").await + m("timeout").await
    };
    let failed_before = failed().await;
    ls.stop();
    let t_down = Instant::now();
    let noticed = wait_for(Duration::from_secs(20), || async {
        failed().await > failed_before
    })
    .await;
    assert!(
        noticed.is_some(),
        "no refresh attempt within 20 s of the outage; log:\n{}",
        proc.log_text()
    );
    eprintln!(
        "label studio down {:.1} s until an attempt failed",
        t_down.elapsed().as_secs_f64()
    );
    ls.restart().await;
    // Back: a fresh token arrives within a backoff step or the schedule, and works.
    let t0 = Instant::now();
    let mut fresh = None;
    while t0.elapsed() < Duration::from_secs(30) {
        if let Some((t, auth, _)) = read_set(&dir) {
            if t != before && jwt_claims(&t)["iat"].as_i64().unwrap() >= now() - 3 {
                fresh = Some((t, auth));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (fresh, auth) = fresh.expect("no fresh token after Label Studio came back");
    assert_eq!(ls.api().whoami(&auth).await, 200);
    stop.store(true, Ordering::Relaxed);
    consumer.join().unwrap();
    assert_eq!(
        expired_seen.load(Ordering::Relaxed),
        0,
        "consumer held an expired token"
    );
    assert!(
        proc.metric("ls_token_refresher_refresh_errors_total{reason=\"network\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
            || proc
                .metric("ls_token_refresher_refresh_errors_total{reason=\"timeout\"}")
                .await
                .unwrap_or(0.0)
                >= 1.0,
        "the outage was not noticed; log:\n{}",
        proc.log_text()
    );
    assert_eq!(proc.admin_get("/readyz").await.0, 200);
    assert_eq!(proc.signal_and_wait("TERM").code(), Some(0));
    assert_no_secrets(&proc.log_text(), &[&pat, &before, &fresh]);
}
