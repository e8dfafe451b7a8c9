//! The chart and the binary cannot disagree (issue 9, item 11: a documented log level crash-looped the
//! pod). For every values file the chart checks render (`tests/chart/values/*`,
//! `tests/chart/deploy-values/*`) and every manifest in `deploy/` (the sidecar examples and the
//! Secret mode, which `tests/chart/check.sh` keeps equal to a fresh render), each ls-token-refresher
//! container's args and environment go through the binary's own validation — `<args> --dry-run`, which
//! parses every flag and variable, builds the HTTP client (CA bundle included) and contacts nothing —
//! and must exit 0. The downward API becomes placeholders, the files the container would find in its
//! volumes become temp files. Also: the JWT-shaped placeholder key the docs print is the one the proxy's
//! code makes.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use ls_token_refresher_e2e::{chart, pki, refresher::run_to_end, repo_root};

/// A refresh-token-shaped PAT for the files (dry-run never sends it anywhere).
fn fake_pat() -> String {
    ls_token_refresher::proxy::standin::placeholder_key()
}

/// The refresher containers (init and app containers whose image is ours) of the workloads in `yaml`,
/// each with a name saying where it comes from.
fn refresher_containers(what: &str, yaml: &str) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for o in chart::objects(yaml) {
        let pod = match o["kind"].as_str() {
            Some("Deployment" | "Job" | "StatefulSet" | "DaemonSet") => {
                &o["spec"]["template"]["spec"]
            }
            Some("Pod") => &o["spec"],
            _ => continue,
        };
        for list in ["initContainers", "containers"] {
            for c in pod[list].as_array().into_iter().flatten() {
                // The `helm test` pod runs `check`, which has no --dry-run (checking means contacting):
                // tests/chart/assertions.py holds its environment equal to the Deployment's, checked here,
                // and the pod tests run it for real.
                let is_check = c["args"][0] == "check";
                if !is_check
                    && c["image"]
                        .as_str()
                        .is_some_and(|i| i.contains("ls-token-refresher"))
                {
                    let name = format!(
                        "{what}: {}/{} {}",
                        o["kind"].as_str().unwrap(),
                        o["metadata"]["name"].as_str().unwrap(),
                        c["name"].as_str().unwrap()
                    );
                    out.push((name, c.clone()));
                }
            }
        }
    }
    out
}

/// The container's args and environment as the binary would see them in its pod, with its volume
/// mounts moved under `root` (PAT and CA files created there, the token directory an empty dir).
fn as_in_the_pod(c: &serde_json::Value, root: &Path) -> (Vec<String>, Vec<(String, String)>) {
    let mounts: Vec<(String, PathBuf)> = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let local = root.join(m["name"].as_str().unwrap());
            std::fs::create_dir_all(&local).unwrap();
            (m["mountPath"].as_str().unwrap().to_string(), local)
        })
        .collect();
    let relocate = |v: &str| -> String {
        for (mount, local) in &mounts {
            if let Some(rest) = v.strip_prefix(mount.as_str()) {
                return format!("{}{rest}", local.display());
            }
        }
        v.to_string()
    };
    let mut env = BTreeMap::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = match (e["value"].as_str(), e.get("valueFrom")) {
            (Some(v), _) => relocate(v),
            (None, Some(from)) => match from["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => "pod-0".into(),
                Some("metadata.namespace") => "label-studio".into(),
                _ => panic!("{name}: no placeholder for valueFrom {from}"),
            },
            (None, None) => String::new(),
        };
        env.insert(name, value);
    }
    // The files the container reads from its volumes.
    if let Some(pat) = env.get("LS_PAT_FILE") {
        assert!(
            pat.starts_with(root.to_str().unwrap()),
            "LS_PAT_FILE {pat} is not in a volume"
        );
        std::fs::write(pat, fake_pat()).unwrap();
    }
    if let Some(basic) = env.get("LS_GATE_BASIC_AUTH_FILE") {
        assert!(
            basic.starts_with(root.to_str().unwrap()),
            "LS_GATE_BASIC_AUTH_FILE {basic} is not in a volume"
        );
        // The gate's Basic credentials for Label Studio's own calls: `user:password`.
        std::fs::write(basic, "labelstudio:placeholder-basic-password").unwrap();
    }
    if let Some(ca) = env.get("LS_CA_FILE") {
        assert!(
            ca.starts_with(root.to_str().unwrap()),
            "LS_CA_FILE {ca} is not in a volume"
        );
        let (cert, _) = pki::self_signed_cert(root, "ca");
        std::fs::copy(cert, ca).unwrap();
    }
    let args = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| relocate(a.as_str().unwrap()))
        .collect();
    (args, env.into_iter().collect())
}

