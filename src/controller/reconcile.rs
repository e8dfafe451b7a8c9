//! One reconcile of one `LabelStudioToken`: refuse what the rules refuse, decide from the caches
//! whether a refresh is due, and when it is: PAT → exchange → validate → write the target Secret →
//! status, then requeue at the next refresh time. Status is patched only when something a reader
//! cares about changed (the condition, or a new token: once per refresh).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    api::{Api, PartialObjectMeta, Patch, PatchParams, PostParams},
    runtime::{
        controller::Action,
        events::{EventType, Recorder, Reporter},
        reflector::{ObjectRef, Store},
    },
    Resource, ResourceExt,
};
use tokio::sync::Semaphore;

use super::{
    guard::{self, Refusal, TargetAccess},
    resources::{
        LabelStudioConnection, LabelStudioToken, LabelStudioTokenStatus, LabelStudioUser,
        TokenCondition, ANNOTATION_REFRESH_NOW,
    },
    rotation::{self, RotationMemory},
    ControllerMetrics, Settings, REFUSAL_RECHECK,
};
use crate::{
    clock::{rfc3339, unix_now},
    cluster::{pascal_case, publish_event, MANAGER},
    exchange::{ClientConfig, Exchange, ExchangeError, HttpExchange},
    jwt::{self, Usable},
    leader::Leadership,
    metrics::Metrics,
    reason::Reason,
    refresher::timing::{believable, MIN_REFRESH_INTERVAL, SKEW_TOLERANCE_SECS},
    rotate::Access,
    schedule::{self, Backoff, Plan, Policy},
    secret::Secret as SecretText,
    sink::secret::{apply_body, ANNOTATION_EXPIRES_AT, ANNOTATION_REFRESHED_AT},
    source::{secret::SecretKeyRef, PatState},
    token::{Authorization, Scheme, TokenSet},
    values::{ApiPath, BaseUrl},
};

/// Bound for one Kubernetes call of the reconciler (kube's own timeouts are tuned for watches).
const KUBE_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// A token resource's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// What the controller remembers per token resource between reconciles (all of it can be
/// re-derived from the target Secret and the status after a restart).
#[derive(Default)]
struct Memory {
    backoff: Backoff,
    /// The expiry and issue time of the token this process last published.
    published: Option<(i64, Option<i64>)>,
    /// No exchange before this (the next refresh, or the end of a backoff), whatever triggers a
    /// reconcile meanwhile: our own Secret and status writes come back as watch events, and a
    /// status patch that fails must not turn each of them into another exchange.
    not_before: Option<tokio::time::Instant>,
    /// The PAT Secret resourceVersion and refresh-now value the last attempt acted on (the status
    /// says the same unless its patch failed).
    acted_pat_rv: Option<String>,
    acted_request: Option<String>,
    /// PAT rotation (only with `spec.rotatePat*`).
    rotation: RotationMemory,
}

/// A client per connection, rebuilt when the connection changes.
struct ConnClient {
    resource_version: String,
    exchange: HttpExchange,
    /// Label Studio's clock minus ours (seconds; 0 within the tolerance).
    offset: f64,
}

/// What every scope's reconciles share: the client, connections and namespaces caches, the
/// exchange cap, the HTTP clients, the per-token memory.
pub struct Shared {
    client: kube::Client,
    pub(super) settings: Arc<Settings>,
    /// The fencing check made right before every write.
    leadership: Leadership,
    /// True once every cache of this term holds its first list.
    synced: tokio::sync::watch::Receiver<bool>,
    connections: Store<LabelStudioConnection>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    metrics: Arc<Metrics>,
    cmetrics: Arc<ControllerMetrics>,
    recorder: Recorder,
    exchanges: Semaphore,
    clients: Mutex<HashMap<String, Arc<Mutex<ConnClient>>>>,
    memory: Mutex<HashMap<TokenKey, Memory>>,
}

impl Shared {
    /// Drops what is kept about a deleted resource: its memory and its metric series.
    pub(super) fn forget(&self, key: &TokenKey) {
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        self.cmetrics.forget(&key.namespace, &key.name);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        client: kube::Client,
        settings: Arc<Settings>,
        leadership: Leadership,
        synced: tokio::sync::watch::Receiver<bool>,
        connections: Store<LabelStudioConnection>,
        namespaces: Store<PartialObjectMeta<Namespace>>,
        metrics: Arc<Metrics>,
        cmetrics: Arc<ControllerMetrics>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: settings.pod_name.clone(),
            },
        );
        let permits = settings.args.max_concurrent_exchanges.0 as usize;
        Shared {
            client,
            settings,
            leadership,
            synced,
            connections,
            namespaces,
            metrics,
            cmetrics,
            recorder,
            exchanges: Semaphore::new(permits),
            clients: Mutex::new(HashMap::new()),
            memory: Mutex::new(HashMap::new()),
        }
    }
}

/// One scope's context (every namespace, or one watched namespace): its caches of opted-in PAT
/// Secrets and target Secret metadata, and what all scopes share. One
/// reflector per cache and scope: a store fed by two watchers would let one's relist drop the
/// other's objects.
pub struct Ctx {
    shared: Arc<Shared>,
    pats: Store<Secret>,
    targets: Store<PartialObjectMeta<Secret>>,
}

