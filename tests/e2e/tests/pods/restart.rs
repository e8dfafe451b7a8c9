//! A container restart: the classic sidecar's process is killed (SIGKILL from the host, like an OOM
//! kill) shortly before its next refresh, the kubelet restarts the container, and the app — calling
//! Label Studio twice a second with the token read each time — never reads an expired or rejected
//! token.

use std::time::Duration;

use ls_token_refresher_e2e::{
    clock::unix_now,
    pods::{container_status, is_ready},
    process,
    wait::poll,
};

use crate::{assert_every_call_succeeded, classic_sidecar, CLASSIC_TTL, SIDECAR};

/// The kill comes when the published token has this long left: a few seconds before the refresh it
/// would have done, so the restarted container, not the killed one, must publish the next token in
/// time.
const KILL_WITH_LEFT_SECS: i64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sidecar_restarts_without_the_app_reading_an_expired_token() {
    let app = classic_sidecar("sidecar-restart", "0.5").await;
    let scope = &app.scope;

    // Wait for the moment: the token the app reads has KILL_WITH_LEFT_SECS left (a fresh one if the
    // current one is already past that point).
    let at = poll(
        Duration::from_secs(2 * CLASSIC_TTL),
        Duration::from_millis(200),
        || async {
            let exp = app.consumer.samples().last()?.expires_at?;
            let left = exp as f64 - unix_now();
            let wait = left - KILL_WITH_LEFT_SECS as f64;
            (0.0..1.0).contains(&wait).then_some(exp)
        },
    )
    .await
    .expect("a token with the right time left");
    let pod = scope.pod(&app.pod).await;
    let id = container_status(&pod, SIDECAR)
        .and_then(|s| s.container_id.clone())
        .expect("sidecar containerID");
    let pid = scope.node.container_pid(&id);
    let killed = unix_now();
    process::kill(pid, "KILL");
    eprintln!(
        "killed the sidecar (pid {pid}) with {:.0} s left on the published token",
        at as f64 - killed
    );

    // The kubelet restarts it once; it is Ready again.
    let restarted = poll(
        Duration::from_secs(90),
        Duration::from_millis(500),
        || async {
            let p = scope.pod(&app.pod).await;
            let s = container_status(&p, SIDECAR)?;
            (s.restart_count >= 1 && s.ready && is_ready(&p)).then_some(p)
        },
    )
    .await;
    let Some(p) = restarted else {
        panic!(
            "the sidecar did not come back Ready\n{}",
            scope.diagnose().await
        );
    };
    let s = container_status(&p, SIDECAR).unwrap();
    let last = s.last_state.as_ref().and_then(|l| l.terminated.as_ref());
    assert_eq!(
        last.map(|t| t.exit_code),
        Some(137),
        "the killed process was the sidecar's: {s:?}"
    );
    assert_eq!(s.restart_count, 1, "{s:?}");
    eprintln!(
        "sidecar Ready again {:.1} s after the kill",
        unix_now() - killed
    );

    // The app keeps calling through two more lifetimes: the restarted refresher's own refreshes.
    tokio::time::sleep(Duration::from_secs(2 * CLASSIC_TTL)).await;
    let samples = app.consumer.samples();
    let lines = app.consumer.lines();
    assert_every_call_succeeded(&samples, &lines);
    let after: Vec<_> = samples
        .iter()
        .filter(|s| s.unix as f64 >= killed)
        .filter_map(|s| s.expires_at)
        .collect();
    let mut new_tokens = after.clone();
    new_tokens.dedup();
    assert!(
        new_tokens.iter().filter(|e| **e > at).count() >= 2,
        "the restarted sidecar published new tokens: {new_tokens:?}"
    );
    let first_new = samples
        .iter()
        .find(|s| s.expires_at.is_some_and(|e| e > at))
        .unwrap();
    let least_left = samples
        .iter()
        .filter_map(|s| Some(s.expires_at? - s.unix))
        .min()
        .unwrap();
    eprintln!(
        "after the kill: {} calls, all accepted; the first new token reached the app {:.1} s after the kill; \
         least lifetime left on a token the app read: {least_left} s",
        after.len(),
        first_new.unix as f64 - killed
    );
    let p = scope.pod(&app.pod).await;
    assert_eq!(
        container_status(&p, SIDECAR).map(|s| s.restart_count),
        Some(1)
    );
}
