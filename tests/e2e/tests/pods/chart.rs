//! The Helm chart in Secret mode on a real kubelet, installed with nothing but the image, the Label
//! Studio URL, `hostNetwork` and a free admin port set (plus the admin server on the node's loopback,
//! see [`install`]); token lifetimes come from Label Studio, the refresher's timing is the chart's.
//! The readiness test ends with `helm test` on its install: the check pod passes with the good PAT and
//! fails, naming the reason, after Label Studio revoked it.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::Api;
use ls_token_refresher_e2e::{
    clock::unix_now,
    free_port,
    kube_api::data_of,
    label_studio::LabelStudio,
    pods::{self, assert_hardened, condition, container_status, min_median_max, Scope},
    tools::helm,
    wait::poll,
};
use serde_json::json;

use crate::{helm_install, label_studio};

const RELEASE: &str = "ls-token-refresher";
/// The chart's Secret names for this release (`<fullname>-pat`, `<fullname>-token`).
const PAT_SECRET: &str = "ls-token-refresher-pat";
const TARGET: &str = "ls-token-refresher-token";
const CONTAINER: &str = "ls-token-refresher";
/// The chart's defaults the propagation check is about (`targetSecret.propagationMargin`,
/// `timing.minLead`): a new token reaches the Secret this long before the old one expires.
const MARGIN_SECS: f64 = 90.0;
const MIN_LEAD_SECS: f64 = 30.0;

/// `helm install` of the chart as the release packages it ([`chart::packaged`]: deploy/package-chart.sh,
/// which deploy/release.sh runs) into the scope's namespace, the PAT Secret created
/// first (the chart reads an existing one). Values: our image, `labelStudio.url`, `hostNetwork`, one replica, a
/// free `admin.port` and `admin.address` 127.0.0.1 (on the host network 0.0.0.0 would be every
/// interface of the machine). Waits for the Deployment (`helm --wait`), then checks the pod as the kubelet ran it:
/// on the node, host network, uid/gid 65532, no capabilities, no_new_privs, seccomp, read-only root.
async fn install(scope: &Scope, ls: &LabelStudio, pat: &str) -> Pod {
    scope.create_secret(PAT_SECRET, &[("pat", pat)]).await;
    let admin = free_port();
    let sets = [
        format!("labelStudio.url={}", ls.url()),
        "hostNetwork=true".into(),
        // One node with host networking: a second replica would need the same admin port (README,
        // "High availability"); the one replica still leads through the chart's Lease.
        "deployment.replicas=1".into(),
        format!("admin.port={admin}"),
        "admin.address=127.0.0.1".into(),
    ];
    let pod = helm_install(scope, RELEASE, &sets).await;
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(scope.node.env("NODE_NAME")));
    assert_eq!(spec.host_network, Some(true));
    assert_hardened(&scope.node, &pod, CONTAINER, 65532, 65532);
    pod
}

/// The target Secret now.
async fn target(scope: &Scope) -> Secret {
    Api::<Secret>::namespaced(scope.client.clone(), scope.ns())
        .get(TARGET)
        .await
        .expect("the target Secret exists")
}

/// `expires_at` of a published Secret (Unix seconds).
fn expiry(s: &Secret) -> i64 {
    data_of(s, "expires_at")
        .and_then(|e| e.parse::<jiff::Timestamp>().ok())
        .expect("expires_at is RFC 3339")
        .as_second()
}

/// The target Secret: labelled as ours, its token unexpired and accepted by the real API. Returns
/// its `expires_at` (Unix seconds).
async fn assert_target_current(scope: &Scope, ls: &LabelStudio) -> i64 {
    let s = target(scope).await;
    let labels = s.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("ls-token-refresher/managed").map(String::as_str),
        Some("true")
    );
    let exp = expiry(&s);
    assert!(exp as f64 > unix_now(), "the Secret's token has expired");
    let auth = data_of(&s, "authorization").expect("authorization key");
    assert_eq!(ls.api().whoami(&auth).await, 200, "the Secret's token");
    exp
}

