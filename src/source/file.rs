//! PAT from a file, re-read when it changes — noticed by inotify on the file's directory, not by
//! polling. Mounted Secrets and ConfigMaps are updated by the kubelet with a symlink swap
//! (`..data` renamed over), which inotify on the file itself misses (k8s #111947); a watch on the
//! directory sees it. If the path is a symlink to another directory, that directory is watched
//! too. Only where the file system gives no events (NFS, FUSE, SMB, 9p…) or a watch cannot be set
//! is the file polled, slowly.

use std::{
    ffi::OsString,
    mem::MaybeUninit,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::Duration,
};

use rustix::fs::inotify::{self, ReadFlags, WatchFlags};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use super::{channel, PatHandle, PatPublisher, PatState, Problem};
use crate::{
    metrics::Metrics,
    secret::{shown_path, Secret},
};

/// Poll interval where no inotify events can be had: a rotated PAT is then picked up within this
/// delay (a PAT changes rarely; a minute-scale delay costs ~1 wake-up a minute).
pub const SLOW_POLL: Duration = Duration::from_secs(30);
/// A PAT is ~250 bytes; a file larger than this is not a PAT and is not read whole.
const MAX_PAT_FILE_BYTES: u64 = 64 * 1024;

/// Reads the file once, mapping every problem to a one-line explanation.
pub fn read_pat_file(path: &Path) -> PatState {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return PatState::Invalid(Problem::new(
                "the PAT file cannot be read",
                format!("cannot read PAT file {}: {e}", shown_path(path)),
            ))
        }
    };
    if meta.len() > MAX_PAT_FILE_BYTES {
        return PatState::Invalid(Problem::new(
            "the PAT file is too large to be a token",
            format!(
                "PAT file {} is {} bytes: not a token (check --pat-file)",
                shown_path(path),
                meta.len()
            ),
        ));
    }
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(s) => {
                let pat = Secret::new(s);
                if pat.is_empty() {
                    PatState::Invalid(Problem::new(
                        "the PAT file is empty",
                        format!("PAT file {} is empty", shown_path(path)),
                    ))
                } else {
                    PatState::Ready(pat)
                }
            }
            Err(_) => PatState::Invalid(Problem::new(
                "the PAT file is not text",
                format!("PAT file {} is not UTF-8 text", shown_path(path)),
            )),
        },
        Err(e) => PatState::Invalid(Problem::new(
            "the PAT file cannot be read",
            format!("cannot read PAT file {}: {e}", shown_path(path)),
        )),
    }
}

/// Starts watching `path`; the task ends with `shutdown`.
pub fn spawn(
    path: PathBuf,
    metrics: std::sync::Arc<Metrics>,
    shutdown: CancellationToken,
) -> PatHandle {
    let (publisher, handle) = channel("file", format!("file {}", shown_path(&path)));
    // Watch first, then read: a change between the two is then seen, never lost.
    let watcher = match DirWatcher::new(&path) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(path = %shown_path(&path), "cannot watch the PAT file with inotify ({e}); re-reading it every {}s", SLOW_POLL.as_secs());
            None
        }
    };
    publisher.set(read_pat_file(&path));
    tokio::spawn(watch(path, watcher, publisher, metrics, shutdown));
    handle
}

async fn watch(
    path: PathBuf,
    mut watcher: Option<DirWatcher>,
    publisher: PatPublisher,
    metrics: std::sync::Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        let poll = watcher.as_ref().is_none_or(|w| w.needs_poll());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = publisher.reread_requested() => {}
            changed = async { watcher.as_mut().expect("polled only with a watcher").changed().await }, if watcher.is_some() => {
                if let Err(e) = changed {
                    tracing::warn!("inotify on the PAT file failed ({e}); re-reading it every {}s", SLOW_POLL.as_secs());
                    watcher = None;
                }
            }
            _ = tokio::time::sleep(SLOW_POLL), if poll => {}
        }
        if publisher.is_closed() {
            return;
        }
        if let Some(w) = &mut watcher {
            // The directory may have been re-created or the symlink re-pointed.
            w.rewatch();
        }
        let p = path.clone();
        let state = tokio::task::spawn_blocking(move || read_pat_file(&p))
            .await
            .unwrap_or_else(|e| {
                PatState::Invalid(Problem::new(
                    "the PAT file cannot be read",
                    format!("PAT file reader failed: {e}"),
                ))
            });
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
                    tracing::info!(path = %shown_path(&path), "PAT file changed; using the new PAT")
                }
                PatState::Invalid(why) | PatState::Unavailable(why) => {
                    tracing::warn!(reason = "source_unavailable", "{why}")
                }
                PatState::Pending => {}
            }
        }
    }
}

