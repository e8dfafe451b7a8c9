//! Our OCI image, built without a container engine by `deploy/image/build.sh` from the binary the
//! tests already run ([`crate::refresher::binary`], a debug build: no extra release build), and its
//! drift check against the Dockerfile (`deploy/image/check.py`); the stock ML backend's image
//! ([`ml_backend`]) from the same image builder.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{refresher::binary, repo_root, support_dir, tail};

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
    Image::of(out)
}

impl Image {
    /// The image in tarball `tar`, with the reference written into it (docker-archive manifest),
    /// not as we assume it.
    fn of(tar: PathBuf) -> Image {
        let manifest = Command::new("tar")
            .arg("-xOf")
            .arg(&tar)
            .arg("manifest.json")
            .output()
            .expect("run tar");
        assert!(
            manifest.status.success(),
            "no manifest.json in {}",
            tar.display()
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&manifest.stdout).expect("manifest.json is JSON");
        let reference = manifest[0]["RepoTags"][0]
            .as_str()
            .expect("the image has a tag")
            .to_string();
        Image { tar, reference }
    }
}

/// The stock ML backend server (label-studio-ml 1.0.9 from the consumers' venv, a Python runtime,
/// the shared objects it needs and the test model `ml_backend/model.py`) as an image, built offline by
/// `tests/support/consumers/ml_backend/image.py` with deploy/image/mkimage.py and cached under
/// the cache dir by its inputs (~5 s cold, <1 s warm). Panics with the builder's output on failure.
pub fn ml_backend() -> Image {
    let builder = support_dir("consumers").join("ml_backend/image.py");
    let run = Command::new("python3")
        .arg(&builder)
        .arg("--venv-python")
        .arg(&crate::stock_clients::venvs().ml_python)
        .env("LSTR_CACHE", crate::cache_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run ml_backend/image.py");
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "{} failed ({}):\n{}",
        builder.display(),
        run.status,
        tail(&log, 30)
    );
    eprintln!("{}", log.trim());
    Image::of(PathBuf::from(String::from_utf8_lossy(&run.stdout).trim()))
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
