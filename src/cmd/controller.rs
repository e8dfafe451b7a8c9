//! `controller` and `crds`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{dry_run_ok, spawn_signal_handler, start_admin, AppError};
use crate::{
    cli::ControllerCommandArgs,
    clock::SystemClock,
    controller::{self, resources::crd_documents, Settings},
    health::{Health, Held},
    leader::{self, Leadership},
    metrics::Metrics,
};

/// The readiness slot the controller fills once its caches are synced.
const CACHES: &str = "controller caches";

/// `controller`: serve token resources until a signal.
pub async fn controller(args: ControllerCommandArgs) -> Result<(), AppError> {
    // The controller's Secrets are read by pods: the kubelet's sync delay is always in the lead.
    let policy = args
        .timing
        .policy(args.controller.propagation_margin.0)
        .map_err(AppError::config)?;
    if args.leader.leader_elect {
        args.leader.timings().map_err(AppError::config)?;
    }
    if args.dry_run.dry_run {
        return dry_run_ok("controller");
    }
    let metrics = Arc::new(Metrics::new());
    let client = controller::client(&args.controller)
        .await
        .map_err(AppError::config)?;
    let shutdown = CancellationToken::new();
    // Ready once every cache holds its first list: before that a reconcile would see no Secrets.
    let health = Health::new(Arc::new(SystemClock::new()), &[CACHES]);
    spawn_signal_handler(shutdown.clone(), Some(health.clone()))?;
    let (admin_addr, admin_task) = start_admin(&args.admin, &health, &metrics, &shutdown).await?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        admin = %admin_addr,
        "controller starting"
    );
    let leadership = if args.leader.leader_elect {
        let namespace = args
            .kube
            .pod_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        leader::start(
            client.clone(),
            &args.leader,
            &namespace,
            leader::identity(args.kube.pod_name.as_deref()),
            metrics.clone(),
            shutdown.clone(),
        )
        .await
        .map_err(AppError::config)?
    } else {
        Leadership::always()
    };
    let ready = health.clone();
    let mark_ready = move || {
        ready.set_held(
            0,
            Held {
                valid: true,
                expires: None,
            },
        )
    };
    // A standby is ready: it serves nothing and is able to take over (its client is built and
    // the election runs). The leader is ready once its caches hold their first lists.
    if leadership.is_elected() {
        mark_ready();
    }
    controller::run(
        client,
        Settings {
            args: args.controller,
            policy,
            pod_name: args.kube.pod_name,
        },
        metrics,
        leadership.clone(),
        move || {
            tracing::info!("caches synced");
            mark_ready();
        },
        shutdown.clone(),
    )
    .await;
    health.set_draining();
    shutdown.cancel();
    // The release lets a standby lead at once instead of after a lease duration.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), leadership.released()).await;
    let _ = admin_task.await;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// `crds`: the CustomResourceDefinitions as a YAML stream of JSON documents.
pub fn crds() -> Result<(), AppError> {
    for (_, doc) in crd_documents() {
        println!("---");
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(AppError::failure)?
        );
    }
    Ok(())
}
