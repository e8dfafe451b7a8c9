//! The rotator against a model of Label Studio's PAT lifecycle (one live PAT per user, rotate
//! blacklists at once, answers that can be lost after the commit) and an in-memory store that can
//! refuse, fail and "crash". The real server and Secret are in the e2e suite; these pin the order
//! of steps and every branch of the repair.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use super::*;
use crate::{
    exchange::{ExchangeError, LifecycleError, PatApi, Truncated},
    jwt::tests::make_jwt,
    reason::Reason,
};

/// A PAT with `jti`, issued at `iat`, living 200 years (the open-source edition).
fn pat(jti: &str, iat: i64) -> Secret {
    Secret::new(make_jwt(&format!(
        r#"{{"token_type":"refresh","exp":{},"iat":{iat},"jti":"{jti}","user_id":"1"}}"#,
        iat + 200 * 365 * 86_400
    )))
}

fn access(exp: i64) -> Access {
    Access::from_token(Secret::new(make_jwt(&format!(
        r#"{{"token_type":"access","exp":{exp},"iat":{},"jti":"a{exp}","user_id":"1"}}"#,
        exp - 300
    ))))
    .unwrap()
}

fn truncate(t: &Secret) -> Truncated {
    let mut parts = t.expose().split('.');
    Secret::new(format!(
        "{}.{}",
        parts.next().unwrap(),
        parts.next().unwrap()
    ))
}

#[derive(Default)]
struct Ls {
    live: Vec<Secret>,
    dead: Vec<Secret>,
    minted: u32,
    /// The next rotate commits, then its answer is lost.
    lose_next_answer: bool,
    /// The next rotate is lost before it reaches the server.
    drop_next_request: bool,
    calls: Vec<&'static str>,
}

#[derive(Clone, Default)]
struct FakeLs(Arc<Mutex<Ls>>);

impl FakeLs {
    fn with_live(p: &Secret) -> Self {
        let ls = FakeLs::default();
        ls.0.lock().unwrap().live.push(p.clone());
        ls
    }
    fn mint(ls: &mut Ls) -> Secret {
        ls.minted += 1;
        let p = pat(
            &format!("minted{}", ls.minted),
            1_900_000_000 + i64::from(ls.minted),
        );
        ls.live.push(p.clone());
        p
    }
    fn lost() -> LifecycleError {
        LifecycleError::Exchange(ExchangeError::Timeout {
            what: "PAT rotation",
            timeout: Duration::from_secs(10),
        })
    }
    fn is_dead(&self, p: &Secret) -> bool {
        self.0.lock().unwrap().dead.contains(p)
    }
    fn live(&self) -> Vec<Secret> {
        self.0.lock().unwrap().live.clone()
    }
    fn calls(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().calls.clone()
    }
}

impl PatApi for FakeLs {
    async fn rotate(&self, _access: &Secret, old: &Secret) -> Result<Secret, LifecycleError> {
        let mut ls = self.0.lock().unwrap();
        ls.calls.push("rotate");
        if std::mem::take(&mut ls.drop_next_request) {
            return Err(Self::lost());
        }
        let Some(i) = ls.live.iter().position(|p| p == old) else {
            return Err(LifecycleError::Exchange(ExchangeError::Http {
                reason: Reason::BadRequest,
                what: "PAT rotation",
                status: 400,
                detail: None,
                retry_after: None,
            }));
        };
        let old = ls.live.remove(i);
        ls.dead.push(old);
        let new = Self::mint(&mut ls);
        if std::mem::take(&mut ls.lose_next_answer) {
            return Err(Self::lost());
        }
        Ok(new)
    }
    async fn list(&self, _access: &Secret) -> Result<Vec<Truncated>, LifecycleError> {
        let mut ls = self.0.lock().unwrap();
        ls.calls.push("list");
        Ok(ls.live.iter().map(truncate).collect())
    }
    async fn blacklist(&self, token: &Truncated) -> Result<bool, LifecycleError> {
        let mut ls = self.0.lock().unwrap();
        ls.calls.push("blacklist");
        match ls.live.iter().position(|p| truncate(p) == *token) {
            Some(i) => {
                let p = ls.live.remove(i);
                ls.dead.push(p);
                Ok(true)
            }
            None => Ok(false),
        }
    }
    async fn create(&self, _access: &Secret) -> Result<Secret, LifecycleError> {
        let mut ls = self.0.lock().unwrap();
        ls.calls.push("create");
        if !ls.live.is_empty() {
            return Err(LifecycleError::AlreadyHolds);
        }
        Ok(Self::mint(&mut ls))
    }
}

