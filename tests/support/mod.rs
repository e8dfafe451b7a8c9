//! Shared harness for the integration tests: real Label Studio and real kube-apiserver instances,
//! each started per test on free 127.0.0.1 ports in its own temp dir and stopped (by PID) on drop.
#![allow(dead_code)]

pub mod faults;
pub mod kube_api;
pub mod label_studio;
pub mod rbac;
pub mod refresher;

/// Root of the per-machine cache (venvs, built binaries, tools). Overridable for unusual machines.
pub fn cache_dir() -> std::path::PathBuf {
    std::env::var_os("LSTR_CACHE")
        .map(Into::into)
        .unwrap_or_else(|| "/var/tmp/ls-token-refresher".into())
}

/// Installs rustls' ring provider once per process: reqwest (built with `rustls-no-provider`) panics without it.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}
