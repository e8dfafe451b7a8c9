//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas exactly one
//! writes the target Secret, and a replica that was paused (a partitioned or frozen node) knows it
//! may no longer write *before* anyone else can have taken over.
//!
//! The algorithm is client-go's (`tools/leaderelection`): the holder renews the Lease every retry
//! period with an optimistic-concurrency update (`metadata.resourceVersion`); a candidate takes the
//! Lease over only when it has seen the same record unchanged for a whole lease duration on *its
//! own* monotonic clock (no clock comparison between nodes). The holder counts itself leader only
//! until its last successful renewal *request was sent* plus the renew deadline, which is shorter
//! than the lease duration: the difference is the fencing margin. A process that was stopped and
//! resumes finds that deadline passed on the monotonic clock at once, before any timer of its own
//! fires, so [`Leadership::is_leader`] is false before it can write anything.
//!
//! Why not the kube-lease-manager crate (0.13, the one built on kube 5): its `watch` channel flips
//! only when its loop *notices* a change; while renewals fail it backs off with the flag still
//! `true`, and it exposes no renewal time, so "holds the lease with margin left" cannot be derived
//! from it; its expiry arithmetic also uses the wall clock, which a clock step moves. The loop here
//! is ~200 lines against a small [`LeaseStore`] trait, so unit tests run it on tokio's paused clock.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::api::{Api, PostParams};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    values::{Dur, ObjectName},
};

/// Lease name when none is given (one Lease per Deployment: the chart sets its release name).
pub const DEFAULT_LEASE_NAME: &str = "ls-token-refresher";

/// Leader election (`run` with a Secret sink, `controller`).
#[derive(Debug, Clone, clap::Args)]
pub struct LeaderArgs {
    /// Elect one writer among replicas on a coordination.k8s.io Lease (needs a Secret sink; replicas stand by).
    #[arg(long, env = "LS_LEADER_ELECT")]
    pub leader_elect: bool,

    /// Name of the Lease used for leader election.
    #[arg(long, env = "LS_LEASE_NAME", default_value = DEFAULT_LEASE_NAME, value_name = "NAME")]
    pub lease_name: ObjectName,

    /// Namespace of the Lease (default: the pod's namespace).
    #[arg(long, env = "LS_LEASE_NAMESPACE", value_name = "NAMESPACE")]
    pub lease_namespace: Option<ObjectName>,

    /// How long a Lease not renewed stays the holder's: a dead leader is replaced after at most this (whole seconds).
    #[arg(
        long,
        env = "LS_LEASE_DURATION",
        default_value = "15s",
        value_name = "DURATION"
    )]
    pub lease_duration: Dur,

    /// The leader stops writing when it could not renew for this long (shorter than --lease-duration: the margin).
    #[arg(
        long,
        env = "LS_LEASE_RENEW_DEADLINE",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub lease_renew_deadline: Dur,

    /// How often the leader renews and a standby tries to acquire the Lease.
    #[arg(
        long,
        env = "LS_LEASE_RETRY_PERIOD",
        default_value = "2s",
        value_name = "DURATION"
    )]
    pub lease_retry_period: Dur,
}

/// The election's timings, validated (`retry < renew deadline < duration`, whole seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// Lease duration (written to the Lease as whole seconds).
    pub duration: Duration,
    /// The leader counts itself leader until its last renewal was sent plus this.
    pub renew_deadline: Duration,
    /// Renewal / acquisition interval.
    pub retry_period: Duration,
}

/// Longest accepted lease duration: a dead leader is replaced only after it, and access tokens
/// live 5 minutes.
const MAX_LEASE_DURATION: Duration = Duration::from_secs(300);

