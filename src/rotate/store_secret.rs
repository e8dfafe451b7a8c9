//! The PAT Secret as a rotation store: server-side apply of the one PAT key (field manager
//! [`FIELD_MANAGER`], RBAC `patch` on that Secret by name) and the intent annotation.
//!
//! Two applies, with one manager, make the crash-safe order atomic where it matters: `begin`
//! applies the intent annotation with the (unchanged) PAT key, pinned to the resourceVersion read;
//! `persist` applies only the new PAT key, and server-side apply removes what a manager stops
//! applying, so the new PAT and the cleared intent land in one write.
//!
//! A Secret kept by someone else is not ours to rotate: another manager writing the key (External
//! Secrets, a 1Password or Vault operator, Argo CD, Flux) would put the old — by then blacklisted —
//! PAT back. Refused are a controller owner reference, and a key last written by a manager that is
//! not a person's tool (kubectl, helm) or ours.

use std::time::Duration;

use base64::Engine;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret as K8sSecret;
use kube::api::{Api, Patch, PatchParams};

use super::{Intent, PatStore, Refusal, StoreError, INTENT_ANNOTATION};
use crate::secret::Secret;

/// Our field manager on the PAT Secret. Not the target sink's: one manager applying two field
/// sets to one object would delete the other's fields.
pub const FIELD_MANAGER: &str = "ls-token-refresher-rotation";
/// Bound on one call (kube's client timeout is tuned for watches).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Managers whose writes are a person's (kubectl's sub-commands, helm) — or ours.
const PERSON_MANAGERS: [&str; 3] = ["kubectl", "helm", "ls-token-refresher"];

/// The PAT Secret store.
pub struct SecretStore {
    api: Api<K8sSecret>,
    namespace: String,
    name: String,
    key: String,
}

impl SecretStore {
    /// The key `key` of Secret `namespace/name`.
    pub fn new(client: kube::Client, namespace: &str, name: &str, key: &str) -> Self {
        SecretStore {
            api: Api::namespaced(client, namespace),
            namespace: namespace.into(),
            name: name.into(),
            key: key.into(),
        }
    }

    async fn get(&self) -> Result<Option<K8sSecret>, String> {
        match tokio::time::timeout(CALL_TIMEOUT, self.api.get_opt(&self.name)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer from the API server within {CALL_TIMEOUT:?}"
            )),
        }
    }

    async fn apply(&self, body: serde_json::Value, dry_run: bool) -> Result<(), kube::Error> {
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        if dry_run {
            params = params.dry_run();
        }
        match tokio::time::timeout(
            CALL_TIMEOUT,
            self.api.patch(&self.name, &params, &Patch::Apply(&body)),
        )
        .await
        {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(kube::Error::Service("timed out".into())),
        }
    }

    fn body(&self, annotations: serde_json::Value, data: serde_json::Value) -> serde_json::Value {
        let mut meta = serde_json::json!({ "name": self.name, "namespace": self.namespace });
        if !annotations.is_null() {
            meta["annotations"] = annotations;
        }
        let mut body =
            serde_json::json!({ "apiVersion": "v1", "kind": "Secret", "metadata": meta });
        if !data.is_null() {
            body["data"] = data;
        }
        body
    }

    fn pat_data(&self, pat: &str) -> serde_json::Value {
        let b64 = base64::engine::general_purpose::STANDARD.encode(pat.as_bytes());
        serde_json::json!({ self.key.clone(): b64 })
    }
}

/// Why `secret`'s key `key` is someone else's to write, or None.
pub fn foreign_owner(secret: &K8sSecret, key: &str) -> Option<Refusal> {
    if let Some(o) = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    {
        return Some(Refusal {
            reason: "owned_by_other",
            detail: format!(
                "the PAT Secret is controlled by {} {:?}, which would write the old, blacklisted PAT back: rotate the PAT in that object's source store instead",
                o.kind, o.name
            ),
        });
    }
    let field = format!("f:{key}");
    for entry in secret.metadata.managed_fields.iter().flatten() {
        let manager = entry.manager.as_deref().unwrap_or("");
        let owns = entry
            .fields_v1
            .as_ref()
            .and_then(|f| f.0.get("f:data"))
            .and_then(|d| d.get(&field))
            .is_some();
        let person = PERSON_MANAGERS.iter().any(|p| manager.starts_with(p));
        if owns && !person {
            return Some(Refusal {
                reason: "owned_by_other",
                detail: format!(
                    "the PAT key {key:?} is written by field manager {manager:?} (a controller such as External Secrets, a 1Password or Vault operator, or GitOps would put the old, blacklisted PAT back): rotate the PAT in that store instead (its next sync brings it here); if nothing manages the key any more, recreate the Secret with `kubectl create secret generic`"
                ),
            });
        }
    }
    None
}

impl PatStore for SecretStore {
    fn describe(&self) -> String {
        format!("Secret {}/{} key {:?}", self.namespace, self.name, self.key)
    }

