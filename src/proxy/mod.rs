//! The auth proxy (work in progress).

use std::net::SocketAddr;

/// Auth proxy flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Serve the auth proxy on this address (`proxy` defaults to 127.0.0.1:9418; `run` serves it only when set).
    #[arg(long, env = "LS_PROXY_ADDR", value_name = "ADDR")]
    pub proxy_addr: Option<SocketAddr>,
}

/// Where `proxy` listens by default: loopback (a sidecar's consumer shares the pod's network).
pub const DEFAULT_PROXY_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9418);

/// Could not start the proxy.
#[derive(Debug, thiserror::Error)]
#[error("--proxy-addr (LS_PROXY_ADDR) {addr}: {message}")]
pub struct ProxyError {
    addr: SocketAddr,
    message: String,
}

/// Binds the proxy (stub).
pub async fn bind(
    addr: SocketAddr,
    _args: &ProxyArgs,
    _ls: &crate::exchange::LabelStudioArgs,
    _tokens: tokio::sync::watch::Receiver<Option<crate::token::TokenSet>>,
    _rejections: crate::refresher::RejectionReport,
    _metrics: std::sync::Arc<crate::metrics::Metrics>,
    _shutdown: tokio_util::sync::CancellationToken,
) -> Result<(SocketAddr, std::future::Ready<std::io::Result<()>>), ProxyError> {
    Err(ProxyError {
        addr,
        message: "not implemented yet".into(),
    })
}
