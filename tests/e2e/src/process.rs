//! Child processes by PID: signals and /proc figures.

use std::process::{Command, Stdio};

/// Sends `signal` (e.g. `"TERM"`, `"KILL"`, `"9"`) to `pid` with kill(1); errors are ignored.
pub fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Sends `signal` to the process group `pgid` (`kill -SIG -- -PGID`); errors are ignored.
pub fn kill_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Resident set size of a live process in KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident set size of a live process in KiB (`VmHWM` in /proc/PID/status).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Start time (clock ticks since boot) of a live process, from /proc/PID/stat: with the PID, it
/// tells a process apart from a later one that reuses the PID.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// How many threads of process `pid` are in uninterruptible sleep (state `D`: blocked in the
/// kernel, e.g. on a frozen file system), from /proc/PID/task/*/stat.
pub fn threads_in_d_state(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter(|stat| {
            stat.rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                == Some("D")
        })
        .count()
}

/// The value of `key` (e.g. `"Uid"`, `"CapEff"`, `"NoNewPrivs"`) in /proc/PID/status, whitespace
/// collapsed to single spaces.
pub fn status_field(pid: u32, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))?;
    Some(value.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Mount options of the root filesystem as the process sees it (its mount namespace), e.g.
/// `ro,relatime`, from /proc/PID/mountinfo.
pub fn root_mount_options(pid: u32) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    // Fields: id parent major:minor root mountpoint options …; the last mount on "/" is the visible one.
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(4) == Some(&"/")).then(|| f.get(5).map(|s| s.to_string()))?
    })
}

/// The environment of a process (`/proc/PID/environ`) as `NAME=value` strings.
pub fn environ(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect(),
    )
}

/// The mounts a process sees (its mount namespace), as `(device major:minor, root, mount point)`
/// from /proc/PID/mountinfo: two mounts of the same volume share device and root.
pub fn mounts(pid: u32) -> Option<Vec<(String, String, String)>> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    Some(
        info.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.get(2)?.to_string(),
                    f.get(3)?.to_string(),
                    f.get(4)?.to_string(),
                ))
            })
            .collect(),
    )
}