impl std::ops::Deref for Ctx {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Ctx {
    pub(super) fn new(
        shared: Arc<Shared>,
        pats: Store<Secret>,
        targets: Store<PartialObjectMeta<Secret>>,
    ) -> Self {
        Ctx {
            shared,
            pats,
            targets,
        }
    }

    fn memory<R>(&self, key: &TokenKey, f: impl FnOnce(&mut Memory) -> R) -> R {
        let mut g = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        f(g.entry(key.clone()).or_default())
    }

    /// The HTTP client for `conn` (built once per connection resourceVersion).
    fn client_for(&self, conn: &LabelStudioConnection) -> Result<Arc<Mutex<ConnClient>>, Refusal> {
        let name = conn.name_any();
        let rv = conn.resource_version().unwrap_or_default();
        let mut g = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.get(&name) {
            if c.lock().unwrap_or_else(|p| p.into_inner()).resource_version == rv {
                return Ok(c.clone());
            }
        }
        let base: BaseUrl = conn.spec.url.parse().map_err(|_| {
            Refusal::ConnectionInvalid(
                "the LabelStudioConnection's spec.url is not a valid http(s) base URL",
            )
        })?;
        if conn.spec.require_https && !base.is_https() {
            return Err(Refusal::ConnectionInvalid(
                "the LabelStudioConnection requires https but spec.url is http://",
            ));
        }
        let validate_path = match &conn.spec.validate_path {
            None => "/api/current-user/whoami".to_owned(),
            Some(p) => {
                p.parse::<ApiPath>()
                    .map_err(|_| {
                        Refusal::ConnectionInvalid(
                        "the LabelStudioConnection's spec.validatePath is not an absolute API path",
                    )
                    })?
                    .0
            }
        };
        let mut config = ClientConfig::new(base);
        config.request_timeout = self.settings.args.request_timeout.0;
        config.connect_timeout = self.settings.args.connect_timeout.0;
        config.validate_path = Some(validate_path);
        config.ca_pem = conn.spec.ca_bundle.as_ref().map(|s| s.as_bytes().to_vec());
        let exchange = HttpExchange::new(config, self.metrics.clone()).map_err(|_| {
            Refusal::ConnectionInvalid(
                "the LabelStudioConnection's spec.caBundle holds no usable PEM certificate",
            )
        })?;
        let c = Arc::new(Mutex::new(ConnClient {
            resource_version: rv,
            exchange,
            offset: 0.0,
        }));
        g.insert(name, c.clone());
        Ok(c)
    }
}

/// Why a reconcile could not finish (only Kubernetes failures; Label Studio's are status).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A Kubernetes call failed.
    #[error("Kubernetes API: {0}")]
    Kube(String),
}

/// After a Kubernetes failure: try again soon (the rate limit bounds the load).
pub fn error_policy(_t: Arc<LabelStudioToken>, e: &ReconcileError, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!("reconcile failed: {e}");
    Action::requeue(Duration::from_secs(5 + fastrand::u64(0..10)))
}

/// The published token as the target Secret's annotations tell it: (`exp`, `iat`≈refreshed-at).
fn published_from(meta: &PartialObjectMeta<Secret>) -> Option<(i64, Option<i64>)> {
    let a = meta.metadata.annotations.as_ref()?;
    let ts = |k: &str| {
        a.get(k)
            .and_then(|v| v.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_second())
    };
    Some((ts(ANNOTATION_EXPIRES_AT)?, ts(ANNOTATION_REFRESHED_AT)))
}

/// The reconcile.
pub async fn reconcile(
    token: Arc<LabelStudioToken>,
    ctx: Arc<Ctx>,
) -> Result<Action, ReconcileError> {
    let timer = ctx.cmetrics.reconcile_duration_seconds.start_timer();
    let result = reconcile_inner(&token, &ctx).await;
    timer.observe_duration();
    ctx.cmetrics.token_resources.set(
        i64::try_from(ctx.memory.lock().unwrap_or_else(|p| p.into_inner()).len())
            .unwrap_or(i64::MAX),
    );
    result
}