impl LeaderArgs {
    /// Validated timings, or a one-line error naming the flags.
    pub fn timings(&self) -> Result<Timings, String> {
        let t = Timings {
            duration: self.lease_duration.0,
            renew_deadline: self.lease_renew_deadline.0,
            retry_period: self.lease_retry_period.0,
        };
        if t.duration.subsec_nanos() != 0
            || t.duration < Duration::from_secs(2)
            || t.duration > MAX_LEASE_DURATION
        {
            return Err(format!(
                "--lease-duration (LS_LEASE_DURATION) {}s must be whole seconds from 2s to {}s",
                t.duration.as_secs_f64(),
                MAX_LEASE_DURATION.as_secs()
            ));
        }
        if t.retry_period.is_zero() || t.retry_period >= t.renew_deadline {
            return Err(format!(
                "--lease-retry-period (LS_LEASE_RETRY_PERIOD) {}s must be above 0 and below --lease-renew-deadline {}s",
                t.retry_period.as_secs_f64(),
                t.renew_deadline.as_secs_f64()
            ));
        }
        if t.renew_deadline >= t.duration {
            return Err(format!(
                "--lease-renew-deadline (LS_LEASE_RENEW_DEADLINE) {}s must be below --lease-duration {}s (the difference is the fencing margin)",
                t.renew_deadline.as_secs_f64(),
                t.duration.as_secs_f64()
            ));
        }
        Ok(t)
    }
}

/// This replica's holder identity: the pod name (unique among live pods), else the hostname plus
/// a random suffix, so two processes never share one (a shared identity would make both leaders).
pub fn identity(pod_name: Option<&str>) -> String {
    if let Some(p) = pod_name.filter(|p| !p.is_empty()) {
        return p.to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ls-token-refresher".into());
    let suffix: String = (0..8).map(|_| fastrand::alphanumeric()).collect();
    format!("{host}-{}", suffix.to_ascii_lowercase())
}

/// What the election loop shares with [`Leadership`] handles.
struct Shared {
    /// Leader until this instant (last renewal sent + renew deadline); None when not leading.
    until: Mutex<Option<Instant>>,
}

/// A cloneable view of this replica's leadership.
#[derive(Clone)]
pub struct Leadership {
    /// None: no election configured, always leader.
    shared: Option<Arc<Shared>>,
    rx: watch::Receiver<bool>,
    /// The holder identity (for logs).
    identity: Arc<str>,
}

impl Leadership {
    /// No election configured: this process is the only writer and always leads.
    pub fn always() -> Self {
        let (_tx, rx) = watch::channel(true);
        Leadership {
            shared: None,
            rx,
            identity: Arc::from(""),
        }
    }

    /// A replica that never leads (tests of the fencing in writers).
    #[cfg(test)]
    pub(crate) fn never() -> Self {
        let (_tx, rx) = watch::channel(false);
        Leadership {
            shared: Some(Arc::new(Shared {
                until: Mutex::new(None),
            })),
            rx,
            identity: Arc::from("never"),
        }
    }

    /// A leadership the test drives: `set(Some(d))` leads for `d` from now, `set(None)` steps down.
    #[cfg(test)]
    pub(crate) fn manual() -> (Self, impl Fn(Option<Duration>)) {
        let (tx, rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            until: Mutex::new(None),
        });
        let l = Leadership {
            shared: Some(shared.clone()),
            rx,
            identity: Arc::from("manual"),
        };
        let set = move |d: Option<Duration>| {
            *lock(&shared.until) = d.map(|d| Instant::now() + d);
            tx.send_replace(d.is_some());
        };
        (l, set)
    }

    /// True when election is configured (standbys exist).
    pub fn is_elected(&self) -> bool {
        self.shared.is_some()
    }

    /// This replica's holder identity ("" without election).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Holds the Lease now with margin left: the fencing check to make immediately before a write.
    pub fn is_leader(&self) -> bool {
        match &self.shared {
            None => true,
            Some(s) => lock(&s.until).is_some_and(|u| Instant::now() < u),
        }
    }

    fn until(&self) -> Option<Instant> {
        self.shared.as_ref().and_then(|s| *lock(&s.until))
    }

    /// Resolves once this replica leads (at once when it does). False when the election has
    /// stopped (shutdown) without leading.
    pub async fn wait_leader(&self) -> bool {
        let mut rx = self.rx.clone();
        loop {
            if self.is_leader() {
                return true;
            }
            if rx.changed().await.is_err() {
                return self.is_leader();
            }
        }
    }

    /// Resolves when this replica stops leading: at the end of its margin on the monotonic clock
    /// (even when the election loop has not noticed yet), or when the loop steps down. Never
    /// resolves without election.
    pub async fn lost(&self) {
        if self.shared.is_none() {
            return std::future::pending().await;
        }
        let mut rx = self.rx.clone();
        loop {
            let Some(until) = self.until().filter(|u| Instant::now() < *u) else {
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                r = rx.changed() => if r.is_err() { return std::future::pending().await },
            }
        }
    }

    /// Resolves when the election loop has ended (after releasing the Lease on shutdown); at once
    /// without election. Await it before exiting, or the release may never reach the API server.
    pub async fn released(&self) {
        let mut rx = self.rx.clone();
        while rx.changed().await.is_ok() {}
    }

    /// The election loop's view (`true` while it leads), for callers that want every change.
    pub fn changes(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A Lease request failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else changed or created the Lease first (HTTP 409).
    #[error("conflict")]
    Conflict,
    /// Anything else (with the server's message or the timeout).
    #[error("{0}")]
    Other(String),
}

/// Where the Lease lives (the API server; a map in unit tests).
pub trait LeaseStore: Send + Sync + 'static {
    /// The Lease, or None when it does not exist.
    fn get(&self) -> BoxFuture<'_, Result<Option<Lease>, StoreError>>;
    /// Creates the Lease (Conflict when it exists).
    fn create(&self, lease: Lease) -> BoxFuture<'_, Result<Lease, StoreError>>;
    /// Replaces the Lease if its `metadata.resourceVersion` is still current (Conflict otherwise).
    fn replace(&self, lease: Lease) -> BoxFuture<'_, Result<Lease, StoreError>>;
}

