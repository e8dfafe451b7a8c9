//! The stock Label Studio clients of the auth-proxy proof, run as their users run them: the
//! scripts of `tests/support/consumers/` (see its README and docs/consumers.md) with the venvs its
//! `provision.sh` builds and caches — label-studio-sdk 2.1.2 (`sdk_flow.py`, the ML driver) and the
//! ML backend server label-studio-ml 1.0.9 in its own venv (`ml_backend/launch.sh`).
//!
//! Each client gets a clean environment: `PATH`, a fresh `HOME` (their download caches live there),
//! and only the variables a user sets (`LABEL_STUDIO_URL`, `LABEL_STUDIO_API_KEY`, …). The scripts
//! print a JSON summary (requests, statuses, 401s, refresh POSTs, auth schemes — never header
//! values), returned as [`Summary`]. Every process is stopped by PID on drop or timeout.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{free_port, process, support_dir, tail};

/// The placeholder key a user configures for a client behind the proxy (any non-JWT text; the
/// SDK sends it as `Authorization: Token …`, which the proxy replaces).
pub const PLACEHOLDER: &str = "placeholder-not-a-token";

/// The interpreters `provision.sh` prints (in `env.sh`).
#[derive(Debug)]
pub struct Venvs {
    /// Python of the label-studio-sdk 2.1.2 venv.
    pub sdk_python: PathBuf,
    /// Python of the label-studio-ml 1.0.9 venv.
    pub ml_python: PathBuf,
}

/// Runs `tests/support/consumers/provision.sh --env-file` once per test process (a stamp check
/// when warm) and reads the venvs' interpreters from the `env.sh` it names.
pub fn venvs() -> &'static Venvs {
    static V: OnceLock<Venvs> = OnceLock::new();
    V.get_or_init(|| {
        let hint =
            "run `bash tests/support/consumers/provision.sh` (needs PyPI and apt; ~1 min cold)";
        let env_file = crate::provision("consumers", &["--env-file"], hint);
        let text = std::fs::read_to_string(env_file.trim())
            .unwrap_or_else(|e| panic!("read {}: {e}; {hint}", env_file.trim()));
        let vars: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        let get = |k: &str| -> PathBuf {
            let p = PathBuf::from(
                vars.get(k)
                    .unwrap_or_else(|| panic!("env.sh has no {k}; {hint}")),
            );
            assert!(p.is_file(), "{} is missing; {hint}", p.display());
            p
        };
        Venvs {
            sdk_python: get("LSTR_SDK_PYTHON"),
            ml_python: get("LSTR_ML_PYTHON"),
        }
    })
}

/// `tests/support/consumers`.
pub fn scripts() -> PathBuf {
    support_dir("consumers")
}

/// What a client script reported.
#[derive(Debug)]
pub struct Summary {
    /// Its exit status (0 iff its own checks passed).
    pub status: ExitStatus,
    /// The JSON summary it printed (`Value::Null` if none).
    pub json: Value,
    /// Its stderr, for failure messages.
    pub stderr: String,
}

impl Summary {
    /// The wire counters (`wire` object).
    pub fn wire(&self) -> &Value {
        &self.json["wire"]
    }

    /// A number from the summary (`wire.status_401`, `downloads_verified`, …; dotted path).
    pub fn num(&self, path: &str) -> u64 {
        path.split('.')
            .fold(&self.json, |v, k| &v[k])
            .as_u64()
            .unwrap_or_else(|| panic!("summary has no number at {path}: {}", self.brief()))
    }

    /// A short description for assertion messages (status, failures, wire counters).
    pub fn brief(&self) -> String {
        format!(
            "exit {}; failures {}; wire {}; stderr tail:\n{}",
            self.status,
            self.json["failures"],
            self.wire(),
            tail(&self.stderr, 15)
        )
    }

    /// Passed its own checks.
    pub fn ok(&self) -> bool {
        self.status.success() && self.json["ok"] == Value::Bool(true)
    }

    /// Asserts it passed its own checks with no 401 and no transport error on the wire.
    pub fn assert_clean(&self, what: &str) {
        assert!(self.ok(), "{what}: {}", self.brief());
        assert_eq!(self.num("wire.status_401"), 0, "{what}: {}", self.brief());
        assert_eq!(
            self.num("wire.transport_errors"),
            0,
            "{what}: {}",
            self.brief()
        );
    }
}

