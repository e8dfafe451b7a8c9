//! End to end on a real kube-apiserver (+ etcd) and a real Label Studio 1.23.2: PAT in a Secret →
//! the real binary, running as the chart's ServiceAccount under the Role rendered from the chart
//! (`charts/ls-token-refresher/templates/role.yaml`, enforced by the apiserver's RBAC; see
//! `ls_token_refresher_e2e::chart` for why a TokenRequest token is the pod's identity) → the target
//! Secret the chart creates, whose `authorization` the real API accepts. One test installs the chart
//! with `helm install` and upgrades it while the binary keeps the Secret current.

use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::{core::v1::Secret, events::v1::Event};
use kube::{
    api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams},
    Client,
};
use ls_token_refresher_e2e::{
    chart,
    clock::rfc3339,
    jwt::jwt_claims,
    kube_api::{can_i_with, create_secret, data_of, secret, secret_data},
    kube_apiserver::ApiServer,
    label_studio::LabelStudio,
    log_scan::assert_no_secrets,
    refresher::RefresherProc,
    secret_mode::{SecretMode, PAT_SECRET, TARGET},
    token_dir::read_set,
    wait::poll,
};

/// The shared fixture, with this file's helpers.
struct Env(SecretMode);

impl std::ops::Deref for Env {
    type Target = SecretMode;
    fn deref(&self) -> &SecretMode {
        &self.0
    }
}

impl std::ops::DerefMut for Env {
    fn deref_mut(&mut self) -> &mut SecretMode {
        &mut self.0
    }
}

async fn setup(ttl: u64) -> Env {
    Env(SecretMode::start(ttl, "e2e").await)
}

