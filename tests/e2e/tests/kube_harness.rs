//! Proves the real-kube-apiserver harness (`kube_apiserver`, `kube_api`, `rbac`) behaves like a real cluster for what the
//! refresher needs: RBAC with resourceNames, name-scoped watches, server-side apply conflicts, restarts.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use ls_token_refresher_e2e::{
    kube_api::{api_error_code, can_i, data_of, secret},
    kube_apiserver::{ApiServer, Identity},
    rbac::grant_secret_access,
};

/// Asserts what `kubectl auth can-i ARGS…` answers as each identity.
async fn assert_can_i(server: &ApiServer, cases: &[(Identity, &[&str], bool)]) {
    for (identity, args, want) in cases {
        assert_eq!(
            can_i(server, *identity, args).await,
            *want,
            "{identity:?}: kubectl auth can-i {args:?}"
        );
    }
}

/// GETs Secret `name` through `api` (a user's), retrying for up to 10 s while the authorizer has not
/// seen a new binding yet (RBAC is enforced from informers).
async fn get_when_granted(api: &Api<Secret>, name: &str, context: &str) -> Secret {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match api.get(name).await {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for RBAC {context}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("user still denied {context}: {e}"),
        }
    }
}

/// A Secret `name` holding `key: value`.
fn secret1(name: &str, key: &str, value: &str) -> Secret {
    secret(name, &[(key, value)])
}