/// The Lease on the API server.
pub struct KubeLeaseStore {
    api: Api<Lease>,
    name: String,
    metrics: Arc<Metrics>,
}

impl KubeLeaseStore {
    /// The Lease `namespace/name`.
    pub fn new(client: kube::Client, namespace: &str, name: &str, metrics: Arc<Metrics>) -> Self {
        KubeLeaseStore {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            metrics,
        }
    }

    fn done<T>(&self, op: &'static str, r: Result<T, kube::Error>) -> Result<T, StoreError> {
        self.metrics.kube_call(op, r.is_ok());
        r.map_err(|e| match e {
            kube::Error::Api(s) if s.code == 409 => StoreError::Conflict,
            kube::Error::Api(s) if s.code == 403 => StoreError::Other(format!(
                "forbidden: the Role must allow get and update on leases/{} (and create, or create the Lease beforehand as the chart does): {}",
                self.name, s.message
            )),
            e => StoreError::Other(e.to_string()),
        })
    }
}

impl LeaseStore for KubeLeaseStore {
    fn get(&self) -> BoxFuture<'_, Result<Option<Lease>, StoreError>> {
        Box::pin(async move { self.done("get_lease", self.api.get_opt(&self.name).await) })
    }
    fn create(&self, lease: Lease) -> BoxFuture<'_, Result<Lease, StoreError>> {
        Box::pin(async move {
            let r = self.api.create(&PostParams::default(), &lease).await;
            self.done("create_lease", r)
        })
    }
    fn replace(&self, lease: Lease) -> BoxFuture<'_, Result<Lease, StoreError>> {
        Box::pin(async move {
            let r = self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await;
            self.done("update_lease", r)
        })
    }
}

/// Could not start the election.
#[derive(Debug, thiserror::Error)]
#[error("leader election: {0}")]
pub struct LeaderError(String);

/// Starts leader election on the API server (see [`elect`]). The Lease is released on `shutdown`
/// so a rollout hands over at once.
pub async fn start(
    client: kube::Client,
    args: &LeaderArgs,
    default_namespace: &str,
    identity: String,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<Leadership, LeaderError> {
    let timings = args.timings().map_err(LeaderError)?;
    let namespace = args
        .lease_namespace
        .as_ref()
        .map_or(default_namespace, |n| n.0.as_str());
    let store = KubeLeaseStore::new(client, namespace, &args.lease_name.0, metrics.clone());
    tracing::info!(
        lease = %format!("{namespace}/{}", args.lease_name.0),
        identity = %identity,
        "leader election: standing by until this replica holds the Lease"
    );
    Ok(elect(
        store,
        &args.lease_name.0,
        identity,
        timings,
        metrics,
        shutdown,
    )
    .0)
}

/// Runs the election loop on `store` in a task; the handle and the task (which ends after
/// releasing the Lease on `shutdown`).
pub fn elect<S: LeaseStore>(
    store: S,
    lease_name: &str,
    identity: String,
    timings: Timings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        until: Mutex::new(None),
    });
    metrics.leader.set(0);
    let handle = Leadership {
        shared: Some(shared.clone()),
        rx,
        identity: Arc::from(identity.as_str()),
    };
    let elector = Elector {
        store,
        name: lease_name.into(),
        identity,
        timings,
        shared,
        tx,
        metrics,
        observed: None,
        last: None,
    };
    (handle, tokio::spawn(elector.run(shutdown)))
}

