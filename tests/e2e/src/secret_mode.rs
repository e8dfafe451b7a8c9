//! The Secret-mode fixture the Kubernetes end-to-end tests share: a real kube-apiserver and a real
//! Label Studio (access tokens living `ttl` seconds), a namespace with the PAT in a Secret, and the
//! chart's ServiceAccount, Role, RoleBinding, (empty) target Secret and Lease, rendered by helm.

use k8s_openapi::api::core::v1::Secret;
use kube::{
    api::{Patch, PatchParams},
    Api, Client,
};

use crate::{
    chart::{self, SaIdentity},
    kube_api::create_secret,
    kube_apiserver::ApiServer,
    label_studio::LabelStudio,
    refresher::RefresherProc,
};

/// The PAT Secret's name.
pub const PAT_SECRET: &str = "ls-pat";
/// The target Secret's name.
pub const TARGET: &str = "ls-token";

/// A started fixture.
pub struct SecretMode {
    /// The API server.
    pub kube: ApiServer,
    /// Label Studio.
    pub ls: LabelStudio,
    /// A cluster-admin client.
    pub admin: Client,
    /// The test's namespace.
    pub ns: String,
    /// The PAT (in the Secret `PAT_SECRET`, key `pat`).
    pub pat: String,
    /// The chart's ServiceAccount, whose identity the refresher runs with.
    pub sa: SaIdentity,
    /// Scratch space (logs, token directories).
    pub tmp: tempfile::TempDir,
}

impl SecretMode {
    /// Starts both servers and installs the chart's objects into a fresh namespace `<prefix>-…`.
    pub async fn start(ttl: u64, prefix: &str) -> SecretMode {
        let (kube, ls) = tokio::join!(ApiServer::start(), LabelStudio::start_with_ttl(ttl));
        let admin = kube.admin_client().await;
        let ns = kube.create_namespace(prefix).await;
        let pat = ls.api().create_pat().await;
        create_secret(&admin, &ns, PAT_SECRET, &[("pat", &pat)]).await;
        let sa = chart::install_rbac(&kube, &ns, PAT_SECRET, TARGET).await;
        SecretMode {
            kube,
            ls,
            admin,
            ns,
            pat,
            sa,
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    /// `run` arguments for this fixture: Label Studio, the PAT Secret, the target Secret, `log_level`,
    /// quick retries, no propagation margin (nothing mounts the Secret here).
    pub fn run_args(&self, log_level: &str) -> Vec<String> {
        [
            "--url",
            &self.ls.url(),
            "--pat-secret",
            PAT_SECRET,
            "--target-secret",
            TARGET,
            "--log-level",
            log_level,
            "--backoff-initial",
            "200ms",
            "--backoff-max",
            "2s",
            "--propagation-margin",
            "0s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Starts `run` with [`SecretMode::run_args`] plus `extra`, as the chart's ServiceAccount, with
    /// `env` added to its environment.
    pub fn start_run(
        &self,
        name: &str,
        log_level: &str,
        extra: &[String],
        env: &[(&str, &str)],
    ) -> RefresherProc {
        let mut args = self.run_args(log_level);
        args.extend(extra.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut vars = vec![
            ("KUBECONFIG", self.sa.kubeconfig.to_str().unwrap()),
            ("HOME", "/nonexistent"),
        ];
        vars.extend_from_slice(env);
        RefresherProc::start(self.tmp.path(), name, &args, &vars)
    }

    /// Server-side applies `body` to the target Secret as field manager `manager` (another writer).
    pub async fn apply_target_as(&self, manager: &str, body: &serde_json::Value) -> Secret {
        self.secrets()
            .patch(TARGET, &PatchParams::apply(manager), &Patch::Apply(body))
            .await
            .unwrap()
    }

    /// Secrets of the test's namespace, as the admin.
    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }
}
