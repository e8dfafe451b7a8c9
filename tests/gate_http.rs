//! The auth gate in-process, with wiremock standing in for Label Studio's whoami (for the error
//! paths and for counting calls) and another for the backend (recording what it receives). The
//! real Label Studio and the stock ML backend are proven in `tests/e2e/tests/gate_ml_backend.rs`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use clap::Parser;
use ls_token_refresher::{
    exchange::LabelStudioArgs,
    gate::{
        verify::{REFUSALS_PER_SEC, REFUSAL_BURST},
        Gate, GateArgs,
    },
    metrics::Metrics,
};
use tokio_util::sync::CancellationToken;
use wiremock::{
    matchers::{header, method, path},
    Mock, MockServer, ResponseTemplate,
};

#[path = "support/test_jwt.rs"]
mod test_jwt;

fn now() -> i64 {
    ls_token_refresher::clock::unix_now() as i64
}

fn access(sub: &str, exp: i64) -> String {
    test_jwt::jwt(&format!(
        r#"{{"token_type":"access","exp":{exp},"iat":{},"jti":"{sub}","user_id":1}}"#,
        now() - 10
    ))
}

const LEGACY: &str = "0123456789abcdef0123456789abcdef01234567";

/// The gate's flags as `gate` parses them.
#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    ls: LabelStudioArgs,
    #[command(flatten)]
    gate: GateArgs,
}

struct Rig {
    ls: MockServer,
    backend: MockServer,
    gate: SocketAddr,
    metrics: Arc<Metrics>,
    http: reqwest::Client,
    _stop: tokio_util::sync::DropGuard,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A temp dir removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!(
                "gate-http-{}-{:016x}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn whoami(id: u64, email: &str, org: u64) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "id": id, "email": email, "username": "u", "active_organization": org,
        "first_name": "", "permissions": [],
    }))
}

async fn rig(ttl: &str, orgs: Vec<u64>) -> Rig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ls = MockServer::start().await;
    let backend = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"model":"ok"}"#))
        .mount(&backend)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"results":[]}"#))
        .mount(&backend)
        .await;
    // Whatever no test registered is refused, as Label Studio refuses unknown tokens.
    Mock::given(path("/api/current-user/whoami"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            serde_json::json!({"detail": "Authentication credentials were not provided."}),
        ))
        .with_priority(100)
        .mount(&ls)
        .await;
    let dir = tempdir::Dir::new();
    let basic = dir.0.join("basic");
    std::fs::write(&basic, "ls-caller:s3cret-pass\n").unwrap();
    let orgs: Vec<String> = orgs.iter().map(u64::to_string).collect();
    let cli = Cli::parse_from([
        "gate",
        "--url",
        &ls.uri(),
        "--request-timeout",
        "2s",
        "--connect-timeout",
        "1s",
        "--backend-url",
        &backend.uri(),
        "--gate-addr",
        "127.0.0.1:0",
        "--gate-allow-org",
        &orgs.join(","),
        "--gate-allow-user",
        "77",
        "--gate-basic-auth-file",
        basic.to_str().unwrap(),
        "--gate-cache-ttl",
        ttl,
        "--gate-timeout",
        "10s",
    ]);
    let (args, ls_args) = (cli.gate, cli.ls);
    let metrics = Arc::new(Metrics::new());
    let gate = Gate::new(&args, &ls_args, metrics.clone()).unwrap();
    let stop = CancellationToken::new();
    let (addr, server) = gate.bind(args.gate_addr, stop.clone()).await.unwrap();
    tokio::spawn(server);
    Rig {
        ls,
        backend,
        gate: addr,
        metrics,
        http: reqwest::Client::new(),
        _stop: stop.drop_guard(),
        _dir: dir,
    }
}

