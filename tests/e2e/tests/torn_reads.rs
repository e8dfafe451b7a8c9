//! The file sink's atomic publish, seen by readers, in-process (`FileSink` of the library):
//!
//! - `torn_reads_none_under_rewrites`: ≥ 100,000 reads (one generation, the visible token.json, the
//!   visible token) while ≥ 10,000 rewrites happen: no torn or mixed set; a naive in-place writer
//!   is caught by the same checks (the control).
//! - `writer_killed_at_random_moments_leaves_old_or_new_set`: a writer process (this test binary
//!   re-run as `fault_writer_child`) killed mid-write by SIGTERM/SIGKILL, the set checked after each
//!   kill, the debris cleaned by the next write.
//! - `stalled_write_blocks_no_one_and_data_always_resolves`: a write stalled in the kernel (a
//!   frozen file system) and abandoned by its publisher's timeout, as the refresh loop does after
//!   30 s, then five more publishers at once while readers keep reading: the later publishers fail
//!   at once with a clear message instead of stalling beside it, one thread is stuck (not six),
//!   `..data` always resolves to a whole set, and after the thaw the next write leaves one
//!   generation and no debris.
//!
//! Figures (`FAULTS-FIGURES …` on stderr): docs/fault-injection.md.

use std::{
    collections::BTreeSet,
    io::Write,
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use ls_token_refresher::{
    secret::Secret,
    sink::{file::FileSink, Sink, TokenSet},
    token::{Authorization, Scheme},
};
use ls_token_refresher_e2e::{
    frozen_fs::FreezableFs,
    process,
    token_dir::{debris, read_generation, visible_set},
};

/// A set whose every file encodes `n`, with a length that varies with `n` (a truncated file shows).
fn numbered_set(n: u64) -> TokenSet {
    let pad = "x".repeat(50 + (n % 300) as usize);
    TokenSet {
        auth: Authorization {
            scheme: Scheme::Bearer,
            token: Secret::new(format!("tok{n}.{pad}")),
        },
        expires_at: Some(1_800_000_000 + n as i64),
        refreshed_at: 1_700_000_000 + n as i64,
    }
}

/// Checks a set read from disk against [`numbered_set`]; its number, or what is wrong.
fn check_numbered(token: &str, auth: &str, exp: &str, json: &str) -> Result<u64, String> {
    let n: u64 = token
        .strip_prefix("tok")
        .and_then(|t| t.split('.').next())
        .and_then(|t| t.parse().ok())
        .ok_or("token without a number")?;
    let want = numbered_set(n);
    let want_token = want.auth.token.expose();
    if token != want_token {
        return Err(format!("token of set {n} is partial"));
    }
    if auth != format!("Bearer {want_token}") {
        return Err(format!("authorization does not belong to set {n}"));
    }
    if exp != want.expires_at_rfc3339() {
        return Err(format!("expires_at does not belong to set {n}"));
    }
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|_| format!("token.json of set {n} is partial"))?;
    if v["token"] != want_token || v["expires_at"] != want.expires_at_rfc3339().as_str() {
        return Err(format!("token.json does not belong to set {n}"));
    }
    Ok(n)
}

/// Checks a lone `token` file read through its visible name: complete, whatever set it belongs to.
fn check_token_only(token: &str) -> Result<u64, String> {
    let n: u64 = token
        .strip_prefix("tok")
        .and_then(|t| t.split('.').next())
        .and_then(|t| t.parse().ok())
        .ok_or("visible token without a number")?;
    if token == numbered_set(n).auth.token.expose() {
        Ok(n)
    } else {
        Err(format!("visible token of set {n} is partial"))
    }
}

