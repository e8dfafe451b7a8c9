//! Pods on the test node ([`crate::node`]): a test's [`Scope`] (its namespace on the shared node and
//! a client), the shipped manifests read the way Kubernetes reads them and adapted to the node
//! ([`Scope::manifest`], [`adapt_deploy`]), the busybox [`CONSUMER`] that reads the token on every
//! request and reports [`Sample`]s, and what tests observe of pods: readiness, logs, the terminated
//! states of a deleted pod, and a container's effective security settings from /proc.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, Secret};
use kube::api::{
    Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use kube::Client;
use serde_json::{json, Value};

use crate::clock::boot_seconds;
use crate::kube_api::{create_secret, data_of};
use crate::node::{Node, TestNamespace};
use crate::{process, repo_root};

/// A test's share of the node: the shared node, an admin client and a namespace of its own
/// (deleted when the scope drops).
pub struct Scope {
    /// The node (kept alive as long as the scope).
    pub node: Arc<Node>,
    /// An admin client made in the test's runtime.
    pub client: Client,
    /// The test's namespace.
    pub ns: TestNamespace,
}

impl Scope {
    /// Joins (or starts) the shared node and creates a namespace `<prefix>-<random>`.
    pub async fn new(prefix: &str) -> Scope {
        let node = Node::shared().await;
        let client = node.client().await;
        let ns = node.namespace(prefix).await;
        Scope { node, client, ns }
    }

    /// The namespace's name.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Pods API of the namespace.
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    /// Creates Secret `name` with `data` (string pairs) in the namespace.
    pub async fn create_secret(&self, name: &str, data: &[(&str, &str)]) {
        create_secret(&self.client, self.ns(), name, data).await;
    }

    /// The objects of `deploy/<file>` as Kubernetes reads them: kubectl parses the YAML (YAML 1.1
    /// octal modes, multi-document streams) and prints JSON, nothing is sent.
    pub async fn manifest(&self, file: &str) -> Vec<Value> {
        let path = repo_root().join("deploy").join(file);
        let path = path.to_str().expect("UTF-8 path");
        let out = self
            .node
            .kubectl_ok(&["create", "--dry-run=client", "-o", "json", "-f", path])
            .await;
        // One JSON object per document, one after another.
        serde_json::Deserializer::from_str(&out)
            .into_iter::<Value>()
            .map(|v| v.expect("kubectl printed JSON"))
            .flat_map(|v| match v["kind"].as_str() {
                Some("List") => v["items"].as_array().expect("List items").clone(),
                _ => vec![v],
            })
            .collect()
    }

    /// `kubectl apply` of `objects` (as one List) in the namespace; panics with kubectl's error.
    pub async fn apply(&self, objects: &[Value]) {
        let file = tempfile::Builder::new()
            .prefix("lstr-apply-")
            .suffix(".json")
            .tempfile()
            .expect("temp file");
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        std::fs::write(file.path(), serde_json::to_vec(&list).unwrap()).unwrap();
        let path = file.path().to_str().unwrap();
        self.node
            .kubectl_ok(&["-n", self.ns(), "apply", "-f", path])
            .await;
    }

    /// Waits until `count` pods match `selector` and all are Running and Ready; returns them.
    /// Panics after `timeout` with what the cluster says about the namespace.
    pub async fn wait_ready(&self, selector: &str, count: usize, timeout: Duration) -> Vec<Pod> {
        let pods = self.pods();
        let lp = ListParams::default().labels(selector);
        let ready = crate::wait::poll(timeout, Duration::from_millis(500), || async {
            let list = pods.list(&lp).await.ok()?.items;
            (list.len() == count && list.iter().all(is_ready)).then_some(list)
        })
        .await;
        match ready {
            Some(list) => list,
            None => panic!(
                "{count} pod(s) {selector} not Ready within {timeout:?}\n{}",
                self.node.diagnose(self.ns()).await
            ),
        }
    }

    /// The pod `name` now.
    pub async fn pod(&self, name: &str) -> Pod {
        self.pods()
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get pod {name}: {e}"))
    }

    /// Follows the log of `container` in pod `name` from its start, in the background.
    pub fn follow(&self, pod: &str, container: &str) -> Logs {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (api, pod, sink) = (self.pods(), pod.to_string(), lines.clone());
        let lp = LogParams {
            container: Some(container.into()),
            follow: true,
            ..Default::default()
        };
        let task = tokio::spawn(async move {
            let Ok(stream) = api.log_stream(&pod, &lp).await else {
                return;
            };
            let mut stream = stream.lines();
            while let Some(Ok(line)) = stream.next().await {
                sink.lock().unwrap().push(line);
            }
        });
        Logs { lines, task }
    }

    /// Deletes pod `name` with its grace period and watches it until the object is gone; returns the
    /// request's Unix time and every version of the pod seen (the kubelet reports the containers'
    /// terminated states before the object goes). With `owner`, the pod's Deployment is scaled to zero
    /// instead, which has its ReplicaSet delete the pod the same way but start no replacement (a
    /// hostNetwork replacement would take over the same ports while the pod still terminates).
    pub async fn delete_and_watch(
        &self,
        name: &str,
        owner: Option<&str>,
        timeout: Duration,
    ) -> (f64, Vec<Pod>) {
        let pods = self.pods();
        let start = pods.get(name).await.expect("the pod exists");
        let rv = start.metadata.resource_version.clone().unwrap_or_default();
        let wp = WatchParams::default().fields(&format!("metadata.name={name}"));
        let mut stream = pods.watch(&wp, &rv).await.expect("watch the pod").boxed();
        let requested = crate::clock::unix_now();
        match owner {
            Some(deployment) => {
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), self.ns());
                let zero = json!({"spec": {"replicas": 0}});
                api.patch(deployment, &PatchParams::default(), &Patch::Merge(&zero))
                    .await
                    .expect("scale the Deployment to zero");
            }
            None => {
                pods.delete(name, &DeleteParams::default())
                    .await
                    .expect("delete the pod");
            }
        }
        let mut seen = vec![start];
        let collect = async {
            while let Some(ev) = stream.try_next().await.expect("watch stream") {
                match ev {
                    WatchEvent::Added(p) | WatchEvent::Modified(p) => seen.push(p),
                    WatchEvent::Deleted(p) => {
                        seen.push(p);
                        return true;
                    }
                    WatchEvent::Bookmark(_) => {}
                    WatchEvent::Error(e) => panic!("watching pod {name}: {e:?}"),
                }
            }
            false
        };
        let gone = tokio::time::timeout(timeout, collect).await;
        assert!(
            matches!(gone, Ok(true)),
            "pod {name} not gone within {timeout:?}"
        );
        (requested, seen)
    }

    /// Records, in the background, every distinct value `key` of Secret `name` takes, with when the
    /// API server's watch delivered it (see [`Changes`]).
    pub fn watch_secret_key(&self, name: &str, key: &str) -> Changes {
        let entries = Arc::new(Mutex::new(Vec::new()));
        let api: Api<Secret> = Api::namespaced(self.client.clone(), self.ns());
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let (key, sink) = (key.to_string(), entries.clone());
        let task = tokio::spawn(async move {
            let mut events = watcher(api, config).boxed();
            while let Some(ev) = events.next().await {
                let (watcher::Event::Apply(s) | watcher::Event::InitApply(s)) =
                    ev.unwrap_or(watcher::Event::Init)
                else {
                    continue;
                };
                let Some(value) = data_of(&s, &key) else {
                    continue;
                };
                let mut v = sink.lock().unwrap();
                if v.last()
                    .map(|(_, last): &(f64, String)| last != &value)
                    .unwrap_or(true)
                {
                    v.push((boot_seconds(), value));
                }
            }
        });
        Changes { entries, task }
    }

    /// What the cluster says about the namespace (for failure messages).
    pub async fn diagnose(&self) -> String {
        self.node.diagnose(self.ns()).await
    }
}

