//! `controller`: keeps many Label Studio access tokens fresh, one per `LabelStudioToken` resource,
//! against the Label Studio of a cluster admin's `LabelStudioConnection` (see [`resources`] and the
//! confused-deputy rules in [`guard`]).
//!
//! Shape (kube-runtime, as cert-manager's trigger controller and controller-rs):
//! - the token resources are the main watch, filtered to changes of the spec or the refresh-now
//!   annotation, so the controller's own status patches never trigger a reconcile storm;
//! - opted-in PAT Secrets (label selector, `managedFields` stripped) and the metadata of target
//!   Secrets (label selector) are cached by reflectors: a restart lists them once and refreshes
//!   only what is due, from the expiry each target Secret carries in its annotations;
//! - connections and namespaces are cached too (cluster-scoped, few);
//! - each reconcile decides from caches whether a refresh is due and requeues itself at the next
//!   refresh time; exchanges with Label Studio are capped by a semaphore and spread by jitter, and
//!   the Kubernetes client is rate-limited.

pub mod guard;
mod metrics;
mod ratelimit;
mod reconcile;
pub mod resources;
mod rotation;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    api::{Api, PartialObjectMeta},
    runtime::{
        controller::{Config as ControllerConfig, Controller},
        predicates, reflector, watcher, WatchStreamExt,
    },
    Resource, ResourceExt,
};
use tokio_util::sync::CancellationToken;

use self::{
    reconcile::{Ctx, Shared, TokenKey},
    resources::{
        LabelStudioConnection, LabelStudioToken, ANNOTATION_REFRESH_NOW, LABEL_PAT_SOURCE,
    },
};
use crate::{
    leader::Leadership, metrics::Metrics, schedule::Policy, sink::secret::LABEL_MANAGED,
    values::Dur,
};

pub use self::metrics::ControllerMetrics;

/// The controller's own flags (Label Studio's location comes from the connection resources).
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// Namespaces whose LabelStudioToken resources are served (repeat or comma-separate); none: every namespace.
    #[arg(
        long = "watch-namespace",
        env = "LS_WATCH_NAMESPACES",
        value_delimiter = ',',
        value_name = "NAMESPACE"
    )]
    pub watch_namespaces: Vec<NamespaceName>,

    /// Most token exchanges with Label Studio in flight at once, over all token resources.
    #[arg(
        long,
        env = "LS_MAX_CONCURRENT_EXCHANGES",
        default_value = "8",
        value_name = "N"
    )]
    pub max_concurrent_exchanges: Count,

    /// Average Kubernetes API requests per second (client-side limit; watches count when they start).
    #[arg(long, env = "LS_KUBE_QPS", default_value = "50", value_name = "N")]
    pub kube_qps: Count,

    /// Kubernetes API requests allowed at once above the average rate.
    #[arg(long, env = "LS_KUBE_BURST", default_value = "100", value_name = "N")]
    pub kube_burst: Count,

    /// Extra lead before expiry for tokens in Secrets (the kubelet's sync delay); a resource may override it.
    #[arg(
        long,
        env = "LS_PROPAGATION_MARGIN",
        default_value = "90s",
        value_name = "DURATION"
    )]
    pub propagation_margin: Dur,

    /// Time limit of one request to Label Studio.
    #[arg(
        long,
        env = "LS_REQUEST_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub request_timeout: Dur,

    /// Time limit for connecting to Label Studio.
    #[arg(
        long,
        env = "LS_CONNECT_TIMEOUT",
        default_value = "5s",
        value_name = "DURATION"
    )]
    pub connect_timeout: Dur,
}

/// A namespace name (DNS-1123 label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceName(pub String);

impl std::str::FromStr for NamespaceName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() <= 63 && !s.contains('.') && guard::is_dns_subdomain(s) {
            Ok(NamespaceName(s.to_owned()))
        } else {
            Err(format!(
                "'{}' is not a namespace name",
                crate::secret::shown(s)
            ))
        }
    }
}

/// A count from 1 to 10,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count(pub u32);

impl std::str::FromStr for Count {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().parse::<u32>() {
            Ok(n) if (1..=10_000).contains(&n) => Ok(Count(n)),
            _ => Err(format!(
                "'{}' is not a whole number from 1 to 10000",
                crate::secret::shown(s)
            )),
        }
    }
}

/// What the controller needs that the command line gives.
pub struct Settings {
    /// The flags above.
    pub args: ControllerArgs,
    /// Timing defaults for every token (a resource may override some).
    pub policy: Policy,
    /// This pod's name, for Events.
    pub pod_name: Option<String>,
}

/// Could not start the controller.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(String);

