//! PAT from a Kubernetes Secret, watched (not polled) with the field selector
//! `metadata.name=<name>`, which is what lets RBAC restrict us with `resourceNames`. A changed PAT
//! is published at once; a deleted Secret or missing key is reported (the last good token stays
//! published until its own expiry) and recovers when the Secret comes back.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret as K8sSecret;
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api,
};
use tokio_util::sync::CancellationToken;

use super::{channel, PatHandle, PatPublisher, PatState, Problem};
use crate::{metrics::Metrics, secret::Secret};

/// Bound for a one-off GET: kube's client timeout is tuned for watches (minutes).
const KUBE_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Which Secret and key to read.
#[derive(Debug, Clone)]
pub struct SecretKeyRef {
    /// Namespace.
    pub namespace: String,
    /// Secret name.
    pub name: String,
    /// Key inside `data`.
    pub key: String,
}

impl std::fmt::Display for SecretKeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Secret {}/{} key {:?}",
            self.namespace, self.name, self.key
        )
    }
}

/// The PAT state a Secret object gives (key names may be listed; values never are).
pub fn extract(r: &SecretKeyRef, secret: &K8sSecret) -> PatState {
    let data = secret.data.as_ref();
    match data.and_then(|d| d.get(&r.key)) {
        Some(bytes) => match std::str::from_utf8(&bytes.0) {
            Ok(s) if !s.trim().is_empty() => PatState::Ready(Secret::new(s)),
            Ok(_) => PatState::Invalid(Problem::new(
                "the PAT Secret's value is empty",
                format!("{r} is empty"),
            )),
            Err(_) => PatState::Invalid(Problem::new(
                "the PAT Secret's value is not text",
                format!("{r} is not UTF-8 text"),
            )),
        },
        None => {
            let keys: Vec<&str> = data
                .map(|d| d.keys().map(String::as_str).collect())
                .unwrap_or_default();
            PatState::Unavailable(Problem::new(
                "the PAT Secret lacks the configured key",
                format!(
                    "{r} is missing (keys present: [{}]); set --pat-secret-key (LS_PAT_SECRET_KEY)",
                    keys.join(", ")
                ),
            ))
        }
    }
}

/// Starts the watch; the task ends with `shutdown`.
pub fn spawn(
    client: kube::Client,
    r: SecretKeyRef,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> PatHandle {
    let (publisher, handle) = channel("secret", r.to_string());
    let api: Api<K8sSecret> = Api::namespaced(client, &r.namespace);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={}", r.name));
    // kube's default backoff retries a broken watch (API server down) for ever, with jitter.
    let stream = watcher(api.clone(), cfg).default_backoff();
    tokio::spawn(drive(stream, api, r, publisher, metrics, shutdown));
    handle
}

/// Applies watch events to the publisher. Takes any stream, so unit tests feed events directly.
pub async fn drive<S>(
    stream: S,
    api: Api<K8sSecret>,
    r: SecretKeyRef,
    publisher: PatPublisher,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) where
    S: Stream<Item = Result<watcher::Event<K8sSecret>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream);
    let mut seen_in_init = false;
    let mut last_error: Option<String> = None;
    loop {
        let state = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = publisher.reread_requested() => {
                match tokio::time::timeout(KUBE_CALL_TIMEOUT, api.get_opt(&r.name)).await.unwrap_or_else(|_| Err(kube::Error::Service("timed out".into()))) {
                    Ok(obj) => {
                        metrics.kube_call("get_secret", true);
                        Some(obj.map(|s| extract(&r, &s)).unwrap_or_else(|| PatState::Unavailable(Problem::new("the PAT Secret was not found", format!("{r}: Secret not found")))))
                    }
                    Err(e) => {
                        metrics.kube_call("get_secret", false);
                        tracing::warn!(reason = "source_unavailable", "re-reading {r} failed: {e}");
                        None
                    }
                }
            }
            ev = stream.next() => match ev {
                None => return,
                Some(Ok(ev)) => {
                    if last_error.take().is_some() {
                        tracing::info!("watch on {r} is working again");
                    }
                    match ev {
                        watcher::Event::Init => { seen_in_init = false; None }
                        watcher::Event::InitApply(s) => { seen_in_init = true; Some(extract(&r, &s)) }
                        watcher::Event::InitDone => {
                            metrics.kube_call("watch_secret", true);
                            (!seen_in_init).then(|| PatState::Unavailable(Problem::new("the PAT Secret was not found", format!("{r}: Secret not found"))))
                        }
                        watcher::Event::Apply(s) => Some(extract(&r, &s)),
                        watcher::Event::Delete(_) => Some(PatState::Unavailable(Problem::new("the PAT Secret was deleted", format!("{r}: Secret was deleted")))),
                    }
                }
                Some(Err(e)) => {
                    metrics.kube_call("watch_secret", false);
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(&msg) {
                        tracing::warn!(reason = "source_unavailable", "watching {r} failed (retrying): {msg}");
                    }
                    last_error = Some(msg.clone());
                    // Before the first answer, a failing watch (RBAC, no such namespace) is the state;
                    // after it, the API being away says nothing about the PAT, so keep what we have.
                    matches!(publisher_state(&publisher), PatState::Pending)
                        .then(|| PatState::Unavailable(Problem::new("the PAT Secret cannot be watched", format!("cannot watch {r}: {msg}"))))
                }
            }
        };
        if let Some(state) = state {
            let result = if matches!(state, PatState::Ready(_)) {
                "changed"
            } else {
                "unavailable"
            };
            let describe = match &state {
                PatState::Unavailable(m) | PatState::Invalid(m) => Some(m.detail.clone()),
                _ => None,
            };
            if publisher.set(state) {
                metrics
                    .source_reloads_total
                    .with_label_values(&["secret", result])
                    .inc();
                match describe {
                    Some(m) => tracing::warn!(reason = "source_unavailable", "{m}"),
                    None => tracing::info!("PAT read from {r}"),
                }
            }
        }
    }
}

