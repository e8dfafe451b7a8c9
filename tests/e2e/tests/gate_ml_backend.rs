//! The auth gate in front of the stock ML backend (label-studio-ml 1.0.9, model `DownloadProbe`),
//! with the real Label Studio 1.23.2 verifying every credential:
//!
//! - Label Studio registers the backend with Basic auth pointing at the gate (`POST /api/ml`,
//!   `auth_method: BASIC_AUTH`; it calls /health and /setup through the gate while validating)
//!   and gets predictions for a task (`retrieve_tasks_predictions`); registering without the
//!   Basic credentials fails.
//! - An outside client with an access token from its own PAT gets predictions from `/predict`.
//! - No credential, an expired access token, a forged one (valid claims, wrong signature), a
//!   PAT, the token of a user deactivated after the cache TTL → 401; a user of another
//!   organization → 403; the backend's log shows none of them reached it.
//! - A flood of 10,000 distinct forged tokens causes a bounded number of whoami calls (counted
//!   on the wire by a relay in front of Label Studio, and by the gate); 1,000 requests with one valid token
//!   cause one verification per cache TTL.
//!
//! The gate runs as the real binary (`gate`) at trace level; its log is scanned for tokens.

use std::time::{Duration, Instant};

use base64::Engine;
use ls_token_refresher_e2e::{
    clock,
    fault_proxy::FaultProxy,
    free_port,
    jwt::jwt_exp,
    label_studio::{LabelStudio, LsOptions},
    log_scan::assert_no_secrets,
    refresher::RefresherProc,
    stock_clients::MlBackend,
};
use serde_json::{json, Value};

/// The gate's cache TTL: short, so the deactivation and per-TTL counts are seen in seconds.
const CACHE_TTL: u64 = 3;
/// Label Studio's access-token lifetime here: long enough for the test's own calls, short enough
/// that a token taken at the start has expired by the end.
const ACCESS_TTL: u64 = 25;
/// The Basic credentials Label Studio uses for the backend.
const BASIC_USER: &str = "label-studio";
const BASIC_PASS: &str = "gate-basic-8d1f0c";
const LABEL_CONFIG: &str =
    r#"<View><Image name="image" value="$image"/><TextArea name="caption" toName="image"/></View>"#;
/// The gate's refusal budget per client (src/gate/verify.rs).
const REFUSAL_BURST: f64 = 20.0;
const REFUSALS_PER_SEC: f64 = 1.0;

const REFUSED: &str = "ls_token_refresher_gate_verifications_total{result=\"refused\"}";
const ADMITTED: &str = "ls_token_refresher_gate_verifications_total{result=\"admitted\"}";

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// `token` with its signature changed (claims intact): only Label Studio can tell.
fn forged(token: &str, salt: usize) -> String {
    let (head, _) = token.rsplit_once('.').unwrap();
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("forged-{salt:08}-signature-bytes"));
    format!("{head}.{sig}")
}

/// Requests the backend logged for `path` (werkzeug's access log: `"POST /predict HTTP/1.1" 200`).
fn backend_hits(backend: &MlBackend, path: &str) -> usize {
    let log = std::fs::read_to_string(&backend.log).unwrap_or_default();
    let needle = format!(" {path} HTTP/1.1\"");
    log.lines().filter(|l| l.contains(&needle)).count()
}

/// whoami calls that reached Label Studio (counted on the wire, by a relay between the gate and
/// Label Studio).
fn whoami_calls(relay: &FaultProxy) -> usize {
    relay
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/api/current-user/whoami"))
        .count()
}

struct Client {
    http: reqwest::Client,
    gate: String,
}

