//! Command line and environment: one clap-derive struct. Every option has an `LS_…` variable, and
//! every typed value (durations, addresses, `namespace/name` references, URLs, modes) parses with
//! `FromStr`, so mistakes fail at start-up with one line naming the flag and its variable.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Keeps a Label Studio access token fresh: exchanges a Personal Access Token (PAT) for short-lived
/// access tokens before they expire, tests each one against the API and publishes it to a directory
/// and/or a Kubernetes Secret.
#[derive(Debug, Parser)]
#[command(name = "ls-token-refresher", version, about, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Options shared by every subcommand.
    #[command(flatten)]
    pub opts: Options,
}

/// Subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Keep the token fresh until SIGTERM/SIGINT (the sidecar / Deployment mode).
    Run,
    /// Refresh once, publish to every sink and exit (init containers and Jobs).
    Once,
    /// Print a fresh access token to stdout, e.g. `curl -H "Authorization: Bearer $(ls-token-refresher token)"`.
    Token,
    /// Diagnose configuration, PAT, connectivity, exchange and API acceptance; exit 0 only if all pass.
    Check,
}

/// All options. Each is also read from the environment variable named in its help.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Label Studio base URL, e.g. http://label-studio:8080.
    #[arg(long, env = "LS_URL", global = true, value_name = "URL")]
    pub url: Option<BaseUrl>,

    /// The PAT (or legacy token) itself. Handy locally; prefer --pat-file or --pat-secret in clusters.
    #[arg(
        long,
        env = "LS_PAT",
        global = true,
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub pat: Option<String>,

    /// File holding the PAT; re-read when it changes (works with mounted Secrets).
    #[arg(long, env = "LS_PAT_FILE", global = true, value_name = "PATH")]
    pub pat_file: Option<PathBuf>,

    /// Kubernetes Secret holding the PAT, `[namespace/]name`; watched, changes apply at once.
    #[arg(long, env = "LS_PAT_SECRET", global = true, value_name = "[NS/]NAME")]
    pub pat_secret: Option<ObjectRef>,

    /// Key of the PAT inside --pat-secret.
    #[arg(
        long,
        env = "LS_PAT_SECRET_KEY",
        global = true,
        default_value = "pat",
        value_name = "KEY"
    )]
    pub pat_secret_key: String,

    /// Directory to publish `token`, `authorization`, `expires_at` and `token.json` into (atomic swap).
    #[arg(long, env = "LS_TOKEN_DIR", global = true, value_name = "DIR")]
    pub token_dir: Option<PathBuf>,

    /// Mode of the published files, octal (0640 lets a consumer in the same group read them).
    #[arg(
        long,
        env = "LS_FILE_MODE",
        global = true,
        default_value = "0600",
        value_name = "OCTAL"
    )]
    pub file_mode: FileMode,

    /// Numeric group id to own the published files (pair with fsGroup and --file-mode 0640).
    #[arg(long, env = "LS_FILE_GROUP", global = true, value_name = "GID")]
    pub file_group: Option<u32>,

    /// Kubernetes Secret to keep current, `[namespace/]name` (server-side apply of our keys only).
    #[arg(
        long,
        env = "LS_TARGET_SECRET",
        global = true,
        value_name = "[NS/]NAME"
    )]
    pub target_secret: Option<ObjectRef>,

    /// Take ownership of target-Secret keys held by another field manager instead of reporting a conflict.
    #[arg(long, env = "LS_TARGET_SECRET_FORCE", global = true)]
    pub target_secret_force: bool,

    /// Extra lead time before expiry when a Secret sink is used: kubelet takes 60–90 s to update mounts.
    #[arg(
        long,
        env = "LS_PROPAGATION_MARGIN",
        global = true,
        default_value = "90s",
        value_name = "DURATION"
    )]
    pub propagation_margin: Dur,

    /// Refresh when this fraction of the access token's lifetime has passed (0 < f < 1).
    #[arg(
        long,
        env = "LS_REFRESH_FRACTION",
        global = true,
        default_value = "0.66",
        value_name = "FRACTION"
    )]
    pub refresh_fraction: Fraction,

    /// Refresh at least this long before the access token expires.
    #[arg(
        long,
        env = "LS_MIN_LEAD",
        global = true,
        default_value = "30s",
        value_name = "DURATION"
    )]
    pub min_lead: Dur,

    /// Refresh up to this much earlier at random, so many replicas do not refresh in lock-step.
    #[arg(
        long,
        env = "LS_JITTER",
        global = true,
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub jitter: Dur,

    /// First retry delay after a failed refresh (doubles per failure, with jitter).
    #[arg(
        long,
        env = "LS_BACKOFF_INITIAL",
        global = true,
        default_value = "1s",
        value_name = "DURATION"
    )]
    pub backoff_initial: Dur,

    /// Longest retry delay; retries are also capped relative to the current token's remaining lifetime.
    #[arg(
        long,
        env = "LS_BACKOFF_MAX",
        global = true,
        default_value = "60s",
        value_name = "DURATION"
    )]
    pub backoff_max: Dur,

    /// Timeout of each HTTP request to Label Studio (connect + response).
    #[arg(
        long,
        env = "LS_REQUEST_TIMEOUT",
        global = true,
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub request_timeout: Dur,

    /// TCP/TLS connect timeout to Label Studio.
    #[arg(
        long,
        env = "LS_CONNECT_TIMEOUT",
        global = true,
        default_value = "5s",
        value_name = "DURATION"
    )]
    pub connect_timeout: Dur,

    /// How often a legacy token is re-validated (to notice revocation or legacy auth being disabled).
    #[arg(
        long,
        env = "LS_LEGACY_RECHECK",
        global = true,
        default_value = "60s",
        value_name = "DURATION"
    )]
    pub legacy_recheck: Dur,

    /// How long `once` and `token` keep retrying transient failures before giving up.
    #[arg(
        long,
        env = "LS_ONCE_TIMEOUT",
        global = true,
        default_value = "60s",
        value_name = "DURATION"
    )]
    pub once_timeout: Dur,

    /// PEM file of CA certificates to trust in addition to the system ones (private CAs).
    #[arg(long, env = "LS_CA_FILE", global = true, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,

    /// API path used to test each new token before publishing it.
    #[arg(
        long,
        env = "LS_VALIDATE_PATH",
        global = true,
        default_value = "/api/current-user/whoami",
        value_name = "PATH"
    )]
    pub validate_path: ApiPath,

    /// Publish new tokens without testing them against the API first.
    #[arg(long, env = "LS_NO_VALIDATE", global = true)]
    pub no_validate: bool,

    /// Address of the health/metrics server (/livez, /readyz, /metrics). Not 9090: ML backends use it.
    #[arg(
        long,
        env = "LS_ADMIN_ADDR",
        global = true,
        default_value = "0.0.0.0:9417",
        value_name = "ADDR"
    )]
    pub admin_addr: SocketAddr,

    /// Serve `POST /quitquitquit` on the admin server, so a Job's main container can stop the sidecar.
    #[arg(long, env = "LS_ENABLE_QUIT", global = true)]
    pub enable_quit: bool,

    /// Log format.
    #[arg(long, env = "LS_LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// Log level for this program (error, warn, info, debug, trace); libraries stay at warn.
    #[arg(
        long,
        env = "LS_LOG_LEVEL",
        global = true,
        default_value = "info",
        value_name = "LEVEL"
    )]
    pub log_level: LogLevel,

    /// This pod's name (downward API), so Kubernetes Events can be attached to it.
    #[arg(long, env = "LS_POD_NAME", global = true, value_name = "NAME")]
    pub pod_name: Option<String>,

    /// This pod's namespace (downward API); also the default namespace for Secret references.
    #[arg(
        long,
        env = "LS_POD_NAMESPACE",
        global = true,
        value_name = "NAMESPACE"
    )]
    pub pod_namespace: Option<String>,
}

