//! The least-privilege Role the chart ships (charts/ls-token-refresher/templates/role.yaml), bound
//! to the harness's token-file user, plus the PAT Secret: the Kubernetes setup every refresher run
//! against the real apiserver starts from.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::Secret,
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    ByteString,
};
use kube::{
    api::{Api, ObjectMeta, PostParams},
    Client,
};

/// Name of the Role and RoleBinding.
pub const ROLE: &str = "ls-token-refresher";

/// The shipped rules: read/watch the PAT Secret and get/patch the target by `resourceNames`,
/// `create` on secrets in its own rule, Events.
pub fn minimal_role(pat_secret: &str, target: &str) -> Role {
    let rule =
        |groups: &[&str], resources: &[&str], verbs: &[&str], names: Option<&[&str]>| PolicyRule {
            api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
            resources: Some(resources.iter().map(|s| s.to_string()).collect()),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            resource_names: names.map(|n| n.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
    Role {
        metadata: ObjectMeta {
            name: Some(ROLE.into()),
            ..Default::default()
        },
        rules: Some(vec![
            rule(
                &[""],
                &["secrets"],
                &["get", "list", "watch"],
                Some(&[pat_secret]),
            ),
            rule(&[""], &["secrets"], &["get", "patch"], Some(&[target])),
            rule(&[""], &["secrets"], &["create"], None),
            rule(
                &["", "events.k8s.io"],
                &["events"],
                &["create", "patch"],
                None,
            ),
        ]),
    }
}

/// Creates the minimal Role in `ns` and binds it to `user`.
pub async fn grant_minimal_role(
    admin: &Client,
    ns: &str,
    user: &str,
    pat_secret: &str,
    target: &str,
) {
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &minimal_role(pat_secret, target))
        .await
        .unwrap();
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some(ROLE.into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: ROLE.into(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            name: user.into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

/// `data` for a Secret from string pairs.
pub fn secret_data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

/// Creates Secret `name` in `ns` with `data`.
pub async fn create_secret(admin: &Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let s = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(secret_data(data)),
        ..Default::default()
    };
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}
