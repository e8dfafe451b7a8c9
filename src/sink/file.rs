//! Publishing to a directory the way the kubelet's AtomicWriter does: all files are written into a
//! new hidden directory `..<timestamp>`, a `..data_tmp` symlink pointing at it is renamed over
//! `..data`, and the visible names (`token`, `authorization`, `expires_at`, `token.json`) are
//! symlinks through `..data`. `rename(2)` is atomic, so a reader sees the old set or the new one —
//! never a partial file or a mix — even if we are killed mid-write.
//!
//! A reader that needs several values consistently should read `token.json` (one file), or resolve
//! `..data` once and read the files inside that directory.
//!
//! One write at a time per sink: a write runs on a blocking thread that cannot be stopped, so when
//! its publisher gives up (the loop's publish timeout) it goes on, and a second write beside it
//! could swap `..data` between generations that the first one's cleanup then removes. The sink's
//! write lock is taken before the thread starts and released by that thread when its write ends;
//! a publish while it is held fails at once (no second thread stuck on the same stalled file
//! system). Each write also uses its own temporary link name, and removes only generations older
//! than the one it wrote that `..data` no longer names, so even a writer in another process cannot
//! make `..data` dangle.

use std::{
    fs,
    io::Write,
    os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use futures::future::BoxFuture;
use tokio::sync::OwnedMutexGuard;

use super::{Sink, SinkError, TokenSet};
use crate::{clock::rfc3339, secret::shown_path};

/// Visible file names (a contract with consumers).
pub const FILES: [&str; 4] = ["token", "authorization", "expires_at", "token.json"];
const DATA_LINK: &str = "..data";
/// Prefix of the temporary link renamed over `..data`; each write appends its generation's name.
const DATA_TMP_PREFIX: &str = "..data_tmp";

/// The directory sink. Clones share one write lock.
#[derive(Debug, Clone)]
pub struct FileSink {
    dir: PathBuf,
    mode: u32,
    group: Option<u32>,
    writing: Arc<WriteLock>,
}

/// Serialises the writes of one sink (and its clones).
#[derive(Debug, Default)]
struct WriteLock {
    /// Held for the whole of a write, by the thread doing it.
    lock: Arc<tokio::sync::Mutex<()>>,
    /// When the write holding the lock started (for the message of a refused publish).
    since: Mutex<Option<Instant>>,
}

/// Proof that this write holds the sink's lock; releases it (and clears `since`) when dropped,
/// wherever the write ends — also on a blocking thread whose publisher has given up.
struct Claim {
    writing: Arc<WriteLock>,
    _guard: OwnedMutexGuard<()>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        *self.writing.since.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl FileSink {
    /// A sink writing into `dir` with file `mode` and optional owning `group`.
    pub fn new(dir: PathBuf, mode: u32, group: Option<u32>) -> Self {
        FileSink {
            dir,
            mode,
            group,
            writing: Arc::default(),
        }
    }

    /// Takes the write lock, or fails at once naming the write that holds it.
    fn claim(&self) -> Result<Claim, SinkError> {
        match self.writing.lock.clone().try_lock_owned() {
            Ok(guard) => {
                *self.writing.since.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Instant::now());
                Ok(Claim {
                    writing: self.writing.clone(),
                    _guard: guard,
                })
            }
            Err(_) => {
                let since = *self.writing.since.lock().unwrap_or_else(|e| e.into_inner());
                let age = since.map_or(0.0, |t| t.elapsed().as_secs_f64());
                Err(SinkError {
                    sink: "file",
                    summary: "a previous write of the token directory has not finished",
                    message: format!(
                        "a previous write to {} has not finished after {age:.0}s (is the file system stalled?); not starting another beside it",
                        shown_path(&self.dir)
                    ),
                })
            }
        }
    }

    /// Checks at start-up that the directory exists (creating it, and missing parents, owner-only
    /// when it does not) and is writable, as Vault Agent does, so a read-only mount fails fast with
    /// a clear message rather than at the first refresh.
    pub fn check_writable(&self) -> Result<(), SinkError> {
        let err = |m: String| SinkError {
            sink: "file",
            summary: "the token directory is not usable",
            message: m,
        };
        if fs::symlink_metadata(&self.dir).is_err() {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(dir_mode(self.mode))
                .create(&self.dir)
                .map_err(|e| {
                    err(format!(
                        "--token-dir {} does not exist and cannot be created: {e}",
                        shown_path(&self.dir)
                    ))
                })?;
        }
        let meta = fs::metadata(&self.dir)
            .map_err(|e| err(format!("--token-dir {}: {e}", shown_path(&self.dir))))?;
        if !meta.is_dir() {
            return Err(err(format!(
                "--token-dir {} is not a directory",
                shown_path(&self.dir)
            )));
        }
        // An unpredictable name, created exclusively: a planted file or symlink is never followed.
        let probe = self.dir.join(format!(
            "..probe.{}.{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc_nofollow())
            .open(&probe)
            .and_then(|_| fs::remove_file(&probe))
            .map_err(|e| {
                err(format!(
                    "--token-dir {} is not writable: {e}",
                    shown_path(&self.dir)
                ))
            })
    }

    /// Writes `set` atomically (blocking I/O); fails at once if another write of this sink is
    /// still running.
    pub fn write_blocking(&self, set: &TokenSet) -> Result<(), SinkError> {
        let claim = self.claim()?;
        self.write_claimed(claim, set)
    }

    fn write_claimed(&self, claim: Claim, set: &TokenSet) -> Result<(), SinkError> {
        let result = write_set(&self.dir, self.mode, self.group, set).map_err(|e| SinkError {
            sink: "file",
            summary: "writing the token directory failed",
            message: format!("{}: {e}", shown_path(&self.dir)),
        });
        drop(claim);
        result
    }
}

impl Sink for FileSink {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn describe(&self) -> String {
        format!("directory {}", shown_path(&self.dir))
    }

    fn preflight(&self) -> BoxFuture<'_, Result<String, SinkError>> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                this.check_writable()
                    .map(|()| format!("{} is writable", shown_path(&this.dir)))
            })
            .await
            .map_err(|e| SinkError {
                sink: "file",
                summary: "the token directory is not usable",
                message: format!("checker task failed: {e}"),
            })?
        })
    }

    fn read_back(&self) -> BoxFuture<'_, Option<crate::secret::Secret>> {
        let path = self.dir.join("token");
        Box::pin(async move {
            let text = tokio::fs::read_to_string(path).await.ok()?;
            let token = crate::secret::Secret::new(text);
            (!token.is_empty()).then_some(token)
        })
    }

    fn publish<'a>(&'a self, set: &'a TokenSet) -> BoxFuture<'a, Result<(), SinkError>> {
        let this = self.clone();
        let set = set.clone();
        Box::pin(async move {
            // Claimed here, before the thread starts (so writes run in publish order), and
            // released by the thread when its write ends, even if this future is dropped.
            let claim = this.claim()?;
            tokio::task::spawn_blocking(move || this.write_claimed(claim, &set))
                .await
                .map_err(|e| SinkError {
                    sink: "file",
                    summary: "writing the token directory failed",
                    message: format!("writer task failed: {e}"),
                })?
        })
    }
}

