//! A PAT file as a rotation store: the new PAT replaces the file atomically (a temporary file in
//! the same directory, `fsync`, rename, `fsync` of the directory) and the intent lives next to it
//! in `<file>.rotation`, written the same way.
//!
//! A file the kubelet projects (a Secret or ConfigMap volume: the directory holds `..data`, the
//! file is a symlink into it) is refused: the volume is read-only, and the kubelet would replace
//! anything written there with the Secret's old value. Rotate the Secret itself (`--pat-secret`).

use std::{
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use futures::future::BoxFuture;

use super::{Intent, PatStore, Refusal, StoreError};
use crate::secret::{shown_path, Secret};

/// Largest intent file we read: ours is ~50 bytes.
const MAX_INTENT_BYTES: u64 = 1024;
/// Mode of a PAT file we create anew (one that exists keeps its mode).
const NEW_FILE_MODE: u32 = 0o600;

/// The PAT file store.
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// The store for the PAT file `path`.
    pub fn new(path: PathBuf) -> Self {
        FileStore { path }
    }

    fn intent_path(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".rotation");
        self.path.with_file_name(name)
    }

    fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn err(&self, what: &str, e: std::io::Error) -> StoreError {
        StoreError(format!("{what} {}: {e}", shown_path(&self.path)))
    }
}

/// Writes `contents` to `path` atomically with `mode`, durable when it returns.
fn write_atomic(path: &Path, dir: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode we asked for; the old file's mode is the contract.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Why the PAT file at `path` (in `dir`) cannot be written back, or None.
pub fn unwritable(path: &Path, dir: &Path) -> Option<Refusal> {
    let shown = shown_path(path);
    if dir.join("..data").exists()
        || std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
    {
        return Some(Refusal {
            reason: "kubelet_mount",
            detail: format!(
                "PAT file {shown} is in a volume the kubelet projects (a Secret mount): it is read-only and would be replaced by the old value; rotate the Secret itself with --pat-secret"
            ),
        });
    }
    let probe = dir.join(format!(".ls-token-refresher-probe-{}", std::process::id()));
    match write_atomic(&probe, dir, b"", NEW_FILE_MODE) {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) => Some(Refusal {
            reason: "not_writable",
            detail: format!(
                "the directory of PAT file {shown} is not writable ({e}): rotation needs to replace the file there"
            ),
        }),
    }
}

impl PatStore for FileStore {
    fn describe(&self) -> String {
        format!("file {}", shown_path(&self.path))
    }

    fn check(&self) -> BoxFuture<'_, Result<String, Refusal>> {
        let (path, dir) = (self.path.clone(), self.dir());
        Box::pin(async move {
            let found = tokio::task::spawn_blocking(move || unwritable(&path, &dir))
                .await
                .unwrap_or_else(|e| {
                    Some(Refusal {
                        reason: "not_writable",
                        detail: format!("checking the PAT file failed: {e}"),
                    })
                });
            match found {
                Some(r) => Err(r),
                None => Ok(format!("{}: its directory is writable", self.describe())),
            }
        })
    }

    fn begin<'a>(
        &'a self,
        intent: &'a Intent,
        pat: &'a Secret,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let (path, ipath, dir) = (self.path.clone(), self.intent_path(), self.dir());
        let text = intent.encode();
        let pat = pat.clone();
        Box::pin(async move {
            let r = tokio::task::spawn_blocking(move || {
                let held = std::fs::read_to_string(&path).map(Secret::new)?;
                if held != pat {
                    return Err(std::io::Error::other(
                        "the PAT in the file changed since it was read",
                    ));
                }
                write_atomic(&ipath, &dir, text.as_bytes(), NEW_FILE_MODE)
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
            r.map_err(|e| self.err("recording the rotation intent next to", e))
        })
    }

    fn intent(&self) -> BoxFuture<'_, Result<Option<Intent>, StoreError>> {
        let ipath = self.intent_path();
        Box::pin(async move {
            let meta = match std::fs::symlink_metadata(&ipath) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(self.err("reading the rotation intent of", e)),
            };
            if !meta.is_file() || meta.len() > MAX_INTENT_BYTES {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&ipath)
                .map_err(|e| self.err("reading the rotation intent of", e))?;
            Ok(Intent::decode(text.trim()))
        })
    }

    fn persist<'a>(&'a self, pat: &'a Secret) -> BoxFuture<'a, Result<(), StoreError>> {
        let (path, ipath, dir) = (self.path.clone(), self.intent_path(), self.dir());
        let mut contents = pat.expose().as_bytes().to_vec();
        contents.push(b'\n');
        Box::pin(async move {
            let r = tokio::task::spawn_blocking(move || {
                let mode = std::fs::metadata(&path)
                    .map(|m| m.permissions().mode() & 0o777)
                    .unwrap_or(NEW_FILE_MODE);
                write_atomic(&path, &dir, &contents, mode)?;
                // After the PAT: a crash in between leaves an intent naming the old PAT, which no
                // longer matches the file and is ignored.
                match std::fs::remove_file(&ipath) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                std::fs::File::open(&dir)?.sync_all()
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
            r.map_err(|e| self.err("writing the new PAT to", e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn persists_atomically_keeps_mode_and_clears_the_intent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pat");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let store = FileStore::new(path.clone());
        assert!(store.check().await.is_ok());
        assert_eq!(store.intent().await.unwrap(), None);
        let intent = Intent {
            from: "0123456789abcdef".into(),
            at: 1_800_000_000,
        };
        assert!(
            store.begin(&intent, &Secret::new("other")).await.is_err(),
            "a changed PAT is not rotated"
        );
        store.begin(&intent, &Secret::new("old")).await.unwrap();
        assert_eq!(store.intent().await.unwrap(), Some(intent));
        store.persist(&Secret::new("new")).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(store.intent().await.unwrap(), None);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("pat")],
            "no temporary files left"
        );
    }

    #[tokio::test]
    async fn kubelet_mounts_and_read_only_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("..2026_12_07");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("pat"), "x").unwrap();
        std::os::unix::fs::symlink("..2026_12_07", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/pat", dir.path().join("pat")).unwrap();
        let r = FileStore::new(dir.path().join("pat"))
            .check()
            .await
            .unwrap_err();
        assert_eq!(r.reason, "kubelet_mount");
        assert!(r.detail.contains("--pat-secret"), "{}", r.detail);

        // A write that fails (as root, permissions do not stop us: a non-empty directory where
        // the probe file goes does) is a refusal, before anything is rotated.
        let blocked = tempfile::tempdir().unwrap();
        std::fs::write(blocked.path().join("pat"), "x").unwrap();
        let probe = blocked
            .path()
            .join(format!(".ls-token-refresher-probe-{}", std::process::id()));
        std::fs::create_dir(&probe).unwrap();
        std::fs::write(probe.join("keep"), "x").unwrap();
        let r = FileStore::new(blocked.path().join("pat"))
            .check()
            .await
            .unwrap_err();
        assert_eq!(r.reason, "not_writable");
    }

    #[tokio::test]
    async fn a_foreign_or_malformed_intent_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pat");
        std::fs::write(&path, "x").unwrap();
        let store = FileStore::new(path);
        for text in [
            "{}",
            "{\"from\":\"zz\",\"at\":1}",
            "not json",
            "{\"at\":1,\"from\":\"0123456789abcdef\"}",
        ] {
            std::fs::write(store.intent_path(), text).unwrap();
            assert_eq!(store.intent().await.unwrap(), None, "{text}");
        }
    }
}