/// A configuration problem found after parsing: one line naming the flag and its variable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Options {
    /// Checks combinations clap cannot express. `command` decides which parts are required.
    pub fn validate(&self, command: Command) -> Result<(), ConfigError> {
        if self.url.is_none() {
            return Err(ConfigError("--url (LS_URL) is required: the Label Studio base URL, e.g. http://label-studio:8080".into()));
        }
        let sources = [
            self.pat.is_some(),
            self.pat_file.is_some(),
            self.pat_secret.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if sources == 0 {
            return Err(ConfigError(
                "no PAT source: set one of --pat (LS_PAT), --pat-file (LS_PAT_FILE) or --pat-secret (LS_PAT_SECRET)".into(),
            ));
        }
        if sources > 1 {
            return Err(ConfigError(
                "more than one PAT source: set only one of --pat (LS_PAT), --pat-file (LS_PAT_FILE), --pat-secret (LS_PAT_SECRET)".into(),
            ));
        }
        if matches!(command, Command::Run | Command::Once)
            && self.token_dir.is_none()
            && self.target_secret.is_none()
        {
            return Err(ConfigError(
                "nowhere to publish: set --token-dir (LS_TOKEN_DIR) and/or --target-secret (LS_TARGET_SECRET)".into(),
            ));
        }
        if self.backoff_initial.0.is_zero() {
            return Err(ConfigError(
                "--backoff-initial (LS_BACKOFF_INITIAL) must be greater than 0".into(),
            ));
        }
        if self.backoff_max.0 < self.backoff_initial.0 {
            return Err(ConfigError(
                "--backoff-max (LS_BACKOFF_MAX) must not be smaller than --backoff-initial (LS_BACKOFF_INITIAL)".into(),
            ));
        }
        if self.request_timeout.0.is_zero() || self.connect_timeout.0.is_zero() {
            return Err(ConfigError(
                "--request-timeout (LS_REQUEST_TIMEOUT) and --connect-timeout (LS_CONNECT_TIMEOUT) must be greater than 0".into(),
            ));
        }
        if self.legacy_recheck.0 < std::time::Duration::from_secs(1) {
            return Err(ConfigError(
                "--legacy-recheck (LS_LEGACY_RECHECK) must be at least 1s".into(),
            ));
        }
        if let Some(ca) = &self.ca_file {
            if !ca.is_file() {
                return Err(ConfigError(format!(
                    "--ca-file (LS_CA_FILE) {}: no such file",
                    ca.display()
                )));
            }
        }
        Ok(())
    }

    /// The base URL (validated to be present by [`Options::validate`]).
    pub fn base_url(&self) -> &BaseUrl {
        self.url.as_ref().expect("validated: url is set")
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// A log level for this program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLevel(pub tracing::Level);

impl FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        tracing::Level::from_str(s.trim())
            .map(LogLevel)
            .map_err(|_| format!("'{s}' is not a log level: use error, warn, info, debug or trace"))
    }
}

