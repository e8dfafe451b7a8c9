//! Wiring: each command builds exactly what it needs from its arguments and runs. Errors carry
//! the exit code the CLI promises: 2 for configuration, 1 otherwise.

mod controller;
mod gate;
mod once;
mod run;

use std::{process::ExitCode, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    check,
    cli::Command,
    cluster::{self, Cluster, EventNotifier, KubeArgs},
    exchange::{HttpExchange, LabelStudioArgs},
    leader::Leadership,
    metrics::Metrics,
    notify::{NoNotifier, Notifier},
    schedule::{Policy, TimingArgs},
    sink::{file::FileSink, secret::SecretSink, Sink, SinkArgs},
    source::PatSourceArgs,
};

/// A failure with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AppError {
    /// 2: usage/configuration; 1: anything else.
    pub code: u8,
    /// One line.
    pub message: String,
}

impl AppError {
    /// Configuration error (exit 2).
    pub fn config(message: impl std::fmt::Display) -> Self {
        AppError {
            code: 2,
            message: message.to_string(),
        }
    }
    /// Other failure (exit 1).
    pub fn failure(message: impl std::fmt::Display) -> Self {
        AppError {
            code: 1,
            message: message.to_string(),
        }
    }
}

/// Runs `command` on a small runtime and maps the outcome to the exit code, printing one line.
pub fn main(command: Command) -> ExitCode {
    // One TLS provider for reqwest and kube (ring); must be installed before any client is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A sidecar should not start one worker per node core: everything here is I/O.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Run(args) => run::run(args).await,
            Command::Proxy(args) => run::proxy(args).await,
            Command::Gate(args) => gate::gate(args).await,
            Command::Once(args) => once::once(args).await,
            Command::Token(args) => once::token(args).await,
            Command::Check(args) => check_command(args).await,
            Command::Controller(args) => controller::controller(args).await,
            Command::Crds => controller::crds(),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message.lines().next().unwrap_or("failed"));
            ExitCode::from(e.code)
        }
    }
}

async fn check_command(args: crate::cli::CheckArgs) -> Result<(), AppError> {
    let report = check::run(args).await.map_err(AppError::config)?;
    print!("{}", report.text());
    if report.failed() == 0 {
        println!("all checks passed");
        Ok(())
    } else {
        Err(AppError::failure(format!(
            "{} check(s) failed",
            report.failed()
        )))
    }
}

/// What every command starts from: metrics, the timing policy (with `propagation_margin` of lead
/// for a Secret sink) and the Label Studio client — all checked before anything is contacted.
fn prepare(
    ls: &LabelStudioArgs,
    timing: &TimingArgs,
    propagation_margin: Duration,
) -> Result<(Arc<Metrics>, Policy, HttpExchange), AppError> {
    let metrics = Arc::new(Metrics::new());
    let policy = timing
        .policy(propagation_margin)
        .map_err(AppError::config)?;
    let exchange = ls.client(metrics.clone()).map_err(AppError::config)?;
    Ok((metrics, policy, exchange))
}

/// `--dry-run`: the configuration was accepted.
fn dry_run_ok(command: &str) -> Result<(), AppError> {
    println!("configuration valid for `{command}` (nothing was contacted)");
    Ok(())
}

/// Warns (once, at start-up) about plain http:// to a remote host.
fn warn_cleartext(ls: &LabelStudioArgs) {
    if let Some(w) = ls.cleartext_warning() {
        tracing::warn!("{w}");
    }
}

/// The longest one attempt can take (two requests and a publish), for liveness.
fn attempt_budget(ls: &LabelStudioArgs) -> Duration {
    ls.request_timeout
        .0
        .saturating_mul(3)
        .saturating_add(Duration::from_secs(60))
}

/// Connects to Kubernetes when the PAT source or a sink needs it.
async fn connect(
    kube: &KubeArgs,
    pat: &PatSourceArgs,
    sinks: Option<&SinkArgs>,
) -> Result<Option<Cluster>, AppError> {
    let needed = pat.secret_ref().is_some() || sinks.is_some_and(|s| s.target_secret.is_some());
    if !needed {
        return Ok(None);
    }
    Cluster::connect(kube.pod_namespace.as_deref())
        .await
        .map(Some)
        .map_err(AppError::config)
}

