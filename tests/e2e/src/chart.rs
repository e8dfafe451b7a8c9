//! The Helm chart (`charts/ls-token-refresher`) as the tests use it: rendered by the provisioned helm,
//! its RBAC applied to a real kube-apiserver, and its ServiceAccount's identity taken on with a token
//! from the TokenRequest API.
//!
//! Why a TokenRequest token is the pod's identity: the kubelet mounts exactly such a token into the
//! chart's pod (issued by the same API for the pod's ServiceAccount, audience = the API server's). The
//! authenticator maps both to `system:serviceaccount:<ns>:<sa>` in the groups `system:serviceaccounts`,
//! `system:serviceaccounts:<ns>` and `system:authenticated`, so RBAC decides the same for both. A pod's
//! token is also bound to the pod object, which only ends its validity when the pod goes away.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
};

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::ServiceAccount,
};
use kube::{
    api::{Api, PostParams},
    Client,
};

use crate::kube_apiserver::ApiServer;

/// The chart, relative to the repository root.
pub const CHART: &str = "charts/ls-token-refresher";
/// The `fullnameOverride` the tests render with: the ServiceAccount, Role, RoleBinding and
/// Deployment are all named this.
pub const FULLNAME: &str = "ls-token-refresher";
/// Token lifetime asked of the TokenRequest API (its minimum is 10 minutes; tests are shorter).
const TOKEN_SECONDS: i64 = 3600;

/// The chart as the release ships it: `deploy/package-chart.sh`, the code path `deploy/release.sh`
/// packages it with (a reproducible `helm package`), run once per test process into a temporary
/// directory that lives as long as the process. Returns the `.tgz`; `helm install NAME <it>`.
pub fn packaged() -> &'static Path {
    static PACKAGE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_dir, tgz) = PACKAGE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir for the chart package");
        let env = crate::tools::tools_env();
        let out = Command::new("bash")
            .arg("-c")
            .arg(r#"source "$0" && exec bash deploy/package-chart.sh "$1""#)
            .arg(env)
            .arg(dir.path())
            .current_dir(crate::repo_root())
            .stdin(Stdio::null())
            .output()
            .expect("run deploy/package-chart.sh");
        assert!(
            out.status.success(),
            "deploy/package-chart.sh failed ({}):\n{}",
            out.status,
            text(&out.stderr)
        );
        let tgz = PathBuf::from(text(&out.stdout).trim());
        assert!(
            tgz.starts_with(dir.path()) && tgz.extension().is_some_and(|e| e == "tgz"),
            "deploy/package-chart.sh printed {}",
            tgz.display()
        );
        (dir, tgz)
    });
    tgz
}

/// `helm ARGS...` with the provisioned helm and its writable homes, in the repository root.
pub async fn helm(args: &[&str]) -> Output {
    crate::tools::helm(args, None).await
}

