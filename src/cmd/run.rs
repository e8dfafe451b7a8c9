//! `run` (sinks, optionally the proxy) and `proxy` (the proxy alone): the long-running commands.

use std::{net::SocketAddr, sync::Arc};

use tokio_util::sync::CancellationToken;

use super::{
    attempt_budget, build_sinks, connect, dry_run_ok, notifier, preflight, prepare,
    spawn_signal_handler, start_admin, start_source, warn_cleartext, AppError,
};
use crate::{
    admin::AdminArgs,
    cli::{ProxyCommandArgs, RunArgs},
    exchange::{HttpExchange, LabelStudioArgs},
    leader::{self, LeaderArgs, Leadership},
    metrics::Metrics,
    proxy::{self, ProxyArgs, DEFAULT_PROXY_ADDR},
    refresher::Refresher,
    rotate::Rotator,
    sink::{memory::MemorySink, Sink},
};

/// `run`: serve and refresh until a signal (or `POST /quitquitquit`).
pub async fn run(args: RunArgs) -> Result<(), AppError> {
    let (metrics, policy, exchange) =
        prepare(&args.ls, &args.timing, args.sinks.propagation_margin())?;
    check_leader_args(&args)?;
    args.rotate
        .check_source(&args.pat)
        .map_err(AppError::config)?;
    if args.dry_run.dry_run {
        return dry_run_ok("run");
    }
    warn_cleartext(&args.ls);
    let shutdown = CancellationToken::new();
    let cluster = connect(&args.kube, &args.pat, Some(&args.sinks)).await?;
    let pat = start_source(&args.pat, cluster.as_ref(), &metrics, &shutdown);
    let leadership = match (&cluster, args.leader.leader_elect) {
        (Some(c), true) => leader::start(
            c.client.clone(),
            &args.leader,
            &c.namespace,
            leader::identity(args.kube.pod_name.as_deref()),
            metrics.clone(),
            shutdown.clone(),
        )
        .await
        .map_err(AppError::config)?,
        _ => Leadership::always(),
    };
    let mut sinks = build_sinks(&args.sinks, cluster.as_ref(), &metrics, &leadership);
    preflight(&sinks).await?;
    let proxy = args.proxy.proxy_addr.map(|addr| {
        let (sink, tokens) = MemorySink::new();
        sinks.push(Box::new(sink));
        (addr, tokens)
    });
    let notifier = notifier(
        &args.kube,
        &args.pat,
        Some(&args.sinks),
        cluster.as_ref(),
        &metrics,
    );
    let rotation = match args.rotate.policy() {
        Some(rotation_policy) => {
            let kube = cluster
                .as_ref()
                .map(|c| (c.client.clone(), c.namespace.as_str()));
            let store = args
                .rotate
                .store(&args.pat, kube)
                .map_err(AppError::config)?;
            let rotator = Rotator::new(
                Arc::new(exchange.clone()),
                store,
                rotation_policy,
                metrics.clone(),
                leadership.clone(),
            )
            .with_notifier(notifier.clone());
            // Reported now; re-checked before every rotation (RBAC may be granted later).
            match rotator.check().await {
                Ok(what) => tracing::info!("PAT rotation on: {what}"),
                Err(r) => tracing::warn!(
                    reason = r.reason,
                    "PAT rotation is configured but will not happen until this is fixed: {}",
                    r.detail
                ),
            }
            Some(Box::new(rotator))
        }
        None => None,
    };
    let mut refresher = Refresher::new(exchange, pat, sinks, policy, metrics.clone())
        .with_notifier(notifier)
        .with_attempt_budget(attempt_budget(&args.ls))
        .with_leadership(leadership.clone());
    if let Some(rotator) = rotation {
        refresher = refresher.with_rotation(rotator);
    }
    let result = serve(
        refresher,
        &args.ls,
        &args.admin,
        proxy.map(|(addr, tokens)| (addr, &args.proxy, tokens)),
        metrics,
        shutdown,
    )
    .await;
    // The release lets a standby lead at once instead of after a lease duration; bounded by the
    // election's own request timeout (the retry period), capped here for a hung API server.
    let _ = tokio::time::timeout(RELEASE_WAIT, leadership.released()).await;
    result
}