#[derive(Default)]
struct Held {
    pat: Option<Secret>,
    intent: Option<Intent>,
    refuse: Option<Refusal>,
    failing_persists: u32,
    log: Vec<String>,
}

#[derive(Clone, Default)]
struct MemStore(Arc<Mutex<Held>>);

impl MemStore {
    fn holding(p: &Secret) -> Self {
        let s = MemStore::default();
        s.0.lock().unwrap().pat = Some(p.clone());
        s
    }
    fn pat(&self) -> Option<Secret> {
        self.0.lock().unwrap().pat.clone()
    }
    fn intent_now(&self) -> Option<Intent> {
        self.0.lock().unwrap().intent.clone()
    }
    fn log(&self) -> Vec<String> {
        self.0.lock().unwrap().log.clone()
    }
}

impl PatStore for MemStore {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn check(&self) -> BoxFuture<'_, Result<String, Refusal>> {
        let r = self.0.lock().unwrap().refuse.clone();
        Box::pin(async move { r.map_or(Ok("ok".into()), Err) })
    }
    fn begin<'a>(
        &'a self,
        intent: &'a Intent,
        pat: &'a Secret,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut h = self.0.lock().unwrap();
        let r = if h.pat.as_ref() == Some(pat) {
            h.intent = Some(intent.clone());
            h.log.push("begin".into());
            Ok(())
        } else {
            Err(StoreError("changed".into()))
        };
        Box::pin(async move { r })
    }
    fn intent(&self) -> BoxFuture<'_, Result<Option<Intent>, StoreError>> {
        let i = self.0.lock().unwrap().intent.clone();
        Box::pin(async move { Ok(i) })
    }
    fn persist<'a>(&'a self, pat: &'a Secret) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut h = self.0.lock().unwrap();
        let r = if h.failing_persists > 0 {
            h.failing_persists -= 1;
            h.log.push("persist failed".into());
            Err(StoreError("API server away".into()))
        } else {
            h.pat = Some(pat.clone());
            h.intent = None;
            h.log.push("persist".into());
            Ok(())
        };
        Box::pin(async move { r })
    }
}

const T0: f64 = 1_900_000_000.0;

fn rotator(ls: &FakeLs, store: &MemStore, every: u64) -> (Rotator<FakeLs>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let r = Rotator::new(
        Arc::new(ls.clone()),
        Box::new(store.clone()),
        RotationPolicy {
            every: Some(Duration::from_secs(every)),
            before_expiry: None,
        },
        metrics.clone(),
        Leadership::always(),
    );
    (r, metrics)
}

fn count(m: &Metrics, result: &str) -> u64 {
    m.pat_rotations_total.with_label_values(&[result]).get()
}

#[tokio::test(start_paused = true)]
async fn rotates_when_due_in_the_crash_safe_order() {
    let old = pat("old", T0 as i64);
    let ls = FakeLs::with_live(&old);
    let store = MemStore::holding(&old);
    let (mut r, m) = rotator(&ls, &store, 60);

    assert_eq!(r.due_in(&old, T0 + 10.0), Some(50.0));
    assert!(matches!(
        r.rotate(&access(T0 as i64 + 300), &old, T0 + 10.0, T0 + 10.0)
            .await,
        Outcome::Unchanged
    ));
    assert!(ls.calls().is_empty(), "not due: nothing asked");

    let out = r
        .rotate(&access(T0 as i64 + 360), &old, T0 + 61.0, T0 + 61.0)
        .await;
    let Outcome::Rotated(new) = out else {
        panic!("{out:?}")
    };
    assert_eq!(
        store.log(),
        ["begin", "persist"],
        "intent recorded before the rotate call, persisted after"
    );
    assert_eq!(store.pat(), Some(new.clone()));
    assert_eq!(store.intent_now(), None, "the persist cleared the intent");
    assert!(ls.is_dead(&old));
    assert_eq!(ls.live(), [new]);
    assert_eq!(count(&m, "rotated"), 1);
}

