//! A real kube-apiserver (v1.20.2) + etcd (3.4) per test, envtest-style: no kubelet, no controllers.
//!
//! Binaries come from `tests/support/kube/provision.sh` (built once per machine, cached under
//! `cache_dir()/kube/bin`). Each [`ApiServer`] gets its own temp dir with an openssl-made CA, a serving
//! cert for 127.0.0.1/localhost, an admin client cert (`O=system:masters`), a static token file holding a
//! least-privilege user (random token per instance, no groups beyond `system:authenticated`), service
//! account signing keys, an etcd on free ports with its data dir on /dev/shm, and a kube-apiserver on a
//! free 127.0.0.1 port with `--authorization-mode=RBAC`. Everything is killed by PID and removed on drop.
//!
//! Limits (no controllers): namespaces stay Terminating after delete, no default ServiceAccount or token
//! Secrets, no garbage collection, pods stay Pending. API level is 1.20 (no CEL, no strict field
//! validation, no streaming lists: do not enable kube's `streaming_lists()`).
//!
//! ```text
//! let server = ApiServer::start().await;                 // ~6 s warm; first run on a machine builds (~9 min)
//! let ns = server.create_namespace("my-test").await;
//! let admin = server.admin_client().await;               // system:masters
//! // grant the least-privilege user (server.user_name()) a Role/RoleBinding, then:
//! let kubeconfig = server.write_user_kubeconfig(&ns);    // KUBECONFIG for a child process
//! let out = server.kubectl_as_user(["auth", "can-i", "get", "secrets/x", "-n", &ns]).await;
//! server.stop_apiserver(); /* ... */ server.start_apiserver().await; // same port, same etcd
//! ```
//! A test process killed without unwinding leaves its processes behind; the next `start()` on the
//! machine reaps them (see `reap_orphans`).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::kube_api::unique_name;
use crate::pki::{self, EC_KEY};
use crate::{free_port, init_crypto, process, tail};

/// Name of the least-privilege token-file user (in no group but `system:authenticated`).
pub const USER_NAME: &str = "refresher";
/// Name of the admin identity (client cert CN; its O is `system:masters`).
pub const ADMIN_NAME: &str = "lstr-admin";

const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs `provision.sh` once per test process (a warm run is a stamp check) and returns the bin dir.
pub fn provision() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let hint = "run `bash tests/support/kube/provision.sh` by hand (a cold build takes ~9 min)";
        let bin = PathBuf::from(crate::provision("kube", &[], hint).trim());
        assert!(
            bin.join("kube-apiserver").is_file(),
            "no kube-apiserver in {}",
            bin.display()
        );
        bin
    })
}

/// Which identity a kubeconfig / client / kubectl call uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Client cert in `system:masters`.
    Admin,
    /// The least-privilege token user [`USER_NAME`].
    User,
}

/// One etcd + kube-apiserver pair. Dropping it kills both and removes their files.
pub struct ApiServer {
    dir: tempfile::TempDir,
    etcd_data: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    etcd_client_port: u16,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    user_token: String,
    admin_token: String,
    admin_client: Option<Client>,
}

impl ApiServer {
    /// Provisions binaries if needed, then starts etcd and kube-apiserver and waits for `/readyz`.
    /// Panics with the tails of both logs if they do not come up.
    pub async fn start() -> ApiServer {
        init_crypto();
        let bin = provision().to_path_buf();
        reap_orphans(&bin);
        let dir = tempfile::Builder::new()
            .prefix("lstr-kube-")
            .tempdir()
            .expect("temp dir");
        let shm = Path::new("/dev/shm");
        let etcd_data = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("lstr-etcd-")
                .tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("lstr-etcd-").tempdir()
        }
        .expect("etcd data dir");
        let user_token = random_token();
        let admin_token = random_token();
        make_pki(dir.path());
        fs::write(
            dir.path().join("tokens.csv"),
            format!(
                "{admin_token},{ADMIN_NAME}-token,{ADMIN_NAME}-token-uid,\"system:masters\"\n\
                 {user_token},{USER_NAME},{USER_NAME}-uid\n"
            ),
        )
        .unwrap();

