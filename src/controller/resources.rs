//! The controller's custom resources (`ls-token-refresher.io/v1alpha1`):
//! - [`LabelStudioToken`] (namespaced, a tenant's): which PAT Secret, which target Secret, timing;
//! - [`LabelStudioConnection`] (cluster-scoped, a cluster admin's): where Label Studio is, how to
//!   trust it, and which namespaces may use it.
//!
//! The split is the security boundary: a tenant who may create token resources chooses *which* of
//! their namespace's opted-in PATs is used and *where* in their namespace the access token goes,
//! never *where the PAT is sent* (that is the connection, which RBAC keeps with the cluster admin).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of both resources.
pub const GROUP: &str = "ls-token-refresher.io";
/// Label a PAT Secret must carry (value `"true"`) before the controller reads it. Only someone who
/// may update that Secret can set it, so creating a token resource never grants reading a Secret.
pub const LABEL_PAT_SOURCE: &str = "ls-token-refresher/pat-source";
/// Annotation that lets the controller write into an existing Secret it did not create: its value
/// must be the name of the one token resource (same namespace) allowed to write there.
pub const ANNOTATION_TARGET_OF: &str = "ls-token-refresher/target-of";
/// Annotation on a token resource: a new value (e.g. a timestamp) asks for one refresh now.
pub const ANNOTATION_REFRESH_NOW: &str = "ls-token-refresher/refresh-now";

/// A Label Studio access token kept fresh in a Secret of this namespace, from a PAT Secret of this
/// namespace, against the Label Studio a cluster admin's `LabelStudioConnection` names.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ls-token-refresher.io",
    version = "v1alpha1",
    kind = "LabelStudioToken",
    doc = "A Label Studio access token kept fresh in a Secret of this namespace, from an opted-in PAT Secret of this namespace, against the Label Studio of a cluster admin's LabelStudioConnection.",
    plural = "labelstudiotokens",
    shortname = "lstoken",
    category = "labelstudio",
    namespaced,
    status = "LabelStudioTokenStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Expires","type":"date","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.secretName"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LabelStudioTokenSpec {
    /// The cluster-scoped LabelStudioConnection (where Label Studio is), by name. Its
    /// namespaceSelector must match this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub connection_name: String,
    /// The Secret of this namespace holding the PAT. It must carry the label
    /// `ls-token-refresher/pat-source: "true"`.
    pub pat_secret_ref: PatSecretRef,
    /// The Secret of this namespace the access token is written to (keys `token`,
    /// `authorization`, `expires_at`). Created and owned by this resource; an existing Secret is
    /// written only if annotated `ls-token-refresher/target-of: <this resource's name>`.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Refresh when this fraction of the token's lifetime has passed (0.25–0.95; default: the
    /// controller's `--refresh-fraction`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.25, max = 0.95))]
    pub refresh_fraction: Option<f64>,
    /// Refresh at least this long before expiry, e.g. `30s` (default: the controller's `--min-lead`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub min_lead: Option<String>,
    /// Extra lead for consumers that mount the Secret (the kubelet's sync delay), e.g. `75s`
    /// (default: the controller's `--propagation-margin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub propagation_margin: Option<String>,
    /// Stop refreshing (the Secret keeps its last token until it expires).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// Rotate the PAT this long after it was issued (its `iat`), e.g. `720h` (at least `5s`); the
    /// new PAT is written back into the PAT Secret's key (nothing else). Opt-in; needs the PAT
    /// key to be written by a person's tool (kubectl, helm), not by a controller such as External
    /// Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub rotate_pat_every: Option<String>,
    /// Rotate the PAT when its own expiry is closer than this, e.g. `168h`; written back as for
    /// `rotatePatEvery`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub rotate_pat_before_expiry: Option<String>,
}

/// A key of a Secret in the token resource's own namespace (no namespace field, by design).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatSecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the PAT (default `pat`).
    #[serde(default = "default_pat_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_pat_key() -> String {
    "pat".into()
}

/// What the controller last did for a token resource. Never holds a token or a PAT.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelStudioTokenStatus {
    /// `Ready`: True while the target Secret holds a token the last attempt published and
    /// validated; False with a reason from the closed set otherwise. `PatRotation` (only with
    /// rotation on): how the last rotation ended (`rotated`, `recovered`; False: `refused`,
    /// `failed`, `write_back_failed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<TokenCondition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Expiry of the token in the target Secret (RFC 3339, Label Studio's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When the controller plans the next refresh (RFC 3339, Label Studio's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh_at: Option<String>,
    /// Expiry of the PAT (RFC 3339), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pat_expires_at: Option<String>,
    /// Issue time of the PAT in use (RFC 3339, its `iat`), when PAT rotation is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pat_issued_at: Option<String>,
    /// When the controller last replaced the PAT (a rotation, or a lost one repaired) and wrote
    /// the new one back (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pat_rotated_at: Option<String>,
    /// When the PAT is next due for rotation (RFC 3339, Label Studio's clock), when rotation is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_pat_rotation_at: Option<String>,
    /// The Label Studio user the PAT belongs to (from `whoami`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<LabelStudioUser>,
    /// When the last attempt failed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<String>,
    /// Failed attempts since the last success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_attempts: Option<u32>,
    /// The PAT Secret's resourceVersion the published token was made from (a change refreshes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pat_secret_resource_version: Option<String>,
    /// The last `ls-token-refresher/refresh-now` value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_request: Option<String>,
}

