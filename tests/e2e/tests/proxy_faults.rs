//! Fault cases of the auth proxy with the real binary and the real Label Studio 1.23.2, the fault
//! proxy (`fault_proxy`) between them where Label Studio has to misbehave, and raw TCP clients for
//! protocol abuse. Every proxy runs at `--log-level trace`; each test scans its log for the PAT(s)
//! and any JWT, and the tests that know the access token (`run --token-dir … --proxy-addr`) scan
//! every answer body for it too. Figures: `PROXY-FIGURES …` on stderr.
//!
//! - `revoked_pat_answers_503_with_a_reason_until_a_new_pat_arrives`
//! - `label_studio_refused_or_black_holed_answers_502_or_504_and_the_proxy_recovers`
//! - `foreign_credentials_are_replaced_by_ours`
//! - `refused_targets_and_smuggled_requests_reach_nothing`
//! - `no_spelling_and_no_browser_reaches_a_credential`
//! - `oversized_heads_and_slow_clients_do_not_hold_up_others`
//! - `a_thousand_idle_connections_cost_little_and_are_closed`
//! - `a_401_from_label_studio_triggers_one_revalidation_not_a_storm`
//! - `large_bodies_stream_through_in_small_memory`

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use ls_token_refresher_e2e::{
    auth_proxy::{raw, write_pat, AuthProxy, CONNECTIONS, EXCHANGES, VALIDATIONS},
    fault_proxy::{Fault, FaultProxy},
    label_studio::LabelStudio,
    log_scan::assert_no_secrets,
    ls_api::http_client,
    process,
    token_dir::read_set,
    wait::wait_for,
};
use reqwest::{header, Method, StatusCode};
use tokio::{io::AsyncWriteExt, net::TcpStream};

/// What a consumer configured with a placeholder sends.
#[path = "../../support/hostile_targets.rs"]
mod hostile;

const PLACEHOLDER_AUTH: &str = "Token placeholder-not-a-token";
const WHOAMI: &str = "/api/current-user/whoami";

/// One answer through the proxy.
struct Answer {
    status: StatusCode,
    headers: header::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("HTTP {} not JSON ({e}): {}", self.status, self.body))
    }
}

async fn send(proxy: &AuthProxy, method: Method, path: &str, body: Option<&str>) -> Answer {
    let mut rb = http_client()
        .request(method, format!("{}{path}", proxy.url()))
        .header(header::AUTHORIZATION, PLACEHOLDER_AUTH);
    if let Some(b) = body {
        rb = rb
            .header(header::CONTENT_TYPE, "application/json")
            .body(b.to_owned());
    }
    let r = rb.send().await.expect("the proxy answers");
    Answer {
        status: r.status(),
        headers: r.headers().clone(),
        body: r.text().await.unwrap_or_default(),
    }
}

async fn get(proxy: &AuthProxy, path: &str) -> Answer {
    send(proxy, Method::GET, path, None).await
}

