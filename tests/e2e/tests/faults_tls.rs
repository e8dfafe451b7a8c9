//! The real binary against an HTTPS front of a real Label Studio 1.23.2 (`tls`) with a self-signed
//! certificate: without `--ca-file` and with the wrong one it counts reason `tls`, never turns ready
//! and publishes nothing; with the right one it publishes a token the API accepts. Figures
//! (`FAULTS-FIGURES …` on stderr): docs/fault-injection.md.

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use ls_token_refresher_e2e::{
    fault_suite::{errors_metric, fault_args, metric, setup, start_refresher, Setup, WHOAMI},
    http1::http_status,
    log_scan::scan_logs,
    pki::self_signed_cert,
    tls::TlsEndpoint,
    token_dir::read_set,
    wait::wait_for,
};

struct TlsOutcome {
    problems: Vec<String>,
    logs: Vec<String>,
    tokens: Vec<String>,
}

async fn tls_endpoint(ls_url: String, pat: String, base: PathBuf) -> TlsOutcome {
    let dir = base.join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = self_signed_cert(&dir, "endpoint");
    let (other_cert, _) = self_signed_cert(&dir, "other");
    let tls = TlsEndpoint::start(&cert, &key, &ls_url);
    let mut problems = Vec::new();
    let mut logs = Vec::new();
    // Without the certificate, and with the wrong one: reason tls, never ready, nothing published.
    for (name, ca) in [("tls-no-ca", None), ("tls-wrong-ca", Some(&other_cert))] {
        let token_dir = dir.join(name);
        std::fs::create_dir_all(&token_dir).unwrap();
        let mut extra = vec![];
        let ca_s;
        if let Some(ca) = ca {
            ca_s = ca.to_str().unwrap().to_owned();
            extra = vec!["--ca-file", ca_s.as_str()];
        }
        let mut proc = start_refresher(
            &dir,
            name,
            &fault_args(&tls.url(), &token_dir, &extra),
            &pat,
        );
        let m = errors_metric("tls");
        let seen = wait_for(Duration::from_secs(20), || async {
            metric(&proc, &m).await >= 2.0
        })
        .await;
        let (code, body) = proc.admin_get("/readyz").await;
        let published = std::fs::read_dir(&token_dir).unwrap().count();
        eprintln!(
            "FAULTS-FIGURES test=long scenario={name} tls_errors_after_s={} readyz={code} published_files={published}",
            seen.map(|s| format!("{s:.1}")).unwrap_or("never".into())
        );
        if seen.is_none() {
            problems.push(format!("{name}: reason tls never counted twice"));
        }
        if code != 503 || !body.contains("tls") {
            problems.push(format!("{name}: readyz {code} {}", body.trim()));
        }
        if published != 0 {
            problems.push(format!("{name}: something was published"));
        }
        let exit = proc.signal_and_wait("TERM").code();
        if exit != Some(0) {
            problems.push(format!("{name}: exit {exit:?}"));
        }
        logs.push(proc.log_text());
    }
    // With --ca-file: accepted, and the token works.
    let token_dir = dir.join("tls-ca");
    std::fs::create_dir_all(&token_dir).unwrap();
    let ca = cert.to_str().unwrap().to_owned();
    let mut proc = start_refresher(
        &dir,
        "tls-ca",
        &fault_args(&tls.url(), &token_dir, &["--ca-file", &ca]),
        &pat,
    );
    proc.wait_ready(200, Duration::from_secs(30)).await;
    let (_, auth, _) = read_set(&token_dir).expect("published over TLS");
    let url = ls_url.clone();
    let api = tokio::task::spawn_blocking(move || http_status(&url, WHOAMI, &auth))
        .await
        .unwrap();
    eprintln!("FAULTS-FIGURES test=long scenario=tls-ca-file ready=true api={api:?}");
    if api != Some(200) {
        problems.push(format!("tls-ca: API answered {api:?}"));
    }
    let exit = proc.signal_and_wait("TERM").code();
    if exit != Some(0) {
        problems.push(format!("tls-ca: exit {exit:?}"));
    }
    logs.push(proc.log_text());
    TlsOutcome {
        problems,
        logs,
        tokens: tls.tokens.all(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_endpoint_is_trusted_only_with_its_ca_file() {
    let Setup { ls, pat, tmp } = setup().await;
    let tls = tls_endpoint(ls.url(), pat.clone(), tmp.path().to_path_buf()).await;
    assert!(tls.problems.is_empty(), "TLS:\n{}", tls.problems.join("\n"));
    let tokens: BTreeSet<String> = tls.tokens.iter().cloned().collect();
    scan_logs("tls", &tls.logs, &tokens, &pat);
}
