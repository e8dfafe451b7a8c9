//! The cached command-line tools (helm, kubectl, promtool, prometheus, checkov…) from
//! `tests/support/tools/provision.sh`.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use crate::cache_dir;

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
