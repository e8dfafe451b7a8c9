//! The Helm chart and the plain manifests in deploy/ against a real kube-apiserver (v1.20.2, see
//! the `kube_apiserver` harness): every object is submitted with `kubectl apply --dry-run=server`, so the API server's
//! own validation and defaulting run on it. The chart's RBAC is then applied for real and probed with
//! `kubectl auth can-i` (impersonating the chart's ServiceAccount) to prove the Role is exactly least-privilege.
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

use std::process::Output;

use ls_token_refresher_e2e::{
    kube_api::can_i,
    kube_apiserver::{ApiServer, Identity},
    repo_root, tools,
};

const CRD_KINDS: &[&str] = &["ServiceMonitor", "PrometheusRule"];

/// `helm ARGS...` against no cluster (templates only).
async fn helm(args: &[&str]) -> Output {
    tools::helm(args, None).await
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Renders the chart with a value set from tests/chart/values into `namespace`.
async fn render_chart(values: &str, namespace: &str) -> String {
    let values = format!("tests/chart/values/{values}.yaml");
    let out = helm(&[
        "template",
        "ls-token-refresher",
        "charts/ls-token-refresher",
        "--namespace",
        namespace,
        "-f",
        &values,
    ])
    .await;
    assert!(
        out.status.success(),
        "helm template {values}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
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
        text(&out.stderr),
        text(&out.stdout).chars().take(2000).collect::<String>()
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
                ["PrometheusRule", "ServiceMonitor"],
                "full renders both CRs"
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

    for f in ["secret-mode.yaml", "classic-sidecar.yaml", "job-once.yaml"] {
        let yaml = read(f);
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
        text(&out.stdout)
    );
    let err = text(&out.stderr);
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
        text(&out.stdout)
    );
    let err = text(&out.stderr);
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

/// `kubectl auth can-i VERB RESOURCE -n IN_NS` as the ServiceAccount `sa_ns/sa` (admin impersonation).
async fn sa_can_i(
    server: &ApiServer,
    (sa_ns, sa): (&str, &str),
    in_ns: &str,
    verb: &str,
    resource: &str,
) -> bool {
    let who = format!("--as=system:serviceaccount:{sa_ns}:{sa}");
    can_i(
        server,
        Identity::Admin,
        &[verb, resource, "-n", in_ns, who.as_str()],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_is_least_privilege_on_a_real_api_server() {
    let server = ApiServer::start().await;
    let ns = server.create_namespace("chart-rbac").await;
    let other = server.create_namespace("chart-rbac-other").await;
    let (yaml, _) = without_crds(&render_chart("minimal", &ns).await);

    // Apply for real (no controllers run, so the Deployment just sits there) and ask the authorizer.
    let file = server.dir().join("rbac.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let out = server
        .kubectl(["apply", "-f", file.to_str().unwrap()])
        .await;
    assert_ok(&out, "apply the minimal chart");

    let sa = "ls-token-refresher";
    let pat = "ls-token-refresher-pat";
    let target = "ls-token-refresher-token";
    let allowed = [
        ("get", format!("secrets/{pat}")),
        ("list", format!("secrets/{pat}")),
        ("watch", format!("secrets/{pat}")),
        ("get", format!("secrets/{target}")),
        ("patch", format!("secrets/{target}")),
        ("create", "secrets".to_string()),
        ("create", "events".to_string()),
        ("patch", "events".to_string()),
        ("create", "events.events.k8s.io".to_string()),
        ("patch", "events.events.k8s.io".to_string()),
    ];
    let denied = [
        ("get", "secrets/some-other-secret".to_string()),
        ("list", "secrets".to_string()),
        ("watch", "secrets".to_string()),
        ("patch", format!("secrets/{pat}")),
        ("update", format!("secrets/{target}")),
        ("delete", format!("secrets/{target}")),
        ("delete", format!("secrets/{pat}")),
        ("get", "configmaps".to_string()),
        ("get", "pods".to_string()),
        ("list", "events".to_string()),
    ];
    let cases = (allowed.iter().map(|c| (c, true))).chain(denied.iter().map(|c| (c, false)));
    for ((verb, resource), want) in cases {
        assert_eq!(
            sa_can_i(&server, (&ns, sa), &ns, verb, resource).await,
            want,
            "the ServiceAccount {} {verb} {resource}",
            if want { "cannot" } else { "can" }
        );
    }
    // Nothing outside its namespace.
    for (verb, resource) in [
        ("get", format!("secrets/{pat}")),
        ("create", "secrets".into()),
        ("create", "events".into()),
    ] {
        assert!(
            !sa_can_i(&server, (&ns, sa), &other, verb, &resource).await,
            "the ServiceAccount can {verb} {resource} in another namespace"
        );
    }
}