/// Starts the PAT source.
fn start_source(
    pat: &PatSourceArgs,
    cluster: Option<&Cluster>,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> crate::source::PatHandle {
    pat.start(
        cluster.map(|c| (c.client.clone(), c.namespace.as_str())),
        metrics.clone(),
        shutdown.clone(),
    )
}

/// The sinks `args` configures (the cluster is connected when a Secret sink is set).
fn build_sinks(
    args: &SinkArgs,
    cluster: Option<&Cluster>,
    metrics: &Arc<Metrics>,
    leadership: &Leadership,
) -> Vec<Box<dyn Sink>> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(dir) = &args.token_dir {
        sinks.push(Box::new(FileSink::new(
            dir.clone(),
            args.file_mode.0,
            args.file_group,
        )));
    }
    if let (Some(t), Some(c)) = (&args.target_secret, cluster) {
        sinks.push(Box::new(
            SecretSink::new(
                c.client.clone(),
                t.namespace_or(&c.namespace),
                &t.name,
                args.target_secret_force,
                metrics.clone(),
            )
            .with_leadership(leadership.clone()),
        ));
    }
    sinks
}

/// Checks every sink before the first publish: a local misconfiguration stops start-up (exit 2);
/// an API server that is away is only reported (publishing retries anyway).
async fn preflight(sinks: &[Box<dyn Sink>]) -> Result<(), AppError> {
    for sink in sinks {
        match sink.preflight().await {
            Ok(what) => tracing::debug!(sink = sink.kind(), "preflight: {what}"),
            Err(e) if sink.preflight_is_fatal() => return Err(AppError::config(e.message)),
            Err(e) => tracing::warn!(
                sink = sink.kind(),
                "preflight failed (will retry when publishing): {}",
                e.message
            ),
        }
    }
    Ok(())
}

/// Kubernetes Events about our pod (or, without one, the PAT / target Secret); nothing outside a cluster.
fn notifier(
    kube: &KubeArgs,
    pat: &PatSourceArgs,
    sinks: Option<&SinkArgs>,
    cluster: Option<&Cluster>,
    metrics: &Arc<Metrics>,
) -> Arc<dyn Notifier> {
    let Some(c) = cluster else {
        return Arc::new(NoNotifier);
    };
    let regarding = match &kube.pod_name {
        Some(pod) => cluster::pod_ref(kube.pod_namespace.as_deref().unwrap_or(&c.namespace), pod),
        None => match pat
            .secret_ref()
            .or(sinks.and_then(|s| s.target_secret.as_ref()))
        {
            Some(r) => cluster::secret_ref(r.namespace_or(&c.namespace), &r.name),
            None => return Arc::new(NoNotifier),
        },
    };
    Arc::new(EventNotifier::new(
        c,
        regarding,
        kube.pod_name.clone(),
        metrics.clone(),
    ))
}

/// Binds the admin server now (a busy port fails at start-up) and runs it until `shutdown`.
async fn start_admin(
    args: &crate::admin::AdminArgs,
    health: &crate::health::Health,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Result<
    (
        std::net::SocketAddr,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ),
    AppError,
> {
    let (addr, server) =
        crate::admin::bind(args, health.clone(), metrics.clone(), shutdown.clone())
            .await
            .map_err(AppError::config)?;
    Ok((addr, tokio::spawn(server)))
}

/// Cancels `shutdown` on SIGTERM or SIGINT (Kubernetes sends SIGTERM; a terminal sends SIGINT),
/// turning readiness false first.
fn spawn_signal_handler(
    shutdown: CancellationToken,
    health: Option<crate::health::Health>,
) -> Result<(), AppError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(AppError::failure)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AppError::failure)?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{name} received; draining");
        if let Some(h) = health {
            h.set_draining();
        }
        shutdown.cancel();
    });
    Ok(())
}