#[tokio::test]
async fn server_starts_and_answers() {
    let t0 = Instant::now();
    let server = ApiServer::start().await;
    let started = t0.elapsed();
    let client = server.admin_client().await;
    let version = client.apiserver_version().await.expect("version");
    assert_eq!(version.git_version, "v1.20.2", "{version:?}");
    let readyz = client
        .request_text(http::Request::get("/readyz").body(Vec::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(readyz.trim(), "ok");
    assert!(server.url().starts_with("https://127.0.0.1:"));
    // The built-in namespaces exist (created by the apiserver's own bootstrap).
    let namespaces: Api<Namespace> = Api::all(client);
    namespaces.get("default").await.expect("default namespace");
    namespaces
        .get("kube-system")
        .await
        .expect("kube-system namespace");
    // kubectl as admin works against the same server.
    let out = server
        .kubectl(["get", "namespace", "default", "-o", "name"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "namespace/default"
    );
    let (api_rss, etcd_rss) = server.rss_kib();
    eprintln!(
        "[kube harness] instance ready in {started:?}; RSS kube-apiserver {} MiB, etcd {} MiB",
        api_rss / 1024,
        etcd_rss / 1024
    );
}

#[tokio::test]
async fn admin_creates_namespace_and_secrets() {
    let server = ApiServer::start().await;
    let ns = server.create_namespace("Admin_Test").await;
    assert!(ns.starts_with("admin-test-"), "{ns}");
    let ns2 = server.create_namespace("admin-test").await;
    assert_ne!(ns, ns2, "namespace names are unique");

    let secrets: Api<Secret> = Api::namespaced(server.admin_client().await, &ns);
    secrets
        .create(&PostParams::default(), &secret1("a", "k", "v1"))
        .await
        .unwrap();
    secrets
        .create(&PostParams::default(), &secret1("b", "k", "v2"))
        .await
        .unwrap();
    assert_eq!(
        data_of(&secrets.get("a").await.unwrap(), "k").as_deref(),
        Some("v1")
    );
    let mut names: Vec<String> = secrets
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    // Duplicate create is a real 409 AlreadyExists.
    let dup = secrets
        .create(&PostParams::default(), &secret1("a", "k", "x"))
        .await;
    assert_eq!(api_error_code(&dup), Some(409));
    // A client started from the admin kubeconfig file (as a child process would via KUBECONFIG) works too.
    let kubeconfig = kube::config::Kubeconfig::read_from(server.admin_kubeconfig_path()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "default");
    let from_file = kube::Client::try_from(config).unwrap();
    let via_file: Api<Secret> = Api::namespaced(from_file, &ns);
    assert_eq!(
        data_of(&via_file.get("b").await.unwrap(), "k").as_deref(),
        Some("v2")
    );
    // Namespaced kubeconfig for the user carries the namespace.
    let user_kc = server.write_user_kubeconfig(&ns);
    let kc = kube::config::Kubeconfig::read_from(&user_kc).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, ns);
}

#[tokio::test]
async fn least_privilege_user_needs_rbac_and_is_scoped_by_resource_name() {
    let server = ApiServer::start().await;
    let ns = server.create_namespace("rbac").await;
    let admin_secrets: Api<Secret> = Api::namespaced(server.admin_client().await, &ns);
    admin_secrets
        .create(&PostParams::default(), &secret1("target", "token", "t0"))
        .await
        .unwrap();
    admin_secrets
        .create(
            &PostParams::default(),
            &secret1("other", "token", "secret!"),
        )
        .await
        .unwrap();

    let user = server.user_client(&ns).await;
    let user_secrets: Api<Secret> = Api::namespaced(user.clone(), &ns);
    // Authenticated (not 401) but denied everything.
    assert_eq!(api_error_code(&user_secrets.get("target").await), Some(403));
    assert_eq!(
        api_error_code(&user_secrets.list(&Default::default()).await),
        Some(403)
    );
    assert_eq!(
        api_error_code(
            &user_secrets
                .create(&PostParams::default(), &secret1("new", "k", "v"))
                .await
        ),
        Some(403)
    );
    let user_namespaces: Api<Namespace> = Api::all(user.clone());
    assert_eq!(
        api_error_code(&user_namespaces.list(&Default::default()).await),
        Some(403)
    );
    // A wrong token is a 401, proving the 403s above came from RBAC for a real identity.
    let anon: Api<Secret> = Api::namespaced(server.client_with_token("not-a-token"), &ns);
    assert_eq!(api_error_code(&anon.get("target").await), Some(401));
    assert_can_i(
        &server,
        &[
            (Identity::User, &["get", "secrets/target", "-n", &ns], false),
            (Identity::Admin, &["get", "secrets/target", "-n", &ns], true),
            (
                Identity::Admin,
                &[
                    "get",
                    "secrets/target",
                    "-n",
                    &ns,
                    "--as",
                    server.user_name(),
                ],
                false,
            ),
        ],
    )
    .await;

    grant_secret_access(
        &server.admin_client().await,
        &ns,
        "refresher",
        server.user_name(),
        &["get", "list", "watch"],
        &["target"],
    )
    .await;

    let got = get_when_granted(&user_secrets, "target", "after binding").await;
    assert_eq!(data_of(&got, "token").as_deref(), Some("t0"));
    let denied = user_secrets.get("other").await;
    assert_eq!(api_error_code(&denied), Some(403), "{denied:?}");
    if let Err(kube::Error::Api(status)) = &denied {
        assert_eq!(status.reason, "Forbidden");
    }
    // An unscoped list is still forbidden: resourceNames only cover requests naming the object.
    assert_eq!(
        api_error_code(&user_secrets.list(&Default::default()).await),
        Some(403)
    );
    // Writes were never granted.
    assert_eq!(
        api_error_code(
            &user_secrets
                .patch(
                    "target",
                    &PatchParams::apply("refresher"),
                    &Patch::Apply(serde_json::json!({"apiVersion": "v1", "kind": "Secret"})),
                )
                .await
        ),
        Some(403)
    );

    // kubectl agrees with the API.
    for verb in ["get", "list", "watch"] {
        assert_can_i(
            &server,
            &[
                (Identity::User, &[verb, "secrets/target", "-n", &ns], true),
                (Identity::User, &[verb, "secrets/other", "-n", &ns], false),
            ],
        )
        .await;
    }
    assert_can_i(
        &server,
        &[
            (Identity::User, &["list", "secrets", "-n", &ns], false),
            (
                Identity::User,
                &["update", "secrets/target", "-n", &ns],
                false,
            ),
            (
                Identity::User,
                &["get", "secrets/target", "-n", "default"],
                false,
            ),
        ],
    )
    .await;
    // The namespaced user kubeconfig picks the namespace up.
    let kc = server.write_user_kubeconfig(&ns);
    let out = tokio::process::Command::new(server.kubectl_path())
        .env("KUBECONFIG", &kc)
        .env("HOME", server.dir())
        .args(["auth", "can-i", "get", "secrets/target"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "yes",
        "{out:?}"
    );

    // A name-scoped watcher works for the granted Secret and sees updates.
    let mut stream = watcher(
        user_secrets.clone(),
        watcher::Config::default().fields("metadata.name=target"),
    )
    .boxed();
    let mut seen_init = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("watcher event in time")
            .expect("stream open")
            .expect("watcher ok");
        match ev {
            watcher::Event::Init => {}
            watcher::Event::InitApply(s) => seen_init.push(s.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen_init, ["target"]);
    for (name, token) in [("other", "o1"), ("target", "t1")] {
        admin_secrets
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"stringData": {"token": token}})),
            )
            .await
            .unwrap();
    }
    let ev = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("update event in time")
        .unwrap()
        .unwrap();
    match ev {
        watcher::Event::Apply(s) => {
            assert_eq!(s.metadata.name.as_deref(), Some("target"));
            assert_eq!(data_of(&s, "token").as_deref(), Some("t1"));
        }
        other => panic!("expected Apply of target, got {other:?}"),
    }

    // A watcher on the other Secret is forbidden.
    let mut other = watcher(
        user_secrets,
        watcher::Config::default().fields("metadata.name=other"),
    )
    .boxed();
    let first = loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), other.next())
            .await
            .expect("error in time")
            .unwrap();
        // The watcher announces a (re)list with `Init` before it lists.
        if !matches!(ev, Ok(watcher::Event::Init)) {
            break ev;
        }
    };
    match first {
        Err(watcher::Error::InitialListFailed(kube::Error::Api(s))) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert_eq!(s.reason, "Forbidden");
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn server_side_apply_conflicts_between_managers() {
    let server = ApiServer::start().await;
    let ns = server.create_namespace("ssa").await;
    let secrets: Api<Secret> = Api::namespaced(server.admin_client().await, &ns);
    let doc = |v: &str| {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "applied"},
            "stringData": {"token": v},
        })
    };
    let first = secrets
        .patch(
            "applied",
            &PatchParams::apply("manager-a"),
            &Patch::Apply(doc("a1")),
        )
        .await
        .expect("first apply creates");
    assert_eq!(data_of(&first, "token").as_deref(), Some("a1"));
    let managers: Vec<String> = first
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.contains(&"manager-a".to_string()), "{managers:?}");
    // Same manager re-applies freely.
    secrets
        .patch(
            "applied",
            &PatchParams::apply("manager-a"),
            &Patch::Apply(doc("a2")),
        )
        .await
        .expect("same manager");

    let conflict = secrets
        .patch(
            "applied",
            &PatchParams::apply("manager-b"),
            &Patch::Apply(doc("b1")),
        )
        .await;
    assert_eq!(api_error_code(&conflict), Some(409), "{conflict:?}");
    if let Err(kube::Error::Api(s)) = &conflict {
        assert_eq!(s.reason, "Conflict");
        assert!(s.message.contains("manager-a"), "{}", s.message);
    }
    assert_eq!(
        data_of(&secrets.get("applied").await.unwrap(), "token").as_deref(),
        Some("a2")
    );

    let forced = secrets
        .patch(
            "applied",
            &PatchParams::apply("manager-b").force(),
            &Patch::Apply(doc("b1")),
        )
        .await
        .expect("forced apply");
    assert_eq!(data_of(&forced, "token").as_deref(), Some("b1"));
}

