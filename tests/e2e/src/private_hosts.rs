//! A host name that is not loopback *by its text* but reaches 127.0.0.1, for one child process only.
//!
//! The refresher decides whether `--url` is "plain http:// to a remote host" from the host as
//! written (`localhost` or a loopback IP literal is local; any other name may be anywhere), so a
//! test of the cleartext warning needs a *name* — and, to run against the test's Label Studio, one
//! that resolves to 127.0.0.1 offline. Neither an IP literal (`127.0.0.1`, `[::1]`: loopback by
//! text) nor a public wildcard-DNS name (no network here) will do, and editing the machine's
//! `/etc/hosts` would touch every other process. So the child runs in a private mount namespace
//! (`unshare --mount`, propagation private: nothing leaks out) in which a file of ours is
//! bind-mounted over `/etc/hosts`; glibc's `files` lookup (which the binary's resolver,
//! getaddrinfo, uses) then maps [`REMOTE_NAME`] to 127.0.0.1 for that process alone. The name is
//! under `.test`, reserved by RFC 6761: it can never resolve to anything real.
//!
//! Needs root (CAP_SYS_ADMIN) for the namespace and the bind mount.

use std::path::Path;

/// A name that looks remote and, inside the wrapper, resolves to 127.0.0.1.
pub const REMOTE_NAME: &str = "label-studio.lstr.test";

/// Writes `dir/hosts` and returns the wrapper command (for `refresher::*_wrapped`) that runs the
/// binary with it as `/etc/hosts`. unshare execs sh, which execs the binary: the PID stays the
/// refresher's.
pub fn wrapper(dir: &Path) -> Vec<String> {
    let hosts = dir.join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n127.0.0.1 {REMOTE_NAME}\n"),
    )
    .expect("write the private hosts file");
    [
        "/usr/bin/unshare",
        "--mount",
        "--propagation",
        "private",
        "/bin/sh",
        "-c",
        // $0 is the hosts file, "$@" the binary and its arguments.
        r#"/usr/bin/mount --bind "$0" /etc/hosts && exec "$@""#,
        hosts.to_str().expect("UTF-8 temp path"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// True when this machine lets us build the wrapper's namespace (root, unshare and mount present):
/// runs `getent hosts REMOTE_NAME` under it and checks the answer.
pub fn works(dir: &Path) -> Result<(), String> {
    let w = wrapper(dir);
    let out = std::process::Command::new(&w[0])
        .args(&w[1..])
        .args(["/usr/bin/getent", "hosts", REMOTE_NAME])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", w[0]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && text.starts_with("127.0.0.1") {
        Ok(())
    } else {
        Err(format!(
            "the private /etc/hosts did not take effect ({}): {} {}",
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
