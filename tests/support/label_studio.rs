//! Real Label Studio 1.23.2 per test.
//!
//! `LabelStudio::start(LsOptions::default()).await` copies the provisioned template data dir (see
//! `tests/support/ls/provision.sh`, run automatically, ~instant when warm) into a fresh temp dir, gives it
//! its own secret key and legacy token, starts `label-studio start` on a free 127.0.0.1 port with a clean
//! environment and waits until `/health` answers on exactly that port. Each instance is independent:
//! own data dir, own HOME, own port, own signing key. The process is stopped (by PID) on `stop()` and on
//! drop, and it also exits by itself if the test process dies (a watchdog thread in the launcher).
//!
//! Helpers never print tokens; panics carry statuses and error details only.
//!
//! Environment knobs: `LSTR_CACHE` (cache root, see `cache_dir()`), `LSTR_NO_PROVISION=1` (do not run
//! provision.sh, only check the cache), `LSTR_KEEP_LS_DIR=1` (keep the temp dir of each instance).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// The test superuser created by provision.sh (fixed, local-only credentials).
pub const ADMIN_EMAIL: &str = "admin@example.com";
/// Password of [`ADMIN_EMAIL`].
pub const ADMIN_PASSWORD: &str = "lstr-test-Passw0rd";
/// Label Studio version the harness provisions.
pub const LS_VERSION: &str = "1.23.2";

