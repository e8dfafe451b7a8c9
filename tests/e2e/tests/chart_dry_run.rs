//! The Helm chart and the plain manifests in deploy/ against a real kube-apiserver (v1.20.2, see
//! the `kube_apiserver` harness): every object is submitted with `kubectl apply --dry-run=server`, so the API server's
//! own validation and defaulting run on it. The chart's RBAC is then applied for real and tried out with a
//! token of the chart's own ServiceAccount (TokenRequest API): everything it may do is what the rendered
//! Role grants, and the escalation through `create` on secrets (issue 9, item 5) fails — while it
//! succeeds under the Role the chart had before, which shows the test can tell. deploy/secret-mode.yaml,
//! applied again over a Secret the refresher filled, leaves the token keys alone.
//!
//! What 1.20 cannot show, and is asserted as such: native sidecars (`restartPolicy: Always` on an init container,
//! beta and on by default from Kubernetes 1.29, alpha behind the SidecarContainers gate in 1.28) are unknown
//! there: kubectl's schema validation rejects the field, and without it the API server drops the field and then
//! rejects the sidecar's probes as probes on an init container — deploy/native-sidecar.yaml fails loudly on an
//! old cluster (use deploy/classic-sidecar.yaml there). The Prometheus Operator's CRDs are not installed, so
//! ServiceMonitor and PrometheusRule objects are left out (tests/chart/check.sh validates them offline).
//!
//! Tools: helm comes from tests/support/tools/provision.sh (cached), kubectl and the API server from the kube
//! harness.

use std::{collections::BTreeSet, process::Output};

use k8s_openapi::api::{
    authorization::v1::{SelfSubjectRulesReview, SelfSubjectRulesReviewSpec},
    core::v1::{ConfigMap, Pod, Secret, ServiceAccount},
    rbac::v1::{ClusterRoleBinding, RoleBinding},
};
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams, PostParams},
    Client,
};
use ls_token_refresher_e2e::{
    chart::{self, SaIdentity},
    kube_api::{api_error_code, data_of},
    kube_apiserver::ApiServer,
    repo_root,
};

/// Kinds this 1.20 API server cannot take as rendered: the Prometheus Operator's CRs (no CRDs here)
/// and the PodDisruptionBudget, rendered as policy/v1 (served from 1.21; against a 1.20 cluster
/// `helm install` renders policy/v1beta1, see templates/poddisruptionbudget.yaml).
const CRD_KINDS: &[&str] = &[
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
    "PodDisruptionBudget",
];

/// Renders the chart with a value set from tests/chart/values into `namespace`.
async fn render_chart(values: &str, namespace: &str) -> String {
    let values = format!("tests/chart/values/{values}.yaml");
    chart::render(namespace, &["-f", &values]).await
}

/// The YAML documents of a multi-document stream, without the kinds 1.20 has no CRD for.
fn without_crds(yaml: &str) -> (String, Vec<String>) {
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for doc in yaml.split("\n---") {
        let kind = doc
            .lines()
            .find_map(|l| l.strip_prefix("kind: "))
            .map(str::trim);
        match kind {
            None => {}
            Some(k) if CRD_KINDS.contains(&k) => dropped.push(k.to_string()),
            Some(_) => kept.push(doc.trim_start_matches("---").trim().to_string()),
        }
    }
    (kept.join("\n---\n") + "\n", dropped)
}

/// Kinds (in order) of the objects in a YAML stream.
fn kinds(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(|k| k.trim().to_string())
        .collect()
}

/// Writes `yaml` into the server's dir and runs `kubectl apply --dry-run=server -f` on it (plus `extra` flags).
async fn dry_run(server: &ApiServer, name: &str, yaml: &str, extra: &[&str]) -> Output {
    let file = server.dir().join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let mut args = vec![
        "apply".to_string(),
        "--dry-run=server".into(),
        "-o".into(),
        "json".into(),
        "-f".into(),
        file.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    server.kubectl(&args).await
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: kubectl failed ({})\nstderr:\n{}\nstdout (head):\n{}",
        out.status,
        chart::text(&out.stderr),
        chart::text(&out.stdout)
            .chars()
            .take(2000)
            .collect::<String>()
    );
}