#[tokio::test(start_paused = true)]
async fn refused_write_back_never_rotates_and_backs_off() {
    let old = pat("old", T0 as i64);
    let ls = FakeLs::with_live(&old);
    let store = MemStore::holding(&old);
    store.0.lock().unwrap().refuse = Some(Refusal {
        reason: "forbidden",
        detail: "no patch".into(),
    });
    let (mut r, m) = rotator(&ls, &store, 5);
    for _ in 0..3 {
        let out = r
            .rotate(&access(T0 as i64 + 300), &old, T0 + 10.0, T0 + 10.0)
            .await;
        assert!(matches!(out, Outcome::Unchanged));
    }
    assert!(
        ls.calls().is_empty(),
        "Label Studio never asked: {:?}",
        ls.calls()
    );
    assert!(store.log().is_empty(), "nothing written");
    assert_eq!(
        count(&m, "refused"),
        1,
        "backed off after the first refusal"
    );
    let wait = r.due_in(&old, T0 + 10.0).unwrap();
    assert!(
        (RETRY_FIRST.as_secs_f64() - 1.0..=RETRY_FIRST.as_secs_f64()).contains(&wait),
        "{wait}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_answer_is_repaired_with_the_access_token_in_hand() {
    let old = pat("old", T0 as i64);
    let ls = FakeLs::with_live(&old);
    ls.0.lock().unwrap().lose_next_answer = true;
    let store = MemStore::holding(&old);
    let (mut r, m) = rotator(&ls, &store, 5);

    let out = r
        .rotate(&access(T0 as i64 + 300), &old, T0 + 10.0, T0 + 10.0)
        .await;
    let Outcome::Recovered(new) = out else {
        panic!("{out:?}")
    };
    assert_eq!(ls.calls(), ["rotate", "list", "blacklist", "create"]);
    let lost = pat("minted1", 1_900_000_001);
    assert!(ls.is_dead(&lost), "the PAT nobody saw is blacklisted");
    assert!(ls.is_dead(&old));
    assert_eq!(ls.live(), std::slice::from_ref(&new));
    assert_eq!(store.pat(), Some(new));
    assert_eq!(count(&m, "recovered"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_rotate_that_never_arrived_is_not_repaired_and_keeps_the_intent() {
    let old = pat("old", T0 as i64);
    let ls = FakeLs::with_live(&old);
    ls.0.lock().unwrap().drop_next_request = true;
    let store = MemStore::holding(&old);
    let (mut r, m) = rotator(&ls, &store, 5);
    let out = r
        .rotate(&access(T0 as i64 + 300), &old, T0 + 10.0, T0 + 10.0)
        .await;
    assert!(matches!(out, Outcome::Unchanged));
    assert_eq!(
        ls.calls(),
        ["rotate", "list"],
        "the old PAT is listed: nothing blacklisted"
    );
    assert_eq!(ls.live(), std::slice::from_ref(&old));
    assert!(
        store.intent_now().is_some(),
        "kept: a late commit would still be repaired"
    );
    assert_eq!(count(&m, "failed"), 1);
}

/// A crash after the rotate answer (the new PAT only in the dead process's memory): the restarted
/// process sees the old PAT refused, the intent naming it, and an access token read back.
#[tokio::test(start_paused = true)]
async fn a_restart_repairs_a_rotation_that_died_with_the_process() {
    let old = pat("old", T0 as i64);
    let ls = FakeLs::with_live(&old);
    let store = MemStore::holding(&old);
    store.0.lock().unwrap().failing_persists = u32::MAX;
    {
        // The first process rotates, cannot persist (as good as killed before the write-back).
        let (mut first, _) = rotator(&ls, &store, 5);
        let out = first
            .rotate(&access(T0 as i64 + 30), &old, T0 + 10.0, T0 + 10.0)
            .await;
        assert!(matches!(out, Outcome::Unpersisted(_)), "{out:?}");
    }
    store.0.lock().unwrap().failing_persists = 0;
    assert!(ls.is_dead(&old));
    let (mut second, m) = rotator(&ls, &store, 5);
    // No access token left: nothing to do, said loudly, counted.
    assert!(second
        .recover(
            &old,
            vec![access(T0 as i64 + 5).token],
            T0 + 20.0,
            T0 + 20.0
        )
        .await
        .is_none());
    assert_eq!(count(&m, "failed"), 1);
    // With the access token the first process published (still valid):
    let out = second
        .recover(
            &old,
            vec![Secret::new("garbage"), access(T0 as i64 + 300).token],
            T0 + 20.0,
            T0 + 20.0,
        )
        .await;
    let Some(Outcome::Recovered(new)) = out else {
        panic!("{out:?}")
    };
    assert_eq!(store.pat(), Some(new.clone()));
    assert_eq!(ls.live(), [new]);
}

#[tokio::test(start_paused = true)]
async fn a_blacklisting_that_is_not_ours_is_left_to_a_person() {
    let old = pat("old", T0 as i64);
    let ls = FakeLs::default();
    let store = MemStore::holding(&old);
    let (mut r, _) = rotator(&ls, &store, 5);
    // No intent at all.
    assert!(r
        .recover(&old, vec![access(T0 as i64 + 300).token], T0, T0)
        .await
        .is_none());
    // An intent for another PAT, and one too old to act on.
    for intent in [
        Intent {
            from: jwt::jti_fingerprint(pat("other", 1).expose()).unwrap(),
            at: T0 as i64,
        },
        Intent {
            from: jwt::jti_fingerprint(old.expose()).unwrap(),
            at: T0 as i64 - INTENT_TTL.as_secs() as i64 - 1,
        },
    ] {
        store.0.lock().unwrap().intent = Some(intent);
        assert!(r
            .recover(&old, vec![access(T0 as i64 + 300).token], T0, T0)
            .await
            .is_none());
    }
    assert!(ls.calls().is_empty(), "{:?}", ls.calls());
}

#[tokio::test(start_paused = true)]
async fn a_persist_that_fails_for_a_while_is_retried_within_the_access_token() {
    let old = pat("old", T0 as i64);
    let ls = FakeLs::with_live(&old);
    let store = MemStore::holding(&old);
    store.0.lock().unwrap().failing_persists = 3;
    let (mut r, m) = rotator(&ls, &store, 5);
    let out = r
        .rotate(&access(T0 as i64 + 300), &old, T0 + 10.0, T0 + 10.0)
        .await;
    assert!(matches!(out, Outcome::Rotated(_)), "{out:?}");
    assert_eq!(
        store.log(),
        [
            "begin",
            "persist failed",
            "persist failed",
            "persist failed",
            "persist"
        ]
    );
    assert_eq!(count(&m, "rotated"), 1);
}

#[tokio::test(start_paused = true)]
async fn an_unpersisted_pat_is_written_on_the_next_call_instead_of_rotating_again() {
    let old = pat("old", T0 as i64);
    let ls = FakeLs::with_live(&old);
    let store = MemStore::holding(&old);
    store.0.lock().unwrap().failing_persists = u32::MAX;
    let (mut r, _) = rotator(&ls, &store, 5);
    let Outcome::Unpersisted(new) = r
        .rotate(&access(T0 as i64 + 60), &old, T0 + 10.0, T0 + 10.0)
        .await
    else {
        panic!()
    };
    store.0.lock().unwrap().failing_persists = 0;
    let out = r
        .rotate(&access(T0 as i64 + 400), &new, T0 + 100.0, T0 + 100.0)
        .await;
    assert!(matches!(&out, Outcome::Rotated(p) if *p == new), "{out:?}");
    assert_eq!(ls.calls(), ["rotate"], "one rotation only");
    assert_eq!(store.pat(), Some(new));
}

#[test]
fn policy_due_times_saturate_and_pick_the_earlier_trigger() {
    let p = RotationPolicy {
        every: Some(Duration::from_secs(100)),
        before_expiry: Some(Duration::from_secs(50)),
    };
    assert_eq!(p.due(Some(1000), Some(1120)), Some(1070.0));
    assert_eq!(p.due(Some(1000), Some(5000)), Some(1100.0));
    assert_eq!(p.due(None, Some(5000)), Some(4950.0));
    assert_eq!(p.due(None, None), None);
    // Outside values: no panic, no wrap.
    for (iat, exp) in [(i64::MIN, i64::MAX), (i64::MAX, i64::MIN), (0, 0)] {
        let d = p.due(Some(iat), Some(exp)).unwrap();
        assert!(d.is_finite());
        let _ = p.margin_exceeds_lifetime(Some(iat), Some(exp));
    }
    assert!(p.margin_exceeds_lifetime(Some(0), Some(50)));
    assert!(!p.margin_exceeds_lifetime(Some(0), Some(51)));
}

#[test]
fn intents_round_trip_only_in_our_form() {
    let i = Intent {
        from: "0123456789abcdef".into(),
        at: 1_900_000_000,
    };
    assert_eq!(Intent::decode(&i.encode()), Some(i.clone()));
    for bad in [
        "",
        "{}",
        " {\"from\":\"0123456789abcdef\",\"at\":1}",
        "{\"from\":\"0123456789ABCDEF0\",\"at\":1}",
    ] {
        assert_eq!(Intent::decode(bad), None, "{bad}");
    }
    let p = pat("x", 1);
    let mine = Intent {
        from: jwt::jti_fingerprint(p.expose()).unwrap(),
        at: 1000,
    };
    assert!(mine.names(&p, 1000.0 + INTENT_TTL.as_secs_f64()));
    assert!(!mine.names(&p, 1001.0 + INTENT_TTL.as_secs_f64()));
    assert!(!mine.names(&pat("y", 1), 1000.0));
}

#[test]
fn rotation_periods_below_the_minimum_are_refused() {
    assert!("4s".parse::<RotateEvery>().is_err());
    assert_eq!(
        "5s".parse::<RotateEvery>(),
        Ok(RotateEvery(MIN_ROTATE_EVERY))
    );
    assert!("720h".parse::<RotateEvery>().is_ok());
    assert!("0".parse::<RotateEvery>().is_err());
}
