//! Logging with `tracing`: plain or JSON lines on stderr. The level applies to this program only;
//! libraries stay at `warn` even when `--log-level trace` is asked for, because HTTP and TLS crates
//! log request details at trace level and tokens must never reach a log.

use std::io::IsTerminal;

use tracing_subscriber::{
    filter::Targets, fmt, layer::SubscriberExt, util::SubscriberInitExt, Layer,
};

use crate::config::{LogFormat, LogLevel};

/// Installs the global subscriber (once, in `main`).
pub fn init(format: LogFormat, level: LogLevel) {
    let filter = Targets::new()
        .with_default(tracing::Level::WARN)
        .with_target("ls_token_refresher", level.0);
    let layer = match format {
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