/// The objects kubectl printed (`-o json` gives one object, or a List of several).
fn printed_objects(out: &Output) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("kubectl -o json output");
    match v.get("items") {
        Some(items) if v["kind"] == "List" => items.as_array().unwrap().clone(),
        _ => vec![v],
    }
}

async fn create_namespace_named(server: &ApiServer, name: &str) {
    let out = server.kubectl(["create", "namespace", name]).await;
    assert_ok(&out, &format!("create namespace {name}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_and_deploy_manifests_pass_server_side_dry_run_on_1_20() {
    let server = ApiServer::start().await;

    // --- the chart, for every value set that renders a Deployment ---------------------------------------------
    for values in [
        "minimal",
        "full",
        "https-ca-secret",
        "existing-serviceaccount",
    ] {
        let ns = server.create_namespace(&format!("chart-{values}")).await;
        let rendered = render_chart(values, &ns).await;
        let (yaml, mut dropped) = without_crds(&rendered);
        if values == "full" {
            dropped.sort();
            assert_eq!(
                dropped,
                [
                    "PodDisruptionBudget",
                    "PodMonitor",
                    "PrometheusRule",
                    "ServiceMonitor"
                ],
                "full renders the three CRs and the PodDisruptionBudget of its two replicas"
            );
        }
        let out = dry_run(&server, &format!("chart-{values}"), &yaml, &[]).await;
        assert_ok(&out, &format!("chart value set {values}"));
        let objects = printed_objects(&out);
        let got: Vec<String> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            kinds(&yaml),
            "value set {values}: every object came back"
        );

        // The API server's view of the Deployment keeps what the chart relies on.
        let dep = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
        let pod = &dep["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], true, "{values}");
        let c = &pod["containers"][0];
        assert_eq!(c["args"][0], "run");
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert_eq!(
            c["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
        assert!(c["startupProbe"].is_object(), "{values}: startupProbe kept");
        if let Some(sa) = objects.iter().find(|o| o["kind"] == "ServiceAccount") {
            assert_eq!(sa["automountServiceAccountToken"], false);
        }
    }

    // --- deploy/ ---------------------------------------------------------------------------------------------
    create_namespace_named(&server, "label-studio").await;
    let read = |f: &str| std::fs::read_to_string(repo_root().join("deploy").join(f)).unwrap();

    for f in [
        "secret-mode.yaml",
        "classic-sidecar.yaml",
        "job-once.yaml",
        "proxy-sidecar.yaml",
    ] {
        let (yaml, _) = without_crds(&read(f));
        let out = dry_run(&server, f, &yaml, &[]).await;
        assert_ok(&out, &format!("deploy/{f}"));
        assert_eq!(
            printed_objects(&out).len(),
            kinds(&yaml).len(),
            "deploy/{f}"
        );
    }

    // The classic sidecar's pod on 1.20: a `once` init container, the refresher among the containers, the token
    // directory an in-memory emptyDir mounted read-only by the app, fsGroup kept.
    let out = dry_run(&server, "classic", &read("classic-sidecar.yaml"), &[]).await;
    let objects = printed_objects(&out);
    let dep = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["initContainers"][0]["args"][0], "once");
    assert!(pod["initContainers"][0].get("restartPolicy").is_none());
    assert_eq!(pod["securityContext"]["fsGroup"], 2000);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let vols = pod["volumes"].as_array().unwrap();
    let token_vol = vols.iter().find(|v| v["name"] == "ls-token").unwrap();
    assert_eq!(token_vol["emptyDir"]["medium"], "Memory");
    let app = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ml-backend")
        .unwrap();
    let mount = app["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "ls-token")
        .unwrap();
    assert_eq!(mount["readOnly"], true);
    assert!(mount.get("subPath").is_none());

    // Native sidecar: 1.20 does not know `restartPolicy` on init containers. kubectl's validation (against the
    // server's OpenAPI) rejects it ...
    let native = read("native-sidecar.yaml");
    let out = dry_run(&server, "native", &native, &[]).await;
    assert!(
        !out.status.success(),
        "1.20 accepted a native sidecar with validation on:\n{}",
        chart::text(&out.stdout)
    );
    let err = chart::text(&out.stderr);
    assert!(
        err.contains("restartPolicy"),
        "the rejection names the field: {err}"
    );
    // ... and without client-side validation the API server drops the unknown field, after which the sidecar's
    // probes are probes on a plain init container, which it refuses: the manifest fails loudly on an old
    // cluster instead of leaving a pod stuck in Init.
    let out = dry_run(&server, "native-novalidate", &native, &["--validate=false"]).await;
    assert!(
        !out.status.success(),
        "1.20 accepted a native sidecar without validation:\n{}",
        chart::text(&out.stdout)
    );
    let err = chart::text(&out.stderr);
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert!(
            err.contains(&format!("initContainers[0].{probe}"))
                && err.contains("must not be set for init containers"),
            "the API server's error names {probe}: {err}"
        );
    }
    assert!(
        err.contains(r#"The Deployment "ml-backend" is invalid"#),
        "{err}"
    );

    // The monitoring CRs need the Prometheus Operator's CRDs, which this server does not have.
    let out = dry_run(
        &server,
        "servicemonitor",
        &read("monitoring/servicemonitor.yaml"),
        &[],
    )
    .await;
    assert!(
        !out.status.success(),
        "ServiceMonitor without its CRD was accepted"
    );
}

/// One permission: (API group, resource, object name or `*`, verb).
type Perm = (String, String, String, String);

/// The permissions a list of RBAC rules (`apiGroups`, `resources`, `resourceNames`, `verbs`) grants.
fn perms<'a>(
    rules: impl IntoIterator<Item = (&'a [String], &'a [String], &'a [String], &'a [String])>,
) -> BTreeSet<Perm> {
    let mut out = BTreeSet::new();
    for (groups, resources, names, verbs) in rules {
        let any = ["*".to_string()];
        let names = if names.is_empty() { &any[..] } else { names };
        for g in groups {
            for r in resources {
                for n in names {
                    for v in verbs {
                        out.insert((g.clone(), r.clone(), n.clone(), v.clone()));
                    }
                }
            }
        }
    }
    out
}

/// The strings of a JSON array (empty when absent).
fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The permissions the rendered Role `role` (a JSON object) grants.
fn role_perms(role: &serde_json::Value) -> BTreeSet<Perm> {
    let rules: Vec<[Vec<String>; 4]> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            [
                strings(&r["apiGroups"]),
                strings(&r["resources"]),
                strings(&r["resourceNames"]),
                strings(&r["verbs"]),
            ]
        })
        .collect();
    perms(
        rules
            .iter()
            .map(|[g, r, n, v]| (&g[..], &r[..], &n[..], &v[..])),
    )
}

/// Everything `client`'s identity may do in `ns`, as the API server's authorizer lists it
/// (SelfSubjectRulesReview: every rule of every binding that applies, including the defaults every
/// authenticated identity gets).
async fn effective_perms(client: Client, ns: &str) -> BTreeSet<Perm> {
    let review = SelfSubjectRulesReview {
        spec: SelfSubjectRulesReviewSpec {
            namespace: Some(ns.into()),
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectRulesReview>::all(client)
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectRulesReview");
    let status = answer.status.expect("rules review status");
    assert!(
        !status.incomplete,
        "the rules review is incomplete: {status:?}"
    );
    let rules: Vec<[Vec<String>; 4]> = status
        .resource_rules
        .into_iter()
        .map(|r| {
            [
                r.api_groups.unwrap_or_default(),
                r.resources.unwrap_or_default(),
                r.resource_names.unwrap_or_default(),
                r.verbs,
            ]
        })
        .collect();
    perms(
        rules
            .iter()
            .map(|[g, r, n, v]| (&g[..], &r[..], &n[..], &v[..])),
    )
}

/// A `kubernetes.io/service-account-token` Secret `name` for the ServiceAccount `sa`: what the token
/// controller fills with a token of `sa`, readable by whoever may `get` the Secret.
fn token_secret(name: &str, sa: &str) -> Secret {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "annotations": {"kubernetes.io/service-account.name": sa}},
        "type": "kubernetes.io/service-account-token",
    }))
    .unwrap()
}