/// Builds the rate-limited client.
pub async fn client(args: &ControllerArgs) -> Result<kube::Client, StartError> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| StartError(format!("Kubernetes client: {e} (in a pod, mount a service account token; elsewhere set KUBECONFIG)")))?;
    let bucket = ratelimit::Bucket::new(f64::from(args.kube_qps.0), args.kube_burst.0);
    let builder = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| StartError(format!("Kubernetes client: {e}")))?;
    Ok(builder
        .with_layer(&ratelimit::RateLimitLayer(bucket))
        .build())
}

/// Runs the controller until `shutdown`, reconciling only while `leadership` says this replica
/// leads (at once and always without election): on losing it, every watch and cache is dropped
/// and the replica stands by again. `synced` is called each time the caches hold their first lists.
pub async fn run(
    client: kube::Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    leadership: Leadership,
    synced: impl Fn() + Send + Sync + 'static,
    shutdown: CancellationToken,
) {
    let cmetrics = Arc::new(ControllerMetrics::new(&metrics));
    let synced = Arc::new(synced);
    let settings = Arc::new(settings);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            led = leadership.wait_leader() => if !led { return },
        }
        tracing::info!(
            identity = leadership.identity(),
            "leading: starting the controller"
        );
        let term = shutdown.child_token();
        let serve = serve(
            client.clone(),
            settings.clone(),
            metrics.clone(),
            cmetrics.clone(),
            leadership.clone(),
            synced.clone(),
            term.clone(),
        );
        tokio::pin!(serve);
        tokio::select! {
            _ = &mut serve => {}
            _ = leadership.lost() => {
                tracing::warn!("lost the lease: standing by (writes stopped at the renew deadline)");
                term.cancel();
                serve.await;
            }
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// One term of leadership: the watches, caches and controllers, until `shutdown`.
async fn serve(
    client: kube::Client,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    cmetrics: Arc<ControllerMetrics>,
    leadership: Leadership,
    synced: Arc<impl Fn() + Send + Sync + 'static>,
    shutdown: CancellationToken,
) {
    // Lists are paged so a restart with 10,000 objects never holds one giant answer.
    let wc = || watcher::Config::default().page_size(500);

    // Cluster-scoped caches, shared by every scope. Their changes reach each scope's controller
    // through a broadcast (a watch stream can feed only one consumer).
    let (connections, conn_writer) = reflector::store::<LabelStudioConnection>();
    let conn_events = watcher(Api::all(client.clone()), wc())
        .default_backoff()
        .modify(strip::<_>)
        .reflect(conn_writer)
        .touched_objects();
    let (namespaces, ns_writer) = reflector::store();
    let ns_events = watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        wc(),
    )
    .default_backoff()
    .modify(strip::<_>)
    .reflect(ns_writer)
    .touched_objects();
    let (conn_tx, _) = tokio::sync::broadcast::channel::<LabelStudioConnection>(1024);
    let (ns_tx, _) = tokio::sync::broadcast::channel::<PartialObjectMeta<Namespace>>(1024);

    // One scope per watched namespace, or one for every namespace.
    let scopes: Vec<Option<String>> = if settings.args.watch_namespaces.is_empty() {
        vec![None]
    } else {
        settings
            .args
            .watch_namespaces
            .iter()
            .map(|n| Some(n.0.clone()))
            .collect()
    };
    let concurrency = u16::try_from(settings.args.max_concurrent_exchanges.0.saturating_mul(4))
        .unwrap_or(u16::MAX);
    let (synced_tx, synced_rx) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared::new(
        client.clone(),
        settings,
        leadership,
        synced_rx,
        connections.clone(),
        namespaces.clone(),
        metrics,
        cmetrics,
    ));
    let api_in = |scope: &Option<String>| -> (
        Api<LabelStudioToken>,
        Api<Secret>,
        Api<PartialObjectMeta<Secret>>,
    ) {
        match scope {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        }
    };

    let mut ready_waits = vec![];
    let mut controllers = vec![];
    for scope in &scopes {
        let (token_api, pat_api, target_api) = api_in(scope);
        let (tokens, token_writer) = reflector::store();
        let token_stream = watcher(token_api, wc())
            .default_backoff()
            .modify(strip::<_>)
            .reflect(token_writer)
            // A deleted resource is never reconciled again (no finalizer): forget it here.
            .inspect({
                let shared = shared.clone();
                move |e| {
                    if let Ok(watcher::Event::Delete(t)) = e {
                        shared.forget(&key_of(t));
                    }
                }
            })
            .applied_objects()
            // Status patches of our own change neither the generation nor the refresh-now annotation.
            .predicate_filter(spec_or_refresh_request, Default::default());
        let (pats, pat_writer) = reflector::store::<Secret>();
        let pat_stream = watcher(pat_api, wc().labels(&format!("{LABEL_PAT_SOURCE}=true")))
            .default_backoff()
            .modify(strip::<_>)
            .reflect(pat_writer)
            .touched_objects();
        let (targets, target_writer) = reflector::store();
        let target_stream = watcher(target_api, wc().labels(&format!("{LABEL_MANAGED}=true")))
            .default_backoff()
            .modify(strip::<_>)
            .reflect(target_writer)
            .touched_objects();
        // Not the token store: the Controller itself waits for it, and a second waiter could be
        // the one never woken.
        ready_waits.push((pats.clone(), targets.clone()));
        let ctx = Arc::new(Ctx::new(shared.clone(), pats, targets));
        let (by_secret, by_conn, by_ns) = (tokens.clone(), tokens.clone(), tokens.clone());
        let shutdown = shutdown.clone();
        let controller = Controller::for_stream(token_stream, tokens)
            .with_config(ControllerConfig::default().concurrency(concurrency))
            .owns_stream(target_stream)
            .watches_stream(pat_stream, move |s: Secret| {
                let ns = s.namespace().unwrap_or_default();
                let name = s.name_any();
                refs(&by_secret, |t| {
                    t.namespace().as_deref() == Some(ns.as_str())
                        && t.spec.pat_secret_ref.name == name
                })
            })
            .watches_stream(
                broadcast_stream(conn_tx.subscribe()),
                move |c: LabelStudioConnection| {
                    let name = c.name_any();
                    refs(&by_conn, |t| t.spec.connection_name == name)
                },
            )
            .watches_stream(
                broadcast_stream(ns_tx.subscribe()),
                move |n: PartialObjectMeta<Namespace>| {
                    let name = n.name_any();
                    refs(&by_ns, |t| t.namespace().as_deref() == Some(name.as_str()))
                },
            )
            .graceful_shutdown_on(async move { shutdown.cancelled().await })
            .run(reconcile::reconcile, reconcile::error_policy, ctx)
            .for_each(|_| futures::future::ready(()));
        controllers.push(controller);
    }

    {
        // The one waiter of every store (see reconcile: concurrent waiters are not all woken).
        let (c, n) = (connections.clone(), namespaces.clone());
        tokio::spawn(async move {
            for (p, g) in ready_waits {
                let _ = tokio::join!(p.wait_until_ready(), g.wait_until_ready());
            }
            let _ = tokio::join!(c.wait_until_ready(), n.wait_until_ready());
            synced_tx.send_replace(true);
            synced();
        });
    }
    // The cluster-scoped streams run until shutdown, fanning their changes out to every scope.
    let fan_out = async {
        let conns = conn_events.for_each(|e| {
            if let Ok(c) = e {
                let _ = conn_tx.send(c);
            }
            futures::future::ready(())
        });
        let nss = ns_events.for_each(|e| {
            if let Ok(n) = e {
                let _ = ns_tx.send(n);
            }
            futures::future::ready(())
        });
        futures::future::join(conns, nss).await;
    };
    tokio::select! {
        _ = futures::future::join_all(controllers) => {}
        _ = fan_out => {}
    }
}

