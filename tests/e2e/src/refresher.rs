//! Runs the real `ls-token-refresher` binary as a child process (real signals, real exit codes),
//! with its stderr captured to a file and its admin server on a free 127.0.0.1 port.
//!
//! The binary is built from the workspace's current source by [`binary`] (once per test process),
//! so `cargo test -p ls-token-refresher-e2e` never runs a stale one. `LSTR_REFRESHER_BIN=/path`
//! runs the tests against another build instead (e.g. an older commit's, to show that a test fails
//! without the fix it guards).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::{free_port, process, repo_root};

/// Path of the binary under test: `cargo build --bin ls-token-refresher` of this workspace, run once
/// per test process (a no-op when it is fresh; it waits while another cargo holds the build lock).
///
/// It builds with the same package selection as the tests (`-p ls-token-refresher -p
/// ls-token-refresher-e2e`) so dependency features unify the same way and nothing is compiled twice,
/// in the target dir cargo picks for the workspace (`CARGO_TARGET_DIR` is inherited).
///
/// With `LSTR_REFRESHER_BIN` set, that file is used as is (nothing is built).
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("LSTR_REFRESHER_BIN") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "LSTR_REFRESHER_BIN={} is not a file",
                p.display()
            );
            eprintln!("refresher: testing {} (LSTR_REFRESHER_BIN)", p.display());
            p
        }
        None => build_binary(),
    })
}

/// The value of the first sample line starting with `prefix` (exact series text, e.g.
/// `ls_token_refresher_refresh_total{result="success"}`) in a `/metrics` answer.
pub fn metric_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(sample_value)
}

/// The sum of every sample line starting with `prefix` (e.g. a family and its `{`: all its label
/// sets) in a `/metrics` answer; 0 when there is none.
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(sample_value)
        .sum()
}

/// The value of one sample line (`name{labels} value`).
fn sample_value(line: &str) -> Option<f64> {
    line.rsplit(' ').next()?.parse().ok()
}

/// The command that runs the binary under `wrapper` (a program and its arguments that end by
/// exec'ing the rest of its command line, e.g. [`crate::private_hosts`]; empty: the binary itself),
/// with a clean environment (`PATH` plus `env`) and no stdin.
fn command(wrapper: &[String], env: &[(&str, &str)]) -> Command {
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(binary());
            c
        }
        None => Command::new(binary()),
    };
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    cmd
}

/// Variables `cargo test` sets for the test process (the test's package, crate and paths). A cargo
/// run from the test must not inherit them: build scripts' fingerprints record some (ring's records
/// `CARGO_MANIFEST_DIR`), so this build and the `cargo test` around it would each find the other's
/// artifacts stale and rebuild ring, rustls, kube … and relink the binary: 28-41 s measured, once
/// inside every `cargo test -p ls-token-refresher-e2e` and once more in the next one's compile.
fn cargo_test_var(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_EXE_")
        || [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ]
        .contains(&name)
}

fn build_binary() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(&cargo);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(cargo_test_var) {
            cmd.env_remove(&name);
        }
    }
    let out = cmd
        .current_dir(repo_root())
        .args([
            "build",
            "--quiet",
            "--message-format=json-render-diagnostics",
            "-p",
            "ls-token-refresher",
            "-p",
            "ls-token-refresher-e2e",
            "--bin",
            "ls-token-refresher",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run {cargo:?} build: {e}"));
    assert!(
        out.status.success(),
        "cargo build --bin ls-token-refresher failed ({}); see its output above",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let exe = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact" && m["target"]["name"] == "ls-token-refresher"
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo build reported no ls-token-refresher executable");
    assert!(exe.is_file(), "{} is missing", exe.display());
    exe
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
    /// How it exited.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr (logs).
    pub stderr: String,
}

/// Runs a one-shot subcommand (`once`, `token`, `check`, or `run` expected to exit) to completion
/// with a clean environment; killed (and the test failed) after 90 s so a hang cannot stall the suite.
pub fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_to_end_wrapped(&[], args, env)
}

/// [`run_to_end`] under `wrapper` (see [`command`]).
pub fn run_to_end_wrapped(wrapper: &[String], args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = command(wrapper, env)
        .args(args)
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
        Self::spawn("run", dir, name, &[], args, env)
    }

    /// [`RefresherProc::start`] under `wrapper` (see [`command`]); the wrapper must exec the
    /// binary in its own process, so the PID is the refresher's.
    pub fn start_wrapped(
        dir: &Path,
        name: &str,
        wrapper: &[String],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> RefresherProc {
        Self::spawn("run", dir, name, wrapper, args, env)
    }

    /// Starts `subcommand` (`run` or `proxy`) with `args` (plus `--admin-addr` on a free port),
    /// logging to `dir/name.log`.
    pub fn start_command(
        subcommand: &str,
        dir: &Path,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> RefresherProc {
        Self::spawn(subcommand, dir, name, &[], args, env)
    }

    fn spawn(
        subcommand: &str,
        dir: &Path,
        name: &str,
        wrapper: &[String],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> RefresherProc {
        crate::init_crypto();
        let port = free_port();
        let admin_addr = format!("127.0.0.1:{port}");
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = command(wrapper, env)
            .arg(subcommand)
            .args(args)
            .args(["--admin-addr", &admin_addr])
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn ls-token-refresher {subcommand}: {e}"));
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
        metric_value(&text, prefix)
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
        process::kill(child.id(), signal);
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
