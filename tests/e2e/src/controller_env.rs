//! The controller on a real kube-apiserver + Label Studio: the CRDs as the chart installs them, a
//! `LabelStudioConnection` to the real Label Studio, PAT Secrets opted in, token resources, the
//! controller process, and (optionally) kube-controller-manager's garbage collector, which is what
//! deletes a token resource's Secret through its owner reference.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    api::{Api, ObjectMeta, Patch, PatchParams, PostParams},
    Client,
};
use serde_json::{json, Value};

use crate::{
    chart::{self, SaIdentity},
    free_port,
    kube_api::{data_of, secret_data},
    kube_apiserver::{self, ApiServer},
    label_studio::LabelStudio,
    refresher::RefresherProc,
    wait::poll,
};

/// A Secret holding a PAT under `pat`, opted in as a PAT source (label) unless `opt_in` is false.
pub fn pat_secret(name: &str, pat: &str, opt_in: bool) -> Secret {
    let mut labels = std::collections::BTreeMap::new();
    if opt_in {
        labels.insert(
            "ls-token-refresher/pat-source".to_string(),
            "true".to_string(),
        );
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            ..Default::default()
        },
        data: Some(secret_data(&[("pat", pat)])),
        ..Default::default()
    }
}

/// A `LabelStudioToken` object.
pub fn token(name: &str, connection: &str, pat_secret: &str, target: &str) -> Value {
    json!({
        "apiVersion": "ls-token-refresher.io/v1alpha1",
        "kind": "LabelStudioToken",
        "metadata": { "name": name },
        "spec": {
            "connectionName": connection,
            "patSecretRef": { "name": pat_secret },
            "secretName": target,
            "minLead": "5s",
        }
    })
}