/// A status condition (the shape of `metav1.Condition`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenCondition {
    /// Condition type (`Ready`).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A reason from the closed set (snake_case, as in the metrics).
    pub reason: String,
    /// A fixed, secret-free explanation for that reason.
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation this condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The Label Studio user a PAT belongs to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelStudioUser {
    /// User id.
    pub id: i64,
    /// Username (omitted when empty: Label Studio's first admin often has none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
}

/// Where a Label Studio is and which namespaces may have tokens from it. Cluster-scoped: only a
/// cluster admin chooses where PATs are sent.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ls-token-refresher.io",
    version = "v1alpha1",
    kind = "LabelStudioConnection",
    doc = "Where a Label Studio is, how to trust it, and which namespaces' LabelStudioTokens may use it. Cluster-scoped: only cluster admins choose where PATs are sent.",
    plural = "labelstudioconnections",
    shortname = "lsconn",
    category = "labelstudio",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LabelStudioConnectionSpec {
    /// Label Studio's base URL, e.g. `http://label-studio.labelstudio.svc:8080` (a path prefix is kept).
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// PEM bundle of extra CAs to trust for this URL (a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub ca_bundle: Option<String>,
    /// Path every new token is tested against (default `/api/current-user/whoami`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub validate_path: Option<String>,
    /// Refuse a plain `http://` URL.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_https: bool,
    /// Namespaces whose token resources may use this connection, by their labels (e.g.
    /// `kubernetes.io/metadata.name: ml`, set by Kubernetes 1.21+). Absent or `{}`: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,
}

/// Namespaces by labels (all must match).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    /// Labels a namespace must carry, all of them.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl NamespaceSelector {
    /// Whether a namespace with `labels` is selected.
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    }
}

/// Both CustomResourceDefinitions as one YAML stream (JSON documents are YAML), for `kubectl
/// apply -f` and the chart's `crds/` files.
pub fn crd_documents() -> Vec<(&'static str, serde_json::Value)> {
    use kube::CustomResourceExt;
    vec![
        (
            "labelstudioconnections",
            serde_json::to_value(LabelStudioConnection::crd()).unwrap_or_default(),
        ),
        (
            "labelstudiotokens",
            serde_json::to_value(LabelStudioToken::crd()).unwrap_or_default(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chart installs the CRDs from files/crds/ (Helm cannot run the binary): they must be what
    /// the binary serves. `LSTR_BLESS=1 cargo test chart_crd_files` rewrites them.
    #[test]
    fn chart_crd_files_match_the_binary() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("charts/ls-token-refresher/files/crds");
        for (name, doc) in crd_documents() {
            let path = dir.join(format!("{name}.json"));
            let want = serde_json::to_string_pretty(&doc).unwrap() + "\n";
            if std::env::var_os("LSTR_BLESS").is_some() {
                std::fs::write(&path, &want).unwrap();
                continue;
            }
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                have == want,
                "{} differs from `ls-token-refresher crds`: run `LSTR_BLESS=1 cargo test chart_crd_files`",
                path.display()
            );
        }
    }

    #[test]
    fn selector_requires_every_label() {
        let sel = NamespaceSelector {
            match_labels: [("team".into(), "ml".into())].into(),
        };
        let ml: BTreeMap<String, String> = [("team".into(), "ml".into())].into();
        let other: BTreeMap<String, String> = [("team".into(), "web".into())].into();
        assert!(sel.matches(Some(&ml)));
        assert!(!sel.matches(Some(&other)));
        assert!(!sel.matches(None));
        assert!(NamespaceSelector::default().matches(None));
    }

    #[test]
    fn crds_have_schemas_printer_columns_and_short_names() {
        let docs = crd_documents();
        let token = &docs[1].1;
        assert_eq!(token["spec"]["scope"], "Namespaced");
        assert_eq!(token["spec"]["names"]["shortNames"][0], "lstoken");
        let v = &token["spec"]["versions"][0];
        assert_eq!(v["subresources"]["status"], serde_json::json!({}));
        let cols: Vec<&str> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(cols, ["Ready", "Reason", "Expires", "Target", "Age"]);
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert!(spec["properties"]["connectionName"]["description"]
            .as_str()
            .unwrap()
            .contains("LabelStudioConnection"));
        // No namespace field anywhere in the tenant's spec: references never leave the namespace.
        assert!(!spec.to_string().contains("\"namespace\""));
        let conn = &docs[0].1;
        assert_eq!(conn["spec"]["scope"], "Cluster");
    }
}