/// Which names in a watched directory matter.
#[derive(Debug, Clone, PartialEq)]
enum Filter {
    /// The file's own directory: the file, or the kubelet's `..data`/`..<timestamp>` entries.
    Parent(OsString),
    /// The directory a symlinked path resolves into: only the resolved file.
    Target(OsString),
}

impl Filter {
    fn matches(&self, name: &[u8]) -> bool {
        use std::os::unix::ffi::OsStrExt;
        match self {
            Filter::Parent(file) => name == file.as_bytes() || name.starts_with(b".."),
            Filter::Target(file) => name == file.as_bytes(),
        }
    }
}

struct Watch {
    wd: i32,
    dir: PathBuf,
    filter: Filter,
}

/// inotify on the directories that decide what `path` reads.
struct DirWatcher {
    fd: AsyncFd<OwnedFd>,
    path: PathBuf,
    watches: Vec<Watch>,
    /// Some directory could not be watched or gives no events.
    poll: bool,
}

/// What changes in a directory can change what the file reads.
fn watch_flags() -> WatchFlags {
    WatchFlags::CLOSE_WRITE
        | WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_TO
        | WatchFlags::MOVED_FROM
        | WatchFlags::ATTRIB
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
}

/// File systems whose changes on other hosts never reach local inotify.
fn gives_no_events(dir: &Path) -> bool {
    const NO_EVENTS: [i64; 9] = [
        0x6969,      // NFS
        0x517B,      // SMB
        0xFF53_4D42, // CIFS
        0xFE53_4D42, // SMB2
        0x6573_5546, // FUSE
        0x0102_1997, // 9P
        0x00C3_6400, // CEPH
        0x5346_414F, // AFS
        0x6B41_4653, // kAFS
    ];
    rustix::fs::statfs(dir).is_ok_and(|st| NO_EVENTS.contains(&{ st.f_type }))
}