impl Rig {
    async fn call(&self, auth: Option<&str>) -> reqwest::Response {
        let mut r = self.http.post(format!("http://{}/predict", self.gate));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.body(r#"{"tasks":[]}"#).send().await.unwrap()
    }
    /// `POST /predict` with `auth` and `headers`.
    async fn call_with(&self, auth: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut r = self
            .http
            .post(format!("http://{}/predict", self.gate))
            .header("authorization", auth);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().await.unwrap()
    }
    async fn whoami_calls(&self) -> usize {
        self.ls.received_requests().await.unwrap().len()
    }
    async fn backend_calls(&self) -> Vec<wiremock::Request> {
        self.backend.received_requests().await.unwrap()
    }
    async fn admit(&self, token_header: &str, id: u64, org: u64) {
        Mock::given(path("/api/current-user/whoami"))
            .and(header("authorization", token_header))
            .respond_with(whoami(id, "Ann@Example.org", org))
            .mount(&self.ls)
            .await;
    }
}

#[tokio::test]
async fn a_verified_user_reaches_the_backend_as_themselves_without_their_token() {
    let r = rig("60s", vec![1]).await;
    let tok = access("a", now() + 300);
    r.admit(&format!("Bearer {tok}"), 5, 1).await;
    let resp = r
        .http
        .post(format!("http://{}/predict?x=1", r.gate))
        .header("authorization", format!("Bearer {tok}"))
        .header("x-label-studio-user-id", "999")
        .header("X-Label-Studio-Organization", "1")
        .header("x-label-studio-role", "administrator")
        .header("x-api-key", LEGACY)
        .header("cookie", "a=b")
        .body(r#"{"tasks":[1]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), r#"{"results":[]}"#);
    let seen = r.backend_calls().await;
    assert_eq!(seen.len(), 1);
    let h = &seen[0].headers;
    assert_eq!(seen[0].url.path(), "/predict");
    assert_eq!(seen[0].url.query(), Some("x=1"));
    assert_eq!(seen[0].body, br#"{"tasks":[1]}"#);
    assert_eq!(h.get_all("x-label-studio-user-id").iter().count(), 1);
    assert_eq!(h["x-label-studio-user-id"], "5");
    assert_eq!(h["x-label-studio-user-email"], "Ann@Example.org");
    assert_eq!(h["x-label-studio-organization"], "1");
    assert_eq!(h["x-label-studio-auth"], "access");
    assert!(
        h.get("x-label-studio-role").is_none(),
        "a client's identity header passed"
    );
    assert!(h.get("authorization").is_none());
    assert!(h.get("x-api-key").is_none());
    let all = format!("{h:?}");
    assert!(!all.contains(&tok) && !all.contains(LEGACY));
}

#[tokio::test]
async fn a_legacy_token_and_a_listed_user_outside_the_orgs_are_admitted() {
    let r = rig("60s", vec![1]).await;
    r.admit(&format!("Token {LEGACY}"), 77, 9).await;
    let resp = r.call(Some(&format!("token {LEGACY}"))).await;
    assert_eq!(resp.status(), 200);
    let seen = r.backend_calls().await;
    assert_eq!(seen[0].headers["x-label-studio-auth"], "legacy");
    assert_eq!(seen[0].headers["x-label-studio-user-id"], "77");
}

#[tokio::test]
async fn one_verification_per_credential_per_ttl_even_when_concurrent() {
    let r = rig("2s", vec![1]).await;
    let tok = access("b", now() + 300);
    r.admit(&format!("Bearer {tok}"), 5, 1).await;
    let auth = format!("Bearer {tok}");
    let calls = (0..50).map(|_| r.call(Some(&auth)));
    for resp in futures::future::join_all(calls).await {
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(r.whoami_calls().await, 1);
    assert_eq!(r.backend_calls().await.len(), 50);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(r.call(Some(&auth)).await.status(), 200);
    assert_eq!(r.whoami_calls().await, 2, "asked again after the TTL");
}

#[tokio::test]
async fn a_token_expiring_before_the_ttl_is_not_trusted_past_its_exp() {
    let r = rig("60s", vec![1]).await;
    let tok = access("c", now() + 2);
    let auth = format!("Bearer {tok}");
    r.admit(&auth, 5, 1).await;
    assert_eq!(r.call(Some(&auth)).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = r.call(Some(&auth)).await;
    assert_eq!(resp.status(), 401);
    assert!(resp.text().await.unwrap().contains("expired"));
    assert_eq!(r.whoami_calls().await, 1);
    assert_eq!(r.backend_calls().await.len(), 1);
}

#[tokio::test]
async fn what_can_be_refused_locally_never_reaches_label_studio_or_the_backend() {
    let r = rig("60s", vec![1]).await;
    let pat = test_jwt::jwt(&format!(
        r#"{{"token_type":"refresh","exp":{}}}"#,
        now() + 9999
    ));
    let expired = access("d", now() - 1);
    let cases: Vec<(Option<String>, &str, &str)> = vec![
        (None, "no_credential", "access token"),
        (Some(format!("Bearer {pat}")), "pat", "send an access token"),
        (Some(format!("Bearer {expired}")), "expired", "expired"),
        (
            Some("Bearer not-a-jwt".into()),
            "malformed",
            "not a Label Studio access token",
        ),
        (
            Some(format!("bearer {}", access("e", now() + 99))),
            "malformed",
            "scheme",
        ),
        (
            Some(format!("Bearer {LEGACY}")),
            "malformed",
            "Token <token>",
        ),
        (
            Some(format!("Token {}", access("f", now() + 99))),
            "malformed",
            "legacy token",
        ),
        (
            Some(format!("Bearer  {}", access("g", now() + 99))),
            "malformed",
            "one space",
        ),
        (Some("Basic bm9ib2R5Om5vcGU=".into()), "refused", "Basic"),
        (Some("Basic %%%".into()), "refused", "Basic"),
    ];
    for (auth, reason, says) in &cases {
        let resp = r.call(auth.as_deref()).await;
        assert_eq!(resp.status(), 401, "{reason}");
        let challenges: Vec<_> = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert!(
            challenges[0].starts_with("Bearer realm=\"label-studio-ml\""),
            "{challenges:?}"
        );
        assert_eq!(challenges[1], "Basic realm=\"label-studio-ml\"");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["reason"], *reason);
        assert!(body["detail"].as_str().unwrap().contains(says), "{body}");
    }
    // Two Authorization headers.
    let resp = r
        .http
        .get(format!("http://{}/health", r.gate))
        .header("authorization", format!("Token {LEGACY}"))
        .header("authorization", format!("Token {LEGACY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(r.whoami_calls().await, 0);
    assert!(r.backend_calls().await.is_empty());
}

#[tokio::test]
async fn label_studios_basic_credentials_pass_without_a_whoami_call() {
    let r = rig("60s", vec![1]).await;
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("ls-caller:s3cret-pass");
    // A client claiming to be a user, with Label Studio's Basic credentials.
    let spoofed = [
        ("x-label-studio-user-id", "1"),
        ("x-label-studio-organization", "1"),
    ];
    let resp = r.call_with(&format!("Basic {basic}"), &spoofed).await;
    assert_eq!(resp.status(), 200);
    let wrong = base64::engine::general_purpose::STANDARD.encode("ls-caller:s3cret-pas");
    assert_eq!(r.call(Some(&format!("Basic {wrong}"))).await.status(), 401);
    let seen = r.backend_calls().await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-label-studio-auth"], "basic");
    assert!(seen[0].headers.get("authorization").is_none());
    // Label Studio is no user: a client's claim to be one does not pass.
    assert!(seen[0].headers.get("x-label-studio-user-id").is_none());
    assert!(seen[0].headers.get("x-label-studio-organization").is_none());
    assert_eq!(r.whoami_calls().await, 0);
}

#[tokio::test]
async fn refusals_and_users_outside_the_policy_are_cached_and_never_forwarded() {
    let r = rig("60s", vec![1]).await;
    let forged = format!("Bearer {}", access("h", now() + 300));
    for _ in 0..3 {
        assert_eq!(r.call(Some(&forged)).await.status(), 401);
    }
    assert_eq!(r.whoami_calls().await, 1, "a refusal is remembered");
    let outsider = format!("Bearer {}", access("i", now() + 300));
    r.admit(&outsider, 8, 2).await;
    for _ in 0..3 {
        let resp = r.call(Some(&outsider)).await;
        assert_eq!(resp.status(), 403);
    }
    assert_eq!(r.whoami_calls().await, 2);
    assert!(r.backend_calls().await.is_empty());
    let text = r.metrics.render();
    assert!(
        text.contains("ls_token_refresher_gate_requests_total{outcome=\"refused\"} 3"),
        "{text}"
    );
    assert!(text.contains("ls_token_refresher_gate_requests_total{outcome=\"forbidden\"} 3"));
    assert!(text.contains("ls_token_refresher_gate_verifications_total{result=\"refused\"} 1"));
    assert!(text.contains("ls_token_refresher_gate_verifications_total{result=\"admitted\"} 1"));
    assert!(text.contains("ls_token_refresher_gate_cache_entries 2"));
    assert!(!text.contains(&forged[7..]) && !text.contains(&outsider[7..]));
}

#[tokio::test]
async fn label_studio_down_is_503_and_not_cached() {
    let r = rig("60s", vec![1]).await;
    let tok = format!("Bearer {}", access("j", now() + 300));
    Mock::given(path("/api/current-user/whoami"))
        .and(header("authorization", tok.as_str()))
        .respond_with(ResponseTemplate::new(502))
        .mount(&r.ls)
        .await;
    for _ in 0..2 {
        let resp = r.call(Some(&tok)).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "2");
    }
    assert_eq!(r.whoami_calls().await, 2, "an outage is not a verdict");
    // An answer that is not whoami's (a 200 HTML page of a wrong URL) is no admission either.
    let other = format!("Bearer {}", access("k", now() + 300));
    Mock::given(path("/api/current-user/whoami"))
        .and(header("authorization", other.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>"))
        .mount(&r.ls)
        .await;
    assert_eq!(r.call(Some(&other)).await.status(), 503);
    assert!(r.backend_calls().await.is_empty());
}

#[tokio::test]
async fn a_flood_of_distinct_garbage_tokens_costs_label_studio_a_bounded_number_of_calls() {
    let r = rig("60s", vec![1]).await;
    let started = std::time::Instant::now();
    let mut limited = 0;
    for i in 0..300 {
        let tok = format!("Bearer {}", access(&format!("flood{i}"), now() + 300));
        match r.call(Some(&tok)).await.status().as_u16() {
            401 => {}
            429 => limited += 1,
            s => panic!("{s}"),
        }
    }
    let bound = REFUSAL_BURST + started.elapsed().as_secs_f64() * REFUSALS_PER_SEC + 1.0;
    let calls = r.whoami_calls().await;
    assert!(calls as f64 <= bound, "{calls} calls > {bound}");
    assert!(calls >= REFUSAL_BURST as usize);
    assert_eq!(limited + calls, 300);
    // A valid token from another client is still verified.
    let ok = format!("Bearer {}", access("ok", now() + 300));
    r.admit(&ok, 5, 1).await;
    // (The same client is limited for new credentials: 429 says to retry.)
    let resp = r.call(Some(&ok)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "5");
}

#[tokio::test]
async fn non_canonical_targets_and_connect_are_refused_before_authentication() {
    let r = rig("60s", vec![1]).await;
    for target in ["/a/../predict", "/%70redict", "//predict", "/a\\b"] {
        let mut s = tokio::net::TcpStream::connect(r.gate).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 400"), "{target}: {out}");
    }
    assert!(r.backend_calls().await.is_empty());
    assert_eq!(r.whoami_calls().await, 0);
}

/// A generated corpus of hostile `Authorization` values: schemes in every case and spacing, JWTs with
/// absurd, missing, fractional, negative or string claims, wrong token types, truncated or extra
/// parts, legacy-looking tokens of the wrong length or alphabet, Basic with garbage, non-ASCII and
/// control bytes. None may reach the backend; Label Studio is asked only about the shapes it could
/// accept (an unexpired access JWT as `Bearer`, 40 hex as `Token`), and the gate keeps answering.
#[tokio::test]
async fn a_generated_corpus_of_hostile_credentials_never_reaches_the_backend() {
    let r = rig("60s", vec![1]).await;
    let mut rng = fastrand::Rng::with_seed(19);
    let claims = [
        format!(r#"{{"token_type":"access","exp":{}}}"#, now() + 300),
        r#"{"token_type":"access","exp":1e300}"#.to_owned(),
        r#"{"token_type":"access","exp":-9223372036854775808}"#.to_owned(),
        r#"{"token_type":"access","exp":"soon"}"#.to_owned(),
        r#"{"token_type":"access"}"#.to_owned(),
        format!(
            r#"{{"token_type":"access","exp":{},"iat":{}}}"#,
            now() + 300,
            now() + 900
        ),
        format!(r#"{{"token_type":"refresh","exp":{}}}"#, now() + 300),
        format!(r#"{{"token_type":"ACCESS","exp":{}}}"#, now() + 300),
        format!(r#"{{"exp":{}}}"#, now() + 300),
        "[]".to_owned(),
        "null".to_owned(),
        "{".to_owned(),
    ];
    let schemes = [
        "Bearer", "bearer", "BEARER", "Token", "token", "Basic", "Digest", "", "Bearer\t",
    ];
    let mut asked_max = 0usize;
    let mut forwardable = Vec::new();
    for i in 0..1500 {
        let scheme = schemes[rng.usize(..schemes.len())];
        let cred = match rng.u8(..6) {
            0 => access(&format!("h{i}"), now() + 300),
            1 => test_jwt::jwt(&claims[rng.usize(..claims.len())]),
            2 => {
                let t = test_jwt::jwt(&claims[rng.usize(..claims.len())]);
                match rng.u8(..3) {
                    0 => format!("{t}.extra"),
                    1 => t[..rng.usize(1..t.len())].to_owned(),
                    _ => t.replace('.', ".."),
                }
            }
            3 => (0..rng.usize(38..43))
                .map(|_| b"0123456789abcdefABCDEFgz"[rng.usize(..24)] as char)
                .collect(),
            4 => {
                use base64::Engine;
                let raw: Vec<u8> = (0..rng.usize(0..40)).map(|_| rng.u8(..)).collect();
                base64::engine::general_purpose::STANDARD.encode(raw)
            }
            _ => (0..rng.usize(1..80))
                .map(|_| char::from(rng.u8(0x21..0x7f)))
                .collect(),
        };
        let sep = [" ", "  ", "", "\t"][rng.usize(..4)];
        let mut value = format!("{scheme}{sep}{cred}").into_bytes();
        if rng.u8(..10) == 0 {
            let at = rng.usize(..=value.len());
            value.insert(at, [0x80, 0xff, 0x7f, 0x01][rng.usize(..4)]);
        }
        let Ok(hv) = reqwest::header::HeaderValue::from_bytes(&value) else {
            continue;
        };
        // What Label Studio could accept, by its shape alone (the gate's rule, stated independently).
        let text = String::from_utf8_lossy(&value);
        let plausible = if let Some(t) = text.strip_prefix("Bearer ") {
            t == cred && t.split('.').count() == 3 && cred.starts_with("eyJ") && claims_ok(t)
        } else if let Some(t) = text
            .get(6..)
            .filter(|_| text[..6].eq_ignore_ascii_case("token "))
        {
            t.len() == 40 && t.bytes().all(|b| b.is_ascii_hexdigit())
        } else {
            false
        };
        asked_max += usize::from(plausible);
        let resp = r
            .http
            .post(format!("http://{}/predict", r.gate))
            .header("authorization", hv)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        if !matches!(status, 401 | 429) {
            forwardable.push((text.into_owned(), status));
        }
    }
    assert!(forwardable.is_empty(), "{forwardable:?}");
    assert!(r.backend_calls().await.is_empty());
    let asked = r.whoami_calls().await;
    assert!(
        asked <= asked_max,
        "{asked} whoami calls for {asked_max} plausible credentials"
    );
    assert!(
        asked > 0,
        "the corpus holds plausible credentials: they must be asked about"
    );
    // Still serving.
    assert_eq!(r.call(None).await.status(), 401);
}

/// Whether a JWT's claims could be an unexpired Label Studio access token's.
fn claims_ok(t: &str) -> bool {
    use base64::Engine;
    let Some(payload) = t.split('.').nth(1) else {
        return false;
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return false;
    };
    let exp = v["exp"].as_i64();
    let iat = v["iat"].as_i64();
    v["token_type"] == "access"
        && exp.is_some_and(|e| e > now() && e <= 253_402_300_799)
        && iat.is_none_or(|i| i >= 0 && Some(i) < exp)
}

#[test]
fn configuration_mistakes_are_one_line_errors() {
    let dir = tempdir::Dir::new();
    let basic = dir.0.join("basic");
    let try_new = |extra: &[&str]| {
        let mut args = vec![
            "gate",
            "--url",
            "http://127.0.0.1:1",
            "--backend-url",
            "http://127.0.0.1:2",
        ];
        args.extend_from_slice(extra);
        let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
        Gate::new(&cli.gate, &cli.ls, Arc::new(Metrics::new()))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let e = try_new(&[]).unwrap_err();
    assert!(
        e.contains("--gate-allow-org") && e.contains("--gate-allow-user"),
        "{e}"
    );
    assert!(try_new(&["--gate-allow-user", "ann"]).is_err());
    let path = basic.to_str().unwrap();
    // The file's content never appears in the error.
    for content in ["s3cr3t-no-colon\n", ":s3cr3t-pw", "s3cr3t-user:"] {
        std::fs::write(&basic, content).unwrap();
        let e = try_new(&["--gate-allow-org", "1", "--gate-basic-auth-file", path]).unwrap_err();
        assert!(
            e.contains("user:password") && e.contains("LS_GATE_BASIC_AUTH_FILE"),
            "{e}"
        );
        assert!(!e.contains("s3cr3t"), "{e}");
        assert_eq!(e.lines().count(), 1);
    }
    std::fs::write(&basic, "user:pw").unwrap();
    assert!(try_new(&["--gate-allow-org", "1", "--gate-basic-auth-file", path]).is_ok());
    let missing = dir.0.join("nope");
    let e = try_new(&[
        "--gate-allow-org",
        "1",
        "--gate-basic-auth-file",
        missing.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(e.contains("cannot read"), "{e}");
}
