//! Our OCI image, built without a container engine by `deploy/image/build.sh` from the binary the
//! tests already run ([`crate::refresher::binary`], a debug build: no extra release build), and its
//! drift check against the Dockerfile (`deploy/image/check.py`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{refresher::binary, repo_root, tail};

/// A built image tarball (OCI layout and `docker save` archive in one file).
#[derive(Clone, Debug)]
pub struct Image {
    /// The tarball.
    pub tar: PathBuf,
    /// Its reference (`ghcr.io/ls-token-refresher/ls-token-refresher:<version>`: the name the chart and
    /// deploy/ use, so an imported image matches them).
    pub reference: String,
}

impl Image {
    /// `(registry, repository, tag)` of [`Self::reference`], as the chart's `image.*` values take it.
    pub fn parts(&self) -> (&str, &str, &str) {
        let (name, tag) = self
            .reference
            .rsplit_once(':')
            .expect("the reference has a tag");
        let (registry, repository) = name.split_once('/').expect("the reference has a registry");
        (registry, repository, tag)
    }
}

/// Builds the image from [`binary`] into `dir/ls-token-refresher.tar` (~1 s: one layer of the
/// binary, its shared objects, CA bundle and passwd files). Panics with build.sh's output on failure.
pub fn build(dir: &Path) -> Image {
    let out = dir.join("ls-token-refresher.tar");
    let run = Command::new("bash")
        .arg(repo_root().join("deploy/image/build.sh"))
        .arg("--binary")
        .arg(binary())
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .expect("run deploy/image/build.sh");
    assert!(
        run.status.success(),
        "deploy/image/build.sh failed ({}):\n{}",
        run.status,
        tail(&String::from_utf8_lossy(&run.stderr), 30)
    );
    let printed = String::from_utf8_lossy(&run.stdout).trim().to_string();
    assert_eq!(Path::new(&printed), out, "build.sh prints the tarball path");
    // The reference as written into the tarball (docker-archive manifest), not as we assume it.
    let manifest = Command::new("tar")
        .arg("-xOf")
        .arg(&out)
        .arg("manifest.json")
        .output()
        .expect("run tar");
    assert!(
        manifest.status.success(),
        "no manifest.json in {}",
        out.display()
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&manifest.stdout).expect("manifest.json is JSON");
    let reference = manifest[0]["RepoTags"][0]
        .as_str()
        .expect("the image has a tag")
        .to_string();
    Image {
        tar: out,
        reference,
    }
}

/// `deploy/image/check.py --dockerfile Dockerfile --image TAR --run`: the image declares the
/// Dockerfile's user, entrypoint, command, ports, labels and files, has no shell, and its entrypoint
/// starts in a chroot of the image alone. Returns (success, its report).
pub fn check_against_dockerfile(image: &Image) -> (bool, String) {
    let out = Command::new("python3")
        .arg(repo_root().join("deploy/image/check.py"))
        .arg("--dockerfile")
        .arg(repo_root().join("Dockerfile"))
        .arg("--image")
        .arg(&image.tar)
        .arg("--run")
        .stdin(Stdio::null())
        .output()
        .expect("run deploy/image/check.py");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}
