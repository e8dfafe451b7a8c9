//! Kubernetes API helpers: Secrets from string pairs, API error codes, `kubectl auth can-i`.

use std::{collections::BTreeMap, path::Path};

use k8s_openapi::{api::core::v1::Secret, ByteString};
use kube::{
    api::{Api, ObjectMeta, PostParams},
    Client,
};

use crate::kube_apiserver::{ApiServer, Identity};

/// The `kube::Error::Api` status code of a result, if it is an API error.
pub fn api_error_code<T>(r: &Result<T, kube::Error>) -> Option<u16> {
    match r {
        Err(kube::Error::Api(s)) => Some(s.code),
        _ => None,
    }
}

/// `data` for a Secret from string pairs.
pub fn secret_data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

/// A Secret `name` holding `data` (string pairs).
pub fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(secret_data(data)),
        ..Default::default()
    }
}

/// The value of `key` in a Secret's `data`, as UTF-8.
pub fn data_of(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .map(|b| String::from_utf8(b.0.clone()).unwrap())
}

/// Creates Secret `name` in `ns` with `data`.
pub async fn create_secret(admin: &Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &secret(name, data))
        .await
        .unwrap();
}

/// `kubectl auth can-i ARGS…` as `identity`: true for `yes` (exit 0), false for `no` (exit 1);
/// panics on anything else.
pub async fn can_i(server: &ApiServer, identity: Identity, args: &[&str]) -> bool {
    let kubeconfig = match identity {
        Identity::Admin => server.admin_kubeconfig_path(),
        Identity::User => server.user_kubeconfig_path(),
    };
    can_i_with(server, &kubeconfig, args).await
}

/// [`can_i`] with the identity of the kubeconfig at `kubeconfig` (e.g. a ServiceAccount's).
pub async fn can_i_with(server: &ApiServer, kubeconfig: &Path, args: &[&str]) -> bool {
    let mut full = vec!["auth", "can-i"];
    full.extend_from_slice(args);
    let out = server.kubectl_with(kubeconfig, &full).await;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match stdout.as_str() {
        "yes" => {
            assert!(out.status.success());
            true
        }
        "no" => {
            assert_eq!(out.status.code(), Some(1), "can-i no exits 1");
            false
        }
        _ => panic!(
            "kubectl auth can-i {args:?}: status {:?} stdout {stdout:?} stderr {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A DNS-label name `<prefix>-<8 random [a-z0-9]>` (the prefix lower-cased, other characters
/// turned into `-`, cut to 50): a namespace of one's own on a shared cluster.
pub fn unique_name(prefix: &str) -> String {
    let mut p: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    p.truncate(50);
    let p = p.trim_matches('-');
    let p = if p.is_empty() { "ns" } else { p };
    format!("{p}-{}", random_lower(8))
}

fn random_lower(n: usize) -> String {
    std::iter::repeat_with(|| {
        let c = fastrand::u8(0..36);
        if c < 10 {
            (b'0' + c) as char
        } else {
            (b'a' + c - 10) as char
        }
    })
    .take(n)
    .collect()
}