async fn reconcile_inner(token: &LabelStudioToken, ctx: &Ctx) -> Result<Action, ReconcileError> {
    let key = super::key_of(token);
    if !ctx.leadership.is_leader() {
        // A replica whose lease margin ran out neither exchanges nor writes; the controller stops.
        return Ok(Action::await_change());
    }
    // Decide only from complete caches: a target Secret not listed yet would look missing, and its
    // token due (a restart would then exchange tokens that still have minutes left).
    // (One flag set by one waiter: kube's `Store::wait_until_ready` wakes only the last of several
    // concurrent waiters, and reconciles of many resources start together.)
    let _ = ctx.synced.clone().wait_for(|ready| *ready).await;
    if token.meta().deletion_timestamp.is_some() {
        // The target Secret goes with it (owner reference, garbage collector).
        ctx.forget(&key);
        return Ok(Action::await_change());
    }
    let status = token.status.clone().unwrap_or_default();
    let policy = match guard::policy_for(&token.spec, &ctx.settings.policy) {
        Ok(p) => p,
        Err(r) => return refuse(token, ctx, &status, r, None).await,
    };
    let rotation_policy = match guard::rotation_for(&token.spec) {
        Ok(p) => p,
        Err(r) => return refuse(token, ctx, &status, r, None).await,
    };
    if token.spec.suspend {
        let cond = condition(token, &status, false, "suspended", "spec.suspend is true: not refreshing; the Secret keeps its last token until it expires");
        write_status_if_changed(token, ctx, &status, cond, |_| {}).await?;
        return Ok(Action::await_change());
    }
    // Where Label Studio is: the admin's connection, if it admits this namespace.
    let Some(conn) = ctx
        .connections
        .get(&ObjectRef::new(&token.spec.connection_name))
    else {
        return refuse(token, ctx, &status, Refusal::ConnectionNotFound, None).await;
    };
    let ns_meta = ctx.namespaces.get(&ObjectRef::new(&key.namespace));
    if !guard::connection_admits(
        &conn.spec,
        ns_meta.as_ref().and_then(|n| n.metadata.labels.as_ref()),
    ) {
        return refuse(token, ctx, &status, Refusal::ConnectionNotAllowed, None).await;
    }
    let conn_client = match ctx.client_for(&conn) {
        Ok(c) => c,
        Err(r) => return refuse(token, ctx, &status, r, None).await,
    };
    // The target: ours, or refused.
    let target_meta = ctx
        .targets
        .get(&ObjectRef::new(&token.spec.secret_name).within(&key.namespace));
    let uid = token.uid().unwrap_or_default();
    let target_access =
        guard::target_access(target_meta.as_ref().map(|m| &m.metadata), &key.name, &uid);
    if target_access == TargetAccess::Refuse {
        return refuse_target(token, ctx, &status).await;
    }
    // The PAT: from an opted-in Secret of this namespace only (the cache holds no other).
    let pat_secret = ctx
        .pats
        .get(&ObjectRef::new(&token.spec.pat_secret_ref.name).within(&key.namespace))
        .filter(|s| guard::pat_secret_opted_in(&s.metadata));
    let offset = conn_client.lock().unwrap_or_else(|p| p.into_inner()).offset;
    let ls_now = unix_now() + offset;
    let r = SecretKeyRef {
        namespace: key.namespace.clone(),
        name: token.spec.pat_secret_ref.name.clone(),
        key: token.spec.pat_secret_ref.key.clone(),
    };

    // PAT rotation (opt-in): a rotator that writes back only into this resource's own PAT Secret
    // key (the guard says where), built once per connection, PAT Secret and policy.
    let write_back = pat_secret
        .as_ref()
        .and_then(|s| guard::pat_write_back(&key.namespace, &token.spec, &s.metadata));
    let slot = match (rotation_policy, write_back) {
        (Some(rp), Some(wb)) => {
            let identity = rotation::Identity {
                connection: (conn.name_any(), conn.resource_version().unwrap_or_default()),
                write_back: wb.clone(),
                policy: rp,
            };
            Some(ctx.memory(&key, |m| {
                m.rotation.slot(&identity, || {
                    let exchange = conn_client
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .exchange
                        .clone();
                    rotation::build(
                        ctx.client.clone(),
                        &wb,
                        exchange,
                        rp,
                        ctx.metrics.clone(),
                        ctx.leadership.clone(),
                    )
                })
            }))
        }
        _ => {
            ctx.memory(&key, |m| m.rotation.clear());
            None
        }
    };
    // With rotation on, the PAT in use: the Secret's, or the one our rotation replaced it with
    // (until the Secret shows it).
    let pat_now = slot.as_ref().and(pat_secret.as_ref()).and_then(|s| {
        match crate::source::secret::extract(&r, s) {
            PatState::Ready(p) => Some(ctx.memory(&key, |m| m.rotation.pat_to_use(p))),
            _ => None,
        }
    });

    // Is a refresh due?
    let published = ctx
        .memory(&key, |m| m.published)
        .or_else(|| target_meta.as_ref().and_then(|m| published_from(m)));
    let pat_rv = pat_secret.as_ref().and_then(|s| s.resource_version());
    let refresh_request = token.annotations().get(ANNOTATION_REFRESH_NOW).cloned();
    let (not_before, acted_pat_rv, acted_request) = ctx.memory(&key, |m| {
        (
            m.not_before,
            m.acted_pat_rv.clone(),
            m.acted_request.clone(),
        )
    });
    let acted_pat_rv = acted_pat_rv.or_else(|| status.pat_secret_resource_version.clone());
    let acted_request = acted_request.or_else(|| status.last_refresh_request.clone());
    let pat_changed = pat_rv.is_some() && pat_rv != acted_pat_rv;
    // A new PAT from a rotation is used at once (proves it; the published token is its own).
    let new_pat = ctx.memory(&key, |m| m.rotation.refresh_pending);
    let requested = (refresh_request.is_some() && refresh_request != acted_request) || new_pat;
    let now = tokio::time::Instant::now();
    if !pat_changed && !requested {
        if let Some(nb) = not_before.filter(|nb| *nb > now) {
            return Ok(Action::requeue(nb - now));
        }
        if not_before.is_none() && !is_ready(&status) {
            // After a restart, a resource that was failing keeps its backoff (from the status).
            if let Some(next) = status
                .next_refresh_at
                .as_deref()
                .and_then(|v| v.parse::<jiff::Timestamp>().ok())
            {
                let wait = next.as_second() as f64 - ls_now;
                if wait > 1.0 {
                    return Ok(Action::requeue(crate::clock::secs_to_duration(wait)));
                }
            }
        }
        if not_before.is_some() || is_ready(&status) {
            let plan = published
                .map(|(exp, iat)| schedule::plan(&policy, ls_now, iat, exp, fastrand::f64()));
            if let Some(Plan::In(d)) = plan {
                if !d.is_zero() {
                    // A rotation due before the refresh wakes the resource; due now, it refreshes
                    // now (the fresh access token authenticates the rotate call).
                    let rotation_due = match (&slot, &pat_now) {
                        (Some(s), Some(p)) => rotation::due_in(s, p, ls_now).await,
                        _ => None,
                    };
                    match rotation_due {
                        Some(w) if w <= 0.0 => {}
                        Some(w) => {
                            let w = crate::clock::secs_to_duration(w).max(MIN_REFRESH_INTERVAL);
                            return Ok(Action::requeue(d.min(w)));
                        }
                        None => return Ok(Action::requeue(d)),
                    }
                }
            }
        }
    }
    ctx.memory(&key, |m| {
        m.acted_pat_rv = pat_rv.clone();
        m.acted_request = refresh_request.clone();
        m.rotation.refresh_pending = false;
        // At most one exchange a second per resource, whatever the triggers.
        m.not_before = Some(now + MIN_REFRESH_INTERVAL);
    });

    // Due: read the PAT.
    let Some(pat_secret) = pat_secret else {
        return refuse(token, ctx, &status, Refusal::PatSecretUnavailable, None).await;
    };
    let pat = match crate::source::secret::extract(&r, &pat_secret) {
        PatState::Ready(p) => ctx.memory(&key, |m| m.rotation.pat_to_use(p)),
        _ => return refuse(token, ctx, &status, Refusal::PatSecretUnavailable, None).await,
    };
    let pat_exp = match jwt::usable(&pat, &r.to_string(), ls_now) {
        Ok(Usable::Pat { exp }) => exp,
        Ok(Usable::Legacy) => {
            return failed(
                token,
                ctx,
                &status,
                &key,
                &policy,
                published,
                Reason::WrongTokenType,
                None,
            )
            .await;
        }
        Err(e) => {
            return failed(
                token,
                ctx,
                &status,
                &key,
                &policy,
                published,
                e.reason(),
                None,
            )
            .await;
        }
    };

    // A target the cache does not hold may still exist without our label (someone else's
    // Secret): look before spending an exchange on it. One GET, only before the first publish.
    let target_access = if target_meta.is_none() {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &key.namespace);
        let found = tokio::time::timeout(
            KUBE_CALL_TIMEOUT,
            api.get_metadata_opt(&token.spec.secret_name),
        )
        .await;
        ctx.metrics
            .kube_call("get_secret_metadata", matches!(found, Ok(Ok(_))));
        match found {
            Ok(Ok(existing)) => {
                guard::target_access(existing.as_ref().map(|m| &m.metadata), &key.name, &uid)
            }
            Ok(Err(e)) => return Err(ReconcileError::Kube(e.to_string())),
            Err(_) => {
                return Err(ReconcileError::Kube(
                    "target Secret lookup timed out".into(),
                ))
            }
        }
    } else {
        target_access
    };
    if target_access == TargetAccess::Refuse {
        return refuse_target(token, ctx, &status).await;
    }

    let exchange = conn_client
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .exchange
        .clone();
    ctx.cmetrics.exchange_queue_depth.inc();
    let permit = ctx.exchanges.acquire().await;
    ctx.cmetrics.exchange_queue_depth.dec();
    let Ok(_permit) = permit else {
        return Ok(Action::await_change());
    };
    let outcome = exchange_and_validate(&exchange, &pat).await;
    let (access, accepted, wall) = match outcome {
        Ok(v) => v,
        Err(e) => {
            if e.reason() == Reason::RevokedPat {
                if let Some(slot) = &slot {
                    if let Some(action) =
                        try_recover(token, ctx, &key, slot, &pat, &target_access, offset).await
                    {
                        return Ok(action);
                    }
                }
            }
            let retry_after = e.retry_after();
            return failed(
                token,
                ctx,
                &status,
                &key,
                &policy,
                published,
                e.reason(),
                retry_after,
            )
            .await;
        }
    };
    // Label Studio's clock, as its Date header says (believed within a day).
    if let Some(date) = accepted.server_date.filter(|d| believable(*d, wall)) {
        let raw = date - wall;
        conn_client.lock().unwrap_or_else(|p| p.into_inner()).offset =
            if raw.abs() <= SKEW_TOLERANCE_SECS {
                0.0
            } else {
                raw
            };
    }
    let set = TokenSet {
        auth: Authorization {
            scheme: Scheme::Bearer,
            token: access.token.clone(),
        },
        expires_at: Some(access.exp()),
        refreshed_at: access.claims.iat.unwrap_or(wall as i64),
    };
    let seen_uid = match target_access {
        TargetAccess::Update { uid } => Some(uid),
        _ => None,
    };
    let target = (key.namespace.clone(), token.spec.secret_name.clone());
    // Fencing: the exchange took time; write only while still leading, and never replace a token
    // that expires later than ours (a previous leader's, paused and resumed, or a concurrent one).
    if !ctx.leadership.is_leader() {
        tracing::info!(namespace = %key.namespace, name = %key.name, "lease margin over: the new token is not written");
        return Ok(Action::await_change());
    }
    if let Some((there, there_iat)) = target_meta.as_ref().and_then(|m| published_from(m)) {
        if there > access.exp() {
            tracing::info!(namespace = %key.namespace, name = %key.name, "the Secret holds a later-expiring token: kept");
            ctx.memory(&key, |m| m.published = Some((there, there_iat)));
            return Ok(Action::requeue(
                crate::refresher::timing::MIN_REFRESH_INTERVAL,
            ));
        }
    }
    if let Err(e) = write_target(token, ctx, &target, seen_uid, &set).await {
        ctx.cmetrics
            .secret_writes_total
            .with_label_values(&["error"])
            .inc();
        tracing::warn!(namespace = %key.namespace, name = %key.name, "writing the target Secret failed: {e}");
        if e.refused {
            return refuse_target(token, ctx, &status).await;
        }
        return failed(
            token,
            ctx,
            &status,
            &key,
            &policy,
            published,
            Reason::PublishFailed,
            None,
        )
        .await;
    }
    ctx.cmetrics
        .secret_writes_total
        .with_label_values(&["ok"])
        .inc();
    let exp = access.exp();
    let iat = access.claims.iat;
    ctx.memory(&key, |m| {
        m.published = Some((exp, iat));
        m.backoff.reset();
        m.rotation.last_access = Some(access.token.clone());
    });
    ctx.metrics
        .refresh_total
        .with_label_values(&["success"])
        .inc();
    ctx.cmetrics
        .token_expiration
        .with_label_values(&[&key.namespace, &key.name])
        .set(exp as f64);
    let ls_now = unix_now() + conn_client.lock().unwrap_or_else(|p| p.into_inner()).offset;
    let next = match schedule::plan(&policy, ls_now, iat, exp, fastrand::f64()) {
        Plan::In(d) => d,
        // A token that is already due again (a server issuing absurd lifetimes): at most once a second.
        _ => Duration::ZERO,
    }
    .max(MIN_REFRESH_INTERVAL);
    // Rotate the PAT if due, with the access token just issued (and published: a lost rotation
    // can be repaired with it for its whole life).
    let mut rotated = None;
    let mut rotation_wait = None;
    let mut rotation_report = None;
    if let Some(slot) = &slot {
        let wall = unix_now();
        let ls_now = wall + conn_client.lock().unwrap_or_else(|p| p.into_inner()).offset;
        let a = Access {
            token: access.token.clone(),
            exp,
        };
        let (outcome, notes) = rotation::after_refresh(slot, &key, &a, &pat, ls_now, wall).await;
        report_notes(ctx, token, &key, &notes).await;
        rotated = ctx.memory(&key, |m| m.rotation.adopt(outcome, &pat, wall));
        let in_use = rotated.clone().unwrap_or_else(|| pat.clone());
        let due = rotation::due_in(slot, &in_use, ls_now).await;
        rotation_wait = rotation::wait_for(due);
        let issued = match jwt::classify(&in_use) {
            Ok(jwt::CredentialKind::Pat(c)) => c.iat,
            _ => None,
        };
        let (rotated_at, note) =
            ctx.memory(&key, |m| (m.rotation.rotated_at, m.rotation.last_note));
        rotation_report = Some((
            issued.map(rfc3339).filter(|t| !t.is_empty()),
            due.map(|d| rfc3339((ls_now + d).min(jwt::MAX_NUMERIC_DATE as f64) as i64))
                .filter(|t| !t.is_empty()),
            rotated_at.map(rfc3339).filter(|t| !t.is_empty()),
            note.map(|n| rotation_condition(token, &status, &n)),
        ));
    }
    let next = match (&rotated, rotation_wait) {
        // The new PAT is used at once.
        (Some(_), _) => MIN_REFRESH_INTERVAL,
        (None, Some(w)) => next.min(w),
        (None, None) => next,
    };
    let was_ready = is_ready(&status);
    let cond = condition(
        token,
        &status,
        true,
        "token_published",
        "the target Secret holds a token Label Studio accepted",
    );
    let user = accepted.user.map(|u| LabelStudioUser {
        id: u.id,
        username: u.username,
    });
    let next_at = rfc3339((ls_now + next.as_secs_f64()) as i64);
    write_status(token, ctx, cond, |s| {
        s.expires_at = Some(rfc3339(exp));
        s.next_refresh_at = Some(next_at);
        s.pat_expires_at = pat_exp.map(rfc3339);
        s.user = user;
        s.failed_attempts = None;
        s.pat_secret_resource_version = pat_rv.clone();
        s.last_refresh_request = refresh_request.clone();
        match rotation_report {
            Some((issued, next_rotation, rotated_at, cond)) => {
                s.pat_issued_at = issued;
                s.next_pat_rotation_at = next_rotation;
                if rotated_at.is_some() {
                    s.pat_rotated_at = rotated_at;
                }
                if let Some(c) = cond {
                    s.conditions.retain(|x| x.type_ != c.type_);
                    s.conditions.push(c);
                }
            }
            None => {
                // Rotation off: nothing about it is current.
                s.pat_issued_at = None;
                s.next_pat_rotation_at = None;
                s.conditions.retain(|x| x.type_ != rotation::CONDITION);
            }
        }
    })
    .await?;
    ctx.cmetrics
        .token_ready
        .with_label_values(&[&key.namespace, &key.name])
        .set(1);
    if !was_ready && !status.conditions.is_empty() {
        event(
            ctx,
            token,
            EventType::Normal,
            "TokenRefreshed",
            "a token Label Studio accepted is published again",
        )
        .await;
    }
    tracing::debug!(namespace = %key.namespace, name = %key.name, expires_at = %rfc3339(exp), "token refreshed");
    Ok(Action::requeue(next))
}