/// The API status code of `r`, panicking with the error if it is not an API error.
fn code<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> u16 {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => api_error_code::<()>(&Err(e)).unwrap_or_else(|| panic!("not an API error")),
    }
}

/// The status code with which the API refuses `client` to create `obj` in `ns`.
async fn create_code<K>(client: &Client, ns: &str, obj: &K) -> u16
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + k8s_openapi::serde::Serialize,
    K::DynamicType: Default,
{
    code(
        Api::<K>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), obj)
            .await,
    )
}

/// Applies the chart's minimal value set in `ns` for real (no controllers run: the Deployment just sits
/// there); returns the rendered objects and the identity of the chart's ServiceAccount.
async fn install_minimal(server: &ApiServer, ns: &str) -> (Vec<serde_json::Value>, SaIdentity) {
    let (yaml, _) = without_crds(&render_chart("minimal", ns).await);
    let out = chart::kubectl_apply(server, &format!("minimal-{ns}"), &yaml, &[]).await;
    assert_ok(&out, "apply the minimal chart");
    let objects = chart::objects(&yaml);
    let dep = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let sa = dep["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap();
    let identity = chart::service_account(server, ns, sa).await;
    (objects, identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_is_least_privilege_for_its_own_service_account() {
    let server = ApiServer::start().await;
    let admin = server.admin_client().await;
    let ns = server.create_namespace("chart-rbac").await;
    let other = server.create_namespace("chart-rbac-other").await;
    let (objects, sa) = install_minimal(&server, &ns).await;
    let role = objects.iter().find(|o| o["kind"] == "Role").unwrap();
    let target = objects
        .iter()
        .find(|o| o["kind"] == "Secret")
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .expect("the chart renders the target Secret");
    let granted = role_perms(role);

    // What the rendered Role grants is least privilege: Secrets only by name, and no create on them.
    for (group, resource, name, verb) in &granted {
        if resource == "secrets" {
            assert!(
                group.is_empty() && name != "*",
                "unnamed secrets permission: {verb} {name}"
            );
            assert_ne!(verb, "create", "create on secrets");
        }
    }
    assert!(granted.contains(&("".into(), "secrets".into(), target.clone(), "patch".into())));

    // Everything the ServiceAccount may do is what the Role grants plus what any identity may do (a
    // ServiceAccount with no binding at all shows the latter) — in its namespace; elsewhere, nothing more.
    let sa_api: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    sa_api
        .create(&PostParams::default(), &service_account_named("nobody"))
        .await
        .unwrap();
    let nobody = chart::service_account(&server, &ns, "nobody").await;
    let baseline = effective_perms(nobody.client(&server), &ns).await;
    let effective = effective_perms(sa.client(&server), &ns).await;
    let extra: BTreeSet<Perm> = effective.difference(&baseline).cloned().collect();
    assert_eq!(
        extra, granted,
        "the ServiceAccount may do more, or less, than the Role grants"
    );
    // (The baseline itself reads nothing and touches no Secret, so the Role is all the access there is.)
    assert!(
        baseline
            .iter()
            .all(|(_, r, _, v)| r != "secrets" && !["get", "list", "watch"].contains(&v.as_str())),
        "any identity may read or touch Secrets here: {baseline:?}"
    );
    assert_eq!(
        effective_perms(sa.client(&server), &other).await,
        effective_perms(nobody.client(&server), &other).await,
        "the Role reaches beyond its namespace"
    );

    // The attack (issue 9, item 5) with the ServiceAccount's token. The privileged account it aims at:
    sa_api
        .create(&PostParams::default(), &service_account_named("powerful"))
        .await
        .unwrap();
    let crb: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("powerful-{ns}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "powerful", "namespace": ns}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &crb)
        .await
        .unwrap();
    let admin_secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    admin_secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
            "metadata": {"name": "someone-elses"}, "stringData": {"password": "hunter2"}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let as_sa = sa.client(&server);
    let secrets: Api<Secret> = Api::namespaced(as_sa.clone(), &ns);
    let pp = PostParams::default();

    // The window the attack needs: the target does not exist (deleted; or a first install without it).
    admin_secrets
        .delete(&target, &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        code(
            secrets
                .create(&pp, &token_secret(&target, "powerful"))
                .await
        ),
        403,
        "creating the target as a token Secret of a privileged ServiceAccount"
    );
    let apply = serde_json::to_value(token_secret(&target, "powerful")).unwrap();
    let refused = secrets
        .patch(
            &target,
            &PatchParams::apply("attacker"),
            &Patch::Apply(&apply),
        )
        .await;
    // (The API server's message here names no verb — `secrets "<name>" is forbidden: ` — so the
    // refresher looks the target up to explain a refusal; see e2e_kubernetes.)
    assert_eq!(
        code(refused),
        403,
        "server-side apply of the missing target needs create"
    );
    assert_eq!(
        code(secrets.create(&pp, &token_secret("mine", "powerful")).await),
        403
    );
    assert!(admin_secrets.get_opt(&target).await.unwrap().is_none());
    // Reading other Secrets, or listing them, is refused.
    assert_eq!(code(secrets.get("someone-elses").await), 403);
    assert_eq!(code(secrets.list(&Default::default()).await), 403);
    // Nothing else can be created either: objects, a token for any ServiceAccount, a binding.
    let configmap: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}})).unwrap();
    assert_eq!(create_code(&as_sa, &ns, &configmap).await, 403);
    let pod: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "x"},
        "spec": {"containers": [{"name": "x", "image": "busybox"}]}}))
    .unwrap();
    assert_eq!(create_code(&as_sa, &ns, &pod).await, 403);
    let sas: Api<ServiceAccount> = Api::namespaced(as_sa.clone(), &ns);
    assert_eq!(
        code(sas.create(&pp, &service_account_named("y")).await),
        403
    );
    assert_eq!(code(sas.get("powerful").await), 403);
    for whose in ["powerful", chart::FULLNAME, sa.name.as_str()] {
        let req = Default::default();
        assert_eq!(
            code(sas.create_token_request(whose, &pp, &req).await),
            403,
            "token for {whose}"
        );
    }
    let rb: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "escalate"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": sa.name, "namespace": ns}],
    }))
    .unwrap();
    assert_eq!(create_code(&as_sa, &ns, &rb).await, 403);

    // With the target back (the chart's empty Secret), the patch it may do cannot turn it into a token Secret.
    let (yaml, _) = without_crds(&render_chart("minimal", &ns).await);
    assert_ok(
        &chart::kubectl_apply(&server, "minimal-again", &yaml, &[]).await,
        "re-apply the chart",
    );
    let retype = serde_json::json!({"type": "kubernetes.io/service-account-token",
        "metadata": {"annotations": {"kubernetes.io/service-account.name": "powerful"}}});
    assert_eq!(
        code(
            secrets
                .patch(&target, &PatchParams::default(), &Patch::Merge(&retype))
                .await
        ),
        422,
        "a Secret's type is immutable"
    );
    assert_eq!(
        admin_secrets.get(&target).await.unwrap().type_.as_deref(),
        Some("Opaque")
    );

    // Control: under the Role the chart had before (the same rules plus `create` on secrets), the same
    // first step succeeds and the name it may read is the token Secret — the test would catch a regression.
    let (old_objects, old_sa) = install_minimal(&server, &other).await;
    let mut old_role = old_objects
        .iter()
        .find(|o| o["kind"] == "Role")
        .unwrap()
        .clone();
    old_role["rules"].as_array_mut().unwrap().push(
        serde_json::json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}),
    );
    let old_role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(old_role).unwrap();
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(admin.clone(), &other)
        .patch(
            old_role.metadata.name.as_deref().unwrap(),
            &PatchParams::apply("old-chart").force(),
            &Patch::Apply(&old_role),
        )
        .await
        .unwrap();
    let old_secrets: Api<Secret> = Api::namespaced(old_sa.client(&server), &other);
    Api::<Secret>::namespaced(admin.clone(), &other)
        .delete(&target, &DeleteParams::default())
        .await
        .unwrap();
    old_secrets
        .create(&pp, &token_secret(&target, "powerful"))
        .await
        .expect("under the old Role the attack's create succeeds");
    let minted = old_secrets
        .get(&target)
        .await
        .expect("and the attacker may read it");
    assert_eq!(
        minted.type_.as_deref(),
        Some("kubernetes.io/service-account-token")
    );
}