struct Elector<S> {
    store: S,
    name: String,
    identity: String,
    timings: Timings,
    shared: Arc<Shared>,
    tx: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    /// The Lease record last seen (holder, renew time, resourceVersion) and when we first saw it.
    observed: Option<(Observed, Instant)>,
    /// The Lease as last read or written (its resourceVersion is the precondition of the next update).
    last: Option<Lease>,
}

#[derive(Debug, Clone, PartialEq)]
struct Observed {
    holder: Option<String>,
    renew: Option<MicroTime>,
    duration: Option<i32>,
}

/// The outcome of one try.
enum Tried {
    /// We hold the Lease; the renewal was sent at this instant.
    Held(Instant),
    /// Someone else holds it (or the request lost a race).
    Other,
    /// The request failed.
    Failed(String),
}

impl<S: LeaseStore> Elector<S> {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut last_error: Option<String> = None;
        loop {
            let tried = tokio::select! {
                t = self.try_acquire_or_renew() => t,
                _ = shutdown.cancelled() => break,
            };
            match tried {
                Tried::Held(sent) => {
                    let until = sent + self.timings.renew_deadline;
                    let was = self.set_until(Some(until));
                    // A lapse (the margin ran out, e.g. after a pause) and a renewal count as a
                    // new term: receivers waiting in `wait_leader` are woken either way.
                    if !was {
                        self.announce(true, "this replica holds the Lease");
                    }
                    last_error = None;
                }
                Tried::Other => self.step_down("another replica holds the Lease"),
                Tried::Failed(e) => {
                    if last_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(lease = %self.name, "leader election: {e}");
                        last_error = Some(e);
                    }
                }
            }
            // Step down when the margin ran out even though no answer said so.
            if self.until().is_some_and(|u| Instant::now() >= u) {
                self.step_down("could not renew the Lease within --lease-renew-deadline");
            }
            let wake = match self.until() {
                Some(u) => (Instant::now() + self.timings.retry_period).min(u),
                None => Instant::now() + self.jittered_retry(),
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.release().await;
    }

    /// Standbys retry with up to 20 % jitter so that several do not race in lockstep.
    fn jittered_retry(&self) -> Duration {
        self.timings
            .retry_period
            .mul_f64(1.0 + 0.2 * fastrand::f64())
    }

    fn until(&self) -> Option<Instant> {
        *lock(&self.shared.until)
    }

    /// Sets the leading deadline; returns whether we were leading (deadline not passed) before.
    fn set_until(&self, until: Option<Instant>) -> bool {
        let mut g = lock(&self.shared.until);
        let was = g.is_some_and(|u| Instant::now() < u);
        *g = until;
        self.metrics.leader.set(i64::from(until.is_some()));
        was
    }

    fn step_down(&mut self, why: &str) {
        if self.until().is_some() {
            self.set_until(None);
            self.announce(false, why);
        }
    }

    /// Counts, logs and tells the handles that this replica now leads (or no longer does).
    fn announce(&self, leading: bool, why: &str) {
        let direction = if leading { "acquired" } else { "lost" };
        self.metrics
            .leader_transitions_total
            .with_label_values(&[direction])
            .inc();
        if leading {
            tracing::info!(identity = %self.identity, lease = %self.name, "leader election: leading: {why}");
        } else {
            tracing::warn!(identity = %self.identity, lease = %self.name, "leader election: stepped down: {why}");
        }
        self.tx.send_replace(leading);
    }