#[tokio::test]
async fn apiserver_restart_keeps_data() {
    let mut server = ApiServer::start().await;
    let port = server.port();
    let ns = server.create_namespace("restart").await;
    let secrets: Api<Secret> = Api::namespaced(server.admin_client().await, &ns);
    secrets
        .create(&PostParams::default(), &secret1("kept", "k", "before"))
        .await
        .unwrap();
    grant_secret_access(
        &server.admin_client().await,
        &ns,
        "reader",
        server.user_name(),
        &["get"],
        &["kept"],
    )
    .await;

    server.stop_apiserver();
    assert!(!server.apiserver_running());
    let down = tokio::time::timeout(Duration::from_secs(10), secrets.get("kept")).await;
    assert!(
        matches!(down, Ok(Err(_))),
        "request to a stopped apiserver must fail: {down:?}"
    );

    let t0 = Instant::now();
    server.start_apiserver().await;
    eprintln!("[kube harness] apiserver restart took {:?}", t0.elapsed());
    assert_eq!(server.port(), port);
    // A fresh client and the old one (reconnecting) both see the data.
    let fresh: Api<Secret> = Api::namespaced(server.admin_client().await, &ns);
    assert_eq!(
        data_of(&fresh.get("kept").await.unwrap(), "k").as_deref(),
        Some("before")
    );
    let mut old_ok = false;
    for _ in 0..10 {
        if let Ok(s) = secrets.get("kept").await {
            assert_eq!(data_of(&s, "k").as_deref(), Some("before"));
            old_ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(old_ok, "the pre-restart client reconnects");
    // RBAC objects survived too; the user token (same token file) still works.
    let user: Api<Secret> = Api::namespaced(server.user_client(&ns).await, &ns);
    let kept = get_when_granted(&user, "kept", "after restart").await;
    assert_eq!(data_of(&kept, "k").as_deref(), Some("before"));
}

#[tokio::test]
async fn instances_are_isolated_and_run_in_parallel() {
    let (a, b) = tokio::join!(ApiServer::start(), ApiServer::start());
    assert_ne!(a.port(), b.port());
    assert_ne!(a.user_token(), b.user_token());
    let ns = a.create_namespace("only-in-a").await;
    let b_ns: Api<Namespace> = Api::all(b.admin_client().await);
    assert_eq!(api_error_code(&b_ns.get(&ns).await), Some(404));
    // A's user token means nothing to B.
    let cross: Api<Namespace> = Api::all(b.client_with_token(a.user_token()));
    assert_eq!(api_error_code(&cross.get("default").await), Some(401));
    assert!(b_ns.get("default").await.is_ok());
}
