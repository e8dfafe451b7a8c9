//! The election on tokio's paused clock against an in-memory Lease with resourceVersion checks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::*;

#[derive(Default)]
struct Server {
    lease: Mutex<Option<Lease>>,
    rv: AtomicU64,
    writes: AtomicU64,
}

/// One replica's view of the server; `cut` makes its requests hang (a partition, a frozen node).
#[derive(Clone)]
struct MemStore {
    server: Arc<Server>,
    cut: Arc<AtomicBool>,
}

impl MemStore {
    fn new(server: &Arc<Server>) -> Self {
        MemStore {
            server: server.clone(),
            cut: Arc::default(),
        }
    }
    async fn gate(&self) {
        if self.cut.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
    fn stamp(&self, mut lease: Lease) -> Lease {
        let rv = self.server.rv.fetch_add(1, Ordering::SeqCst) + 1;
        lease.metadata.resource_version = Some(rv.to_string());
        self.server.writes.fetch_add(1, Ordering::SeqCst);
        lease
    }
}

impl LeaseStore for MemStore {
    fn get(&self) -> BoxFuture<'_, Result<Option<Lease>, StoreError>> {
        Box::pin(async move {
            self.gate().await;
            Ok(lock(&self.server.lease).clone())
        })
    }
    fn create(&self, lease: Lease) -> BoxFuture<'_, Result<Lease, StoreError>> {
        Box::pin(async move {
            self.gate().await;
            let mut g = lock(&self.server.lease);
            if g.is_some() {
                return Err(StoreError::Conflict);
            }
            let l = self.stamp(lease);
            *g = Some(l.clone());
            Ok(l)
        })
    }
    fn replace(&self, lease: Lease) -> BoxFuture<'_, Result<Lease, StoreError>> {
        Box::pin(async move {
            self.gate().await;
            let mut g = lock(&self.server.lease);
            let current = g.as_ref().and_then(|l| l.metadata.resource_version.clone());
            if current.is_none() || current != lease.metadata.resource_version {
                return Err(StoreError::Conflict);
            }
            let l = self.stamp(lease);
            *g = Some(l.clone());
            Ok(l)
        })
    }
}

fn timings() -> Timings {
    Timings {
        duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    }
}

struct Replica {
    leadership: Leadership,
    store: MemStore,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
}

fn replica(server: &Arc<Server>, id: &str) -> Replica {
    let store = MemStore::new(server);
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let (leadership, task) = elect(
        store.clone(),
        "lease",
        id.into(),
        timings(),
        metrics.clone(),
        shutdown.clone(),
    );
    Replica {
        leadership,
        store,
        shutdown,
        task,
        metrics,
    }
}

/// A replica that never leads (its store is cut), standing in for one that has exited.
fn replica_view(server: &Arc<Server>) -> Replica {
    let r = replica(server, "gone");
    r.store.cut.store(true, Ordering::SeqCst);
    r
}

/// `r` (alone) takes the Lease over between `secs` and `secs` plus one jittered retry period, and the
/// record then counts `transitions`.
async fn takes_over_after(server: &Server, r: &Replica, secs: f64, transitions: Option<i32>) {
    let took = run_for(&[r], secs as u64 + 10, 0)
        .await
        .expect("takes over");
    assert!(
        (secs..=secs + 2.0 * 1.2 + 0.2).contains(&took),
        "took {took}s, expected {secs}s"
    );
    let lease = lock(&server.lease).clone().unwrap();
    assert_eq!(lease.spec.unwrap().lease_transitions, transitions);
}

fn holder(server: &Server) -> Option<String> {
    lock(&server.lease)
        .as_ref()
        .and_then(|l| l.spec.as_ref()?.holder_identity.clone())
}

