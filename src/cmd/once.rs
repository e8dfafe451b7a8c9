//! `once` (publish once to every sink) and `token` (print a fresh token): one successful refresh,
//! retried for at most `--once-timeout`.

use std::{io::Write, sync::Arc};

use tokio_util::sync::CancellationToken;

use super::{
    build_sinks, connect, preflight, spawn_signal_handler, start_source, warn_cleartext, AppError,
};
use crate::{
    cli::{OnceArgs, TokenArgs},
    exchange::HttpExchange,
    metrics::Metrics,
    refresher::{AttemptError, Published, Refresher},
};

/// `once`: publish to every sink, then exit.
pub async fn once(args: OnceArgs) -> Result<(), AppError> {
    let metrics = Arc::new(Metrics::new());
    let policy = args
        .timing
        .policy(args.sinks.propagation_margin())
        .map_err(AppError::config)?;
    let exchange = args.ls.client(metrics.clone()).map_err(AppError::config)?;
    if args.dry_run.dry_run {
        println!("configuration valid for `once` (nothing was contacted)");
        return Ok(());
    }
    warn_cleartext(&args.ls);
    let shutdown = CancellationToken::new();
    let cluster = connect(&args.kube, &args.pat, Some(&args.sinks)).await?;
    let pat = start_source(&args.pat, cluster.as_ref(), &metrics, &shutdown);
    let sinks = build_sinks(&args.sinks, cluster.as_ref(), &metrics);
    preflight(&sinks).await?;
    let refresher = Refresher::new(exchange, pat, sinks, policy, metrics);
    finish(refresher, args.once.once_timeout.0, shutdown)
        .await
        .map(|_| ())
}

/// `token`: print a fresh token on stdout.
pub async fn token(args: TokenArgs) -> Result<(), AppError> {
    let metrics = Arc::new(Metrics::new());
    let policy = args
        .timing
        .policy(std::time::Duration::ZERO)
        .map_err(AppError::config)?;
    let exchange = args.ls.client(metrics.clone()).map_err(AppError::config)?;
    warn_cleartext(&args.ls);
    let shutdown = CancellationToken::new();
    let cluster = connect(&args.kube, &args.pat, None).await?;
    let pat = start_source(&args.pat, cluster.as_ref(), &metrics, &shutdown);
    let refresher = Refresher::new(exchange, pat, Vec::new(), policy, metrics);
    let published = finish(refresher, args.once.once_timeout.0, shutdown).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", published.set.auth.token.expose()).map_err(AppError::failure)
}

async fn finish(
    mut refresher: Refresher<HttpExchange>,
    timeout: std::time::Duration,
    shutdown: CancellationToken,
) -> Result<Published, AppError> {
    spawn_signal_handler(shutdown.clone(), None)?;
    let result = refresher.once(timeout, &shutdown).await;
    shutdown.cancel();
    result.map_err(|e: AttemptError| {
        if e.config {
            AppError::config(e.message)
        } else {
            AppError::failure(format!("{} ({})", e.message, e.reason))
        }
    })
}