impl DirWatcher {
    fn new(path: &Path) -> std::io::Result<Self> {
        let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)?;
        let mut w = DirWatcher {
            fd: crate::clock::async_fd(fd)?,
            path: path.to_owned(),
            watches: Vec::new(),
            poll: false,
        };
        w.rewatch();
        Ok(w)
    }

    fn needs_poll(&self) -> bool {
        self.poll
    }

    /// The directories to watch now, with their filters.
    fn wanted(&self) -> Vec<(PathBuf, Filter)> {
        let mut out = Vec::new();
        let parent = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        if let Some(name) = self.path.file_name() {
            out.push((parent.clone(), Filter::Parent(name.to_owned())));
        }
        if let Ok(real) = std::fs::canonicalize(&self.path) {
            let real_parent = real.parent().map(Path::to_owned);
            let canon_parent = std::fs::canonicalize(&parent).ok();
            // A kubelet mount resolves into `..<timestamp>/` under the parent: the parent's watch
            // already sees its swaps, and that directory is deleted on the next update.
            let under_parent = real_parent
                .as_ref()
                .zip(canon_parent.as_ref())
                .is_some_and(|(rp, cp)| rp.starts_with(cp));
            if let (Some(rp), Some(name), false) = (real_parent, real.file_name(), under_parent) {
                out.push((rp, Filter::Target(name.to_owned())));
            }
        }
        out
    }

    /// Brings the watch list in line with [`DirWatcher::wanted`].
    fn rewatch(&mut self) {
        let wanted = self.wanted();
        let mut poll = false;
        let fd = self.fd.get_ref();
        self.watches.retain(|w| {
            let keep = wanted.iter().any(|(d, f)| *d == w.dir && *f == w.filter);
            if !keep {
                let _ = inotify::remove_watch(fd, w.wd);
            }
            keep
        });
        for (dir, filter) in wanted {
            if gives_no_events(&dir) {
                poll = true;
            }
            if self
                .watches
                .iter()
                .any(|w| w.dir == dir && w.filter == filter)
            {
                continue;
            }
            match inotify::add_watch(fd, &dir, watch_flags()) {
                // The kernel returns the same descriptor for a directory watched twice.
                Ok(wd) => self.watches.push(Watch { wd, dir, filter }),
                Err(_) => poll = true,
            }
        }
        if self.watches.is_empty() {
            poll = true;
        }
        self.poll = poll;
    }

    /// Waits for an event that can change what the file reads (drains everything pending).
    async fn changed(&mut self) -> std::io::Result<()> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        loop {
            let mut guard = self.fd.readable().await?;
            let mut relevant = false;
            let mut reader = inotify::Reader::new(self.fd.get_ref(), &mut buf);
            loop {
                match reader.next() {
                    Ok(ev) => {
                        let flags = ev.events();
                        if flags.intersects(
                            ReadFlags::QUEUE_OVERFLOW
                                | ReadFlags::IGNORED
                                | ReadFlags::DELETE_SELF
                                | ReadFlags::MOVE_SELF,
                        ) {
                            relevant = true;
                            continue;
                        }
                        let wd = ev.wd();
                        let name = ev.file_name().map(|n| n.to_bytes()).unwrap_or_default();
                        if self
                            .watches
                            .iter()
                            .any(|w| w.wd == wd && w.filter.matches(name))
                        {
                            relevant = true;
                        }
                    }
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            guard.clear_ready();
            if relevant {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    async fn changed_within(h: &mut PatHandle, secs: u64) {
        tokio::time::timeout(Duration::from_secs(secs), h.changed())
            .await
            .expect("the change was noticed");
    }

    /// Plain writes, deletion, emptiness: each is seen without polling (the slow poll is 30 s,
    /// the bound here 5 s) and reported in one line.
    #[tokio::test]
    async fn picks_up_rotation_and_reports_problems() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pat");
        std::fs::write(&path, "first\n").unwrap();
        let shutdown = CancellationToken::new();
        let mut h = spawn(path.clone(), Default::default(), shutdown.clone());
        assert_eq!(h.ready().await, PatState::Ready(Secret::new("first")));

        std::fs::write(&path, "second").unwrap();
        changed_within(&mut h, 5).await;
        assert_eq!(h.current(), PatState::Ready(Secret::new("second")));

        std::fs::remove_file(&path).unwrap();
        changed_within(&mut h, 5).await;
        assert!(matches!(h.current(), PatState::Invalid(m) if m.detail.contains("cannot read")));

        std::fs::write(&path, "  \n").unwrap();
        changed_within(&mut h, 5).await;
        assert!(matches!(h.current(), PatState::Invalid(m) if m.detail.contains("empty")));
        shutdown.cancel();
    }

    /// The kubelet's AtomicWriter: `pat -> ..data/pat`, `..data -> ..v1`; an update writes `..v2`
    /// and renames a new `..data` symlink over the old one. The file's inode never changes.
    #[tokio::test]
    async fn sees_the_kubelets_symlink_swap() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/pat"), "one").unwrap();
        symlink("..v1", d.join("..data")).unwrap();
        symlink("..data/pat", d.join("pat")).unwrap();
        let shutdown = CancellationToken::new();
        let mut h = spawn(d.join("pat"), Default::default(), shutdown.clone());
        assert_eq!(h.ready().await, PatState::Ready(Secret::new("one")));
        for (n, value) in [(2, "two"), (3, "three")] {
            let gen = format!("..v{n}");
            std::fs::create_dir(d.join(&gen)).unwrap();
            std::fs::write(d.join(&gen).join("pat"), value).unwrap();
            symlink(&gen, d.join("..data_tmp")).unwrap();
            std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
            std::fs::remove_dir_all(d.join(format!("..v{}", n - 1))).unwrap();
            changed_within(&mut h, 5).await;
            assert_eq!(h.current(), PatState::Ready(Secret::new(value)));
        }
        shutdown.cancel();
    }

    /// A symlink into another directory: changes there are seen.
    #[tokio::test]
    async fn follows_a_symlink_into_another_directory() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(b.path().join("real-pat"), "one").unwrap();
        symlink(b.path().join("real-pat"), a.path().join("pat")).unwrap();
        let shutdown = CancellationToken::new();
        let mut h = spawn(a.path().join("pat"), Default::default(), shutdown.clone());
        assert_eq!(h.ready().await, PatState::Ready(Secret::new("one")));
        std::fs::write(b.path().join("real-pat"), "two").unwrap();
        changed_within(&mut h, 5).await;
        assert_eq!(h.current(), PatState::Ready(Secret::new("two")));
        shutdown.cancel();
    }

    /// Which directory entries wake the reader: the file and the kubelet's `..` entries in its own
    /// directory, only the resolved file in a symlink's target directory.
    #[test]
    fn local_file_systems_give_events_and_filters_pick_names() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!gives_no_events(dir.path()));
        assert!(Filter::Parent("pat".into()).matches(b"..data"));
        assert!(!Filter::Parent("pat".into()).matches(b"pat2"));
        assert!(!Filter::Target("pat".into()).matches(b"..data"));
    }
}