/// Directory holding provision.sh, test_settings.py and mint_pat.py.
pub fn ls_support_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/ls")
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
    pub venv: PathBuf,
    pub label_studio_bin: PathBuf,
    pub python: PathBuf,
    pub template: PathBuf,
    pub email: String,
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
            super::cache_dir().display()
        );
        if std::env::var_os("LSTR_NO_PROVISION").is_some_and(|v| v == "1") {
            let dir = super::cache_dir().join(format!("ls-{LS_VERSION}"));
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
        let out = Command::new("bash")
            .arg(&script)
            .env("LSTR_CACHE", super::cache_dir())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run provision.sh ({e}): {how}"));
        assert!(
            out.status.success(),
            "provision.sh failed ({}); see its stderr above; {how}",
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
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

/// Per-instance adjustments of the copied template DB, before the first start: a fresh legacy token
/// (copies would otherwise share the template's), the org switches, no leftover sessions.
const PREPARE_DB: &str = r#"
import secrets, sqlite3, sys
db, api, legacy = sys.argv[1], sys.argv[2] == '1', sys.argv[3] == '1'
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
    http: reqwest::Client,
    /// Session cookies of the admin (name → value); empty until the first session call.
    cookies: Mutex<BTreeMap<String, String>>,
}

impl LabelStudio {
    /// Provisions (if needed), prepares a fresh data dir and starts Label Studio; panics on failure with the
    /// tail of its log.
    pub async fn start(opts: LsOptions) -> LabelStudio {
        super::init_crypto();
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
        // Each instance generates its own secret key (PAT signing key) on first start.
        let _ = std::fs::remove_file(data_dir.join(".env"));
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
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("build reqwest client");
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
            http,
            cookies: Mutex::new(BTreeMap::new()),
        };
        let t0 = Instant::now();
        let mut first = ls.opts.port;
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = first.take().unwrap_or_else(super::free_port);
            match ls.spawn_and_wait(port).await {
                Ok(()) => {
                    eprintln!(
                        "label-studio: {} pid {} ready in {:.1}s (data {})",
                        ls.url(),
                        ls.pid().unwrap_or(0),
                        t0.elapsed().as_secs_f64(),
                        ls.data_dir.display()
                    );
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

    /// Starts with default options (access TTL 300 s, legacy off).
    pub async fn start_default() -> LabelStudio {
        Self::start(LsOptions::default()).await
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

    pub fn port(&self) -> u16 {
        self.port
    }

    /// PID of the server while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The instance's temp dir (data dir, HOME, log); removed on drop.
    pub fn root_dir(&self) -> &Path {
        &self.root_path
    }

    pub fn options(&self) -> &LsOptions {
        &self.opts
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
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
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
        signal_group(pid, "TERM");
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
        signal_group(pid, "KILL");
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

    // ---------------------------------------------------------------- HTTP helpers

    fn api(&self, path: &str) -> String {
        format!("{}{}", self.url(), path)
    }

    fn cookie_header(&self) -> String {
        let c = self.cookies.lock().unwrap();
        c.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn absorb_cookies(&self, headers: &reqwest::header::HeaderMap) {
        let mut c = self.cookies.lock().unwrap();
        for v in headers.get_all(reqwest::header::SET_COOKIE) {
            let Ok(v) = v.to_str() else { continue };
            let first = v.split(';').next().unwrap_or("");
            if let Some((k, val)) = first.split_once('=') {
                c.insert(k.trim().to_string(), val.trim().to_string());
            }
        }
    }

    /// Session login of the admin (GET the form for the CSRF cookie, POST credentials → 302).
    pub async fn login(&self) {
        self.cookies.lock().unwrap().clear();
        let login = self.api("/user/login/");
        let r = self
            .http
            .get(&login)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /user/login/: {e}"));
        self.absorb_cookies(r.headers());
        let csrf = self
            .cookies
            .lock()
            .unwrap()
            .get("csrftoken")
            .cloned()
            .unwrap_or_else(|| panic!("GET /user/login/ ({}) set no csrftoken cookie", r.status()));
        let body = format!(
            "email={}&password={}&csrfmiddlewaretoken={}",
            urlencode(&self.prov.email),
            urlencode(&self.prov.password),
            urlencode(&csrf)
        );
        let r = self
            .http
            .post(&login)
            .header(reqwest::header::COOKIE, self.cookie_header())
            .header(reqwest::header::REFERER, &login)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /user/login/: {e}"));
        let status = r.status().as_u16();
        self.absorb_cookies(r.headers());
        assert!(
            status == 302 && self.cookies.lock().unwrap().contains_key("sessionid"),
            "session login as {} failed: HTTP {status} (expected 302 with a sessionid cookie)",
            self.prov.email
        );
    }

    /// A request authenticated with the admin's session cookie (logs in on first use and again once
    /// if the session was rejected).
    pub async fn session_request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        for attempt in 0..2 {
            if attempt == 1 || !self.cookies.lock().unwrap().contains_key("sessionid") {
                self.login().await;
            }
            let csrf = self
                .cookies
                .lock()
                .unwrap()
                .get("csrftoken")
                .cloned()
                .unwrap_or_default();
            let mut rb = self
                .http
                .request(method.clone(), self.api(path))
                .header(reqwest::header::COOKIE, self.cookie_header())
                .header("X-CSRFToken", csrf)
                .header(reqwest::header::REFERER, self.api("/"));
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let r = rb
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            self.absorb_cookies(r.headers());
            let status = r.status().as_u16();
            if attempt == 0 && (status == 401 || status == 403) {
                continue;
            }
            return (status, body_json(r).await);
        }
        unreachable!()
    }

    /// POST a JSON body; `authorization` is the full header value (e.g. `"Bearer …"`).
    pub async fn post_json(
        &self,
        path: &str,
        authorization: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        self.send(
            "POST",
            path,
            self.http.post(self.api(path)).json(body),
            authorization,
        )
        .await
    }

    /// GET; `authorization` is the full header value.
    pub async fn get(&self, path: &str, authorization: Option<&str>) -> (u16, Value) {
        self.send("GET", path, self.http.get(self.api(path)), authorization)
            .await
    }

    /// Sends `rb` with an optional `Authorization` header value; panics on transport errors.
    async fn send(
        &self,
        method: &str,
        path: &str,
        mut rb: reqwest::RequestBuilder,
        authorization: Option<&str>,
    ) -> (u16, Value) {
        if let Some(a) = authorization {
            rb = rb.header(reqwest::header::AUTHORIZATION, a);
        }
        let r = rb
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status().as_u16();
        (status, body_json(r).await)
    }

    // ---------------------------------------------------------------- tokens

    /// Creates a PAT for the admin (`POST /api/token/`). Label Studio allows one valid PAT per user: on
    /// 409 every listed PAT (and any other live one) is blacklisted first, then creation is retried once.
    pub async fn create_pat(&self) -> String {
        let (status, body) = self
            .session_request(reqwest::Method::POST, "/api/token/", None)
            .await;
        let (status, body) = if status == 409 {
            for t in self.list_pats().await {
                let (s, _) = self
                    .post_json("/api/token/blacklist/", None, &json!({ "refresh": t }))
                    .await;
                assert!(
                    s == 204 || s == 404,
                    "blacklisting an existing PAT: HTTP {s}"
                );
            }
            self.session_request(reqwest::Method::POST, "/api/token/", None)
                .await
        } else {
            (status, body)
        };
        assert_eq!(
            status,
            201,
            "POST /api/token/: HTTP {status}: {}",
            detail(&body)
        );
        body["token"]
            .as_str()
            .unwrap_or_else(|| panic!("POST /api/token/ 201 without a token field"))
            .to_string()
    }

    /// The admin's live PATs as Label Studio lists them (`header.payload`, no signature).
    pub async fn list_pats(&self) -> Vec<String> {
        let (status, body) = self
            .session_request(reqwest::Method::GET, "/api/token/", None)
            .await;
        assert_eq!(
            status,
            200,
            "GET /api/token/: HTTP {status}: {}",
            detail(&body)
        );
        body.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t["token"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The admin's legacy token (40 hex chars), whatever the org switches are.
    pub async fn legacy_token(&self) -> String {
        let (status, body) = self
            .session_request(reqwest::Method::GET, "/api/current-user/token", None)
            .await;
        assert_eq!(
            status,
            200,
            "GET /api/current-user/token: HTTP {status}: {}",
            detail(&body)
        );
        body["token"]
            .as_str()
            .expect("legacy token field")
            .to_string()
    }

    /// Replaces the admin's legacy token and returns the new one.
    pub async fn reset_legacy_token(&self) -> String {
        let (status, body) = self
            .session_request(
                reqwest::Method::POST,
                "/api/current-user/reset-token/",
                None,
            )
            .await;
        assert!(
            status == 200 || status == 201,
            "POST /api/current-user/reset-token/: HTTP {status}: {}",
            detail(&body)
        );
        body["token"]
            .as_str()
            .expect("legacy token field")
            .to_string()
    }

    /// Current org switches: `(api_tokens_enabled, legacy_api_tokens_enabled)`.
    pub async fn org_tokens(&self) -> (bool, bool) {
        let (status, body) = self
            .session_request(reqwest::Method::GET, "/api/jwt/settings", None)
            .await;
        assert_eq!(
            status,
            200,
            "GET /api/jwt/settings: HTTP {status}: {}",
            detail(&body)
        );
        (
            body["api_tokens_enabled"]
                .as_bool()
                .expect("api_tokens_enabled"),
            body["legacy_api_tokens_enabled"]
                .as_bool()
                .expect("legacy_api_tokens_enabled"),
        )
    }

    /// Sets the org switches (JWT/PAT auth, legacy token auth). Effective from the next request.
    pub async fn set_org_tokens(&self, api_tokens_enabled: bool, legacy_enabled: bool) {
        let want = json!({
            "api_tokens_enabled": api_tokens_enabled,
            "legacy_api_tokens_enabled": legacy_enabled,
        });
        let (status, body) = self
            .session_request(reqwest::Method::POST, "/api/jwt/settings", Some(&want))
            .await;
        assert!(
            (200..300).contains(&status),
            "POST /api/jwt/settings: HTTP {status}: {}",
            detail(&body)
        );
        assert_eq!(
            self.org_tokens().await,
            (api_tokens_enabled, legacy_enabled)
        );
    }

    /// Revokes a PAT (`POST /api/token/blacklist/`, expects 204).
    pub async fn blacklist(&self, pat: &str) {
        let (status, body) = self
            .post_json("/api/token/blacklist/", None, &json!({ "refresh": pat }))
            .await;
        assert_eq!(
            status,
            204,
            "POST /api/token/blacklist/: HTTP {status}: {}",
            detail(&body)
        );
    }

    /// `POST /api/token/rotate/` authenticated with `access`, rotating `pat`: returns the new PAT; the old
    /// one is blacklisted at once. (Label Studio needs the PAT in the body: the access token alone → 400.)
    pub async fn rotate(&self, access: &str, pat: &str) -> String {
        let (status, body) = self
            .post_json(
                "/api/token/rotate/",
                Some(&format!("Bearer {access}")),
                &json!({ "refresh": pat }),
            )
            .await;
        assert_eq!(
            status,
            200,
            "POST /api/token/rotate/: HTTP {status}: {}",
            detail(&body)
        );
        body["refresh"].as_str().expect("refresh field").to_string()
    }

    /// Mints a PAT that expires `lifetime_secs` after now, from the Django side (mint_pat.py). It is a
    /// normal PAT otherwise (recorded, can be blacklisted). Works while the server runs or is stopped.
    pub async fn mint_short_pat(&self, lifetime_secs: u64) -> String {
        let out = tokio::process::Command::new(&self.prov.python)
            .arg(ls_support_dir().join("mint_pat.py"))
            .arg(lifetime_secs.to_string())
            .arg(&self.prov.email)
            .current_dir(&self.root_path)
            .env_clear()
            .envs(self.server_env())
            .env("LABEL_STUDIO_BASE_DATA_DIR", &self.data_dir)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .expect("run mint_pat.py");
        assert!(
            out.status.success(),
            "mint_pat.py failed ({}):\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 30)
        );
        let token = String::from_utf8(out.stdout).expect("utf-8 token");
        let token = token.trim().to_string();
        assert_eq!(
            token.split('.').count(),
            3,
            "mint_pat.py printed something that is not a JWT"
        );
        token
    }

    /// `POST /api/token/refresh/ {"refresh": pat}` → (status, JSON body).
    pub async fn refresh(&self, pat: &str) -> (u16, Value) {
        self.post_json("/api/token/refresh/", None, &json!({ "refresh": pat }))
            .await
    }

    /// Exchanges `pat` for an access token, asserting 200.
    pub async fn access_token(&self, pat: &str) -> String {
        let (status, body) = self.refresh(pat).await;
        assert_eq!(status, 200, "refresh: HTTP {status}: {}", detail(&body));
        body["access"].as_str().expect("access field").to_string()
    }

    /// `GET /api/current-user/whoami` with `Authorization: <authorization>` → HTTP status.
    pub async fn api_status(&self, authorization: &str) -> u16 {
        self.get("/api/current-user/whoami", Some(authorization))
            .await
            .0
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

/// Claims (payload) of a JWT, without verification.
pub fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT has a payload part");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("JWT payload is base64url");
    serde_json::from_slice(&bytes).expect("JWT payload is JSON")
}

/// The `detail` of a Label Studio error body (or the body itself if it has none).
pub fn detail(body: &Value) -> String {
    match body.get("detail") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => body.to_string(),
    }
}

async fn body_json(r: reqwest::Response) -> Value {
    let text = r.text().await.unwrap_or_default();
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

fn signal_group(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(format!("-{pid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
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
