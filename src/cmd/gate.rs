//! `gate`: the auth gate in front of an ML backend, with the admin server (no PAT, no refresh loop).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{dry_run_ok, spawn_signal_handler, warn_cleartext, AppError};
use crate::{
    admin, cli::GateCommandArgs, clock::SystemClock, gate::Gate, health::Health, metrics::Metrics,
};

/// `gate`: serve until a signal.
pub async fn gate(args: GateCommandArgs) -> Result<(), AppError> {
    let metrics = Arc::new(Metrics::new());
    let gate = Gate::new(&args.gate, &args.ls, metrics.clone()).map_err(AppError::config)?;
    if args.dry_run.dry_run {
        return dry_run_ok("gate");
    }
    warn_cleartext(&args.ls);
    let shutdown = CancellationToken::new();
    // No token is held: ready as soon as it listens, draining on a signal.
    let health = Health::new(Arc::new(SystemClock::new()), &[]);
    spawn_signal_handler(shutdown.clone(), Some(health.clone()))?;
    let (admin_addr, admin_server) =
        admin::bind(&args.admin, health, metrics.clone(), shutdown.clone())
            .await
            .map_err(AppError::config)?;
    let admin_task = tokio::spawn(admin_server);
    let (bound, server) = gate
        .bind(args.gate.gate_addr, shutdown.clone())
        .await
        .map_err(AppError::config)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        gate = %bound,
        admin = %admin_addr,
        backend = %args.gate.backend_url,
        "auth gate listening: url={}",
        args.ls.url
    );
    let result = server.await;
    shutdown.cancel();
    let _ = admin_task.await;
    result.map_err(AppError::failure)
}
