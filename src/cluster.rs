//! Kubernetes plumbing shared by the Secret source and sink: the client (in-cluster service account
//! or `KUBECONFIG`, via kube's standard inference), the default namespace, and Events attached to
//! our pod (or the Secret) when something needs a human.

use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::{metrics::Metrics, notify::Notifier, reason::Reason};

/// Where this process runs in the cluster (downward API), for Events and default namespaces.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// This pod's name (downward API), so Kubernetes Events can be attached to it.
    #[arg(long, env = "LS_POD_NAME", value_name = "NAME")]
    pub pod_name: Option<String>,

    /// This pod's namespace (downward API); also the default namespace for Secret references.
    #[arg(long, env = "LS_POD_NAMESPACE", value_name = "NAMESPACE")]
    pub pod_namespace: Option<String>,
}

/// Field manager for server-side apply and the Events' reporting controller.
pub const MANAGER: &str = "ls-token-refresher";

/// Bound for publishing one Event.
const EVENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Could not configure a Kubernetes client.
#[derive(Debug, thiserror::Error)]
#[error(
    "Kubernetes client: {0} (in a pod, mount a service account token; elsewhere set KUBECONFIG)"
)]
pub struct ClusterError(String);

/// A client and the namespace Secret references default to.
#[derive(Clone)]
pub struct Cluster {
    /// The client.
    pub client: kube::Client,
    /// `--pod-namespace`, else the in-cluster namespace file, else the kubeconfig context's namespace.
    pub namespace: String,
}

impl Cluster {
    /// Infers the configuration like kubectl does.
    pub async fn connect(pod_namespace: Option<&str>) -> Result<Self, ClusterError> {
        let config = kube::Config::infer()
            .await
            .map_err(|e| ClusterError(e.to_string()))?;
        let namespace = pod_namespace
            .map(str::to_owned)
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config).map_err(|e| ClusterError(e.to_string()))?;
        Ok(Cluster { client, namespace })
    }
}

/// Publishes Kubernetes Events (events.k8s.io/v1) about failures and recoveries.
pub struct EventNotifier {
    recorder: Recorder,
    regarding: ObjectReference,
    metrics: Arc<Metrics>,
}

impl EventNotifier {
    /// Events regarding `regarding` (our pod when known, else the PAT Secret).
    pub fn new(
        cluster: &Cluster,
        regarding: ObjectReference,
        instance: Option<String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance,
        };
        EventNotifier {
            recorder: Recorder::new(cluster.client.clone(), reporter),
            regarding,
            metrics,
        }
    }

    async fn publish(&self, type_: EventType, reason: String, note: &'static str) {
        publish_event(
            &self.recorder,
            &self.regarding,
            type_,
            reason,
            note,
            &self.metrics,
        )
        .await;
    }
}

/// Publishes one Event about `regarding`, best effort and bounded in time (a slow API server must
/// not hold up a refresh). The note is fixed text: Events are readable by many, so no server
/// text, URLs or names.
pub async fn publish_event(
    recorder: &Recorder,
    regarding: &ObjectReference,
    type_: EventType,
    reason: String,
    note: &'static str,
    metrics: &Metrics,
) {
    let ev = Event {
        type_,
        reason,
        note: Some(note.to_owned()),
        action: "RefreshToken".into(),
        secondary: None,
    };
    let ok = tokio::time::timeout(EVENT_TIMEOUT, recorder.publish(&ev, regarding)).await;
    let ok = matches!(ok, Ok(Ok(())));
    metrics.kube_call("event", ok);
    if !ok {
        tracing::debug!("could not publish a Kubernetes Event");
    }
}

/// `revoked_pat` → `RevokedPat` (Event reasons are PascalCase).
pub fn event_reason(reason: Reason) -> String {
    pascal_case(reason.as_str())
}

/// `target_not_owned` → `TargetNotOwned`.
pub fn pascal_case(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

impl Notifier for EventNotifier {
    fn warning(&self, reason: Reason, note: &'static str) -> BoxFuture<'_, ()> {
        Box::pin(self.publish(EventType::Warning, event_reason(reason), note))
    }
    fn recovered(&self, note: &'static str) -> BoxFuture<'_, ()> {
        Box::pin(self.publish(EventType::Normal, "TokenRefreshed".into(), note))
    }
    fn rotation(
        &self,
        warning: bool,
        reason: &'static str,
        note: &'static str,
    ) -> BoxFuture<'_, ()> {
        let kind = if warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        Box::pin(self.publish(kind, reason.into(), note))
    }
}

/// Reference to a pod, for Events.
pub fn pod_ref(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

/// Reference to a Secret, for Events.
pub fn secret_ref(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Secret".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_reasons_are_pascal_case() {
        assert_eq!(event_reason(Reason::RevokedPat), "RevokedPat");
        assert_eq!(event_reason(Reason::SourceUnavailable), "SourceUnavailable");
        assert_eq!(event_reason(Reason::Tls), "Tls");
    }
}
