//! Publishing to a Kubernetes Secret with server-side apply under a fixed field manager. We own
//! only our keys (`token`, `authorization`, `expires_at`), two annotations and one label; other
//! keys and other managers' fields are never touched. A conflict with another manager is reported,
//! not forced, unless the user asks for force. If the Secret is missing, apply creates it (RBAC
//! `create`, granted in its own rule).

use std::sync::Arc;

use base64::Engine;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret as K8sSecret;
use kube::api::{Api, Patch, PatchParams};

use super::{rfc3339, Sink, SinkError, TokenSet};
use crate::{cluster::MANAGER, metrics::Metrics};

/// Annotation holding the token's expiry (RFC 3339), for humans and tooling.
pub const ANNOTATION_EXPIRES_AT: &str = "ls-token-refresher/expires-at";
/// Annotation holding when the token was obtained (RFC 3339).
pub const ANNOTATION_REFRESHED_AT: &str = "ls-token-refresher/refreshed-at";
/// Label marking Secrets we manage.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// The Secret sink.
pub struct SecretSink {
    api: Api<K8sSecret>,
    namespace: String,
    name: String,
    force: bool,
    metrics: Arc<Metrics>,
}

impl SecretSink {
    /// A sink for `namespace/name`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        force: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        SecretSink {
            api: Api::namespaced(client, namespace),
            namespace: namespace.into(),
            name: name.into(),
            force,
            metrics,
        }
    }

    fn params(&self, dry_run: bool) -> PatchParams {
        let mut p = PatchParams::apply(MANAGER);
        if self.force {
            p = p.force();
        }
        if dry_run {
            p = p.dry_run();
        }
        p
    }

    async fn apply(&self, set: &TokenSet, dry_run: bool) -> Result<(), SinkError> {
        let body = apply_body(&self.namespace, &self.name, set);
        let result = self
            .api
            .patch(&self.name, &self.params(dry_run), &Patch::Apply(&body))
            .await;
        self.metrics.kube_call("apply_secret", result.is_ok());
        result.map(|_| ()).map_err(|e| SinkError {
            sink: "secret",
            message: self.explain(e),
        })
    }

    /// Server-side dry-run of an apply: proves RBAC and conflicts without writing (used by `check`).
    pub async fn dry_run(&self, set: &TokenSet) -> Result<(), SinkError> {
        self.apply(set, true).await
    }

    fn explain(&self, e: kube::Error) -> String {
        let target = format!("Secret {}/{}", self.namespace, self.name);
        match &e {
            kube::Error::Api(s) if s.code == 409 => format!(
                "{target}: conflict: another field manager owns some of our keys (token, authorization, expires_at); \
                 rename the target or set --target-secret-force (LS_TARGET_SECRET_FORCE) to take them over"
            ),
            kube::Error::Api(s) if s.code == 403 => format!(
                "{target}: forbidden: the Role must allow get and patch on secrets/{} (and create on secrets): {}",
                self.name, s.message
            ),
            _ => format!("{target}: {e}"),
        }
    }
}

/// The partial object we apply: only fields we own.
pub fn apply_body(namespace: &str, name: &str, set: &TokenSet) -> serde_json::Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let mut annotations = serde_json::Map::new();
    if let Some(exp) = set.expires_at {
        annotations.insert(ANNOTATION_EXPIRES_AT.into(), rfc3339(exp).into());
    }
    annotations.insert(
        ANNOTATION_REFRESHED_AT.into(),
        rfc3339(set.refreshed_at).into(),
    );
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": { LABEL_MANAGED_BY: MANAGER },
            "annotations": annotations,
        },
        "data": {
            "token": b64(set.auth.token.expose()),
            "authorization": b64(set.auth.header_value().expose()),
            "expires_at": b64(&set.expires_at_rfc3339()),
        }
    })
}

impl Sink for SecretSink {
    fn kind(&self) -> &'static str {
        "secret"
    }

    fn describe(&self) -> String {
        format!("Secret {}/{}", self.namespace, self.name)
    }

    fn publish<'a>(&'a self, set: &'a TokenSet) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.apply(set, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        exchange::{Authorization, Scheme},
        secret::Secret,
    };
    use http::{Request, Response};
    use kube::client::Body;

    fn set() -> TokenSet {
        TokenSet {
            auth: Authorization {
                scheme: Scheme::Bearer,
                token: Secret::new("tok"),
            },
            expires_at: Some(60),
            refreshed_at: 0,
        }
    }

    #[test]
    fn body_owns_only_our_fields() {
        let b = apply_body("ns", "out", &set());
        assert_eq!(b["data"].as_object().unwrap().len(), 3);
        assert_eq!(
            b["data"]["authorization"],
            base64::engine::general_purpose::STANDARD.encode("Bearer tok")
        );
        assert_eq!(
            b["metadata"]["annotations"][ANNOTATION_EXPIRES_AT],
            "1970-01-01T00:01:00Z"
        );
        assert!(b.get("type").is_none(), "type is immutable and not ours");
        // Labels and annotations carry no token.
        assert!(!b["metadata"].to_string().contains("tok\""));
    }

    /// The request is a server-side apply with our field manager; a 409 becomes an actionable message.
    #[tokio::test]
    async fn apply_request_and_conflict_message() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(mock, "ns");
        let sink = SecretSink::new(client, "ns", "out", false, Default::default());
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), http::Method::PATCH);
            let uri = req.uri().to_string();
            assert!(
                uri.starts_with("/api/v1/namespaces/ns/secrets/out?"),
                "{uri}"
            );
            assert!(
                uri.contains("fieldManager=ls-token-refresher") && !uri.contains("force=true"),
                "{uri}"
            );
            assert_eq!(
                req.headers()["content-type"],
                "application/apply-patch+yaml"
            );
            let status = serde_json::json!({"kind":"Status","apiVersion":"v1","status":"Failure",
                "message":"Apply failed with 1 conflict","reason":"Conflict","code":409});
            send.send_response(
                Response::builder()
                    .status(409)
                    .body(Body::from(serde_json::to_vec(&status).unwrap()))
                    .unwrap(),
            );
        });
        let err = sink.publish(&set()).await.unwrap_err();
        assert!(
            err.message.contains("conflict") && err.message.contains("LS_TARGET_SECRET_FORCE"),
            "{err}"
        );
        server.await.unwrap();
    }
}