/// Lossy UTF-8 of a command's output.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `helm ARGS...`, panicking with its stderr unless it succeeds; returns its stdout.
pub async fn helm_ok(args: &[&str]) -> String {
    let out = helm(args).await;
    assert!(
        out.status.success(),
        "helm {args:?} failed ({}):\n{}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `helm template ls-token-refresher <chart> --namespace NAMESPACE ARGS...` (value files, `--set`s,
/// `--show-only`s).
pub async fn render(namespace: &str, args: &[&str]) -> String {
    let mut all = vec!["template", FULLNAME, CHART, "--namespace", namespace];
    all.extend_from_slice(args);
    helm_ok(&all).await
}

/// The `--set`s that give the chart's objects the tests' names: [`FULLNAME`], the PAT Secret `pat`
/// and the target Secret `target`.
pub fn name_values(pat: &str, target: &str) -> Vec<String> {
    [
        format!("fullnameOverride={FULLNAME}"),
        format!("pat.existingSecret={pat}"),
        format!("targetSecret.name={target}"),
    ]
    .into_iter()
    .flat_map(|v| ["--set".to_string(), v])
    .collect()
}

/// The objects of a multi-document YAML stream (empty documents dropped).
pub fn objects(yaml: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple::<serde_json::Value>(yaml)
        .unwrap_or_else(|e| panic!("not YAML ({e}):\n{yaml}"))
        .into_iter()
        .filter(|d| d.is_object())
        .collect()
}

/// Writes `yaml` into the server's dir as `<name>.yaml` and runs `kubectl apply -f` on it as admin.
pub async fn kubectl_apply(server: &ApiServer, name: &str, yaml: &str, extra: &[&str]) -> Output {
    let file = server.dir().join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let mut args = vec!["apply", "-f", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    server.kubectl(&args).await
}

/// A ServiceAccount whose identity a test takes on: a TokenRequest token and a kubeconfig with it.
pub struct SaIdentity {
    /// Namespace of the ServiceAccount.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// A kubeconfig presenting its token (context namespace = its namespace).
    pub kubeconfig: PathBuf,
    token: String,
}

impl SaIdentity {
    /// The RBAC user name of the ServiceAccount.
    pub fn user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }

    /// A client presenting the ServiceAccount's token.
    pub fn client(&self, server: &ApiServer) -> Client {
        server.client_with_token(&self.token)
    }
}

/// Takes on the identity of the ServiceAccount `ns/sa` (which must exist): a token from the
/// TokenRequest API, as the kubelet would mount, and a kubeconfig holding it.
pub async fn service_account(server: &ApiServer, ns: &str, sa: &str) -> SaIdentity {
    let api: Api<ServiceAccount> = Api::namespaced(server.admin_client().await, ns);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: None, // the API server's own
            expiration_seconds: Some(TOKEN_SECONDS),
            ..Default::default()
        }),
        ..Default::default()
    };
    let issued = api
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{sa}: {e}"));
    let token = issued
        .status
        .and_then(|s| s.token)
        .expect("TokenRequest answered without a token");
    let kubeconfig = server.write_token_kubeconfig(&format!("sa-{ns}-{sa}"), &token, ns);
    SaIdentity {
        namespace: ns.into(),
        name: sa.into(),
        kubeconfig,
        token,
    }
}

/// The chart's RBAC for a refresher that reads the PAT Secret `pat` and keeps `target` current in
/// `ns`: renders the chart's ServiceAccount, Role, RoleBinding and (empty) target Secret — what
/// `helm install` creates besides the Deployment — applies them, and returns the ServiceAccount's
/// identity. The Role is the chart's own, never a copy.
pub async fn install_rbac(server: &ApiServer, ns: &str, pat: &str, target: &str) -> SaIdentity {
    install_rbac_with(server, ns, pat, target, &[]).await
}

/// [`install_rbac`] with extra `--set` values (e.g. `pat.rotation.every=5s`, which adds `patch` on
/// the PAT Secret to the Role).
pub async fn install_rbac_with(
    server: &ApiServer,
    ns: &str,
    pat: &str,
    target: &str,
    sets: &[&str],
) -> SaIdentity {
    let mut args: Vec<String> = name_values(pat, target);
    for s in sets {
        args.extend(["--set".into(), (*s).into()]);
    }
    // A URL is required to render; these objects do not use it.
    args.extend([
        "--set".into(),
        "labelStudio.url=http://label-studio.invalid:8080".into(),
    ]);
    for t in [
        "serviceaccount.yaml",
        "role.yaml",
        "rolebinding.yaml",
        "target-secret.yaml",
        "lease.yaml",
    ] {
        args.extend(["--show-only".into(), format!("templates/{t}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let yaml = render(ns, &args).await;
    let mut kinds: Vec<String> = objects(&yaml)
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["Lease", "Role", "RoleBinding", "Secret", "ServiceAccount"],
        "the chart's RBAC objects (and the leader-election Lease)"
    );
    let out = kubectl_apply(server, &format!("chart-rbac-{ns}"), &yaml, &[]).await;
    assert!(
        out.status.success(),
        "kubectl apply of the chart's RBAC: {}",
        text(&out.stderr)
    );
    service_account(server, ns, FULLNAME).await
}