        let mut server = ApiServer {
            dir,
            etcd_data,
            bin,
            port: 0,
            etcd_client_port: 0,
            etcd: None,
            apiserver: None,
            user_token,
            admin_token,
            admin_client: None,
        };
        // Free ports can be taken by a parallel test between probing and binding: retry a few times.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match server.try_start_etcd().await {
                Ok(()) => break,
                Err(e) if attempt < 4 => {
                    eprintln!("[kube harness] etcd start failed ({e}), retrying")
                }
                Err(e) => panic!("etcd did not start: {e}\n{}", server.log_tails()),
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = free_port();
            server.write_kubeconfig_files();
            server.admin_client = None;
            match server.try_start_apiserver().await {
                Ok(()) => break,
                Err(e) if attempt < 3 && e.contains("exited") => {
                    eprintln!("[kube harness] kube-apiserver start failed ({e}), retrying on another port")
                }
                Err(e) => panic!(
                    "kube-apiserver did not become ready: {e}\n{}",
                    server.log_tails()
                ),
            }
        }
        server.wait_for_system_namespaces().await;
        server
    }

    /// `default`, `kube-system` and `kube-public` are created by an in-process controller shortly
    /// *after* `/readyz` turns ok on a fresh etcd; tests may rely on them, so wait.
    async fn wait_for_system_namespaces(&self) {
        let api: Api<Namespace> = Api::all(self.admin_client().await);
        let deadline = Instant::now() + Duration::from_secs(60);
        for name in ["default", "kube-system", "kube-public"] {
            loop {
                match api.get_opt(name).await {
                    Ok(Some(_)) => break,
                    Ok(None) | Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    other => panic!(
                        "namespace {name} did not appear: {other:?}\n{}",
                        self.log_tails()
                    ),
                }
            }
        }
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The apiserver's port on 127.0.0.1 (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The instance's temp dir (certs, kubeconfigs, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// PEM of the cluster CA (for clients built by hand).
    pub fn ca_pem_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The least-privilege user's name (RBAC subject `kind: User`).
    pub fn user_name(&self) -> &'static str {
        USER_NAME
    }

    /// The least-privilege user's bearer token (random per instance).
    pub fn user_token(&self) -> &str {
        &self.user_token
    }

    /// A bearer token in `system:masters` (alternative to the admin client cert).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Admin kubeconfig (client cert, namespace `default`), usable via `KUBECONFIG` by a child process.
    pub fn admin_kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// Least-privilege user kubeconfig (namespace `default`).
    pub fn user_kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("user.kubeconfig")
    }

    /// Writes (or rewrites) a kubeconfig for the least-privilege user whose context namespace is
    /// `namespace`; returns its path (`user-<namespace>.kubeconfig` in the instance dir).
    pub fn write_user_kubeconfig(&self, namespace: &str) -> PathBuf {
        self.write_kubeconfig(Identity::User, namespace)
    }

    /// Writes a kubeconfig for `identity` with context namespace `namespace`; returns its path.
    pub fn write_kubeconfig(&self, identity: Identity, namespace: &str) -> PathBuf {
        let name = match identity {
            Identity::Admin => format!("admin-{namespace}.kubeconfig"),
            Identity::User => format!("user-{namespace}.kubeconfig"),
        };
        let path = self.dir.path().join(name);
        write_atomic(&path, &self.kubeconfig_json(identity, namespace));
        path
    }

    /// The kubeconfig document (JSON, which is valid YAML) for `identity` and `namespace`.
    pub fn kubeconfig_json(&self, identity: Identity, namespace: &str) -> String {
        let user = match identity {
            Identity::Admin => serde_json::json!({
                "name": ADMIN_NAME,
                "user": { "client-certificate-data": self.file_b64("admin.crt"), "client-key-data": self.file_b64("admin.key") },
            }),
            Identity::User => serde_json::json!({
                "name": USER_NAME,
                "user": { "token": self.user_token },
            }),
        };
        self.kubeconfig_for(user, namespace)
    }

    /// Writes a kubeconfig presenting the bearer `token` (e.g. a ServiceAccount's, from the
    /// TokenRequest API) with context namespace `namespace`, as `<name>.kubeconfig`; returns its path.
    pub fn write_token_kubeconfig(&self, name: &str, token: &str, namespace: &str) -> PathBuf {
        let user = serde_json::json!({ "name": name, "user": { "token": token } });
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        write_atomic(&path, &self.kubeconfig_for(user, namespace));
        path
    }

    /// Base64 of a file in the instance dir (certificates and keys inlined into kubeconfigs).
    fn file_b64(&self, file: &str) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(fs::read(self.dir.path().join(file)).unwrap())
    }

    /// A kubeconfig for this server with the kubeconfig `user` entry `user`.
    fn kubeconfig_for(&self, user: serde_json::Value, namespace: &str) -> String {
        let user_name = user["name"].clone();
        serde_json::to_string_pretty(&serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "lstr-test",
                "cluster": { "server": self.url(), "certificate-authority-data": self.file_b64("ca.crt") },
            }],
            "users": [user],
            "contexts": [{
                "name": "lstr-test",
                "context": { "cluster": "lstr-test", "user": user_name, "namespace": namespace },
            }],
            "current-context": "lstr-test",
        }))
        .unwrap()
    }

    /// A `kube::Client` for `identity` whose default namespace is `namespace`.
    pub async fn client_for(&self, identity: Identity, namespace: &str) -> Client {
        init_crypto();
        let kubeconfig = Kubeconfig::from_yaml(&self.kubeconfig_json(identity, namespace))
            .expect("parse kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kube config");
        Client::try_from(config).expect("kube client")
    }

    /// Admin (`system:masters`) client, default namespace `default`.
    pub async fn admin_client(&self) -> Client {
        match &self.admin_client {
            Some(c) => c.clone(),
            None => self.client_for(Identity::Admin, "default").await,
        }
    }

    /// Least-privilege user client with default namespace `namespace`.
    pub async fn user_client(&self, namespace: &str) -> Client {
        self.client_for(Identity::User, namespace).await
    }

    /// A client that trusts the cluster CA and presents `token` (which the server may not know).
    pub fn client_with_token(&self, token: &str) -> Client {
        init_crypto();
        let mut config = Config::new(self.url().parse().unwrap());
        config.root_cert = Some(vec![pki::pem_to_der(
            &fs::read_to_string(self.ca_pem_path()).unwrap(),
        )]);
        config.auth_info.token = Some(token.to_string().into());
        Client::try_from(config).expect("kube client")
    }

    /// Creates a namespace `<prefix>-<random>` (prefix sanitised to a DNS label) and returns its name.
    pub async fn create_namespace(&self, prefix: &str) -> String {
        let name = unique_name(prefix);
        let api: Api<Namespace> = Api::all(self.admin_client().await);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        name
    }

    /// Kills kube-apiserver (SIGKILL, like a crash) and waits for it; etcd keeps running.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Connections of the cached admin client point at the dead process.
        self.admin_client = None;
    }

    /// Starts kube-apiserver again on the same port against the same etcd and waits for `/readyz`.
    pub async fn start_apiserver(&mut self) {
        assert!(
            self.apiserver.is_none(),
            "kube-apiserver is already running"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The port was ours; SO_REUSEADDR lets the new listener bind at once, but retry briefly in
            // case the old socket lingers.
            match self.try_start_apiserver().await {
                Ok(()) => return,
                Err(e) if e.contains("exited") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                Err(e) => panic!("kube-apiserver did not restart: {e}\n{}", self.log_tails()),
            }
        }
    }

    /// Whether kube-apiserver is currently running (not stopped by [`Self::stop_apiserver`]).
    pub fn apiserver_running(&self) -> bool {
        self.apiserver.is_some()
    }

    /// Path of `kubectl`: `$LSTR_KUBECTL`, `/usr/bin/kubectl`, the cached one, or `kubectl` on PATH.
    pub fn kubectl_path(&self) -> PathBuf {
        if let Some(p) = std::env::var_os("LSTR_KUBECTL") {
            return p.into();
        }
        for p in [PathBuf::from("/usr/bin/kubectl"), self.bin.join("kubectl")] {
            if p.is_file() {
                return p;
            }
        }
        "kubectl".into()
    }

    /// Runs kubectl as admin against this server (`KUBECONFIG` = the admin kubeconfig).
    pub async fn kubectl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.kubectl_as(Identity::Admin, args).await
    }

    /// Runs kubectl as the least-privilege user (e.g. `auth can-i get secrets/x -n ns`).
    pub async fn kubectl_as_user<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.kubectl_as(Identity::User, args).await
    }

    /// Runs kubectl as `identity`. Its discovery cache lives in the instance dir.
    pub async fn kubectl_as<I, S>(&self, identity: Identity, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let kubeconfig = match identity {
            Identity::Admin => self.admin_kubeconfig_path(),
            Identity::User => self.user_kubeconfig_path(),
        };
        self.kubectl_with(&kubeconfig, args).await
    }

    /// Runs kubectl with the kubeconfig at `kubeconfig` (e.g. from [`Self::write_token_kubeconfig`]).
    pub async fn kubectl_with<I, S>(&self, kubeconfig: &Path, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        crate::tools::kubectl(&self.kubectl_path(), kubeconfig, self.dir.path(), args).await
    }

    /// Last lines of etcd's and kube-apiserver's logs (for failure messages).
    pub fn log_tails(&self) -> String {
        format!(
            "--- etcd.log (tail) ---\n{}\n--- kube-apiserver.log (tail) ---\n{}",
            tail_file(&self.dir.path().join("etcd.log"), 40),
            tail_file(&self.dir.path().join("kube-apiserver.log"), 60)
        )
    }

    /// Resident set size in KiB of (kube-apiserver, etcd), read from /proc.
    pub fn rss_kib(&self) -> (u64, u64) {
        let rss = |c: &Option<Child>| {
            c.as_ref()
                .and_then(|c| process::rss_kib(c.id()))
                .unwrap_or(0)
        };
        (rss(&self.apiserver), rss(&self.etcd))
    }

    // ------------------------------------------------------------------ internals

    /// Records who owns this instance's processes, for [`reap_orphans`] in later runs should this test
    /// process die without running `Drop` (SIGKILL, abort).
    fn write_owner_file(&self) {
        let pid = std::process::id();
        let mut text = format!(
            "{pid} {}\n{}\n",
            process::start_time(pid).unwrap_or(0),
            self.etcd_data.path().display()
        );
        for child in [&self.etcd, &self.apiserver].into_iter().flatten() {
            text.push_str(&format!("{}\n", child.id()));
        }
        write_atomic(&self.dir.path().join(OWNER_FILE), &text);
    }

    fn write_kubeconfig_files(&self) {
        write_atomic(
            &self.admin_kubeconfig_path(),
            &self.kubeconfig_json(Identity::Admin, "default"),
        );
        write_atomic(
            &self.user_kubeconfig_path(),
            &self.kubeconfig_json(Identity::User, "default"),
        );
    }

    async fn try_start_etcd(&mut self) -> Result<(), String> {
        if let Some(mut old) = self.etcd.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        // A failed attempt may have left a member dir behind.
        for entry in fs::read_dir(self.etcd_data.path()).unwrap().flatten() {
            let _ = fs::remove_dir_all(entry.path());
        }
        let client = free_port();
        let peer = free_port();
        let log = File::create(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new(self.bin.join("etcd"))
            .args([
                "--name=lstr",
                &format!("--data-dir={}", self.etcd_data.path().display()),
                &format!("--listen-client-urls=http://127.0.0.1:{client}"),
                &format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                &format!("--initial-cluster=lstr=http://127.0.0.1:{peer}"),
                "--initial-cluster-state=new",
                "--logger=zap",
                "--log-level=warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn etcd: {e}"))?;
        self.etcd = Some(child);
        self.write_owner_file();
        self.etcd_client_port = client;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.etcd.as_mut().unwrap().try_wait().unwrap() {
                self.etcd = None;
                return Err(format!("etcd exited: {status}"));
            }
            if etcd_healthy(client).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("etcd /health timed out".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn try_start_apiserver(&mut self) -> Result<(), String> {
        let d = self.dir.path();
        let p = |f: &str| d.join(f).display().to_string();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("kube-apiserver.log"))
            .unwrap();
        let issuer = "https://kubernetes.default.svc.cluster.local";
        let child = Command::new(self.bin.join("kube-apiserver"))
            .args([
                format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_client_port),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={}", self.port),
                "--insecure-port=0".into(),
                format!("--tls-cert-file={}", p("server.crt")),
                format!("--tls-private-key-file={}", p("server.key")),
                format!("--client-ca-file={}", p("ca.crt")),
                format!("--token-auth-file={}", p("tokens.csv")),
                "--authorization-mode=RBAC".into(),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                format!("--service-account-issuer={issuer}"),
                format!("--api-audiences={issuer}"),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--disable-admission-plugins=ServiceAccount".into(),
                "--allow-privileged=false".into(),
                "--profiling=false".into(),
                "--v=1".into(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn kube-apiserver: {e}"))?;
        self.apiserver = Some(child);
        self.write_owner_file();
        let client = self.client_for(Identity::Admin, "default").await;
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            if let Some(status) = self.apiserver.as_mut().unwrap().try_wait().unwrap() {
                self.apiserver = None;
                return Err(format!("kube-apiserver exited: {status}"));
            }
            let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
            match tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await {
                Ok(Ok(body)) if body.trim() == "ok" => break,
                Ok(Ok(body)) => last = body,
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "readyz request timed out".into(),
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "/readyz not ok after {READY_TIMEOUT:?}; last: {last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.admin_client = Some(client);
        Ok(())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for child in [self.apiserver.take(), self.etcd.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        // TempDirs (instance dir, /dev/shm etcd data) are removed when the fields drop.
    }
}

// ---------------------------------------------------------------------- helpers

const OWNER_FILE: &str = "owner.pids";

/// Kills etcd/kube-apiserver processes and removes dirs left behind by test processes that died without
/// dropping their [`ApiServer`] (their owner PID is gone or was reused). Only processes running one of
/// our cached binaries are killed.
fn reap_orphans(bin: &Path) {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("lstr-kube-")
        {
            continue;
        }
        let dir = entry.path();
        let Ok(text) = fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        let mut lines = text.lines();
        let owner: Vec<u64> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let [owner_pid, owner_start] = owner[..] else {
            continue;
        };
        if process::start_time(owner_pid as u32) == Some(owner_start) {
            continue; // still owned by a live process
        }
        let etcd_data = lines.next().map(PathBuf::from);
        for pid in lines.filter_map(|l| l.trim().parse::<u32>().ok()) {
            let exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
            if exe.is_some_and(|e| e.starts_with(bin)) {
                eprintln!(
                    "[kube harness] killing orphaned {} (pid {pid})",
                    dir.display()
                );
                process::kill(pid, "9");
            }
        }
        let ours = |d: &PathBuf| {
            d.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("lstr-etcd-"))
        };
        if let Some(d) = etcd_data.filter(ours) {
            let _ = fs::remove_dir_all(d);
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

fn random_token() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(40)
        .collect()
}

fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).unwrap();
    fs::rename(&tmp, path).unwrap();
}

async fn etcd_healthy(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        Some(text.starts_with("HTTP/1.0 200") && text.contains("\"health\":\"true\""))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), fut).await,
        Ok(Some(true))
    )
}