/// A ServiceAccount object named `name`.
fn service_account_named(name: &str) -> ServiceAccount {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap()
}

/// deploy/secret-mode.yaml creates the target Secret without data. Applied again — client-side (a
/// three-way merge against the last-applied annotation) or server-side — after the refresher's field
/// manager filled it, it leaves the token keys, the refresher's label and annotations alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_secret_mode_applied_again_keeps_the_token_keys() {
    let server = ApiServer::start().await;
    let out = server
        .kubectl(["create", "namespace", "label-studio"])
        .await;
    assert_ok(&out, "create namespace label-studio");
    let (yaml, _) = without_crds(
        &std::fs::read_to_string(repo_root().join("deploy/secret-mode.yaml")).unwrap(),
    );
    assert_ok(
        &chart::kubectl_apply(&server, "secret-mode", &yaml, &[]).await,
        "apply deploy/secret-mode.yaml",
    );
    let objects = chart::objects(&yaml);
    let target = objects.iter().find(|o| o["kind"] == "Secret").unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let dep = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let sa_name = dep["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap();
    let sa = chart::service_account(&server, "label-studio", sa_name).await;

    // What the refresher applies (the binary's own request body), as the manifest's ServiceAccount.
    use ls_token_refresher::{
        secret::Secret as Sensitive,
        sink::secret::apply_body,
        token::{Authorization, Scheme, TokenSet},
    };
    let set = TokenSet {
        auth: Authorization {
            scheme: Scheme::Bearer,
            token: Sensitive::new("not-a-real-token"),
        },
        expires_at: Some(2_000_000_000),
        refreshed_at: 1_999_999_700,
    };
    let body = apply_body("label-studio", &target, &set);
    let as_sa: Api<Secret> = Api::namespaced(sa.client(&server), "label-studio");
    as_sa
        .patch(
            &target,
            &PatchParams::apply("ls-token-refresher"),
            &Patch::Apply(&body),
        )
        .await
        .expect("the refresher's apply into the manifest's empty Secret");

    let admin: Api<Secret> = Api::namespaced(server.admin_client().await, "label-studio");
    for (how, extra) in [
        ("client-side", &[][..]),
        ("server-side", &["--server-side"][..]),
    ] {
        let out = chart::kubectl_apply(&server, &format!("secret-mode-{how}"), &yaml, extra).await;
        assert_ok(&out, &format!("kubectl apply {how} again"));
        let s = admin.get(&target).await.unwrap();
        assert_eq!(
            data_of(&s, "token").as_deref(),
            Some("not-a-real-token"),
            "{how} apply dropped the token"
        );
        assert_eq!(
            data_of(&s, "authorization").as_deref(),
            Some("Bearer not-a-real-token"),
            "{how}"
        );
        assert!(data_of(&s, "expires_at").is_some(), "{how}");
        assert_eq!(
            s.metadata
                .labels
                .as_ref()
                .unwrap()
                .get("ls-token-refresher/managed")
                .map(String::as_str),
            Some("true"),
            "{how}"
        );
        assert!(
            s.metadata
                .annotations
                .as_ref()
                .unwrap()
                .contains_key("ls-token-refresher/expires-at"),
            "{how}"
        );
    }
}
