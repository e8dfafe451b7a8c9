//! `check`: a human-readable diagnosis, one line per step, stopping at the first step others
//! depend on. Exit 0 only if every step passes. It uses the same pieces as `run`: the credential
//! check, the HTTP client, the sinks' own preflight.

use std::{fmt::Write as _, sync::Arc};

use tokio_util::sync::CancellationToken;

use crate::{
    cli::CheckArgs,
    clock::{rfc3339, unix_now},
    cluster::Cluster,
    exchange::Exchange,
    jwt::{self, Usable},
    metrics::Metrics,
    refresher::SKEW_TOLERANCE_SECS,
    schedule,
    sink::{file::FileSink, secret::SecretSink, Sink},
    source::PatState,
    token::{Authorization, Scheme},
};

/// How long `check` waits for a PAT source (e.g. the Secret watch) to answer.
const SOURCE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// The report being built.
#[derive(Default)]
pub struct Report {
    text: String,
    failed: usize,
}

impl Report {
    fn ok(&mut self, step: &str, detail: impl std::fmt::Display) {
        let _ = writeln!(self.text, "[ok]   {step}: {detail}");
    }
    fn fail(&mut self, step: &str, detail: impl std::fmt::Display) {
        self.failed += 1;
        let _ = writeln!(self.text, "[FAIL] {step}: {detail}");
    }
    fn warn(&mut self, step: &str, detail: impl std::fmt::Display) {
        let _ = writeln!(self.text, "[warn] {step}: {detail}");
    }
    fn skip(&mut self, step: &str, detail: impl std::fmt::Display) {
        let _ = writeln!(self.text, "[skip] {step}: {detail}");
    }
    /// The report text.
    pub fn text(&self) -> &str {
        &self.text
    }
    /// Number of failed steps.
    pub fn failed(&self) -> usize {
        self.failed
    }
}

/// A configuration error that prevents checking at all (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn from(e: impl std::fmt::Display) -> Self {
        ConfigError(e.to_string())
    }
}