/// What label-studio-sdk sends with a JWT-shaped key: its refresh POST.
async fn sdk_refresh(proxy: &AuthProxy) -> Answer {
    send(
        proxy,
        Method::POST,
        "/api/token/refresh/",
        Some(r#"{"refresh":"placeholder"}"#),
    )
    .await
}

/// What every test starts from. Keep it whole (`let s = setup(…)`): dropping it stops Label
/// Studio and removes the PAT file.
struct Setup {
    ls: LabelStudio,
    pat: String,
    /// The fault proxy between the proxy and Label Studio, when asked for.
    fault: Option<FaultProxy>,
    proxy: AuthProxy,
    /// Where `run` publishes the token, when asked for.
    token_dir: Option<PathBuf>,
    _tmp: tempfile::TempDir,
}

/// The access token `run` published to `dir` (the proxy sends the same one).
fn published_token(dir: &Path) -> String {
    read_set(dir).expect("a published token").0
}

/// A Label Studio whose access tokens live `ttl` seconds, a PAT, the fault proxy in front of it
/// if `via_fault`, and the proxy: `run --token-dir` if `publish` (the test can then read the
/// token), else `proxy`; `extra` flags added.
async fn setup(ttl: u64, via_fault: bool, publish: bool, extra: &[&str]) -> Setup {
    let ls = LabelStudio::start_with_ttl(ttl).await;
    let pat = ls.api().create_pat().await;
    let fault = match via_fault {
        true => Some(FaultProxy::start(&ls.url()).await),
        false => None,
    };
    let url = fault.as_ref().map_or(ls.url(), FaultProxy::url);
    let tmp = tempfile::tempdir().unwrap();
    let token_dir = publish.then(|| tmp.path().join("token"));
    let mut args: Vec<&str> = extra.to_vec();
    let command = match &token_dir {
        Some(dir) => {
            std::fs::create_dir(dir).unwrap();
            args.extend(["--token-dir", dir.to_str().unwrap()]);
            "run"
        }
        None => "proxy",
    };
    let proxy = AuthProxy::start(command, &url, &pat, tmp.path(), command, &args).await;
    Setup {
        ls,
        pat,
        fault,
        proxy,
        token_dir,
        _tmp: tmp,
    }
}

/// Asserts that no answer body holds a secret (the token, the PAT, or a part of them).
fn assert_bodies_clean(bodies: &[String], secrets: &[&str]) {
    for b in bodies {
        for s in secrets {
            let tail = &s[s.len().saturating_sub(16)..];
            assert!(
                !b.contains(s) && !b.contains(tail),
                "a secret appears in an answer body"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_pat_answers_503_with_a_reason_until_a_new_pat_arrives() {
    const TTL: u64 = 10;
    let mut s = setup(
        TTL,
        false,
        false,
        &["--backoff-initial", "500ms", "--backoff-max", "2s"],
    )
    .await;
    let ls = &s.ls;
    let pat = s.pat.clone();
    let proxy = &mut s.proxy;
    let pid = proxy.proc.pid();
    assert_eq!(get(proxy, WHOAMI).await.status, 200);

    ls.api().blacklist(&pat).await;
    let revoked = Instant::now();
    // The current access token keeps working until it expires (JWTs are not revocable); then the
    // proxy holds nothing valid and says so instead of forwarding.
    let mut statuses = Vec::new();
    let first_503 = loop {
        let a = get(proxy, WHOAMI).await;
        statuses.push(a.status.as_u16());
        if a.status == 503 {
            break a;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(TTL + 10),
            "no 503 within {}s of revoking the PAT: {statuses:?}",
            TTL + 10
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let to_503 = revoked.elapsed().as_secs_f64();
    // At most one 401 (a request in flight as the token expired at Label Studio) before the 503s.
    assert!(
        statuses.iter().all(|s| [200, 401, 503].contains(s))
            && statuses.iter().filter(|s| **s == 401).count() <= 1,
        "{statuses:?}"
    );
    let body = first_503.json();
    assert_eq!(body["reason"], "revoked_pat", "{body}");
    assert_eq!(body["status_code"], 503);
    assert!(
        body["detail"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    let retry: u64 = first_503.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    // The SDK's refresh is answered the same way, and readiness agrees.
    let r = sdk_refresh(proxy).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["reason"], "revoked_pat");
    assert_eq!(proxy.proc.admin_get("/readyz").await.0, 503);
    for _ in 0..5 {
        assert_eq!(get(proxy, WHOAMI).await.status, 503, "flapped");
    }

    // A new PAT arrives in the file (as a rotated Secret does): served again, same process.
    let new_pat = ls.api().create_pat().await;
    write_pat(&proxy.pat_file, &new_pat);
    let back = wait_for(Duration::from_secs(15), || async {
        get(proxy, WHOAMI).await.status == 200
    })
    .await
    .expect("not served again within 15 s of the new PAT");
    assert!(proxy.proc.try_status().is_none() && proxy.proc.pid() == pid);
    eprintln!(
        "PROXY-FIGURES revoked-pat revocation_to_503_s={to_503:.1} ttl_s={TTL} retry_after_s={retry} rotation_to_200_s={back:.1}"
    );
    assert_no_secrets(&proxy.proc.log_text(), &[&pat, &new_pat]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_studio_refused_or_black_holed_answers_502_or_504_and_the_proxy_recovers() {
    let s = setup(300, true, true, &["--proxy-timeout", "2s"]).await;
    let pat = s.pat.clone();
    let fault = s.fault.as_ref().unwrap();
    let proxy = &s.proxy;
    let token_dir = s.token_dir.clone().unwrap();
    let mut bodies = Vec::new();
    let ok = get(proxy, WHOAMI).await;
    assert_eq!(ok.status, 200);
    bodies.push(ok.body);

    fault.set(Fault::Refuse);
    let a = get(proxy, WHOAMI).await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert_eq!(a.json()["reason"], "network");
    bodies.push(a.body);
    assert_eq!(proxy.proc.admin_get("/livez").await.0, 200);

    fault.set(Fault::BlackHole);
    let t0 = Instant::now();
    let a = get(proxy, WHOAMI).await;
    let waited = t0.elapsed().as_secs_f64();
    assert_eq!(a.status, 504, "{}", a.body);
    assert_eq!(a.json()["reason"], "timeout");
    assert!(
        (2.0..5.0).contains(&waited),
        "504 after {waited:.2}s (--proxy-timeout 2s)"
    );
    bodies.push(a.body);
    assert_eq!(proxy.proc.admin_get("/livez").await.0, 200);

    fault.set(Fault::Pass);
    let a = get(proxy, WHOAMI).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("admin@example.com"));
    bodies.push(a.body);
    let errors = |r: &'static str| {
        let p = &proxy;
        async move {
            p.metric(&format!(
                "ls_token_refresher_proxy_upstream_errors_total{{reason=\"{r}\"}}"
            ))
            .await
        }
    };
    assert_eq!(errors("network").await, 1.0);
    assert_eq!(errors("timeout").await, 1.0);
    eprintln!("PROXY-FIGURES down black_hole_504_after_s={waited:.2} proxy_timeout_s=2");
    let token = published_token(&token_dir);
    assert_bodies_clean(&bodies, &[&token, &pat]);
    let tokens = fault.tokens();
    let mut secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    secrets.push(&pat);
    assert_no_secrets(&proxy.proc.log_text(), &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_credentials_are_replaced_by_ours() {
    let s = setup(300, true, true, &[]).await;
    let ls = &s.ls;
    let pat = s.pat.clone();
    let fault = s.fault.as_ref().unwrap();
    let proxy = &s.proxy;
    let token_dir = s.token_dir.clone().unwrap();
    let legacy = ls.api().legacy_token().await;
    let standin = {
        let r = sdk_refresh(proxy).await;
        assert_eq!(r.status, 200);
        r.json()["access"].as_str().unwrap().to_owned()
    };
    // Credentials a consumer might still be configured with. Each one alone makes Label Studio
    // answer 401 (legacy tokens are off; a PAT is not an access token; a stand-in is unsigned).
    let bearer_pat = format!("Bearer {pat}");
    let token_legacy = format!("Token {legacy}");
    let bearer_standin = format!("Bearer {standin}");
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("legacy token", vec![("authorization", &token_legacy)]),
        ("the PAT as Bearer", vec![("authorization", &bearer_pat)]),
        ("a stand-in", vec![("authorization", &bearer_standin)]),
        (
            "X-Api-Key and two Authorization fields",
            vec![
                ("x-api-key", &legacy),
                ("authorization", &token_legacy),
                ("authorization", &bearer_pat),
            ],
        ),
    ];
    let mut bodies = Vec::new();
    for (name, headers) in &cases {
        let build = |base: &str| {
            let mut rb = http_client().get(format!("{base}{WHOAMI}"));
            for (k, v) in headers {
                rb = rb.header(*k, *v);
            }
            rb
        };
        let direct = build(&ls.url()).send().await.unwrap();
        assert_eq!(
            direct.status(),
            401,
            "{name}: Label Studio accepts it directly"
        );
        let before = fault.requests().len();
        let via = build(&proxy.url()).send().await.unwrap();
        assert_eq!(via.status(), 200, "{name}");
        let body = via.text().await.unwrap();
        let who: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(who["email"], "admin@example.com", "{name}");
        bodies.push(body);
        let seen: Vec<_> = fault.requests()[before..]
            .iter()
            .filter(|r| r.path == WHOAMI)
            .cloned()
            .collect();
        assert_eq!(seen.len(), 1, "{name}");
        let names = &seen[0].header_names;
        assert_eq!(
            names.iter().filter(|n| *n == "authorization").count(),
            1,
            "{name}: {names:?}"
        );
        assert!(!names.iter().any(|n| n == "x-api-key"), "{name}: {names:?}");
    }
    let token = published_token(&token_dir);
    assert_bodies_clean(&bodies, &[&token, &pat]);
    let tokens = fault.tokens();
    let mut secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    secrets.extend([pat.as_str(), legacy.as_str()]);
    assert_no_secrets(&proxy.proc.log_text(), &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_targets_and_smuggled_requests_reach_nothing() {
    let s = setup(300, true, false, &[]).await;
    let ls = &s.ls;
    let pat = s.pat.clone();
    let fault = s.fault.as_ref().unwrap();
    let proxy = &s.proxy;
    let wait = Duration::from_secs(5);
    let forwarded = || {
        fault
            .requests()
            .into_iter()
            .filter(|r| !r.path.starts_with("/api/token/refresh") && r.path != WHOAMI)
            .map(|r| r.path)
            .collect::<Vec<_>>()
    };

    // Absolute-form (to another host, or to Label Studio itself) and CONNECT: refused here.
    for target in [
        "http://example.com/api/projects/".to_owned(),
        format!("{}/api/projects/", ls.url()),
    ] {
        let a = raw(
            proxy.addr,
            format!("GET {target} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            wait,
        )
        .await;
        assert_eq!(a.statuses(), ["HTTP/1.1 400 Bad Request"], "{}", a.text);
        assert_eq!(a.json()["reason"], "refused");
    }
    let a = raw(
        proxy.addr,
        format!(
            "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n",
            port = ls.port()
        )
        .as_bytes(),
        wait,
    )
    .await;
    assert_eq!(
        a.statuses(),
        ["HTTP/1.1 405 Method Not Allowed"],
        "{}",
        a.text
    );
    assert!(forwarded().is_empty(), "{:?}", forwarded());

    // Transfer-Encoding with Content-Length, a second request hidden behind the chunked body
    // (CL.TE) or inside it (TE.CL): one project is created from the chunked body, the hidden
    // request never reaches Label Studio, the connection is closed.
    let smuggled = "GET /api/smuggled-marker/ HTTP/1.1\r\nHost: x\r\n\r\n";
    let json = r#"{"title":"te-cl"}"#;
    let chunked = format!("{:x}\r\n{json}\r\n0\r\n\r\n", json.len());
    let cl_te = format!(
        "POST /api/projects/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}{smuggled}",
        chunked.len() + smuggled.len()
    );
    let te_cl = format!(
        "POST /api/projects/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    let a = raw(proxy.addr, cl_te.as_bytes(), wait).await;
    assert_eq!(a.statuses(), ["HTTP/1.1 201 Created"], "{}", a.text);
    assert_eq!(
        a.json()["title"],
        "te-cl",
        "the chunked body was not the one used"
    );
    assert!(a.closed, "the connection stayed open after TE + CL");
    let a = raw(proxy.addr, te_cl.as_bytes(), wait).await;
    assert_eq!(a.statuses().len(), 1, "{}", a.text);
    assert!(a.closed);
    // Differing Content-Lengths: 400 before anything is forwarded.
    let a = raw(
        proxy.addr,
        format!("POST /api/projects/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 17\r\nContent-Length: 60\r\n\r\n{json}{smuggled}").as_bytes(),
        wait,
    )
    .await;
    assert_eq!(a.statuses(), ["HTTP/1.1 400 Bad Request"], "{}", a.text);
    assert!(a.closed);

    let paths = forwarded();
    assert_eq!(paths, ["/api/projects/", "/api/projects/"], "{paths:?}");
    let ls_log = std::fs::read_to_string(ls.log_path()).unwrap();
    assert!(
        !ls_log.contains("smuggled-marker"),
        "Label Studio saw the hidden request"
    );
    assert_no_secrets(&proxy.proc.log_text(), &[&pat]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_slow_clients_do_not_hold_up_others() {
    let s = setup(300, false, false, &["--proxy-timeout", "2s"]).await;
    let pat = s.pat.clone();
    let proxy = &s.proxy;
    // A head over 64 KiB: 431 and closed.
    let big = format!(
        "GET {WHOAMI} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(80 * 1024)
    );
    let a = raw(proxy.addr, big.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(
        a.statuses(),
        ["HTTP/1.1 431 Request Header Fields Too Large"],
        "{}",
        a.text
    );
    assert!(a.closed);

    // Slow-loris: a head trickling in one byte every 500 ms, on 20 connections.
    let mut loris = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET /api/projects/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .unwrap();
        loris.push(s);
    }
    let drip = tokio::spawn(async move {
        let started = Instant::now();
        let mut closed_after = None;
        'outer: while started.elapsed() < Duration::from_secs(45) {
            for s in loris.iter_mut() {
                if s.write_all(b"X").await.is_err() {
                    closed_after = Some(started.elapsed().as_secs_f64());
                    break 'outer;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        closed_after
    });
    // A slow upload: a project's JSON body, 100 bytes every 200 ms for 6 s (3 × --proxy-timeout).
    let description = "slow upload ".repeat(250) + "end";
    let body = format!(r#"{{"title":"slow upload","description":"{description}"}}"#);
    let bytes = body.into_bytes();
    let stream = futures::stream::iter(bytes.chunks(100).map(|c| c.to_vec()).collect::<Vec<_>>())
        .then(|c| async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, std::io::Error>(c)
        });
    let len = bytes.len();
    let upload = tokio::spawn(
        http_client()
            .post(format!("{}/api/projects/", proxy.url()))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    );
    // Meanwhile other clients are served as usual.
    let t0 = Instant::now();
    for _ in 0..20 {
        assert_eq!(get(proxy, WHOAMI).await.status, 200);
    }
    let others = t0.elapsed().as_secs_f64();
    let r = upload.await.unwrap().expect("the slow upload");
    assert_eq!(r.status(), 201, "a slow but moving upload was cut");
    let project: serde_json::Value = r.json().await.unwrap();
    assert!(
        project["description"] == description.as_str(),
        "the slow upload's body arrived altered"
    );
    // The slow-loris connections are dropped at the header timeout (30 s).
    let closed_after = drip
        .await
        .unwrap()
        .expect("slow-loris connections were never closed");
    assert!(
        (29.0..40.0).contains(&closed_after),
        "slow-loris closed after {closed_after:.1}s"
    );
    eprintln!(
        "PROXY-FIGURES slow-clients others_20_requests_s={others:.2} slow_upload_s={:.1} loris_closed_after_s={closed_after:.1}",
        len as f64 / 100.0 * 0.2
    );
    assert_eq!(get(proxy, WHOAMI).await.status, 200);
    assert_no_secrets(&proxy.proc.log_text(), &[&pat]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_cost_little_and_are_closed() {
    const SILENT: usize = 500;
    const KEPT_ALIVE: usize = 500;
    let s = setup(300, false, false, &[]).await;
    let pat = s.pat.clone();
    let proxy = &s.proxy;
    let pid = proxy.proc.pid();
    for _ in 0..20 {
        assert_eq!(get(proxy, WHOAMI).await.status, 200);
    }
    let before = process::rss_kib(pid).unwrap();
    // Connections that never send a byte, and connections that sent one request (answered by
    // the proxy itself, so Label Studio's speed does not matter) and stay open, idle.
    let mut conns = Vec::new();
    for _ in 0..SILENT {
        conns.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    for _ in 0..KEPT_ALIVE {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET /api/token/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        conns.push(s);
    }
    for s in conns.iter_mut().skip(SILENT) {
        let mut buf = [0u8; 1024];
        let n = tokio::io::AsyncReadExt::read(s, &mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 403"));
    }
    let total = (SILENT + KEPT_ALIVE) as f64;
    wait_for(Duration::from_secs(10), || async {
        proxy.metric(CONNECTIONS).await >= total
    })
    .await
    .expect("the proxy does not count the connections");
    let with = process::rss_kib(pid).unwrap();
    // New clients are served while they are open.
    for _ in 0..20 {
        assert_eq!(get(proxy, WHOAMI).await.status, 200);
    }
    let added_mib = (with.saturating_sub(before)) as f64 / 1024.0;
    eprintln!(
        "PROXY-FIGURES idle-connections n={total} rss_before_kib={before} rss_with_kib={with} added_mib={added_mib:.1} per_connection_kib={:.1} (debug build)",
        (with.saturating_sub(before)) as f64 / total
    );
    // Measured ~10 MiB for 1,000 (about 18 KiB per kept-alive connection, 2 KiB per silent one).
    assert!(
        added_mib < 16.0,
        "{added_mib:.1} MiB for {total} idle connections"
    );
    // The header timeout (30 s) closes them all, silent ones included.
    let gone = wait_for(Duration::from_secs(45), || async {
        proxy.metric(CONNECTIONS).await == 0.0
    })
    .await
    .expect("idle connections were never closed");
    for s in conns.iter_mut() {
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(s, &mut buf),
        )
        .await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "a connection is still open"
        );
    }
    // What they held goes back to the system once the burst is over (glibc alone keeps it: the
    // freed pages sit below live allocations). Half of it at least, within seconds.
    let given_back_by = before + with.saturating_sub(before) / 2;
    let returned = wait_for(Duration::from_secs(15), || async {
        process::rss_kib(pid).unwrap() <= given_back_by
    })
    .await;
    let after = process::rss_kib(pid).unwrap();
    eprintln!(
        "PROXY-FIGURES idle-connections all_closed_within_s={gone:.1} rss_after_kib={after} returned_within_s={returned:?}"
    );
    assert!(
        returned.is_some(),
        "RSS {after} KiB after the connections closed: {before} before, {with} with them"
    );
    assert_eq!(get(proxy, WHOAMI).await.status, 200);
    assert_no_secrets(&proxy.proc.log_text(), &[&pat]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_from_label_studio_triggers_one_revalidation_not_a_storm() {
    let s = setup(300, true, false, &[]).await;
    let pat = s.pat.clone();
    let fault = s.fault.as_ref().unwrap();
    let proxy = &s.proxy;
    let (v0, e0) = (
        proxy.metric(VALIDATIONS).await,
        proxy.metric(EXCHANGES).await,
    );
    // Label Studio answers 401 on one path only: the token itself is fine (whoami passes).
    fault.scope(Some("/api/projects"));
    fault.set(Fault::Status {
        code: 401,
        retry_after: None,
    });
    let t0 = Instant::now();
    assert_eq!(get(proxy, "/api/projects/").await.status, 401);
    let first = wait_for(Duration::from_secs(5), || async {
        proxy.metric(VALIDATIONS).await > v0
    })
    .await
    .expect("no re-validation after the 401");
    // A storm of 401s right after: coalesced into one more check at the end of the 10 s interval.
    for _ in 0..30 {
        assert_eq!(get(proxy, "/api/projects/").await.status, 401);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(14).saturating_sub(t0.elapsed())).await;
    let (v1, e1) = (
        proxy.metric(VALIDATIONS).await,
        proxy.metric(EXCHANGES).await,
    );
    eprintln!(
        "PROXY-FIGURES upstream-401 first_revalidation_after_s={first:.2} validations={} exchanges={} requests_401=31 window_s=14",
        v1 - v0,
        e1 - e0
    );
    assert_eq!(v1 - v0, 2.0, "validations after 31 rejections in 14 s");
    assert_eq!(e1 - e0, 0.0, "the token was accepted: no exchange");
    let whoami = fault.requests().iter().filter(|r| r.path == WHOAMI).count();
    assert!(whoami >= 3, "{whoami} (start-up + 2 checks)");
    fault.set(Fault::Pass);
    assert_eq!(get(proxy, "/api/projects/").await.status, 200);
    let tokens = fault.tokens();
    let mut secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    secrets.push(&pat);
    assert_no_secrets(&proxy.proc.log_text(), &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_through_in_small_memory() {
    const SIZE: usize = 50 * 1024 * 1024;
    const PIECE: usize = 256 * 1024;
    let s = setup(300, false, true, &[]).await;
    let pat = s.pat.clone();
    let proxy = &s.proxy;
    let token_dir = s.token_dir.clone().unwrap();
    let pid = proxy.proc.pid();
    let p = send(proxy,
        Method::POST,
        "/api/projects/",
        Some(
            r#"{"title":"large bodies","label_config":"<View><Image name=\"image\" value=\"$image\"/><Choices name=\"c\" toName=\"image\"><Choice value=\"a\"/></Choices></View>"}"#,
        ),
    )
    .await;
    assert_eq!(p.status, 201, "{}", p.body);
    let project = p.json()["id"].as_u64().unwrap();
    let rss_before = process::rss_kib(pid).unwrap();
    let peak_before = process::peak_rss_kib(pid).unwrap();

    // Upload: a multipart body generated piece by piece (the test never holds it either).
    let boundary = "lstr-large-body-boundary";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"large.png\"\r\nContent-Type: image/png\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let len = head.len() + SIZE + tail.len();
    let pieces = futures::stream::iter(
        std::iter::once(head.into_bytes())
            .chain(
                (0..SIZE)
                    .step_by(PIECE)
                    .map(|at| pattern(at, PIECE.min(SIZE - at))),
            )
            .chain(std::iter::once(tail.into_bytes()))
            .map(Ok::<_, std::io::Error>),
    );
    let t0 = Instant::now();
    let r = http_client()
        .post(format!(
            "{}/api/projects/{project}/import?return_task_ids=true",
            proxy.url()
        ))
        .header(header::AUTHORIZATION, PLACEHOLDER_AUTH)
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .header(header::CONTENT_LENGTH, len)
        .body(reqwest::Body::wrap_stream(pieces))
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .expect("upload");
    let up_s = t0.elapsed().as_secs_f64();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 201, "{body}");
    let task = serde_json::from_str::<serde_json::Value>(&body).unwrap()["task_ids"][0]
        .as_u64()
        .unwrap();
    let t = get(proxy, &format!("/api/tasks/{task}")).await;
    let url = t.json()["data"]["image"]
        .as_str()
        .unwrap_or_else(|| panic!("no data.image in the task: {}", t.body))
        .to_owned();
    assert!(url.starts_with("/data/upload/"), "{url}");

    // Download: compared piece by piece against the pattern.
    let t0 = Instant::now();
    let mut r = http_client()
        .get(format!("{}{url}", proxy.url()))
        .header(header::AUTHORIZATION, PLACEHOLDER_AUTH)
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut got = 0usize;
    while let Some(piece) = r.chunk().await.expect("download") {
        assert!(
            piece.as_ref() == pattern(got, piece.len()).as_slice(),
            "the downloaded bytes differ at offset {got}"
        );
        got += piece.len();
    }
    let down_s = t0.elapsed().as_secs_f64();
    assert_eq!(got, SIZE);
    let peak = process::peak_rss_kib(pid).unwrap();
    let grew_mib = peak.saturating_sub(rss_before.max(peak_before)) as f64 / 1024.0;
    eprintln!(
        "PROXY-FIGURES large-bodies size_mib=50 upload_s={up_s:.1} download_s={down_s:.1} rss_before_kib={rss_before} peak_before_kib={peak_before} peak_after_kib={peak} peak_growth_mib={grew_mib:.1} (debug build)"
    );
    // Buffering either body would add 50 MiB; streaming keeps a few pieces in flight.
    assert!(
        grew_mib < 8.0,
        "peak RSS grew {grew_mib:.1} MiB for a 50 MiB body"
    );
    let token = published_token(&token_dir);
    assert_bodies_clean(&[body, t.body], &[&token, &pat]);
    assert_no_secrets(&proxy.proc.log_text(), &[&pat, &token]);
}

/// A deterministic byte pattern (so both ends can check a body without keeping it).
fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect()
}

/// Issue 14, findings 1, 2, 3 and 7, through the real binary to the real Label Studio: every
/// spelling of a credential endpoint (the reviewer's list and a generated corpus, raw requests)
/// either gets a local answer or arrives at Label Studio canonical and harmless; no answer carries
/// the user's legacy token or the PAT; what a browser sends for another site, and a DNS-rebound
/// name, change nothing (no project is created).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_and_no_browser_reaches_a_credential() {
    let s = setup(300, true, false, &[]).await;
    let (ls, proxy, fault) = (&s.ls, &s.proxy, s.fault.as_ref().unwrap());
    let legacy = ls.api().legacy_token().await;
    let wait = Duration::from_secs(10);
    let own = |p: &str| p.starts_with("/api/token/refresh") || p == WHOAMI;
    let before = fault.requests().len();
    let mut targets = hostile::hand_spellings();
    targets.extend(hostile::generated_spellings(hostile::corpus_seed(), 300));
    let mut local = 0;
    for target in &targets {
        for method in ["GET", "POST"] {
            let a = raw(
                proxy.addr,
                format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
                wait,
            )
            .await;
            assert!(
                !a.text.contains(&legacy),
                "{method} {target:?}: the legacy token came back"
            );
            assert!(
                !a.text.contains(&s.pat),
                "{method} {target:?}: the PAT came back"
            );
            if a.statuses()
                .first()
                .is_some_and(|l| l.starts_with("HTTP/1.1 4"))
                && a.text.contains("ls-token-refresher-proxy")
            {
                local += 1;
            }
        }
    }
    let reached: Vec<String> = fault.requests()[before..]
        .iter()
        .map(|r| r.path.clone())
        .filter(|p| !own(p))
        .collect();
    for path in &reached {
        if let Some(why) = hostile::escaped(path, "") {
            panic!("{why}");
        }
    }
    assert!(
        local > 0 && !reached.is_empty(),
        "refused {local}, forwarded {}",
        reached.len()
    );
    eprintln!(
        "PROXY-FIGURES spellings targets={} refused_locally={local} forwarded={}",
        2 * targets.len(),
        reached.len()
    );

    // Browsers: a cross-site form POST and a DNS-rebound fetch that would each create a project.
    let projects = || async {
        let (status, body) = ls
            .api()
            .session_request(Method::GET, "/api/projects/", None)
            .await;
        assert_eq!(status, 200, "{body}");
        body["count"].as_u64().expect("a project count")
    };
    let count = projects().await;
    let port = proxy.addr.port();
    let body = r#"{"title":"csrf"}"#;
    for (what, headers) in [
        ("cross-site form POST", "Host: 127.0.0.1\r\nOrigin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: navigate".to_owned()),
        ("no-cors fetch", "Host: 127.0.0.1\r\nOrigin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors".to_owned()),
        ("DNS rebinding", format!("Host: rebind.evil.example:{port}\r\nOrigin: http://rebind.evil.example:{port}\r\nSec-Fetch-Site: same-origin")),
    ] {
        let a = raw(
            proxy.addr,
            format!("POST /api/projects/ HTTP/1.1\r\n{headers}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes(),
            wait,
        )
        .await;
        let status = a.statuses().first().map(|l| l.to_string()).unwrap_or_default();
        assert!(status == "HTTP/1.1 403 Forbidden" || status == "HTTP/1.1 421 Misdirected Request", "{what}: {}", a.text);
    }
    assert_eq!(
        projects().await,
        count,
        "a browser request created a project"
    );
    // The same request as an API client sends it goes through.
    let a = raw(
        proxy.addr,
        format!("POST /api/projects/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes(),
        wait,
    )
    .await;
    assert_eq!(a.statuses(), ["HTTP/1.1 201 Created"], "{}", a.text);
    assert_no_secrets(&proxy.proc.log_text(), &[&s.pat]);
}
