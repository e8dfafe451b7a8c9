//! A real one-node Kubernetes 1.20 cluster — etcd, kube-apiserver, controller-manager, scheduler,
//! containerd + runc and a kubelet — from `tests/support/node/node.sh` (see its README), with our
//! image (built by [`crate::image::build`] from the binary the tests run) and the busybox consumer
//! image imported.
//!
//! A node costs ~10 s to start and ~650 MB of RSS, so the tests of one test binary share one:
//! [`Node::shared`] starts it for the first test that asks and stops it when the last holder drops
//! its `Arc` (tests running in parallel overlap and share it; tests run one by one each start their
//! own). Tests stay apart through their own namespace ([`Node::namespace`], deleted on drop) and
//! their own ports (pods use `hostNetwork: true`, see the README). [`Node::start`] gives a private
//! node for tests of the harness itself.
//!
//! The node is tied to the test process (`LSTR_NODE_OWNER_PID`): if the process dies without
//! dropping it, the next `node.sh start` (or `node.sh reap`) stops it. `LSTR_KEEP_NODE_DIR=1` keeps
//! the node's directory (its logs) after the stop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, Weak};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::image::{self, Image};
use crate::kube_api::unique_name;
use crate::{cache_dir, init_crypto, support_dir, tail};

/// The node the tests of this process share (see [`Node::shared`]).
static SHARED: Mutex<Weak<Node>> = Mutex::new(Weak::new());

/// A running node.
pub struct Node {
    /// Holds the node dir (`n/`), the image tarball and start.log; removed after `stop`.
    root: Option<tempfile::TempDir>,
    dir: PathBuf,
    env: BTreeMap<String, String>,
    image: Image,
    stopped: bool,
}

impl Node {
    /// The node shared by the tests of this process: the running one, or a new one. Keep the `Arc`
    /// for the whole test; the node stops when the last one is dropped.
    pub async fn shared() -> Arc<Node> {
        tokio::task::spawn_blocking(|| {
            let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(node) = slot.upgrade() {
                return node;
            }
            let node = Arc::new(Node::start());
            *slot = Arc::downgrade(&node);
            node
        })
        .await
        .expect("node start panicked")
    }

    /// Starts a node of one's own (provisioning first if needed; ~10 s warm), builds our image and
    /// imports it and busybox. Panics with node.sh's output if it fails.
    pub fn start() -> Node {
        let t0 = std::time::Instant::now();
        let root = tempfile::Builder::new()
            .prefix("lstr-node-")
            .tempdir()
            .expect("create the node's temp dir");
        // node.sh wants an empty dir; its containerd socket path must stay under 100 characters.
        let dir = root.path().join("n");
        let start_log = root.path().join("start.log");
        let out = Command::new("bash")
            .arg(support_dir("node").join("node.sh"))
            .arg("start")
            .arg(&dir)
            .env("LSTR_CACHE", cache_dir())
            .env("LSTR_NODE_OWNER_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&start_log).expect("create start.log"))
            .output()
            .expect("run node.sh start");
        let log = std::fs::read_to_string(&start_log).unwrap_or_default();
        assert!(
            out.status.success(),
            "node.sh start {} failed ({}):\n{}",
            dir.display(),
            out.status,
            tail(&log, 60)
        );
        let started = t0.elapsed();
        let env = parse_env(&std::fs::read_to_string(dir.join("node.env")).expect("node.env"));
        let image = image::build(root.path());
        let built = t0.elapsed();
        let node = Node {
            root: Some(root),
            dir,
            env,
            image,
            stopped: false,
        };
        let busybox = PathBuf::from(node.env("BUSYBOX_TAR"));
        let tar = node.image.tar.clone();
        node.import(&[&tar, &busybox]);
        eprintln!(
            "node: {} up in {:.1} s, image built in {:.1} s, images imported in {:.1} s ({})",
            node.dir.display(),
            started.as_secs_f64(),
            (built - started).as_secs_f64(),
            (t0.elapsed() - built).as_secs_f64(),
            log.lines()
                .last()
                .unwrap_or_default()
                .trim_start_matches("[node] ")
        );
        node
    }

    /// A value of node.env (`KUBECONFIG`, `CONTAINERD_SOCKET`, `KUBELET_ROOT`, …; see the README).
    pub fn env(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("node.env has no {key}"))
    }

    /// The node's directory (node.sh's DIR).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Our image, imported into the node.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// The busybox image (imported): `sh`, `wget`, `cat`, `stat`, `httpd` … for consumers.
    pub fn busybox(&self) -> &str {
        self.env("BUSYBOX_IMAGE")
    }

    /// The admin kubeconfig (`system:masters`, certificates inlined).
    pub fn kubeconfig(&self) -> PathBuf {
        self.env("KUBECONFIG").into()
    }

    /// Imports image tarballs into the node's containerd (`node.sh import`; importing an image
    /// again is harmless).
    pub fn import(&self, tars: &[&Path]) {
        let out = self.node_sh("import", tars.iter().map(|p| p.as_os_str()));
        assert!(
            out.status.success(),
            "node.sh import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An admin `kube::Client` (one per test: a client belongs to the runtime that made it).
    pub async fn client(&self) -> Client {
        init_crypto();
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig()).expect("read the kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kube config");
        Client::try_from(config).expect("kube client")
    }

    /// Runs kubectl as admin; its cache and HOME live in the node's temp dir.
    pub async fn kubectl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let home = self.dir.with_file_name("kubectl-home");
        let bin = Path::new(self.env("KUBECTL"));
        crate::tools::kubectl(bin, &self.kubeconfig(), &home, args).await
    }