/// Runs every check. Configuration errors that prevent checking at all return Err (exit 2).
pub async fn run(args: CheckArgs) -> Result<Report, ConfigError> {
    let mut r = Report::default();
    let metrics = Arc::new(Metrics::new());
    let policy = args
        .timing
        .policy(args.sinks.propagation_margin())
        .map_err(ConfigError::from)?;
    // `check` always tests the token against the API, whatever --no-validate says.
    let exchange = args
        .ls
        .client(metrics.clone())
        .map_err(ConfigError::from)?
        .always_validating(&args.ls.validate_path.0);
    let shutdown = CancellationToken::new();
    let needs_cluster = args.pat.secret_ref().is_some() || args.sinks.target_secret.is_some();
    let cluster = if needs_cluster {
        match Cluster::connect(args.kube.pod_namespace.as_deref()).await {
            Ok(c) => Some(c),
            Err(e) => {
                r.fail("kubernetes", e);
                None
            }
        }
    } else {
        None
    };
    if needs_cluster && cluster.is_none() && args.pat.secret_ref().is_some() {
        return Ok(r);
    }
    let mut pat_handle = args.pat.start(
        cluster
            .as_ref()
            .map(|c| (c.client.clone(), c.namespace.as_str())),
        metrics.clone(),
        shutdown.clone(),
    );
    r.ok(
        "config",
        format!("url {}, PAT from {}", args.ls.url, pat_handle.describe),
    );
    if let Some(w) = args.ls.cleartext_warning() {
        r.warn("transport", w);
    }

    // 1. The PAT.
    let state = tokio::time::timeout(SOURCE_WAIT, pat_handle.ready())
        .await
        .unwrap_or(PatState::Pending);
    let pat = match state {
        PatState::Ready(p) => p,
        PatState::Pending => {
            r.fail(
                "PAT",
                format!(
                    "no answer from {} within {SOURCE_WAIT:?}",
                    pat_handle.describe
                ),
            );
            return Ok(r);
        }
        PatState::Unavailable(why) | PatState::Invalid(why) => {
            r.fail("PAT", why);
            return Ok(r);
        }
    };
    let usable = match jwt::usable(&pat, &pat_handle.describe, unix_now()) {
        Ok(u) => u,
        Err(e) => {
            r.fail("PAT", e);
            return Ok(r);
        }
    };
    match usable {
        Usable::Pat { exp: Some(exp) } => r.ok(
            "PAT",
            format!(
                "Personal Access Token (JWT refresh token), expires {}",
                rfc3339(exp)
            ),
        ),
        Usable::Pat { exp: None } => r.ok(
            "PAT",
            "Personal Access Token (JWT refresh token) without expiry",
        ),
        Usable::Legacy => r.ok(
            "PAT",
            "legacy API token (40 hex): used with 'Authorization: Token', never refreshed",
        ),
    }

    // 2. Reachability.
    match exchange.health_check().await {
        Ok(()) => r.ok("reachable", format!("{}/health says UP", args.ls.url)),
        Err(e) => {
            r.fail("reachable", e);
            return Ok(r);
        }
    }
    match exchange.version().await {
        Ok(v) => r.ok("version", format!("Label Studio {v}")),
        Err(e) => r.fail("version", e),
    }

    // 3. Exchange, 4. acceptance, 5. timing against this token.
    let auth = match usable {
        Usable::Legacy => {
            r.skip("exchange", "legacy tokens are not exchanged");
            Authorization {
                scheme: Scheme::Token,
                token: pat,
            }
        }
        Usable::Pat { .. } => match exchange.refresh(&pat).await {
            Ok(a) => {
                let lifetime = a.claims.iat.map(|i| a.exp().saturating_sub(i));
                r.ok(
                    "exchange",
                    format!(
                        "access token issued, expires {}{}",
                        rfc3339(a.exp()),
                        lifetime
                            .map(|l| format!(" (lifetime {l}s)"))
                            .unwrap_or_default()
                    ),
                );
                if let Some(iat) = a.claims.iat {
                    let offset = iat as f64 - unix_now();
                    if offset.abs() > SKEW_TOLERANCE_SECS + 1.0 {
                        r.warn("clock", format!("Label Studio's clock is {offset:+.0}s from this host's: refreshes are timed on Label Studio's clock, but consumers comparing expires_at with their clock will be off"));
                    }
                }
                if let Some(l) = lifetime {
                    if schedule::lead_exceeds_lifetime(&policy, l as f64) {
                        r.warn("timing", format!("--min-lead plus --propagation-margin exceed ¾ of the {l}s token lifetime: refreshes will happen at a quarter of it"));
                    }
                }
                Authorization {
                    scheme: Scheme::Bearer,
                    token: a.token,
                }
            }
            Err(e) => {
                r.fail("exchange", e);
                return Ok(r);
            }
        },
    };
    match exchange.validate(&auth).await {
        Ok(_) => r.ok(
            "api",
            format!(
                "{} accepts the token ({} scheme)",
                args.ls.validate_path.0,
                auth.scheme.as_str()
            ),
        ),
        Err(e) => r.fail("api", e),
    }

    // 6. Sinks, without publishing anything: the same preflight `run` does.
    let mut sinks: Vec<(&str, Box<dyn Sink>)> = Vec::new();
    if let Some(dir) = &args.sinks.token_dir {
        sinks.push((
            "token dir",
            Box::new(FileSink::new(
                dir.clone(),
                args.sinks.file_mode.0,
                args.sinks.file_group,
            )),
        ));
    }
    if let Some(t) = &args.sinks.target_secret {
        match &cluster {
            Some(c) => sinks.push((
                "target secret",
                Box::new(SecretSink::new(
                    c.client.clone(),
                    t.namespace_or(&c.namespace),
                    &t.name,
                    args.sinks.target_secret_force,
                    metrics.clone(),
                )),
            )),
            None => r.fail("target secret", "no Kubernetes connection (see above)"),
        }
    }
    for (step, sink) in sinks {
        match sink.preflight().await {
            Ok(what) => r.ok(step, what),
            Err(e) => r.fail(step, e.message),
        }
    }

    // 7. PAT rotation: would writing the new PAT back work (nothing is rotated)?
    if args.rotate.policy().is_some() {
        let kube = cluster
            .as_ref()
            .map(|c| (c.client.clone(), c.namespace.as_str()));
        match args.rotate.store(&args.pat, kube) {
            Ok(store) => match store.check().await {
                Ok(what) => r.ok("pat rotation", what),
                Err(refusal) => r.fail("pat rotation", refusal.detail),
            },
            Err(e) => r.fail("pat rotation", e),
        }
    }
    shutdown.cancel();
    Ok(r)
}
