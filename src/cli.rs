//! The command line: one clap struct per command, built from the argument groups each concern
//! owns ([`LabelStudioArgs`], [`PatSourceArgs`], [`SinkArgs`], [`TimingArgs`], [`AdminArgs`],
//! [`KubeArgs`], [`LogArgs`]), flattened where a command needs them. Every flag has an `LS_…`
//! environment variable; typed values parse with `FromStr`; clap's errors are turned into one line
//! naming the flag and its variable. Flag names, variables, defaults and exit codes are a contract.

use clap::{ArgGroup, Args, CommandFactory, Parser, Subcommand};

use crate::{
    admin::AdminArgs, cluster::KubeArgs, controller::ControllerArgs, exchange::LabelStudioArgs,
    gate::GateArgs, leader::LeaderArgs, proxy::ProxyArgs, rotate::RotateArgs, schedule::TimingArgs,
    sink::SinkArgs, source::PatSourceArgs, telemetry::LogArgs, values::Dur,
};

/// Keeps a Label Studio access token fresh: exchanges a Personal Access Token (PAT) for short-lived
/// access tokens before they expire, tests each one against the API and publishes it to a directory,
/// a Kubernetes Secret and/or a local auth proxy.
#[derive(Debug, Parser)]
#[command(name = "ls-token-refresher", version, about, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Logging (before or after the subcommand).
    #[command(flatten)]
    pub log: LogArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
// Parsed once at start-up and moved into the command that runs: boxing the larger argument sets
// would save nothing worth an indirection.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Keep the token fresh until SIGTERM/SIGINT (the sidecar / Deployment mode).
    Run(RunArgs),
    /// Serve a local auth proxy to Label Studio that adds the current token to every request, so
    /// unmodified clients (label-studio-sdk, the ML backend) hold no credential at all.
    Proxy(ProxyCommandArgs),
    /// Serve an auth gate in front of an ML backend: admits callers whose Label Studio access or
    /// legacy token Label Studio accepts (and Label Studio's own Basic credentials), per policy.
    Gate(GateCommandArgs),
    /// Refresh once, publish to every sink and exit (init containers and Jobs).
    Once(OnceArgs),
    /// Print a fresh access token to stdout, e.g. `curl -H "Authorization: Bearer $(ls-token-refresher token)"`.
    Token(TokenArgs),
    /// Diagnose configuration, PAT, connectivity, exchange, API acceptance and sinks; exit 0 only if all pass.
    Check(CheckArgs),
    /// Keep many tokens fresh, one per LabelStudioToken resource, against admins' LabelStudioConnections.
    Controller(ControllerCommandArgs),
    /// Print the CustomResourceDefinitions the controller serves (for `kubectl apply -f -`).
    Crds,
}

/// `controller`.
#[derive(Debug, Args)]
pub struct ControllerCommandArgs {
    /// The controller.
    #[command(flatten)]
    pub controller: ControllerArgs,
    /// Leader election among replicas (only the leader reconciles).
    #[command(flatten)]
    pub leader: LeaderArgs,
    /// Timing defaults for every token resource.
    #[command(flatten)]
    pub timing: TimingArgs,
    /// Admin server.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Kubernetes.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Check.
    #[command(flatten)]
    pub dry_run: DryRunArgs,
}

/// `run`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("outputs")
        .args(["token_dir", "target_secret", "proxy_addr"])
        .required(true)
        .multiple(true)
))]
pub struct RunArgs {
    /// Label Studio.
    #[command(flatten)]
    pub ls: LabelStudioArgs,
    /// The PAT.
    #[command(flatten)]
    pub pat: PatSourceArgs,
    /// Sinks.
    #[command(flatten)]
    pub sinks: SinkArgs,
    /// The auth proxy, alongside the sinks (optional).
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Timing.
    #[command(flatten)]
    pub timing: TimingArgs,
    /// Admin server.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Kubernetes.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Leader election among replicas writing one Secret.
    #[command(flatten)]
    pub leader: LeaderArgs,
    /// PAT rotation (opt-in).
    #[command(flatten)]
    pub rotate: RotateArgs,
    /// Check.
    #[command(flatten)]
    pub dry_run: DryRunArgs,
}

/// `proxy`: the refresh loop and the proxy, no sink needed.
#[derive(Debug, Args)]
pub struct ProxyCommandArgs {
    /// Label Studio.
    #[command(flatten)]
    pub ls: LabelStudioArgs,
    /// The PAT.
    #[command(flatten)]
    pub pat: PatSourceArgs,
    /// The proxy.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Timing.
    #[command(flatten)]
    pub timing: TimingArgs,
    /// Admin server.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Kubernetes.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Check.
    #[command(flatten)]
    pub dry_run: DryRunArgs,
}

