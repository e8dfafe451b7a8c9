//! Harnesses for testing ls-token-refresher against real components, compiled once and shared by
//! every test binary in `tests/e2e/tests/`. One module per harness or concern:
//!
//! | module | what |
//! |---|---|
//! | [`label_studio`] | a real Label Studio 1.23.2 process per test (start/stop/restart by PID) |
//! | [`ls_api`] | Label Studio API client: session login, PATs, legacy token, org switches, refresh |
//! | [`kube_apiserver`] | a real kube-apiserver + etcd per test (PKI, kubeconfigs, kubectl) |
//! | [`kube_api`], [`rbac`] | Kubernetes API helpers; Roles for the harness's token user |
//! | [`chart`] | the Helm chart rendered, its RBAC applied, its ServiceAccount's identity taken on |
//! | [`refresher`] | the real `ls-token-refresher` binary as a child process |
//! | [`controller_env`] | the controller's CRDs, connections, token resources and GC on a real apiserver |
//! | [`auth_proxy`] | the binary serving the auth proxy (PAT file, trace logs); a raw HTTP/1.1 client |
//! | [`stock_clients`] | label-studio-sdk 2.1.2 and the ML backend 1.0.9 as their users run them |
//! | [`node`], [`pods`], [`image`] | a real kubelet + containerd node; pods, manifests and consumers on it; our image |
//! | [`token_dir`] | readers of a published token directory (`..data` generations) |
//! | [`fault_proxy`], [`http1`] | a misbehaving HTTP/1.1 proxy and the minimal HTTP it speaks |
//! | [`tls`], [`pki`] | an HTTPS front with a self-signed certificate; `openssl` helpers |
//! | [`consumer`] | a workload that keeps reading the published set and checks it against the API |
//! | [`tmpfs`] | a real tmpfs, remounted read-only or filled to ENOSPC |
//! | [`frozen_fs`] | an ext4 on a loop device, frozen on demand (writes stall in the kernel) |
//! | [`faketime`] | libfaketime: one child's wall clock skewed (monotonic clocks left real) |
//! | [`private_hosts`] | a remote-looking host name resolving to 127.0.0.1 for one child only |
//! | [`fault_suite`] | the flags, metrics and steps the fault tests share |
//! | [`prometheus`], [`tools`] | a real Prometheus server; the cached helm/kubectl/promtool |
//! | [`clock`], [`jwt`], [`wait`], [`process`], [`log_scan`] | time, JWT claims, polling, PIDs, secret scans |
//! | [`skip`] | a test that cannot run here fails, unless `LSTR_ALLOW_SKIP=1` |
//!
//! Everything listens on 127.0.0.1 only, every wait is bounded, and every process a harness starts
//! is stopped by PID on drop. Provisioning scripts live in
//! `tests/support/{ls,kube,node,tools,consumers,faketime}/` of the repository ([`support_dir`]); their
//! results are cached under [`cache_dir`].

pub mod auth_proxy;
pub mod chart;
pub mod clock;
pub mod consumer;
pub mod controller_env;
pub mod faketime;
pub mod fault_proxy;
pub mod fault_suite;
pub mod frozen_fs;
pub mod http1;
pub mod image;
pub mod jwt;
pub mod kube_api;
pub mod kube_apiserver;
pub mod label_studio;
pub mod log_scan;
pub mod ls_api;
pub mod ls_standin;
pub mod node;
pub mod pki;
pub mod pods;
pub mod private_hosts;
pub mod process;
pub mod prometheus;
pub mod rbac;
pub mod refresher;
pub mod secret_mode;
#[path = "../../../src/skip.rs"]
pub mod skip;
pub mod stock_clients;
pub mod tls;
pub mod tmpfs;
pub mod token_dir;
pub mod tools;
pub mod wait;

use std::path::{Path, PathBuf};

/// Root of the per-machine cache (venvs, built binaries, tools): `$LSTR_CACHE`, by default
/// `/var/tmp/ls-token-refresher`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("LSTR_CACHE")
        .map(Into::into)
        .unwrap_or_else(|| "/var/tmp/ls-token-refresher".into())
}

/// The repository root (the workspace holding this crate in `tests/e2e`).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/e2e lives two levels below the repository root")
}

/// `tests/support/<name>` of the repository: the provisioning scripts (`ls`, `kube`, `node`, `tools`).
pub fn support_dir(name: &str) -> PathBuf {
    repo_root().join("tests/support").join(name)
}

