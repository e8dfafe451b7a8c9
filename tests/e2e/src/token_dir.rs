//! Readers of a published token directory: `..data` is a symlink to the current generation directory
//! (`..<timestamp>…`) holding `token`, `authorization`, `expires_at` and `token.json`; the visible
//! names are symlinks through `..data`.

use std::{collections::BTreeSet, path::Path};

/// Reads `names` from the generation `..data` points to, resolved once. None while nothing is
/// published (or if the generation vanished mid-read; callers retry).
pub fn read_current<const N: usize>(dir: &Path, names: [&str; N]) -> Option<[String; N]> {
    let g = dir.join(std::fs::read_link(dir.join("..data")).ok()?);
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    for (slot, name) in out.iter_mut().zip(names) {
        *slot = std::fs::read_to_string(g.join(name)).ok()?;
    }
    Some(out)
}

/// Reads the published set consistently, like a careful consumer: (token, authorization, expires_at).
pub fn read_set(dir: &Path) -> Option<(String, String, String)> {
    let [t, a, e] = read_current(dir, ["token", "authorization", "expires_at"])?;
    Some((t, a, e))
}

/// Like [`read_set`], all four files: (token, authorization, expires_at, token.json).
pub fn read_generation(dir: &Path) -> Option<(String, String, String, String)> {
    let [t, a, e, j] = read_current(dir, ["token", "authorization", "expires_at", "token.json"])?;
    Some((t, a, e, j))
}

/// The full published set read through the visible names (only consistent when no writer runs).
pub fn visible_set(dir: &Path) -> Option<(String, String, String, serde_json::Value)> {
    let r = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let json = serde_json::from_str(&r("token.json")?).ok()?;
    Some((r("token")?, r("authorization")?, r("expires_at")?, json))
}

/// How many generation directories (`..<timestamp>…`) there are and whether a temporary link
/// (`..data_tmp…`) is left.
pub fn debris(dir: &Path) -> (usize, bool) {
    let mut gens = 0;
    let mut tmp = false;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("..data_tmp") {
            tmp = true;
        } else if n.starts_with("..") && n != "..data" && e.file_type().is_ok_and(|t| t.is_dir()) {
            gens += 1;
        }
    }
    (gens, tmp)
}

/// Names of the generation directories in `dir`.
pub fn generation_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("..") && n != "..data" && !n.starts_with("..data_tmp"))
                .filter(|n| !n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}
