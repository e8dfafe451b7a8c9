//! A real Label Studio 1.23.2 process per test.
//!
//! `LabelStudio::start(LsOptions::default()).await` copies the provisioned template data dir (see
//! `tests/support/ls/provision.sh`, run automatically, ~instant when warm) into a fresh temp dir, gives it
//! its own secret key and legacy token, starts `label-studio start` on a free 127.0.0.1 port with a clean
//! environment and waits until `/health` answers on exactly that port. Each instance is independent:
//! own data dir, own HOME, own port, own signing key. The process is stopped (by PID) on `stop()` and on
//! drop, and it also exits by itself if the test process dies (a watchdog thread in the launcher).
//!
//! The API is reached through [`LabelStudio::api`] ([`LsApi`]); only what needs the server's files
//! (minting a short-lived PAT from the Django side) is here.
//!
//! Environment knobs: `LSTR_CACHE` (cache root, see [`crate::cache_dir`]), `LSTR_NO_PROVISION=1` (do not
//! run provision.sh, only check the cache), `LSTR_KEEP_LS_DIR=1` (keep the temp dir of each instance).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::ls_api::{http_client, LsApi};
use crate::{cache_dir, free_port, process, support_dir, tail};

/// The test superuser created by provision.sh (fixed, local-only credentials).
pub const ADMIN_EMAIL: &str = "admin@example.com";
/// Password of [`ADMIN_EMAIL`].
pub const ADMIN_PASSWORD: &str = "lstr-test-Passw0rd";
/// Label Studio version the harness provisions.
pub const LS_VERSION: &str = "1.23.2";

/// Directory holding provision.sh, test_settings.py and mint_pat.py.
pub fn ls_support_dir() -> PathBuf {
    support_dir("ls")
}

/// How to start a test Label Studio.
#[derive(Clone, Debug)]
pub struct LsOptions {
    /// Access-token lifetime (`SIMPLE_JWT.ACCESS_TOKEN_LIFETIME`) in seconds. Stock value: 300.
    pub access_ttl_secs: u64,
    /// Organisation switch `legacy_api_tokens_enabled` before the first start (stock: off).
    pub legacy_enabled_at_start: bool,
    /// Organisation switch `api_tokens_enabled` (JWT / PAT auth) before the first start (stock: on).
    pub api_tokens_enabled_at_start: bool,
    /// Port to try first; if it is busy another free port is used. `None`: a free port.
    pub port: Option<u16>,
    /// How long to wait for `/health` after each spawn.
    pub start_timeout: Duration,
    /// Extra environment variables for the server process (on top of the clean environment).
    pub extra_env: Vec<(String, String)>,
}

impl Default for LsOptions {
    fn default() -> Self {
        LsOptions {
            access_ttl_secs: 300,
            legacy_enabled_at_start: false,
            api_tokens_enabled_at_start: true,
            port: None,
            start_timeout: Duration::from_secs(90),
            extra_env: Vec::new(),
        }
    }
}

/// Paths printed by provision.sh.
#[derive(Clone, Debug)]
pub struct Provisioned {
    /// The virtualenv Label Studio is installed in.
    pub venv: PathBuf,
    /// Its `label-studio` console script.
    pub label_studio_bin: PathBuf,
    /// Its python.
    pub python: PathBuf,
    /// The template data dir (migrated DB with the admin user), copied per instance.
    pub template: PathBuf,
    /// The admin's e-mail.
    pub email: String,
    /// The admin's password.
    pub password: String,
}

