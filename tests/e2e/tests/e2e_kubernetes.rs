//! End to end on a real kube-apiserver (+ etcd) and a real Label Studio 1.23.2: PAT in a Secret →
//! the real binary, running as a least-privilege identity (only the shipped Role, enforced by the
//! apiserver's RBAC) → a target Secret whose `authorization` the real API accepts.

use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::{core::v1::Secret, events::v1::Event};
use kube::{
    api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams},
    Client,
};
use ls_token_refresher_e2e::{
    clock::rfc3339,
    jwt::jwt_claims,
    kube_api::{can_i, create_secret, data_of, secret, secret_data},
    kube_apiserver::{ApiServer, Identity},
    label_studio::LabelStudio,
    log_scan::assert_no_secrets,
    rbac::grant_minimal_role,
    refresher::RefresherProc,
    token_dir::read_set,
    wait::poll,
};

const PAT_SECRET: &str = "ls-pat";
const TARGET: &str = "ls-token";

struct Env {
    kube: ApiServer,
    ls: LabelStudio,
    admin: Client,
    ns: String,
    pat: String,
    tmp: tempfile::TempDir,
}

async fn setup(ttl: u64) -> Env {
    let (kube, ls) = tokio::join!(ApiServer::start(), LabelStudio::start_with_ttl(ttl));
    let admin = kube.admin_client().await;
    let ns = kube.create_namespace("e2e").await;
    let pat = ls.api().create_pat().await;
    create_secret(&admin, &ns, PAT_SECRET, &[("pat", &pat)]).await;
    grant_minimal_role(&admin, &ns, kube.user_name(), PAT_SECRET, TARGET).await;
    let tmp = tempfile::tempdir().unwrap();
    Env {
        kube,
        ls,
        admin,
        ns,
        pat,
        tmp,
    }
}

impl Env {
    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    /// Starts the refresher as the least-privilege user, PAT from the Secret, token to the target
    /// Secret (and to a directory when `dir` is set).
    fn start(&self, name: &str, dir: Option<&std::path::Path>, extra: &[&str]) -> RefresherProc {
        let kubeconfig = self.kube.write_user_kubeconfig(&self.ns);
        let url = self.ls.url();
        let mut args: Vec<&str> = vec![
            "--url",
            &url,
            "--pat-secret",
            PAT_SECRET,
            "--target-secret",
            TARGET,
            "--log-level",
            "trace",
            "--backoff-initial",
            "200ms",
            "--backoff-max",
            "2s",
            "--propagation-margin",
            "0s",
        ];
        let d;
        if let Some(dir) = dir {
            d = dir.to_str().unwrap().to_owned();
            args.extend(["--token-dir", &d]);
        }
        args.extend(extra.iter().copied());
        RefresherProc::start(
            self.tmp.path(),
            name,
            &args,
            &[
                ("KUBECONFIG", kubeconfig.to_str().unwrap()),
                ("HOME", "/nonexistent"),
            ],
        )
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
        can_i(&self.kube, Identity::User, &[verb, what, "-n", &self.ns]).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_to_secret_as_least_privilege_identity() {
    let env = setup(30).await;
    // The identity really is least-privilege: RBAC enforced by the real apiserver.
    assert!(env.can_i("get", "secrets/ls-pat").await && env.can_i("watch", "secrets/ls-pat").await);
    assert!(env.can_i("patch", "secrets/ls-token").await && env.can_i("create", "secrets").await);
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
    let other: Api<Secret> = Api::namespaced(env.kube.user_client(&env.ns).await, &env.ns);
    env.secrets()
        .create(&PostParams::default(), &secret("other", &[]))
        .await
        .unwrap();
    assert!(
        other.get("other").await.is_err(),
        "the user can read another Secret"
    );

    // The target does not exist yet: apply creates it.
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
    // Pre-existing target with someone else's key: we must never touch it.
    env.secrets()
        .create(&PostParams::default(), &secret(TARGET, &[("keep", "me")]))
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
    env.secrets()
        .patch(
            TARGET,
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&theirs),
        )
        .await
        .unwrap();

    let mut proc = env.start("conflict", None, &[]);
    proc.wait_metric(
        "ls_token_refresher_sink_write_errors_total{sink=\"secret\"}",
        1.0,
        Duration::from_secs(30),
    )
    .await;
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
