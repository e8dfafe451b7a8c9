//! Unit-level error paths of the HTTP exchange that a real Label Studio cannot be made to produce on
//! demand (5xx, 429 with Retry-After, HTML 200, truncated/oversized bodies, timeouts), against a
//! wiremock server. The happy paths are proven against the real server in `e2e_label_studio.rs`.

use std::{sync::Arc, time::Duration};

use ls_token_refresher::{
    exchange::{ClientConfig, Exchange, ExchangeError, HttpExchange, Identity},
    metrics::Metrics,
    reason::Reason,
    secret::Secret,
    token::{Authorization, Scheme},
};
use wiremock::{
    matchers::{body_json, header, method, path},
    Mock, MockServer, ResponseTemplate,
};

#[path = "support/test_jwt.rs"]
mod test_jwt;
use test_jwt::jwt;

fn client(url: &str, adjust: impl FnOnce(&mut ClientConfig)) -> (HttpExchange, Arc<Metrics>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = ClientConfig::new(url.parse().unwrap());
    config.request_timeout = Duration::from_millis(500);
    adjust(&mut config);
    let metrics = Arc::new(Metrics::new());
    (HttpExchange::new(config, metrics.clone()).unwrap(), metrics)
}

fn defaults(_: &mut ClientConfig) {}

async fn refresh_with(
    resp: ResponseTemplate,
) -> Result<ls_token_refresher::exchange::AccessToken, ExchangeError> {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/token/refresh"))
        .respond_with(resp)
        .mount(&server)
        .await;
    let (ex, _) = client(&server.uri(), defaults);
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
    let (ex, metrics) = client(&server.uri(), defaults);
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
    let (ex, metrics) = client(&format!("http://127.0.0.1:{port}"), defaults);
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
    let (ex, _) = client(&server.uri(), defaults);
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
    let (ex, _) = client(&server.uri(), |c| c.validate_path = Some("/nope".into()));
    assert_eq!(
        ex.validate(&bearer("good")).await.unwrap_err().reason(),
        Reason::ValidationFailed
    );
    let (ex, _) = client(&server.uri(), |c| c.validate_path = None);
    ex.validate(&bearer("bad")).await.unwrap();
}

/// Validation reports Label Studio's clock from the `Date` header (the refresher re-measures the
/// offset with it after a wall-clock step).
#[tokio::test]
async fn validation_reports_the_servers_date() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/current-user/whoami"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("Date", "Sun, 06 Nov 1994 08:49:37 GMT")
                .set_body_json(serde_json::json!({"id": 1})),
        )
        .mount(&server)
        .await;
    let (ex, _) = client(&server.uri(), defaults);
    let accepted = ex
        .validate(&Authorization {
            scheme: Scheme::Bearer,
            token: Secret::new("t"),
        })
        .await
        .unwrap();
    assert_eq!(accepted.server_date, Some(784111777.0));
}

/// What `/api/version` says about the server: Label Studio, something else, or nothing conclusive.
#[tokio::test]
async fn identify_tells_label_studio_from_other_servers() {
    let ls = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/version"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"release": "1.23.2"})),
        )
        .mount(&ls)
        .await;
    let (ex, _) = client(&ls.uri(), defaults);
    assert!(matches!(ex.identify().await, Identity::LabelStudio(v) if v == "1.23.2"));

    let other = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/version"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"version": "2"})))
        .mount(&other)
        .await;
    let (ex, _) = client(&other.uri(), defaults);
    assert!(matches!(ex.identify().await, Identity::NotLabelStudio(_)));

    let nothing = MockServer::start().await; // 404 for everything
    let (ex, _) = client(&nothing.uri(), defaults);
    assert!(matches!(ex.identify().await, Identity::NotLabelStudio(_)));

    let down = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(502).set_body_string("<h1>Bad Gateway</h1>"))
        .mount(&down)
        .await;
    let (ex, _) = client(&down.uri(), defaults);
    assert!(
        matches!(ex.identify().await, Identity::Unknown(_)),
        "a proxy's 502 says nothing"
    );

    // A server answering POST /api/token/refresh with 501 looks foreign; Label Studio's 5xx does not.
    let e = refresh_with(ResponseTemplate::new(501).set_body_string("Not Implemented"))
        .await
        .unwrap_err();
    assert!(e.looks_foreign(), "{e}");
    let e = refresh_with(
        ResponseTemplate::new(500)
            .set_body_json(serde_json::json!({"detail": "User matching query does not exist."})),
    )
    .await
    .unwrap_err();
    assert!(!e.looks_foreign(), "{e}");
}

/// The outage probe gives up quickly on a server that holds the connection (2 s, not the 10 s
/// request timeout), and says UP only for Label Studio's answer.
#[tokio::test]
async fn health_probe_is_short_and_strict() {
    let slow = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/health"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string("UP")
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&slow)
        .await;
    let (ex, _) = client(&slow.uri(), |c| c.request_timeout = Duration::from_secs(10));
    let t0 = std::time::Instant::now();
    assert_eq!(ex.health().await.unwrap_err().reason(), Reason::Timeout);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(4900),
        "gave up after {took:?}, not at the 2 s probe timeout"
    );
    let up = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/health"))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"status": "UP"}"#))
        .mount(&up)
        .await;
    let (ex, metrics) = client(&up.uri(), defaults);
    ex.health().await.unwrap();
    assert!(metrics.render().contains(r#"endpoint="health"} 1"#));
}
