//! Prometheus integration, with the real tools: `promtool check metrics` on a live scrape of the
//! running binary, and a real Prometheus server (Debian's binary, on 127.0.0.1) that scrapes it,
//! evaluates the shipped alert rules, and returns the expiry timestamp of the token actually published.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ls_token_refresher_e2e::{
    jwt::jwt_claims,
    label_studio::LabelStudio,
    prometheus::Prometheus,
    refresher::{workdir, RefresherProc},
    repo_root,
    token_dir::read_set,
    tools::tool,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_and_a_real_prometheus_agree_with_the_published_token() {
    let promtool = tool("promtool");
    let ls = LabelStudio::start_with_ttl(300).await;
    let pat = ls.api().create_pat().await;
    let (tmp, dir, d) = workdir();
    let url = ls.url();
    let mut proc = RefresherProc::start(
        tmp.path(),
        "prom",
        &["--url", &url, "--token-dir", &d],
        &[("LS_PAT", &pat)],
    );
    proc.wait_ready(200, Duration::from_secs(30)).await;

    // promtool lints a live scrape: no problems at all (exit 0, nothing printed).
    let (code, scrape) = proc.admin_get("/metrics").await;
    assert_eq!(code, 200);
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), scrape.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let lint =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && lint.trim().is_empty(),
        "promtool check metrics: {lint}"
    );

    // A real Prometheus scrapes it and evaluates the shipped rules.
    let rules = repo_root().join("deploy/monitoring/alerts.rules.yml");
    let prom = Prometheus::start(proc.admin.trim_start_matches("http://"), &rules);
    let t0 = Instant::now();
    let mut matched = None;
    while t0.elapsed() < Duration::from_secs(60) {
        if let Some(v) = prom
            .query("ls_token_refresher_token_expiration_timestamp_seconds")
            .await
        {
            // Compare with what a consumer reads from disk right now (a refresh may land in between).
            let (token, _, _) = read_set(&dir).unwrap();
            let exp = jwt_claims(&token)["exp"].as_i64().unwrap();
            if v as i64 == exp {
                matched = Some(exp);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let exp = matched.expect("Prometheus never reported the published token's expiry");
    assert_eq!(
        prom.query("ls_token_refresher_token_valid").await,
        Some(1.0)
    );
    assert_eq!(
        prom.query("up{job=\"ls-token-refresher\"}").await,
        Some(1.0)
    );
    assert!(
        prom.query("ls_token_refresher_token_expiration_timestamp_seconds - time()")
            .await
            .unwrap()
            > 0.0
    );
    eprintln!("prometheus: token_expiration_timestamp_seconds = {exp} matches the published token");

    // The shipped rules load and evaluate without errors, and none fires on a healthy refresher.
    let rules = prom.get_json("/api/v1/rules").await;
    let groups = rules["data"]["groups"].as_array().unwrap();
    let all: Vec<&serde_json::Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert!(all.len() >= 4, "rules not loaded: {rules}");
    for r in &all {
        assert_eq!(
            r["health"], "ok",
            "rule {} unhealthy: {}",
            r["name"], r["lastError"]
        );
        if r["type"] == "alerting" {
            assert_eq!(
                r["state"], "inactive",
                "alert {} fires on a healthy refresher",
                r["name"]
            );
        }
    }
    assert_eq!(proc.signal_and_wait("TERM").code(), Some(0));
}
