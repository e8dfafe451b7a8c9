//! PAT from a file, re-read when it changes. Mounted Secrets and ConfigMaps are updated by the
//! kubelet with a symlink swap, which inotify on the file misses (k8s #111947), so we poll: reading
//! a few hundred bytes once a second costs nothing and sees every kind of update.

use std::{path::PathBuf, time::Duration};

use tokio_util::sync::CancellationToken;

use super::{channel, PatHandle, PatPublisher, PatState};
use crate::{metrics::Metrics, secret::Secret};

/// How often the file is re-read. A rotated PAT is picked up within this delay (plus the kubelet's
/// own sync delay for mounted Secrets).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// A PAT is ~250 bytes; a file larger than this is not a PAT and is not read whole.
const MAX_PAT_FILE_BYTES: u64 = 64 * 1024;

/// Reads the file once, mapping every problem to a one-line explanation.
pub fn read_pat_file(path: &std::path::Path) -> PatState {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return PatState::Invalid(format!("cannot read PAT file {}: {e}", path.display()))
        }
    };
    if meta.len() > MAX_PAT_FILE_BYTES {
        return PatState::Invalid(format!(
            "PAT file {} is {} bytes: not a token (check --pat-file)",
            path.display(),
            meta.len()
        ));
    }
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(s) => {
                let pat = Secret::new(s);
                if pat.is_empty() {
                    PatState::Invalid(format!("PAT file {} is empty", path.display()))
                } else {
                    PatState::Ready(pat)
                }
            }
            Err(_) => PatState::Invalid(format!("PAT file {} is not UTF-8 text", path.display())),
        },
        Err(e) => PatState::Invalid(format!("cannot read PAT file {}: {e}", path.display())),
    }
}

/// Starts polling `path`; the task ends with `shutdown`.
pub fn spawn(
    path: PathBuf,
    metrics: std::sync::Arc<Metrics>,
    shutdown: CancellationToken,
) -> PatHandle {
    let (publisher, handle) = channel("file", format!("file {}", path.display()));
    publisher.set(read_pat_file(&path));
    tokio::spawn(poll(path, publisher, metrics, shutdown));
    handle
}

async fn poll(
    path: PathBuf,
    publisher: PatPublisher,
    metrics: std::sync::Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = publisher.reread_requested() => {}
        }
        if publisher.is_closed() {
            return;
        }
        let p = path.clone();
        let state = tokio::task::spawn_blocking(move || read_pat_file(&p))
            .await
            .unwrap_or_else(|e| PatState::Invalid(format!("PAT file reader failed: {e}")));
        let result = match &state {
            PatState::Ready(_) => "changed",
            _ => "unavailable",
        };
        if publisher.set(state.clone()) {
            metrics
                .source_reloads_total
                .with_label_values(&["file", result])
                .inc();
            match state {
                PatState::Ready(_) => {
                    tracing::info!(path = %path.display(), "PAT file changed; using the new PAT")
                }
                PatState::Invalid(why) | PatState::Unavailable(why) => {
                    tracing::warn!(reason = "source_unavailable", "{why}")
                }
                PatState::Pending => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn picks_up_rotation_and_reports_problems() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pat");
        std::fs::write(&path, "first\n").unwrap();
        let shutdown = CancellationToken::new();
        let mut h = spawn(path.clone(), Default::default(), shutdown.clone());
        assert_eq!(h.ready().await, PatState::Ready(Secret::new("first")));

        std::fs::write(&path, "second").unwrap();
        tokio::time::timeout(Duration::from_secs(5), h.changed())
            .await
            .unwrap();
        assert_eq!(h.current(), PatState::Ready(Secret::new("second")));

        std::fs::remove_file(&path).unwrap();
        h.request_reread();
        tokio::time::timeout(Duration::from_secs(5), h.changed())
            .await
            .unwrap();
        assert!(matches!(h.current(), PatState::Invalid(m) if m.contains("cannot read")));

        std::fs::write(&path, "  \n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), h.changed())
            .await
            .unwrap();
        assert!(matches!(h.current(), PatState::Invalid(m) if m.contains("empty")));
        shutdown.cancel();
    }
}