/// Steps the paused clock in 100 ms ticks for `secs`, asserting that at no tick do two replicas
/// count themselves leader; returns the first tick (seconds from the start) at which `who` leads.
async fn run_for(replicas: &[&Replica], secs: u64, who: usize) -> Option<f64> {
    let mut first = None;
    for tick in 0..secs * 10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let leaders: Vec<usize> = (0..replicas.len())
            .filter(|i| replicas[*i].leadership.is_leader())
            .collect();
        assert!(
            leaders.len() <= 1,
            "two leaders at {tick} ticks: {leaders:?}"
        );
        if first.is_none() && leaders == [who] {
            first = Some(tick as f64 / 10.0);
        }
    }
    first
}

#[tokio::test(start_paused = true)]
async fn one_leader_and_a_cut_leader_stops_before_the_standby_takes_over() {
    let server = Arc::new(Server::default());
    let a = replica(&server, "a");
    run_for(&[&a], 1, 0).await.expect("a leads at once");
    let b = replica(&server, "b");
    assert!(
        run_for(&[&a, &b], 30, 1).await.is_none(),
        "b stands by while a renews"
    );
    assert!(a.leadership.is_leader());
    assert_eq!(a.metrics.leader.get(), 1);
    assert_eq!(b.metrics.leader.get(), 0);

    // A partition (or SIGSTOP): a's requests hang. It must stop counting itself leader within the
    // renew deadline, and b may take over only after a whole lease duration of silence.
    a.store.cut.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    let mut a_stopped = None;
    let mut b_started = None;
    for _ in 0..400 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (la, lb) = (a.leadership.is_leader(), b.leadership.is_leader());
        assert!(
            !(la && lb),
            "both lead {:?} after the cut",
            cut_at.elapsed()
        );
        if !la && a_stopped.is_none() {
            a_stopped = Some(cut_at.elapsed());
        }
        if lb && b_started.is_none() {
            b_started = Some(cut_at.elapsed());
        }
    }
    let (a_stopped, b_started) = (a_stopped.unwrap(), b_started.expect("b takes over"));
    // a's last renewal was sent at most one retry period before the cut.
    assert!(a_stopped <= timings().renew_deadline, "{a_stopped:?}");
    assert!(
        b_started <= timings().duration + 2 * timings().retry_period,
        "{b_started:?}"
    );
    assert!(
        b_started
            >= a_stopped + (timings().duration - timings().renew_deadline) - timings().retry_period,
        "margin between a stopping ({a_stopped:?}) and b starting ({b_started:?})"
    );
    assert_eq!(holder(&server).as_deref(), Some("b"));
    assert_eq!(
        a.metrics
            .leader_transitions_total
            .with_label_values(&["lost"])
            .get(),
        1
    );

    // a comes back: it finds b's record and stays a standby.
    a.store.cut.store(false, Ordering::SeqCst);
    assert!(
        run_for(&[&a, &b], 30, 0).await.is_none(),
        "a does not lead again"
    );
    assert!(b.leadership.is_leader());
    drop((a.task, b.task));
}