/// A duration written like `90s`, `5m`, `1h30m`, `250ms` or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Dur).ok_or_else(|| {
            format!("'{s}' is not a duration up to 365d: write e.g. 90s, 5m, 1h30m or 250ms")
        })
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs_f64())
    }
}

/// Longest accepted duration. No knob here means anything beyond a year, and the cap keeps every
/// later `Instant + Duration` and lead-time sum far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs)).filter(|d| *d <= MAX_DURATION);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return None,
        };
        total = total.checked_add(Duration::try_from_secs_f64(value * scale).ok()?)?;
    }
    Some(total).filter(|d| *d <= MAX_DURATION)
}

/// A fraction strictly between 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Fraction(pub f64);

impl FromStr for Fraction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().parse::<f64>() {
            Ok(f) if f > 0.0 && f < 1.0 => Ok(Fraction(f)),
            _ => Err(format!(
                "'{s}' must be a number between 0 and 1 (exclusive), e.g. 0.66"
            )),
        }
    }
}

/// A Unix file mode written in octal, at most 0777, that lets the owner read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl FromStr for FileMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let t = t.strip_prefix("0o").unwrap_or(t);
        match u32::from_str_radix(t, 8) {
            Ok(m) if m <= 0o777 && m & 0o400 != 0 => Ok(FileMode(m)),
            Ok(_) => Err(format!(
                "'{s}' must be an octal mode up to 0777 that the owner can read, e.g. 0600 or 0640"
            )),
            Err(_) => Err(format!(
                "'{s}' is not an octal file mode, e.g. 0600 or 0640"
            )),
        }
    }
}

/// An `http(s)://` base URL with no query or fragment; a trailing slash is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl(String);

impl BaseUrl {
    /// Joins an absolute API path (starting with `/`).
    pub fn join(&self, path: &str) -> String {
        format!("{}{}", self.0, path)
    }
    /// The URL as given, without trailing slash.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for BaseUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().trim_end_matches('/');
        let rest = t
            .strip_prefix("http://")
            .or_else(|| t.strip_prefix("https://"))
            .ok_or_else(|| format!("'{s}' must start with http:// or https://"))?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("'{s}' has no host"));
        }
        if t.contains(['?', '#', ' ']) {
            return Err(format!(
                "'{s}' must be a plain base URL without query, fragment or spaces"
            ));
        }
        if t.contains('@') {
            return Err(format!("'{s}': do not put credentials in the URL"));
        }
        Ok(BaseUrl(t.to_owned()))
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An absolute API path such as `/api/current-user/whoami`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath(pub String);

impl FromStr for ApiPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if !t.starts_with('/') || t.contains(char::is_whitespace) {
            return Err(format!(
                "'{s}' must be an absolute path like /api/current-user/whoami"
            ));
        }
        Ok(ApiPath(t.to_owned()))
    }
}

/// A `[namespace/]name` reference to a namespaced Kubernetes object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// Namespace, if given; otherwise the pod's own / the kubeconfig's default.
    pub namespace: Option<String>,
    /// Object name.
    pub name: String,
}

