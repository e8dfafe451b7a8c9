//! Wiring: builds the source, sinks, exchange, admin server and refresher from [`Options`] and runs
//! a subcommand. Errors carry the exit code the CLI promises: 2 for configuration, 1 otherwise.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{
    admin,
    cluster::{self, Cluster, EventNotifier},
    config::{Command, Options},
    exchange::HttpExchange,
    health::Health,
    metrics::Metrics,
    refresher::{NoNotifier, Notifier, Refresher},
    schedule::Policy,
    secret::Secret,
    sink::{file::FileSink, secret::SecretSink, Sink},
    source::{self, secret::SecretKeyRef, PatHandle},
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

/// Everything a subcommand needs, built from options.
pub struct Parts {
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Label Studio client.
    pub exchange: HttpExchange,
    /// PAT source.
    pub pat: PatHandle,
    /// Kubernetes access, when a Secret source or sink is configured.
    pub cluster: Option<Cluster>,
    /// Sinks (empty for `token` and `check`).
    pub sinks: Vec<Box<dyn Sink>>,
    /// Refresh timing.
    pub policy: Policy,
}

/// Builds the parts. `with_sinks` is false for `token`/`check`.
pub async fn build(
    opts: &Options,
    with_sinks: bool,
    shutdown: &CancellationToken,
) -> Result<Parts, AppError> {
    let metrics = Arc::new(Metrics::new());
    let exchange = HttpExchange::new(opts, metrics.clone()).map_err(AppError::config)?;
    let needs_kube = opts.pat_secret.is_some() || (with_sinks && opts.target_secret.is_some());
    let cluster = if needs_kube {
        Some(
            Cluster::connect(opts.pod_namespace.as_deref())
                .await
                .map_err(AppError::config)?,
        )
    } else {
        None
    };
    let pat = if let Some(v) = &opts.pat {
        PatHandle::fixed(Secret::new(v.clone()))
    } else if let Some(path) = &opts.pat_file {
        source::file::spawn(path.clone(), metrics.clone(), shutdown.clone())
    } else {
        let r = opts
            .pat_secret
            .as_ref()
            .expect("validated: one source is set");
        let c = cluster
            .as_ref()
            .expect("cluster exists for a Secret source");
        let key_ref = SecretKeyRef {
            namespace: r.namespace_or(&c.namespace).to_owned(),
            name: r.name.clone(),
            key: opts.pat_secret_key.clone(),
        };
        source::secret::spawn(c.client.clone(), key_ref, metrics.clone(), shutdown.clone())
    };
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if with_sinks {
        if let Some(dir) = &opts.token_dir {
            let sink = FileSink::new(dir.clone(), opts.file_mode.0, opts.file_group);
            sink.check_writable()
                .map_err(|e| AppError::config(e.message))?;
            sinks.push(Box::new(sink));
        }
        if let Some(t) = &opts.target_secret {
            let c = cluster.as_ref().expect("cluster exists for a Secret sink");
            sinks.push(Box::new(SecretSink::new(
                c.client.clone(),
                t.namespace_or(&c.namespace),
                &t.name,
                opts.target_secret_force,
                metrics.clone(),
            )));
        }
    }
    let policy = Policy {
        fraction: opts.refresh_fraction.0,
        min_lead: opts.min_lead.0,
        propagation_margin: if with_sinks && opts.target_secret.is_some() {
            opts.propagation_margin.0
        } else {
            std::time::Duration::ZERO
        },
        jitter: opts.jitter.0,
        backoff_initial: opts.backoff_initial.0,
        backoff_max: opts.backoff_max.0,
    };
    Ok(Parts {
        metrics,
        exchange,
        pat,
        cluster,
        sinks,
        policy,
    })
}

impl Parts {
    /// The refresher owning these parts, and the health state it reports into (one slot per sink).
    fn into_refresher(
        self,
        legacy_recheck: std::time::Duration,
        notifier: Arc<dyn Notifier>,
    ) -> (Refresher<HttpExchange>, Health) {
        let kinds: Vec<&'static str> = self.sinks.iter().map(|s| s.kind()).collect();
        let health = Health::new(&kinds);
        let refresher = Refresher::new(
            self.exchange,
            self.sinks,
            self.pat,
            self.policy,
            legacy_recheck,
            self.metrics,
            health.clone(),
            notifier,
        );
        (refresher, health)
    }
}

fn notifier(opts: &Options, parts: &Parts) -> Arc<dyn Notifier> {
    let Some(c) = &parts.cluster else {
        return Arc::new(NoNotifier);
    };
    let regarding = match (&opts.pod_name, &opts.pod_namespace) {
        (Some(pod), ns) => cluster::pod_ref(ns.as_deref().unwrap_or(&c.namespace), pod),
        (None, _) => match (&opts.pat_secret, &opts.target_secret) {
            (Some(r), _) | (None, Some(r)) => {
                cluster::secret_ref(r.namespace_or(&c.namespace), &r.name)
            }
            (None, None) => return Arc::new(NoNotifier),
        },
    };
    Arc::new(EventNotifier::new(
        c,
        regarding,
        opts.pod_name.clone(),
        parts.metrics.clone(),
    ))
}

/// Cancels `shutdown` on SIGTERM or SIGINT (Kubernetes sends SIGTERM; a terminal sends SIGINT).
pub fn spawn_signal_handler(
    shutdown: CancellationToken,
    health: Option<Health>,
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

/// `run`: serve and refresh until a signal (or `POST /quitquitquit`).
pub async fn run(opts: Options) -> Result<(), AppError> {
    let shutdown = CancellationToken::new();
    let parts = build(&opts, true, &shutdown).await?;
    let metrics = parts.metrics.clone();
    let describe = format!(
        "url={} source={} sinks=[{}]",
        parts.exchange.base_url(),
        parts.pat.describe,
        parts
            .sinks
            .iter()
            .map(|s| s.describe())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let notifier = notifier(&opts, &parts);
    let (refresher, health) = parts.into_refresher(opts.legacy_recheck.0, notifier);
    spawn_signal_handler(shutdown.clone(), Some(health.clone()))?;
    let (addr, server) = admin::bind(
        opts.admin_addr,
        health.clone(),
        metrics,
        shutdown.clone(),
        opts.enable_quit,
    )
    .await
    .map_err(AppError::config)?;
    let server = tokio::spawn(server);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), admin = %addr, "starting: {describe}");
    let result = refresher.run(shutdown.clone()).await;
    health.set_draining();
    shutdown.cancel();
    let _ = server.await;
    match result {
        Ok(()) => {
            tracing::info!("stopped cleanly; published files are left in place");
            Ok(())
        }
        Err(e) => Err(AppError::config(e.message)),
    }
}

/// `once` and `token`: one successful refresh (publishing when `publish`), with retries bounded by
/// `--once-timeout`. Returns the published set.
pub async fn once(opts: Options, command: Command) -> Result<crate::sink::TokenSet, AppError> {
    let shutdown = CancellationToken::new();
    let publish = command == Command::Once;
    let parts = build(&opts, publish, &shutdown).await?;
    spawn_signal_handler(shutdown.clone(), None)?;
    let (mut refresher, _health) =
        parts.into_refresher(opts.legacy_recheck.0, Arc::new(NoNotifier));
    let result = refresher.once(opts.once_timeout.0, &shutdown).await;
    shutdown.cancel();
    match result {
        Ok(p) => Ok(p.set),
        Err(e) if e.config => Err(AppError::config(e.message)),
        Err(e) => Err(AppError::failure(format!("{} ({})", e.message, e.reason))),
    }
}