/// Runs a client script (`--duration` and `extra` flags) with the SDK venv's python and a clean
/// environment of `env`; killed if it runs [`SCRIPT_SLACK`] beyond its duration.
async fn run_script(
    script: &str,
    duration: Duration,
    extra: &[&str],
    env: &[(&str, &str)],
    home: &Path,
) -> Summary {
    std::fs::create_dir_all(home).unwrap();
    let script = scripts().join(script);
    let limit = duration + SCRIPT_SLACK;
    let child = tokio::process::Command::new(&venvs().sdk_python)
        .arg(&script)
        .arg("--duration")
        .arg(duration.as_secs().to_string())
        .args(extra)
        .current_dir(scripts())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home)
        .env("LANG", "C.UTF-8")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", script.display()));
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} did not finish within {limit:?}", script.display()))
        .expect("wait for the client script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    Summary {
        status: out.status,
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Slack beyond a script's `--duration` for its last iteration and start-up.
const SCRIPT_SLACK: Duration = Duration::from_secs(120);

/// `sdk_flow.py` (label-studio-sdk 2.1.2: project, import, upload, `get_local_path` download,
/// paginated listing) against `url` with `key`, looping for `duration`; `extra` are more flags.
pub async fn sdk_flow(
    url: &str,
    key: &str,
    home: &Path,
    duration: Duration,
    extra: &[&str],
) -> Summary {
    run_script(
        "sdk_flow.py",
        duration,
        extra,
        &[("LABEL_STUDIO_URL", url), ("LABEL_STUDIO_API_KEY", key)],
        home,
    )
    .await
}

/// `ml_backend/driver.py`: registers the backend at `backend_url` through Label Studio's API at
/// `url`, then per iteration uploads an image and makes Label Studio ask the backend for
/// predictions, which must carry the image's sha256 (the backend downloaded it).
pub async fn ml_driver(
    url: &str,
    backend_url: &str,
    home: &Path,
    duration: Duration,
    extra: &[&str],
) -> Summary {
    run_script(
        "ml_backend/driver.py",
        duration,
        extra,
        &[
            ("LABEL_STUDIO_URL", url),
            ("LABEL_STUDIO_API_KEY", PLACEHOLDER),
            ("ML_BACKEND_URL", backend_url),
        ],
        home,
    )
    .await
}

/// The control of an ML backend that is not behind the proxy: one [`ml_driver`] iteration (retrieved
/// predictions only) with the backend at `backend_url`; asserts that it failed because the backend's
/// download of the task image got a 401 (the model reports the error as its prediction).
pub async fn assert_ml_download_refused(url: &str, backend_url: &str, home: &Path) -> Summary {
    let d = ml_driver(
        url,
        backend_url,
        home,
        Duration::ZERO,
        &["--skip-interactive"],
    )
    .await;
    assert!(!d.ok(), "the backend downloaded without the proxy");
    let checks = d.json["checks"].to_string();
    assert!(
        checks.contains("ERROR") && checks.contains("401"),
        "the direct backend's download did not fail with 401: {}",
        d.brief()
    );
    d
}

/// The stock ML backend server (label-studio-ml 1.0.9, `ml_backend/launch.sh`, model
/// `DownloadProbe`) on a free 127.0.0.1 port. Stopped by PID on drop.
pub struct MlBackend {
    child: Option<std::process::Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
}

impl MlBackend {
    /// Starts it with `LABEL_STUDIO_URL=label_studio_url` and the placeholder key, in `workdir`,
    /// and waits for its `/health`.
    pub async fn start(label_studio_url: &str, workdir: &Path) -> MlBackend {
        std::fs::create_dir_all(workdir).unwrap();
        let port = free_port();
        let log = workdir.join("ml-backend.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new("bash")
            .arg(scripts().join("ml_backend/launch.sh"))
            .arg(port.to_string())
            .arg(workdir)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LSTR_ML_PYTHON", &venvs().ml_python)
            .env("LABEL_STUDIO_URL", label_studio_url)
            .env("LABEL_STUDIO_API_KEY", PLACEHOLDER)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn ml_backend/launch.sh");
        let mut b = MlBackend {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let http = crate::ls_api::http_client();
        let t0 = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{}/health", b.url)).send().await {
                if r.status().is_success() {
                    return b;
                }
            }
            if let Some(Ok(Some(status))) = b.child.as_mut().map(|c| c.try_wait()) {
                panic!("the ML backend exited ({status}):\n{}", b.log_tail());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the ML backend did not answer /health within 60 s:\n{}",
                b.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 30)
    }
}

impl Drop for MlBackend {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // launch.sh execs the server: the PID is the server's.
            process::kill(c.id(), "TERM");
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
