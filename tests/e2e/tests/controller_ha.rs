//! The controller with leader election on a real kube-apiserver + etcd and a real Label Studio
//! 1.23.2: two replicas (the real binary, as the chart's ServiceAccount under the chart's RBAC and
//! Lease) serve three token resources. A reader checks every target Secret every 0.5 s against the
//! clock and Label Studio's API throughout. SIGSTOP of the leader (a partitioned node: it keeps the
//! Lease until it expires) → the standby takes over within the lease duration and keeps the tokens
//! fresh; SIGCONT → the old leader stands by and writes nothing; SIGKILL of the new leader → the
//! first takes over again.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Secret};
use kube::api::Api;
use ls_token_refresher_e2e::{
    chart,
    clock::{rfc3339, unix_now},
    controller_env::{pat_secret, token, ControllerEnv},
    jwt::jwt_exp,
    kube_api::data_of,
    log_scan::assert_no_secrets,
    process,
    refresher::{metric_sum, RefresherProc},
    wait::wait_for,
};

/// Access tokens live 30 s: refreshes every ~20 s happen in each phase.
const TTL: u64 = 30;
const LEASE_DURATION: u64 = 6;
const RENEW_DEADLINE: u64 = 4;
const RETRY: u64 = 1;
const TOKENS: [&str; 3] = ["t0", "t1", "t2"];

fn lease_name() -> String {
    format!("{}-controller", chart::FULLNAME)
}

/// What the reader saw.
#[derive(Default)]
struct Seen {
    reads: usize,
    distinct: usize,
    problems: Vec<String>,
}