/// The last `lines` lines of the file at `path` (of its last 64 KiB).
fn tail_file(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    tail(&String::from_utf8_lossy(&buf), lines)
}

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[v3_client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// CA, serving cert (SAN 127.0.0.1/localhost), admin client cert (O=system:masters), SA key pair.
/// All keys are EC P-256 (instant to generate; rustls and Go both accept them).
fn make_pki(dir: &Path) {
    fs::write(dir.join("openssl.cnf"), OPENSSL_CNF).unwrap();
    let ec = EC_KEY;
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-config",
            "openssl.cnf",
            "-extensions",
            "v3_ca",
        ],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "3650",
            "-subj",
            "/CN=lstr-test-ca",
        ],
    );
    for (name, subj, ext) in [
        ("server", "/CN=kube-apiserver".to_string(), "v3_server"),
        (
            "admin",
            format!("/O=system:masters/CN={ADMIN_NAME}"),
            "v3_client",
        ),
    ] {
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        openssl(
            dir,
            &["req", "-new", "-config", "openssl.cnf"],
            &ec,
            &["-keyout", &key, "-out", &csr, "-subj", &subj],
        );
        let serial = format!("0x{:x}", fastrand::u64(1..u64::MAX));
        openssl(
            dir,
            &[
                "x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key",
            ],
            &[],
            &[
                "-set_serial",
                &serial,
                "-days",
                "3650",
                "-extfile",
                "openssl.cnf",
                "-extensions",
                ext,
                "-out",
                &crt,
            ],
        );
    }
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
        &[],
        &["-out", "sa.key"],
    );
    openssl(
        dir,
        &["pkey", "-in", "sa.key", "-pubout"],
        &[],
        &["-out", "sa.pub"],
    );
}

fn openssl(dir: &Path, a: &[&str], b: &[&str], c: &[&str]) {
    pki::openssl(dir, [a, b, c].concat());
}
