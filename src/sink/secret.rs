//! Publishing to a Kubernetes Secret with server-side apply under a fixed field manager. We own
//! only our keys (`token`, `authorization`, `expires_at`), two annotations and one label of our
//! own (never `app.kubernetes.io/managed-by`, which Helm and Kustomize set on the Secrets they
//! create); other keys and other managers' fields are never touched. A conflict with another
//! manager is reported with the server's detail (it names fields and managers, never values), not
//! forced, unless the user asks for force. The chart creates the target (empty) so the Role needs
//! no `create`; if the target is missing and may not be created, the message says what to do.
//!
//! Fencing, for every writer (several `run` replicas, the controller): a write happens only while
//! [`Leadership::is_leader`] holds (checked immediately before it), never replaces a token whose
//! published expiry (`ls-token-refresher/expires-at`) is later than ours, and carries the
//! `metadata.resourceVersion` of the Secret it compared against, so a write that raced another
//! writer is refused (409) and evaluated again. Cost: one GET and one apply per refresh.

use std::sync::Arc;

use base64::Engine;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret as K8sSecret;
use kube::api::{Api, Patch, PatchParams};

use super::{Sink, SinkError, TokenSet};
use crate::{clock::rfc3339, cluster::MANAGER, leader::Leadership, metrics::Metrics};

/// Bound for one apply: kube's own client timeouts are tuned for watches (minutes).
const APPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// Writes evaluated again after losing a resourceVersion race: two writers race at most once per
/// refresh each, so a third loss means something keeps rewriting the Secret.
const MAX_RACES: usize = 3;

/// Annotation holding the token's expiry (RFC 3339), for humans and tooling.
pub const ANNOTATION_EXPIRES_AT: &str = "ls-token-refresher/expires-at";
/// Annotation holding when the token was obtained (RFC 3339).
pub const ANNOTATION_REFRESHED_AT: &str = "ls-token-refresher/refreshed-at";
/// Label marking Secrets whose token keys we keep current (our own key: Helm owns
/// `app.kubernetes.io/managed-by` on Secrets it created, and applying it would conflict).
pub const LABEL_MANAGED: &str = "ls-token-refresher/managed";

/// The Secret sink.
pub struct SecretSink {
    api: Api<K8sSecret>,
    namespace: String,
    name: String,
    force: bool,
    metrics: Arc<Metrics>,
    leadership: Leadership,
}

/// What the fencing check decided for one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// Write (with the compared resourceVersion as precondition).
    Write,
    /// Not the leader (or its margin ran out): write nothing.
    NotLeader,
    /// The Secret holds a token expiring later than ours: keep it.
    NewerPublished,
}

impl Fence {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Fence::Write => "write",
            Fence::NotLeader => "not_leader",
            Fence::NewerPublished => "newer_published",
        }
    }
}

/// The fencing decision: `published` is the target's `expires-at` annotation (if any), `ours` the
/// expiry of the token about to be written (None: a legacy token, which does not expire).
pub fn fence(leader: bool, published: Option<&str>, ours: Option<i64>) -> Fence {
    if !leader {
        return Fence::NotLeader;
    }
    match (published.and_then(parse_expiry), ours) {
        (Some(theirs), Some(ours)) if theirs > ours => Fence::NewerPublished,
        _ => Fence::Write,
    }
}

