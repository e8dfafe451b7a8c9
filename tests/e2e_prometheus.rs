//! Prometheus integration, with the real tools: `promtool check metrics` on a live scrape of the
//! running binary, and a real Prometheus server (Debian's binary, on 127.0.0.1) that scrapes it,
//! evaluates the shipped alert rules, and returns the expiry timestamp of the token actually published.

mod support;

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::{
    free_port,
    label_studio::{jwt_claims, LabelStudio},
    refresher::{read_set, workdir, RefresherProc},
};

/// Paths of the cached tools (provisioned on demand; cheap when warm).
fn tool(name: &str) -> PathBuf {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/tools/provision.sh"
    );
    let out = Command::new("bash")
        .arg(script)
        .stdout(Stdio::null())
        .status()
        .expect("run tools provision.sh");
    assert!(out.success(), "tools provisioning failed");
    let p = support::cache_dir().join("tools/bin").join(name);
    assert!(p.is_file(), "{} missing after provisioning", p.display());
    p
}

struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(target: &str, rules: &std::path::Path) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [\"{}\"]\nscrape_configs:\n  - job_name: ls-token-refresher\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

async fn query(client: &reqwest::Client, prom: &str, q: &str) -> Option<f64> {
    // Percent-encode the PromQL for the query string (reqwest's `query` needs a feature we do not build).
    let enc: String = q
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let v: serde_json::Value = client
        .get(format!("{prom}/api/v1/query?query={enc}"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_and_a_real_prometheus_agree_with_the_published_token() {
    let promtool = tool("promtool");
    let ls = LabelStudio::start_with_ttl(300).await;
    let pat = ls.create_pat().await;
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
    let rules = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/monitoring/alerts.rules.yml"
    ));
    let prom = start_prometheus(proc.admin.trim_start_matches("http://"), &rules);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let mut matched = None;
    while t0.elapsed() < Duration::from_secs(60) {
        if let Some(v) = query(
            &client,
            &prom.url,
            "ls_token_refresher_token_expiration_timestamp_seconds",
        )
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
        query(&client, &prom.url, "ls_token_refresher_token_valid").await,
        Some(1.0)
    );
    assert_eq!(
        query(&client, &prom.url, "up{job=\"ls-token-refresher\"}").await,
        Some(1.0)
    );
    assert!(
        query(
            &client,
            &prom.url,
            "ls_token_refresher_token_expiration_timestamp_seconds - time()"
        )
        .await
        .unwrap()
            > 0.0
    );
    eprintln!("prometheus: token_expiration_timestamp_seconds = {exp} matches the published token");

    // The shipped rules load and evaluate without errors, and none fires on a healthy refresher.
    let rules: serde_json::Value = client
        .get(format!("{}/api/v1/rules", prom.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
