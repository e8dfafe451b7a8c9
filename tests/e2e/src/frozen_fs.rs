//! A small ext4 file system on a loop device that can be frozen (`fsfreeze`, needs root): while it
//! is frozen every call that modifies it — mkdir, create, write, rename, unlink — blocks in the
//! kernel (uninterruptibly) until it is thawed, while reads go on. That is a stalled write with no
//! FUSE, no fault hook in the code under test and no timing luck: a slow disk, a hung NFS server or
//! a full journal look the same to the writer. (tmpfs cannot be frozen: it has no `freeze_fs`.)
//!
//! Thawed and unmounted on drop — also when the test panics, so threads blocked in it are released
//! before anything waits for them. A test process killed with SIGKILL while the file system is
//! frozen leaves it frozen and mounted (`fsfreeze -u DIR; umount DIR` cleans up by hand).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A freezable ext4 mount on a fresh temp dir.
pub struct FreezableFs {
    root: Option<tempfile::TempDir>,
    mount: PathBuf,
    frozen: bool,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl FreezableFs {
    /// Makes a `size_mib` MiB ext4 image in a temp dir and mounts it (`mount -o loop`); Err (with
    /// the reason) where that is not possible, e.g. without root or loop devices.
    pub fn mount(size_mib: u64) -> Result<FreezableFs, String> {
        let root = tempfile::Builder::new()
            .prefix("lstr-frozen-fs-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let image = root.path().join("fs.img");
        let mount = root.path().join("mnt");
        std::fs::create_dir(&mount).map_err(|e| e.to_string())?;
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(size_mib << 20))
            .map_err(|e| e.to_string())?;
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", "loop"])
            .arg(&image)
            .arg(&mount))?;
        Ok(FreezableFs {
            root: Some(root),
            mount,
            frozen: false,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// `fsfreeze --freeze`: from now on writes block until [`Self::thaw`].
    pub fn freeze(&mut self) {
        run(Command::new("fsfreeze").arg("--freeze").arg(&self.mount)).expect("fsfreeze --freeze");
        self.frozen = true;
    }

    /// `fsfreeze --unfreeze`: blocked writes go on.
    pub fn thaw(&mut self) {
        if self.frozen {
            run(Command::new("fsfreeze").arg("--unfreeze").arg(&self.mount))
                .expect("fsfreeze --unfreeze");
            self.frozen = false;
        }
    }
}

impl Drop for FreezableFs {
    fn drop(&mut self) {
        if self.frozen {
            let _ = Command::new("fsfreeze")
                .arg("--unfreeze")
                .arg(&self.mount)
                .status();
        }
        crate::tmpfs::unmount(&self.mount);
        drop(self.root.take());
    }
}
