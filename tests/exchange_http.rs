//! Unit-level error paths of the HTTP exchange that a real Label Studio cannot be made to produce on
//! demand (5xx, 429 with Retry-After, HTML 200, truncated/oversized bodies, timeouts), against a
//! wiremock server. The happy paths are proven against the real server in `e2e_label_studio.rs`.

use std::{sync::Arc, time::Duration};

use ls_token_refresher::{
    config::Cli,
    exchange::{Authorization, Exchange, ExchangeError, HttpExchange, Scheme},
    metrics::Metrics,
    reason::Reason,
    secret::Secret,
};
use wiremock::{
    matchers::{body_json, header, method, path},
    Mock, MockServer, ResponseTemplate,
};

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn jwt(payload: &str) -> String {
    format!(
        "{}.{}.{}",
        b64(r#"{"alg":"HS256"}"#),
        b64(payload),
        b64("sig")
    )
}

fn client(url: &str, extra: &[&str]) -> (HttpExchange, Arc<Metrics>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = vec![
        "ls-token-refresher",
        "token",
        "--url",
        url,
        "--pat",
        "x",
        "--request-timeout",
        "500ms",
    ];
    args.extend_from_slice(extra);
    let cli = <Cli as clap::Parser>::try_parse_from(args).unwrap();
    let metrics = Arc::new(Metrics::new());
    (
        HttpExchange::new(&cli.opts, metrics.clone()).unwrap(),
        metrics,
    )
}

async fn refresh_with(
    resp: ResponseTemplate,
) -> Result<ls_token_refresher::exchange::AccessToken, ExchangeError> {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/token/refresh"))
        .respond_with(resp)
        .mount(&server)
        .await;
    let (ex, _) = client(&server.uri(), &[]);
    ex.refresh(&Secret::new("pat")).await
}

#[tokio::test]
async fn sends_pat_as_json_and_parses_access() {
    let server = MockServer::start().await;
    let access = jwt(r#"{"token_type":"access","exp":4000000000,"iat":3999999700}"#);
    Mock::given(method("POST"))
        .and(path("/api/token/refresh"))
        .and(body_json(serde_json::json!({"refresh": "the-pat"})))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"access": access})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let (ex, metrics) = client(&server.uri(), &[]);
    let t = ex.refresh(&Secret::new("the-pat\n")).await.unwrap();
    assert_eq!(t.exp(), 4000000000);
    assert!(metrics
        .render()
        .contains(r#"ls_token_refresher_http_requests_total{code="2xx",endpoint="refresh"} 1"#));
}

#[tokio::test]
async fn server_errors_and_rate_limits_carry_retry_after() {
    let e = refresh_with(ResponseTemplate::new(503).insert_header("Retry-After", "7"))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Reason::ServerError);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    let e = refresh_with(ResponseTemplate::new(429).insert_header("Retry-After", "3"))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Reason::RateLimited);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    let e = refresh_with(ResponseTemplate::new(500).set_body_string("boom"))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Reason::ServerError);
    assert!(!e.is_wrong_url());
}

#[tokio::test]
async fn html_truncated_and_oversized_bodies_are_invalid_responses() {
    let html = ResponseTemplate::new(200)
        .insert_header("content-type", "text/html")
        .set_body_string("<html>login</html>");
    let e = refresh_with(html).await.unwrap_err();
    assert_eq!(e.reason(), Reason::InvalidResponse);
    assert!(e.is_wrong_url() && e.to_string().contains("HTML"), "{e}");
    let truncated = ResponseTemplate::new(200)
        .insert_header("content-type", "application/json")
        .set_body_string(r#"{"access":"ey"#);
    assert_eq!(
        refresh_with(truncated).await.unwrap_err().reason(),
        Reason::InvalidResponse
    );
    let big = format!(r#"{{"access":"{}"}}"#, "a".repeat(200_000));
    let e = refresh_with(ResponseTemplate::new(200).set_body_string(big))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("64 KiB"), "{e}");
    let redirect = ResponseTemplate::new(302).insert_header("Location", "/user/login/");
    assert!(refresh_with(redirect).await.unwrap_err().is_wrong_url());
    let not_found = ResponseTemplate::new(404).set_body_string("<html>nope</html>");
    let e = refresh_with(not_found).await.unwrap_err();
    assert!(e.is_wrong_url() && e.reason() == Reason::NotFound);
}

#[tokio::test]
async fn slow_server_times_out() {
    let slow = ResponseTemplate::new(200).set_delay(Duration::from_secs(3));
    let e = refresh_with(slow).await.unwrap_err();
    assert_eq!(e.reason(), Reason::Timeout, "{e}");
}

#[tokio::test]
async fn connection_refused_is_network() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (ex, metrics) = client(&format!("http://127.0.0.1:{port}"), &[]);
    let e = ex.refresh(&Secret::new("pat")).await.unwrap_err();
    assert_eq!(e.reason(), Reason::Network, "{e}");
    assert!(metrics
        .render()
        .contains(r#"code="error",endpoint="refresh"} 1"#));
}

#[tokio::test]
async fn validation_sends_scheme_and_diagnoses_rejections() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/current-user/whoami"))
        .and(header("authorization", "Bearer good"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": 1})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/current-user/whoami"))
        .and(header("authorization", "Token 0123456789abcdef0123456789abcdef01234567"))
        .respond_with(ResponseTemplate::new(401).set_body_json(serde_json::json!({
            "detail": "Authentication token no longer valid: legacy token authentication has been disabled for this organization"
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/current-user/whoami"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            serde_json::json!({"detail": "Authentication credentials were not provided."}),
        ))
        .mount(&server)
        .await;
    let (ex, _) = client(&server.uri(), &[]);
    let bearer = |t: &str| Authorization {
        scheme: Scheme::Bearer,
        token: Secret::new(t),
    };
    ex.validate(&bearer("good")).await.unwrap();
    assert_eq!(
        ex.validate(&bearer("bad")).await.unwrap_err().reason(),
        Reason::JwtDisabled
    );
    let legacy = Authorization {
        scheme: Scheme::Token,
        token: Secret::new("0123456789abcdef0123456789abcdef01234567"),
    };
    assert_eq!(
        ex.validate(&legacy).await.unwrap_err().reason(),
        Reason::LegacyDisabled
    );
    // A wrong --validate-path is its own reason, and --no-validate skips the call.
    let (ex, _) = client(&server.uri(), &["--validate-path", "/nope"]);
    assert_eq!(
        ex.validate(&bearer("good")).await.unwrap_err().reason(),
        Reason::ValidationFailed
    );
    let (ex, _) = client(&server.uri(), &["--no-validate"]);
    ex.validate(&bearer("bad")).await.unwrap();
}
