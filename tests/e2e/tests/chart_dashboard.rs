//! The Grafana dashboard the chart ships (deploy/monitoring/grafana-dashboard.json, the same file as the
//! chart's dashboards/ls-token-refresher.json, drift-checked by tests/chart/check.sh) against a real
//! Prometheus scraping the real binary: every query of every panel, and every template variable, must
//! return data. A renamed metric or label then fails here instead of leaving a panel empty.
//!
//! The refresher runs `run` with a token directory and the auth proxy against a real Label Studio whose
//! access tokens live [`TTL`] seconds, so refreshes happen inside every rate window; a client keeps
//! sending requests through the proxy so its counters and latency histogram move.

use std::time::Duration;

use ls_token_refresher_e2e::{
    auth_proxy::AuthProxy, label_studio::LabelStudio, prometheus::Prometheus, refresher::workdir,
    repo_root, wait::poll,
};
use serde_json::Value;

/// Access-token lifetime: the proxy harness refreshes at 66 % of it (`--min-lead 1s`, no jitter), so
/// about every 10 s, several times per [`RATE_INTERVAL`].
const TTL: u64 = 15;
/// What Grafana's `$__rate_interval` stands for here: four scrape intervals is Grafana's own minimum
/// (1 s scrapes), and it must span at least two refreshes for the latency quantiles to have data.
const RATE_INTERVAL: &str = "30s";
/// Successful refreshes to wait for before querying: the first plus two inside a rate window.
const REFRESHES: f64 = 3.0;

/// Every PromQL expression of the dashboard: panel targets (rows included) as (panel title, expr).
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().expect("every target has a PromQL expr");
                out.push((
                    p["title"].as_str().unwrap_or("?").to_string(),
                    expr.to_string(),
                ));
            }
            if let Some(inner) = p["panels"].as_array() {
                walk(inner, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().expect("panels"), &mut out);
    out
}

/// The template variables' `label_values(<selector>, <label>)` queries, as (name, selector, label).
fn variable_queries(dashboard: &Value) -> Vec<(String, String, String)> {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .unwrap();
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or_else(|| panic!("variable {}: not label_values(...): {q}", v["name"]));
            let (selector, label) = inner.rsplit_once(',').unwrap();
            (
                v["name"].as_str().unwrap().to_string(),
                selector.trim().to_string(),
                label.trim().to_string(),
            )
        })
        .collect()
}

/// Grafana's variables replaced by what a user selecting this refresher would send.
fn substitute(expr: &str, job: &str, instance: &str) -> String {
    expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$job", job)
        .replace("$instance", instance)
}

/// The finite sample values of an instant query's result (NaN, e.g. a quantile of nothing, is no data).
async fn finite_samples(prom: &Prometheus, q: &str) -> Result<Vec<f64>, String> {
    let path = format!(
        "/api/v1/query?query={}",
        ls_token_refresher_e2e::http1::percent_encode(q)
    );
    let v = prom.get_json(&path).await;
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"], v["error"]));
    }
    Ok(v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
        .filter(|x| x.is_finite())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let path = repo_root().join("deploy/monitoring/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let panels = panel_queries(&dashboard);
    let variables = variable_queries(&dashboard);
    assert!(
        panels.len() >= 15 && variables.len() == 2,
        "{} panel queries, {} variables",
        panels.len(),
        variables.len()
    );

    let ls = LabelStudio::start_with_ttl(TTL).await;
    let pat = ls.api().create_pat().await;
    let (tmp, _dir, d) = workdir();
    let proxy = AuthProxy::start(
        "run",
        &ls.url(),
        &pat,
        &tmp.path().join("dash"),
        "dashboard",
        &["--token-dir", &d],
    )
    .await;
    let target = proxy.proc.admin.trim_start_matches("http://").to_string();
    let rules = repo_root().join("deploy/monitoring/alerts.rules.yml");
    let prom = Prometheus::start(&target, &rules);

    // Traffic through the proxy for the whole test (a request every 200 ms).
    let client = reqwest::Client::new();
    let url = format!("{}/api/current-user/whoami", proxy.url());
    let traffic = tokio::spawn(async move {
        loop {
            let _ = client.get(&url).send().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    proxy
        .proc
        .wait_metric(
            "ls_token_refresher_refresh_total{result=\"success\"}",
            REFRESHES,
            Duration::from_secs(TTL * 6),
        )
        .await;
    let job = "ls-token-refresher";

    // Template variables: label_values(selector, label) has values when `count by (label) (selector)`
    // returns series; the job variable must offer this job, the instance variable this target.
    for (name, selector, label) in &variables {
        let q = format!(
            "count by ({label}) ({})",
            substitute(selector, job, &target)
        );
        let v = prom
            .get_json(&format!(
                "/api/v1/query?query={}",
                ls_token_refresher_e2e::http1::percent_encode(&q)
            ))
            .await;
        let values: Vec<&str> = v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["metric"][label.as_str()].as_str())
            .collect();
        let want = if label == "job" { job } else { target.as_str() };
        assert!(
            values.contains(&want),
            "variable {name} ({q}) offers {values:?}, not {want}"
        );
    }

    // Every panel query, with the variables a user would select, returns finite data once Prometheus
    // has scraped enough; wait for all of them together (each scrape is one second apart).
    let queries: Vec<(String, String)> = panels
        .iter()
        .map(|(t, e)| (t.clone(), substitute(e, job, &target)))
        .collect();
    let answered = poll(Duration::from_secs(60), Duration::from_secs(1), || async {
        for (_, q) in &queries {
            match finite_samples(&prom, q).await {
                Ok(s) if !s.is_empty() => {}
                _ => return None,
            }
        }
        Some(())
    })
    .await;
    let mut report = Vec::new();
    for (title, q) in &queries {
        let r = finite_samples(&prom, q).await;
        report.push(format!("{title}: {q} -> {r:?}"));
    }
    traffic.abort();
    assert!(
        answered.is_some(),
        "dashboard queries without data:\n{}\nrefresher log:\n{}",
        report.join("\n"),
        proxy.proc.log_text()
    );
    eprintln!(
        "{} panel queries and {} variables answered:\n{}",
        queries.len(),
        variables.len(),
        report.join("\n")
    );

    // The values mean what the panels say: the token is valid and expires in the future, within one
    // lifetime; the PAT's expiry is known and later than the token's.
    let one = |q: &str| {
        let q = substitute(q, job, &target);
        let prom = &prom;
        async move { finite_samples(prom, &q).await.unwrap()[0] }
    };
    assert_eq!(
        one("min by (job, instance) (ls_token_refresher_token_valid{job=~\"$job\", instance=~\"$instance\"})").await,
        1.0
    );
    let left = one("max by (job, instance) (ls_token_refresher_token_expiration_timestamp_seconds{job=~\"$job\", instance=~\"$instance\"} > 0) - time()").await;
    assert!(
        left > 0.0 && left <= TTL as f64 + 1.0,
        "time to expiry {left}"
    );
    let pat_left = one("min by (job, instance) (ls_token_refresher_pat_expiration_timestamp_seconds{job=~\"$job\", instance=~\"$instance\"} > 0) - time()").await;
    assert!(pat_left > left, "PAT expiry {pat_left} s, token {left} s");
    drop(ls);
}