/// After an exchange refused as blacklisted: if a rotation of ours was lost, repair it with an
/// access token of the PAT's user still valid — the last one published, from memory or (the
/// caches hold only metadata) read back from the target Secret when it is ours. Some: retry now
/// with the new PAT.
#[allow(clippy::too_many_arguments)]
async fn try_recover(
    token: &LabelStudioToken,
    ctx: &Ctx,
    key: &TokenKey,
    slot: &rotation::SlotRef,
    pat: &SecretText,
    target: &TargetAccess,
    offset: f64,
) -> Option<Action> {
    let mut tokens: Vec<SecretText> = ctx
        .memory(key, |m| m.rotation.last_access.clone())
        .into_iter()
        .collect();
    if let TargetAccess::Update { uid } = target {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &key.namespace);
        let got =
            tokio::time::timeout(KUBE_CALL_TIMEOUT, api.get_opt(&token.spec.secret_name)).await;
        ctx.metrics
            .kube_call("get_secret", matches!(got, Ok(Ok(_))));
        if let Ok(Ok(Some(s))) = got {
            // Only the Secret judged ours (same uid), only the key we write.
            if s.metadata.uid.as_deref() == Some(uid.as_str()) {
                if let Some(v) = s.data.as_ref().and_then(|d| d.get("token")) {
                    tokens.push(SecretText::new(String::from_utf8_lossy(&v.0)));
                }
            }
        }
    }
    let candidates = guard::recovery_candidates(pat, tokens);
    let wall = unix_now();
    let (outcome, notes) = rotation::recover(slot, key, pat, candidates, wall + offset, wall).await;
    report_notes(ctx, token, key, &notes).await;
    let outcome = outcome?;
    ctx.memory(key, |m| m.rotation.adopt(outcome, pat, wall))
        .map(|_| Action::requeue(MIN_REFRESH_INTERVAL))
}