/// `gate`: the auth gate alone (no PAT, no refresh loop).
#[derive(Debug, Args)]
pub struct GateCommandArgs {
    /// Label Studio (verifies callers' tokens).
    #[command(flatten)]
    pub ls: LabelStudioArgs,
    /// The gate.
    #[command(flatten)]
    pub gate: GateArgs,
    /// Admin server.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Check.
    #[command(flatten)]
    pub dry_run: DryRunArgs,
}

/// `once`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("outputs")
        .args(["token_dir", "target_secret"])
        .required(true)
        .multiple(true)
))]
pub struct OnceArgs {
    /// Label Studio.
    #[command(flatten)]
    pub ls: LabelStudioArgs,
    /// The PAT.
    #[command(flatten)]
    pub pat: PatSourceArgs,
    /// Sinks.
    #[command(flatten)]
    pub sinks: SinkArgs,
    /// Timing.
    #[command(flatten)]
    pub timing: TimingArgs,
    /// How long to retry.
    #[command(flatten)]
    pub once: OnceTimeoutArgs,
    /// Kubernetes.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Check.
    #[command(flatten)]
    pub dry_run: DryRunArgs,
}

/// `token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Label Studio.
    #[command(flatten)]
    pub ls: LabelStudioArgs,
    /// The PAT.
    #[command(flatten)]
    pub pat: PatSourceArgs,
    /// Timing.
    #[command(flatten)]
    pub timing: TimingArgs,
    /// How long to retry.
    #[command(flatten)]
    pub once: OnceTimeoutArgs,
    /// Kubernetes.
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// `check`: the sinks given are tested without publishing.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Label Studio.
    #[command(flatten)]
    pub ls: LabelStudioArgs,
    /// The PAT.
    #[command(flatten)]
    pub pat: PatSourceArgs,
    /// Sinks to test.
    #[command(flatten)]
    pub sinks: SinkArgs,
    /// Timing (checked against the real token lifetime).
    #[command(flatten)]
    pub timing: TimingArgs,
    /// Kubernetes.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// PAT rotation: checks that the new PAT could be written back.
    #[command(flatten)]
    pub rotate: RotateArgs,
}

/// How long `once` and `token` retry.
#[derive(Debug, Clone, Args)]
pub struct OnceTimeoutArgs {
    /// How long `once` and `token` keep retrying transient failures before giving up.
    #[arg(
        long,
        env = "LS_ONCE_TIMEOUT",
        default_value = "60s",
        value_name = "DURATION"
    )]
    pub once_timeout: Dur,
}

/// Validate the configuration only.
#[derive(Debug, Clone, Args)]
pub struct DryRunArgs {
    /// Check the configuration (flags, environment, files) without contacting anything, then exit.
    #[arg(long, env = "LS_DRY_RUN")]
    pub dry_run: bool,
}

/// Parses the command line (help and version are errors of their own kind; see `main`).
pub fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::try_parse_from(args)
}

/// The environment variable of `--long`, searched in every command.
fn env_of(long: &str) -> Option<String> {
    let cmd = Cli::command();
    let found = std::iter::once(&cmd)
        .chain(cmd.get_subcommands())
        .flat_map(|c| c.get_arguments())
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned());
    found
}

/// `--min-lead <DURATION>` or `<--a <X>|--b <Y>>` → `--min-lead (LS_MIN_LEAD)`, `--a (LS_A), --b (LS_B)`.
fn name_flags(spec: &str) -> Vec<String> {
    spec.split(|c: char| c.is_whitespace() || c == '|' || c == '<' || c == '>' || c == '\'')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| match env_of(&w[2..]) {
            Some(env) => format!("{w} ({env})"),
            None => w.to_owned(),
        })
        .collect()
}