/// Our own annotation, in the one form we write (RFC 3339 UTC, whole seconds); anything else is
/// not ours to honour and gets overwritten.
fn parse_expiry(s: &str) -> Option<i64> {
    let t: jiff::Timestamp = s.parse().ok()?;
    let secs = t.as_second();
    (rfc3339(secs) == s).then_some(secs)
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
            leadership: Leadership::always(),
        }
    }

    /// Writes only while `leadership` leads (default: always, no election).
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.leadership = leadership;
        self
    }

    /// The target's `expires-at` annotation and resourceVersion (None when it does not exist).
    async fn published(&self) -> Result<Option<(Option<String>, Option<String>)>, SinkError> {
        let result = tokio::time::timeout(APPLY_TIMEOUT, self.api.get_opt(&self.name)).await;
        self.metrics
            .kube_call("get_secret", matches!(result, Ok(Ok(_))));
        match result {
            Ok(Ok(found)) => Ok(found.map(|s| {
                let exp = s
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION_EXPIRES_AT).cloned());
                (exp, s.metadata.resource_version)
            })),
            Ok(Err(e)) => Err(self.explain(e).await),
            Err(_) => Err(self.no_answer()),
        }
    }

    fn no_answer(&self) -> SinkError {
        SinkError {
            sink: "secret",
            summary: "the API server did not answer in time",
            message: format!(
                "Secret {}/{}: no answer from the API server within {APPLY_TIMEOUT:?}",
                self.namespace, self.name
            ),
        }
    }

    /// Publishes with fencing: see the module docs.
    async fn publish_fenced(&self, set: &TokenSet) -> Result<(), SinkError> {
        for _ in 0..MAX_RACES {
            let (exp, rv) = self.published().await?.unwrap_or_default();
            // Checked after the read, immediately before the write.
            let decision = fence(self.leadership.is_leader(), exp.as_deref(), set.expires_at);
            if decision != Fence::Write {
                self.metrics
                    .secret_writes_skipped_total
                    .with_label_values(&[decision.as_str()])
                    .inc();
                tracing::info!(
                    target = %self.describe(),
                    reason = decision.as_str(),
                    "not writing the target Secret: {}",
                    if decision == Fence::NotLeader {
                        "this replica does not hold the leader Lease"
                    } else {
                        "it holds a token that expires later than ours"
                    }
                );
                return Ok(());
            }
            match self.apply(set, false, rv.as_deref()).await {
                Err(Raced) => continue,
                Ok(r) => return r,
            }
        }
        Err(SinkError {
            sink: "secret",
            summary: "the target Secret keeps changing under us",
            message: format!(
                "Secret {}/{}: another writer changed it during each of {MAX_RACES} writes; is a second refresher without --leader-elect writing it?",
                self.namespace, self.name
            ),
        })
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

    /// One apply; `Err(Raced)` when `precondition` (a resourceVersion) is no longer current.
    async fn apply(
        &self,
        set: &TokenSet,
        dry_run: bool,
        precondition: Option<&str>,
    ) -> Result<Result<(), SinkError>, Raced> {
        let mut body = apply_body(&self.namespace, &self.name, set);
        if let Some(rv) = precondition {
            body["metadata"]["resourceVersion"] = rv.into();
        }
        let op = if dry_run {
            "dry_run_apply_secret"
        } else {
            "apply_secret"
        };
        let result = tokio::time::timeout(
            APPLY_TIMEOUT,
            self.api
                .patch(&self.name, &self.params(dry_run), &Patch::Apply(&body)),
        )
        .await;
        let result = match result {
            Ok(Ok(_)) => Ok(()),
            // A stale resourceVersion is a 409 too, but not a field-manager conflict ("Apply failed
            // with N conflict(s)"): the object changed since we compared.
            Ok(Err(kube::Error::Api(s)))
                if s.code == 409
                    && precondition.is_some()
                    && !s.message.starts_with("Apply failed") =>
            {
                self.metrics.kube_call(op, false);
                tracing::info!(target = %self.describe(), "the target Secret changed since it was read; comparing again");
                return Err(Raced);
            }
            Ok(Err(e)) => Err(self.explain(e).await),
            Err(_) => Err(self.no_answer()),
        };
        self.metrics.kube_call(op, result.is_ok());
        Ok(result)
    }

    /// Server-side dry-run of an apply: proves RBAC and conflicts without writing.
    pub async fn dry_run(&self, set: &TokenSet) -> Result<(), SinkError> {
        self.apply(set, true, None).await.unwrap_or(Ok(()))
    }

    /// Whether the target Secret is known to be missing (a GET answers 404). The API server's refusal of
    /// an apply that would create it names no verb (`secrets "x" is forbidden: `), so a 403 alone cannot
    /// tell "may not create" from "may not patch".
    async fn target_missing(&self) -> bool {
        matches!(
            tokio::time::timeout(APPLY_TIMEOUT, self.api.get_opt(&self.name)).await,
            Ok(Ok(None))
        )
    }

    async fn explain(&self, e: kube::Error) -> SinkError {
        let target = format!("Secret {}/{}", self.namespace, self.name);
        let missing = match &e {
            kube::Error::Api(s) if s.code == 403 => {
                s.message.contains("cannot create") || self.target_missing().await
            }
            _ => false,
        };
        let (summary, message) = match &e {
            kube::Error::Api(s) if s.code == 409 => (
                "conflict: another field manager owns the target Secret's token keys",
                format!(
                    "{target}: conflict: {}; another field manager owns some of our keys (token, authorization, expires_at): \
                     rename the target or set --target-secret-force (LS_TARGET_SECRET_FORCE) to take them over",
                    s.message
                ),
            ),
            kube::Error::Api(s) if s.code == 403 && missing => (
                "the target Secret does not exist and may not be created",
                format!(
                    "{target} does not exist and this identity may not create it: create it empty (the Helm chart does) rather \
                     than granting create on secrets, which RBAC cannot limit by name: {}",
                    s.message
                ),
            ),
            kube::Error::Api(s) if s.code == 403 => (
                "forbidden: the Role does not allow patching the target Secret",
                format!(
                    "{target}: forbidden: the Role must allow get and patch on secrets/{}: {}",
                    self.name, s.message
                ),
            ),
            _ => (
                "the API server refused or failed the write",
                format!("{target}: {e}"),
            ),
        };
        SinkError {
            sink: "secret",
            summary,
            message,
        }
    }
}

