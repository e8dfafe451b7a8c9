//! deploy/job-once.yaml as shipped (only the image, the URLs and host network adapted): the `once`
//! init container publishes one validated token, the Job's task uses it against the real API, and the
//! Job completes.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams, LogParams};
use ls_token_refresher_e2e::{
    free_port,
    label_studio::ADMIN_EMAIL,
    pods::{adapt_deploy, container_status, set_env, NodeSite, Scope},
    wait::poll,
};
use serde_json::{json, Value};

use crate::{label_studio, DEPLOY_PAT_SECRET};

const JOB: &str = "label-studio-export";
const TASK: &str = "export";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_once_publishes_a_token_the_task_uses() {
    let ((ls, pat), scope) = tokio::join!(label_studio(300), Scope::new("job-once"));
    scope
        .create_secret(DEPLOY_PAT_SECRET, &[("pat", &pat)])
        .await;
    let mut objects = scope.manifest("job-once.yaml").await;
    let site = NodeSite {
        namespace: scope.ns(),
        image: &scope.node.image().reference,
        ls_url: &ls.url(),
        // `once` serves no admin endpoint: nothing in the manifest uses it.
        admin_port: free_port(),
        proxy_port: None,
    };
    let busybox = scope.node.busybox().to_string();
    adapt_deploy(&mut objects, &site, |c: &mut Value| {
        assert_eq!(c["name"], TASK);
        // The task: one call with the published token, printing the status line and the user
        // (`wget -S` shows the response headers; the body is the whoami JSON, no token). busybox 1.35's
        // `wget -T` segfaults: `timeout` bounds it.
        c["image"] = json!(busybox);
        c["command"] = json!([
            "sh",
            "-c",
            r#"timeout 30 wget -S -O - --header "Authorization: $(cat "$LABEL_STUDIO_AUTHORIZATION_FILE")" "$LABEL_STUDIO_URL/api/current-user/whoami" 2>&1"#
        ]);
        set_env(c, "LABEL_STUDIO_URL", &ls.url());
    });
    scope.apply(&objects).await;

    let jobs: Api<Job> = Api::namespaced(scope.client.clone(), scope.ns());
    let outcome = poll(
        Duration::from_secs(180),
        Duration::from_millis(500),
        || async {
            let st = jobs.get(JOB).await.ok()?.status?;
            let conds = st.conditions.unwrap_or_default();
            conds
                .iter()
                .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
                .map(|c| c.type_.clone())
        },
    )
    .await;
    assert_eq!(
        outcome.as_deref(),
        Some("Complete"),
        "{}",
        scope.diagnose().await
    );

    let selector = format!("job-name={JOB}");
    let pods = scope
        .pods()
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items;
    assert_eq!(pods.len(), 1, "one pod, no retry");
    let pod = &pods[0];
    for c in ["ls-token-refresher-init", TASK] {
        let t = container_status(pod, c)
            .and_then(|s| s.state.as_ref()?.terminated.clone())
            .unwrap_or_else(|| panic!("{c} did not terminate"));
        assert_eq!(t.exit_code, 0, "{c}: {t:?}");
    }
    let name = pod.metadata.name.as_deref().unwrap();
    let log = scope
        .pods()
        .logs(
            name,
            &LogParams {
                container: Some(TASK.into()),
                ..Default::default()
            },
        )
        .await
        .expect("task log");
    assert!(
        log.lines().any(|l| l.trim() == "HTTP/1.1 200 OK"),
        "the task's call was not answered 200:\n{log}"
    );
    assert!(
        log.contains(&format!("\"email\":\"{ADMIN_EMAIL}\"")),
        "whoami answered with the PAT's user:\n{log}"
    );
}
