//! The admin HTTP server: `/livez`, `/readyz`, `/metrics` and, when enabled, `POST /quitquitquit`
//! (lets a Job's main container stop the sidecar so the Job can complete).
//!
//! The admin port is reachable from the network in the chart (for probes and scraping), so the
//! quit endpoint accepts only loopback peers (the Job's other containers share the pod's loopback)
//! and only requests carrying [`QUIT_HEADER`], which no HTML form or simple cross-site request
//! can send.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    extract::{ConnectInfo, State},
    http::{header, HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{get, post},
    Router,
};
use tokio_util::sync::CancellationToken;

use crate::{health::Health, metrics::Metrics};

/// The header a quit request must carry (any value): a browser sends it only after a CORS
/// preflight we never answer, so a page cannot forge the request.
pub const QUIT_HEADER: &str = "x-ls-quit";

/// Health, metrics and quit endpoint flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Address of the health/metrics server (/livez, /readyz, /metrics). Not 9090: ML backends use it.
    #[arg(
        long,
        env = "LS_ADMIN_ADDR",
        default_value = "0.0.0.0:9417",
        value_name = "ADDR"
    )]
    pub admin_addr: SocketAddr,

    /// Serve `POST /quitquitquit` (loopback peers, header `X-LS-Quit`), so a Job's main container can stop the sidecar.
    #[arg(long, env = "LS_ENABLE_QUIT")]
    pub enable_quit: bool,
}

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
    args: &AdminArgs,
    health: Health,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<
    (
        SocketAddr,
        impl std::future::Future<Output = std::io::Result<()>>,
    ),
    AdminError,
> {
    let addr = args.admin_addr;
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
    if args.enable_quit {
        app = app.route("/quitquitquit", post(quit));
    }
    let app = app
        .with_state(state)
        .into_make_service_with_connect_info::<SocketAddr>();
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
    match s.health.ready() {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    // Truthful at scrape time, not only at the loop's last attempt: an expiry in between shows at once.
    s.metrics.token_valid.set(i64::from(s.health.is_ready()));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// Whether a quit request from `peer` with `headers` is allowed; Err names why not.
pub fn quit_allowed(peer: IpAddr, headers: &HeaderMap) -> Result<(), &'static str> {
    let loopback = match peer {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    if !loopback {
        return Err("quit is accepted from loopback only (a container in this pod)\n");
    }
    if !headers.contains_key(QUIT_HEADER) {
        return Err("quit needs the header X-LS-Quit (e.g. curl -X POST -H 'X-LS-Quit: 1' …)\n");
    }
    Ok(())
}

async fn quit(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> impl IntoResponse {
    if let Err(why) = quit_allowed(peer.ip(), &headers) {
        tracing::warn!(peer = %peer.ip(), "refused a quit request: {}", why.trim_end());
        return (StatusCode::FORBIDDEN, why);
    }
    tracing::info!("quit requested on the admin server; shutting down");
    s.health.set_draining();
    s.shutdown.cancel();
    (StatusCode::OK, "shutting down\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{clock::SystemClock, health::Held};

    async fn request(addr: SocketAddr, method: &str, path: &str, extra: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let code = buf[9..12].parse().unwrap();
        (code, buf)
    }

    async fn serve(
        enable_quit: bool,
    ) -> (
        SocketAddr,
        Health,
        CancellationToken,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let clock = Arc::new(SystemClock::new());
        let health = Health::new(clock, &["file"]);
        let shutdown = CancellationToken::new();
        let args = AdminArgs {
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            enable_quit,
        };
        let (addr, server) = bind(
            &args,
            health.clone(),
            Arc::new(Metrics::new()),
            shutdown.clone(),
        )
        .await
        .unwrap();
        (addr, health, shutdown, tokio::spawn(server))
    }

    #[tokio::test]
    async fn serves_health_and_metrics() {
        let (addr, health, shutdown, task) = serve(false).await;
        assert_eq!(request(addr, "GET", "/livez", "").await.0, 200);
        let (code, body) = request(addr, "GET", "/readyz", "").await;
        assert_eq!(code, 503);
        assert!(body.contains("no token published"));
        let expires = health
            .clock()
            .now()
            .after(std::time::Duration::from_secs(60));
        health.set_held(
            0,
            Held {
                expires: Some(expires),
                valid: true,
            },
        );
        assert_eq!(request(addr, "GET", "/readyz", "").await.0, 200);
        let (code, body) = request(addr, "GET", "/metrics", "").await;
        assert_eq!(code, 200);
        assert!(body.contains("ls_token_refresher_build_info"));
        assert_eq!(
            request(addr, "POST", "/quitquitquit", "X-LS-Quit: 1\r\n")
                .await
                .0,
            404,
            "quit is opt-in"
        );
        shutdown.cancel();
        task.await.unwrap().unwrap();
    }

    /// A plain POST (what an HTML form can send) is refused; the custom header from loopback quits.
    #[tokio::test]
    async fn quit_needs_the_header_and_a_loopback_peer() {
        let (addr, health, shutdown, task) = serve(true).await;
        let (code, body) = request(addr, "POST", "/quitquitquit", "").await;
        assert_eq!(code, 403, "{body}");
        assert!(body.contains("X-LS-Quit"));
        assert!(!shutdown.is_cancelled());
        let (code, _) = request(addr, "POST", "/quitquitquit", "X-LS-Quit: 1\r\n").await;
        assert_eq!(code, 200);
        assert!(shutdown.is_cancelled());
        assert!(health.ready().unwrap_err().contains("draining"));
        task.await.unwrap().unwrap();
    }

    #[test]
    fn quit_from_other_hosts_is_refused() {
        let mut with = HeaderMap::new();
        with.insert(QUIT_HEADER, "1".parse().unwrap());
        for peer in ["10.0.0.7", "192.168.1.2", "::ffff:10.0.0.1", "2001:db8::1"] {
            assert!(
                quit_allowed(peer.parse().unwrap(), &with).is_err(),
                "{peer}"
            );
        }
        for peer in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            assert!(quit_allowed(peer.parse().unwrap(), &with).is_ok(), "{peer}");
            assert!(quit_allowed(peer.parse().unwrap(), &HeaderMap::new()).is_err());
        }
    }
}