/// Longest wait for the Lease release at exit (well inside Kubernetes' 30 s grace period).
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `--leader-elect` coordinates writers of one Secret: with any other output a standby would
/// leave its own token directory or proxy empty, so the combination is refused (exit 2).
fn check_leader_args(args: &RunArgs) -> Result<(), AppError> {
    let l: &LeaderArgs = &args.leader;
    if !l.leader_elect {
        return Ok(());
    }
    if args.sinks.target_secret.is_none()
        || args.sinks.token_dir.is_some()
        || args.proxy.proxy_addr.is_some()
    {
        return Err(AppError::config(
            "--leader-elect (LS_LEADER_ELECT) needs --target-secret as the only output: a standby writes nothing, \
             so its --token-dir or --proxy-addr would stay empty; run those as sidecars without election",
        ));
    }
    l.timings().map(|_| ()).map_err(AppError::config)
}

/// `proxy`: the refresh loop feeding only the auth proxy.
pub async fn proxy(args: ProxyCommandArgs) -> Result<(), AppError> {
    let (metrics, policy, exchange) = prepare(&args.ls, &args.timing, std::time::Duration::ZERO)?;
    if args.dry_run.dry_run {
        return dry_run_ok("proxy");
    }
    warn_cleartext(&args.ls);
    let shutdown = CancellationToken::new();
    let cluster = connect(&args.kube, &args.pat, None).await?;
    let pat = start_source(&args.pat, cluster.as_ref(), &metrics, &shutdown);
    let (sink, tokens) = MemorySink::new();
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(sink)];
    let notifier = notifier(&args.kube, &args.pat, None, cluster.as_ref(), &metrics);
    let refresher = Refresher::new(exchange, pat, sinks, policy, metrics.clone())
        .with_notifier(notifier)
        .with_attempt_budget(attempt_budget(&args.ls));
    let addr = args.proxy.proxy_addr.unwrap_or(DEFAULT_PROXY_ADDR);
    serve(
        refresher,
        &args.ls,
        &args.admin,
        Some((addr, &args.proxy, tokens)),
        metrics,
        shutdown,
    )
    .await
}

/// Runs the refresher with the admin server (and the proxy) until shutdown.
async fn serve(
    refresher: Refresher<HttpExchange>,
    ls: &LabelStudioArgs,
    admin_args: &AdminArgs,
    proxy: Option<(
        SocketAddr,
        &ProxyArgs,
        tokio::sync::watch::Receiver<Option<crate::token::TokenSet>>,
    )>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let health = refresher.health();
    spawn_signal_handler(shutdown.clone(), Some(health.clone()))?;
    let (admin_addr, admin_task) = start_admin(admin_args, &health, &metrics, &shutdown).await?;
    let proxy_task = match proxy {
        Some((addr, args, tokens)) => {
            let proxy = proxy::Proxy::new(
                args,
                ls,
                tokens,
                health.clone(),
                refresher.rejection_report(),
                metrics.clone(),
            )
            .map_err(AppError::config)?;
            let (bound, server) = proxy
                .bind(addr, shutdown.clone())
                .await
                .map_err(AppError::config)?;
            tracing::info!(proxy = %bound, "auth proxy listening");
            Some(tokio::spawn(server))
        }
        None => None,
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        admin = %admin_addr,
        "starting: url={}",
        ls.url
    );
    let result = refresher.run(shutdown.clone()).await;
    health.set_draining();
    shutdown.cancel();
    let _ = admin_task.await;
    if let Some(t) = proxy_task {
        let _ = t.await;
    }
    match result {
        Ok(()) => {
            tracing::info!("stopped cleanly; published files are left in place");
            Ok(())
        }
        Err(e) => Err(AppError::config(e.message)),
    }
}
