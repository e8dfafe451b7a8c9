//! Publishing to a directory the way the kubelet's AtomicWriter does: all files are written into a
//! new hidden directory `..<timestamp>`, a `..data_tmp` symlink pointing at it is renamed over
//! `..data`, and the visible names (`token`, `authorization`, `expires_at`, `token.json`) are
//! symlinks through `..data`. `rename(2)` is atomic, so a reader sees the old set or the new one —
//! never a partial file or a mix — even if we are killed mid-write.
//!
//! A reader that needs several values consistently should read `token.json` (one file), or resolve
//! `..data` once and read the files inside that directory.

use std::{
    fs,
    io::Write,
    os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use futures::future::BoxFuture;

use super::{Sink, SinkError, TokenSet};
use crate::clock::rfc3339;

/// Visible file names (a contract with consumers).
pub const FILES: [&str; 4] = ["token", "authorization", "expires_at", "token.json"];
const DATA_LINK: &str = "..data";
const DATA_TMP_LINK: &str = "..data_tmp";

/// The directory sink.
#[derive(Debug, Clone)]
pub struct FileSink {
    dir: PathBuf,
    mode: u32,
    group: Option<u32>,
}

impl FileSink {
    /// A sink writing into `dir` with file `mode` and optional owning `group`.
    pub fn new(dir: PathBuf, mode: u32, group: Option<u32>) -> Self {
        FileSink { dir, mode, group }
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
                        self.dir.display()
                    ))
                })?;
        }
        let meta = fs::metadata(&self.dir)
            .map_err(|e| err(format!("--token-dir {}: {e}", self.dir.display())))?;
        if !meta.is_dir() {
            return Err(err(format!(
                "--token-dir {} is not a directory",
                self.dir.display()
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
                    self.dir.display()
                ))
            })
    }

    /// Writes `set` atomically (blocking I/O).
    pub fn write_blocking(&self, set: &TokenSet) -> Result<(), SinkError> {
        write_set(&self.dir, self.mode, self.group, set).map_err(|e| SinkError {
            sink: "file",
            summary: "writing the token directory failed",
            message: format!("{}: {e}", self.dir.display()),
        })
    }
}

impl Sink for FileSink {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    fn preflight(&self) -> BoxFuture<'_, Result<String, SinkError>> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                this.check_writable()
                    .map(|()| format!("{} is writable", this.dir.display()))
            })
            .await
            .map_err(|e| SinkError {
                sink: "file",
                summary: "the token directory is not usable",
                message: format!("checker task failed: {e}"),
            })?
        })
    }

    fn publish<'a>(&'a self, set: &'a TokenSet) -> BoxFuture<'a, Result<(), SinkError>> {
        let this = self.clone();
        let set = set.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.write_blocking(&set))
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
        // Point ..data_tmp at the new dir and rename it over ..data: the atomic switch.
        let tmp = dir.join(DATA_TMP_LINK);
        let _ = fs::remove_file(&tmp);
        symlink(&name, &tmp)?;
        fs::rename(&tmp, dir.join(DATA_LINK))?;
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
    // Old generations are removed only after the switch; readers holding them open keep them.
    for entry in fs::read_dir(dir)?.flatten() {
        let n = entry.file_name();
        let n = n.to_string_lossy();
        if n.starts_with("..")
            && n != name
            && n != DATA_LINK
            && n != DATA_TMP_LINK
            && entry.path().is_dir()
            && !entry.file_type().map(|t| t.is_symlink()).unwrap_or(true)
        {
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
            // Only root may give a directory to a group it is not in; CI runs as root.
            eprintln!("skipping: chown to gid {gid}: {e}");
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
    fn dir_mode_gives_x_where_readable() {
        assert_eq!(dir_mode(0o600), 0o700);
        assert_eq!(dir_mode(0o640), 0o750);
        assert_eq!(dir_mode(0o644), 0o755);
    }
}