/// Runs provision.sh once per test process (idempotent, flock-protected; ~instant when the cache is warm,
/// ~4-5 min cold). With `LSTR_NO_PROVISION=1` only checks that the cache is complete. Panics with a clear
/// message telling how to provision by hand.
pub fn provision() -> &'static Provisioned {
    static P: OnceLock<Provisioned> = OnceLock::new();
    P.get_or_init(|| {
        let script = ls_support_dir().join("provision.sh");
        let how = format!(
            "run `bash {}` (needs PyPI; ~5 min cold, cached under {}/ls-{LS_VERSION})",
            script.display(),
            cache_dir().display()
        );
        if std::env::var_os("LSTR_NO_PROVISION").is_some_and(|v| v == "1") {
            let dir = cache_dir().join(format!("ls-{LS_VERSION}"));
            let p = Provisioned {
                venv: dir.join("venv"),
                label_studio_bin: dir.join("venv/bin/label-studio"),
                python: dir.join("venv/bin/python"),
                template: dir.join("template"),
                email: ADMIN_EMAIL.into(),
                password: ADMIN_PASSWORD.into(),
            };
            assert!(
                dir.join("READY").is_file() && p.label_studio_bin.is_file(),
                "Label Studio {LS_VERSION} is not provisioned: {how}"
            );
            return p;
        }
        let stdout = crate::provision("ls", &[], &how);
        let vars: BTreeMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |k: &str| -> String {
            vars.get(k)
                .unwrap_or_else(|| panic!("provision.sh did not print {k}=…; {how}"))
                .to_string()
        };
        Provisioned {
            venv: get("LS_VENV").into(),
            label_studio_bin: get("LS_BIN").into(),
            python: get("LS_PYTHON").into(),
            template: get("LS_TEMPLATE").into(),
            email: get("LS_EMAIL"),
            password: get("LS_PASSWORD"),
        }
    })
}

/// Launcher run by the venv's python instead of the `label-studio` console script (same entry point).
/// A daemon thread exits the server when its parent (the test process) goes away, so a killed test
/// run leaves no orphans even when `Drop` never runs.
const LAUNCHER: &str = r#"
import os, sys, threading, time
_parent = int(os.environ.pop('LSTR_PARENT_PID'))
def _watch():
    while True:
        if os.getppid() != _parent:
            os._exit(75)
        time.sleep(0.5)
threading.Thread(target=_watch, name='lstr-parent-watch', daemon=True).start()
sys.argv[0] = 'label-studio'
from label_studio.server import main
sys.exit(main())
"#;

/// Per-instance adjustments of the copied template data dir, before the first start: a fresh legacy
/// token (copies would otherwise share the template's), the org switches, no leftover sessions, and
/// an own secret key (the PAT signing key) in `.env`.
///
/// Why the key is written here rather than left to Label Studio: 1.23.2 generates it from Django's
/// alphabet, which includes `$`, and reads `.env` back with django-environ, which treats a value
/// starting with `$` as a reference to another variable and returns `''`. So about one fresh data
/// dir in 50 gets a new key on every start, and its PATs stop working after a restart (seen in CI:
/// `Token is invalid` right after `restart()`). A hex key re-reads as written.
const PREPARE_DB: &str = r#"
import os, secrets, sqlite3, sys
db, api, legacy = sys.argv[1], sys.argv[2] == '1', sys.argv[3] == '1'
env = os.path.join(os.path.dirname(db), '.env')
fd = os.open(env, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, 'w') as f:
    f.write('SECRET_KEY=%s\n' % secrets.token_hex(32))
c = sqlite3.connect(db)
c.execute('UPDATE authtoken_token SET key = ?', (secrets.token_hex(20),))
n = c.execute('UPDATE jwt_auth_jwtsettings SET api_tokens_enabled = ?, legacy_api_tokens_enabled = ?',
              (int(api), int(legacy))).rowcount
if n != 1:
    sys.exit('expected exactly one jwt_auth_jwtsettings row, found %d' % n)
c.execute('DELETE FROM django_session')
c.commit()
"#;

enum SpawnError {
    /// Label Studio ended up on another port than requested (the requested one was busy).
    PortMoved(String),
    Failed(String),
}

/// A running (or stopped) Label Studio owned by one test.
pub struct LabelStudio {
    opts: LsOptions,
    prov: &'static Provisioned,
    root: Option<tempfile::TempDir>,
    root_path: PathBuf,
    data_dir: PathBuf,
    home: PathBuf,
    log_path: PathBuf,
    port: u16,
    child: Option<Child>,
    /// For `/health` while starting.
    http: reqwest::Client,
    /// The API client, once the port is known (always set on a started instance).
    api: Option<LsApi>,
}