/// The file contents of a set.
pub fn render(set: &TokenSet) -> [(&'static str, String); 4] {
    let expires = set.expires_at_rfc3339();
    let json = serde_json::json!({
        "token": set.auth.token.expose(),
        "authorization": set.auth.header_value().expose(),
        "scheme": set.auth.scheme.as_str(),
        "expires_at": if expires.is_empty() { serde_json::Value::Null } else { expires.clone().into() },
        "refreshed_at": rfc3339(set.refreshed_at),
    });
    [
        ("token", set.auth.token.expose().to_owned()),
        ("authorization", set.auth.header_value().expose().to_owned()),
        ("expires_at", expires),
        ("token.json", json.to_string()),
    ]
}

/// `O_NOFOLLOW`: refuse to open through a symlink (the value is the same on every Linux ABI we build for).
fn libc_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

fn dir_mode(file_mode: u32) -> u32 {
    // A directory needs x wherever its files are readable, or the readers cannot open them.
    let r = file_mode & 0o444;
    0o700 | r | (r >> 2)
}

/// The ordering key of a generation directory `..<secs>.<nanos>.<random>` (or of a temporary link
/// `..data_tmp..<secs>.<nanos>.<random>`): its creation time. None for other names.
fn generation_key(name: &str) -> Option<(u64, u32)> {
    let rest = name.strip_prefix(DATA_TMP_PREFIX).unwrap_or(name);
    let mut parts = rest.strip_prefix("..")?.split('.');
    let secs = parts.next()?.parse().ok()?;
    let nanos = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u32>().ok()?;
    parts.next().is_none().then_some((secs, nanos))
}

fn write_set(dir: &Path, mode: u32, group: Option<u32>, set: &TokenSet) -> std::io::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let name = format!(
        "..{}.{:09}.{}",
        now.as_secs(),
        now.subsec_nanos(),
        fastrand::u32(..)
    );
    let key = generation_key(&name);
    let new_dir = dir.join(&name);
    fs::create_dir(&new_dir)?;
    let result = (|| {
        // Keep the setgid bit the kernel gave the new directory in a setgid parent (a Kubernetes
        // emptyDir with fsGroup): it makes the files inherit the fsGroup, which is how a consumer in
        // another uid reads them with `--file-mode 0640` and no `--file-group`. A plain chmod would
        // clear it.
        let inherited = fs::metadata(&new_dir)?.permissions().mode() & 0o2000;
        fs::set_permissions(
            &new_dir,
            fs::Permissions::from_mode(dir_mode(mode) | inherited),
        )?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&new_dir, None, Some(gid))?;
        }
        for (file, content) in render(set) {
            let path = new_dir.join(file);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)?;
            f.write_all(content.as_bytes())?;
            // Mode and group are applied on every write, whatever the umask or earlier state.
            f.set_permissions(fs::Permissions::from_mode(mode))?;
            if let Some(gid) = group {
                std::os::unix::fs::chown(&path, None, Some(gid))?;
            }
            f.sync_all()?;
        }
        fs::File::open(&new_dir)?.sync_all()?;
        // Point a temporary link of our own at the new dir and rename it over ..data: the
        // atomic switch.
        let tmp = dir.join(format!("{DATA_TMP_PREFIX}{name}"));
        symlink(&name, &tmp)?;
        if let Err(e) = fs::rename(&tmp, dir.join(DATA_LINK)) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&new_dir);
        return Err(e);
    }
    // Visible names are created once; they always point through ..data.
    for file in FILES {
        let visible = dir.join(file);
        let target = Path::new(DATA_LINK).join(file);
        match fs::read_link(&visible) {
            Ok(t) if t == target => continue,
            _ => {
                // Replace whatever is there (a stale regular file) atomically.
                let tmp = dir.join(format!("..{file}.tmp"));
                let _ = fs::remove_file(&tmp);
                symlink(&target, &tmp)?;
                fs::rename(&tmp, &visible)?;
            }
        }
    }
    fs::File::open(dir)?.sync_all()?;
    remove_old_generations(dir, &name, key)?;
    Ok(())
}

