//! PAT rotation (issue 17) against a real Label Studio 1.23.2 and a real kube-apiserver: the real
//! binary as the chart's ServiceAccount (the chart's Role, rendered with `pat.rotation.every`),
//! talking to Label Studio through the fault proxy, which records every rotate request and every
//! new PAT Label Studio answered with — delivered or not.
//!
//! - `rotates_under_load_and_survives_a_lost_answer_and_a_kill`: one fixture, three phases.
//!   1. Rotation every 5 s for ≥ 5 rotations while a reader reads the target Secret every 0.3 s
//!      and calls the API with each token it sees: every one is accepted; the PAT Secret always
//!      holds a live PAT; each replaced PAT is refused by Label Studio afterwards.
//!   2. The rotate answer dropped after Label Studio committed: repaired (the lost PAT is
//!      blacklisted, a new one created and written back), no person.
//!   3. SIGKILL the moment the rotate answer is written: the PAT Secret then holds a dead PAT —
//!      what any tool without the recovery path is left with — and the restarted process repairs
//!      it with the access token it had published to the target Secret.
//! - `refusals_and_a_single_rotator`: write-back forbidden by RBAC → no rotate call ever, counted
//!   `refused`, said in the log; a PAT key written by another manager (External Secrets) →
//!   refused with that reason; two replicas with leader election → one rotates.
//! - `a_pat_file_is_rotated_in_place`: `--pat-file` outside any kubelet mount.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    api::{Api, Patch, PatchParams, PostParams},
    Client,
};
use ls_token_refresher_e2e::{
    chart::{self, SaIdentity},
    fault_proxy::{Fault, FaultProxy},
    kube_api::{data_of, secret},
    kube_apiserver::ApiServer,
    label_studio::LabelStudio,
    log_scan::assert_no_secrets,
    ls_api::{detail, http_client, status_with},
    refresher::{run_to_end, RefresherProc},
    wait::wait_for,
};

const PAT_SECRET: &str = "ls-pat";
const TARGET: &str = "ls-token";
/// Access tokens live 60 s: several refreshes per phase, and the recovery window (an access token
/// issued before the rotation) is a minute.
const TTL: u64 = 60;
/// The shortest rotation period the binary accepts.
const EVERY: &str = "5s";
const ROTATED: &str = "ls_token_refresher_pat_rotations_total{result=\"rotated\"}";
const RECOVERED: &str = "ls_token_refresher_pat_rotations_total{result=\"recovered\"}";
const REFUSED: &str = "ls_token_refresher_pat_rotations_total{result=\"refused\"}";

struct Env {
    kube: ApiServer,
    ls: LabelStudio,
    admin: Client,
    ns: String,
    sa: SaIdentity,
    proxy: FaultProxy,
    tmp: tempfile::TempDir,
}

/// Both servers, a namespace, the PAT Secret created as `kubectl create secret` does (field
/// manager `kubectl-create`), the chart's RBAC rendered with `sets`, the fault proxy.
async fn setup(prefix: &str, sets: &[&str]) -> (Env, String) {
    let (kube, ls) = tokio::join!(ApiServer::start(), LabelStudio::start_with_ttl(TTL));
    let admin = kube.admin_client().await;
    let ns = kube.create_namespace(prefix).await;
    let pat = ls.api().create_pat().await;
    create_pat_secret(&admin, &ns, &pat, "kubectl-create").await;
    let sa = chart::install_rbac_with(&kube, &ns, PAT_SECRET, TARGET, sets).await;
    let proxy = FaultProxy::start(&ls.url()).await;
    let env = Env {
        kube,
        ls,
        admin,
        ns,
        sa,
        proxy,
        tmp: tempfile::tempdir().unwrap(),
    };
    (env, pat)
}

async fn create_pat_secret(admin: &Client, ns: &str, pat: &str, manager: &str) {
    let api: Api<Secret> = Api::namespaced(admin.clone(), ns);
    let pp = PostParams {
        field_manager: Some(manager.into()),
        ..Default::default()
    };
    api.create(&pp, &secret(PAT_SECRET, &[("pat", pat)]))
        .await
        .unwrap();
}

impl Env {
    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    async fn key(&self, name: &str, key: &str) -> Option<String> {
        data_of(&self.secrets().get(name).await.ok()?, key)
    }

    async fn pat_annotations(&self) -> std::collections::BTreeMap<String, String> {
        let s = self.secrets().get(PAT_SECRET).await.unwrap();
        s.metadata.annotations.unwrap_or_default()
    }

    async fn stored_pat(&self) -> String {
        self.key(PAT_SECRET, "pat")
            .await
            .expect("the PAT Secret holds a PAT")
    }