fn publisher_state(p: &PatPublisher) -> PatState {
    p.tx.borrow().clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn secret(key: &str, value: &str) -> K8sSecret {
        K8sSecret {
            data: Some(BTreeMap::from([(
                key.to_owned(),
                ByteString(value.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    }

    fn kref() -> SecretKeyRef {
        SecretKeyRef {
            namespace: "ns".into(),
            name: "pat".into(),
            key: "pat".into(),
        }
    }

    #[test]
    fn extracts_key_and_explains_problems() {
        assert_eq!(
            extract(&kref(), &secret("pat", "abc\n")),
            PatState::Ready(Secret::new("abc"))
        );
        match extract(&kref(), &secret("token", "abc")) {
            PatState::Unavailable(p) => {
                let m = &p.detail;
                assert!(
                    m.contains("[token]") && m.contains("LS_PAT_SECRET_KEY") && !m.contains("abc"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(extract(&kref(), &secret("pat", " ")), PatState::Invalid(m) if m.detail.contains("empty"))
        );
        assert!(matches!(
            extract(&kref(), &K8sSecret::default()),
            PatState::Unavailable(_)
        ));
    }

    /// The event stream drives the state: init without the object → not found; apply → ready;
    /// delete → unavailable; re-created → ready again. A watch error after that keeps the PAT.
    #[tokio::test]
    async fn watch_events_drive_state() {
        use kube::client::Body;
        let (mock, _handle) = tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
        let client = kube::Client::new(mock, "ns");
        let api: Api<K8sSecret> = Api::namespaced(client, "ns");
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let (publisher, mut handle) = channel("secret", "test".into());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(drive(
            rx,
            api,
            kref(),
            publisher,
            Default::default(),
            shutdown.clone(),
        ));

        let send = |e| tx.unbounded_send(Ok(e)).unwrap();
        send(watcher::Event::Init);
        send(watcher::Event::InitDone);
        handle.changed().await;
        assert!(
            matches!(handle.current(), PatState::Unavailable(m) if m.detail.contains("not found"))
        );
        send(watcher::Event::Apply(secret("pat", "one")));
        handle.changed().await;
        assert_eq!(handle.current(), PatState::Ready(Secret::new("one")));
        send(watcher::Event::Delete(secret("pat", "one")));
        handle.changed().await;
        assert!(
            matches!(handle.current(), PatState::Unavailable(m) if m.summary.contains("deleted"))
        );
        send(watcher::Event::Apply(secret("pat", "two")));
        handle.changed().await;
        assert_eq!(handle.current(), PatState::Ready(Secret::new("two")));
        tx.unbounded_send(Err(watcher::Error::NoResourceVersion))
            .unwrap();
        send(watcher::Event::Apply(secret("pat", "three")));
        handle.changed().await;
        assert_eq!(
            handle.current(),
            PatState::Ready(Secret::new("three")),
            "error kept the PAT, next event applied"
        );
        shutdown.cancel();
        task.await.unwrap();
    }
}
