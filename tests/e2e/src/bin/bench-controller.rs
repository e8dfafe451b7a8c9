//! Used by bench/controller/run.sh (not a test): one scale run of `ls-token-refresher controller`
//! against a real kube-apiserver + etcd and either the fast Label Studio stand-in
//! (`ls_standin`, in this process) or a real Label Studio 1.23.2 (`real_ls=1`).
//!
//! Phases, each timed and measured from outside the controller (/proc and its /metrics):
//! 0. baseline: the controller with the CRDs, a connection and the PAT Secrets but no token
//!    resource: RSS once its caches are synced;
//! 1. `tokens` LabelStudioToken resources created (64 API calls in flight, admin client), spread
//!    over `namespaces` namespaces, each with one opted-in PAT Secret;
//! 2. a fresh controller: time from start to caches synced and to every resource Ready (its
//!    `token_ready` gauge summed = `tokens`);
//! 3. steady state for `steady` seconds: refreshes, Secret and status writes, Kubernetes and Label
//!    Studio requests, CPU, RSS; every 10 s all target Secrets are listed and any whose
//!    `expires-at` annotation is in the past is counted (must stay 0);
//! 4. restart (SIGTERM, new process): time to caches synced and to every resource reconciled, and
//!    the requests to Label Studio in the first `restart_window` seconds (valid tokens: ~0).
//!
//! Prints one JSON object (and writes it to `out=FILE`). Arguments are `key=value`:
//! `tokens namespaces ttl latency_ms real_ls qps burst exchanges margin steady restart_window
//! ready_timeout out`. The binary under test is `LSTR_REFRESHER_BIN` (else built in debug).

#![recursion_limit = "256"]

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    api::{
        Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PartialObjectMeta,
        PostParams,
    },
    Client,
};
use ls_token_refresher_e2e::{
    controller_env::{install_crds, pat_secret},
    kube_apiserver::ApiServer,
    label_studio::LabelStudio,
    ls_standin::{self, Counters, StandinConfig},
    process,
    refresher::{metric_sum, RefresherProc},
};
use serde_json::json;

/// The run's parameters (`key=value` arguments).
struct Params(BTreeMap<String, String>);

impl Params {
    fn get<T: std::str::FromStr>(&self, key: &str, default: T) -> T {
        match self.0.get(key) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("bench-controller: {key}={v} is not valid");
                std::process::exit(2)
            }),
        }
    }
}

const GROUP: &str = "ls-token-refresher.io";

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, "v1alpha1", kind), plural)
}

/// The controller's counters this benchmark reads, from one `/metrics` answer.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    ready: f64,
    refreshes: f64,
    secret_writes: f64,
    status_writes: f64,
    kube_requests: f64,
    http_requests: f64,
    reconciles: f64,
    queue_depth: f64,
}

async fn snapshot(c: &RefresherProc) -> Option<Snapshot> {
    let (code, text) = c.admin_get("/metrics").await;
    (code == 200).then(|| Snapshot {
        ready: metric_sum(&text, "ls_token_refresher_controller_token_ready{"),
        refreshes: metric_sum(
            &text,
            "ls_token_refresher_refresh_total{result=\"success\"}",
        ),
        secret_writes: metric_sum(&text, "ls_token_refresher_controller_secret_writes_total{"),
        status_writes: metric_sum(&text, "ls_token_refresher_controller_status_writes_total{"),
        kube_requests: metric_sum(&text, "ls_token_refresher_kube_requests_total{"),
        http_requests: metric_sum(&text, "ls_token_refresher_http_requests_total{"),
        reconciles: metric_sum(
            &text,
            "ls_token_refresher_controller_reconcile_duration_seconds_count",
        ),
        queue_depth: metric_sum(&text, "ls_token_refresher_controller_exchange_queue_depth"),
    })
}

