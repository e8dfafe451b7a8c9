//! `once` (publish once to every sink) and `token` (print a fresh token): one successful refresh,
//! retried for at most `--once-timeout`.

use std::io::Write;

use tokio_util::sync::CancellationToken;

use super::{
    build_sinks, connect, dry_run_ok, preflight, prepare, spawn_signal_handler, start_source,
    warn_cleartext, AppError,
};
use crate::{
    cli::{OnceArgs, TokenArgs},
    exchange::HttpExchange,
    refresher::{AttemptError, Published, Refresher},
};

/// `once`: publish to every sink, then exit.
pub async fn once(args: OnceArgs) -> Result<(), AppError> {
    let (metrics, policy, exchange) =
        prepare(&args.ls, &args.timing, args.sinks.propagation_margin())?;
    if args.dry_run.dry_run {
        return dry_run_ok("once");
    }
    warn_cleartext(&args.ls);
    let shutdown = CancellationToken::new();
    let cluster = connect(&args.kube, &args.pat, Some(&args.sinks)).await?;
    let pat = start_source(&args.pat, cluster.as_ref(), &metrics, &shutdown);
    let sinks = build_sinks(
        &args.sinks,
        cluster.as_ref(),
        &metrics,
        &crate::leader::Leadership::always(),
    );
    preflight(&sinks).await?;
    let refresher = Refresher::new(exchange, pat, sinks, policy, metrics);
    finish(refresher, args.once.once_timeout.0, shutdown)
        .await
        .map(|_| ())
}

/// `token`: print a fresh token on stdout.
pub async fn token(args: TokenArgs) -> Result<(), AppError> {
    let (metrics, policy, exchange) = prepare(&args.ls, &args.timing, std::time::Duration::ZERO)?;
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