    async fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // One request may take at most the retry period: a slow answer must not eat the margin.
        match tokio::time::timeout(self.timings.retry_period, f).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Other(format!(
                "the API server did not answer a Lease request within {:?}",
                self.timings.retry_period
            ))),
        }
    }

    fn record(&self, holder: bool, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(jiff::Timestamp::now());
        LeaseSpec {
            holder_identity: holder.then(|| self.identity.clone()),
            lease_duration_seconds: Some(self.timings.duration.as_secs() as i32),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Tried {
        let sent = Instant::now();
        // The leader renews from the Lease it last wrote (one request); a 409 means someone else
        // wrote since, and the next try reads it.
        let current = match (self.until().is_some(), self.last.clone()) {
            (true, Some(l)) => l,
            _ => match self.call(self.store.get()).await {
                Ok(Some(l)) => l,
                Ok(None) => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(self.name.clone()),
                            ..ObjectMeta::default()
                        },
                        spec: Some(self.record(true, None, 0)),
                    };
                    return match self.call(self.store.create(lease)).await {
                        Ok(l) => {
                            self.last = Some(l);
                            Tried::Held(sent)
                        }
                        Err(StoreError::Conflict) => Tried::Other,
                        Err(StoreError::Other(e)) => Tried::Failed(e),
                    };
                }
                Err(StoreError::Conflict) => return Tried::Other,
                Err(StoreError::Other(e)) => return Tried::Failed(e),
            },
        };
        let spec = current.spec.clone().unwrap_or_default();
        let seen = Observed {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew: spec.renew_time.clone(),
            duration: spec.lease_duration_seconds,
        };
        let now = Instant::now();
        let first_seen = match &self.observed {
            Some((o, at)) if *o == seen => *at,
            _ => {
                self.observed = Some((seen.clone(), now));
                now
            }
        };
        let ours = seen.holder.as_deref() == Some(self.identity.as_str());
        // Expiry on our own clock: the record unchanged for its whole duration since we first saw it.
        // The record's own duration, within what we accept ourselves: a hostile or broken record
        // (i32::MAX seconds) must not keep the Lease held for decades.
        let their_duration = seen
            .duration
            .filter(|d| *d > 0)
            .map_or(self.timings.duration, |d| Duration::from_secs(d as u64))
            .min(MAX_LEASE_DURATION);
        let expired = now >= first_seen + their_duration;
        if !ours && seen.holder.is_some() && !expired {
            self.last = Some(current);
            return Tried::Other;
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        let (acquire, transitions) = if ours {
            (spec.acquire_time.clone(), transitions)
        } else {
            (None, transitions.saturating_add(1))
        };
        let lease = Lease {
            metadata: current.metadata.clone(),
            spec: Some(self.record(true, acquire, transitions)),
        };
        match self.call(self.store.replace(lease)).await {
            Ok(l) => {
                self.last = Some(l);
                Tried::Held(sent)
            }
            Err(StoreError::Conflict) => {
                self.last = None;
                Tried::Other
            }
            Err(StoreError::Other(e)) => {
                self.last = None;
                Tried::Failed(e)
            }
        }
    }

    /// On shutdown: if leading, clear the holder so a standby takes over at its next try
    /// (client-go's ReleaseOnCancel). Writing stops first.
    async fn release(mut self) {
        let leading = self.until().is_some_and(|u| Instant::now() < u);
        self.set_until(None);
        self.tx.send_replace(false);
        let Some(current) = self.last.take().filter(|_| leading) else {
            return;
        };
        let transitions = current
            .spec
            .as_ref()
            .and_then(|s| s.lease_transitions)
            .unwrap_or(0);
        let mut spec = self.record(false, None, transitions);
        spec.lease_duration_seconds = Some(1);
        let lease = Lease {
            metadata: current.metadata.clone(),
            spec: Some(spec),
        };
        match self.call(self.store.replace(lease)).await {
            Ok(_) => tracing::info!(lease = %self.name, "leader election: released the Lease"),
            Err(e) => {
                tracing::warn!(lease = %self.name, "leader election: could not release the Lease ({e}); a standby takes over when it expires")
            }
        }
    }
}

#[cfg(test)]
mod tests;