/// Waits until `/readyz` answers 200 (caches synced), at most `limit`; None if it never did
/// (the controller still runs: readiness is reported, not required, by this benchmark).
async fn synced_within(c: &RefresherProc, limit: Duration) -> Option<()> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if c.admin_get("/readyz").await.0 == 200 {
            return Some(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// utime + stime of a live process, seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rfind(')').map(|i| &stat[i + 2..]).unwrap_or("");
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the command name; 100 ticks/s.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Samples a process's RSS every 500 ms (KiB): (samples, stop flag).
fn sample_rss(pid: u32) -> (Arc<std::sync::Mutex<Vec<u64>>>, Arc<AtomicU64>) {
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicU64::new(0));
    let (s, st) = (samples.clone(), stop.clone());
    std::thread::spawn(move || {
        while st.load(Relaxed) == 0 {
            match process::rss_kib(pid) {
                Some(v) => s.lock().unwrap().push(v),
                None => return,
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    (samples, stop)
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// (Secrets holding a token whose expires-at is in the past, Secrets without one yet, smallest
/// remaining lifetime in seconds) over every target Secret.
async fn expiry_scan(admin: &Client) -> (u64, u64, i64) {
    let api: Api<PartialObjectMeta<Secret>> = Api::all(admin.clone());
    let now = jiff::Timestamp::now().as_second();
    let (mut expired, mut pending, mut least) = (0, 0, i64::MAX);
    let mut lp = ListParams::default()
        .labels("ls-token-refresher/managed=true")
        .limit(2000);
    loop {
        let Ok(page) = api.list_metadata(&lp).await else {
            return (expired, pending, least);
        };
        for s in &page.items {
            let exp = s
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("ls-token-refresher/expires-at"))
                .and_then(|v| v.parse::<jiff::Timestamp>().ok())
                .map(|t| t.as_second());
            match exp {
                Some(e) if e <= now => expired += 1,
                Some(e) => least = least.min(e - now),
                None => pending += 1,
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => return (expired, pending, least),
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let p = Params(
        std::env::args()
            .skip(1)
            .filter_map(|a| a.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect(),
    );
    let tokens: usize = p.get("tokens", 100);
    let namespaces: usize = p.get("namespaces", 10).clamp(1, tokens.max(1));
    let ttl: u64 = p.get("ttl", 300);
    let latency_ms: u64 = p.get("latency_ms", 15);
    let real_ls: u8 = p.get("real_ls", 0);
    let (qps, burst, exchanges): (u32, u32, u32) =
        (p.get("qps", 50), p.get("burst", 100), p.get("exchanges", 8));
    let margin: String = p.get("margin", "90s".to_string());
    let steady: u64 = p.get("steady", ttl);
    let restart_window: u64 = p.get("restart_window", 60);
    let ready_timeout: u64 = p.get("ready_timeout", 1800);
    let out: String = p.get("out", String::new());
    let log_level: String = p.get("log_level", "info".to_string());
    ls_token_refresher_e2e::init_crypto();

    let server = ApiServer::start().await;
    let admin = server.admin_client().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut real = None;
    let (ls_url, counters, pat): (String, Option<Arc<Counters>>, Option<String>) = if real_ls != 0 {
        let ls = LabelStudio::start_with_ttl(ttl).await;
        let pat = ls.mint_short_pat(86_400).await;
        let url = ls.url();
        real = Some(ls);
        (url, None, Some(pat))
    } else {
        let s = ls_standin::start(StandinConfig {
            ttl: Duration::from_secs(ttl),
            latency: Duration::from_millis(latency_ms),
        })
        .await;
        (s.url, Some(s.counters), None)
    };
    let ls_requests = |c: &Option<Arc<Counters>>| c.as_ref().map(|c| c.total());
    install_crds(&server, tmp.path()).await;
    let conn: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "ls-token-refresher.io/v1alpha1",
        "kind": "LabelStudioConnection",
        "metadata": { "name": "bench" },
        "spec": { "url": ls_url },
    }))
    .unwrap();
    Api::<DynamicObject>::all_with(
        admin.clone(),
        &resource("LabelStudioConnection", "labelstudioconnections"),
    )
    .create(&PostParams::default(), &conn)
    .await
    .expect("create connection");
    let mut ns_names = Vec::new();
    for i in 0..namespaces {
        let ns = server.create_namespace("scale").await;
        let pat = pat
            .clone()
            .unwrap_or_else(|| ls_standin::pat(i as i64 + 1, Duration::from_secs(86_400)));
        Api::<Secret>::namespaced(admin.clone(), &ns)
            .create(&PostParams::default(), &pat_secret("ls-pat", &pat, true))
            .await
            .expect("create PAT secret");
        ns_names.push(ns);
    }
    let kubeconfig = server.admin_kubeconfig_path();
    let margin_arg = margin.clone();
    let (qs, bs, es) = (qps.to_string(), burst.to_string(), exchanges.to_string());
    let start = |name: &str| {
        RefresherProc::start_command(
            "controller",
            tmp.path(),
            name,
            &[
                "--log-level",
                &log_level,
                "--kube-qps",
                &qs,
                "--kube-burst",
                &bs,
                "--max-concurrent-exchanges",
                &es,
                "--propagation-margin",
                &margin_arg,
            ],
            &[
                ("KUBECONFIG", kubeconfig.to_str().unwrap()),
                ("HOME", "/nonexistent"),
            ],
        )
    };

    // 0. Baseline.
    let mut c0 = start("baseline");
    let baseline_synced = synced_within(&c0, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let baseline_rss = process::rss_kib(c0.pid()).unwrap_or(0);
    c0.signal_and_wait("TERM");

    // 1. Token resources.
    let t_create = Instant::now();
    let tokens_api = resource("LabelStudioToken", "labelstudiotokens");
    futures::stream::iter(0..tokens)
        .map(|i| {
            let ns = &ns_names[i % namespaces];
            let api = Api::<DynamicObject>::namespaced_with(admin.clone(), ns, &tokens_api);
            let obj: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "ls-token-refresher.io/v1alpha1",
                "kind": "LabelStudioToken",
                "metadata": { "name": format!("t{i:05}") },
                "spec": {
                    "connectionName": "bench",
                    "patSecretRef": { "name": "ls-pat" },
                    "secretName": format!("s{i:05}"),
                }
            }))
            .unwrap();
            async move { api.create(&PostParams::default(), &obj).await.map(|_| ()) }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await
        .expect("create token resources");
    let create_secs = t_create.elapsed().as_secs_f64();
    eprintln!("bench: {tokens} token resources created in {create_secs:.1} s");

    // 2. Start to all Ready.
    let ls_before_start = ls_requests(&counters);
    let t0 = Instant::now();
    let mut c1 = start("controller");
    let pid = c1.pid();
    let cpu_start = cpu_secs(pid);
    let (rss, stop_rss) = sample_rss(pid);
    let mut synced_secs = None;
    let mut max_queue = 0f64;
    let mut expired_max = 0u64;
    let all_ready_secs = loop {
        if synced_secs.is_none() && c1.admin_get("/readyz").await.0 == 200 {
            synced_secs = Some(t0.elapsed().as_secs_f64());
        }
        if let Some(s) = snapshot(&c1).await {
            max_queue = max_queue.max(s.queue_depth);
            if s.ready as usize >= tokens {
                break Some(t0.elapsed().as_secs_f64());
            }
        }
        if t0.elapsed() > Duration::from_secs(ready_timeout) {
            // Measured on: the steady phase then shows whether published tokens expire.
            eprintln!("bench: not all Ready within {ready_timeout} s");
            break None;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let startup_cpu = cpu_secs(pid) - cpu_start;
    let at_ready = snapshot(&c1).await.unwrap_or_default();
    let rss_at_ready = process::rss_kib(pid).unwrap_or(0);
    eprintln!(
        "bench: synced after {synced_secs:?} s, all {tokens} Ready after {all_ready_secs:?} s"
    );

    // 3. Steady state.
    let s1 = at_ready;
    let cpu1 = cpu_secs(pid);
    let ls1 = ls_requests(&counters);
    let steady_rss_from = rss.lock().unwrap().len();
    let t_steady = Instant::now();
    let mut scans = 0u64;
    let mut least_left = i64::MAX;
    while t_steady.elapsed() < Duration::from_secs(steady) {
        let (expired, _pending, least) = expiry_scan(&admin).await;
        expired_max = expired_max.max(expired);
        least_left = least_left.min(least);
        scans += 1;
        if let Some(s) = snapshot(&c1).await {
            max_queue = max_queue.max(s.queue_depth);
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let steady_secs = t_steady.elapsed().as_secs_f64();
    let s2 = snapshot(&c1).await.unwrap_or_default();
    let cpu2 = cpu_secs(pid);
    let ls2 = ls_requests(&counters);
    stop_rss.store(1, Relaxed);
    let peak_rss = process::peak_rss_kib(pid).unwrap_or(0);
    let (rss_all, mut rss_steady) = {
        let v = rss.lock().unwrap();
        (v.clone(), v[steady_rss_from.min(v.len())..].to_vec())
    };
    let steady_rss_median = median(&mut rss_steady);
    let steady_rss_max = rss_steady.iter().copied().max().unwrap_or(0);
    let refreshes = (s2.refreshes - s1.refreshes).max(1.0);

    // 4. Restart.
    let t_stop = Instant::now();
    c1.signal_and_wait("TERM");
    let stop_secs = t_stop.elapsed().as_secs_f64();
    let ls_at_restart = ls_requests(&counters);
    let t_r = Instant::now();
    let mut c2 = start("restarted");
    let mut restart_synced_secs = None;
    let mut restart_all_seen_secs = None;
    let mut restart_snapshot = Snapshot::default();
    while t_r.elapsed() < Duration::from_secs(restart_window) {
        if restart_synced_secs.is_none() && c2.admin_get("/readyz").await.0 == 200 {
            restart_synced_secs = Some(t_r.elapsed().as_secs_f64());
        }
        if let Some(s) = snapshot(&c2).await {
            if restart_all_seen_secs.is_none() && s.reconciles as usize >= tokens {
                restart_all_seen_secs = Some(t_r.elapsed().as_secs_f64());
            }
            restart_snapshot = s;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let ls_after_window = ls_requests(&counters);
    let restart_rss = process::rss_kib(c2.pid()).unwrap_or(0);
    let (expired_after_restart, _, _) = expiry_scan(&admin).await;
    c2.signal_and_wait("TERM");
    let (apiserver_rss, etcd_rss) = server.rss_kib();
    let warnings = c1.log_text().lines().filter(|l| l.contains("WARN")).count();

    let result = json!({
        "tokens": tokens, "namespaces": namespaces, "ttl_s": ttl, "latency_ms": latency_ms,
        "label_studio": if real_ls != 0 { "real 1.23.2" } else { "stand-in" },
        "kube_qps": qps, "kube_burst": burst, "max_concurrent_exchanges": exchanges,
        "propagation_margin": margin,
        "load_avg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "create_secs": create_secs,
        "baseline_rss_kib": baseline_rss,
        "baseline_synced": baseline_synced.is_some(),
        "synced_secs": synced_secs,
        "all_ready_secs": all_ready_secs,
        "startup_cpu_s": startup_cpu,
        "startup_kube_requests": at_ready.kube_requests,
        "startup_status_writes": at_ready.status_writes,
        "startup_secret_writes": at_ready.secret_writes,
        "startup_ls_requests": ls1.zip(ls_before_start).map(|(a, b)| a - b),
        "rss_at_ready_kib": rss_at_ready,
        "steady_secs": steady_secs,
        "steady_rss_median_kib": steady_rss_median,
        "steady_rss_max_kib": steady_rss_max,
        "peak_rss_kib": peak_rss,
        "rss_max_sampled_kib": rss_all.iter().copied().max().unwrap_or(0),
        "refreshes": s2.refreshes - s1.refreshes,
        "cpu_s": cpu2 - cpu1,
        "cpu_ms_per_refresh": (cpu2 - cpu1) * 1000.0 / refreshes,
        "secret_writes_per_refresh": (s2.secret_writes - s1.secret_writes) / refreshes,
        "status_writes_per_refresh": (s2.status_writes - s1.status_writes) / refreshes,
        "kube_requests_per_refresh": (s2.kube_requests - s1.kube_requests) / refreshes,
        "http_requests_per_refresh": (s2.http_requests - s1.http_requests) / refreshes,
        "ls_requests_per_refresh": ls2.zip(ls1).map(|(a, b)| (a - b) as f64 / refreshes),
        "kube_requests_per_s": (s2.kube_requests - s1.kube_requests) / steady_secs,
        "expiry_scans": scans,
        "expired_secrets_max": expired_max,
        "least_remaining_s": least_left,
        "max_exchange_queue_depth": max_queue,
        "ls_max_in_flight": counters.as_ref().map(|c| c.max_in_flight.load(Relaxed)),
        "stop_secs": stop_secs,
        "restart_synced_secs": restart_synced_secs,
        "restart_all_reconciled_secs": restart_all_seen_secs,
        "restart_ls_requests_window": ls_after_window.zip(ls_at_restart).map(|(a, b)| a - b),
        "restart_http_requests_window": restart_snapshot.http_requests,
        "restart_kube_requests_window": restart_snapshot.kube_requests,
        "restart_window_s": restart_window,
        "restart_rss_kib": restart_rss,
        "expired_after_restart": expired_after_restart,
        "controller_warnings": warnings,
        "apiserver_rss_kib": apiserver_rss, "etcd_rss_kib": etcd_rss,
        "ls_counters": counters.as_ref().map(|c| c.json()),
    });
    drop(real);
    let text = result.to_string();
    println!("{text}");
    if !out.is_empty() {
        std::fs::write(PathBuf::from(out), format!("{text}\n")).unwrap();
    }
}