/// Runs `<args> --dry-run` with `env`; returns (exit code, stdout + stderr).
fn dry_run(args: &[String], env: &[(String, String)]) -> (Option<i32>, String) {
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.push("--dry-run");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = run_to_end(&args, &env);
    (out.status.code(), format!("{}{}", out.stdout, out.stderr))
}

/// The `.yaml` files of the repository folder `dir`, as sorted repository-relative paths.
fn yaml_files(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo_root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.strip_prefix(repo_root()).unwrap().display().to_string())
        .collect();
    files.sort();
    files
}

/// Every values file the chart checks render, rendered (namespace label-studio), and every deploy/ manifest.
async fn every_rendering() -> Vec<(String, String)> {
    let mut all = Vec::new();
    for f in yaml_files("tests/chart/values")
        .into_iter()
        .chain(yaml_files("tests/chart/deploy-values"))
    {
        let yaml = chart::render("label-studio", &["-f", &f]).await;
        all.push((f, yaml));
    }
    for f in yaml_files("deploy") {
        let yaml = std::fs::read_to_string(repo_root().join(&f)).unwrap();
        all.push((f, yaml));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rendered_refresher_container_passes_the_binarys_own_validation() {
    let renderings = every_rendering().await;
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for (what, yaml) in &renderings {
        for (name, c) in refresher_containers(what, yaml) {
            let root = tempfile::tempdir().unwrap();
            let (args, env) = as_in_the_pod(&c, root.path());
            let (code, out) = dry_run(&args, &env);
            if code != Some(0) || !out.contains("configuration valid") {
                failures.push(format!(
                    "{name}: `{}` exit {code:?}:\n{out}",
                    args.join(" ")
                ));
            }
            checked.push(name);
        }
    }
    assert!(
        failures.is_empty(),
        "the binary refuses what the chart renders:\n{}",
        failures.join("\n")
    );
    // Every workload renders a refresher: the chart's Deployment for each values file but the library-only
    // one, and each deploy/ example (the classic sidecar has two: `once`, then `run`).
    let count = |prefix: &str| checked.iter().filter(|n| n.starts_with(prefix)).count();
    for (what, _) in &renderings {
        let want = match what.as_str() {
            "tests/chart/values/library-only.yaml" => 0,
            w if w.starts_with("deploy/monitoring") => 0,
            "deploy/classic-sidecar.yaml" => 2,
            // The controller next to the single-token Deployment.
            "tests/chart/values/controller-namespaces.yaml" => 2,
            // A tenant's objects only (connection, PAT Secret, token resource).
            "deploy/controller-examples.yaml" => 0,
            _ => 1,
        };
        assert_eq!(
            count(&format!("{what}:")),
            want,
            "{what}: refresher containers checked: {checked:#?}"
        );
    }
    eprintln!(
        "{} refresher containers validated:\n{}",
        checked.len(),
        checked.join("\n")
    );
}

/// The check can fail: the log level values.yaml used to document, in an otherwise valid container,
/// is refused by the binary (exit 2, naming the variable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_catches_a_value_the_binary_refuses() {
    let yaml = chart::render("label-studio", &["-f", "tests/chart/values/minimal.yaml"]).await;
    let (_, c) = refresher_containers("minimal", &yaml).remove(0);
    let root = tempfile::tempdir().unwrap();
    let (args, mut env) = as_in_the_pod(&c, root.path());
    assert_eq!(
        dry_run(&args, &env).0,
        Some(0),
        "the unchanged container is valid"
    );
    for (k, v) in env.iter_mut() {
        if k == "LS_LOG_LEVEL" {
            *v = "info,ls_token_refresher=debug".into();
        }
    }
    let (code, out) = dry_run(&args, &env);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("LS_LOG_LEVEL"), "{out}");
}

/// The JWT-shaped placeholder key the chart README prints for label-studio-sdk is the proxy's own.
#[test]
fn the_documented_placeholder_key_is_the_proxys() {
    let key = ls_token_refresher::proxy::standin::placeholder_key();
    let doc = "charts/ls-token-refresher/README.md";
    let text = std::fs::read_to_string(repo_root().join(doc)).unwrap();
    let shown: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == '`')
        .filter(|w| w.starts_with("eyJhbGciOiJub25l"))
        .collect();
    assert_eq!(
        shown,
        [key.as_str()],
        "{doc} shows another key than placeholder_key()"
    );
}