/// Whether the pod is Running with condition Ready true.
pub fn is_ready(p: &Pod) -> bool {
    let st = p.status.as_ref();
    st.and_then(|s| s.phase.as_deref()) == Some("Running") && condition(p, "Ready") == Some(true)
}

/// The status of condition `kind` (`Ready`, `ContainersReady`, …) of a pod.
pub fn condition(p: &Pod, kind: &str) -> Option<bool> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)?;
    Some(c.status == "True")
}

/// The status of container `name` (init containers included).
pub fn container_status<'p>(p: &'p Pod, name: &str) -> Option<&'p ContainerStatus> {
    let st = p.status.as_ref()?;
    st.container_statuses
        .iter()
        .chain(st.init_container_statuses.iter())
        .flatten()
        .find(|c| c.name == name)
}

/// The name of a pod.
pub fn name(p: &Pod) -> &str {
    p.metadata.name.as_deref().unwrap_or_default()
}

/// The values a Secret key took (see [`Scope::watch_secret_key`]).
pub struct Changes {
    entries: Arc<Mutex<Vec<(f64, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Changes {
    /// `(boot seconds when the watch delivered it, value)`, oldest first.
    pub fn entries(&self) -> Vec<(f64, String)> {
        self.entries.lock().unwrap().clone()
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A container log followed in the background (see [`Scope::follow`]).
pub struct Logs {
    lines: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Logs {
    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The consumer [`Sample`]s so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.lines()
            .iter()
            .filter_map(|l| Sample::parse(l))
            .collect()
    }

    /// Waits (up to `timeout`) until the container's log ends (it exited) and returns all lines.
    pub async fn finish(mut self, timeout: Duration) -> Vec<String> {
        let ended = tokio::time::timeout(timeout, &mut self.task).await.is_ok();
        assert!(ended, "the log did not end within {timeout:?}");
        self.lines()
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The consumer's busybox script: it reads the token from `$LABEL_STUDIO_AUTHORIZATION_FILE` (the
/// variable deploy/ gives the app) for each request, resolving `..data` once per read like a careful
/// consumer, calls `$LABEL_STUDIO_URL/api/current-user/whoami` with it and prints one line per call,
/// never the token:
///
/// `sample BOOT_SECONDS UNIX_SECONDS GENERATION EXPIRES_AT HTTP_CODE TAG`
///
/// `SAMPLE_ON=each` calls every `SAMPLE_EVERY` seconds; `SAMPLE_ON=change` checks `..data` that often
/// and calls only when it changed (a new token arrived). With `HTTP_PORT` it serves `/health` there
/// (busybox httpd, for the probes deploy/ gives the app). On SIGTERM, with `SIDECAR_LIVEZ` it waits
/// until the sidecar no longer answers there (it exited), calls once more (tag
/// `after-sidecar-exit`: the published files are intact after the sidecar is gone) and exits 0.
/// At start it prints `consumer: file MODE UID GID` of the token file.
pub const CONSUMER: &str = r#"
# busybox 1.35 (Debian's static build) segfaults on `wget -T`: time limits come from `timeout`. Applets
# without a link in the image run as `busybox NAME`.
dir=$(busybox dirname "$LABEL_STUDIO_AUTHORIZATION_FILE")
file=$(busybox basename "$LABEL_STUDIO_AUTHORIZATION_FILE")
if [ -n "${HTTP_PORT:-}" ]; then
  mkdir -p /tmp/www && echo ok >/tmp/www/health && busybox httpd -f -p "127.0.0.1:$HTTP_PORT" -h /tmp/www &
fi
echo "consumer: file $(stat -L -c '%a %u %g' "$LABEL_STUDIO_AUTHORIZATION_FILE")"
uptime() { read -r up _ </proc/uptime; echo "$up"; }
read_set() {
  gen=$(readlink "$dir/..data") && auth=$(cat "$dir/$gen/$file") && exp=$(cat "$dir/$gen/expires_at")
}
sample() {
  # The kubelet or the refresher may swap ..data between readlink and cat: read again.
  read_set || read_set || read_set || { echo "sample $(uptime) $(date +%s) none none unreadable $1"; return; }
  code=$(timeout 10 wget -S -O /dev/null --header "Authorization: $auth" "$LABEL_STUDIO_URL/api/current-user/whoami" 2>&1 \
    | sed -n 's#^ *HTTP/[0-9.]* \([0-9][0-9][0-9]\).*#\1#p' | tail -n 1)
  echo "sample $(uptime) $(date +%s) $gen $exp ${code:-none} $1"
}
term=0
trap 'term=1' TERM
last=
while [ "$term" = 0 ]; do
  if [ "$SAMPLE_ON" = each ] || [ "$(readlink "$dir/..data")" != "$last" ]; then
    sample run
    last=$gen
  fi
  sleep "$SAMPLE_EVERY"
done
echo "consumer: SIGTERM"
if [ -n "${SIDECAR_LIVEZ:-}" ]; then
  i=0
  while [ $i -lt 100 ] && timeout 1 wget -q -O /dev/null "$SIDECAR_LIVEZ" 2>/dev/null; do sleep 0.2; i=$((i+1)); done
  echo "consumer: sidecar gone"
  sample after-sidecar-exit
fi
exit 0
"#;

/// One line of the [`CONSUMER`]'s output.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Seconds since boot when it read the token (see [`crate::clock::boot_seconds`]).
    pub boot: f64,
    /// Unix seconds then.
    pub unix: i64,
    /// The generation directory it read (`..<timestamp>…`).
    pub generation: String,
    /// The token's `expires_at`, Unix seconds (None if unreadable).
    pub expires_at: Option<i64>,
    /// The HTTP status Label Studio answered (`200`, `401`, or `none` / `unreadable`).
    pub code: String,
    /// `run`, or `after-sidecar-exit`.
    pub tag: String,
}

impl Sample {
    /// Parses a `sample …` line; None for other lines.
    pub fn parse(line: &str) -> Option<Sample> {
        let f: Vec<&str> = line.strip_prefix("sample ")?.split_whitespace().collect();
        let [boot, unix, generation, exp, code, tag] = f[..] else {
            return None;
        };
        Some(Sample {
            boot: boot.parse().ok()?,
            unix: unix.parse().ok()?,
            generation: generation.into(),
            expires_at: exp.parse::<jiff::Timestamp>().ok().map(|t| t.as_second()),
            code: code.into(),
            tag: tag.into(),
        })
    }

    /// Label Studio accepted the token.
    pub fn ok(&self) -> bool {
        self.code == "200"
    }
}

/// Where a deploy/ manifest runs on the test node.
pub struct NodeSite<'a> {
    /// The test's namespace (replaces the manifests' `label-studio`).
    pub namespace: &'a str,
    /// Our image (replaces the refresher containers' image).
    pub image: &'a str,
    /// Label Studio's URL (replaces `LS_URL`).
    pub ls_url: &'a str,
    /// The sidecar's admin port on the node's loopback (replaces `LS_ADMIN_ADDR` and the `ls-admin`
    /// container port; hostNetwork pods share the node's ports).
    pub admin_port: u16,
    /// The auth proxy's port on the node's loopback (replaces the port of `LS_PROXY_ADDR`, which
    /// the refresher containers must then have); None for manifests without the proxy.
    pub proxy_port: Option<u16>,
}

/// Adapts the objects of a deploy/ manifest to the test node, changing only what the node needs:
/// the namespace, `hostNetwork: true` on the pod, and in the refresher containers (those running
/// our image's repository) the image, `LS_URL`, the admin address/port and the proxy's port (with
/// [`NodeSite::proxy_port`]; its address stays loopback). `app` rewrites every
/// other container (the example app: image, command, its own URL and ports). Panics if a field it
/// replaces is not in the manifest, so the manifests' contract is checked on the way.
pub fn adapt_deploy(objects: &mut [Value], site: &NodeSite, mut app: impl FnMut(&mut Value)) {
    let repository = site
        .image
        .rsplit_once(':')
        .map_or(site.image, |(name, _)| name);
    for obj in objects.iter_mut() {
        obj["metadata"]["namespace"] = json!(site.namespace);
        let Some(spec) = obj
            .pointer_mut("/spec/template/spec")
            .filter(|s| s.is_object())
        else {
            continue;
        };
        spec["hostNetwork"] = json!(true);
        for list in ["initContainers", "containers"] {
            let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
                continue;
            };
            for c in containers {
                let image = c["image"].as_str().unwrap_or_default();
                if !image.starts_with(&format!("{repository}:")) {
                    app(c);
                    continue;
                }
                c["image"] = json!(site.image);
                set_env(c, "LS_URL", site.ls_url);
                if env(c, "LS_ADMIN_ADDR").is_some() {
                    set_env(
                        c,
                        "LS_ADMIN_ADDR",
                        &format!("127.0.0.1:{}", site.admin_port),
                    );
                    set_port(c, "ls-admin", site.admin_port);
                }
                if let Some(port) = site.proxy_port {
                    let addr = env(c, "LS_PROXY_ADDR").expect("the refresher serves the proxy");
                    let host = addr.rsplit_once(':').expect("LS_PROXY_ADDR is host:port").0;
                    let addr = format!("{host}:{port}");
                    set_env(c, "LS_PROXY_ADDR", &addr);
                }
            }
        }
    }
}

/// Turns a container into the busybox [`CONSUMER`] with `extra` environment (`SAMPLE_ON`,
/// `SAMPLE_EVERY`, …). The container must already have `LABEL_STUDIO_URL` (set to `ls_url`) and
/// `LABEL_STUDIO_AUTHORIZATION_FILE` (kept): the contract deploy/ states for its apps.
pub fn make_consumer(c: &mut Value, busybox: &str, ls_url: &str, extra: &[(&str, &str)]) {
    c["image"] = json!(busybox);
    c["command"] = json!(["sh", "-c", CONSUMER]);
    if let Some(o) = c.as_object_mut() {
        o.remove("args");
    }
    set_env(c, "LABEL_STUDIO_URL", ls_url);
    assert!(
        env(c, "LABEL_STUDIO_AUTHORIZATION_FILE").is_some(),
        "container {} has no LABEL_STUDIO_AUTHORIZATION_FILE",
        c["name"]
    );
    for (k, v) in extra {
        add_env(c, k, v);
    }
}

/// The value of environment variable `name` of a container.
pub fn env<'c>(c: &'c Value, name: &str) -> Option<&'c str> {
    c["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?
        .get("value")?
        .as_str()
}

/// Sets the existing environment variable `name`; panics if the container has none.
pub fn set_env(c: &mut Value, name: &str, value: &str) {
    entry_mut(c, "env", name)["value"] = json!(value);
}

/// The entry named `name` in the container's list `list` (`env`, `ports`); panics if there is none.
fn entry_mut<'c>(c: &'c mut Value, list: &str, name: &str) -> &'c mut Value {
    let container = c["name"].to_string();
    c[list]
        .as_array_mut()
        .and_then(|l| l.iter_mut().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("container {container} has no {list} entry {name}"))
}