/// The rotator's notes as Events on the token resource; the last is kept for the status.
async fn report_notes(
    ctx: &Ctx,
    token: &LabelStudioToken,
    key: &TokenKey,
    notes: &[rotation::Note],
) {
    ctx.memory(key, |m| m.rotation.note(notes));
    for n in notes {
        let kind = if n.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        event(ctx, token, kind, n.reason, n.note).await;
    }
}

async fn exchange_and_validate(
    exchange: &HttpExchange,
    pat: &SecretText,
) -> Result<(crate::exchange::AccessToken, crate::exchange::Accepted, f64), ExchangeError> {
    let access = exchange.refresh(pat).await?;
    let wall = unix_now();
    let accepted = exchange
        .validate(&Authorization {
            scheme: Scheme::Bearer,
            token: access.token.clone(),
        })
        .await?;
    if access.claims.implausible_times().is_some() {
        return Err(ExchangeError::InvalidResponse {
            what: "token refresh",
            url: exchange.base(),
            problem: "the access token's iat/exp are implausible",
        });
    }
    Ok((access, accepted, wall))
}

/// A failed write; `refused` when the Secret turned out not to be ours.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct WriteError {
    refused: bool,
    message: String,
}

/// Writes the token into the target: creates it owned by the token resource, or patches our keys
/// into the Secret with the uid we judged (a precondition: a Secret swapped in between is not ours).
async fn write_target(
    token: &LabelStudioToken,
    ctx: &Ctx,
    (namespace, name): &(String, String),
    seen_uid: Option<String>,
    set: &TokenSet,
) -> Result<(), WriteError> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut body = apply_body(namespace, name, set);
    let kerr = |e: kube::Error| WriteError {
        refused: false,
        message: e.to_string(),
    };
    let uid = match seen_uid {
        Some(uid) => uid,
        None => {
            // Create, owned by the token resource. A Secret of that name that exists but was not in
            // our cache (no managed label) makes this fail with 409: then we look at it.
            let mut owner = token.controller_owner_ref(&()).ok_or_else(|| WriteError {
                refused: false,
                message: "the token resource has no uid yet".into(),
            })?;
            // Blocking the owner's deletion would need update rights on its finalizers; not needed.
            owner.block_owner_deletion = None;
            body["type"] = "Opaque".into();
            body["metadata"]["ownerReferences"] =
                serde_json::to_value(vec![owner]).unwrap_or_default();
            let secret: Secret = serde_json::from_value(body).map_err(|e| WriteError {
                refused: false,
                message: e.to_string(),
            })?;
            let pp = PostParams {
                field_manager: Some(MANAGER.into()),
                ..Default::default()
            };
            match tokio::time::timeout(KUBE_CALL_TIMEOUT, api.create(&pp, &secret)).await {
                Ok(Ok(_)) => {
                    ctx.metrics.kube_call("create_secret", true);
                    return Ok(());
                }
                Ok(Err(kube::Error::Api(s))) if s.code == 409 => {
                    ctx.metrics.kube_call("create_secret", false);
                    let existing = api.get_metadata_opt(name).await.map_err(kerr)?;
                    match guard::target_access(
                        existing.as_ref().map(|m| &m.metadata),
                        &token.name_any(),
                        &token.uid().unwrap_or_default(),
                    ) {
                        TargetAccess::Update { uid } => {
                            body = apply_body(namespace, name, set);
                            uid
                        }
                        _ => {
                            return Err(WriteError {
                                refused: true,
                                message: "the target Secret exists and is not ours".into(),
                            })
                        }
                    }
                }
                Ok(Err(e)) => {
                    ctx.metrics.kube_call("create_secret", false);
                    return Err(kerr(e));
                }
                Err(_) => {
                    ctx.metrics.kube_call("create_secret", false);
                    return Err(WriteError {
                        refused: false,
                        message: "no answer from the API server in time".into(),
                    });
                }
            }
        }
    };
    body["metadata"]["uid"] = uid.into();
    let pp = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let result = tokio::time::timeout(
        KUBE_CALL_TIMEOUT,
        api.patch(name, &pp, &Patch::Merge(&body)),
    )
    .await;
    let ok = matches!(result, Ok(Ok(_)));
    ctx.metrics.kube_call("patch_secret", ok);
    match result {
        Ok(Ok(_)) => Ok(()),
        // 409 on a uid precondition: the Secret was replaced by someone else's.
        Ok(Err(kube::Error::Api(s))) if s.code == 409 => Err(WriteError {
            refused: true,
            message: "the target Secret was replaced".into(),
        }),
        Ok(Err(e)) => Err(kerr(e)),
        Err(_) => Err(WriteError {
            refused: false,
            message: "no answer from the API server in time".into(),
        }),
    }
}