/// The token resources of a store that `pick` selects, as controller triggers.
fn refs(
    store: &reflector::Store<LabelStudioToken>,
    pick: impl Fn(&LabelStudioToken) -> bool,
) -> Vec<reflector::ObjectRef<LabelStudioToken>> {
    store
        .state()
        .into_iter()
        .filter(|t| pick(t))
        .map(|t| reflector::ObjectRef::from_obj(&*t))
        .collect()
}

/// A broadcast receiver as a watch-like stream (a lagging receiver skips what it missed: the
/// objects it names are reconciled on their own schedule anyway).
fn broadcast_stream<T: Clone + Send + 'static>(
    rx: tokio::sync::broadcast::Receiver<T>,
) -> impl futures::Stream<Item = Result<T, watcher::Error>> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(v) => return Some((Ok(v), rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

/// What a reconcile reacts to in a token resource: its spec (generation) and the refresh-now
/// annotation; not its status, which the controller itself writes.
fn spec_or_refresh_request(t: &LabelStudioToken) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    predicates::generation(t).hash(&mut h);
    t.annotations().get(ANNOTATION_REFRESH_NOW).hash(&mut h);
    Some(h.finish())
}

/// Drops `managedFields` before an object enters a cache: they are often larger than the object.
fn strip<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

/// The key of a token resource, for logs (names are not secret).
pub fn key_of(t: &LabelStudioToken) -> TokenKey {
    TokenKey {
        namespace: t.namespace().unwrap_or_default(),
        name: t.name_any(),
    }
}

/// Re-exported for the reconciler's API group check.
pub fn api_version() -> String {
    LabelStudioToken::api_version(&()).into_owned()
}

/// How long a refusal that no watch can clear waits before it is checked again.
pub const REFUSAL_RECHECK: Duration = Duration::from_secs(300);
