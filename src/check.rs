//! `check`: a human-readable diagnosis, one line per step, stopping at the first step others
//! depend on. Exit 0 only if every step passes.

use std::fmt::Write as _;

use tokio_util::sync::CancellationToken;

use crate::{
    app::{self, AppError},
    config::Options,
    exchange::{Authorization, Exchange, Scheme},
    jwt,
    refresher::{unix_now, usable_credential, Usable},
    sink::{file::FileSink, rfc3339, secret::SecretSink, TokenSet},
    source::PatState,
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

/// Runs every check. Configuration errors that prevent checking at all return Err (exit 2).
pub async fn run(mut opts: Options) -> Result<Report, AppError> {
    let mut r = Report::default();
    // `check` always tests the token against the API, whatever --no-validate says.
    opts.no_validate = false;
    let shutdown = CancellationToken::new();
    let mut parts = app::build(&opts, false, &shutdown).await?;
    r.ok(
        "config",
        format!(
            "url {}, PAT from {}",
            parts.exchange.base_url(),
            parts.pat.describe
        ),
    );

    // 1. The PAT.
    let state = tokio::time::timeout(SOURCE_WAIT, parts.pat.ready())
        .await
        .unwrap_or(PatState::Pending);
    let pat = match state {
        PatState::Ready(p) => p,
        PatState::Pending => {
            r.fail(
                "PAT",
                format!(
                    "no answer from {} within {SOURCE_WAIT:?}",
                    parts.pat.describe
                ),
            );
            return Ok(r);
        }
        PatState::Unavailable(why) | PatState::Invalid(why) => {
            r.fail("PAT", why);
            return Ok(r);
        }
    };
    let usable = match usable_credential(jwt::classify(&pat), &parts.pat.describe, unix_now()) {
        Ok(u) => u,
        Err(e) => {
            r.fail("PAT", e.message);
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
    match parts.exchange.health().await {
        Ok(()) => r.ok(
            "reachable",
            format!("{}/health says UP", parts.exchange.base_url()),
        ),
        Err(e) => {
            r.fail("reachable", e);
            return Ok(r);
        }
    }
    match parts.exchange.version().await {
        Ok(v) => r.ok("version", format!("Label Studio {v}")),
        Err(e) => r.fail("version", e),
    }

    // 3. Exchange and 4. acceptance.
    let auth = match usable {
        Usable::Legacy => {
            r.skip("exchange", "legacy tokens are not exchanged");
            Authorization {
                scheme: Scheme::Token,
                token: pat,
            }
        }
        _ => match parts.exchange.refresh(&pat).await {
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
    match parts.exchange.validate(&auth).await {
        Ok(()) => r.ok(
            "api",
            format!(
                "{} accepts the token ({} scheme)",
                opts.validate_path.0,
                auth.scheme.as_str()
            ),
        ),
        Err(e) => r.fail("api", e),
    }

    // 5. Sinks, without publishing anything.
    if let Some(dir) = &opts.token_dir {
        match FileSink::new(dir.clone(), opts.file_mode.0, opts.file_group).check_writable() {
            Ok(()) => r.ok("token dir", format!("{} is writable", dir.display())),
            Err(e) => r.fail("token dir", e.message),
        }
    }
    if let Some(t) = &opts.target_secret {
        let cluster = match parts.cluster.take() {
            Some(c) => Some(c),
            None => crate::cluster::Cluster::connect(opts.pod_namespace.as_deref())
                .await
                .ok(),
        };
        match cluster {
            Some(c) => {
                let sink = SecretSink::new(
                    c.client.clone(),
                    t.namespace_or(&c.namespace),
                    &t.name,
                    opts.target_secret_force,
                    parts.metrics.clone(),
                );
                let probe = TokenSet {
                    auth,
                    expires_at: None,
                    refreshed_at: unix_now() as i64,
                };
                match sink.dry_run(&probe).await {
                    Ok(()) => r.ok(
                        "target secret",
                        format!("server-side apply to {t} allowed (dry run)"),
                    ),
                    Err(e) => r.fail("target secret", e.message),
                }
            }
            None => r.fail(
                "target secret",
                "no Kubernetes configuration (in-cluster or KUBECONFIG)",
            ),
        }
    }
    shutdown.cancel();
    Ok(r)
}