fn is_ready(status: &LabelStudioTokenStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The Ready condition; `lastTransitionTime` kept unless the status flips.
fn condition(
    token: &LabelStudioToken,
    status: &LabelStudioTokenStatus,
    ready: bool,
    reason: &str,
    message: &str,
) -> TokenCondition {
    condition_of(token, status, "Ready", ready, reason, message)
}

/// The `PatRotation` condition for the rotator's last note.
fn rotation_condition(
    token: &LabelStudioToken,
    status: &LabelStudioTokenStatus,
    note: &rotation::Note,
) -> TokenCondition {
    condition_of(
        token,
        status,
        rotation::CONDITION,
        !note.warning,
        note.condition_reason(),
        note.note,
    )
}

/// A condition of `type_`; `lastTransitionTime` kept unless the status flips.
fn condition_of(
    token: &LabelStudioToken,
    status: &LabelStudioTokenStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
) -> TokenCondition {
    let value = if ok { "True" } else { "False" };
    let previous = status.conditions.iter().find(|c| c.type_ == type_);
    let since = previous
        .filter(|c| c.status == value)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| rfc3339(unix_now() as i64));
    TokenCondition {
        type_: type_.into(),
        status: value.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: since,
        observed_generation: token.meta().generation,
    }
}

/// Refuses a target Secret that is not ours; rechecked now and then (its owner may change it).
async fn refuse_target(
    token: &LabelStudioToken,
    ctx: &Ctx,
    status: &LabelStudioTokenStatus,
) -> Result<Action, ReconcileError> {
    refuse(
        token,
        ctx,
        status,
        Refusal::TargetNotOwned,
        Some(REFUSAL_RECHECK),
    )
    .await
}

