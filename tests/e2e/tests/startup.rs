//! What the real binary says and does at start-up about its `--url` and `--token-dir` (issue 9,
//! items 3, 4 and 12):
//!
//! - `url_of_a_server_that_is_not_label_studio_exits_2_at_once`: `--url` at a plain web server
//!   (`python3 -m http.server`, which answers the exchange's POST with 501 and has no
//!   `/api/version`): `once` and `run` exit 2 after one exchange and one `/api/version` probe, with
//!   one line naming `--url` — not after `--once-timeout` (60 s) of retries, or never (`run`).
//! - `missing_token_dir_is_created_owner_only`: `once --token-dir ./a/b/out` (relative, run with
//!   umask 000) creates the directory and its parents owner-only and publishes a working token.
//! - `plain_http_to_a_remote_host_warns_once_and_require_https_refuses`: `--url http://NAME:PORT`
//!   where NAME is not loopback by its text but resolves to 127.0.0.1 for the binary alone (see
//!   `ls_token_refresher_e2e::private_hosts` for why that is the honest way to test it offline):
//!   `run` warns once over several refreshes (every ~5 s, the fault tests' flags), `check` prints a `[warn] transport` line, and
//!   `--require-https` refuses with exit 2 before anything is sent; the same flags against
//!   `127.0.0.1` and `localhost` give no warning and are accepted by `--require-https`.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use ls_token_refresher_e2e::{
    clock::now,
    fault_proxy::FaultProxy,
    fault_suite::fault_args,
    free_port,
    jwt::unsigned,
    label_studio::LabelStudio,
    log_scan::assert_no_secrets,
    private_hosts::{self, REMOTE_NAME},
    process,
    refresher::{run_to_end, run_to_end_wrapped, RefresherProc},
    token_dir::read_set,
    wait::wait_for,
};

/// `python3 -m http.server` on a free 127.0.0.1 port: a web server that is not Label Studio.
/// Its request log (stderr) tells which requests arrived. Stopped by PID on drop.
struct PlainWebServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl PlainWebServer {
    async fn start(dir: &Path) -> PlainWebServer {
        let port = free_port();
        let root = dir.join("www");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("index.html"), "<html>a plain web site</html>\n").unwrap();
        let log = dir.join("http-server.log");
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("run python3 -m http.server");
        let up = wait_for(Duration::from_secs(20), || async {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        assert!(up.is_some(), "python3 -m http.server did not listen");
        PlainWebServer { child, port, log }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Request lines it logged (`POST /api/token/refresh HTTP/1.1` …).
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split('"').nth(1).map(str::to_owned))
            .collect()
    }
}

impl Drop for PlainWebServer {
    fn drop(&mut self) {
        process::kill(self.child.id(), "KILL");
        let _ = self.child.wait();
    }
}

/// A PAT-shaped JWT (`token_type` refresh, valid an hour) for servers that never check it.
fn fake_pat() -> String {
    let n = now();
    unsigned(&serde_json::json!({
        "token_type": "refresh", "iat": n, "exp": n + 3600, "jti": "lstr-test", "user_id": 1
    }))
}