#[tokio::test(start_paused = true)]
async fn release_on_shutdown_hands_over_within_a_retry_period() {
    let server = Arc::new(Server::default());
    let a = replica(&server, "a");
    run_for(&[&a], 1, 0).await.unwrap();
    let b = replica(&server, "b");
    run_for(&[&a, &b], 5, 1).await;
    a.shutdown.cancel();
    let Replica { task, .. } = a;
    task.await.unwrap();
    let a = replica_view(&server);
    assert_eq!(holder(&server), None, "released");
    let took = run_for(&[&a, &b], 10, 1).await.expect("b takes over");
    assert!(
        took <= timings().retry_period.as_secs_f64() * 1.2 + 0.2,
        "took {took}s"
    );
    b.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn wait_leader_and_lost_follow_the_margin() {
    let server = Arc::new(Server::default());
    let a = replica(&server, "a");
    assert!(
        tokio::time::timeout(Duration::from_secs(1), a.leadership.wait_leader())
            .await
            .unwrap()
    );
    let lost = tokio::spawn({
        let l = a.leadership.clone();
        async move {
            l.lost().await;
            Instant::now()
        }
    });
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(!lost.is_finished(), "renewals keep it leading");
    a.store.cut.store(true, Ordering::SeqCst);
    let cut = Instant::now();
    let at = lost.await.unwrap();
    assert!(at - cut <= timings().renew_deadline, "{:?}", at - cut);
    assert!(!a.leadership.is_leader());
    // Writes stop with leadership: nothing more is written while cut.
    let writes = server.writes.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(server.writes.load(Ordering::SeqCst), writes);
    a.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_standby_waits_a_whole_duration_on_its_own_clock_for_a_silent_holder() {
    let server = Arc::new(Server::default());
    // A record left by a holder that is gone (renewed "now" by its clock, never again).
    let dead = replica(&server, "dead");
    run_for(&[&dead], 1, 0).await.unwrap();
    dead.store.cut.store(true, Ordering::SeqCst);
    dead.task.abort();
    let b = replica(&server, "b");
    // A fresh standby must see the record unchanged for 15 s.
    takes_over_after(&server, &b, 15.0, Some(1)).await;
}

#[test]
fn always_leads_without_election() {
    let l = Leadership::always();
    assert!(l.is_leader() && !l.is_elected());
}

#[test]
fn identities_are_unique_without_a_pod_name() {
    assert_eq!(identity(Some("pod-1")), "pod-1");
    let (a, b) = (identity(None), identity(None));
    assert_ne!(a, b);
    assert!(a.len() > 9, "{a}");
    assert_eq!(
        identity(Some("")).len(),
        a.len(),
        "an empty pod name is not an identity"
    );
}

#[test]
fn timings_are_validated_with_one_line_errors() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        l: LeaderArgs,
    }
    let parse = |args: &[&str]| {
        let mut v = vec!["x"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map(|c| c.l.timings())
    };
    assert_eq!(parse(&[]).unwrap().unwrap(), timings());
    for (args, want) in [
        (&["--lease-duration", "10s"][..], "--lease-renew-deadline"),
        (&["--lease-duration", "1s"][..], "whole seconds from 2s"),
        (&["--lease-duration", "15.5s"][..], "whole seconds"),
        (&["--lease-duration", "301s"][..], "to 300s"),
        (
            &["--lease-retry-period", "10s"][..],
            "below --lease-renew-deadline",
        ),
        (&["--lease-retry-period", "0s"][..], "above 0"),
    ] {
        let e = parse(args).unwrap().unwrap_err();
        assert!(e.contains(want) && !e.contains('\n'), "{args:?}: {e}");
    }
    assert!(parse(&["--lease-name", "Bad_Name"]).is_err());
    assert!(parse(&["--lease-namespace", "a/b"]).is_err());
}

#[tokio::test(start_paused = true)]
async fn released_resolves_after_the_release_and_at_once_without_election() {
    tokio::time::timeout(Duration::from_millis(1), Leadership::always().released())
        .await
        .expect("nothing to release");
    let server = Arc::new(Server::default());
    let a = replica(&server, "a");
    run_for(&[&a], 1, 0).await.unwrap();
    let released = tokio::spawn({
        let l = a.leadership.clone();
        async move { l.released().await }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!released.is_finished());
    a.shutdown.cancel();
    released.await.unwrap();
    assert_eq!(holder(&server), None, "released before `released` resolved");
}

/// A record claiming an absurd duration (i32::MAX s) from a holder that never renews is taken over
/// after at most the longest duration we accept ourselves.
#[tokio::test(start_paused = true)]
async fn a_hostile_lease_duration_is_capped() {
    let server = Arc::new(Server::default());
    *lock(&server.lease) = Some(Lease {
        metadata: ObjectMeta {
            name: Some("lease".into()),
            resource_version: Some("1".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("squatter".into()),
            lease_duration_seconds: Some(i32::MAX),
            lease_transitions: Some(i32::MAX),
            ..LeaseSpec::default()
        }),
    });
    server.rv.store(1, Ordering::SeqCst);
    let b = replica(&server, "b");
    // Capped at 300 s; the transition count saturates.
    takes_over_after(&server, &b, 300.0, Some(i32::MAX)).await;
}