/// Appends environment variable `name`.
pub fn add_env(c: &mut Value, name: &str, value: &str) {
    if !c["env"].is_array() {
        c["env"] = json!([]);
    }
    c["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": name, "value": value}));
}

/// Sets the number of the named container port; panics if there is no such port.
pub fn set_port(c: &mut Value, port_name: &str, port: u16) {
    entry_mut(c, "ports", port_name)["containerPort"] = json!(port);
}

/// The container named `name` in the pod template of `obj`.
pub fn container_mut<'v>(obj: &'v mut Value, name: &str) -> &'v mut Value {
    let spec = obj
        .pointer_mut("/spec/template/spec")
        .and_then(Value::as_object_mut)
        .expect("a pod template");
    spec.iter_mut()
        .filter(|(k, _)| *k == "initContainers" || *k == "containers")
        .filter_map(|(_, l)| l.as_array_mut())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The first object of `kind` in a manifest.
pub fn object_mut<'v>(objects: &'v mut [Value], kind: &str) -> &'v mut Value {
    objects
        .iter_mut()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the manifest"))
}

/// What the kernel says about a container's main process (found through containerd): checks that it
/// runs as `uid:gid` with no capabilities in any set, no_new_privs, a seccomp filter and a read-only
/// root filesystem — the securityContext as the kubelet and runc really applied it. Returns its PID.
pub fn assert_hardened(node: &Node, pod: &Pod, container: &str, uid: u32, gid: u32) -> u32 {
    let id = container_status(pod, container)
        .and_then(|s| s.container_id.clone())
        .unwrap_or_else(|| panic!("container {container} has no containerID"));
    let pid = node.container_pid(&id);
    let field = |k: &str| process::status_field(pid, k).unwrap_or_default();
    let what = format!("container {container} (pid {pid})");
    assert_eq!(
        field("Uid"),
        format!("{uid} {uid} {uid} {uid}"),
        "{what}: uids"
    );
    assert_eq!(
        field("Gid"),
        format!("{gid} {gid} {gid} {gid}"),
        "{what}: gids"
    );
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(set), "0000000000000000", "{what}: {set}");
    }
    assert_eq!(
        field("NoNewPrivs"),
        "1",
        "{what}: allowPrivilegeEscalation false"
    );
    assert_eq!(
        field("Seccomp"),
        "2",
        "{what}: seccomp filter (RuntimeDefault)"
    );
    let root = process::root_mount_options(pid).unwrap_or_default();
    assert!(
        root.split(',').any(|o| o == "ro"),
        "{what}: root filesystem mounted {root}, not read-only"
    );
    pid
}