impl ObjectRef {
    /// The namespace, falling back to `default_ns`.
    pub fn namespace_or<'a>(&'a self, default_ns: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(default_ns)
    }
}

impl FromStr for ObjectRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (ns, name) = match t.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, t),
        };
        let valid = |v: &str| {
            !v.is_empty()
                && v.len() <= 253
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
                && v.as_bytes()[0].is_ascii_alphanumeric()
                && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric()
        };
        if !valid(name) || ns.is_some_and(|n| !valid(n) || n.len() > 63 || n.contains('.')) {
            return Err(format!(
                "'{s}' must be `name` or `namespace/name` (lowercase letters, digits, '-' and '.')"
            ));
        }
        Ok(ObjectRef {
            namespace: ns.map(str::to_owned),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Parses the command line, turning clap's multi-line errors into the one-line form this tool
/// promises (naming the flag and its environment variable). Help and version print as usual.
pub fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::try_parse_from(args)
}

/// Renders a clap error as one line: `error: invalid value '5x' for --min-lead (LS_MIN_LEAD): …`.
pub fn one_line_error(err: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let cmd = <Cli as clap::CommandFactory>::command();
    let arg_name = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let env = arg_name.as_deref().and_then(|a| {
        let long = a.split_whitespace().next()?.trim_start_matches("--");
        cmd.get_arguments()
            .find(|x| x.get_long() == Some(long))
            .and_then(|x| x.get_env())
            .map(|e| e.to_string_lossy().into_owned())
    });
    let text = err.to_string();
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid command line")
        .trim_start_matches("error: ")
        .to_owned();
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

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("42"), Some(Duration::from_secs(42)));
        assert_eq!(parse_duration("365d"), Some(MAX_DURATION));
        for bad in [
            "",
            "s",
            "5x",
            "-1s",
            "1h m",
            "1.2.3s",
            "366d",
            "99999999999",
            "1e400s",
            "10000000000000000000s10000000000000000000s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn object_refs() {
        let r: ObjectRef = "ns-1/my.secret".parse().unwrap();
        assert_eq!(
            (r.namespace.as_deref(), r.name.as_str()),
            (Some("ns-1"), "my.secret")
        );
        let r: ObjectRef = "name".parse().unwrap();
        assert_eq!(r.namespace_or("pod-ns"), "pod-ns");
        for bad in ["", "/x", "x/", "A/b", "a/b/c", "a_b", "-a"] {
            assert!(bad.parse::<ObjectRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_modes_fractions() {
        assert_eq!(
            "http://ls:8080/".parse::<BaseUrl>().unwrap().join("/api"),
            "http://ls:8080/api"
        );
        for bad in [
            "ls:8080",
            "ftp://x",
            "http://",
            "http://u:p@h",
            "http://h/?q",
        ] {
            assert!(bad.parse::<BaseUrl>().is_err(), "{bad}");
        }
        assert_eq!("0640".parse::<FileMode>().unwrap(), FileMode(0o640));
        assert!("0040".parse::<FileMode>().is_err());
        assert!("0999".parse::<FileMode>().is_err());
        assert!("1".parse::<Fraction>().is_err());
        assert!("0.5".parse::<Fraction>().is_ok());
    }

    #[test]
    fn flags_parse_after_subcommand_and_validate() {
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
        assert_eq!(cli.command, Command::Run);
        cli.opts.validate(cli.command).unwrap();
        let cli = parse(&["run", "--url", "http://x", "--pat", "p"]).unwrap();
        let e = cli.opts.validate(Command::Run).unwrap_err().to_string();
        assert!(
            e.contains("--token-dir") && e.contains("LS_TARGET_SECRET"),
            "{e}"
        );
        cli.opts.validate(Command::Token).unwrap();
        let cli = parse(&[
            "token",
            "--url",
            "http://x",
            "--pat",
            "p",
            "--pat-file",
            "/f",
        ])
        .unwrap();
        assert!(cli
            .opts
            .validate(Command::Token)
            .unwrap_err()
            .to_string()
            .contains("more than one"));
    }

    #[test]
    fn bad_values_give_one_line_naming_flag_and_env() {
        let err = parse(&["run", "--min-lead", "5x"]).unwrap_err();
        let line = one_line_error(&err);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("--min-lead") && line.contains("LS_MIN_LEAD"),
            "{line}"
        );
        let err = parse(&["frobnicate"]).unwrap_err();
        assert!(!one_line_error(&err).contains('\n'));
    }

    #[test]
    fn admin_default_is_not_9090() {
        let cli = parse(&["run"]).unwrap();
        assert_ne!(cli.opts.admin_addr.port(), 9090);
    }
}
