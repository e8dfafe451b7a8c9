//! `ls-token-refresher controller` on a real kube-apiserver + etcd and a real Label Studio 1.23.2
//! with two users and their PATs: token resources in two namespaces kept fresh across several
//! token lifetimes, status and `kubectl get`, PAT rotation and revocation, invalid specs and
//! connections, deletion through the owner reference (kube-controller-manager's garbage
//! collector), the confused-deputy attempts of a tenant (impersonated), and a restart that
//! exchanges nothing that is not due.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use ls_token_refresher_e2e::{
    clock::unix_now,
    controller_env::{pat_secret, token, ControllerEnv},
    jwt::jwt_claims,
    kube_api::secret,
    log_scan::assert_no_secrets,
    refresher::{metric_sum, RefresherProc},
    wait::poll,
};
use serde_json::json;

/// Access tokens live 20 s here: three lifetimes in a minute.
const TTL: u64 = 20;

fn exp_of(token: &str) -> i64 {
    jwt_claims(token)["exp"].as_i64().expect("exp claim")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_in_two_namespaces_stay_fresh_rotate_revoke_and_go_with_their_resource() {
    let mut env = ControllerEnv::start(TTL).await;
    env.start_garbage_collector();
    let ns_a = env.kube.create_namespace("ctl-a").await;
    let ns_b = env.kube.create_namespace("ctl-b").await;
    // Two Label Studio users, one PAT each.
    let pat_a = env.ls.api().create_pat().await;
    let (bob_id, _) = env
        .ls
        .create_user("bob@example.com", "unused-Passw0rd", true)
        .await;
    let bob_id = bob_id as i64;
    let pat_b = env.ls.mint_pat_for("bob@example.com", 86_400).await;
    env.create_secret(&ns_a, &pat_secret("pat", &pat_a, true))
        .await;
    env.create_secret(&ns_b, &pat_secret("pat", &pat_b, true))
        .await;
    // A Secret in B that is nobody's business: it must be untouched at the end.
    env.create_secret(&ns_b, &secret("bystander", &[("k", "v")]))
        .await;
    env.create_connection("ls", None, None).await;
    env.apply_json("ta", &token("t", "ls", "pat", "ls-token"), Some(&ns_a))
        .await;
    env.apply_json("tb", &token("t", "ls", "pat", "ls-token"), Some(&ns_b))
        .await;

    // The controller runs as the chart's ServiceAccount, with a Role in each served namespace.
    let ops = env.kube.create_namespace("ops").await;
    let sa = env.chart_identity(&ops, &[&ns_a, &ns_b]).await;
    let watch = format!("{ns_a},{ns_b}");
    let ctl = env.start_controller(
        "controller",
        Some(sa.kubeconfig.clone()),
        &["--watch-namespace", &watch],
    );
    env.wait_published(&ns_a, "t", &ctl).await;
    env.wait_published(&ns_b, "t", &ctl).await;

    // Ready once its caches are listed (bench/RESULTS.md §5 found /readyz stuck at 503 before the
    // caches got one waiter each).
    assert_eq!(
        ctl.admin_get("/readyz").await,
        (200, "ok\n".to_string()),
        "the controller's readiness"
    );
    // Each Secret holds its own user's token; status names the user and the expiry.
    let (_, auth_a, _, _) = env.target(&ns_a, "ls-token").await.expect("target A");
    let (_, auth_b, _, _) = env.target(&ns_b, "ls-token").await.expect("target B");
    let id_a = env.whoami_id(&auth_a).await.expect("A's token accepted");
    assert_eq!(
        env.whoami_id(&auth_b).await,
        Some(bob_id),
        "B's token is bob's"
    );
    assert_ne!(id_a, bob_id);
    let tb = env.token_obj(&ns_b, "t").await.unwrap();
    assert_eq!(tb["status"]["user"]["id"], bob_id);
    assert_eq!(tb["status"]["user"]["username"], "bob");
    assert_eq!(
        tb["status"]["observedGeneration"],
        tb["metadata"]["generation"]
    );
    let secret_b: Secret = Api::namespaced(env.admin.clone(), &ns_b)
        .get("ls-token")
        .await
        .unwrap();
    assert_eq!(secret_b.type_.as_deref(), Some("Opaque"));
    let owner = &secret_b.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("LabelStudioToken", Some(true))
    );
    assert_eq!(owner.uid, tb["metadata"]["uid"].as_str().unwrap());
    // `kubectl get` shows the printer columns.
    let out = env.kube.kubectl(["get", "lstoken", "-n", &ns_a]).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let header: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "REASON", "EXPIRES", "TARGET", "AGE"],
        "{text}"
    );
    assert!(
        text.lines().nth(1).is_some_and(|l| l.contains("True")
            && l.contains("token_published")
            && l.contains("ls-token")),
        "{text}"
    );

    // Three lifetimes: a reader of each Secret never sees an expired token, and every one it sees
    // is accepted by Label Studio (checked once per distinct token).
    let mut seen: [BTreeSet<String>; 2] = [BTreeSet::new(), BTreeSet::new()];
    let until = Instant::now() + Duration::from_secs(3 * TTL + 2);
    while Instant::now() < until {
        for (i, ns) in [&ns_a, &ns_b].into_iter().enumerate() {
            let (tok, auth, exp_note, _) =
                env.target(ns, "ls-token").await.expect("target present");
            let exp = exp_of(&tok);
            assert!(
                (exp as f64) > unix_now(),
                "{ns}: the Secret holds an expired token (exp {exp}, now {})",
                unix_now()
            );
            assert_eq!(
                exp_note,
                ls_token_refresher_e2e::clock::rfc3339(exp),
                "annotation = exp claim"
            );
            if seen[i].insert(tok.clone()) {
                assert!(
                    env.whoami_id(&auth).await.is_some(),
                    "{ns}: a published token is refused"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (i, s) in seen.iter().enumerate() {
        assert!(
            (3..=6).contains(&s.len()),
            "namespace {i}: {} distinct tokens over three {TTL} s lifetimes (expected one per refresh at ~2/3 of each)",
            s.len()
        );
    }
    // Status follows each refresh: its expiresAt is the Secret's.
    let (tok_b, ..) = env.target(&ns_b, "ls-token").await.unwrap();
    let tb = env.token_obj(&ns_b, "t").await.unwrap();
    let status_exp = tb["status"]["expiresAt"].as_str().unwrap().to_owned();
    assert_eq!(
        status_exp,
        ls_token_refresher_e2e::clock::rfc3339(exp_of(&tok_b))
    );

    // PAT Secret rotated: a new token from the new PAT within seconds, not at the next schedule.
    let pat_b2 = env.ls.mint_pat_for("bob@example.com", 86_400).await;
    env.ls.api().blacklist(&pat_b).await;
    let before = env.target(&ns_b, "ls-token").await.unwrap().0;
    let t0 = Instant::now();
    env.set_pat(&ns_b, "pat", &pat_b2).await;
    let fresh = poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            env.target(&ns_b, "ls-token")
                .await
                .filter(|t| t.0 != before)
        },
    )
    .await
    .expect("a new token after the PAT Secret changed");
    let took = t0.elapsed();
    assert!(env.whoami_id(&fresh.1).await == Some(bob_id));
    eprintln!(
        "PAT Secret change → new token in {:.2}s",
        took.as_secs_f64()
    );

    // PAT revoked: Ready=False revoked_pat at the next refresh; the last good token stays until
    // its own expiry; a new PAT recovers.
    env.ls.api().blacklist(&pat_a).await;
    env.wait_ready(
        &ns_a,
        "t",
        "False",
        "revoked_pat",
        Duration::from_secs(2 * TTL),
        &ctl,
    )
    .await;
    let (kept, kept_auth, _, _) = env.target(&ns_a, "ls-token").await.unwrap();
    assert!(
        (exp_of(&kept) as f64) > unix_now(),
        "the last good token is kept while valid"
    );
    assert!(
        env.whoami_id(&kept_auth).await.is_some(),
        "and it still works"
    );
    assert!(
        env.event_reasons(&ns_a, None)
            .await
            .iter()
            .any(|r| r == "RevokedPat"),
        "a Warning Event on the token resource"
    );
    let pat_a2 = env.ls.api().create_pat().await;
    env.set_pat(&ns_a, "pat", &pat_a2).await;
    env.wait_ready(
        &ns_a,
        "t",
        "True",
        "token_published",
        Duration::from_secs(15),
        &ctl,
    )
    .await;

    // Invalid spec and a connection that does not exist: clear conditions, no crash.
    let mut bad = token("bad", "ls", "pat", "pat");
    bad["metadata"]["name"] = json!("bad");
    env.apply_json("bad", &bad, Some(&ns_a)).await;
    env.wait_ready(
        &ns_a,
        "bad",
        "False",
        "invalid_spec",
        Duration::from_secs(15),
        &ctl,
    )
    .await;
    env.apply_json(
        "noconn",
        &token("noconn", "missing", "pat", "other"),
        Some(&ns_a),
    )
    .await;
    env.wait_ready(
        &ns_a,
        "noconn",
        "False",
        "connection_not_found",
        Duration::from_secs(15),
        &ctl,
    )
    .await;
    // ... which recovers when the admin creates it.
    env.create_connection("missing", None, None).await;
    env.wait_ready(
        &ns_a,
        "noconn",
        "True",
        "token_published",
        Duration::from_secs(20),
        &ctl,
    )
    .await;
    // A connection that does not admit the namespace.
    env.create_connection("team-only", None, Some(json!({"team": "ml"})))
        .await;
    env.apply_json(
        "na",
        &token("na", "team-only", "pat", "other2"),
        Some(&ns_a),
    )
    .await;
    env.wait_ready(
        &ns_a,
        "na",
        "False",
        "connection_not_allowed",
        Duration::from_secs(15),
        &ctl,
    )
    .await;
    assert!(
        env.target(&ns_a, "other2").await.is_none(),
        "nothing written for a refused resource"
    );
    // ... until the namespace gets the label: the namespace watch re-evaluates it.
    let out = env
        .kube
        .kubectl(["label", "namespace", &ns_a, "team=ml"])
        .await;
    assert!(out.status.success());
    env.wait_ready(
        &ns_a,
        "na",
        "True",
        "token_published",
        Duration::from_secs(20),
        &ctl,
    )
    .await;

    // Deleting B's resource deletes its Secret (owner reference) and nothing else.
    let bystander_rv = Api::<Secret>::namespaced(env.admin.clone(), &ns_b)
        .get("bystander")
        .await
        .unwrap()
        .metadata
        .resource_version;
    let out = env
        .kube
        .kubectl(["delete", "lstoken", "t", "-n", &ns_b])
        .await;
    assert!(out.status.success());
    let gone = poll(
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async { env.target(&ns_b, "ls-token").await.is_none().then_some(()) },
    )
    .await;
    assert!(gone.is_some(), "the target Secret went with its resource");
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &ns_b);
    assert_eq!(
        secrets
            .get("bystander")
            .await
            .unwrap()
            .metadata
            .resource_version,
        bystander_rv
    );
    assert!(
        secrets.get_opt("pat").await.unwrap().is_some(),
        "the PAT Secret stays"
    );

    // Nothing secret in the log; metrics carry per-resource readiness.
    let log = ctl.log_text();
    assert_no_secrets(&log, &[&pat_a, &pat_a2, &pat_b, &pat_b2]);
    for t in seen.iter().flatten() {
        assert!(!log.contains(t.as_str()), "an access token in the log");
    }
    let metrics = ctl.admin_get("/metrics").await.1;
    assert!(
        metrics.contains(&format!(
            "ls_token_refresher_controller_token_ready{{name=\"t\",namespace=\"{ns_a}\"}} 1"
        )),
        "{metrics}"
    );
    // The deleted resource's series are gone (labels render sorted: name, namespace).
    assert!(
        !metrics.contains(&format!("name=\"t\",namespace=\"{ns_b}\"")),
        "{metrics}"
    );
    drop(ctl);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_cannot_borrow_the_controllers_rights() {
    let env = ControllerEnv::start(300).await;
    let ns = env.kube.create_namespace("tenant").await;
    let other = env.kube.create_namespace("other").await;
    // The tenant may manage token resources in their namespace, and nothing else.
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": { "name": "tokens" },
        "rules": [{ "apiGroups": ["ls-token-refresher.io"], "resources": ["labelstudiotokens"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"] }]
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": { "name": "tokens" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tokens" },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice" }]
    });
    env.apply_json("role", &role, Some(&ns)).await;
    env.apply_json("binding", &binding, Some(&ns)).await;
    let can = |args: Vec<String>| async {
        let mut a = vec!["auth".to_string(), "can-i".into()];
        a.extend(args);
        a.push("--as=alice".into());
        String::from_utf8_lossy(&env.kube.kubectl(a).await.stdout).trim() == "yes"
    };
    assert!(
        can(vec![
            "create".into(),
            "labelstudiotokens".into(),
            "-n".into(),
            ns.clone()
        ])
        .await
    );
    assert!(
        !can(vec![
            "get".into(),
            "secrets".into(),
            "-n".into(),
            ns.clone()
        ])
        .await
    );
    assert!(!can(vec!["create".into(), "labelstudioconnections".into()]).await);

    // A recording server stands for "a URL of the tenant's choice".
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil = format!("http://{}", listener.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = listener.accept().await {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });

    // Kubernetes 1.20 sets no kubernetes.io/metadata.name label (1.21+ does): select by a label of our own.
    let out = env
        .kube
        .kubectl(["label", "namespace", &other, "team=other"])
        .await;
    assert!(out.status.success());
    let pat = env.ls.api().create_pat().await;
    // A valid PAT in a Secret that did not opt in; an opted-in one; a victim Secret; a TLS Secret.
    env.create_secret(&ns, &pat_secret("private-pat", &pat, false))
        .await;
    env.create_secret(&ns, &pat_secret("pat", &pat, true)).await;
    env.create_secret(&other, &pat_secret("pat", &pat, true))
        .await;
    env.create_secret(&ns, &secret("app-config", &[("password", "hunter2")]))
        .await;
    let mut tls = secret("tls", &[("tls.crt", "x"), ("tls.key", "y")]);
    tls.type_ = Some("kubernetes.io/tls".into());
    env.create_secret(&ns, &tls).await;
    env.create_connection("ls", None, None).await;
    // The admin's connection to the "evil" URL admits only another namespace.
    env.create_connection("evil", Some(&evil), Some(json!({"team": "other"})))
        .await;

    // The strongest deputy the chart makes: cluster-wide Secret rights (no watchNamespaces).
    let ops = env.kube.create_namespace("ops").await;
    let sa = env.chart_identity(&ops, &[]).await;
    let ctl = env.start_controller("controller", Some(sa.kubeconfig.clone()), &[]);
    let as_alice = |file: &'static str, obj: serde_json::Value| {
        let env = &env;
        let ns = ns.clone();
        async move {
            let out = env
                .apply_json_as(file, &obj, Some(&ns), Some("alice"))
                .await;
            assert!(
                out.status.success(),
                "alice may create token resources: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &ns);
    let rv = |name: &'static str| {
        let secrets = secrets.clone();
        async move { secrets.get(name).await.unwrap().metadata.resource_version }
    };
    let (app_rv, tls_rv) = (rv("app-config").await, rv("tls").await);

    // 1. A PAT Secret that did not opt in is never read.
    as_alice("t1", token("t1", "ls", "private-pat", "t1-out")).await;
    // 2. An existing Secret of someone else is never written (nor a TLS one).
    as_alice("t2", token("t2", "ls", "pat", "app-config")).await;
    as_alice("t3", token("t3", "ls", "pat", "tls")).await;
    // 3. A connection not admitted for this namespace is never used.
    as_alice("t4", token("t4", "evil", "pat", "t4-out")).await;
    // 4. A URL or a namespace in the spec goes nowhere: the schema has no such fields (pruned).
    let mut sneaky = token("t5", "ls", "pat", "t5-out");
    sneaky["spec"]["url"] = json!(evil);
    sneaky["spec"]["patSecretRef"]["namespace"] = json!(other);
    as_alice("t5", sneaky).await;
    // 5. A name that tries to reach another namespace is invalid.
    as_alice("t6", token("t6", "ls", &format!("{other}/pat"), "t6-out")).await;

    env.wait_ready(
        &ns,
        "t1",
        "False",
        "pat_secret_unavailable",
        Duration::from_secs(30),
        &ctl,
    )
    .await;
    env.wait_ready(
        &ns,
        "t2",
        "False",
        "target_not_owned",
        Duration::from_secs(30),
        &ctl,
    )
    .await;
    env.wait_ready(
        &ns,
        "t3",
        "False",
        "target_not_owned",
        Duration::from_secs(30),
        &ctl,
    )
    .await;
    env.wait_ready(
        &ns,
        "t4",
        "False",
        "connection_not_allowed",
        Duration::from_secs(30),
        &ctl,
    )
    .await;
    env.wait_ready(
        &ns,
        "t6",
        "False",
        "invalid_spec",
        Duration::from_secs(30),
        &ctl,
    )
    .await;
    // t5 works, with the namespace's own opted-in PAT and the admin's connection: the extra
    // fields were dropped by the apiserver before anyone saw them.
    env.wait_ready(
        &ns,
        "t5",
        "True",
        "token_published",
        Duration::from_secs(30),
        &ctl,
    )
    .await;
    let t5 = env.token_obj(&ns, "t5").await.unwrap();
    assert!(
        t5["spec"].get("url").is_none() && t5["spec"]["patSecretRef"].get("namespace").is_none()
    );

    assert_eq!(
        rv("app-config").await,
        app_rv,
        "the victim Secret was not written"
    );
    assert_eq!(rv("tls").await, tls_rv, "the TLS Secret was not written");
    assert!(env.target(&ns, "t1-out").await.is_none());
    assert!(env.target(&ns, "t4-out").await.is_none());
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing was sent to the other URL"
    );
    // Exactly one exchange happened: t5's (t1..t4, t6 were refused before any call).
    let metrics = ctl.admin_get("/metrics").await.1;
    assert_eq!(
        metric_sum(
            &metrics,
            "ls_token_refresher_http_requests_total{code=\"2xx\",endpoint=\"refresh\""
        ),
        1.0,
        "{metrics}"
    );
    // And the tenant still cannot read what the controller wrote for them.
    assert!(
        !can(vec![
            "get".into(),
            "secret/t5-out".into(),
            "-n".into(),
            ns.clone()
        ])
        .await
    );
    assert_no_secrets(&ctl.log_text(), &[&pat]);
    drop(ctl);
}

/// Polls the controller's metrics until the series starting with `prefix` sum to at least `n`;
/// returns that /metrics text.
async fn wait_sum(ctl: &RefresherProc, prefix: &str, n: usize, timeout_s: u64) -> Option<String> {
    poll(
        Duration::from_secs(timeout_s),
        Duration::from_millis(250),
        || async {
            let m = ctl.admin_get("/metrics").await.1;
            (metric_sum(&m, prefix) >= n as f64).then_some(m)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_exchanges_nothing_that_is_not_due() {
    const N: usize = 200;
    let env = ControllerEnv::start(600).await;
    let ns = env.kube.create_namespace("restart").await;
    let pat = env.ls.api().create_pat().await;
    env.create_secret(&ns, &pat_secret("pat", &pat, true)).await;
    env.create_connection("ls", None, None).await;
    // 200 resources in one list file (one kubectl call).
    let items: Vec<serde_json::Value> = (0..N)
        .map(|i| token(&format!("t{i}"), "ls", "pat", &format!("out-{i}")))
        .collect();
    env.apply_json(
        "many",
        &json!({"apiVersion": "v1", "kind": "List", "items": items}),
        Some(&ns),
    )
    .await;
    let t0 = Instant::now();
    let ops = env.kube.create_namespace("ops").await;
    let sa = env.chart_identity(&ops, &[]).await;
    let ctl = env.start_controller(
        "first",
        Some(sa.kubeconfig.clone()),
        &["--max-concurrent-exchanges", "8"],
    );
    let all_ready = wait_sum(
        &ctl,
        "ls_token_refresher_controller_secret_writes_total{result=\"ok\"",
        N,
        180,
    )
    .await;
    assert!(
        all_ready.is_some(),
        "{N} Secrets written\n{}",
        ls_token_refresher_e2e::tail(&ctl.log_text(), 30)
    );
    eprintln!(
        "{N} tokens published in {:.1}s from start",
        t0.elapsed().as_secs_f64()
    );
    let first = ctl.admin_get("/metrics").await.1;
    assert_eq!(
        metric_sum(
            &first,
            "ls_token_refresher_http_requests_total{code=\"2xx\",endpoint=\"refresh\""
        ),
        N as f64,
        "one exchange per resource"
    );
    drop(ctl);

    // Restart: every token has ~9 minutes left; nothing is due.
    let ctl = env.start_controller(
        "second",
        Some(sa.kubeconfig.clone()),
        &["--max-concurrent-exchanges", "8"],
    );
    let reconciled = wait_sum(
        &ctl,
        "ls_token_refresher_controller_reconcile_duration_seconds_count",
        N,
        120,
    )
    .await
    .expect("every resource reconciled after the restart");
    assert_eq!(
        metric_sum(&reconciled, "ls_token_refresher_http_requests_total{"),
        0.0,
        "no request to Label Studio after a restart with valid tokens"
    );
    assert_eq!(
        metric_sum(
            &reconciled,
            "ls_token_refresher_controller_secret_writes_total{result=\"ok\""
        ),
        0.0,
        "no Secret rewritten"
    );
    assert_eq!(
        metric_sum(
            &reconciled,
            "ls_token_refresher_controller_status_writes_total{result=\"ok\""
        ),
        0.0,
        "no status rewritten"
    );

    // Refresh now: a new annotation value refreshes that one resource once, nothing else.
    let before = env.target(&ns, "out-7").await.expect("out-7").0;
    env.refresh_now(&ns, "t7", "1").await;
    let fresh = poll(
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async { env.target(&ns, "out-7").await.filter(|t| t.0 != before) },
    )
    .await;
    assert!(fresh.is_some(), "refresh-now did not refresh");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = ctl.admin_get("/metrics").await.1;
    assert_eq!(
        metric_sum(
            &m,
            "ls_token_refresher_http_requests_total{code=\"2xx\",endpoint=\"refresh\""
        ),
        1.0,
        "exactly one exchange for one refresh-now"
    );
    // Suspend: Ready=False suspended, no exchange, the Secret keeps its token.
    let out = env
        .kube
        .kubectl([
            "patch",
            "lstoken",
            "t8",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"suspend":true}}"#,
        ])
        .await;
    assert!(out.status.success());
    env.wait_ready(
        &ns,
        "t8",
        "False",
        "suspended",
        Duration::from_secs(15),
        &ctl,
    )
    .await;
    assert!(env.target(&ns, "out-8").await.is_some());
    drop(ctl);
}

/// PAT rotation from the token resource (`spec.rotatePatEvery`), as the chart's ServiceAccount:
/// the PAT Secret's key is replaced again and again, each replaced PAT is dead in Label Studio,
/// the target Secret's token keeps working, status and Events say so; a PAT key kept by another
/// manager (External Secrets) is refused and left alone; an invalid period is a clear condition;
/// and a rotation whose answer was lost (its intent recorded, the PAT rotated in Label Studio,
/// the new PAT never written back) is repaired with the access token the controller holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotate_pat_every_rotates_the_pat_secret_and_refuses_a_managed_one() {
    use kube::api::PostParams;
    use ls_token_refresher_e2e::{kube_api::data_of, ls_api::detail};

    const ROTATED: &str = "ls_token_refresher_pat_rotations_total{result=\"rotated\"}";
    const REFUSED: &str = "ls_token_refresher_pat_rotations_total{result=\"refused\"}";
    const RECOVERED: &str = "ls_token_refresher_pat_rotations_total{result=\"recovered\"}";
    let env = ControllerEnv::start(60).await;
    let ns = env.kube.create_namespace("ctl-rot").await;
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &ns);
    let create = |s: Secret, manager: &'static str| {
        let secrets = secrets.clone();
        async move {
            let pp = PostParams {
                field_manager: Some(manager.into()),
                ..Default::default()
            };
            secrets.create(&pp, &s).await.expect("create secret");
        }
    };
    // The admin's PAT, in a Secret made as `kubectl create secret` makes it, with a second key
    // that is nobody's business but the Secret owner's.
    let first_pat = env.ls.api().create_pat().await;
    let mut pat_obj = pat_secret("pat", &first_pat, true);
    pat_obj
        .data
        .as_mut()
        .unwrap()
        .insert("note".into(), k8s_openapi::ByteString(b"keep me".to_vec()));
    create(pat_obj, "kubectl-create").await;
    // Bob's PAT, kept by External Secrets (its field manager owns the key).
    env.ls
        .create_user("bob@example.com", "unused-Passw0rd", true)
        .await;
    let bob_pat = env.ls.mint_pat_for("bob@example.com", 86_400).await;
    create(pat_secret("bob-pat", &bob_pat, true), "external-secrets").await;
    // Carol's PAT: rotated rarely; its lost rotation is simulated below.
    env.ls
        .create_user("carol@example.com", "unused-Passw0rd", true)
        .await;
    let carol_pat = env.ls.mint_pat_for("carol@example.com", 86_400).await;
    create(pat_secret("carol-pat", &carol_pat, true), "kubectl-create").await;
    env.create_secret(&ns, &secret("bystander", &[("k", "v")]))
        .await;
    env.create_connection("ls", None, None).await;
    let with_every = |name: &str, pat: &str, target: &str, every: &str| {
        let mut t = token(name, "ls", pat, target);
        t["spec"]["rotatePatEvery"] = json!(every);
        t
    };
    env.apply_json("t", &with_every("t", "pat", "ls-token", "5s"), Some(&ns))
        .await;
    env.apply_json(
        "tb",
        &with_every("tb", "bob-pat", "bob-token", "5s"),
        Some(&ns),
    )
    .await;
    env.apply_json(
        "bad",
        &with_every("bad", "pat", "bad-token", "1s"),
        Some(&ns),
    )
    .await;
    env.apply_json(
        "tr",
        &with_every("tr", "carol-pat", "carol-token", "720h"),
        Some(&ns),
    )
    .await;
    let ops = env.kube.create_namespace("ops").await;
    let sa = env.chart_identity(&ops, &[&ns]).await;
    let ctl = env.start_controller(
        "controller",
        Some(sa.kubeconfig.clone()),
        &["--watch-namespace", &ns],
    );
    env.wait_published(&ns, "t", &ctl).await;

    // An invalid period: refused with a condition naming the field; nothing written for it.
    env.wait_ready(
        &ns,
        "bad",
        "False",
        "invalid_spec",
        Duration::from_secs(15),
        &ctl,
    )
    .await;
    let bad = env.token_obj(&ns, "bad").await.unwrap();
    let msg = bad["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap_or("");
    assert!(msg.contains("spec.rotatePatEvery"), "{msg}");
    assert!(env.target(&ns, "bad-token").await.is_none());

    // ≥ 3 rotations: every PAT the Secret held is collected; every token the target Secret held
    // is accepted by Label Studio, always as the same user.
    let mut pats = vec![first_pat.clone()];
    let mut tokens = BTreeSet::new();
    let mut user = None;
    let t0 = Instant::now();
    while pats.len() < 4 {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "{} PATs in 90 s with rotatePatEvery 5s\n{}",
            pats.len(),
            ls_token_refresher_e2e::tail(&ctl.log_text(), 40)
        );
        let s = secrets.get("pat").await.unwrap();
        let now = data_of(&s, "pat").expect("the PAT Secret holds a PAT");
        if pats.last() != Some(&now) {
            pats.push(now);
        }
        let (tok, auth, ..) = env.target(&ns, "ls-token").await.expect("target");
        if tokens.insert(tok) {
            let id = env.whoami_id(&auth).await;
            assert!(id.is_some(), "a published token is refused");
            assert_eq!(*user.get_or_insert(id), id, "always the PAT's own user");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let rotated_in = t0.elapsed();
    // Each replaced PAT is dead in Label Studio.
    for (i, p) in pats[..pats.len() - 1].iter().enumerate() {
        let (status, body) = env.ls.api().refresh(p).await;
        assert!(
            status == 401 && detail(&body).contains("blacklisted"),
            "replaced PAT #{i}: HTTP {status} {}",
            detail(&body)
        );
    }
    // The target's token is still accepted, as the same user.
    let (_, auth, ..) = env.target(&ns, "ls-token").await.unwrap();
    assert_eq!(env.whoami_id(&auth).await, user.flatten());
    assert!(
        ctl.metric(ROTATED).await.unwrap_or(0.0) >= 3.0,
        "rotations counted"
    );
    // Status: when, which PAT, when next; the PatRotation condition; Events.
    let t = env.token_obj(&ns, "t").await.unwrap();
    let st = &t["status"];
    for f in ["patRotatedAt", "patIssuedAt", "nextPatRotationAt"] {
        assert!(
            st[f]
                .as_str()
                .is_some_and(|v| v.parse::<jiff::Timestamp>().is_ok()),
            "status.{f}: {st}"
        );
    }
    assert_eq!(
        pat_rotation(st),
        (Some("True".into()), Some("rotated".into())),
        "{st}"
    );
    let reasons = env.event_reasons(&ns, Some("t")).await;
    assert!(reasons.iter().any(|r| r == "PatRotated"), "{reasons:?}");

    // Only the PAT key was written, by the rotation's field manager; the other key, the target
    // of another resource and a bystander are untouched.
    let s = secrets.get("pat").await.unwrap();
    assert_eq!(data_of(&s, "note").as_deref(), Some("keep me"));
    let pat_key_managers: Vec<String> = s
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0["f:data"].get("f:pat").is_some())
        })
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        pat_key_managers.contains(&"ls-token-refresher-rotation".to_string()),
        "{pat_key_managers:?}"
    );
    let by = secrets.get("bystander").await.unwrap();
    assert_eq!(data_of(&by, "k").as_deref(), Some("v"));

    // Bob's PAT key is External Secrets': never rotated, said so, and refreshing goes on.
    env.wait_ready(
        &ns,
        "tb",
        "True",
        "token_published",
        Duration::from_secs(30),
        &ctl,
    )
    .await;
    let refused = poll(
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let tb = env.token_obj(&ns, "tb").await?;
            (pat_rotation(&tb["status"]) == (Some("False".into()), Some("refused".into())))
                .then_some(())
        },
    )
    .await;
    assert!(
        refused.is_some(),
        "PatRotation False/refused on tb: {}",
        env.token_obj(&ns, "tb").await.unwrap()["status"]
    );
    assert!(
        env.event_reasons(&ns, Some("tb"))
            .await
            .iter()
            .any(|r| r == "PatRotationRefused"),
        "a PatRotationRefused Event on tb"
    );
    assert!(ctl.metric(REFUSED).await.unwrap_or(0.0) >= 1.0);
    let b = secrets.get("bob-pat").await.unwrap();
    assert_eq!(data_of(&b, "pat").as_deref(), Some(bob_pat.as_str()));
    assert_eq!(
        env.ls.api().refresh(&bob_pat).await.0,
        200,
        "bob's PAT still works"
    );

    // A lost rotation of Carol's PAT, as the rotator leaves it when its process dies right after
    // Label Studio answered: the intent recorded by the rotation's field manager, the PAT rotated
    // (blacklisted), the new PAT nowhere. The next refresh is refused as blacklisted.
    env.wait_ready(
        &ns,
        "tr",
        "True",
        "token_published",
        Duration::from_secs(30),
        &ctl,
    )
    .await;
    let (_, carol_auth, ..) = env.target(&ns, "carol-token").await.unwrap();
    let carol_id = env.whoami_id(&carol_auth).await.expect("carol's token");
    let intent = ls_token_refresher::rotate::Intent {
        from: ls_token_refresher::jwt::jti_fingerprint(&carol_pat).expect("a jti"),
        at: unix_now() as i64,
    };
    let body = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "carol-pat", "annotations": {
            ls_token_refresher::rotate::INTENT_ANNOTATION: intent.encode() } },
        "data": { "pat": ls_token_refresher_e2e::controller_env::base64_of(&carol_pat) },
    });
    secrets
        .patch(
            "carol-pat",
            &kube::api::PatchParams::apply("ls-token-refresher-rotation").force(),
            &kube::api::Patch::Apply(&body),
        )
        .await
        .expect("record the intent");
    let access = env.ls.api().access_token(&carol_pat).await;
    let lost = env.ls.api().rotate(&access, &carol_pat).await;
    env.refresh_now(&ns, "tr", "lost").await;
    let repaired = poll(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let s = secrets.get("carol-pat").await.ok()?;
            data_of(&s, "pat").filter(|p| *p != carol_pat)
        },
    )
    .await;
    let Some(repaired) = repaired else {
        panic!(
            "the lost rotation was not repaired\n{}",
            ls_token_refresher_e2e::tail(&ctl.log_text(), 60)
        );
    };
    assert_ne!(repaired, lost, "a new PAT, not the lost one");
    let (status, body) = env.ls.api().refresh(&lost).await;
    assert!(
        status == 401 && detail(&body).contains("blacklisted"),
        "the lost PAT is blacklisted: HTTP {status} {}",
        detail(&body)
    );
    assert_eq!(
        env.ls.api().refresh(&repaired).await.0,
        200,
        "the repaired PAT works"
    );
    env.wait_ready(
        &ns,
        "tr",
        "True",
        "token_published",
        Duration::from_secs(30),
        &ctl,
    )
    .await;
    let fresh = poll(
        Duration::from_secs(15),
        Duration::from_millis(200),
        || async {
            let (_, auth, ..) = env.target(&ns, "carol-token").await?;
            (auth != carol_auth).then_some(auth)
        },
    )
    .await
    .expect("a token from the repaired PAT");
    assert_eq!(env.whoami_id(&fresh).await, Some(carol_id));
    let s = secrets.get("carol-pat").await.unwrap();
    assert!(
        !s.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(ls_token_refresher::rotate::INTENT_ANNOTATION),
        "the intent is cleared with the write-back"
    );
    let tr = env.token_obj(&ns, "tr").await.unwrap();
    assert_eq!(
        pat_rotation(&tr["status"]),
        (Some("True".into()), Some("recovered".into())),
        "{}",
        tr["status"]
    );
    assert!(ctl.metric(RECOVERED).await.unwrap_or(0.0) >= 1.0);
    assert!(
        env.event_reasons(&ns, Some("tr"))
            .await
            .iter()
            .any(|r| r == "PatRotationRecovered"),
        "a PatRotationRecovered Event"
    );

    let m = ctl.admin_get("/metrics").await.1;
    eprintln!(
        "{} PATs in {:.1}s; {} exchanges, {} rotate calls, {} target writes",
        pats.len(),
        rotated_in.as_secs_f64(),
        metric_sum(
            &m,
            "ls_token_refresher_http_requests_total{code=\"2xx\",endpoint=\"refresh\""
        ),
        metric_sum(
            &m,
            "ls_token_refresher_http_requests_total{code=\"2xx\",endpoint=\"rotate\""
        ),
        metric_sum(
            &m,
            "ls_token_refresher_controller_secret_writes_total{result=\"ok\""
        ),
    );
    if std::env::var_os("LSTR_SHOW_LOG").is_some() {
        eprintln!("{}", ls_token_refresher_e2e::tail(&ctl.log_text(), 200));
    }
    let mut all: Vec<&str> = pats.iter().map(String::as_str).collect();
    all.extend([bob_pat.as_str(), &carol_pat, &lost, &repaired, &access]);
    assert_no_secrets(&ctl.log_text(), &all);
    drop(ctl);
}

/// (status, reason) of the `PatRotation` condition in a token resource's `status`.
fn pat_rotation(status: &serde_json::Value) -> (Option<String>, Option<String>) {
    let c = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "PatRotation");
    (
        c.and_then(|c| c["status"].as_str().map(str::to_owned)),
        c.and_then(|c| c["reason"].as_str().map(str::to_owned)),
    )
}