/// min / median / max of `values` (sorted copy); None if empty.
pub fn min_median_max(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (n > 0).then(|| {
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        (v[0], median, v[n - 1])
    })
}

/// A Deployment of `replicas` busybox consumers (hostNetwork, uid 10001, read-only) that mount the
/// Secret `secret` as a directory and run [`CONSUMER`] on its `authorization` file, one sample line
/// per change (checked every 0.2 s), each token tried against `ls_url`.
pub fn consumer_deployment(
    name: &str,
    replicas: usize,
    busybox: &str,
    ls_url: &str,
    secret: &str,
) -> Value {
    let dir = "/var/run/secrets/label-studio";
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "hostNetwork": true,
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "terminationGracePeriodSeconds": 5,
                    "securityContext": {
                        "runAsNonRoot": true, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 2000,
                        "seccompProfile": {"type": "RuntimeDefault"}
                    },
                    "containers": [{
                        "name": "consumer",
                        "image": busybox,
                        "imagePullPolicy": "Never",
                        "command": ["sh", "-c", CONSUMER],
                        "env": [
                            {"name": "LABEL_STUDIO_URL", "value": ls_url},
                            {"name": "LABEL_STUDIO_AUTHORIZATION_FILE", "value": format!("{dir}/authorization")},
                            {"name": "SAMPLE_ON", "value": "change"},
                            {"name": "SAMPLE_EVERY", "value": "0.2"}
                        ],
                        "securityContext": {
                            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]}
                        },
                        "volumeMounts": [{"name": "token", "mountPath": dir, "readOnly": true}]
                    }],
                    "volumes": [{"name": "token", "secret": {"secretName": secret, "defaultMode": 0o440}}]
                }
            }
        }
    })
}