    fn start(&self, name: &str, extra: &[&str]) -> RefresherProc {
        let url = self.proxy.url();
        let mut args = vec![
            "--url",
            &url,
            "--pat-secret",
            PAT_SECRET,
            "--target-secret",
            TARGET,
            "--log-level",
            "debug",
            "--backoff-initial",
            "200ms",
            "--backoff-max",
            "2s",
            "--propagation-margin",
            "0s",
            "--min-lead",
            "5s",
            "--jitter",
            "0s",
        ];
        args.extend_from_slice(extra);
        RefresherProc::start(
            self.tmp.path(),
            name,
            &args,
            &[
                ("KUBECONFIG", self.sa.kubeconfig.to_str().unwrap()),
                ("HOME", "/nonexistent"),
            ],
        )
    }

    /// Label Studio's verdict on a PAT: Ok(()) when it refreshes, Err(detail) otherwise.
    async fn pat_works(&self, pat: &str) -> Result<(), String> {
        let (status, body) = self.ls.api().refresh(pat).await;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("HTTP {status}: {}", detail(&body)))
        }
    }

    async fn assert_refused_as_blacklisted(&self, pat: &str, what: &str) {
        match self.pat_works(pat).await {
            Err(d) if d.contains("blacklisted") => {}
            other => {
                panic!("{what}: expected Label Studio to refuse it as blacklisted, got {other:?}")
            }
        }
    }

    /// Rotate calls at least the period apart (less: a second rotator, or a rotation loop).
    fn assert_one_rotator(&self) {
        let rotations = self.rotate_requests();
        for w in rotations.windows(2) {
            let gap = w[1].duration_since(w[0]).as_secs_f64();
            assert!(
                gap >= 4.5,
                "two rotations {gap:.2} s apart: the period is 5 s"
            );
        }
    }

    fn rotate_requests(&self) -> Vec<Instant> {
        self.proxy
            .requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/api/token/rotate"))
            .map(|r| r.at)
            .collect()
    }
}

