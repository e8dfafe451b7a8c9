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
    reconcile::{Ctx, TokenKey},
    resources::{
        LabelStudioConnection, LabelStudioToken, ANNOTATION_REFRESH_NOW, LABEL_PAT_SOURCE,
    },
};
use crate::{metrics::Metrics, schedule::Policy, sink::secret::LABEL_MANAGED, values::Dur};

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

/// Runs the controller until `shutdown`; `synced` is called once every cache has its first list.
pub async fn run(
    client: kube::Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    synced: impl FnOnce() + Send + 'static,
    shutdown: CancellationToken,
) {
    let cmetrics = Arc::new(ControllerMetrics::new(&metrics));

    // Token resources: in the watched namespaces, or everywhere.
    let token_apis: Vec<Api<LabelStudioToken>> = if settings.args.watch_namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        settings
            .args
            .watch_namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), &ns.0))
            .collect()
    };
    let secret_apis: Vec<Api<Secret>> = if settings.args.watch_namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        settings
            .args
            .watch_namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), &ns.0))
            .collect()
    };
    // Lists are paged so a restart with 10,000 objects never holds one giant answer.
    let wc = || watcher::Config::default().page_size(500);

    let (tokens, token_writer) = reflector::store();
    let token_stream = futures::stream::select_all(
        token_apis
            .into_iter()
            .map(|api| watcher(api, wc()).default_backoff().boxed()),
    )
    .modify(strip::<_>)
    .reflect(token_writer)
    .applied_objects()
    // Status patches of our own change neither the generation nor the refresh-now annotation.
    .predicate_filter(
        |t: &LabelStudioToken| {
            let refresh = t
                .annotations()
                .get(ANNOTATION_REFRESH_NOW)
                .map(|v| {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    v.hash(&mut h);
                    h.finish()
                })
                .unwrap_or(0);
            Some(predicates::generation(t).unwrap_or(0) ^ refresh.rotate_left(17))
        },
        Default::default(),
    );

    let (pats, pat_writer) = reflector::store::<Secret>();
    let pat_stream = futures::stream::select_all(secret_apis.iter().cloned().map(|api| {
        watcher(api, wc().labels(&format!("{LABEL_PAT_SOURCE}=true")))
            .default_backoff()
            .boxed()
    }))
    .modify(strip::<_>)
    .reflect(pat_writer)
    .touched_objects();

    let (targets, target_writer) = reflector::store();
    let target_stream = futures::stream::select_all(secret_apis.into_iter().map(|api| {
        let api: Api<PartialObjectMeta<Secret>> = match api.namespace() {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        watcher(api, wc().labels(&format!("{LABEL_MANAGED}=true")))
            .default_backoff()
            .boxed()
    }))
    .modify(strip::<_>)
    .reflect(target_writer)
    .touched_objects();

    let (connections, conn_writer) = reflector::store::<LabelStudioConnection>();
    let conn_stream = watcher(Api::all(client.clone()), wc())
        .default_backoff()
        .modify(strip::<_>)
        .reflect(conn_writer)
        .touched_objects();

    let (namespaces, ns_writer) = reflector::store();
    let ns_stream = watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        wc(),
    )
    .default_backoff()
    .modify(strip::<_>)
    .reflect(ns_writer)
    .touched_objects();

    let ctx = Arc::new(Ctx::new(
        client.clone(),
        settings,
        tokens.clone(),
        pats.clone(),
        targets.clone(),
        connections.clone(),
        namespaces.clone(),
        metrics,
        cmetrics,
    ));

    {
        let (t, p, g, c, n) = (
            tokens.clone(),
            pats.clone(),
            targets.clone(),
            connections.clone(),
            namespaces.clone(),
        );
        tokio::spawn(async move {
            let _ = tokio::join!(
                t.wait_until_ready(),
                p.wait_until_ready(),
                g.wait_until_ready(),
                c.wait_until_ready(),
                n.wait_until_ready()
            );
            synced();
        });
    }

    let by_secret = tokens.clone();
    let by_conn = tokens.clone();
    let by_ns = tokens.clone();
    let concurrency =
        u16::try_from(ctx.settings.args.max_concurrent_exchanges.0 * 4).unwrap_or(u16::MAX);
    Controller::for_stream(token_stream, tokens)
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .owns_stream(target_stream)
        .watches_stream(pat_stream, move |s: Secret| {
            let ns = s.namespace().unwrap_or_default();
            let name = s.name_any();
            by_secret
                .state()
                .into_iter()
                .filter(|t| {
                    t.namespace().as_deref() == Some(ns.as_str())
                        && t.spec.pat_secret_ref.name == name
                })
                .map(|t| reflector::ObjectRef::from_obj(&*t))
                .collect::<Vec<_>>()
        })
        .watches_stream(conn_stream, move |c: LabelStudioConnection| {
            let name = c.name_any();
            by_conn
                .state()
                .into_iter()
                .filter(|t| t.spec.connection_name == name)
                .map(|t| reflector::ObjectRef::from_obj(&*t))
                .collect::<Vec<_>>()
        })
        .watches_stream(
            ns_stream,
            move |n: kube::api::PartialObjectMeta<Namespace>| {
                let name = n.name_any();
                by_ns
                    .state()
                    .into_iter()
                    .filter(|t| t.namespace().as_deref() == Some(name.as_str()))
                    .map(|t| reflector::ObjectRef::from_obj(&*t))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
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