#[test]
fn torn_reads_none_under_rewrites() {
    const MIN_READS: u64 = 100_000;
    const MIN_REWRITES: u64 = 10_000;
    // An in-memory emptyDir is what the chart uses, and fsync there is free: 10,000 rewrites in seconds.
    let tmp = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let dir = tmp.path().to_path_buf();
    let sink = FileSink::new(dir.clone(), 0o640, None);
    sink.write_blocking(&numbered_set(0)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(150);
    let reads = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let writer = {
        let (reads, done, dir) = (reads.clone(), done.clone(), dir.clone());
        std::thread::spawn(move || {
            let sink = FileSink::new(dir, 0o640, None);
            let mut n = 1;
            while (n <= MIN_REWRITES || reads.load(Ordering::Relaxed) < MIN_READS)
                && Instant::now() < deadline
            {
                sink.write_blocking(&numbered_set(n)).unwrap();
                n += 1;
            }
            done.store(true, Ordering::Relaxed);
            n - 1
        })
    };
    // Three ways to read: one generation (all four files), the visible token.json, the visible token.
    let readers: Vec<_> = (0..2)
        .map(|k| {
            let (reads, done, dir) = (reads.clone(), done.clone(), dir.clone());
            std::thread::spawn(move || {
                let (mut torn, mut vanished, mut mine, mut newest) = (Vec::new(), 0u64, 0u64, 0u64);
                let mut i = 0u64;
                while !done.load(Ordering::Relaxed) {
                    i += 1;
                    let result = match (i + k as u64) % 3 {
                        0 => {
                            read_generation(&dir).map(|(t, a, e, j)| check_numbered(&t, &a, &e, &j))
                        }
                        1 => std::fs::read_to_string(dir.join("token.json"))
                            .ok()
                            .map(|j| {
                                let v: serde_json::Value = serde_json::from_str(&j)
                                    .map_err(|_| "visible token.json is partial".to_string())?;
                                let t = v["token"].as_str().unwrap_or("");
                                let a = v["authorization"].as_str().unwrap_or("");
                                let e = v["expires_at"].as_str().unwrap_or("");
                                check_numbered(t, a, e, &j)
                            }),
                        _ => std::fs::read_to_string(dir.join("token"))
                            .ok()
                            .map(|t| check_token_only(&t)),
                    };
                    match result {
                        None => vanished += 1,
                        Some(Ok(n)) => {
                            mine += 1;
                            newest = newest.max(n);
                            reads.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Err(e)) => {
                            if torn.len() < 5 {
                                torn.push(e);
                            }
                            reads.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                (torn, vanished, mine, newest)
            })
        })
        .collect();
    let rewrites = writer.join().unwrap();
    let mut torn = Vec::new();
    let (mut vanished, mut good) = (0, 0);
    for r in readers {
        let (t, v, g, _) = r.join().unwrap();
        torn.extend(t);
        vanished += v;
        good += g;
    }
    let secs = t0.elapsed().as_secs_f64();
    let total = reads.load(Ordering::Relaxed);
    eprintln!(
        "FAULTS-FIGURES test=torn rewrites={rewrites} reads={total} whole_reads={good} torn={} vanished_mid_read={vanished} seconds={secs:.1} fs={}",
        torn.len(),
        if dir.starts_with("/dev/shm") { "tmpfs" } else { "disk" }
    );
    assert!(torn.is_empty(), "torn or mixed reads: {torn:?}");
    assert!(rewrites >= MIN_REWRITES, "only {rewrites} rewrites in time");
    // Control: the same checks against a naive writer that rewrites the files in place (what
    // spiffe-helper did) must see torn sets, or the checks above prove nothing.
    let naive_dir = tmp.path().join("naive");
    std::fs::create_dir(&naive_dir).unwrap();
    let naive_stop = Arc::new(AtomicBool::new(false));
    let naive = {
        let (d, stop) = (naive_dir.clone(), naive_stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                for (f, content) in ls_token_refresher::sink::file::render(&numbered_set(n)) {
                    std::fs::write(d.join(f), content).unwrap();
                }
                n += 1;
            }
        })
    };
    let (mut naive_reads, mut naive_torn) = (0u64, 0u64);
    let t_naive = Instant::now();
    while t_naive.elapsed() < Duration::from_secs(2) {
        if let Some((t, a, e, j)) = visible_set(&naive_dir) {
            naive_reads += 1;
            if check_numbered(&t, &a, &e, &j.to_string()).is_err() {
                naive_torn += 1;
            }
        } else if naive_dir.join("token.json").exists() {
            naive_reads += 1;
            naive_torn += 1; // a file cut mid-write is not even JSON
        }
    }
    naive_stop.store(true, Ordering::Relaxed);
    naive.join().unwrap();
    eprintln!(
        "FAULTS-FIGURES test=torn control=naive-in-place-writer reads={naive_reads} torn={naive_torn}"
    );
    assert!(naive_torn > 0, "the checks never caught the naive writer");
    assert!(total >= MIN_READS, "only {total} reads in time");
    let (gens, tmp_left) = debris(&dir);
    assert_eq!((gens, tmp_left), (1, false), "one generation left");
}

/// Helper process for `writer_killed_at_random_moments_leaves_old_or_new_set`: rewrites the set in
/// `LSTR_FAULT_WRITER_DIR` from number `LSTR_FAULT_WRITER_START` on, appending each finished number
/// to `LSTR_FAULT_WRITER_PROGRESS`, for at most 30 s. Does nothing when those are not set.
#[test]
#[ignore = "helper process, run by writer_killed_at_random_moments_leaves_old_or_new_set"]
fn fault_writer_child() {
    let (Some(dir), Some(start), Some(progress)) = (
        std::env::var_os("LSTR_FAULT_WRITER_DIR"),
        std::env::var("LSTR_FAULT_WRITER_START").ok(),
        std::env::var_os("LSTR_FAULT_WRITER_PROGRESS"),
    ) else {
        return;
    };
    let sink = FileSink::new(dir.into(), 0o640, None);
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(progress)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n: u64 = start.parse().unwrap();
    while Instant::now() < deadline {
        sink.write_blocking(&numbered_set(n)).unwrap();
        log.write_all(format!("{n}\n").as_bytes()).unwrap();
        n += 1;
    }
}

#[test]
fn writer_killed_at_random_moments_leaves_old_or_new_set() {
    const KILLS: usize = 40;
    let tmp = tempfile::tempdir().unwrap(); // a real disk: every write pays its fsyncs
    let dir = tmp.path().join("token");
    std::fs::create_dir(&dir).unwrap();
    let progress = tmp.path().join("progress");
    FileSink::new(dir.clone(), 0o640, None)
        .write_blocking(&numbered_set(0))
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    let t0 = Instant::now();
    let (mut old, mut new, mut max_debris, mut writes) = (0, 0, 0, 0u64);
    let mut current = 0u64;
    let mut problems = Vec::new();
    for i in 0..KILLS {
        std::fs::write(&progress, "").unwrap();
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "fault_writer_child",
                "--ignored",
                "--test-threads",
                "1",
            ])
            .env("LSTR_FAULT_WRITER_DIR", &dir)
            .env("LSTR_FAULT_WRITER_START", (current + 1).to_string())
            .env("LSTR_FAULT_WRITER_PROGRESS", &progress)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("re-run this test binary as the writer");
        // Wait for its first finished write, then kill it a random moment later: it spends nearly
        // all its time inside write_set, so the kill lands mid-write.
        let started = Instant::now();
        while std::fs::metadata(&progress).map(|m| m.len()).unwrap_or(0) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "writer child never wrote"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_micros(fastrand::u64(0..40_000)));
        let sig = if i % 2 == 0 { "TERM" } else { "KILL" };
        process::kill(child.id(), sig);
        let status = child.wait().unwrap();
        assert!(
            status.code().is_none(),
            "writer exited by itself: {status:?}"
        );
        let done: Vec<u64> = std::fs::read_to_string(&progress)
            .unwrap()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect();
        let last_done = *done.last().unwrap();
        writes += done.len() as u64;
        let (gens, tmp_left) = debris(&dir);
        max_debris = max_debris.max(gens.saturating_sub(1) + usize::from(tmp_left));
        let on_disk = read_generation(&dir)
            .ok_or_else(|| "no readable generation".to_string())
            .and_then(|(t, a, e, j)| check_numbered(&t, &a, &e, &j));
        let visible = visible_set(&dir);
        match on_disk {
            Ok(n) if n == last_done || n == last_done + 1 => {
                if n == last_done {
                    old += 1
                } else {
                    new += 1
                }
                let v_ok = visible.is_some_and(|(t, a, e, j)| {
                    check_numbered(&t, &a, &e, &j.to_string()).ok() == Some(n)
                });
                if !v_ok {
                    problems.push(format!(
                        "kill {i} ({sig}): visible files disagree with ..data"
                    ));
                }
                current = n;
            }
            Ok(n) => problems.push(format!(
                "kill {i} ({sig}): set {n} on disk, last finished write {last_done}"
            )),
            Err(e) => problems.push(format!("kill {i} ({sig}): {e}")),
        }
        if !problems.is_empty() {
            break;
        }
    }
    // The next write cleans up whatever the kills left behind.
    FileSink::new(dir.clone(), 0o640, None)
        .write_blocking(&numbered_set(current + 1))
        .unwrap();
    let after = debris(&dir);
    eprintln!(
        "FAULTS-FIGURES test=writer-kill kills={KILLS} (SIGTERM {}, SIGKILL {}) writes_completed={writes} old_set_after_kill={old} new_set_after_kill={new} max_debris={max_debris} debris_after_next_write={} seconds={:.1}",
        KILLS.div_ceil(2),
        KILLS / 2,
        after.0 - 1 + usize::from(after.1),
        t0.elapsed().as_secs_f64()
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(after, (1, false), "debris cleaned by the next write");
}

