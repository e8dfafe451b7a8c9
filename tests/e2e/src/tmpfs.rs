//! A real tmpfs on a temp dir (needs root), for publish-side faults: remounted read-only, or filled
//! to ENOSPC. Unmounted on drop (`umount -l` as a fallback); a test process killed with SIGKILL
//! leaves the mount behind.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

/// A tmpfs mounted on a fresh temp dir (needs root); unmounted on drop.
pub struct Tmpfs {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Tmpfs {
    /// `mount -t tmpfs -o size=SIZE,mode=0755 tmpfs <tempdir>`.
    pub fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::Builder::new()
            .prefix("lstr-faults-tmpfs-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let path = dir.path().to_path_buf();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            dir: Some(dir),
            path,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `mount -o remount,OPTS`; retried for a second (a remount read-only fails with EBUSY while a
    /// file is open for writing), then panics.
    pub fn remount(&self, opts: &str) {
        let mut last = String::new();
        for _ in 0..50 {
            let out = Command::new("mount")
                .args(["-o", &format!("remount,{opts}")])
                .arg(&self.path)
                .output()
                .expect("run mount");
            if out.status.success() {
                return;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("mount -o remount,{opts} {}: {last}", self.path.display());
    }

    /// Fills the file system with a file named `name` until ENOSPC; returns its path and size.
    pub fn fill(&self, name: &str) -> (PathBuf, u64) {
        let path = self.path.join(name);
        let mut f = std::fs::File::create(&path).expect("create filler");
        let block = [0u8; 4096];
        let mut written = 0u64;
        // Bounded by the (small) size of the file system.
        for _ in 0..1_000_000 {
            match f.write(&block) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
                    break;
                }
            }
        }
        (path, written)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount(&self.path);
        drop(self.dir.take());
    }
}

/// `umount PATH`, or `umount -l PATH` (lazy: detached now, freed when the last user is gone) if a
/// busy file system refuses; errors are ignored (for drops).
pub fn unmount(path: &Path) {
    let ok = Command::new("umount")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
}