fn spawn_reader(
    secrets: Api<Secret>,
    whoami: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Seen> {
    let http = ls_token_refresher_e2e::ls_api::http_client();
    tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut last: BTreeMap<String, (String, i64)> = BTreeMap::new();
        while !stop.load(Ordering::SeqCst) {
            for t in TOKENS {
                let name = format!("{t}-out");
                let Ok(Some(s)) = secrets.get_opt(&name).await else {
                    seen.problems.push(format!("{name} missing"));
                    continue;
                };
                let tok = data_of(&s, "token").unwrap_or_default();
                let auth = data_of(&s, "authorization").unwrap_or_default();
                let exp_key = data_of(&s, "expires_at").unwrap_or_default();
                let now = unix_now();
                seen.reads += 1;
                let Some(exp) =
                    jwt_exp(&tok).filter(|e| (*e as f64) > now && rfc3339(*e) == exp_key)
                else {
                    seen.problems.push(format!(
                        "{name}: expired or inconsistent at {now:.0} ({exp_key})"
                    ));
                    continue;
                };
                match last.get(&name) {
                    Some((prev, _)) if *prev == tok => continue,
                    Some((_, prev_exp)) if *prev_exp > exp => seen
                        .problems
                        .push(format!("{name}: expiry went back from {prev_exp} to {exp}")),
                    _ => {}
                }
                seen.distinct += 1;
                let code = match http
                    .get(&whoami)
                    .header("authorization", &auth)
                    .send()
                    .await
                {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                if code != 200 {
                    seen.problems
                        .push(format!("{name}: Label Studio answered {code}"));
                }
                last.insert(name, (tok, exp));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        seen
    })
}

async fn writes(p: &RefresherProc) -> f64 {
    metric_sum(
        &p.admin_get("/metrics").await.1,
        "ls_token_refresher_controller_secret_writes_total{result=\"ok\"",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_controllers_one_writer_through_stop_cont_and_kill() {
    let env = ControllerEnv::start(TTL).await;
    let ns = env.kube.create_namespace("ha-tokens").await;
    let ops = env.kube.create_namespace("ha-ops").await;
    let pat = env.ls.api().create_pat().await;
    env.create_secret(&ns, &pat_secret("pat", &pat, true)).await;
    env.create_connection("ls", None, None).await;
    for t in TOKENS {
        env.apply_json(t, &token(t, "ls", "pat", &format!("{t}-out")), Some(&ns))
            .await;
    }
    let sa = env.chart_identity(&ops, &[]).await;
    let lease = lease_name();
    let start = |name: &str| -> RefresherProc {
        let args = [
            "--leader-elect",
            "--lease-name",
            &lease,
            "--lease-duration",
            &format!("{LEASE_DURATION}s"),
            "--lease-renew-deadline",
            &format!("{RENEW_DEADLINE}s"),
            "--lease-retry-period",
            &format!("{RETRY}s"),
            "--pod-name",
            name,
            "--pod-namespace",
            &ops,
        ]
        .map(|s| s.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        env.start_controller(name, Some(sa.kubeconfig.clone()), &args)
    };
    let leases: Api<Lease> = Api::namespaced(env.admin.clone(), &ops);
    let holder = || async {
        leases
            .get(&lease)
            .await
            .ok()
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty())
    };
    let a = start("replica-a");
    let first = wait_for(Duration::from_secs(30), || async {
        holder().await.is_some()
    })
    .await;
    assert!(first.is_some(), "nobody took the Lease\n{}", a.log_text());
    let b = start("replica-b");
    for t in TOKENS {
        env.wait_published(&ns, t, &a).await;
    }
    assert_eq!(holder().await.as_deref(), Some("replica-a"));
    // The standby is ready (able to take over) and writes nothing.
    assert_eq!(b.admin_get("/readyz").await.0, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &ns);
    let reader = spawn_reader(
        secrets,
        format!("{}/api/current-user/whoami", env.ls.url()),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;

    let takeover = |to: &'static str| {
        let holder = &holder;
        async move {
            let t0 = Instant::now();
            let took = wait_for(
                Duration::from_secs(LEASE_DURATION + 3 * RETRY + 5),
                || async { holder().await.as_deref() == Some(to) },
            )
            .await
            .unwrap_or_else(|| panic!("{to} did not take the Lease"));
            eprintln!("CONTROLLER-HA: {to} held the Lease after {took:.1} s");
            assert!(
                took <= (LEASE_DURATION + 2 * RETRY) as f64 + 1.0,
                "takeover took {took:.1} s"
            );
            t0
        }
    };

    // SIGSTOP the leader: the standby takes over and keeps every token fresh for a lifetime.
    let a_writes = writes(&a).await;
    process::kill(a.pid(), "STOP");
    takeover("replica-b").await;
    tokio::time::sleep(Duration::from_secs(TTL + 5)).await;
    // SIGCONT: the old leader stands by and writes nothing.
    process::kill(a.pid(), "CONT");
    tokio::time::sleep(Duration::from_secs(LEASE_DURATION + 4)).await;
    assert_eq!(writes(&a).await, a_writes, "the resumed old leader wrote");
    assert_eq!(
        a.metric("ls_token_refresher_leader ").await,
        Some(0.0),
        "the resumed old leader stands by"
    );
    assert!(writes(&b).await > 0.0, "the new leader refreshed");
    // SIGKILL the new leader: the first takes over again.
    let mut b = b;
    process::kill(b.pid(), "KILL");
    let _ = b.wait_exit(Duration::from_secs(10));
    takeover("replica-a").await;
    tokio::time::sleep(Duration::from_secs(TTL + 5)).await;

    stop.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();
    eprintln!(
        "CONTROLLER-HA: {} reads, {} distinct tokens, {} problems",
        seen.reads,
        seen.distinct,
        seen.problems.len()
    );
    assert!(seen.problems.is_empty(), "{:?}", seen.problems);
    assert!(seen.reads > 100, "{} reads", seen.reads);
    // Three resources × (initial + ≥1 refresh in each of the two ~35 s phases).
    assert!(seen.distinct >= 3 * 3, "{} distinct tokens", seen.distinct);
    for p in [&a, &b] {
        assert_no_secrets(&p.log_text(), &[&pat]);
    }
    drop(a);
}
