//! The chart in controller mode on a real kubelet: `helm install` with `controller.enabled` (the
//! CRDs, the controller Deployment as the chart's ServiceAccount under its RBAC) → a Ready
//! controller pod; a tenant in another namespace declares a `LabelStudioToken` → consumer pods in the
//! tenant's namespace that mount its target Secret read a token Label Studio accepts, new tokens
//! reaching them across lifetimes, never an expired one.

use std::time::Duration;

use ls_token_refresher_e2e::{
    free_port,
    pods::{self, assert_hardened, Scope},
    tools::helm,
    wait::poll,
};
use serde_json::json;

use crate::{helm_install, label_studio};

const RELEASE: &str = "ls-controller";
/// As the chart propagation test: the chart's default lead (minLead 30 s + propagationMargin 90 s)
/// sets the refresh interval (~115 s), longer than the kubelet's worst-case Secret sync.
const TTL: u64 = 240;
/// New tokens each consumer must see after its first.
const REFRESHES: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_mode_tokens_reach_pods_of_another_namespace() {
    let ((ls, pat), ops, tenant) = tokio::join!(
        label_studio(TTL),
        Scope::new("ctl-ops"),
        Scope::new("ctl-tenant")
    );
    let admin = free_port();
    let sets = [
        "deployment.enabled=false".into(),
        "controller.enabled=true".into(),
        // One node with host networking: one replica (it still leads through the chart's Lease).
        "controller.replicas=1".into(),
        "hostNetwork=true".into(),
        format!("controller.adminPort={admin}"),
        "admin.address=127.0.0.1".into(),
        // The CRDs are cluster-scoped: another install on the shared node must not own them.
        "controller.crds.keep=false".into(),
    ];
    let pod = helm_install(&ops, RELEASE, &sets).await;
    assert_hardened(&ops.node, &pod, "controller", 65532, 65532);

    // The admin's connection; the tenant's opted-in PAT and token resource.
    let connection = json!({
        "apiVersion": "ls-token-refresher.io/v1alpha1",
        "kind": "LabelStudioConnection",
        "metadata": {"name": format!("{}-ls", tenant.ns())},
        "spec": {
            "url": ls.url(),
            // Kubernetes 1.20 sets no kubernetes.io/metadata.name label: a label of our own.
            "namespaceSelector": {"matchLabels": {"ls-token-refresher-test/tenant": tenant.ns()}}
        }
    });
    let pat_secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "ls-pat", "labels": {"ls-token-refresher/pat-source": "true"}},
        "type": "Opaque",
        "stringData": {"pat": pat}
    });
    let token = json!({
        "apiVersion": "ls-token-refresher.io/v1alpha1",
        "kind": "LabelStudioToken",
        "metadata": {"name": "ml-backend"},
        "spec": {
            "connectionName": format!("{}-ls", tenant.ns()),
            "patSecretRef": {"name": "ls-pat", "key": "pat"},
            "secretName": "ls-token"
        }
    });
    ops.node
        .kubectl_ok(&[
            "label",
            "namespace",
            tenant.ns(),
            &format!("ls-token-refresher-test/tenant={}", tenant.ns()),
        ])
        .await;
    tenant.apply(&[connection, pat_secret, token]).await;
    let ready = poll(
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let out = ops
                .node
                .kubectl(&[
                    "get",
                    "lstoken",
                    "ml-backend",
                    "-n",
                    tenant.ns(),
                    "-o",
                    "jsonpath={.status.conditions[0].status}/{.status.conditions[0].reason}",
                ])
                .await;
            (String::from_utf8_lossy(&out.stdout) == "True/token_published").then_some(())
        },
    )
    .await;
    assert!(
        ready.is_some(),
        "the token resource never became Ready\n{}",
        ops.diagnose().await
    );

    let consumers = pods::consumer_deployment(
        "token-consumer",
        2,
        tenant.node.busybox(),
        &ls.url(),
        "ls-token",
    );
    tenant.apply(&[consumers]).await;
    let pods_ = tenant
        .wait_ready("app=token-consumer", 2, Duration::from_secs(120))
        .await;
    let logs: Vec<_> = pods_
        .iter()
        .map(|p| tenant.follow(pods::name(p), "consumer"))
        .collect();
    let timeout = Duration::from_secs(180 + 150 * REFRESHES as u64);
    let seen_all = poll(timeout, Duration::from_secs(2), || async {
        logs.iter()
            .all(|l| {
                let mut exps: Vec<_> = l.samples().iter().map(|s| s.expires_at).collect();
                exps.dedup();
                exps.len() > REFRESHES
            })
            .then_some(())
    })
    .await;
    let report = || {
        logs.iter()
            .map(|l| l.lines().join("\n  "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        seen_all.is_some(),
        "the consumers did not see {REFRESHES} new tokens:\n{}\n{}",
        report(),
        ops.diagnose().await
    );
    for l in &logs {
        assert!(
            l.samples().iter().all(|s| s.ok()),
            "a consumer read a token Label Studio refused (or an expired one):\n{}",
            report()
        );
    }
    let out = helm(
        &["uninstall", RELEASE, "--namespace", ops.ns(), "--wait"],
        Some(&ops.node.kubeconfig()),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