/// Installs the CRDs as the chart renders them and waits until they are served.
pub async fn install_crds(kube: &ApiServer, _dir: &std::path::Path) {
    // The CRDs as the chart installs them (its files are the binary's `crds`, drift-checked).
    let yaml = chart::render(
        "default",
        &[
            "--set",
            "controller.enabled=true",
            "--set",
            "deployment.enabled=false",
            "--show-only",
            "templates/controller-crds.yaml",
        ],
    )
    .await;
    let out = chart::kubectl_apply(kube, "crds", &yaml, &[]).await;
    assert!(
        out.status.success(),
        "kubectl apply crds: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kube
        .kubectl([
            "wait",
            "--for=condition=Established",
            "crd/labelstudiotokens.ls-token-refresher.io",
            "crd/labelstudioconnections.ls-token-refresher.io",
            "--timeout=60s",
        ])
        .await;
    assert!(
        out.status.success(),
        "CRDs not established: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Everything one controller test needs.
pub struct ControllerEnv {
    /// The apiserver.
    pub kube: ApiServer,
    /// Label Studio.
    pub ls: LabelStudio,
    /// Admin client.
    pub admin: Client,
    /// Work dir (logs, files).
    pub tmp: tempfile::TempDir,
    gc: Option<Child>,
}

impl ControllerEnv {
    /// Starts both, installs the CRDs and waits until they are served.
    pub async fn start(access_ttl_secs: u64) -> ControllerEnv {
        let (kube, ls) = tokio::join!(
            ApiServer::start(),
            LabelStudio::start_with_ttl(access_ttl_secs)
        );
        let admin = kube.admin_client().await;
        let tmp = tempfile::tempdir().unwrap();
        install_crds(&kube, tmp.path()).await;
        ControllerEnv {
            kube,
            ls,
            admin,
            tmp,
            gc: None,
        }
    }

    /// Starts kube-controller-manager with only the garbage collector (deletes owned objects).
    pub fn start_garbage_collector(&mut self) {
        let bin = kube_apiserver::provision().join("kube-controller-manager");
        let kubeconfig = self.kube.admin_kubeconfig_path();
        let log = std::fs::File::create(self.tmp.path().join("gc.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!(
                "--authentication-kubeconfig={}",
                kubeconfig.display()
            ))
            .arg(format!(
                "--authorization-kubeconfig={}",
                kubeconfig.display()
            ))
            .args([
                "--bind-address=127.0.0.1",
                "--port=0",
                "--leader-elect=false",
                "--profiling=false",
            ])
            .arg(format!("--secure-port={}", free_port()))
            .arg(format!(
                "--cert-dir={}",
                self.tmp.path().join("gc-pki").display()
            ))
            .args(["--controllers=garbagecollector", "--v=1"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kube-controller-manager");
        self.gc = Some(child);
    }

    /// The chart's controller ServiceAccount and RBAC (ClusterRole, or a Role in each of `watch`),
    /// installed in `ns`; returns the ServiceAccount's identity, which the controller then runs as.
    pub async fn chart_identity(&self, ns: &str, watch: &[&str]) -> SaIdentity {
        let mut args: Vec<String> = [
            "--set",
            "controller.enabled=true",
            "--set",
            "deployment.enabled=false",
            "--set",
            &format!("fullnameOverride={}", chart::FULLNAME),
            "--show-only",
            "templates/controller-rbac.yaml",
            // The chart creates the leader-election Lease (the controller may get/update it, not create).
            "--show-only",
            "templates/lease.yaml",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !watch.is_empty() {
            args.extend([
                "--set".into(),
                format!("controller.watchNamespaces={{{}}}", watch.join(",")),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let yaml = chart::render(ns, &args).await;
        let out =
            chart::kubectl_apply(&self.kube, &format!("controller-rbac-{ns}"), &yaml, &[]).await;
        assert!(
            out.status.success(),
            "kubectl apply controller RBAC: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        chart::service_account(&self.kube, ns, &format!("{}-controller", chart::FULLNAME)).await
    }

    /// Creates a cluster-scoped connection to the test's Label Studio (or to `url`), optionally
    /// restricted by namespace labels.
    pub async fn create_connection(
        &self,
        name: &str,
        url: Option<&str>,
        match_labels: Option<Value>,
    ) {
        let mut spec = json!({ "url": url.map(str::to_owned).unwrap_or_else(|| self.ls.url()) });
        if let Some(l) = match_labels {
            spec["namespaceSelector"] = json!({ "matchLabels": l });
        }
        let obj = json!({
            "apiVersion": "ls-token-refresher.io/v1alpha1",
            "kind": "LabelStudioConnection",
            "metadata": { "name": name },
            "spec": spec,
        });
        self.apply_json(&format!("conn-{name}"), &obj, None).await;
    }

    /// `kubectl apply` of one object (as admin, or with `--as` `as_user`); panics on failure.
    pub async fn apply_json(&self, file: &str, obj: &Value, ns: Option<&str>) {
        let out = self.apply_json_as(file, obj, ns, None).await;
        assert!(
            out.status.success(),
            "kubectl apply {file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl apply` of one object, impersonating `as_user` when given.
    pub async fn apply_json_as(
        &self,
        file: &str,
        obj: &Value,
        ns: Option<&str>,
        as_user: Option<&str>,
    ) -> std::process::Output {
        let path = self.tmp.path().join(format!("{file}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(obj).unwrap()).unwrap();
        let mut args = vec!["apply".to_string(), "-f".into(), path.display().to_string()];
        if let Some(ns) = ns {
            args.extend(["-n".into(), ns.into()]);
        }
        if let Some(u) = as_user {
            // As an attacker would: straight to the API server, no client-side schema check.
            args.push(format!("--as={u}"));
            args.push("--validate=false".into());
        }
        self.kube.kubectl(args).await
    }

    /// Creates a Secret in `ns`.
    pub async fn create_secret(&self, ns: &str, s: &Secret) {
        Api::<Secret>::namespaced(self.admin.clone(), ns)
            .create(&PostParams::default(), s)
            .await
            .expect("create secret");
    }

    /// Replaces the `pat` key of a PAT Secret.
    pub async fn set_pat(&self, ns: &str, name: &str, pat: &str) {
        let body = json!({ "data": { "pat": base64_of(pat) } });
        Api::<Secret>::namespaced(self.admin.clone(), ns)
            .patch(name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .expect("patch PAT secret");
    }

    /// Starts the controller (admin identity unless `kubeconfig` is given).
    pub fn start_controller(
        &self,
        name: &str,
        kubeconfig: Option<PathBuf>,
        extra: &[&str],
    ) -> RefresherProc {
        let kubeconfig = kubeconfig.unwrap_or_else(|| self.kube.admin_kubeconfig_path());
        let mut args = vec![
            "--log-level",
            "debug",
            "--propagation-margin",
            "0s",
            "--backoff-initial",
            "200ms",
            "--backoff-max",
            "2s",
        ];
        args.extend(extra);
        RefresherProc::start_command(
            "controller",
            self.tmp.path(),
            name,
            &args,
            &[
                ("KUBECONFIG", kubeconfig.to_str().unwrap()),
                ("HOME", "/nonexistent"),
            ],
        )
    }

    /// The `LabelStudioToken` `ns/name` as JSON (None when absent).
    pub async fn token_obj(&self, ns: &str, name: &str) -> Option<Value> {
        let out = self
            .kube
            .kubectl(["get", "labelstudiotoken", name, "-n", ns, "-o", "json"])
            .await;
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("kubectl json"))
    }

    /// The Ready condition's (status, reason) of `ns/name`.
    pub async fn ready(&self, ns: &str, name: &str) -> Option<(String, String)> {
        let t = self.token_obj(ns, name).await?;
        let c = t["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        Some((
            c["status"].as_str()?.to_owned(),
            c["reason"].as_str()?.to_owned(),
        ))
    }

    /// Waits until `ns/name`'s Ready condition is (`status`, `reason`); panics with the controller log.
    pub async fn wait_ready(
        &self,
        ns: &str,
        name: &str,
        status: &str,
        reason: &str,
        timeout: Duration,
        log: &RefresherProc,
    ) {
        let got = poll(timeout, Duration::from_millis(200), || async {
            self.ready(ns, name)
                .await
                .filter(|(s, r)| s == status && r == reason)
        })
        .await;
        assert!(
            got.is_some(),
            "{ns}/{name}: Ready never became {status}/{reason} (now {:?})\ncontroller log:\n{}",
            self.ready(ns, name).await,
            crate::tail(&log.log_text(), 40)
        );
    }

    /// Annotates the token resource `ns/name` with `ls-token-refresher/refresh-now=value` (kubectl).
    pub async fn refresh_now(&self, ns: &str, name: &str, value: &str) {
        let annotation = format!("ls-token-refresher/refresh-now={value}");
        let out = self
            .kube
            .kubectl([
                "annotate",
                "lstoken",
                name,
                "-n",
                ns,
                &annotation,
                "--overwrite",
            ])
            .await;
        assert!(out.status.success(), "kubectl annotate {ns}/{name}");
    }

    /// Reasons of the Events in `ns` about the object `name` (any object when None), in order.
    pub async fn event_reasons(&self, ns: &str, name: Option<&str>) -> Vec<String> {
        let out = self
            .kube
            .kubectl(["get", "events", "-n", ns, "-o", "json"])
            .await;
        let events: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| name.is_none_or(|n| e["involvedObject"]["name"] == n))
            .filter_map(|e| e["reason"].as_str().map(str::to_owned))
            .collect()
    }

    /// [`ControllerEnv::wait_ready`] for the usual goal: `True`/`token_published` within a minute.
    pub async fn wait_published(&self, ns: &str, name: &str, log: &RefresherProc) {
        self.wait_ready(
            ns,
            name,
            "True",
            "token_published",
            Duration::from_secs(60),
            log,
        )
        .await
    }

    /// (token, authorization, expires_at annotation, resourceVersion) of a target Secret.
    pub async fn target(&self, ns: &str, name: &str) -> Option<(String, String, String, String)> {
        let s = Api::<Secret>::namespaced(self.admin.clone(), ns)
            .get_opt(name)
            .await
            .ok()??;
        let exp = s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("ls-token-refresher/expires-at").cloned())
            .unwrap_or_default();
        Some((
            data_of(&s, "token")?,
            data_of(&s, "authorization")?,
            exp,
            s.metadata.resource_version.clone().unwrap_or_default(),
        ))
    }

    /// The user id Label Studio says `authorization` belongs to (None when refused).
    pub async fn whoami_id(&self, authorization: &str) -> Option<i64> {
        let (status, body) = self
            .ls
            .api()
            .get("/api/current-user/whoami", Some(authorization))
            .await;
        (status == 200).then(|| body["id"].as_i64()).flatten()
    }
}

impl Drop for ControllerEnv {
    fn drop(&mut self) {
        if let Some(mut c) = self.gc.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Base64 of a string (Secret data in JSON patches).
pub fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