    /// Runs kubectl and returns its stdout; panics with its stderr if it fails.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates a namespace `<prefix>-<random>` and waits for its `default` ServiceAccount (pods are
    /// refused until the controller made it). The namespace is deleted when the guard drops.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        let name = unique_name(prefix);
        self.kubectl_ok(&["create", "namespace", &name]).await;
        let found = crate::wait::wait_for(std::time::Duration::from_secs(30), || async {
            let get = ["-n", &name, "get", "serviceaccount/default"];
            self.kubectl(get).await.status.success()
        })
        .await;
        assert!(
            found.is_some(),
            "no default ServiceAccount in {name} after 30 s"
        );
        TestNamespace {
            name,
            kubectl: self.env("KUBECTL").into(),
            kubeconfig: self.kubeconfig(),
        }
    }

    /// PID (in the host's PID namespace) of the main process of a running container, from its
    /// `containerID` in the pod status (`containerd://<id>`), through containerd's task list.
    pub fn container_pid(&self, container_id: &str) -> u32 {
        let id = container_id
            .strip_prefix("containerd://")
            .unwrap_or(container_id);
        let out = Command::new(self.env("CTR"))
            .args(["--address", self.env("CONTAINERD_SOCKET"), "-n"])
            .arg(self.env("CONTAINERD_NAMESPACE"))
            .args(["tasks", "ls"])
            .output()
            .expect("run ctr tasks ls");
        let list = String::from_utf8_lossy(&out.stdout);
        list.lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(id)).then(|| f.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no running task {id} in containerd:\n{list}"))
    }

    /// The kubelet's effective configuration (`/configz` through the apiserver's node proxy).
    pub async fn kubelet_config(&self) -> serde_json::Value {
        let path = format!("/api/v1/nodes/{}/proxy/configz", self.env("NODE_NAME"));
        let raw = self.kubectl_ok(&["get", "--raw", &path]).await;
        let v: serde_json::Value = serde_json::from_str(&raw).expect("configz is JSON");
        v["kubeletconfig"].clone()
    }

    /// `node.sh status`: one line per component with its PID and RSS.
    pub fn status(&self) -> String {
        let out = self.node_sh("status", std::iter::empty::<&std::ffi::OsStr>());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Total RSS of the node's components in KiB (from [`Self::status`]).
    pub fn rss_kib(&self) -> u64 {
        self.status()
            .lines()
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    }

    /// The last `lines` lines of a component's log (`kubelet`, `containerd`, `kube-apiserver`, …).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let path = Path::new(self.env("LOG_DIR")).join(format!("{component}.log"));
        tail(&std::fs::read_to_string(path).unwrap_or_default(), lines)
    }

    /// What `kubectl get/describe` and the events say about namespace `ns` (for failure messages).
    pub async fn diagnose(&self, ns: &str) -> String {
        let mut s = String::new();
        for args in [
            vec!["-n", ns, "get", "all", "-o", "wide"],
            vec!["-n", ns, "describe", "pods"],
            vec!["-n", ns, "get", "events", "--sort-by=.lastTimestamp"],
        ] {
            let out = self.kubectl(&args).await;
            s += &format!(
                "--- kubectl {} ---\n{}{}\n",
                args.join(" "),
                tail(&String::from_utf8_lossy(&out.stdout), 80),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let names = self.kubectl(["-n", ns, "get", "pods", "-o", "name"]).await;
        for pod in String::from_utf8_lossy(&names.stdout).lines() {
            let args = [
                "-n",
                ns,
                "logs",
                pod,
                "--all-containers",
                "--prefix",
                "--tail=20",
            ];
            let out = self.kubectl(args).await;
            s += &format!(
                "--- kubectl logs {pod} ---\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        s + &format!(
            "--- kubelet.log (tail) ---\n{}",
            self.log_tail("kubelet", 30)
        )
    }

    /// Stops every component, pod and mount (`node.sh stop`, idempotent); panics if it fails.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let out = self.node_sh("stop", std::iter::empty::<&std::ffi::OsStr>());
        assert!(
            out.status.success(),
            "node.sh stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn node_sh<I, S>(&self, command: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Command::new("bash")
            .arg(support_dir("node").join("node.sh"))
            .arg(command)
            .arg(&self.dir)
            .args(args)
            .env("LSTR_CACHE", cache_dir())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run node.sh {command}: {e}"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "node {}: kubelet log tail:\n{}",
                self.dir.display(),
                self.log_tail("kubelet", 30)
            );
        }
        if !self.stopped {
            self.stopped = true;
            let out = self.node_sh("stop", std::iter::empty::<&std::ffi::OsStr>());
            if !out.status.success() {
                eprintln!(
                    "node.sh stop {} failed: {}",
                    self.dir.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        if std::env::var_os("LSTR_KEEP_NODE_DIR").is_some_and(|v| v == "1") {
            if let Some(root) = self.root.take() {
                eprintln!("node: keeping {}", root.keep().display());
            }
        }
    }
}

/// A namespace of one test; deleted (without waiting) when dropped, which stops its pods.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

impl std::ops::Deref for TestNamespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(["--request-timeout=10s", "delete", "namespace", &self.name])
            .arg("--wait=false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `KEY=VALUE` lines of node.env (the first line is a comment).
fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