impl Client {
    async fn predict(&self, auth: Option<&str>, project: u64) -> (u16, Value) {
        let mut r = self
            .http
            .post(format!("{}/predict", self.gate))
            .json(&json!({
                "tasks": [{"id": 1, "data": {"image": ""}}],
                "label_config": LABEL_CONFIG,
                "project": format!("{project}.0"),
            }));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let resp = r.send().await.expect("POST /predict through the gate");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn health(&self, auth: String) -> u16 {
        self.http
            .get(format!("{}/health", self.gate))
            .header("authorization", auth)
            .send()
            .await
            .expect("GET /health through the gate")
            .status()
            .as_u16()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_admits_label_studio_and_verified_users_and_nobody_else() {
    let ls = LabelStudio::start(LsOptions {
        access_ttl_secs: ACCESS_TTL,
        extra_env: vec![
            ("ML_BLOCK_LOCAL_IP".into(), "false".into()),
            ("SSRF_PROTECTION_ENABLED".into(), "false".into()),
        ],
        ..LsOptions::default()
    })
    .await;
    let api = ls.api();
    let admin_pat = api.create_pat().await;
    let admin = bearer(&api.access_token(&admin_pat).await);
    let (_, me) = api.get("/api/current-user/whoami", Some(&admin)).await;
    let org = me["active_organization"]
        .as_u64()
        .expect("admin's organization");
    let (_, ann_org) = ls
        .create_user("ann@example.org", "ann-pass-1234", true)
        .await;
    let (_, bob_org) = ls
        .create_user("bob@example.org", "bob-pass-1234", false)
        .await;
    ls.create_user("cid@example.org", "cid-pass-1234", true)
        .await;
    assert_eq!(ann_org, org);
    assert_ne!(bob_org, org);
    let ann_pat = ls.mint_pat_for("ann@example.org", 3600).await;
    // Expired by the end of the test (ACCESS_TTL): the expired-token case.
    let early = api.access_token(&ann_pat).await;

    let tmp = tempfile::tempdir().unwrap();
    let backend = MlBackend::start(&ls.url(), &tmp.path().join("ml")).await;
    let basic_file = tmp.path().join("basic");
    std::fs::write(&basic_file, format!("{BASIC_USER}:{BASIC_PASS}\n")).unwrap();
    let relay = FaultProxy::start(&ls.url()).await;
    let gate_addr = format!("127.0.0.1:{}", free_port());
    let org_text = org.to_string();
    let mut gate = RefresherProc::start_command(
        "gate",
        tmp.path(),
        "gate",
        &[
            "--url",
            &relay.url(),
            "--backend-url",
            &backend.url,
            "--gate-addr",
            &gate_addr,
            "--gate-allow-org",
            &org_text,
            "--gate-basic-auth-file",
            basic_file.to_str().unwrap(),
            "--gate-cache-ttl",
            &format!("{CACHE_TTL}s"),
            "--log-level",
            "trace",
        ],
        &[],
    );
    gate.wait_ready(200, Duration::from_secs(30)).await;
    let gate_url = format!("http://{gate_addr}");
    let c = Client {
        http: reqwest::Client::new(),
        gate: gate_url.clone(),
    };

    // Label Studio registers the backend through the gate with Basic auth, and gets predictions.
    // (Tokens are taken right before use: the setup above can outlast ACCESS_TTL on a loaded machine.)
    let admin = bearer(&api.access_token(&admin_pat).await);
    let (s, project) = api
        .post_json(
            "/api/projects",
            Some(&admin),
            &json!({"title": "gated", "label_config": LABEL_CONFIG}),
        )
        .await;
    assert_eq!(s, 201, "{project}");
    let pid = project["id"].as_u64().unwrap();
    let (s, refused) = api
        .post_json(
            "/api/ml",
            Some(&admin),
            &json!({"url": gate_url, "project": pid, "title": "no-auth"}),
        )
        .await;
    assert_eq!(s, 400, "registering without Basic must fail: {refused}");
    let (s, ml) = api
        .post_json(
            "/api/ml",
            Some(&admin),
            &json!({
                "url": gate_url, "project": pid, "title": "gated",
                "auth_method": "BASIC_AUTH", "basic_auth_user": BASIC_USER, "basic_auth_pass": BASIC_PASS,
            }),
        )
        .await;
    assert_eq!(s, 201, "registering with Basic through the gate: {ml}");
    let (s, imported) = api
        .post_json(
            &format!("/api/projects/{pid}/import?return_task_ids=true"),
            Some(&admin),
            &json!([{"image": ""}]),
        )
        .await;
    assert_eq!(s, 201, "{imported}");
    let task = imported["task_ids"][0].as_u64().expect("task id");
    let (s, _) = api
        .post_json(
            &format!("/api/dm/actions?id=retrieve_tasks_predictions&project={pid}"),
            Some(&admin),
            &json!({"selectedItems": {"all": false, "included": [task]}}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, preds) = api
        .get(&format!("/api/predictions?task={task}"), Some(&admin))
        .await;
    let text = preds.to_string();
    assert!(
        text.contains("download-probe") && text.contains("helper=tools"),
        "Label Studio got no prediction from the backend through the gate: {text}"
    );
    let predicted_by_ls = backend_hits(&backend, "/predict");
    assert!(predicted_by_ls >= 1);

    // An outside client with an access token from its own PAT.
    let ann = api.access_token(&ann_pat).await;
    let (s, body) = c.predict(Some(&bearer(&ann)), pid).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.to_string().contains("helper=tools"), "{body}");
    let forwarded = backend_hits(&backend, "/predict");
    assert_eq!(forwarded, predicted_by_ls + 1);

    // Everyone else: refused, and the backend sees none of them.
    let bob = api
        .access_token(&ls.mint_pat_for("bob@example.org", 3600).await)
        .await;
    let cid = api
        .access_token(&ls.mint_pat_for("cid@example.org", 3600).await)
        .await;
    assert_eq!(c.predict(Some(&bearer(&cid)), pid).await.0, 200);
    let forwarded = forwarded + 1;
    ls.deactivate_user("cid@example.org").await;
    let (s, body) = c.predict(None, pid).await;
    assert_eq!(s, 401, "no credential: {body}");
    let (s, body) = c.predict(Some(&bearer(&forged(&ann, 0))), pid).await;
    assert_eq!(
        (s, &body["reason"]),
        (401, &json!("refused")),
        "forged: {body}"
    );
    let (s, body) = c.predict(Some(&bearer(&ann_pat)), pid).await;
    assert_eq!(s, 401, "PAT: {body}");
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("send an access token"));
    let (s, body) = c.predict(Some(&bearer(&bob)), pid).await;
    assert_eq!(s, 403, "another organization: {body}");
    tokio::time::sleep(Duration::from_secs(CACHE_TTL + 1)).await;
    let (s, body) = c.predict(Some(&bearer(&cid)), pid).await;
    // Refused by Label Studio, not expired: the user is no longer accepted.
    assert!(
        jwt_exp(&cid).expect("exp") > clock::now(),
        "cid's token expired first: the test proves nothing"
    );
    assert_eq!(
        (s, &body["reason"]),
        (401, &json!("refused")),
        "deactivated user after the cache TTL: {body}"
    );
    let wait = jwt_exp(&early).expect("exp") - clock::now() + 1;
    if wait > 0 {
        tokio::time::sleep(Duration::from_secs(wait as u64)).await;
    }
    let (s, body) = c.predict(Some(&bearer(&early)), pid).await;
    assert_eq!(
        (s, &body["reason"]),
        (401, &json!("expired")),
        "expired: {body}"
    );
    assert_eq!(
        backend_hits(&backend, "/predict"),
        forwarded,
        "a refused request reached the backend"
    );

    // A flood of distinct forged tokens (well-formed, unexpired: only Label Studio can refuse
    // them) from one client.
    let fresh = api.access_token(&ann_pat).await;
    let calls_before = whoami_calls(&relay);
    let refused_before = gate.metric(REFUSED).await.unwrap_or(0.0);
    let started = Instant::now();
    let mut statuses = std::collections::BTreeMap::new();
    for chunk in (0..10_000).collect::<Vec<_>>().chunks(50) {
        let rs = futures::future::join_all(
            chunk
                .iter()
                .map(|&i| c.health(bearer(&forged(&fresh, i + 1)))),
        )
        .await;
        for s in rs {
            *statuses.entry(s).or_insert(0usize) += 1;
        }
    }
    let flood_secs = started.elapsed().as_secs_f64();
    let ls_calls = whoami_calls(&relay) - calls_before;
    let gate_calls = gate.metric(REFUSED).await.unwrap_or(0.0) - refused_before;
    let bound = REFUSAL_BURST + flood_secs * REFUSALS_PER_SEC + 1.0;
    eprintln!(
        "GATE-FIGURES flood tokens=10000 secs={flood_secs:.1} whoami_calls_wire={ls_calls} refused_verifications={gate_calls} bound={bound:.0} statuses={statuses:?}"
    );
    assert_eq!(statuses.values().sum::<usize>(), 10_000);
    assert!(
        statuses.keys().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert!(
        ls_calls as f64 <= bound,
        "{ls_calls} whoami calls for the flood (bound {bound:.0})"
    );
    assert_eq!(
        ls_calls as f64, gate_calls,
        "the gate's count and the wire's disagree"
    );

    // 1,000 requests with one valid token (another client address: the flood's budget is spent).
    let one = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let c2 = Client {
        http: one,
        gate: c.gate.clone(),
    };
    let token = bearer(&api.access_token(&ann_pat).await);
    let admitted_before = gate.metric(ADMITTED).await.unwrap_or(0.0);
    let calls_before = whoami_calls(&relay);
    let started = Instant::now();
    for chunk in (0..1000).collect::<Vec<_>>().chunks(20) {
        let rs = futures::future::join_all(chunk.iter().map(|_| c2.health(token.clone()))).await;
        assert!(rs.iter().all(|s| *s == 200), "{rs:?}");
    }
    let secs = started.elapsed().as_secs_f64();
    let verifications = gate.metric(ADMITTED).await.unwrap_or(0.0) - admitted_before;
    let ls_calls = whoami_calls(&relay) - calls_before;
    let windows = (secs / CACHE_TTL as f64).floor() + 1.0;
    eprintln!(
        "GATE-FIGURES one-token requests=1000 secs={secs:.1} verifications={verifications} whoami_calls_wire={ls_calls} ttl_windows={windows}"
    );
    assert!(
        verifications >= 1.0 && verifications <= windows,
        "{verifications} verifications in {secs:.1}s"
    );
    assert_eq!(ls_calls as f64, verifications);

    let log = gate.log_text();
    assert_no_secrets(&log, &[&ann, &ann_pat, &cid, &bob, &fresh, BASIC_PASS]);
}