/// A write lost a resourceVersion race.
struct Raced;

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
            "labels": { LABEL_MANAGED: "true" },
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

    fn preflight(&self) -> BoxFuture<'_, Result<String, SinkError>> {
        Box::pin(async move {
            // A placeholder set: a dry run never stores anything.
            let probe = TokenSet {
                auth: crate::token::Authorization {
                    scheme: crate::token::Scheme::Bearer,
                    token: crate::secret::Secret::new("dry-run"),
                },
                expires_at: None,
                refreshed_at: 0,
            };
            self.dry_run(&probe).await.map(|()| {
                format!(
                    "server-side apply to Secret {}/{} allowed (dry run)",
                    self.namespace, self.name
                )
            })
        })
    }

    fn read_back(&self) -> BoxFuture<'_, Option<crate::secret::Secret>> {
        Box::pin(async move {
            let found = tokio::time::timeout(APPLY_TIMEOUT, self.api.get_opt(&self.name))
                .await
                .ok()?
                .ok()??;
            let bytes = found.data?.remove("token")?;
            let token = crate::secret::Secret::new(String::from_utf8(bytes.0).ok()?);
            (!token.is_empty()).then_some(token)
        })
    }

    fn publish<'a>(&'a self, set: &'a TokenSet) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.publish_fenced(set))
    }

    fn preflight_is_fatal(&self) -> bool {
        // The API server may be away for a moment at start-up; publishing retries anyway.
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        secret::Secret,
        token::{Authorization, Scheme},
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

    /// A Secret as the API server returns it, with our expiry annotation when given.
    fn secret_response(rv: &str, expires_at: Option<&str>) -> Response<Body> {
        let mut annotations = serde_json::Map::new();
        if let Some(e) = expires_at {
            annotations.insert(ANNOTATION_EXPIRES_AT.into(), e.into());
        }
        let body = serde_json::json!({"apiVersion":"v1","kind":"Secret",
            "metadata":{"name":"out","namespace":"ns","resourceVersion":rv,"annotations":annotations}});
        Response::builder()
            .status(200)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    fn status_response(code: u16, reason: &str, message: &str) -> Response<Body> {
        let body = serde_json::json!({"kind":"Status","apiVersion":"v1","status":"Failure",
            "message": message, "reason": reason, "code": code});
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    /// The sink sends nothing more (within 200 ms: its requests follow each other at once).
    async fn no_more_requests(
        handle: &mut tower_test::mock::Handle<Request<Body>, Response<Body>>,
    ) {
        let next =
            tokio::time::timeout(std::time::Duration::from_millis(200), handle.next_request());
        assert!(next.await.is_err(), "no further request (no write)");
    }

    fn skipped(metrics: &Metrics, why: Fence) -> u64 {
        metrics
            .secret_writes_skipped_total
            .with_label_values(&[why.as_str()])
            .get()
    }

    #[test]
    fn fence_decisions() {
        let at = |s: i64| rfc3339(s);
        // Not the leader: never write, whatever is published.
        assert_eq!(fence(false, None, Some(60)), Fence::NotLeader);
        assert_eq!(fence(false, Some(&at(0)), Some(60)), Fence::NotLeader);
        // A later published expiry is kept; equal or earlier is replaced.
        assert_eq!(fence(true, Some(&at(61)), Some(60)), Fence::NewerPublished);
        assert_eq!(fence(true, Some(&at(60)), Some(60)), Fence::Write);
        assert_eq!(fence(true, Some(&at(59)), Some(60)), Fence::Write);
        assert_eq!(fence(true, None, Some(60)), Fence::Write);
        // A legacy token (no expiry) has nothing to compare.
        assert_eq!(fence(true, Some(&at(61)), None), Fence::Write);
        // Only our canonical form counts: anything else is not ours and is overwritten.
        for odd in [
            "1970-01-01T00:01:01+00:00",
            "1970-01-01T00:01:01.5Z",
            "soon",
            "",
            "9999999999999",
        ] {
            assert_eq!(fence(true, Some(odd), Some(60)), Fence::Write, "{odd}");
        }
    }

    /// The apply carries the resourceVersion compared against; a stale one (409, not a field
    /// conflict) makes the sink read again, and a newer token found then is kept, not replaced.
    #[tokio::test]
    async fn a_lost_race_is_evaluated_again_and_a_newer_token_is_kept() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(mock, "ns");
        let metrics = Arc::new(Metrics::new());
        let sink = SecretSink::new(client, "ns", "out", false, metrics.clone());
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), http::Method::GET);
            send.send_response(secret_response("5", Some("1970-01-01T00:00:30Z")));
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), http::Method::PATCH);
            let body = http_body_util::BodyExt::collect(req.into_body())
                .await
                .unwrap()
                .to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["metadata"]["resourceVersion"], "5", "{body}");
            send.send_response(status_response(409, "Conflict",
                r#"Operation cannot be fulfilled on secrets "out": the object has been modified; please apply your changes to the latest version and try again"#));
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), http::Method::GET, "read again after the race");
            send.send_response(secret_response("6", Some("1970-01-01T00:02:00Z")));
            // No further request: the newer token stays.
            no_more_requests(&mut handle).await;
        });
        sink.publish(&set()).await.unwrap();
        server.await.unwrap();
        assert_eq!(skipped(&metrics, Fence::NewerPublished), 1);
    }

    /// A replica that is not the leader reads the target but never writes it.
    #[tokio::test]
    async fn a_standby_never_writes() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(mock, "ns");
        let metrics = Arc::new(Metrics::new());
        let sink = SecretSink::new(client, "ns", "out", false, metrics.clone())
            .with_leadership(Leadership::never());
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), http::Method::GET);
            send.send_response(secret_response("5", None));
            no_more_requests(&mut handle).await;
        });
        sink.publish(&set()).await.unwrap();
        server.await.unwrap();
        assert_eq!(skipped(&metrics, Fence::NotLeader), 1);
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
        // Labels and annotations carry no token, and the label is ours, not Helm's.
        assert!(!b["metadata"].to_string().contains("tok\""));
        assert_eq!(b["metadata"]["labels"][LABEL_MANAGED], "true");
        assert!(b["metadata"]["labels"]
            .get("app.kubernetes.io/managed-by")
            .is_none());
    }

    /// The request is a server-side apply with our field manager; a 409 becomes an actionable message.
    #[tokio::test]
    async fn apply_request_and_conflict_message() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(mock, "ns");
        let sink = SecretSink::new(client, "ns", "out", false, Default::default());
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(
                req.method(),
                http::Method::GET,
                "fencing reads the target first"
            );
            send.send_response(secret_response("7", None));
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
                "message":"Apply failed with 1 conflict: conflict with \"helm\" using v1: .data.token","reason":"Conflict","code":409});
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
        assert!(
            err.message
                .contains(r#"conflict with "helm" using v1: .data.token"#),
            "the server's detail names the field and manager: {err}"
        );
        assert!(err.summary.contains("conflict") && !err.summary.contains("ns/out"));
        server.await.unwrap();
    }

    /// A refused apply of a missing target says what to do, although the API server's refusal names no
    /// verb (this is what kube-apiserver answers when the Role may patch the name but not create).
    #[tokio::test]
    async fn forbidden_apply_of_a_missing_target_says_create_it() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(mock, "ns");
        let sink = SecretSink::new(client, "ns", "out", false, Default::default());
        let status = status_response;
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(
                req.method(),
                http::Method::GET,
                "fencing reads the target first"
            );
            send.send_response(status(404, "NotFound", r#"secrets "out" not found"#));
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), http::Method::PATCH);
            send.send_response(status(403, "Forbidden", r#"secrets "out" is forbidden: "#));
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(
                req.method(),
                http::Method::GET,
                "the sink looks the target up"
            );
            send.send_response(status(404, "NotFound", r#"secrets "out" not found"#));
        });
        let err = sink.publish(&set()).await.unwrap_err();
        assert!(
            err.message
                .contains("does not exist and this identity may not create it")
                && err.message.contains("create it empty")
                && !err.message.contains("or grant create"),
            "{err}"
        );
        assert_eq!(
            err.summary,
            "the target Secret does not exist and may not be created"
        );
        server.await.unwrap();
    }
}