/// Runs `tests/support/<component>/provision.sh ARGS…` (idempotent and flock-protected; a stamp
/// check when the cache is warm; a cold run shows its progress on stderr) and returns what it printed
/// on stdout. Panics with `hint` (how to provision by hand) if it cannot run or fails.
pub fn provision(component: &str, args: &[&str], hint: &str) -> String {
    let script = support_dir(component).join("provision.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .args(args)
        .env("LSTR_CACHE", cache_dir())
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): {hint}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}); see its stderr above; {hint}",
        script.display(),
        out.status
    );
    String::from_utf8(out.stdout).expect("provision.sh prints UTF-8")
}

/// Installs rustls' ring provider once per process: reqwest (built with `rustls-no-provider`) panics without it.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`), from which it draws the
/// local port of every outgoing connection and of every `bind(:0)`; Linux's default when unreadable.
pub fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// Lowest port `free_port` hands out: above the well-known and the usual service ports (Label
/// Studio's 8080, Prometheus' 9090, etcd's 2379, the apiserver's 6443), which a developer's machine
/// may be running.
const FIRST_TEST_PORT: u16 = 10_000;

/// First port `free_port` leaves alone: from here up to the ephemeral range, node.sh allocates the
/// ports of the node's etcd, kubelet and controllers, in its own process, while tests of this one
/// start Label Studio and refreshers.
const NODE_SH_PORTS: u16 = 24_000;

/// A port that was free a moment ago on 127.0.0.1 and that this process hands out only once.
///
/// Not `bind(127.0.0.1:0)`: the kernel hands a released port out again (measured here: 500 calls
/// gave 483 distinct ports), so two tests running in parallel could be given one port; and it
/// draws from the ephemeral range, where any outgoing connection can take the port between this
/// check and the bind by the process it is meant for. CI failed on 27a6dfe that way (`--proxy-addr
/// … Address already in use`). Ports here come from below node.sh's share ([`NODE_SH_PORTS`]) or
/// above the ephemeral range, through a process-wide cursor that starts at a random place (so
/// concurrent test processes seldom meet) and repeats no port until it has gone round all of them.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;
    /// The candidates, `[FIRST_TEST_PORT, min(low, NODE_SH_PORTS))` then `(high, 65535]` of the
    /// ephemeral range `low..=high`, numbered `0..count`, and where the walk over them has got to.
    struct Ports {
        low: u16,
        high: u16,
        below: usize,
        count: usize,
        cursor: AtomicUsize,
    }
    static PORTS: OnceLock<Ports> = OnceLock::new();
    let ports = PORTS.get_or_init(|| {
        let (low, high) = ephemeral_range();
        let below = usize::from(low.min(NODE_SH_PORTS).saturating_sub(FIRST_TEST_PORT));
        let count = below + usize::from(u16::MAX - high);
        assert!(
            count > 0,
            "no ports outside the ephemeral range {low}-{high} to test with"
        );
        Ports {
            low,
            high,
            below,
            count,
            cursor: AtomicUsize::new(fastrand::usize(..count)),
        }
    });
    for _ in 0..ports.count {
        let i = ports.cursor.fetch_add(1, Ordering::Relaxed) % ports.count;
        let port = if i < ports.below {
            FIRST_TEST_PORT + i as u16
        } else {
            ports.high + 1 + (i - ports.below) as u16
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free port on 127.0.0.1 outside the ephemeral range {}-{}",
        ports.low, ports.high
    );
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CI failure of 27a6dfe: a port handed to the refresher as `--proxy-addr` was taken, between
    /// `free_port` releasing it and the refresher binding it, by something else on the machine
    /// ("Address already in use", exit 2). Every outgoing connection draws its local port from the
    /// kernel's ephemeral range, and `bind(:0)` hands released ports out again; neither may happen here.
    #[test]
    fn free_ports_are_unique_in_a_process_and_outside_the_ephemeral_range() {
        let (low, high) = ephemeral_range();
        let ports: Vec<u16> = (0..500).map(|_| free_port()).collect();
        let node_sh = NODE_SH_PORTS..low;
        let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        for p in &ports {
            assert!(
                !(low..=high).contains(p),
                "port {p} is in the ephemeral range {low}-{high}"
            );
            assert!(!node_sh.contains(p), "port {p} is node.sh's");
            std::net::TcpListener::bind(("127.0.0.1", *p)).expect("a handed-out port is bindable");
        }
    }
}
