//! The real binary (`run`) against a stand-in for Label Studio (wiremock) that answers the token
//! exchange with claims no Label Studio issues. Issue 14, finding 4: an `iat` of -2^63 or -1e19
//! (which decoding saturates to `i64::MIN`) made `exp - iat` overflow and `Duration::from_secs_f64`
//! panic — with `panic = "abort"`, exit 134 within a second of start, a crash loop in a pod. A real
//! Label Studio cannot be made to send these, hence the fake.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use wiremock::{
    matchers::{method, path},
    Mock, MockServer, ResponseTemplate,
};

#[path = "support/test_jwt.rs"]
mod test_jwt;
use test_jwt::jwt;

fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Kills the child when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Label Studio stand-in whose exchange answers carry `iat` (JSON text) and a sane `exp`; the
/// other endpoints answer as Label Studio 1.23 does, so the refused answer is the only problem.
async fn label_studio_with_iat(iat: &str) -> MockServer {
    let server = MockServer::start().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let access = jwt(&format!(
        r#"{{"token_type":"access","iat":{iat},"exp":{},"jti":"j","user_id":1}}"#,
        now + 300
    ));
    Mock::given(method("POST"))
        .and(path("/api/token/refresh"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"access": access})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/current-user/whoami"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": 1})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/version"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"release": "1.23.2"})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/health"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"status": "UP"})))
        .mount(&server)
        .await;
    server
}

async fn exchanges(server: &MockServer) -> usize {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == "/api/token/refresh")
        .count()
}

#[tokio::test]
async fn absurd_iat_is_reported_invalid_and_the_loop_keeps_running() {
    for iat in ["-9223372036854775808", "-1e19", "-10000000000000000000"] {
        let server = label_studio_with_iat(iat).await;
        let dir = tempfile::tempdir().unwrap();
        let admin = free_addr();
        let pat = jwt(r#"{"token_type":"refresh","exp":4000000000,"iat":1700000000,"jti":"p"}"#);
        let stderr = dir.path().join("stderr");
        let mut child = Running(
            Command::new(env!("CARGO_BIN_EXE_ls-token-refresher"))
                .env_clear()
                .env("LS_PAT", &pat)
                .args(["run", "--url", &server.uri(), "--admin-addr", &admin])
                .arg("--token-dir")
                .arg(dir.path().join("out"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&stderr).unwrap())
                .spawn()
                .unwrap(),
        );
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let t0 = Instant::now();
        // Until the refused answer is reported and retried (a second exchange) — or the process
        // is gone, which is the bug.
        let readyz = loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                panic!(
                    "iat {iat}: `run` exited with {status} instead of reporting the answer; stderr:\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            let body = match client.get(format!("http://{admin}/readyz")).send().await {
                Ok(r) => Some((r.status().as_u16(), r.text().await.unwrap_or_default())),
                Err(_) => None,
            };
            if let Some((503, body)) = &body {
                if body.contains("invalid_response") && exchanges(&server).await >= 2 {
                    break body.clone();
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "iat {iat}: no invalid_response on /readyz with a retry within 60 s (last {body:?}); stderr:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(child.0.try_wait().unwrap().is_none(), "iat {iat}: exited");
        let log = std::fs::read_to_string(&stderr).unwrap();
        assert!(
            log.contains("iat is not a date between 1970 and 9999"),
            "iat {iat}: the log names the problem; readyz {readyz}; log:\n{log}"
        );
        assert!(
            !dir.path().join("out/token").exists(),
            "iat {iat}: the refused token was published"
        );
    }
}