    fn check(&self) -> BoxFuture<'_, Result<String, Refusal>> {
        Box::pin(async move {
            let secret = match self.get().await {
                Ok(Some(s)) => s,
                Ok(None) => {
                    return Err(Refusal {
                        reason: "not_found",
                        detail: format!("{} does not exist", self.describe()),
                    })
                }
                Err(e) => {
                    return Err(Refusal {
                        reason: "unavailable",
                        detail: format!("cannot read {}: {e}", self.describe()),
                    })
                }
            };
            if let Some(r) = foreign_owner(&secret, &self.key) {
                return Err(r);
            }
            let Some(current) = secret.data.as_ref().and_then(|d| d.get(&self.key)) else {
                return Err(Refusal {
                    reason: "not_found",
                    detail: format!("{} has no such key", self.describe()),
                });
            };
            let current = String::from_utf8_lossy(&current.0).into_owned();
            let body = self.body(serde_json::Value::Null, self.pat_data(&current));
            match self.apply(body, true).await {
                Ok(()) => Ok(format!("{}: a dry-run write-back was accepted", self.describe())),
                Err(kube::Error::Api(s)) if s.code == 403 => Err(Refusal {
                    reason: "forbidden",
                    detail: format!(
                        "writing back to {} is forbidden: the Role must allow patch on secrets/{} (the chart: rotation.every or rotation.beforeExpiry grants it): {}",
                        self.describe(),
                        self.name,
                        s.message
                    ),
                }),
                Err(e) => Err(Refusal {
                    reason: "dry_run_failed",
                    detail: format!("a dry-run write-back to {} failed: {e}", self.describe()),
                }),
            }
        })
    }

    fn begin<'a>(
        &'a self,
        intent: &'a Intent,
        pat: &'a Secret,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let err = |e: String| StoreError(format!("{}: {e}", self.describe()));
            // Every apply of ours carries the key: server-side apply would delete a field this
            // manager owns and leaves out. The value must still be the PAT being rotated, and the
            // resourceVersion pins it: a person's change in between wins.
            let secret = self
                .get()
                .await
                .map_err(err)?
                .ok_or_else(|| err("not found".into()))?;
            let held = secret
                .data
                .as_ref()
                .and_then(|d| d.get(&self.key))
                .map(|v| Secret::new(String::from_utf8_lossy(&v.0)));
            if held.as_ref() != Some(pat) {
                return Err(err(
                    "the PAT in the Secret changed since it was read; not rotating".into(),
                ));
            }
            let mut body = self.body(
                serde_json::json!({ INTENT_ANNOTATION: intent.encode() }),
                self.pat_data(pat.expose()),
            );
            body["metadata"]["resourceVersion"] =
                secret.metadata.resource_version.unwrap_or_default().into();
            self.apply(body, false)
                .await
                .map_err(|e| err(e.to_string()))
        })
    }

    fn intent(&self) -> BoxFuture<'_, Result<Option<Intent>, StoreError>> {
        Box::pin(async move {
            let secret = self
                .get()
                .await
                .map_err(|e| StoreError(format!("{}: {e}", self.describe())))?;
            Ok(secret
                .and_then(|s| s.metadata.annotations)
                .and_then(|a| a.get(INTENT_ANNOTATION).and_then(|v| Intent::decode(v))))
        })
    }

    fn persist<'a>(&'a self, pat: &'a Secret) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let body = self.body(serde_json::Value::Null, self.pat_data(pat.expose()));
            self.apply(body, false)
                .await
                .map_err(|e| StoreError(format!("{}: {e}", self.describe())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        FieldsV1, ManagedFieldsEntry, ObjectMeta, OwnerReference,
    };

    fn managed(manager: &str, key: &str) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Update".into()),
            fields_v1: Some(FieldsV1(serde_json::json!({
                "f:data": { format!("f:{key}"): {} }
            }))),
            ..Default::default()
        }
    }

    fn secret(entries: Vec<ManagedFieldsEntry>, owners: Vec<OwnerReference>) -> K8sSecret {
        K8sSecret {
            metadata: ObjectMeta {
                managed_fields: Some(entries),
                owner_references: Some(owners),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn people_and_we_may_own_the_key_controllers_may_not() {
        for ok in [
            "kubectl-create",
            "kubectl",
            "kubectl-client-side-apply",
            "helm",
            FIELD_MANAGER,
        ] {
            assert_eq!(
                foreign_owner(&secret(vec![managed(ok, "pat")], vec![]), "pat"),
                None,
                "{ok}"
            );
        }
        for bad in [
            "external-secrets",
            "onepassword-operator",
            "argocd-controller",
            "kustomize-controller",
            "",
        ] {
            let r = foreign_owner(&secret(vec![managed(bad, "pat")], vec![]), "pat").expect(bad);
            assert_eq!(r.reason, "owned_by_other");
            assert!(r.detail.contains(&format!("{bad:?}")), "{}", r.detail);
        }
        // Another key of the same Secret is someone else's business.
        assert_eq!(
            foreign_owner(
                &secret(vec![managed("external-secrets", "other")], vec![]),
                "pat"
            ),
            None
        );
        let owner = OwnerReference {
            kind: "ExternalSecret".into(),
            name: "ls-pat".into(),
            controller: Some(true),
            ..Default::default()
        };
        let r = foreign_owner(&secret(vec![], vec![owner.clone()]), "pat").unwrap();
        assert!(r.detail.contains("ExternalSecret"), "{}", r.detail);
        let not_controller = OwnerReference {
            controller: None,
            ..owner
        };
        assert_eq!(
            foreign_owner(&secret(vec![], vec![not_controller]), "pat"),
            None
        );
    }
}