/// How many new tokens each consumer must see, and how many consumer pods watch: each pod is an
/// independent sample of the kubelet's per-pod sync timing, so three pods triple the samples of the
/// same minutes.
const REFRESHES: usize = 3;
const CONSUMERS: usize = 3;
/// Access-token lifetime for the propagation test: the shortest for which the chart's default lead
/// (minLead 30 s + propagationMargin 90 s) still sets the refresh interval (~110-120 s, at
/// `exp - 120 s` minus jitter) rather than the quarter-lifetime floor, so that refreshes stay longer
/// apart than the kubelet's worst-case sync (1.5 × its 60 s syncFrequency) and every token can reach
/// the pods.
const PROPAGATION_TTL: u64 = 240;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_secret_reaches_mounting_pods_within_the_propagation_margin() {
    let ((ls, pat), scope) = tokio::join!(
        label_studio(PROPAGATION_TTL),
        Scope::new("chart-propagation")
    );
    // The kubelet's defaults are what the margin is sized for; this node keeps them.
    let kubelet = scope.node.kubelet_config().await;
    let (sync, detect) = (
        kubelet["syncFrequency"].clone(),
        kubelet["configMapAndSecretChangeDetectionStrategy"].clone(),
    );
    eprintln!("kubelet: syncFrequency {sync}, configMapAndSecretChangeDetectionStrategy {detect}");
    assert_eq!((sync, detect), (json!("1m0s"), json!("Watch")));

    let updates = scope.watch_secret_key(TARGET, "expires_at");
    install(&scope, &ls, &pat).await;
    assert_target_current(&scope, &ls).await;

    let consumers = pods::consumer_deployment(
        "token-consumer",
        CONSUMERS,
        scope.node.busybox(),
        &ls.url(),
        TARGET,
    );
    scope.apply(&[consumers]).await;
    let pods = scope
        .wait_ready("app=token-consumer", CONSUMERS, Duration::from_secs(120))
        .await;
    let logs: Vec<_> = pods
        .iter()
        .map(|p| {
            (
                pods::name(p).to_string(),
                scope.follow(pods::name(p), "consumer"),
            )
        })
        .collect();

    // First token + REFRESHES refreshes, ~115 s apart, each up to ~90 s on its way to the pods.
    let timeout = Duration::from_secs(180 + 150 * REFRESHES as u64);
    let seen_all = poll(timeout, Duration::from_secs(2), || async {
        let done = logs.iter().all(|(_, l)| {
            let mut exps: Vec<_> = l.samples().iter().map(|s| s.expires_at).collect();
            exps.dedup();
            exps.len() > REFRESHES
        });
        done.then_some(())
    })
    .await;
    let updates = updates.entries();
    let report = |logs: &[(String, pods::Logs)]| {
        logs.iter()
            .map(|(p, l)| format!("{p}:\n  {}", l.lines().join("\n  ")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        seen_all.is_some(),
        "not every consumer saw {REFRESHES} new tokens within {timeout:?}; Secret updates (boot s, expires_at): \
         {updates:?}\n{}\n{}",
        report(&logs),
        scope.diagnose().await
    );

    // Delays: from the API server's watch event (the Secret update) to the file change inside each pod,
    // both on the boot clock pods and this process share.
    let update_at = |exp: i64| {
        updates.iter().find_map(|(boot, v)| {
            let v = v.parse::<jiff::Timestamp>().ok()?.as_second();
            (v == exp).then_some(*boot)
        })
    };
    let published: Vec<i64> = updates
        .iter()
        .filter_map(|(_, v)| v.parse::<jiff::Timestamp>().ok().map(|t| t.as_second()))
        .collect();
    let mut delays = Vec::new();
    let mut min_left = f64::INFINITY;
    for (pod, l) in &logs {
        let mut samples = l.samples();
        assert!(
            samples.iter().all(|s| s.ok()),
            "{pod}: Label Studio refused a token read from the mounted Secret:\n{}",
            report(&logs)
        );
        // One sample per token (a generation change always carries a new token, but be sure).
        samples.dedup_by_key(|s| s.expires_at);
        let seen: Vec<i64> = samples.iter().filter_map(|s| s.expires_at).collect();
        // Every token the API server published after the pod's first one reached the pod, in order.
        let first = published
            .iter()
            .position(|e| *e == seen[0])
            .unwrap_or_else(|| panic!("{pod} saw a token the watch never delivered"));
        assert_eq!(
            seen,
            published[first..first + seen.len()],
            "{pod} skipped a token"
        );
        for w in samples.windows(2) {
            let (old, new) = (&w[0], &w[1]);
            let at = update_at(new.expires_at.unwrap()).expect("delivered by the watch");
            let delay = new.boot - at;
            assert!(
                delay > 0.0,
                "{pod} saw a token {delay:.2} s before the API server published it"
            );
            delays.push(delay);
            // The token it held until then was still valid: the lead covered the kubelet's delay.
            let left = old.expires_at.unwrap() as f64 - new.unix as f64;
            min_left = min_left.min(left);
            assert!(
                left > 0.0,
                "{pod} held an expired token for {:.0} s: the kubelet took {delay:.1} s",
                -left
            );
        }
    }
    let (min, median, max) = min_median_max(&delays).unwrap();
    eprintln!(
        "kubelet Secret propagation over {} updates ({CONSUMERS} pods x {REFRESHES} refreshes): \
         min {min:.1} s, median {median:.1} s, max {max:.1} s; default --propagation-margin {MARGIN_SECS} s \
         {} (with --min-lead {MIN_LEAD_SECS} s the lead is {} s); least lifetime left on the replaced \
         token when the new one arrived: {min_left:.0} s",
        delays.len(),
        if max <= MARGIN_SECS {
            "covers it on its own"
        } else {
            "alone does NOT cover it"
        },
        MARGIN_SECS + MIN_LEAD_SECS,
    );
    assert!(delays.len() >= CONSUMERS * REFRESHES, "{delays:?}");
    drop(ls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_readiness_follows_the_token_through_a_label_studio_outage() {
    let ((mut ls, pat), scope) = tokio::join!(label_studio(60), Scope::new("chart-readiness"));
    let pod = install(&scope, &ls, &pat).await;
    let name = pods::name(&pod).to_string();
    assert_target_current(&scope, &ls).await;

    // Label Studio goes away; the last published token runs out.
    ls.stop();
    let exp = expiry(&target(&scope).await);
    let stopped = unix_now();
    eprintln!(
        "label studio stopped {:.0} s before the token's expiry",
        exp as f64 - stopped
    );
    let unready = poll(
        Duration::from_secs_f64(exp as f64 - stopped + 60.0),
        Duration::from_millis(500),
        || async {
            let p = scope.pod(&name).await;
            let now = unix_now();
            match condition(&p, "Ready") {
                Some(true) => None,
                _ => Some((now, p)),
            }
        },
    )
    .await;
    let Some((seen_unready, p)) = unready else {
        panic!(
            "the pod stayed Ready a minute past the token's expiry\n{}",
            scope.diagnose().await
        );
    };
    let went = ready_transition(&p);
    eprintln!(
        "Ready=False at {} s after the expiry (observed {:.1} s after)",
        went - exp,
        seen_unready - exp as f64
    );
    // Not while the token was still valid: an outage alone does not make the pod unready.
    assert!(
        went >= exp,
        "Ready went False {} s before the token expired",
        exp - went
    );
    let restarts = |p: &Pod| container_status(p, CONTAINER).map(|s| s.restart_count);
    assert_eq!(
        restarts(&p),
        Some(0),
        "liveness must not restart the refresher in an outage"
    );

    // Label Studio returns: a new token, the pod Ready again, still without a restart.
    ls.restart().await;
    let back = unix_now();
    let ready = poll(
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            let p = scope.pod(&name).await;
            (condition(&p, "Ready") == Some(true)).then_some(p)
        },
    )
    .await
    .unwrap_or_else(|| panic!("the pod did not become Ready again within 120 s"));
    eprintln!(
        "Ready=True {:.1} s after Label Studio returned",
        unix_now() - back
    );
    assert!(ready_transition(&ready) >= back as i64 - 1);
    assert_eq!(restarts(&ready), Some(0));
    let new_exp = assert_target_current(&scope, &ls).await;
    assert!(new_exp > exp, "the Secret holds a new token");

    // `helm test` on the same install (no second install: the pod tests' wall time): the release's check
    // pod passes with the good PAT, having tried every step against the real Label Studio and Secret...
    let (passed, log) = helm_test(&scope).await;
    assert!(passed, "helm test failed with a good PAT:\n{log}");
    for step in ["PAT", "reachable", "exchange", "api", "target secret"] {
        assert!(
            log.contains(&format!("[ok]   {step}:")),
            "no passing step {step:?} in the check's report:\n{log}"
        );
    }
    assert!(!log.contains("[FAIL]"), "{log}");
    // ... and fails, naming the reason, once Label Studio has revoked that PAT.
    ls.api().blacklist(&pat).await;
    let (passed, log) = helm_test(&scope).await;
    assert!(!passed, "helm test passed with a revoked PAT:\n{log}");
    assert!(
        log.contains("[FAIL] exchange:") && log.to_lowercase().contains("blacklisted"),
        "the failed step and Label Studio's reason are not in the report:\n{log}"
    );
    assert!(!log.contains(&pat), "the report shows the PAT");
}

/// The `helm test` pod of the chart (templates/tests/check-pod.yaml).
const TEST_POD: &str = "ls-token-refresher-test-check";

/// `helm test` of the release: whether helm reports success, and the test pod's log (the check's
/// report), read from the API so it is there whatever helm prints on failure.
async fn helm_test(scope: &Scope) -> (bool, String) {
    let t0 = std::time::Instant::now();
    let out = helm(
        &[
            "test",
            RELEASE,
            "--namespace",
            scope.ns(),
            "--timeout",
            "120s",
        ],
        Some(&scope.node.kubeconfig()),
    )
    .await;
    let helm_says = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = scope
        .pods()
        .logs(
            TEST_POD,
            &kube::api::LogParams {
                container: Some("check".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("no log of {TEST_POD}: {e}\nhelm: {helm_says}"));
    let phase = scope
        .pod(TEST_POD)
        .await
        .status
        .and_then(|s| s.phase)
        .unwrap_or_default();
    eprintln!(
        "helm test: {phase} in {:.1} s (pod start + check)\n{log}",
        t0.elapsed().as_secs_f64()
    );
    // helm's verdict and the pod's must agree.
    assert_eq!(
        out.status.success(),
        phase == "Succeeded",
        "helm says {helm_says}, the pod is {phase}"
    );
    (out.status.success(), log)
}

/// `lastTransitionTime` of the pod's Ready condition (Unix seconds, 1 s resolution).
fn ready_transition(p: &Pod) -> i64 {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.as_second())
        .expect("a Ready condition with a transition time")
}
