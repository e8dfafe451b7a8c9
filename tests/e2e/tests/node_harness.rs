//! Proves the node harness (tests/support/node/node.sh, driven through `node::Node`): a node of its
//! own starts with every component, registers as `127.0.0.1` on loopback, runs a pod from our image,
//! and `stop` leaves nothing behind — no process, no mount, no containerd shim, no registration; only
//! the logs, env and timings stay in its directory for the caller.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kube::api::{Api, LogParams, PostParams};
use ls_token_refresher_e2e::{cache_dir, node::Node, wait::poll};
use serde_json::json;

const COMPONENTS: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "containerd",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_runs_our_image_and_stops_without_leftovers() {
    let node = tokio::task::spawn_blocking(Node::start).await.unwrap();
    let status = node.status();
    for c in COMPONENTS {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(&format!("{c} running"))),
            "{c} is not running:\n{status}"
        );
    }
    eprintln!(
        "node components: {} MB RSS\n{status}",
        node.rss_kib() / 1024
    );

    // The node as the API sees it: on loopback, the kubelet of the Debian 1.20.2 build, containerd.
    let client = node.client().await;
    let k: KubeNode = Api::all(client.clone()).get("127.0.0.1").await.unwrap();
    let st = k.status.unwrap();
    let info = st.node_info.unwrap();
    assert_eq!(info.kubelet_version, "v1.20.2");
    assert!(
        info.container_runtime_version
            .starts_with("containerd://1.6."),
        "{info:?}"
    );
    let addresses: Vec<_> = st
        .addresses
        .unwrap()
        .into_iter()
        .map(|a| (a.type_, a.address))
        .collect();
    assert!(
        addresses.contains(&("InternalIP".into(), "127.0.0.1".into())),
        "{addresses:?}"
    );

    // A bare pod from our image, as the image's own user: the entrypoint runs with nothing but the
    // image (no shell, no package manager) under a real runc.
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "version"},
        "spec": {
            "hostNetwork": true, "restartPolicy": "Never", "automountServiceAccountToken": false,
            "containers": [{
                "name": "refresher", "image": node.image().reference, "imagePullPolicy": "Never",
                "args": ["--version"],
                "securityContext": {"readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}
            }]
        }
    });
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod).unwrap(),
    )
    .await
    .unwrap();
    let phase = poll(
        Duration::from_secs(60),
        Duration::from_millis(300),
        || async {
            let p = pods.get("version").await.ok()?;
            let phase = p.status?.phase?;
            (phase == "Succeeded" || phase == "Failed").then_some(phase)
        },
    )
    .await;
    assert_eq!(
        phase.as_deref(),
        Some("Succeeded"),
        "{}",
        node.diagnose("default").await
    );
    let log = pods
        .logs("version", &LogParams::default())
        .await
        .expect("the pod's log");
    let tag = node.image().parts().2;
    assert_eq!(log.trim(), format!("ls-token-refresher {tag}"));

    // stop: kubelet, containers (through containerd, then runc), containerd and its shims, the control
    // plane, every mount, the state.
    let dir = node.dir().to_path_buf();
    let socket = node.env("CONTAINERD_SOCKET").to_string();
    let node = tokio::task::spawn_blocking(move || {
        let mut node = node;
        node.stop();
        node
    })
    .await
    .unwrap();
    let status = node.status();
    for c in COMPONENTS {
        assert!(
            status.lines().any(|l| l == format!("{c} stopped")),
            "{c} left running:\n{status}"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir_s = dir.to_str().unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains(dir_s)),
        "mounts left under {dir_s}"
    );
    let shims: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&socket))
                .unwrap_or(false)
        })
        .map(|e| e.file_name())
        .collect();
    assert!(shims.is_empty(), "processes still use {socket}: {shims:?}");
    let left: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let allowed: BTreeSet<String> = ["logs", "node.env", "timings", "owner", "pids", "node-bin"]
        .map(String::from)
        .into();
    assert!(left.is_subset(&allowed), "state left in {dir_s}: {left:?}");
    let registered = std::fs::read_dir(cache_dir().join("node/instances"))
        .map(|d| {
            d.flatten()
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == dir))
        })
        .unwrap_or(false);
    assert!(!registered, "the node is still registered for reaping");
    eprintln!(
        "node timings (ms): {}",
        std::fs::read_to_string(dir.join("timings"))
            .unwrap_or_default()
            .replace('\n', " ")
    );
}
