//! The admin HTTP server: `/livez`, `/readyz`, `/metrics` and, when enabled, `POST /quitquitquit`
//! (lets a Job's main container stop the sidecar so the Job can complete).

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::{get, post},
    Router,
};
use tokio_util::sync::CancellationToken;

use crate::{health::Health, metrics::Metrics, refresher::unix_now};

#[derive(Clone)]
struct AppState {
    health: Health,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

/// Could not start the admin server.
#[derive(Debug, thiserror::Error)]
#[error("--admin-addr (LS_ADMIN_ADDR) {addr}: cannot listen: {source}")]
pub struct AdminError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Binds the listener now (so a busy port fails at start-up) and returns the bound address and
/// the server future, which ends when `shutdown` is cancelled.
pub async fn bind(
    addr: SocketAddr,
    health: Health,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    enable_quit: bool,
) -> Result<
    (
        SocketAddr,
        impl std::future::Future<Output = std::io::Result<()>>,
    ),
    AdminError,
> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| AdminError { addr, source })?;
    let state = AppState {
        health,
        metrics,
        shutdown: shutdown.clone(),
    };
    let mut app = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler));
    if enable_quit {
        app = app.route("/quitquitquit", post(quit));
    }
    let app = app.with_state(state);
    let server = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    };
    Ok((local, server))
}

async fn livez(State(s): State<AppState>) -> impl IntoResponse {
    match s.health.live() {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match s.health.ready(unix_now()) {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    // Truthful at scrape time, not only at the loop's last tick: an expiry between ticks shows at once.
    s.metrics
        .token_valid
        .set(i64::from(s.health.is_ready(unix_now())));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn quit(State(s): State<AppState>) -> impl IntoResponse {
    tracing::info!("quit requested on the admin server; shutting down");
    s.health.set_draining();
    s.shutdown.cancel();
    (StatusCode::OK, "shutting down\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Held;

    async fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let code = buf[9..12].parse().unwrap();
        (code, buf)
    }

    #[tokio::test]
    async fn serves_health_and_metrics() {
        let health = Health::new(&["file"]);
        let shutdown = CancellationToken::new();
        let (addr, server) = bind(
            "127.0.0.1:0".parse().unwrap(),
            health.clone(),
            Arc::new(Metrics::new()),
            shutdown.clone(),
            false,
        )
        .await
        .unwrap();
        let task = tokio::spawn(server);
        assert_eq!(get_text(addr, "/livez").await.0, 200);
        let (code, body) = get_text(addr, "/readyz").await;
        assert_eq!(code, 503);
        assert!(body.contains("no token published"));
        health.set_held(
            0,
            Held {
                exp: Some(unix_now() + 60.0),
                valid: true,
            },
        );
        assert_eq!(get_text(addr, "/readyz").await.0, 200);
        let (code, body) = get_text(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("ls_token_refresher_build_info"));
        assert_eq!(
            get_text(addr, "/quitquitquit").await.0,
            404,
            "quit is opt-in"
        );
        shutdown.cancel();
        task.await.unwrap().unwrap();
    }
}