impl LabelStudio {
    /// Provisions (if needed), prepares a fresh data dir and starts Label Studio; panics on failure with the
    /// tail of its log.
    pub async fn start(opts: LsOptions) -> LabelStudio {
        let prov = provision();
        let root = tempfile::Builder::new()
            .prefix("lstr-ls-")
            .tempdir()
            .expect("create temp dir for Label Studio");
        let root_path = root.path().to_path_buf();
        std::fs::write(root_path.join("owner.pid"), std::process::id().to_string())
            .expect("write owner.pid");
        sweep_stale_roots(root.path().parent().unwrap_or(Path::new("/tmp")));
        let data_dir = root_path.join("data");
        let home = root_path.join("home");
        std::fs::create_dir_all(home.join("tmp")).expect("create HOME");
        copy_dir_all(&prov.template, &data_dir).expect("copy template data dir");
        let prep = Command::new(&prov.python)
            .arg("-c")
            .arg(PREPARE_DB)
            .arg(data_dir.join("label_studio.sqlite3"))
            .arg(if opts.api_tokens_enabled_at_start {
                "1"
            } else {
                "0"
            })
            .arg(if opts.legacy_enabled_at_start {
                "1"
            } else {
                "0"
            })
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &home)
            .output()
            .expect("run python to prepare the data dir");
        assert!(
            prep.status.success(),
            "preparing the data dir failed: {}",
            String::from_utf8_lossy(&prep.stderr)
        );
        let mut ls = LabelStudio {
            log_path: root_path.join("label-studio.log"),
            opts,
            prov,
            root: Some(root),
            root_path,
            data_dir,
            home,
            port: 0,
            child: None,
            http: http_client(),
            api: None,
        };
        let t0 = Instant::now();
        let mut first = ls.opts.port;
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = first.take().unwrap_or_else(free_port);
            match ls.spawn_and_wait(port).await {
                Ok(()) => {
                    eprintln!(
                        "label-studio: {} pid {} ready in {:.1}s (data {})",
                        ls.url(),
                        ls.pid().unwrap_or(0),
                        t0.elapsed().as_secs_f64(),
                        ls.data_dir.display()
                    );
                    ls.api = Some(LsApi::new(&ls.url(), &prov.email, &prov.password));
                    return ls;
                }
                Err(SpawnError::PortMoved(msg)) => {
                    eprintln!("label-studio: {msg}; retrying on another port");
                    last_err = msg;
                }
                Err(SpawnError::Failed(msg)) => panic!("{msg}"),
            }
        }
        panic!("Label Studio never got the port it was given: {last_err}");
    }

    /// Starts with default options except the access-token lifetime.
    pub async fn start_with_ttl(access_ttl_secs: u64) -> LabelStudio {
        Self::start(LsOptions {
            access_ttl_secs,
            ..LsOptions::default()
        })
        .await
    }

    /// The API of this instance, as its admin. Its session survives [`Self::restart`].
    pub fn api(&self) -> &LsApi {
        self.api.as_ref().expect("Label Studio was started")
    }

    /// Spawns the server on `port` and waits for it; on failure the process is stopped again.
    async fn spawn_and_wait(&mut self, port: u16) -> Result<(), SpawnError> {
        assert!(self.child.is_none(), "Label Studio already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open Label Studio log");
        let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log.try_clone().expect("clone log fd");
        let mut cmd = Command::new(&self.prov.python);
        cmd.arg("-c")
            .arg(LAUNCHER)
            .args(["start", "--no-browser", "--internal-host", "127.0.0.1"])
            .arg("--port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .current_dir(&self.root_path)
            .env_clear()
            .envs(self.server_env())
            .env("LSTR_PARENT_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Own process group (pgid = pid) so stop() reaches anything it might spawn.
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn Label Studio ({}): {e}", self.prov.python.display()));
        self.child = Some(child);
        self.port = port;
        match self.wait_ready(port, log_offset).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stop();
                Err(e)
            }
        }
    }

    /// The clean environment of the server (and of mint_pat.py).
    fn server_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            (
                "PATH".into(),
                format!(
                    "{}/bin:/usr/local/bin:/usr/bin:/bin",
                    self.prov.venv.display()
                ),
            ),
            ("HOME".into(), self.home.display().to_string()),
            ("TMPDIR".into(), self.home.join("tmp").display().to_string()),
            ("LANG".into(), "C.UTF-8".into()),
            ("PYTHONUNBUFFERED".into(), "1".into()),
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
            // Stock root level is DEBUG, which logs e.g. new legacy tokens; the log tail is printed
            // when a test panics and must not carry tokens.
            ("LOG_LEVEL".into(), "INFO".into()),
            ("LATEST_VERSION_CHECK".into(), "false".into()),
            ("SENTRY_DSN".into(), String::new()),
            ("FRONTEND_SENTRY_DSN".into(), String::new()),
            ("PYTHONPATH".into(), ls_support_dir().display().to_string()),
            ("DJANGO_SETTINGS_MODULE".into(), "test_settings".into()),
            (
                "LSTR_TEST_ACCESS_TTL_SECONDS".into(),
                self.opts.access_ttl_secs.to_string(),
            ),
        ];
        env.extend(self.opts.extra_env.iter().cloned());
        env
    }

    async fn wait_ready(&mut self, port: u16, log_offset: u64) -> Result<(), SpawnError> {
        let deadline = Instant::now() + self.opts.start_timeout;
        let health = format!("http://127.0.0.1:{port}/health");
        let announce = "Starting development server at http://";
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = self.log_since(log_offset);
                if log.contains("That port is already in use") {
                    return Err(SpawnError::PortMoved(format!("port {port} was taken")));
                }
                return Err(SpawnError::Failed(format!(
                    "Label Studio exited during start-up ({status}); log tail ({}):\n{}",
                    self.log_path.display(),
                    tail(&log, 40)
                )));
            }
            let log = self.log_since(log_offset);
            if let Some(i) = log.find(announce) {
                let rest = &log[i + announce.len()..];
                let hostport = rest.split('/').next().unwrap_or("");
                if hostport != format!("127.0.0.1:{port}") {
                    return Err(SpawnError::PortMoved(format!(
                        "asked for port {port}, Label Studio announced {hostport}"
                    )));
                }
                // Only now is /health on this port known to be ours.
                if let Ok(r) = self
                    .http
                    .get(&health)
                    .timeout(Duration::from_secs(3))
                    .send()
                    .await
                {
                    if r.status().as_u16() == 200
                        && r.text().await.unwrap_or_default().contains("UP")
                    {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(SpawnError::Failed(format!(
                    "Label Studio did not answer {health} within {:?}; log tail ({}):\n{}",
                    self.opts.start_timeout,
                    self.log_path.display(),
                    tail(&log, 40)
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn log_since(&self, offset: u64) -> String {
        let mut s = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.seek(SeekFrom::Start(offset));
            let _ = f.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    }

    /// The last `lines` lines of the server log (all starts).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_since(0), lines)
    }

    /// `http://127.0.0.1:PORT` (no trailing slash). Stable across `restart()`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// PID of the server while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The server's log (stdout and stderr of every start).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Its data dir (SQLite DB, secret key).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The instance's temp dir (data dir, HOME, log); removed on drop.
    pub fn root_dir(&self) -> &Path {
        &self.root_path
    }

    /// Whether the server process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Resident memory of the server process, from /proc.
    pub fn rss_bytes(&self) -> Option<u64> {
        process::rss_kib(self.pid()?).map(|kib| kib * 1024)
    }

    /// SIGTERM to the server (by PID, its own process group), wait up to 5 s, then SIGKILL. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        process::kill_group(pid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => break,
            }
        }
        process::kill_group(pid, "KILL");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops the server and starts it again on the same port with the same data dir (same URL, same
    /// signing key, same tokens and sessions). Retries for ~20 s if the port is briefly taken.
    pub async fn restart(&mut self) {
        self.stop();
        let port = self.port;
        let t0 = Instant::now();
        let mut last = String::new();
        while t0.elapsed() < Duration::from_secs(20) {
            match self.spawn_and_wait(port).await {
                Ok(()) => {
                    eprintln!(
                        "label-studio: restarted on {} pid {} in {:.1}s",
                        self.url(),
                        self.pid().unwrap_or(0),
                        t0.elapsed().as_secs_f64()
                    );
                    return;
                }
                Err(SpawnError::PortMoved(msg)) => {
                    last = msg;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(SpawnError::Failed(msg)) => panic!("restart: {msg}"),
            }
        }
        panic!("restart: could not get port {port} back: {last}");
    }

    /// Mints a PAT that expires `lifetime_secs` after now, from the Django side (mint_pat.py). It is a
    /// normal PAT otherwise (recorded, can be blacklisted). Works while the server runs or is stopped.
    pub async fn mint_short_pat(&self, lifetime_secs: u64) -> String {
        self.mint_pat_for(&self.prov.email.clone(), lifetime_secs)
            .await
    }

    /// A PAT of the user `email` lasting `lifetime_secs` (mint_pat.py).
    pub async fn mint_pat_for(&self, email: &str, lifetime_secs: u64) -> String {
        let token = self
            .django("mint_pat.py", &[&lifetime_secs.to_string(), email])
            .await;
        let token = token.trim().to_string();
        assert_eq!(
            token.split('.').count(),
            3,
            "mint_pat.py printed something that is not a JWT"
        );
        token
    }

    /// Runs `script` (in tests/support/ls) with `args` in this instance's Django environment and
    /// returns its stdout, trimmed; panics with its stderr on failure.
    pub async fn django(&self, script: &str, args: &[&str]) -> String {
        let out = tokio::process::Command::new(&self.prov.python)
            .arg(ls_support_dir().join(script))
            .args(args)
            .current_dir(&self.root_path)
            .env_clear()
            .envs(self.server_env())
            .env("LABEL_STUDIO_BASE_DATA_DIR", &self.data_dir)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .unwrap_or_else(|e| panic!("run {script}: {e}"));
        assert!(
            out.status.success(),
            "{script} failed ({}):\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 30)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8 output")
            .trim()
            .to_string()
    }

    /// Creates the user `email` (users.py) in the admin's organization (`same_org`) or in one of
    /// their own; returns (user id, organization id).
    pub async fn create_user(&self, email: &str, password: &str, same_org: bool) -> (u64, u64) {
        let where_ = if same_org { "same-org" } else { "own-org" };
        let out = self
            .django("users.py", &["create", email, password, where_])
            .await;
        let v: serde_json::Value = serde_json::from_str(&out).expect("users.py prints JSON");
        (
            v["id"].as_u64().expect("id"),
            v["organization"].as_u64().expect("organization"),
        )
    }

    /// Deactivates the user `email` (is_active = false).
    pub async fn deactivate_user(&self, email: &str) {
        self.django("users.py", &["deactivate", email]).await;
    }
}

impl Drop for LabelStudio {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        self.stop();
        if panicking {
            eprintln!(
                "label-studio {} log tail ({}):\n{}",
                self.url(),
                self.log_path.display(),
                self.log_tail(30)
            );
        }
        if let Some(root) = self.root.take() {
            if std::env::var_os("LSTR_KEEP_LS_DIR").is_some_and(|v| v == "1") {
                eprintln!("label-studio: keeping {}", root.keep().display());
            }
        }
    }
}

/// Removes temp dirs of earlier instances whose test process died without running `Drop` (e.g. SIGKILL);
/// their servers exited by themselves (launcher watchdog). Only dirs with an `owner.pid` of a dead
/// process, last touched over a minute ago, are removed.
fn sweep_stale_roots(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with("lstr-ls-") {
            continue;
        }
        let owner_file = e.path().join("owner.pid");
        let Ok(owner) = std::fs::read_to_string(&owner_file) else {
            continue;
        };
        let Ok(owner) = owner.trim().parse::<u32>() else {
            continue;
        };
        let old = std::fs::metadata(&owner_file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(60));
        if old && owner != std::process::id() && !Path::new(&format!("/proc/{owner}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn copy_dir_all(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let to = dst.join(entry.file_name());
        if ty.is_dir() {
            copy_dir_all(&entry.path(), &to)?;
        } else if ty.is_file() {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}