/// Refuses with a condition (patched only when it changes) and an Event on the transition.
async fn refuse(
    token: &LabelStudioToken,
    ctx: &Ctx,
    status: &LabelStudioTokenStatus,
    r: Refusal,
    recheck: Option<Duration>,
) -> Result<Action, ReconcileError> {
    ctx.cmetrics.refused(r);
    let key = super::key_of(token);
    ctx.cmetrics
        .token_ready
        .with_label_values(&[&key.namespace, &key.name])
        .set(0);
    let cond = condition(token, status, false, r.reason(), r.message());
    let changed = write_status_if_changed(token, ctx, status, cond, |_| {}).await?;
    if changed {
        tracing::warn!(namespace = %key.namespace, name = %key.name, reason = r.reason(), "{}", r.message());
        event(
            ctx,
            token,
            EventType::Warning,
            &pascal_case(r.reason()),
            r.message(),
        )
        .await;
    }
    Ok(match recheck {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// A failed attempt: Ready=False with the reason, back off (bounded by the published token's
/// remaining life and `Retry-After`), Event on the transition. The last good token stays.
#[allow(clippy::too_many_arguments)]
async fn failed(
    token: &LabelStudioToken,
    ctx: &Ctx,
    status: &LabelStudioTokenStatus,
    key: &TokenKey,
    policy: &Policy,
    published: Option<(i64, Option<i64>)>,
    reason: Reason,
    retry_after: Option<Duration>,
) -> Result<Action, ReconcileError> {
    ctx.metrics.record_failure(reason);
    let now = unix_now();
    let remaining = published
        .map(|(exp, _)| crate::clock::secs_to_duration(exp as f64 - now))
        .filter(|d| !d.is_zero());
    let delay = ctx.memory(key, |m| {
        let d = m
            .backoff
            .next_delay(policy, remaining, retry_after, fastrand::f64());
        m.not_before = Some(tokio::time::Instant::now() + d);
        d
    });
    let failures = ctx.memory(key, |m| m.backoff.failures());
    ctx.cmetrics
        .token_ready
        .with_label_values(&[&key.namespace, &key.name])
        .set(0);
    let was_ready = is_ready(status);
    let message: &'static str = reason.summary();
    let cond = condition(token, status, false, reason.as_str(), message);
    let next_at = rfc3339((now + delay.as_secs_f64()) as i64);
    write_status(token, ctx, cond, |s| {
        s.last_failure_time = Some(rfc3339(now as i64));
        s.failed_attempts = Some(failures);
        s.next_refresh_at = Some(next_at);
    })
    .await?;
    if was_ready || status.conditions.is_empty() {
        tracing::warn!(namespace = %key.namespace, name = %key.name, reason = reason.as_str(), "refresh failed: {message}");
        event(
            ctx,
            token,
            EventType::Warning,
            &pascal_case(reason.as_str()),
            message,
        )
        .await;
    }
    Ok(Action::requeue(delay))
}

/// Patches the status when the condition differs from the current one; true when it wrote.
async fn write_status_if_changed(
    token: &LabelStudioToken,
    ctx: &Ctx,
    status: &LabelStudioTokenStatus,
    cond: TokenCondition,
    edit: impl FnOnce(&mut LabelStudioTokenStatus),
) -> Result<bool, ReconcileError> {
    let same = status.conditions.iter().any(|c| {
        c.type_ == cond.type_
            && c.status == cond.status
            && c.reason == cond.reason
            && c.observed_generation == cond.observed_generation
    });
    if same {
        return Ok(false);
    }
    write_status(token, ctx, cond, edit).await?;
    Ok(true)
}

async fn write_status(
    token: &LabelStudioToken,
    ctx: &Ctx,
    cond: TokenCondition,
    edit: impl FnOnce(&mut LabelStudioTokenStatus),
) -> Result<(), ReconcileError> {
    if !ctx.leadership.is_leader() {
        return Ok(());
    }
    let mut status = token.status.clone().unwrap_or_default();
    status.conditions.retain(|c| c.type_ != cond.type_);
    status.conditions.push(cond);
    status.observed_generation = token.meta().generation;
    edit(&mut status);
    let api: Api<LabelStudioToken> =
        Api::namespaced(ctx.client.clone(), &token.namespace().unwrap_or_default());
    let body = status_patch(&status);
    let result = tokio::time::timeout(
        KUBE_CALL_TIMEOUT,
        api.patch_status(
            &token.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&body),
        ),
    )
    .await;
    let ok = matches!(result, Ok(Ok(_)));
    ctx.metrics.kube_call("patch_status", ok);
    ctx.cmetrics
        .status_writes_total
        .with_label_values(&[if ok { "ok" } else { "error" }])
        .inc();
    match result {
        Ok(Ok(_)) => Ok(()),
        // Deleted meanwhile: nothing to report on.
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => Ok(()),
        Ok(Err(e)) => {
            tracing::debug!(body = %body, "status patch refused");
            Err(ReconcileError::Kube(e.to_string()))
        }
        Err(_) => Err(ReconcileError::Kube("status patch timed out".into())),
    }
}

/// The merge patch setting the status to `status`. A field it leaves out is sent as null: a JSON
/// merge patch keeps what it does not mention, so a cleared field (`failedAttempts` after a
/// success, `nextPatRotationAt` when rotation is turned off) would otherwise stay forever.
fn status_patch(status: &LabelStudioTokenStatus) -> serde_json::Value {
    static FIELDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let fields = FIELDS.get_or_init(|| {
        let schema =
            serde_json::to_value(schemars::schema_for!(LabelStudioTokenStatus)).unwrap_or_default();
        schema["properties"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    });
    let mut v = serde_json::to_value(status).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        for k in fields {
            o.entry(k.clone()).or_insert(serde_json::Value::Null);
        }
    }
    serde_json::json!({ "status": v })
}

async fn event(
    ctx: &Ctx,
    token: &LabelStudioToken,
    type_: EventType,
    reason: &str,
    note: &'static str,
) {
    publish_event(
        &ctx.recorder,
        &token.object_ref(&()),
        type_,
        reason.to_owned(),
        note,
        &ctx.metrics,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cleared_status_field_is_removed_by_the_patch() {
        let new = LabelStudioTokenStatus {
            expires_at: Some("2030-01-01T00:10:00Z".into()),
            pat_rotated_at: Some("2030-01-01T00:00:01Z".into()),
            ..Default::default()
        };
        let patch = status_patch(&new);
        let status = patch["status"].as_object().unwrap();
        assert_eq!(status["expiresAt"], "2030-01-01T00:10:00Z");
        assert_eq!(status["patRotatedAt"], "2030-01-01T00:00:01Z");
        // Cleared: removed on the server (a merge patch's null), not left as they were.
        for k in [
            "failedAttempts",
            "nextPatRotationAt",
            "patIssuedAt",
            "lastFailureTime",
        ] {
            assert_eq!(status.get(k), Some(&serde_json::Value::Null), "{k}");
        }
        // Every field of the status is in the patch: none can be left behind.
        let all = serde_json::to_value(LabelStudioTokenStatus {
            observed_generation: Some(1),
            expires_at: Some(String::new()),
            next_refresh_at: Some(String::new()),
            pat_expires_at: Some(String::new()),
            pat_issued_at: Some(String::new()),
            pat_rotated_at: Some(String::new()),
            next_pat_rotation_at: Some(String::new()),
            user: Some(LabelStudioUser {
                id: 1,
                username: String::new(),
            }),
            last_failure_time: Some(String::new()),
            failed_attempts: Some(1),
            pat_secret_resource_version: Some(String::new()),
            last_refresh_request: Some(String::new()),
            conditions: vec![],
        })
        .unwrap();
        for k in all.as_object().unwrap().keys() {
            assert!(status.contains_key(k), "{k}");
        }
        assert!(status.contains_key("conditions"));
    }
}
