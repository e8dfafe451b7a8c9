//! The cached command-line tools (helm, kubectl, promtool, prometheus, checkov…) from
//! `tests/support/tools/provision.sh`.

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    sync::OnceLock,
};

use crate::{cache_dir, repo_root};

/// Runs provision.sh once per test process (a stamp check when warm) and returns the path of its
/// env.sh (which exports `HELM`, `KUBECTL`, `PROMTOOL`… and helm's writable homes).
pub fn tools_env() -> &'static Path {
    static ENV: OnceLock<PathBuf> = OnceLock::new();
    ENV.get_or_init(|| {
        let hint = "run `bash tests/support/tools/provision.sh` by hand";
        PathBuf::from(crate::provision("tools", &["--env-file"], hint).trim())
    })
}

/// Path of the cached tool `name` (`cache_dir()/tools/bin/NAME`), provisioned on demand.
pub fn tool(name: &str) -> PathBuf {
    tools_env();
    let p = cache_dir().join("tools/bin").join(name);
    assert!(p.is_file(), "{} missing after provisioning", p.display());
    p
}

/// `helm ARGS…` with the provisioned helm and its writable homes, run in the repository root (so
/// `charts/ls-token-refresher` resolves); against `kubeconfig`'s cluster when given.
pub async fn helm(args: &[&str], kubeconfig: Option<&Path>) -> Output {
    let env = tools_env();
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-c")
        .arg(r#"source "$0" && exec "$HELM" "$@""#)
        .arg(env)
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::null());
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    cmd.output().await.expect("run helm")
}

/// Runs `kubectl` (the binary at `bin`) against `kubeconfig`, with `home` as its HOME and its
/// discovery cache in `home/kubectl-cache` (nothing shared between clusters), a 30 s request limit.
pub async fn kubectl<I, S>(bin: &Path, kubeconfig: &Path, home: &Path, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    tokio::process::Command::new(bin)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .arg(format!(
            "--cache-dir={}",
            home.join("kubectl-cache").display()
        ))
        .arg("--request-timeout=30s")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run kubectl")
}