/// The `error: …` lines of a log.
fn error_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.starts_with("error: ")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_of_a_server_that_is_not_label_studio_exits_2_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let web = PlainWebServer::start(tmp.path()).await;
    let url = web.url();
    let pat = fake_pat();
    let dir = tmp.path().join("token");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.to_str().unwrap();

    // once, with the default --once-timeout (60 s).
    let t = Instant::now();
    let once = run_to_end(
        &["once", "--url", &url, "--token-dir", d],
        &[("LS_PAT", &pat)],
    );
    let once_secs = t.elapsed().as_secs_f64();
    let once_requests = web.requests();

    // run: used to retry forever. Given 30 s here.
    let n_before = once_requests.len();
    let mut run = RefresherProc::start(
        tmp.path(),
        "run",
        &["--url", &url, "--token-dir", d],
        &[("LS_PAT", &pat)],
    );
    let t = Instant::now();
    let run_exit = loop {
        if let Some(s) = run.try_status() {
            break s.code();
        }
        if t.elapsed() > Duration::from_secs(30) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let run_secs = t.elapsed().as_secs_f64();
    let run_log = run.log_text();
    drop(run);
    let run_requests: Vec<String> = web.requests()[n_before..].to_vec();
    let posts = |reqs: &[String]| {
        reqs.iter()
            .filter(|r| r.starts_with("POST /api/token/refresh"))
            .count()
    };
    let probes = |reqs: &[String]| {
        reqs.iter()
            .filter(|r| r.starts_with("GET /api/version"))
            .count()
    };
    eprintln!(
        "STARTUP-FIGURES wrong_url once_exit={:?} once_s={once_secs:.2} once_exchanges={} once_version_probes={} run_exit={run_exit:?} run_s={run_secs:.2} run_exchanges={} run_version_probes={}",
        once.status.code(),
        posts(&once_requests),
        probes(&once_requests),
        posts(&run_requests),
        probes(&run_requests),
    );
    for (cmd, code, log, reqs) in [
        (
            "once",
            once.status.code(),
            once.stderr.as_str(),
            &once_requests,
        ),
        ("run", run_exit, run_log.as_str(), &run_requests),
    ] {
        assert_eq!(code, Some(2), "{cmd}: exit; log:\n{log}");
        let errors = error_lines(log);
        assert_eq!(errors.len(), 1, "{cmd}: one error line; log:\n{log}");
        assert!(
            errors[0].contains("--url") && errors[0].contains(&url),
            "{cmd}: the error names --url and its value: {}",
            errors[0]
        );
        assert_eq!(
            (posts(reqs), probes(reqs)),
            (1, 1),
            "{cmd}: one exchange and one /api/version probe, no retries: {reqs:?}"
        );
        assert_no_secrets(log, &[&pat]);
    }
    // Seconds, not the 60 s --once-timeout: nothing was retried (the request counts above), and
    // the whole start-up is a process start and two local requests.
    assert!(once_secs < 10.0, "once took {once_secs:.1} s");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_dir_is_created_owner_only() {
    let ls = LabelStudio::start_with_ttl(300).await;
    let pat = ls.api().create_pat().await;
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path().join("work");
    std::fs::create_dir(&cwd).unwrap();
    // Run from `cwd` with umask 000, so a directory made with default permissions would be 0777.
    let in_cwd: Vec<String> = [
        "/bin/sh",
        "-c",
        r#"umask 000 && cd "$0" && exec "$@""#,
        cwd.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let url = ls.url();
    let out = run_to_end_wrapped(
        &in_cwd,
        &["once", "--url", &url, "--token-dir", "./a/b/out"],
        &[("LS_PAT", &pat)],
    );
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| format!("{:o}", m.permissions().mode() & 0o777))
            .unwrap_or_else(|e| e.to_string())
    };
    let out_dir = cwd.join("a/b/out");
    eprintln!(
        "STARTUP-FIGURES missing_token_dir exit={:?} a={} a/b={} a/b/out={}",
        out.status.code(),
        mode(&cwd.join("a")),
        mode(&cwd.join("a/b")),
        mode(&out_dir)
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    for p in [cwd.join("a"), cwd.join("a/b"), out_dir.clone()] {
        assert_eq!(mode(&p), "700", "{} is not owner-only", p.display());
    }
    let (token, auth, _) = read_set(&out_dir).expect("a set was published into it");
    assert_eq!(ls.api().whoami(&auth).await, 200);
    assert_no_secrets(&out.stderr, &[&pat, &token]);
}

/// Lines of `log` that carry the cleartext warning.
fn cleartext_warnings(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("plain http://") && l.contains("cleartext"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_remote_host_warns_once_and_require_https_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    if let Err(e) = private_hosts::works(tmp.path()) {
        panic!("this test needs a private mount namespace (root, unshare, mount --bind): {e}");
    }
    let wrapper = private_hosts::wrapper(tmp.path());
    let ls = LabelStudio::start_with_ttl(20).await;
    let pat = ls.api().create_pat().await;
    let remote = format!("http://{REMOTE_NAME}:{}", ls.port());
    let dir = tmp.path().join("token");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.to_str().unwrap();

    // run: several refreshes (every ~5 s), one warning.
    let args = fault_args(&remote, &dir, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc =
        RefresherProc::start_wrapped(tmp.path(), "remote", &wrapper, &args, &[("LS_PAT", &pat)]);
    proc.wait_ready(200, Duration::from_secs(60)).await;
    let success = "ls_token_refresher_refresh_total{result=\"success\"}";
    proc.wait_metric(success, 3.0, Duration::from_secs(40))
        .await;
    let (token, auth, _) = read_set(&dir).unwrap();
    assert_eq!(
        ls.api().whoami(&auth).await,
        200,
        "the name reached Label Studio"
    );
    assert_eq!(proc.signal_and_wait("TERM").code(), Some(0));
    let run_log = proc.log_text();

    // check: a [warn] line; it still passes.
    let check = run_to_end_wrapped(
        &wrapper,
        &["check", "--url", &remote, "--token-dir", d],
        &[("LS_PAT", &pat)],
    );
    let check_warns: Vec<&str> = check
        .stdout
        .lines()
        .filter(|l| l.starts_with("[warn] transport:"))
        .collect();

    // --require-https: refused before anything is sent (the fault proxy would see it).
    let proxy = FaultProxy::start(&ls.url()).await;
    let remote_proxy = format!(
        "http://{REMOTE_NAME}:{}",
        proxy.url().rsplit(':').next().unwrap()
    );
    let refused: Vec<(&str, ls_token_refresher_e2e::refresher::Output)> = ["run", "once", "check"]
        .into_iter()
        .map(|cmd| {
            let mut a = vec![
                cmd,
                "--url",
                &remote_proxy,
                "--token-dir",
                d,
                "--require-https",
            ];
            if cmd == "run" {
                a.extend(["--admin-addr", "127.0.0.1:0"]);
            }
            (cmd, run_to_end_wrapped(&wrapper, &a, &[("LS_PAT", &pat)]))
        })
        .collect();
    let sent = proxy.requests().len();

    // Controls: loopback by its text is not warned about, and --require-https accepts it.
    let mut controls = Vec::new();
    for url in [ls.url(), format!("http://localhost:{}", ls.port())] {
        let c = run_to_end(
            &["check", "--url", &url, "--token-dir", d],
            &[("LS_PAT", &pat)],
        );
        let o = run_to_end(
            &["once", "--url", &url, "--token-dir", d, "--require-https"],
            &[("LS_PAT", &pat)],
        );
        controls.push((url, c, o));
    }

    eprintln!(
        "STARTUP-FIGURES cleartext run_warnings={} run_refreshes>=3 check_exit={:?} check_warn_lines={} require_https_exits={:?} requests_sent_when_refused={sent} loopback_check_warnings={:?} loopback_require_https_exits={:?}",
        cleartext_warnings(&run_log),
        check.status.code(),
        check_warns.len(),
        refused.iter().map(|(c, o)| (*c, o.status.code())).collect::<Vec<_>>(),
        controls.iter().map(|(_, c, _)| cleartext_warnings(&c.stdout) + cleartext_warnings(&c.stderr)).collect::<Vec<_>>(),
        controls.iter().map(|(_, _, o)| o.status.code()).collect::<Vec<_>>(),
    );
    assert_eq!(
        cleartext_warnings(&run_log),
        1,
        "one warning over several refreshes:\n{run_log}"
    );
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}\n{}",
        check.stdout,
        check.stderr
    );
    assert_eq!(check_warns.len(), 1, "{}", check.stdout);
    assert!(check_warns[0].contains(&remote) && check_warns[0].contains("cleartext"));
    for (cmd, out) in &refused {
        assert_eq!(
            out.status.code(),
            Some(2),
            "{cmd} --require-https: {}",
            out.stderr
        );
        let errors = error_lines(&out.stderr);
        assert!(
            errors.len() == 1
                && errors[0].contains("--require-https")
                && errors[0].contains("--url"),
            "{cmd}: one error line naming --url and --require-https:\n{}",
            out.stderr
        );
    }
    assert_eq!(sent, 0, "a refused URL was contacted");
    for (url, c, o) in &controls {
        assert_eq!(c.status.code(), Some(0), "check {url}: {}", c.stdout);
        assert!(
            !c.stdout.contains("[warn] transport"),
            "{url}: {}",
            c.stdout
        );
        assert_eq!(cleartext_warnings(&c.stderr), 0, "{url}");
        assert_eq!(
            o.status.code(),
            Some(0),
            "once --require-https {url}: {}",
            o.stderr
        );
    }
    assert_no_secrets(&run_log, &[&pat, &token]);
}
