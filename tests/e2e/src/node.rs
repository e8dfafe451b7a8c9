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

    /// Starts recording containerd's `/tasks/exit` events (`ctr events`), returning once the
    /// subscription is live: what a container's process really exited with, whatever the kubelet
    /// later reports (see [`TaskExits`]).
    pub async fn task_exits(&self) -> TaskExits {
        TaskExits::start(self).await
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

/// One container process's exit as containerd recorded it (a `/tasks/exit` event).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskExit {
    /// The container's ID (the part of a pod status' `containerID` after `containerd://`).
    pub container_id: String,
    /// Its exit status (128 + N for a signal N).
    pub exit_status: u32,
    /// When it exited, Unix seconds.
    pub exited_at: f64,
}

impl TaskExit {
    /// Parses one line of `ctr events`, `None` for any other event.
    ///
    /// The line is `<time> <namespace> /tasks/exit {json}`; containerd's JSON omits `exit_status`
    /// when it is 0 (protobuf `omitempty`), so a missing one is a clean exit.
    pub fn parse(line: &str) -> Option<TaskExit> {
        let json = line.split_once(" /tasks/exit ")?.1;
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        let at: jiff::Timestamp = v.get("exited_at")?.as_str()?.parse().ok()?;
        Some(TaskExit {
            container_id: v.get("container_id")?.as_str()?.to_string(),
            exit_status: v
                .get("exit_status")
                .map_or(Some(0), |s| s.as_u64().and_then(|n| u32::try_from(n).ok()))?,
            exited_at: at.as_millisecond() as f64 / 1000.0,
        })
    }
}

/// containerd's exit records, collected in the background by `ctr events` (stopped on drop).
///
/// Why not the pod status: on pod deletion, kubelet 1.20 removes a dead container of a deleted pod
/// as soon as its relist sees it exit, and when that wins the race with the status update (under
/// load; CI hit it once), the API never shows the real `terminated` state — only `lastState:
/// ContainerStatusUnknown`, exit 137, "The container could not be located when the pod was
/// deleted", although the process exited 0. containerd's event is the runtime's own record.
pub struct TaskExits {
    child: tokio::process::Child,
    exits: Arc<Mutex<Vec<TaskExit>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl TaskExits {
    async fn start(node: &Node) -> TaskExits {
        use tokio::io::AsyncBufReadExt;
        let ctr = |args: &[&str]| {
            let mut c = tokio::process::Command::new(node.env("CTR"));
            c.args(["--address", node.env("CONTAINERD_SOCKET")])
                .args(args)
                .stdin(Stdio::null())
                .kill_on_drop(true);
            c
        };
        let mut child = ctr(&["events"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ctr events");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // The subscription is live once it reports an event of our own making: the creation of a
        // containerd namespace with a unique name (made again until seen; removed afterwards).
        let prefix = unique_name("lstr-events-");
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let exits = Arc::new(Mutex::new(Vec::new()));
        let sink = exits.clone();
        let marker = format!("/namespaces/create {{\"name\":\"{prefix}");
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(&marker) {
                    let _ = seen_tx.send(());
                } else if let Some(exit) = TaskExit::parse(&line) {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(exit);
                }
            }
        });
        let mut made = Vec::new();
        let mut live = false;
        for attempt in 0..50 {
            let name = format!("{prefix}-{attempt}");
            let out = ctr(&["namespaces", "create", &name])
                .output()
                .await
                .expect("run ctr namespaces create");
            assert!(out.status.success(), "ctr namespaces create: {out:?}");
            made.push(name);
            let wait = std::time::Duration::from_millis(200);
            if tokio::time::timeout(wait, seen_rx.recv()).await.is_ok() {
                live = true;
                break;
            }
        }
        for name in &made {
            let _ = ctr(&["namespaces", "remove", name]).output().await;
        }
        assert!(live, "ctr events never reported our own namespace creation");
        TaskExits {
            child,
            exits,
            reader,
        }
    }

    /// The exit of container `container_id` (a pod status' `containerID`, with or without the
    /// `containerd://` prefix); panics with what was recorded if none comes within `timeout`.
    pub async fn wait(&self, container_id: &str, timeout: std::time::Duration) -> TaskExit {
        let id = container_id
            .strip_prefix("containerd://")
            .unwrap_or(container_id);
        let every = std::time::Duration::from_millis(100);
        let found = crate::wait::poll(timeout, every, || async {
            let exits = self.exits.lock().unwrap_or_else(|e| e.into_inner());
            exits.iter().find(|e| e.container_id == id).cloned()
        })
        .await;
        found.unwrap_or_else(|| {
            let exits = self.exits.lock().unwrap_or_else(|e| e.into_inner());
            panic!("containerd reported no exit of {id} within {timeout:?}; exits seen: {exits:?}")
        })
    }
}

impl Drop for TaskExits {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        self.reader.abort();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_exit_lines_of_ctr_events_parse_and_a_missing_status_is_zero() {
        // Lines as containerd 1.6's `ctr events` printed them here.
        let clean = r#"2026-11-30 11:37:37.583273662 +0000 UTC k8s.io /tasks/exit {"container_id":"98e8","id":"98e8","pid":26865,"exited_at":"2026-11-30T11:37:37.583251068Z"}"#;
        let killed = r#"2026-11-30 11:37:37.616853275 +0000 UTC k8s.io /tasks/exit {"container_id":"cbc5","id":"cbc5","pid":26835,"exit_status":137,"exited_at":"2026-11-30T11:37:37.616799595Z"}"#;
        let delete = r#"2026-11-30 11:36:29.620654064 +0000 UTC k8s.io /tasks/delete {"container_id":"b637","pid":26707,"exit_status":137,"exited_at":"2026-11-30T11:36:29.60604146Z"}"#;
        assert_eq!(
            TaskExit::parse(clean),
            Some(TaskExit {
                container_id: "98e8".into(),
                exit_status: 0,
                exited_at: 1_796_038_657.583,
            })
        );
        assert_eq!(TaskExit::parse(killed).map(|e| e.exit_status), Some(137));
        assert_eq!(TaskExit::parse(delete), None);
    }
}