impl Env {
    /// Starts the refresher as the chart's ServiceAccount, PAT from the Secret, token to the target
    /// Secret (and to a directory when `dir` is set).
    fn start(&self, name: &str, dir: Option<&std::path::Path>, extra: &[&str]) -> RefresherProc {
        let mut args: Vec<String> = Vec::new();
        if let Some(dir) = dir {
            args.extend(["--token-dir".into(), dir.to_str().unwrap().to_owned()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        self.start_run(name, "trace", &args, &[])
    }

    /// The target Secret's (token, authorization, expires_at), if present.
    async fn target(&self) -> Option<(String, String, String)> {
        let s = self.secrets().get_opt(TARGET).await.ok()??;
        s.data.as_ref()?;
        let get = |k: &str| data_of(&s, k).unwrap_or_default();
        Some((get("token"), get("authorization"), get("expires_at")))
    }

    async fn wait_target_change(
        &self,
        old: Option<&str>,
        timeout: Duration,
    ) -> (String, String, String) {
        poll(timeout, Duration::from_millis(200), || async {
            self.target()
                .await
                .filter(|t| !t.0.is_empty() && Some(t.0.as_str()) != old)
        })
        .await
        .unwrap_or_else(|| panic!("target Secret not updated within {timeout:?}"))
    }

    /// Replaces the PAT Secret's data (replace, not merge, so keys can disappear).
    async fn set_pat_secret(&self, data: &[(&str, &str)]) {
        let mut s = self.secrets().get(PAT_SECRET).await.unwrap();
        s.data = Some(secret_data(data));
        self.secrets()
            .replace(PAT_SECRET, &PostParams::default(), &s)
            .await
            .unwrap();
    }

    async fn can_i(&self, verb: &str, what: &str) -> bool {
        can_i_with(
            &self.kube,
            &self.sa.kubeconfig,
            &[verb, what, "-n", &self.ns],
        )
        .await
    }
}

/// Waits (30 s at most) until publishing to the Secret has failed at least once.
async fn wait_secret_sink_error(proc: &RefresherProc) {
    proc.wait_metric(
        "ls_token_refresher_sink_write_errors_total{sink=\"secret\"}",
        1.0,
        Duration::from_secs(30),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_to_secret_as_least_privilege_identity() {
    let env = setup(30).await;
    // The identity really is least-privilege: RBAC enforced by the real apiserver.
    assert!(env.can_i("get", "secrets/ls-pat").await && env.can_i("watch", "secrets/ls-pat").await);
    assert!(env.can_i("patch", "secrets/ls-token").await);
    assert!(
        !env.can_i("create", "secrets").await,
        "the chart's Role must not create Secrets"
    );
    assert!(
        !env.can_i("get", "secrets/other").await,
        "must not read other Secrets"
    );
    assert!(
        !env.can_i("list", "secrets").await,
        "must not list all Secrets"
    );
    assert!(
        !env.can_i("patch", "secrets/ls-pat").await,
        "must not write the PAT Secret"
    );
    assert!(!env.can_i("delete", "secrets/ls-token").await);
    let other: Api<Secret> = Api::namespaced(env.sa.client(&env.kube), &env.ns);
    env.secrets()
        .create(&PostParams::default(), &secret("other", &[]))
        .await
        .unwrap();
    assert!(
        other.get("other").await.is_err(),
        "the user can read another Secret"
    );

    // The chart created the target empty (with Helm's labels); the refresher fills in its keys.
    assert!(
        env.target().await.is_none(),
        "the target starts without data"
    );
    let mut proc = env.start("s2s", None, &[]);
    proc.wait_ready(200, Duration::from_secs(60)).await;
    let (t1, auth1, exp1) = env.wait_target_change(None, Duration::from_secs(10)).await;
    assert_eq!(auth1, format!("Bearer {t1}"));
    assert_eq!(
        env.ls.api().whoami(&auth1).await,
        200,
        "the real API accepts the token from the Secret"
    );
    let claims = jwt_claims(&t1);
    assert_eq!(exp1, rfc3339(claims["exp"].as_i64().unwrap()));
    let s = env.secrets().get(TARGET).await.unwrap();
    let meta = &s.metadata;
    // Our own label key: Helm and Kustomize own `app.kubernetes.io/managed-by` on the Secrets they
    // create, and applying it would conflict (issue 9, item 6).
    assert_eq!(
        meta.labels.as_ref().unwrap()["ls-token-refresher/managed"],
        "true"
    );
    assert_eq!(
        meta.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
        "Helm",
        "the chart's labels stay"
    );
    assert_eq!(
        meta.annotations.as_ref().unwrap()["ls-token-refresher/expires-at"],
        exp1
    );
    assert!(meta
        .managed_fields
        .as_ref()
        .unwrap()
        .iter()
        .any(|m| m.manager.as_deref() == Some("ls-token-refresher")
            && m.operation.as_deref() == Some("Apply")));
    // Nothing secret in labels or annotations.
    let meta_text = serde_json::to_string(&meta.labels).unwrap()
        + &serde_json::to_string(&meta.annotations).unwrap();
    assert!(!meta_text.contains("eyJ"));

    // Successive refreshes keep it current.
    let (t2, auth2, _) = env
        .wait_target_change(Some(&t1), Duration::from_secs(30))
        .await;
    assert_eq!(env.ls.api().whoami(&auth2).await, 200);
    let (t3, auth3, _) = env
        .wait_target_change(Some(&t2), Duration::from_secs(30))
        .await;
    assert_eq!(env.ls.api().whoami(&auth3).await, 200);
    assert_eq!(
        proc.metric("ls_token_refresher_token_valid").await,
        Some(1.0)
    );
    assert!(
        proc.metric(
            "ls_token_refresher_kube_requests_total{operation=\"apply_secret\",result=\"ok\"}"
        )
        .await
        .unwrap()
            >= 3.0
    );
    assert_eq!(proc.signal_and_wait("TERM").code(), Some(0));
    assert_no_secrets(&proc.log_text(), &[&env.pat, &t1, &t2, &t3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pat_rotation_deletion_and_missing_key_in_the_source_secret() {
    let env = setup(60).await;
    // Someone else's key in the target: we must never touch it.
    let theirs = serde_json::json!({"data": {"keep": base64::engine::general_purpose::STANDARD.encode("me")}});
    env.secrets()
        .patch(TARGET, &PatchParams::default(), &Patch::Merge(&theirs))
        .await
        .unwrap();
    let dir = env.tmp.path().join("tokens");
    std::fs::create_dir(&dir).unwrap();
    let mut proc = env.start("rotate", Some(&dir), &[]);
    proc.wait_ready(200, Duration::from_secs(60)).await;
    let (t1, _, _) = env.wait_target_change(None, Duration::from_secs(10)).await;
    assert_eq!(
        read_set(&dir).unwrap().0,
        t1,
        "both sinks hold the same token"
    );

    // Rotate the PAT in Label Studio (old one blacklisted at once) and in the Secret.
    let new_pat = env.ls.api().rotate(&t1, &env.pat).await;
    env.set_pat_secret(&[("pat", &new_pat)]).await;
    let (t2, auth2, _) = env
        .wait_target_change(Some(&t1), Duration::from_secs(15))
        .await;
    assert_eq!(
        env.ls.api().whoami(&auth2).await,
        200,
        "token from the rotated PAT works"
    );
    assert!(
        proc.metric(
            "ls_token_refresher_source_reloads_total{result=\"changed\",source=\"secret\"}"
        )
        .await
        .unwrap()
            >= 2.0
    );

    // Deleted: the last token stays, the reason is reported (metrics, readiness text on failure, Event).
    env.secrets()
        .delete(PAT_SECRET, &DeleteParams::default())
        .await
        .unwrap();
    proc.wait_metric(
        "ls_token_refresher_refresh_errors_total{reason=\"source_unavailable\"}",
        1.0,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        env.target().await.unwrap().0,
        t2,
        "last good token kept in the target Secret"
    );
    assert_eq!(
        read_set(&dir).unwrap().0,
        t2,
        "last good token kept in the directory"
    );
    assert_eq!(
        proc.admin_get("/readyz").await.0,
        200,
        "still valid until its own exp"
    );
    let events: Api<Event> = Api::namespaced(env.admin.clone(), &env.ns);
    let t0 = Instant::now();
    let event = loop {
        let list = events.list(&ListParams::default()).await.unwrap();
        if let Some(e) = list
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("SourceUnavailable"))
        {
            break e;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no SourceUnavailable Event"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let note = event.note.unwrap_or_default();
    assert!(note.contains("deleted") && !note.contains("eyJ"), "{note}");
    assert_eq!(
        event.regarding.and_then(|r| r.name).as_deref(),
        Some(PAT_SECRET)
    );

    // Re-created: recovers and refreshes at once.
    env.secrets()
        .create(
            &PostParams::default(),
            &secret(PAT_SECRET, &[("pat", &new_pat)]),
        )
        .await
        .unwrap();
    let (t3, auth3, _) = env
        .wait_target_change(Some(&t2), Duration::from_secs(15))
        .await;
    assert_eq!(env.ls.api().whoami(&auth3).await, 200);

    // Key missing: reported with the keys present (never values), then fixed.
    env.set_pat_secret(&[("wrong-key", &new_pat)]).await;
    let t0 = Instant::now();
    loop {
        let log = proc.log_text();
        if log.contains("is missing (keys present: [wrong-key])") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "missing key not reported; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.set_pat_secret(&[("pat", &new_pat)]).await;
    let (t4, auth4, _) = env
        .wait_target_change(Some(&t3), Duration::from_secs(15))
        .await;
    assert_eq!(env.ls.api().whoami(&auth4).await, 200);

    let target = env.secrets().get(TARGET).await.unwrap();
    assert_eq!(
        target.data.unwrap()["keep"].0,
        b"me",
        "other keys untouched"
    );
    assert_eq!(proc.signal_and_wait("TERM").code(), Some(0));
    assert_no_secrets(&proc.log_text(), &[&env.pat, &new_pat, &t1, &t2, &t3, &t4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_stopped_and_restarted_mid_run() {
    let mut env = setup(30).await;
    let dir = env.tmp.path().join("tokens");
    std::fs::create_dir(&dir).unwrap();
    let mut proc = env.start("apiserver", Some(&dir), &[]);
    proc.wait_ready(200, Duration::from_secs(60)).await;
    let (t1, _, _) = env.wait_target_change(None, Duration::from_secs(10)).await;

    env.kube.stop_apiserver();
    // The file sink keeps working while the API server is away, and nothing crashes.
    let t0 = Instant::now();
    let mut file_token = read_set(&dir).unwrap().0;
    while file_token == t1 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "file sink stalled while the apiserver was down"
        );
        assert!(
            proc.try_status().is_none(),
            "refresher exited; log:\n{}",
            proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        file_token = read_set(&dir).unwrap().0;
    }
    let (_, auth, _) = read_set(&dir).unwrap();
    assert_eq!(env.ls.api().whoami(&auth).await, 200);
    assert!(
        proc.metric("ls_token_refresher_sink_write_errors_total{sink=\"secret\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );

    env.kube.start_apiserver().await;
    // Back: the Secret sink catches up with a fresh, accepted token; the watch resumes.
    let (t2, auth2, _) = env
        .wait_target_change(Some(&t1), Duration::from_secs(60))
        .await;
    assert_eq!(env.ls.api().whoami(&auth2).await, 200);
    proc.wait_ready(200, Duration::from_secs(30)).await;
    assert_eq!(proc.signal_and_wait("TERM").code(), Some(0));
    assert_no_secrets(&proc.log_text(), &[&env.pat, &t1, &t2, &file_token]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_with_another_field_manager_is_reported_not_forced() {
    let env = setup(60).await;
    // Another manager owns `token` in the target.
    let theirs = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": TARGET, "namespace": env.ns},
        "data": {"token": base64::engine::general_purpose::STANDARD.encode("theirs")}
    });
    env.apply_target_as("someone-else", &theirs).await;

    let mut proc = env.start("conflict", None, &[]);
    wait_secret_sink_error(&proc).await;
    let (code, body) = proc.admin_get("/readyz").await;
    assert_eq!(code, 503);
    assert!(
        body.contains("publish_failed") && body.contains("conflict"),
        "{body}"
    );
    assert!(proc.log_text().contains("LS_TARGET_SECRET_FORCE"));
    assert_eq!(env.target().await.unwrap().0, "theirs", "not forced");
    assert_eq!(proc.signal_and_wait("TERM").code(), Some(0));

    // With force, it takes the keys over.
    let mut forced = env.start("forced", None, &["--target-secret-force"]);
    forced.wait_ready(200, Duration::from_secs(60)).await;
    let (_, auth, _) = env.target().await.unwrap();
    assert_eq!(env.ls.api().whoami(&auth).await, 200);
    assert_eq!(forced.signal_and_wait("TERM").code(), Some(0));
    assert_no_secrets(&proc.log_text(), &[&env.pat]);
    assert_no_secrets(&forced.log_text(), &[&env.pat]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_target_is_reported_with_what_to_do_and_never_created() {
    let env = setup(30).await;
    // The target is gone (deleted by someone): the Role may not create Secrets, so the refresher cannot
    // bring it back and must say what to do instead.
    env.secrets()
        .delete(TARGET, &DeleteParams::default())
        .await
        .unwrap();
    let mut proc = env.start("missing", None, &[]);
    wait_secret_sink_error(&proc).await;
    let log = proc.log_text();
    assert!(
        log.contains("does not exist and this identity may not create it")
            && log.contains("create it empty (the Helm chart does)")
            && !log.contains("or grant create"),
        "the message names the missing Secret and the fix; log:\n{log}"
    );
    let (code, body) = proc.admin_get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("publish_failed") && body.contains("does not exist"),
        "{body}"
    );
    assert!(
        env.secrets().get_opt(TARGET).await.unwrap().is_none(),
        "the target was created without create permission"
    );

    // The fix the message names: create it, empty. The next attempt publishes into it.
    create_secret(&env.admin, &env.ns, TARGET, &[]).await;
    let (t1, auth1, _) = env.wait_target_change(None, Duration::from_secs(30)).await;
    assert_eq!(env.ls.api().whoami(&auth1).await, 200);
    proc.wait_ready(200, Duration::from_secs(30)).await;
    assert_eq!(proc.signal_and_wait("TERM").code(), Some(0));
    assert_no_secrets(&proc.log_text(), &[&env.pat, &t1]);
}

/// `helm VERB lstr [CHART VALUES…] EXTRA… --namespace NS --kubeconfig <admin>` against the test's
/// apiserver, for the release `lstr` of the chart (`values` are ignored by `uninstall`).
async fn helm_release(kube: &ApiServer, ns: &str, verb: &str, values: &[String], extra: &[&str]) {
    let kubeconfig = kube.admin_kubeconfig_path();
    let mut all = vec![verb, "lstr"];
    if verb != "uninstall" {
        all.push(chart::CHART);
        all.extend(values.iter().map(String::as_str));
    }
    all.extend_from_slice(extra);
    all.extend([
        "--namespace",
        ns,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    chart::helm_ok(&all).await;
}

/// The names of the field managers of an object's fields, with their operation.
fn managers(s: &Secret) -> Vec<String> {
    s.metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| {
            format!(
                "{}/{}",
                m.manager.as_deref().unwrap_or("?"),
                m.operation.as_deref().unwrap_or("?")
            )
        })
        .collect()
}

/// The environment of the refresher container of the Deployment `helm install` created, as the
/// kubelet would give it: plain values as they are, the downward API resolved for a pod `pod`.
async fn chart_container_env(
    admin: &Client,
    ns: &str,
    pod: &str,
) -> (Vec<String>, Vec<(String, String)>) {
    use k8s_openapi::api::apps::v1::Deployment;
    let dep = Api::<Deployment>::namespaced(admin.clone(), ns)
        .get(chart::FULLNAME)
        .await
        .unwrap();
    let spec = dep.spec.template.spec.expect("a pod spec");
    let c = &spec.containers[0];
    let env = c
        .env
        .iter()
        .flatten()
        .map(|e| {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("metadata.name") => pod.to_string(),
                        Some("metadata.namespace") => ns.to_string(),
                        other => panic!("{}: unexpected valueFrom {other:?}", e.name),
                    }
                }
                (None, None) => String::new(),
            };
            (e.name.clone(), value)
        })
        .collect();
    (c.args.clone().unwrap_or_default(), env)
}

/// Issue 9, items 5 and 6: the target Secret `helm install` created (empty, `managed-by: Helm`, owned by
/// Helm's field manager) is kept current by the real binary running with the chart's own configuration
/// as the chart's ServiceAccount — no 409 — and `helm upgrade` (server-side apply, then Helm 3's
/// three-way merge) leaves the token keys alone; `helm uninstall` keeps the Secret and a new install
/// adopts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_created_target_is_kept_current_across_helm_upgrade() {
    let (kube, ls) = tokio::join!(ApiServer::start(), LabelStudio::start_with_ttl(30));
    let admin = kube.admin_client().await;
    let ns = kube.create_namespace("helm").await;
    let pat = ls.api().create_pat().await;
    create_secret(&admin, &ns, PAT_SECRET, &[("pat", &pat)]).await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let url = format!("labelStudio.url={}", ls.url());
    let mut values: Vec<String> = chart::name_values(PAT_SECRET, TARGET);
    values.extend(["--set".into(), url]);
    // A cadence that fits a 30 s token (the chart's defaults are for 5-minute tokens).
    for v in [
        "targetSecret.propagationMargin=0s",
        "timing.minLead=5s",
        "timing.jitter=0s",
        "timing.backoffInitial=200ms",
        "timing.backoffMax=2s",
        "logging.level=debug",
    ] {
        values.extend(["--set".into(), v.into()]);
    }
    // --set would make the number a string, which the schema refuses.
    values.extend(["--set-json".into(), "timing.refreshFraction=0.5".into()]);
    let helm = |verb, extra| helm_release(&kube, &ns, verb, &values, extra);

    helm("install", &[]).await;
    let created = secrets.get(TARGET).await.unwrap();
    assert!(created.data.is_none(), "the chart renders no keys");
    assert_eq!(
        created.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
        "Helm"
    );
    let helm_managers = managers(&created);
    assert!(
        !helm_managers.is_empty()
            && helm_managers
                .iter()
                .all(|m| !m.starts_with("ls-token-refresher")),
        "{helm_managers:?}"
    );

    // The refresher as the chart's pod would run: the chart's args and env, the chart's ServiceAccount.
    let sa = chart::service_account(&kube, &ns, chart::FULLNAME).await;
    let (args, env) = chart_container_env(&admin, &ns, "lstr-test-pod").await;
    assert_eq!(args.first().map(String::as_str), Some("run"));
    let kubeconfig = sa.kubeconfig.to_str().unwrap().to_string();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend([
        ("KUBECONFIG", kubeconfig.as_str()),
        ("HOME", "/nonexistent"),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let rest: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    let mut proc = RefresherProc::start(tmp.path(), "helm", &rest, &env);
    proc.wait_ready(200, Duration::from_secs(60)).await;

    let token_of = |s: &Secret| data_of(s, "token").unwrap_or_default();
    let current = || async {
        let s = secrets.get(TARGET).await.unwrap();
        let auth = data_of(&s, "authorization").expect("authorization key");
        (s, auth)
    };
    let (s, auth) = current().await;
    let mut tokens = vec![token_of(&s)];
    assert_eq!(ls.api().whoami(&auth).await, 200);
    let both = managers(&s);
    assert!(
        both.iter().any(|m| m == "ls-token-refresher/Apply") && both.len() > 1,
        "Helm's and the refresher's field managers share the Secret: {both:?}"
    );

    // Upgrades that change the Secret's own metadata (a label on every object), so Helm really applies
    // it: first as installed (server-side apply), then with Helm 3's client-side three-way merge.
    for (extra, label) in [
        (&["--set", "commonLabels.lstr-upgrade=one"][..], "one"),
        (
            &[
                "--set",
                "commonLabels.lstr-upgrade=two",
                "--server-side=false",
            ][..],
            "two",
        ),
    ] {
        helm("upgrade", extra).await;
        // The chart's Lease (issue 16): Helm renders no spec, so the upgrade leaves the holder the
        // refresher (running with the chart's LS_LEADER_ELECT) wrote.
        let lease =
            Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(admin.clone(), &ns)
                .get(chart::FULLNAME)
                .await
                .unwrap();
        assert!(
            lease
                .spec
                .and_then(|s| s.holder_identity)
                .is_some_and(|h| !h.is_empty()),
            "helm upgrade ({label}) kept the Lease's holder"
        );
        let (s, auth) = current().await;
        assert_eq!(
            s.metadata
                .labels
                .as_ref()
                .unwrap()
                .get("lstr-upgrade")
                .map(String::as_str),
            Some(label),
            "helm upgrade applied the Secret"
        );
        for key in ["token", "authorization", "expires_at"] {
            assert!(
                data_of(&s, key).is_some_and(|v| !v.is_empty()),
                "{key} lost by helm upgrade ({label})"
            );
        }
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()["ls-token-refresher/managed"],
            "true",
            "our label survives"
        );
        assert_eq!(ls.api().whoami(&auth).await, 200);
        // The refresher keeps publishing into the upgraded Secret without a conflict.
        let last = tokens.last().unwrap().clone();
        let next = poll(
            Duration::from_secs(40),
            Duration::from_millis(200),
            || async {
                let s = secrets.get(TARGET).await.ok()?;
                Some(token_of(&s)).filter(|t| !t.is_empty() && *t != last)
            },
        )
        .await
        .unwrap_or_else(|| {
            panic!(
                "no refresh after the upgrade ({label}); log:\n{}",
                proc.log_text()
            )
        });
        tokens.push(next);
    }
    let (_, auth) = current().await;
    assert_eq!(ls.api().whoami(&auth).await, 200);
    assert_eq!(
        proc.metric("ls_token_refresher_sink_write_errors_total{sink=\"secret\"}")
            .await
            .unwrap_or(0.0),
        0.0,
        "a publish failed (409?); log:\n{}",
        proc.log_text()
    );
    assert!(!proc.log_text().contains("conflict"), "{}", proc.log_text());
    assert_eq!(proc.signal_and_wait("TERM").code(), Some(0));
    let log = proc.log_text();

    // Uninstall keeps the Secret (resource-policy keep) with its keys; installing again adopts it.
    helm("uninstall", &[]).await;
    let kept = secrets.get(TARGET).await.unwrap();
    assert_eq!(
        token_of(&kept),
        *tokens.last().unwrap(),
        "uninstall kept the keys"
    );
    helm("install", &[]).await;
    let adopted = secrets.get(TARGET).await.unwrap();
    assert_eq!(
        token_of(&adopted),
        *tokens.last().unwrap(),
        "a new install kept the keys"
    );

    let mut all: Vec<&str> = tokens.iter().map(String::as_str).collect();
    all.push(&pat);
    assert_no_secrets(&log, &all);
}
