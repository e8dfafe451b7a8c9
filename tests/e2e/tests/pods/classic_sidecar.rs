//! deploy/classic-sidecar.yaml as shipped (only the image, the URLs, host network and ports adapted):
//! a `once` init container, the refresher sidecar as 65532 and the app as 10001 reading the token
//! through the pod's fsGroup from an in-memory emptyDir, per request, for three token lifetimes; then
//! the pod's deletion.

use std::time::Duration;

use ls_token_refresher_e2e::{
    pods::{assert_hardened, container_status, Sample},
    process,
    wait::poll,
};

use crate::{
    assert_every_call_succeeded, classic_sidecar, CLASSIC, CLASSIC_APP, CLASSIC_TTL, SIDECAR,
};

/// The pod's grace period (the manifest sets none: the Kubernetes default).
const GRACE_SECS: f64 = 30.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_sidecar_serves_a_consumer_under_another_uid_until_the_pod_goes() {
    let app = classic_sidecar("classic-sidecar", "1").await;
    let scope = &app.scope;
    let pod = scope.pod(&app.pod).await;

    // The init container published the first token and exited 0 before the app started.
    let init = container_status(&pod, "ls-token-refresher-init").expect("init status");
    let done = init.state.as_ref().and_then(|s| s.terminated.as_ref());
    assert_eq!(done.map(|t| t.exit_code), Some(0), "{init:?}");
    // Who runs as whom, as the kernel sees it: the sidecar as 65532, the app as 10001 with the pod's
    // fsGroup 2000 as a supplementary group (its only access to the token files).
    assert_hardened(&scope.node, &pod, SIDECAR, 65532, 65532);
    let app_id = container_status(&pod, CLASSIC_APP)
        .and_then(|s| s.container_id.clone())
        .unwrap();
    let app_pid = scope.node.container_pid(&app_id);
    assert_eq!(
        process::status_field(app_pid, "Uid").as_deref(),
        Some("10001 10001 10001 10001")
    );
    let groups = process::status_field(app_pid, "Groups").unwrap_or_default();
    assert!(
        groups.split(' ').any(|g| g == "2000"),
        "app groups: {groups}"
    );

    // Three lifetimes of requests, each with the token read just before.
    let lifetimes = Duration::from_secs(3 * CLASSIC_TTL);
    let spanned = poll(
        lifetimes + Duration::from_secs(60),
        Duration::from_secs(2),
        || async {
            let s = app.consumer.samples();
            let span = s.last()?.unix - s.first()?.unix;
            (span >= lifetimes.as_secs() as i64).then_some(())
        },
    )
    .await;
    let lines = app.consumer.lines();
    assert!(
        spanned.is_some(),
        "the consumer did not run for three lifetimes:\n{}",
        lines.join("\n")
    );
    // No file sink group option: the fsGroup alone gives the app read access (mode 0640, owner 65532).
    assert!(
        lines.iter().any(|l| l == "consumer: file 640 65532 2000"),
        "{}",
        lines.join("\n")
    );
    let samples = app.consumer.samples();
    assert_every_call_succeeded(&samples, &lines);
    let mut tokens: Vec<_> = samples.iter().map(|s| s.expires_at).collect();
    tokens.dedup();
    assert!(
        tokens.len() >= 4,
        "three lifetimes need at least three refreshes: {tokens:?}"
    );
    eprintln!(
        "classic sidecar: {} calls over {} s, {} tokens, all accepted",
        samples.len(),
        samples.last().unwrap().unix - samples[0].unix,
        tokens.len()
    );

    // Deletion (its Deployment scaled to zero, so no replacement takes its host ports meanwhile):
    // SIGTERM to both containers; the sidecar exits 0 by itself, long before the grace period's
    // SIGKILL (that would be 137); the app still reads a working token after the sidecar is gone.
    // Exit codes and times are containerd's record of the processes: kubelet 1.20 sometimes
    // reports a container of a deleted pod only as ContainerStatusUnknown/137 (see TaskExits).
    // Where the pod status does carry a terminated state, it must agree.
    let pod = scope.pod(&app.pod).await;
    let id = |name: &str| {
        container_status(&pod, name)
            .and_then(|s| s.container_id.clone())
            .unwrap_or_else(|| panic!("no containerID of {name}"))
    };
    let (sidecar_id, app_id) = (id(SIDECAR), id(CLASSIC_APP));
    let exits = scope.node.task_exits().await;
    let (requested, versions) = scope
        .delete_and_watch(&app.pod, Some(CLASSIC), Duration::from_secs(90))
        .await;
    let reported = |name: &str| {
        versions.iter().rev().find_map(|p| {
            container_status(p, name)?
                .state
                .as_ref()?
                .terminated
                .clone()
        })
    };
    let sidecar = exits.wait(&sidecar_id, Duration::from_secs(30)).await;
    let sidecar_after = sidecar.exited_at - requested;
    eprintln!(
        "pod deletion: sidecar exit {} {sidecar_after:.1} s after the request, grace period \
         {GRACE_SECS} s; the kubelet reported {:?}",
        sidecar.exit_status,
        reported(SIDECAR).map(|t| t.exit_code)
    );
    assert_eq!(sidecar.exit_status, 0, "{sidecar:?}");
    assert!(
        sidecar_after < GRACE_SECS / 2.0,
        "the sidecar took {sidecar_after:.1} s"
    );
    let consumer = exits.wait(&app_id, Duration::from_secs(30)).await;
    assert_eq!(consumer.exit_status, 0, "{consumer:?}");
    for (name, exit) in [(SIDECAR, &sidecar), (CLASSIC_APP, &consumer)] {
        if let Some(t) = reported(name) {
            assert_eq!(
                i64::from(t.exit_code),
                i64::from(exit.exit_status),
                "{name}: {t:?}"
            );
        }
    }
    let lines = app.consumer.finish(Duration::from_secs(30)).await;
    let last = lines.iter().rev().find_map(|l| Sample::parse(l));
    assert!(
        lines.iter().any(|l| l == "consumer: sidecar gone"),
        "{}",
        lines.join("\n")
    );
    let last = last.expect("samples");
    assert_eq!(last.tag, "after-sidecar-exit", "{}", lines.join("\n"));
    assert!(
        last.ok() && last.unix as f64 >= requested - 1.0,
        "after the sidecar exited the published token still worked: {last:?}"
    );
}
