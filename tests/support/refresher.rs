//! Runs the real `ls-token-refresher` binary as a child process (real signals, real exit codes),
//! with its stderr captured to a file and its admin server on a free 127.0.0.1 port.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// Path of the binary under test (built by cargo for integration tests).
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ls-token-refresher")
}

/// A running refresher.
pub struct RefresherProc {
    child: Option<Child>,
    /// Admin server base URL.
    pub admin: String,
    /// Captured stderr (logs).
    pub log: PathBuf,
}

/// Result of a finished one-shot command.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a one-shot subcommand (`once`, `token`, `check`, or `run` expected to exit) to completion
/// with a clean environment; killed (and the test failed) after 90 s so a hang cannot stall the suite.
pub fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(bin())
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn ls-token-refresher");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ls-token-refresher {args:?} did not exit within 90 s; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

impl RefresherProc {
    /// Starts `run` with `args` (plus `--admin-addr` on a free port), logging to `dir/name.log`.
    pub fn start(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> RefresherProc {
        let port = super::free_port();
        let admin_addr = format!("127.0.0.1:{port}");
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin())
            .arg("run")
            .args(args)
            .args(["--admin-addr", &admin_addr])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn ls-token-refresher run");
        RefresherProc {
            child: Some(child),
            admin: format!("http://{admin_addr}"),
            log,
        }
    }

    /// PID of the process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// GET on the admin server: (status, body); status 0 when it does not answer.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        match client.get(format!("{}{path}", self.admin)).send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    /// Waits until `/readyz` answers `want` (200 or 503), returning the body; panics with the log after `timeout`.
    pub async fn wait_ready(&mut self, want: u16, timeout: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let (code, body) = self.admin_get("/readyz").await;
            if code == want {
                return body;
            }
            if let Some(status) = self.try_status() {
                panic!(
                    "refresher exited early with {status}; log:\n{}",
                    self.log_text()
                );
            }
            if t0.elapsed() > timeout {
                panic!("readyz never answered {want} within {timeout:?} (last {code}: {body}); log:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of a metric sample line starting with `prefix` (exact series text).
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let (_, text) = self.admin_get("/metrics").await;
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Waits until the series `prefix` reaches at least `min`; panics with the log after `timeout`.
    pub async fn wait_metric(&self, prefix: &str, min: f64, timeout: Duration) -> f64 {
        let t0 = Instant::now();
        loop {
            let v = self.metric(prefix).await.unwrap_or(f64::NAN);
            if v >= min {
                return v;
            }
            assert!(
                t0.elapsed() < timeout,
                "{prefix} never reached {min} within {timeout:?} (now {v}); log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Exit status if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `signal` (e.g. "TERM") by PID and waits up to 10 s for the exit status.
    pub fn signal_and_wait(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status();
        let t0 = Instant::now();
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return s;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("refresher did not stop within 10 s of SIG{signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                self.child.take();
                return s;
            }
            if t0.elapsed() > timeout {
                panic!(
                    "refresher still running after {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Captured logs so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RefresherProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A fresh temp dir holding an empty token directory: (guard, token dir, token dir as a string).
pub fn workdir() -> (tempfile::TempDir, PathBuf, String) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    std::fs::create_dir(&dir).unwrap();
    let s = dir.to_str().unwrap().to_owned();
    (tmp, dir, s)
}

/// Reads the published set consistently: resolves `..data` once and reads the files inside it.
/// Returns None while nothing is published (or if a generation vanished mid-read; callers retry).
pub fn read_set(dir: &Path) -> Option<(String, String, String)> {
    let gen = std::fs::read_link(dir.join("..data")).ok()?;
    let g = dir.join(gen);
    let token = std::fs::read_to_string(g.join("token")).ok()?;
    let auth = std::fs::read_to_string(g.join("authorization")).ok()?;
    let exp = std::fs::read_to_string(g.join("expires_at")).ok()?;
    Some((token, auth, exp))
}

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