/// What a reader of a token directory saw while writers ran.
#[derive(Debug, Default)]
struct ReaderReport {
    reads: u64,
    /// `..data` did not resolve to a directory, twice in a row 1 ms apart (a switch in between is
    /// not a dangling link: the second look sees the new target).
    dangling: u64,
    /// No whole set could be read from the generation `..data` named, twice in a row.
    missing: u64,
    /// Sets whose files do not belong together (first few).
    torn: Vec<String>,
    /// Set numbers seen.
    seen: BTreeSet<u64>,
}

/// Reads `dir` like a careful consumer (resolve `..data` once, read the four files there) until
/// `stop`, at most 60 s.
fn read_until(dir: &Path, stop: &AtomicBool) -> ReaderReport {
    let mut r = ReaderReport::default();
    let t0 = Instant::now();
    let resolves = || std::fs::metadata(dir.join("..data")).is_ok_and(|m| m.is_dir());
    let whole = || read_generation(dir).map(|(t, a, e, j)| check_numbered(&t, &a, &e, &j));
    while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(60) {
        r.reads += 1;
        if !resolves() {
            std::thread::sleep(Duration::from_millis(1));
            if !resolves() {
                r.dangling += 1;
            }
        }
        let got = whole().or_else(|| {
            std::thread::sleep(Duration::from_millis(1));
            whole()
        });
        match got {
            None => r.missing += 1,
            Some(Ok(n)) => {
                r.seen.insert(n);
            }
            Some(Err(e)) if r.torn.len() < 5 => r.torn.push(e),
            Some(Err(_)) => {}
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_write_blocks_no_one_and_data_always_resolves() {
    /// The abandoned first publish: long enough to be inside the stalled write, short for the test
    /// (the refresh loop abandons after 30 s).
    const ABANDON_AFTER: Duration = Duration::from_millis(500);
    /// Bound on each later publish: one that does not come back by then has stalled too.
    const LATER_BOUND: Duration = Duration::from_secs(3);
    const LATER: u64 = 5;
    let mut fs = FreezableFs::mount(32).unwrap_or_else(|e| {
        panic!("the stalled-write test needs a freezable file system (root, loop devices, mkfs.ext4, fsfreeze): {e}")
    });
    let dir = fs.path().join("token");
    std::fs::create_dir(&dir).unwrap();
    let sink = FileSink::new(dir.clone(), 0o640, None);
    sink.write_blocking(&numbered_set(0)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (dir, stop) = (dir.clone(), stop.clone());
            std::thread::spawn(move || read_until(&dir, &stop))
        })
        .collect();
    let me = std::process::id();
    let stuck_before = process::threads_in_d_state(me);

    fs.freeze();
    let t0 = Instant::now();
    // Like the refresh loop: the publish times out and is abandoned (its blocking write is not).
    let first = tokio::time::timeout(ABANDON_AFTER, sink.publish(&numbered_set(1))).await;
    assert!(
        first.is_err(),
        "the first publish finished on a frozen file system: {:?}",
        first.map(|r| r.map_err(|e| e.to_string()))
    );
    // Then several at once (later attempts, or other publishers of the same sink).
    let later = futures::future::join_all((2..2 + LATER).map(|n| {
        let sink = &sink;
        async move {
            let t = Instant::now();
            let r = tokio::time::timeout(LATER_BOUND, sink.publish(&numbered_set(n))).await;
            (
                n,
                t.elapsed().as_secs_f64(),
                r.map(|r| r.map_err(|e| e.to_string())),
            )
        }
    }))
    .await;
    // Threads stuck in the kernel on the frozen file system (the least over a few looks, so a
    // thread passing through D state for another reason is not counted).
    let mut stuck = usize::MAX;
    for _ in 0..5 {
        stuck = stuck.min(process::threads_in_d_state(me).saturating_sub(stuck_before));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Readers keep reading the frozen directory a while longer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frozen_for = t0.elapsed().as_secs_f64();
    fs.thaw();
    // The stalled writes finish now; wait until none is left in the kernel.
    let settled = ls_token_refresher_e2e::wait::wait_for(Duration::from_secs(10), || async {
        process::threads_in_d_state(me) <= stuck_before
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_thaw = read_generation(&dir).map(|(t, a, e, j)| check_numbered(&t, &a, &e, &j));
    let debris_after_thaw = debris(&dir);
    // The next write, with nothing stalled, must succeed and leave one generation.
    let last = tokio::time::timeout(Duration::from_secs(10), sink.publish(&numbered_set(100)))
        .await
        .map(|r| r.map_err(|e| e.to_string()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let reports: Vec<ReaderReport> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let final_set = read_generation(&dir).map(|(t, a, e, j)| check_numbered(&t, &a, &e, &j));
    let final_debris = debris(&dir);

    let fast_fails = later
        .iter()
        .filter(|(_, _, r)| matches!(r, Ok(Err(_))))
        .count();
    let stalled_later = later.iter().filter(|(_, _, r)| r.is_err()).count();
    let reads: u64 = reports.iter().map(|r| r.reads).sum();
    let dangling: u64 = reports.iter().map(|r| r.dangling).sum();
    let missing: u64 = reports.iter().map(|r| r.missing).sum();
    let torn: Vec<&String> = reports.iter().flat_map(|r| &r.torn).collect();
    let seen: BTreeSet<u64> = reports
        .iter()
        .flat_map(|r| r.seen.iter().copied())
        .collect();
    eprintln!(
        "FAULTS-FIGURES test=stalled-write frozen_s={frozen_for:.1} later_publishers={LATER} failed_fast={fast_fails} stalled_too={stalled_later} later_max_s={:.2} threads_stuck={stuck} settled={settled:?} set_after_thaw={after_thaw:?} debris_after_thaw={debris_after_thaw:?} reads={reads} dangling_data={dangling} missing_set={missing} torn={} sets_seen={seen:?} last_publish={last:?} final_set={final_set:?} final_debris={final_debris:?}",
        later.iter().map(|(_, s, _)| *s).fold(0.0, f64::max),
        torn.len(),
    );
    for (n, secs, r) in &later {
        match r {
            Ok(Err(msg)) => assert!(
                // The path as error messages show it: a random-looking temporary name may be
                // redacted like a token would be.
                msg.contains(&ls_token_refresher::secret::shown_path(&dir))
                    && msg.contains("has not finished"),
                "publish {n} failed after {secs:.2}s, but the message does not say why: {msg}"
            ),
            Ok(Ok(())) => panic!("publish {n} succeeded while the file system was frozen"),
            Err(_) => panic!(
                "publish {n} stalled beside the first one (no answer within {LATER_BOUND:?}) instead of failing at once"
            ),
        }
    }
    assert_eq!(stuck, 1, "threads stuck in the frozen file system");
    assert!(settled.is_some(), "writes still stuck 10 s after the thaw");
    assert_eq!(
        (dangling, missing, torn.len()),
        (0, 0, 0),
        "readers: ..data dangling {dangling}×, no whole set {missing}×, torn {torn:?}"
    );
    assert_eq!(
        after_thaw,
        Some(Ok(1)),
        "the stalled write completes after the thaw"
    );
    assert_eq!(last, Ok(Ok(())), "the next write after the thaw");
    assert_eq!(final_set, Some(Ok(100)));
    assert_eq!(
        final_debris,
        (1, false),
        "one generation and no temporary link left"
    );
}