/// Removes, after the switch, what earlier writes left: generation directories older than the one
/// just written (`ours`, with ordering key `key`) that `..data` does not name now, and temporary
/// links as old. `..data` is read again here: if another writer (another process) has switched it
/// since, its generation is kept, and so is anything newer than ours. Readers holding a removed
/// generation open keep it until they close it.
fn remove_old_generations(dir: &Path, ours: &str, key: Option<(u64, u32)>) -> std::io::Result<()> {
    let current = fs::read_link(dir.join(DATA_LINK)).ok();
    let older = |n: &str| match (generation_key(n), key) {
        (Some(theirs), Some(ours)) => theirs < ours,
        // Not named by a writer of this version (an older naming): debris as before.
        (None, _) => true,
        (Some(_), None) => false,
    };
    for entry in fs::read_dir(dir)?.flatten() {
        let n = entry.file_name();
        let n = n.to_string_lossy();
        if !n.starts_with("..") || n == DATA_LINK || n == ours || !older(&n) {
            continue;
        }
        let Ok(t) = entry.file_type() else { continue };
        if n.starts_with(DATA_TMP_PREFIX) {
            if t.is_symlink() {
                let _ = fs::remove_file(entry.path());
            }
        } else if t.is_dir() && current.as_deref() != Some(Path::new(&*n)) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        secret::Secret,
        token::{Authorization, Scheme},
    };
    use std::os::unix::fs::MetadataExt;

    fn set(token: &str, exp: Option<i64>) -> TokenSet {
        TokenSet {
            auth: Authorization {
                scheme: Scheme::Bearer,
                token: Secret::new(token),
            },
            expires_at: exp,
            refreshed_at: 100,
        }
    }

    #[test]
    fn writes_consistent_set_with_mode() {
        let d = tempfile::tempdir().unwrap();
        let sink = FileSink::new(d.path().into(), 0o640, None);
        sink.check_writable().unwrap();
        sink.write_blocking(&set("aaa", Some(0))).unwrap();
        sink.write_blocking(&set("bbb", Some(60))).unwrap();
        let read = |f: &str| fs::read_to_string(d.path().join(f)).unwrap();
        assert_eq!(read("token"), "bbb");
        assert_eq!(read("authorization"), "Bearer bbb");
        assert_eq!(read("expires_at"), "1970-01-01T00:01:00Z");
        let json: serde_json::Value = serde_json::from_str(&read("token.json")).unwrap();
        assert_eq!(json["authorization"], "Bearer bbb");
        assert_eq!(
            fs::metadata(d.path().join("token")).unwrap().mode() & 0o777,
            0o640
        );
        // Exactly one generation directory remains.
        let gens = fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_dir())
            .count();
        assert_eq!(gens, 1);
    }

    #[test]
    fn legacy_set_has_empty_expiry_and_token_scheme() {
        let d = tempfile::tempdir().unwrap();
        let sink = FileSink::new(d.path().into(), 0o600, None);
        let mut s = set("0123456789abcdef0123456789abcdef01234567", None);
        s.auth.scheme = Scheme::Token;
        sink.write_blocking(&s).unwrap();
        assert_eq!(fs::read_to_string(d.path().join("expires_at")).unwrap(), "");
        assert!(fs::read_to_string(d.path().join("authorization"))
            .unwrap()
            .starts_with("Token "));
    }

    #[test]
    fn replaces_stale_regular_files_and_reports_unwritable_dir() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("token"), "stale").unwrap();
        let sink = FileSink::new(d.path().into(), 0o600, None);
        sink.write_blocking(&set("new", Some(1))).unwrap();
        assert_eq!(fs::read_to_string(d.path().join("token")).unwrap(), "new");
        let missing = FileSink::new(d.path().join("nope"), 0o600, None);
        assert!(missing.write_blocking(&set("x", None)).is_err());
        let file = d.path().join("a-file");
        fs::write(&file, "x").unwrap();
        let not_dir = FileSink::new(file.join("sub"), 0o600, None);
        assert!(not_dir
            .check_writable()
            .unwrap_err()
            .to_string()
            .contains("a-file"));
    }

    /// The writability probe used to write `..probe.<pid>` and followed a symlink planted there:
    /// now its name is unpredictable and it is created exclusively, so a planted link is inert.
    #[test]
    fn writability_probe_never_follows_a_planted_symlink() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        symlink(
            &victim,
            d.path().join(format!("..probe.{}", std::process::id())),
        )
        .unwrap();
        FileSink::new(d.path().into(), 0o600, None)
            .check_writable()
            .unwrap();
        assert!(!victim.exists(), "the probe wrote through the planted link");
        let left: Vec<_> = fs::read_dir(d.path()).unwrap().flatten().collect();
        assert_eq!(
            left.len(),
            1,
            "only the planted link is left: the probe cleaned up"
        );
    }

    /// `once --token-dir ./out` creates the directory (and parents), owner-only.
    #[test]
    fn missing_token_dir_is_created_owner_only() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("a/b/out");
        FileSink::new(dir.clone(), 0o600, None)
            .check_writable()
            .unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(
            fs::metadata(d.path().join("a")).unwrap().mode() & 0o077,
            0,
            "parents owner-only too"
        );
        let shared = d.path().join("shared");
        FileSink::new(shared.clone(), 0o640, None)
            .check_writable()
            .unwrap();
        assert_eq!(fs::metadata(&shared).unwrap().mode() & 0o777, 0o750);
    }

    /// A setgid directory owned by a group (what the kubelet makes of an emptyDir with fsGroup):
    /// published files belong to that group, so a consumer in it can read them (found on a real
    /// kubelet: the generation directory's chmod used to clear the setgid bit).
    #[test]
    fn files_inherit_the_group_of_a_setgid_directory() {
        let d = tempfile::tempdir().unwrap();
        let gid = 4242;
        if let Err(e) = std::os::unix::fs::chown(d.path(), None, Some(gid)) {
            // Only root (CAP_CHOWN) may give a directory to a group it is not in; CI runs as root.
            crate::skip::cannot_run(
                "files_inherit_the_group_of_a_setgid_directory",
                &format!("chown to gid {gid} needs root (CAP_CHOWN): {e}"),
            );
            return;
        }
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o2770)).unwrap();
        let sink = FileSink::new(d.path().into(), 0o640, None);
        sink.write_blocking(&set("t", Some(1))).unwrap();
        for f in FILES {
            let meta = fs::metadata(d.path().join(f)).unwrap();
            assert_eq!(meta.gid(), gid, "{f}");
            assert_eq!(meta.mode() & 0o777, 0o640, "{f}");
        }
        let data = fs::canonicalize(d.path().join("..data")).unwrap();
        assert_ne!(fs::metadata(data).unwrap().mode() & 0o2000, 0);
    }

    #[test]
    fn generation_names_order_by_creation_time() {
        assert_eq!(
            generation_key("..1700000000.000000042.7"),
            Some((1_700_000_000, 42))
        );
        assert_eq!(
            generation_key("..data_tmp..1700000000.000000042.7"),
            Some((1_700_000_000, 42))
        );
        for other in [
            "..data",
            "..data_tmp",
            "..token.tmp",
            "..probe.1.ab",
            "..1.2",
            "token",
        ] {
            assert_eq!(generation_key(other), None, "{other}");
        }
    }

    /// Cleanup after a write removes older generations and temporary links, but keeps what
    /// another writer made later, and whatever `..data` names.
    #[test]
    fn cleanup_keeps_newer_and_current_generations() {
        let d = tempfile::tempdir().unwrap();
        let sink = FileSink::new(d.path().into(), 0o600, None);
        sink.write_blocking(&set("a", Some(1))).unwrap();
        let old_gen = d.path().join("..1000000000.000000000.1");
        let newer_gen = d.path().join("..9000000000.000000000.2");
        fs::create_dir(&old_gen).unwrap();
        fs::create_dir(&newer_gen).unwrap();
        symlink("..1000000000.000000000.1", d.path().join("..data_tmp")).unwrap();
        symlink(
            "..1000000000.000000000.1",
            d.path().join("..data_tmp..1000000000.000000000.1"),
        )
        .unwrap();
        sink.write_blocking(&set("b", Some(2))).unwrap();
        let names: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".."))
            .collect();
        assert!(newer_gen.is_dir(), "a newer generation is kept: {names:?}");
        assert!(!old_gen.exists(), "an older one is removed: {names:?}");
        assert!(
            !names.iter().any(|n| n.starts_with("..data_tmp")),
            "{names:?}"
        );
        let current = fs::read_link(d.path().join("..data")).unwrap();
        assert!(d.path().join(&current).is_dir());
        assert_eq!(fs::read_to_string(d.path().join("token")).unwrap(), "b");
    }

    /// While a write holds the lock (here: a claim taken by hand), a second one fails at once
    /// and says why; afterwards writes work again.
    #[test]
    fn a_second_write_fails_at_once_while_one_runs() {
        let d = tempfile::tempdir().unwrap();
        let sink = FileSink::new(d.path().into(), 0o600, None);
        let clone = sink.clone();
        let claim = sink.claim().unwrap();
        let err = clone.write_blocking(&set("x", Some(1))).unwrap_err();
        assert!(err.message.contains("has not finished"), "{err}");
        assert!(err.message.contains(&d.path().display().to_string()));
        drop(claim);
        clone.write_blocking(&set("x", Some(1))).unwrap();
    }

    #[test]
    fn dir_mode_gives_x_where_readable() {
        assert_eq!(dir_mode(0o600), 0o700);
        assert_eq!(dir_mode(0o640), 0o750);
        assert_eq!(dir_mode(0o644), 0o755);
    }
}
