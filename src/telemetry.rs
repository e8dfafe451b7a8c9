//! Logging with `tracing`: plain or JSON lines on stderr. The level applies to this program only;
//! libraries stay at `warn` even when `--log-level trace` is asked for, because HTTP and TLS crates
//! log request details at trace level and tokens must never reach a log.

use std::{io::IsTerminal, str::FromStr};

use tracing_subscriber::{
    filter::Targets, fmt, layer::SubscriberExt, util::SubscriberInitExt, Layer,
};

/// Logging flags (accepted before or after the subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
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
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// A log level for this program. Filter directives (`info,crate=debug`) are refused on purpose:
/// they could raise HTTP and TLS libraries to trace level, where request headers are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLevel(pub tracing::Level);

impl FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        tracing::Level::from_str(s.trim())
            .map(LogLevel)
            .map_err(|_| format!("'{s}' is not a log level: use error, warn, info, debug or trace (one word; libraries always stay at warn)"))
    }
}

/// Installs the global subscriber (once, in `main`).
pub fn init(args: &LogArgs) {
    let filter = Targets::new()
        .with_default(tracing::Level::WARN)
        .with_target("ls_token_refresher", args.log_level.0);
    let layer = match args.log_format {
        LogFormat::Plain => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
}