/// Reads the target Secret every 0.3 s and calls whoami with each new token: counts tokens seen
/// and any refused.
fn start_reader(
    env: &Env,
    stop: Arc<AtomicBool>,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<AtomicUsize>,
    Arc<Mutex<Vec<String>>>,
) {
    let secrets = env.secrets();
    let whoami = format!("{}/api/current-user/whoami", env.ls.url());
    let client = http_client();
    let seen = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let (s2, r2) = (seen.clone(), refused.clone());
    let task = tokio::spawn(async move {
        let mut last = String::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(s) = secrets.get(TARGET).await {
                if let Some(auth) = data_of(&s, "authorization").filter(|a| !a.is_empty()) {
                    let status = status_with(&client, &whoami, &auth).await;
                    if auth != last {
                        s2.fetch_add(1, Ordering::Relaxed);
                        last = auth.clone();
                    }
                    if status != 200 {
                        r2.lock().unwrap().push(format!(
                            "HTTP {status} (token #{})",
                            s2.load(Ordering::Relaxed)
                        ));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    (task, seen, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotates_under_load_and_survives_a_lost_answer_and_a_kill() {
    let (env, first_pat) = setup("rot", &["pat.rotation.every=5s"]).await;
    let mut p = env.start("rotator", &["--rotate-pat-every", EVERY]);
    p.wait_ready(200, Duration::from_secs(60)).await;

    // 1. ≥ 5 rotations under a reader; every PAT the Secret held is collected.
    let stop = Arc::new(AtomicBool::new(false));
    let (reader, seen, refused) = start_reader(&env, stop.clone());
    let mut pats = vec![first_pat.clone()];
    let t0 = Instant::now();
    while p.metric(ROTATED).await.unwrap_or(0.0) < 5.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "fewer than 5 rotations in 90 s; log:\n{}",
            p.log_text()
        );
        let now = env.stored_pat().await;
        if pats.last() != Some(&now) {
            pats.push(now);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the last one be used and read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    let current = env.stored_pat().await;
    if pats.last() != Some(&current) {
        pats.push(current.clone());
    }
    let refused = refused.lock().unwrap().clone();
    eprintln!(
        "ROTATION-FIGURES load: {} rotations in {:.1} s, {} PATs seen in the Secret, {} distinct tokens read, {} refused",
        p.metric(ROTATED).await.unwrap_or(0.0),
        t0.elapsed().as_secs_f64(),
        pats.len(),
        seen.load(Ordering::Relaxed),
        refused.len()
    );
    assert!(
        refused.is_empty(),
        "a reader saw refused tokens: {refused:?}"
    );
    assert!(
        seen.load(Ordering::Relaxed) >= 5,
        "the reader saw a new token after each rotation"
    );
    assert!(
        pats.len() >= 6,
        "the Secret held each rotated PAT: {} seen",
        pats.len()
    );
    env.pat_works(&current)
        .await
        .expect("the Secret holds a live PAT");
    for old in &pats[..pats.len() - 1] {
        env.assert_refused_as_blacklisted(old, "a replaced PAT")
            .await;
    }
    env.assert_one_rotator();

    // 2. The next rotate answer is lost after Label Studio committed.
    let before = env.stored_pat().await;
    let lost_before = env.proxy.rotated_pats().len();
    env.proxy.scope(Some("/api/token/rotate"));
    env.proxy.set(Fault::DropAnswer);
    p.wait_metric(RECOVERED, 1.0, Duration::from_secs(30)).await;
    env.proxy.set(Fault::Pass);
    let lost = env.proxy.rotated_pats()[lost_before].clone();
    let repaired = env.stored_pat().await;
    assert_ne!(repaired, before);
    assert_ne!(
        repaired, lost,
        "the lost PAT was never seen by the refresher"
    );
    env.pat_works(&repaired)
        .await
        .expect("the repaired PAT works");
    env.assert_refused_as_blacklisted(&before, "the PAT the lost rotation replaced")
        .await;
    env.assert_refused_as_blacklisted(&lost, "the PAT whose answer was lost")
        .await;
    p.wait_ready(200, Duration::from_secs(10)).await;

    // 3. SIGKILL the moment the rotate answer is written, before the write-back.
    let dead = env.stored_pat().await;
    let published = env.key(TARGET, "token").await.unwrap();
    env.proxy.set(Fault::AnswerThenKill(p.pid()));
    let status = p.wait_exit(Duration::from_secs(30));
    env.proxy.set(Fault::Pass);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "killed by the proxy"
    );
    assert_eq!(
        env.stored_pat().await,
        dead,
        "the kill landed before the write-back"
    );
    // Without the recovery path this is the end: the Secret's PAT is dead, the new one unknown.
    env.assert_refused_as_blacklisted(&dead, "the Secret's PAT after the kill")
        .await;
    assert!(env.key(PAT_SECRET, "pat").await.is_some());
    let annotations = env.pat_annotations().await;
    assert!(
        annotations.contains_key("ls-token-refresher/pat-rotation"),
        "the intent survived the kill: {annotations:?}"
    );
    let kill_log = p.log_text();

    let mut q = env.start("restarted", &["--rotate-pat-every", EVERY]);
    q.wait_metric(RECOVERED, 1.0, Duration::from_secs(40)).await;
    q.wait_ready(200, Duration::from_secs(20)).await;
    let after = env.stored_pat().await;
    env.pat_works(&after)
        .await
        .expect("the restarted process left a live PAT");
    let log = q.log_text();
    assert!(log.contains("repairing with an access token"), "{log}");
    let new_token = env.key(TARGET, "token").await.unwrap();
    assert_ne!(new_token, published, "a token of the new PAT is published");

    // No PAT, access token or lost PAT in any log.
    let mut secrets: Vec<String> = pats.clone();
    secrets.extend(env.proxy.rotated_pats());
    secrets.extend(env.proxy.tokens());
    secrets.push(after);
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    for text in [p.log_text(), kill_log, q.log_text()] {
        assert_no_secrets(&text, &secrets);
    }
    drop(q);
    drop(env.kube);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_a_single_rotator() {
    // The chart without rotation: its Role has no patch on the PAT Secret.
    let (env, pat) = setup("rot-ref", &[]).await;
    let mut p = env.start("forbidden", &["--rotate-pat-every", EVERY]);
    p.wait_ready(200, Duration::from_secs(60)).await;
    p.wait_metric(REFUSED, 1.0, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        env.rotate_requests().is_empty(),
        "no rotation attempted without write-back"
    );
    let log = p.log_text();
    assert!(
        log.contains("forbidden") && log.contains("patch"),
        "the refusal names RBAC patch:\n{log}"
    );
    env.pat_works(&pat).await.expect("the PAT is untouched");
    assert_eq!(env.stored_pat().await, pat);
    drop(p);
    // `check` says the same, and fails.
    let check = |extra: &'static str| {
        let url = env.ls.url();
        let kubeconfig = env.sa.kubeconfig.to_str().unwrap().to_owned();
        async move {
            tokio::task::spawn_blocking(move || {
                run_to_end(
                    &[
                        "check",
                        "--url",
                        &url,
                        "--pat-secret",
                        PAT_SECRET,
                        "--rotate-pat-every",
                        extra,
                    ],
                    &[
                        ("KUBECONFIG", kubeconfig.as_str()),
                        ("HOME", "/nonexistent"),
                    ],
                )
            })
            .await
            .unwrap()
        }
    };
    let out = check(EVERY).await;
    assert!(!out.status.success(), "check fails:\n{}", out.stdout);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("[FAIL] pat rotation:") && l.contains("forbidden")),
        "check names the rotation problem:\n{}",
        out.stdout
    );

    // The PAT key written by another controller: refused with its name, even with RBAC.
    let _sa = chart::install_rbac_with(
        &env.kube,
        &env.ns,
        PAT_SECRET,
        TARGET,
        &["pat.rotation.every=5s"],
    )
    .await;
    let pat_b64 = base64_of(&pat);
    env.secrets()
        .patch(
            PAT_SECRET,
            &PatchParams::apply("external-secrets").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": { "name": PAT_SECRET },
                "data": { "pat": pat_b64 },
            })),
        )
        .await
        .unwrap();
    let mut p = env.start("foreign", &["--rotate-pat-every", EVERY]);
    p.wait_ready(200, Duration::from_secs(60)).await;
    p.wait_metric(REFUSED, 1.0, Duration::from_secs(20)).await;
    let log = p.log_text();
    assert!(
        log.contains("owned_by_other") && log.contains("\"external-secrets\""),
        "{log}"
    );
    assert!(env.rotate_requests().is_empty());
    drop(p);
    let out = check(EVERY).await;
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("[FAIL] pat rotation:") && l.contains("external-secrets")),
        "{}",
        out.stdout
    );

    // Nothing manages the key any more: the Secret is recreated as the refusal says.
    env.secrets()
        .delete(PAT_SECRET, &Default::default())
        .await
        .unwrap();
    wait_for(Duration::from_secs(10), || async {
        env.secrets().get_opt(PAT_SECRET).await.unwrap().is_none()
    })
    .await
    .expect("the PAT Secret is gone");
    create_pat_secret(&env.admin, &env.ns, &pat, "kubectl-create").await;
    let elect = |name: &'static str| {
        env.start(
            name,
            &[
                "--rotate-pat-every",
                EVERY,
                "--leader-elect",
                "--lease-name",
                chart::FULLNAME,
                "--lease-duration",
                "6s",
                "--lease-renew-deadline",
                "4s",
                "--lease-retry-period",
                "1s",
            ],
        )
    };
    let out = check(EVERY).await;
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("[ok]   pat rotation:")
                && l.contains("dry-run write-back was accepted")),
        "{}",
        out.stdout
    );
    let a = elect("replica-a");
    let b = elect("replica-b");
    let t0 = Instant::now();
    let both = |x: f64, y: f64| x + y;
    loop {
        let (x, y) = (
            a.metric(ROTATED).await.unwrap_or(0.0),
            b.metric(ROTATED).await.unwrap_or(0.0),
        );
        if both(x, y) >= 3.0 {
            assert!(x == 0.0 || y == 0.0, "both replicas rotated: {x} and {y}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "3 rotations in 60 s; logs:\n{}\n{}",
            a.log_text(),
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    env.assert_one_rotator();
    let current = env.stored_pat().await;
    env.pat_works(&current)
        .await
        .expect("the Secret holds a live PAT");
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pat_file_is_rotated_in_place() {
    let ls = LabelStudio::start_with_ttl(TTL).await;
    let tmp = tempfile::tempdir().unwrap();
    let pat_file = tmp.path().join("pat");
    let first = ls.api().create_pat().await;
    std::fs::write(&pat_file, format!("{first}\n")).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let url = ls.url();
    let p = RefresherProc::start(
        tmp.path(),
        "file",
        &[
            "--url",
            &url,
            "--pat-file",
            pat_file.to_str().unwrap(),
            "--token-dir",
            out.to_str().unwrap(),
            "--rotate-pat-every",
            EVERY,
            "--log-level",
            "debug",
        ],
        &[],
    );
    p.wait_metric(ROTATED, 2.0, Duration::from_secs(60)).await;
    let now = std::fs::read_to_string(&pat_file)
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(now, first);
    let works = wait_for(Duration::from_secs(5), || async {
        ls.api().refresh(&now).await.0 == 200
    })
    .await;
    assert!(works.is_some(), "the file holds a live PAT");
    let (status, body) = ls.api().refresh(&first).await;
    assert!(
        status == 401 && detail(&body).contains("blacklisted"),
        "the first PAT is dead: {status}"
    );
    assert!(
        !tmp.path().join("pat.rotation").exists(),
        "no intent left behind"
    );
    let token = std::fs::read_to_string(out.join("authorization")).unwrap();
    assert_eq!(ls.api().whoami(&token).await, 200);
}
