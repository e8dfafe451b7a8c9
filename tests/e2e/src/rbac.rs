//! Roles bound to the harness's token-file user, for tests of the harness itself. The refresher
//! runs under the chart's own Role and ServiceAccount instead (see [`crate::chart::install_rbac`]).

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::{
    api::{Api, ObjectMeta, PostParams},
    Client,
};

/// A rule: `verbs` on `resources` of the API `groups`, limited to `names` if given.
pub fn rule(
    groups: &[&str],
    resources: &[&str],
    verbs: &[&str],
    names: Option<&[&str]>,
) -> PolicyRule {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        resource_names: names.map(strings),
        ..Default::default()
    }
}

/// Creates `role` in `ns` and binds it (a RoleBinding of the same name) to the User `user`.
pub async fn grant(admin: &Client, ns: &str, role: Role, user: &str) {
    let name = role.metadata.name.clone().expect("a named Role");
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .expect("create role");
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name,
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
        .expect("create rolebinding");
}

/// Grants `verbs` on the secrets `names` in `ns` to `user` through a Role named `role`.
pub async fn grant_secret_access(
    admin: &Client,
    ns: &str,
    role: &str,
    user: &str,
    verbs: &[&str],
    names: &[&str],
) {
    let role = Role {
        metadata: ObjectMeta {
            name: Some(role.into()),
            ..Default::default()
        },
        rules: Some(vec![rule(&[""], &["secrets"], verbs, Some(names))]),
    };
    grant(admin, ns, role, user).await;
}