/// Renders a clap error as one line: `error: invalid value '5x' for --min-lead (LS_MIN_LEAD): …`.
pub fn one_line_error(err: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let strings = |kind: ContextKind| -> Vec<String> {
        match err.get(kind) {
            Some(ContextValue::String(s)) => vec![s.clone()],
            Some(ContextValue::Strings(v)) => v.clone(),
            _ => Vec::new(),
        }
    };
    match err.kind() {
        ErrorKind::MissingRequiredArgument => {
            let missing: Vec<Vec<String>> = strings(ContextKind::InvalidArg)
                .iter()
                .map(|s| name_flags(s))
                .collect();
            let parts: Vec<String> = missing
                .into_iter()
                .map(|f| match f.len() {
                    1 => f[0].clone(),
                    _ => format!("one of {}", f.join(", ")),
                })
                .collect();
            return format!("error: missing {}; see --help", parts.join(" and "));
        }
        ErrorKind::ArgumentConflict => {
            let a = name_flags(&strings(ContextKind::InvalidArg).join(" "));
            let b = name_flags(&strings(ContextKind::PriorArg).join(" "));
            if !a.is_empty() && !b.is_empty() {
                return format!(
                    "error: {} cannot be used with {}: set only one; see --help",
                    a.join(", "),
                    b.join(", ")
                );
            }
        }
        _ => {}
    }
    let env = strings(ContextKind::InvalidArg).first().and_then(|a| {
        let long = a.split_whitespace().next()?.trim_start_matches("--");
        env_of(long)
    });
    let text = err.to_string();
    // clap quotes the offending value itself (`invalid value '<value>' for …`, `unexpected argument
    // '<value>'`), and a misplaced token is the usual offender.
    let first = crate::secret::shown(
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("invalid command line")
            .trim_start_matches("error: "),
    );
    match env {
        Some(env) => format!("error: {first} (flag or env {env}); see --help"),
        None => format!("error: {first}; see --help"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        parse_args(std::iter::once("ls-token-refresher").chain(args.iter().copied()))
    }

    fn line(args: &[&str]) -> String {
        one_line_error(&parse(args).unwrap_err())
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn each_command_takes_what_it_needs() {
        let cli = parse(&[
            "run",
            "--url",
            "http://x",
            "--pat",
            "p",
            "--token-dir",
            "/tmp/t",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("run")
        };
        assert_eq!(run.ls.url.as_str(), "http://x");
        assert_eq!(
            run.sinks.token_dir.as_deref(),
            Some(std::path::Path::new("/tmp/t"))
        );
        let cli = parse(&["token", "--url", "http://x", "--pat-file", "/f"]).unwrap();
        assert!(matches!(cli.command, Command::Token(_)));
        // Logging flags work on either side of the subcommand.
        let cli = parse(&[
            "--log-level",
            "debug",
            "check",
            "--url",
            "http://x",
            "--pat",
            "p",
        ])
        .unwrap();
        assert_eq!(cli.log.log_level.0, tracing::Level::DEBUG);
        let cli = parse(&[
            "check",
            "--url",
            "http://x",
            "--pat",
            "p",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.log.log_format, crate::telemetry::LogFormat::Json);
    }

    #[test]
    fn missing_and_conflicting_arguments_are_one_line_naming_flags_and_env() {
        let e = line(&["run", "--url", "http://x", "--pat", "p"]);
        assert!(
            !e.contains('\n')
                && e.contains("--token-dir (LS_TOKEN_DIR)")
                && e.contains("LS_TARGET_SECRET"),
            "{e}"
        );
        let e = line(&["token", "--url", "http://x"]);
        assert!(
            e.contains(
                "one of --pat (LS_PAT), --pat-file (LS_PAT_FILE), --pat-secret (LS_PAT_SECRET)"
            ),
            "{e}"
        );
        let e = line(&["token", "--pat", "p"]);
        assert!(e.contains("missing --url (LS_URL)"), "{e}");
        let e = line(&[
            "token",
            "--url",
            "http://x",
            "--pat",
            "p",
            "--pat-file",
            "/f",
        ]);
        assert!(
            e.contains("cannot be used with") && e.contains("LS_PAT_FILE") && !e.contains("\n"),
            "{e}"
        );
        assert!(!e.contains(" p "), "never echoes the PAT: {e}");
    }

    #[test]
    fn bad_values_give_one_line_naming_flag_and_env() {
        let e = line(&["run", "--min-lead", "5x"]);
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("--min-lead") && e.contains("LS_MIN_LEAD"), "{e}");
        let e = line(&[
            "token",
            "--url",
            "http://x",
            "--pat",
            "p",
            "--request-timeout",
            "0s",
        ]);
        assert!(
            e.contains("greater than 0") && e.contains("LS_REQUEST_TIMEOUT"),
            "{e}"
        );
        let e = line(&["frobnicate"]);
        assert!(!e.contains('\n'));
    }

    #[test]
    fn arguments_never_show_the_pat_in_debug() {
        let pat = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2ln";
        let cli = parse(&[
            "run",
            "--url",
            "http://x",
            "--pat",
            pat,
            "--token-dir",
            "/t",
        ])
        .unwrap();
        let text = format!("{cli:?}");
        assert!(!text.contains(pat) && !text.contains("eyJ"), "{text}");
    }

    #[test]
    fn admin_default_is_not_9090() {
        let cli = parse(&[
            "run",
            "--url",
            "http://x",
            "--pat",
            "p",
            "--token-dir",
            "/t",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("run")
        };
        assert_ne!(run.admin.admin_addr.port(), 9090);
    }
}
