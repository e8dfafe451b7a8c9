//! Publish-side faults under the real binary: the token directory on a real tmpfs (`tmpfs`) is
//! remounted read-only, or filled to ENOSPC, for 9 s while a real Label Studio 1.23.2 keeps issuing
//! tokens. The previous set stays whole and readable, readiness stays true, the failure is counted
//! (`publish_failed`, sink write errors) and logged with the OS error, and the next attempt after the
//! fault publishes and leaves one generation. Needs root (`mount -t tmpfs`). Figures
//! (`FAULTS-FIGURES …` on stderr): docs/fault-injection.md.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use ls_token_refresher_e2e::{
    consumer::{Consumer, ConsumerReport},
    fault_proxy::FaultProxy,
    fault_suite::{
        errors_metric, fault_args, metric, setup, start_refresher, wait_next_success, Setup,
        BACKOFF_MAX, CHECK_EVERY, SINK_ERRORS,
    },
    log_scan::scan_logs,
    tmpfs::Tmpfs,
    token_dir::{debris, visible_set},
};

struct PublishOutcome {
    name: &'static str,
    sink_errors: f64,
    publish_failed: f64,
    kept_intact: bool,
    not_ready: u64,
    recovery: Option<f64>,
    gens_after: usize,
    consumer: ConsumerReport,
    log: String,
    tokens: Vec<String>,
    exit: Option<i32>,
    hold: f64,
}

async fn publish_fault(
    ls_url: String,
    pat: String,
    base: PathBuf,
    kind: &'static str,
) -> PublishOutcome {
    let fs = Tmpfs::mount(if kind == "enospc" { "256k" } else { "4m" }).unwrap_or_else(|e| {
        panic!("the publish-fault scenarios need a tmpfs (root, mount -t tmpfs): {e}")
    });
    let dir = base.join(kind);
    std::fs::create_dir_all(&dir).unwrap();
    let token_dir = fs.path().to_path_buf();
    let proxy = FaultProxy::start(&ls_url).await;
    let mut proc = start_refresher(&dir, kind, &fault_args(&proxy.url(), &token_dir, &[]), &pat);
    proc.wait_ready(200, Duration::from_secs(60)).await;
    let consumer = Consumer::start(&token_dir, &ls_url, CHECK_EVERY);
    wait_next_success(&proc, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(fastrand::u64(200..2000))).await;
    let before = visible_set(&token_dir).expect("published set");
    let errs0 = metric(&proc, SINK_ERRORS).await;
    let pf0 = metric(&proc, &errors_metric("publish_failed")).await;
    let mut filler = None;
    match kind {
        "read-only" => fs.remount("ro"),
        _ => filler = Some(fs.fill("filler").0),
    }
    let t_fault = Instant::now();
    let (mut kept_intact, mut not_ready) = (true, 0);
    while t_fault.elapsed() < Duration::from_secs(9) {
        if visible_set(&token_dir).as_ref() != Some(&before) {
            kept_intact = false;
        }
        if proc.admin_get("/readyz").await.0 != 200 {
            not_ready += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sink_errors = metric(&proc, SINK_ERRORS).await - errs0;
    let publish_failed = metric(&proc, &errors_metric("publish_failed")).await - pf0;
    match &filler {
        None => fs.remount("rw"),
        Some(f) => std::fs::remove_file(f).unwrap(),
    }
    let hold = t_fault.elapsed().as_secs_f64();
    let t_restore = Instant::now();
    let mut recovery = None;
    while t_restore.elapsed() < Duration::from_secs(15) {
        if visible_set(&token_dir).is_some_and(|s| s.0 != before.0) {
            recovery = Some(t_restore.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let gens_after = debris(&token_dir).0;
    let consumer = consumer.stop();
    let exit = proc.signal_and_wait("TERM").code();
    PublishOutcome {
        name: kind,
        sink_errors,
        publish_failed,
        kept_intact,
        not_ready,
        recovery,
        gens_after,
        consumer,
        log: proc.log_text(),
        tokens: proxy.tokens(),
        exit,
        hold,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_faults_keep_the_previous_set_and_recover() {
    let t0 = Instant::now();
    let Setup { ls, pat, tmp } = setup().await;
    let base = tmp.path().to_path_buf();
    let (ro, full) = tokio::join!(
        publish_fault(ls.url(), pat.clone(), base.clone(), "read-only"),
        publish_fault(ls.url(), pat.clone(), base.clone(), "enospc"),
    );
    let mut failed = Vec::new();
    let mut logs = Vec::new();
    let mut tokens = BTreeSet::new();
    for (o, errno_text) in [
        (&ro, "Read-only file system"),
        (&full, "No space left on device"),
    ] {
        eprintln!(
            "FAULTS-FIGURES test=publish scenario={} hold_s={:.1} sink_write_errors={} publish_failed={} previous_set_intact={} not_ready={} recovery_s={} generation_dirs_after={} consumer_samples={} api_checks={} expired={} rejected={} torn={} exit={:?}",
            o.name,
            o.hold,
            o.sink_errors,
            o.publish_failed,
            o.kept_intact,
            o.not_ready,
            o.recovery.map(|v| format!("{v:.2}")).unwrap_or("never".into()),
            o.gens_after,
            o.consumer.samples,
            o.consumer.api_checks,
            o.consumer.expired,
            o.consumer.rejected,
            o.consumer.torn,
            o.exit
        );
        let mut p = Vec::new();
        if o.sink_errors < 2.0 || o.publish_failed < 2.0 {
            p.push(format!(
                "not counted and retried: sink errors {}, publish_failed {}",
                o.sink_errors, o.publish_failed
            ));
        }
        if !o.kept_intact {
            p.push("the previous set changed during the fault".into());
        }
        if o.not_ready > 0 {
            p.push(format!("readiness false in {} samples", o.not_ready));
        }
        match o.recovery {
            Some(r) if r <= BACKOFF_MAX + 2.0 => {}
            other => p.push(format!("recovery {other:?}")),
        }
        if o.gens_after != 1 {
            p.push(format!("{} generation dirs after recovery", o.gens_after));
        }
        if !(o.log.contains("publish_failed") && o.log.contains(errno_text)) {
            p.push(format!("not reported in the log ({errno_text})"));
        }
        if o.consumer.samples == 0 || o.consumer.expired + o.consumer.rejected + o.consumer.torn > 0
        {
            p.push(format!("consumer: {:?}", o.consumer.problems));
        }
        if o.exit != Some(0) {
            p.push(format!("exit {:?}", o.exit));
        }
        if !p.is_empty() {
            failed.push(format!("{}: {}", o.name, p.join("; ")));
        }
        logs.push(o.log.clone());
        tokens.extend(o.tokens.iter().cloned());
        tokens.extend(o.consumer.tokens.iter().cloned());
    }
    eprintln!(
        "FAULTS-FIGURES test=publish scenarios=2 wall_s={:.0}",
        t0.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "publish faults:\n{}", failed.join("\n"));
    scan_logs("publish", &logs, &tokens, &pat);
}
