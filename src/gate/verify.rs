//! Verifying a caller's credential with Label Studio, which has no token-verify endpoint: a
//! credential is proven by using it (`GET /api/current-user/whoami`), and the answer names the
//! user. Verdicts are cached so Label Studio sees a bounded load whatever callers do:
//!
//! - keyed by HMAC-SHA256 of the credential under a per-process random key (never the
//!   credential itself: a memory dump or a debug print holds no usable token);
//! - an admission lasts until the token's own `exp` or `ttl`, whichever is first, a refusal
//!   [`REFUSAL_TTL`]; concurrent requests with the same new credential wait for one verification;
//! - at most [`MAX_ENTRIES`] verdicts (expired ones go first when full), at most
//!   [`MAX_IN_FLIGHT`] verifications at a time;
//! - each client address (an IPv6 /64) has a budget of [`REFUSAL_BURST`] verifications that end
//!   refused, refilled at [`REFUSALS_PER_SEC`]: a flood of garbage tokens from one client costs
//!   Label Studio that many calls, then is answered 429 without asking.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{header, HeaderValue};
use ring::hmac;
use tokio::sync::{OnceCell, Semaphore};
use tokio::time::Instant;

use super::policy::Identity;
use crate::metrics::Metrics;

/// How long a refusal is remembered: long enough that a client retrying a bad token in a loop
/// costs Label Studio one call per this period, short enough that a token that was refused
/// because of a passing problem (a user re-activated) works again soon.
pub const REFUSAL_TTL: Duration = Duration::from_secs(30);
/// Most verdicts held: ~150 bytes each, so the cache stays under a few MiB whatever a flood does.
pub const MAX_ENTRIES: usize = 16_384;
/// Most whoami calls at a time: Label Studio's development server runs a handful of threads; the
/// gate must never take all of them.
pub const MAX_IN_FLIGHT: usize = 8;
/// Refused verifications a client may cause at once before being limited.
pub const REFUSAL_BURST: f64 = 20.0;
/// Refused verifications a client may cause per second, sustained.
pub const REFUSALS_PER_SEC: f64 = 1.0;
/// Most client addresses tracked by the limiter (full ones, i.e. well-behaved clients, are
/// dropped first when full; beyond it, new unknown credentials are limited for everyone).
const MAX_CLIENTS: usize = 16_384;
/// Largest whoami answer read (~1 KiB in 1.23.2).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A credential a caller presented, in the scheme Label Studio takes it in.
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    /// `Authorization: Bearer <access token>`, with its `exp` (unix seconds).
    Bearer {
        /// The token.
        token: &'a str,
        /// Its expiry.
        exp: i64,
    },
    /// `Authorization: Token <legacy token>` (never expires).
    Token(&'a str),
}

impl Credential<'_> {
    fn header(&self) -> Option<HeaderValue> {
        let s = match self {
            Credential::Bearer { token, .. } => format!("Bearer {token}"),
            Credential::Token(t) => format!("Token {t}"),
        };
        let mut v = HeaderValue::from_str(&s).ok()?;
        v.set_sensitive(true);
        Some(v)
    }
}

/// What the verification of a credential says.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Label Studio accepted it, for this user.
    Admitted(Arc<Identity>),
    /// Label Studio refused it.
    Refused,
    /// Not asked: this client caused too many refusals lately.
    Limited,
    /// Label Studio could not be asked (down, slow, or an answer that is not whoami's).
    Unavailable,
}

#[derive(Clone)]
enum Verdict {
    Admitted(Arc<Identity>),
    Refused,
}

struct Cached {
    verdict: Verdict,
    until: Instant,
}

type Slot = Arc<OnceCell<Cached>>;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Verifies credentials with Label Studio, caching verdicts.
pub struct Verifier {
    client: reqwest::Client,
    whoami: reqwest::Url,
    ttl: Duration,
    key: hmac::Key,
    cache: Mutex<HashMap<[u8; 32], Slot>>,
    in_flight: Semaphore,
    clients: Mutex<HashMap<IpAddr, Bucket>>,
    metrics: Arc<Metrics>,
}

impl Verifier {
    /// A verifier calling `whoami` with `client` (which carries the request timeout); admissions
    /// last at most `ttl`.
    pub fn new(
        client: reqwest::Client,
        whoami: reqwest::Url,
        ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let key =
            hmac::Key::generate(hmac::HMAC_SHA256, &rng).expect("the system's random source works");
        Verifier {
            client,
            whoami,
            ttl,
            key,
            cache: Mutex::new(HashMap::new()),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            clients: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The verdict on `cred` from client `peer`, at `now_unix` (seconds, for the token's `exp`).
    pub async fn verify(&self, cred: Credential<'_>, peer: IpAddr, now_unix: i64) -> Outcome {
        let key = self.key_of(cred);
        let slot = self.slot(key);
        let result = slot
            .get_or_try_init(|| self.ask(cred, peer, now_unix))
            .await;
        match result {
            Ok(c) => match &c.verdict {
                Verdict::Admitted(who) => Outcome::Admitted(who.clone()),
                Verdict::Refused => Outcome::Refused,
            },
            Err(outcome) => {
                // Nothing was learnt: the slot goes, so it neither holds a place in the cache
                // nor stops the next request from asking.
                let mut cache = lock(&self.cache);
                if cache.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                    cache.remove(&key);
                }
                self.metrics.gate_cache_entries.set(cache.len() as i64);
                outcome
            }
        }
    }

    fn key_of(&self, cred: Credential<'_>) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        match cred {
            Credential::Bearer { token, .. } => {
                ctx.update(b"Bearer ");
                ctx.update(token.as_bytes());
            }
            Credential::Token(t) => {
                ctx.update(b"Token ");
                ctx.update(t.as_bytes());
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// The cache slot for `key`: the current one, or a new one when there is none or its verdict
    /// has expired. When the cache is full and nothing has expired, the new slot is not kept
    /// (the request is still verified, bounded by the limiter and the in-flight cap).
    fn slot(&self, key: [u8; 32]) -> Slot {
        let now = Instant::now();
        let mut cache = lock(&self.cache);
        if let Some(s) = cache.get(&key) {
            match s.get() {
                Some(c) if c.until <= now => {}
                _ => return s.clone(),
            }
        }
        let slot = Slot::default();
        if cache.len() >= MAX_ENTRIES && !cache.contains_key(&key) {
            cache.retain(|_, s| s.get().is_none_or(|c| c.until > now));
        }
        if cache.len() < MAX_ENTRIES || cache.contains_key(&key) {
            cache.insert(key, slot.clone());
        }
        self.metrics.gate_cache_entries.set(cache.len() as i64);
        slot
    }

    /// Asks Label Studio (within this client's refusal budget and the in-flight cap).
    async fn ask(
        &self,
        cred: Credential<'_>,
        peer: IpAddr,
        now_unix: i64,
    ) -> Result<Cached, Outcome> {
        if !self.take(peer) {
            self.metrics
                .gate_verifications_total
                .with_label_values(&["limited"])
                .inc();
            return Err(Outcome::Limited);
        }
        let Ok(_permit) = self.in_flight.acquire().await else {
            return Err(Outcome::Unavailable);
        };
        let Some(auth) = cred.header() else {
            return Err(Outcome::Unavailable);
        };
        let answer = self
            .client
            .get(self.whoami.clone())
            .header(header::AUTHORIZATION, auth)
            .header(header::ACCEPT, "application/json")
            .send()
            .await;
        let verdict = match answer {
            Ok(r) if r.status() == reqwest::StatusCode::OK => match read_identity(r).await {
                Some(who) => Verdict::Admitted(Arc::new(who)),
                None => return self.unavailable(),
            },
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => Verdict::Refused,
            _ => return self.unavailable(),
        };
        let now = Instant::now();
        let until = match &verdict {
            Verdict::Admitted(_) => {
                self.give_back(peer);
                self.metrics
                    .gate_verifications_total
                    .with_label_values(&["admitted"])
                    .inc();
                let left = match cred {
                    Credential::Bearer { exp, .. } => Duration::from_secs(
                        u64::try_from(exp.saturating_sub(now_unix)).unwrap_or(0),
                    ),
                    Credential::Token(_) => self.ttl,
                };
                now + left.min(self.ttl)
            }
            Verdict::Refused => {
                self.metrics
                    .gate_verifications_total
                    .with_label_values(&["refused"])
                    .inc();
                now + REFUSAL_TTL
            }
        };
        Ok(Cached { verdict, until })
    }

    fn unavailable(&self) -> Result<Cached, Outcome> {
        self.metrics
            .gate_verifications_total
            .with_label_values(&["unavailable"])
            .inc();
        Err(Outcome::Unavailable)
    }

    /// Takes one verification from `peer`'s budget (false: none left).
    fn take(&self, peer: IpAddr) -> bool {
        let now = Instant::now();
        let mut clients = lock(&self.clients);
        let id = client_id(peer);
        if !clients.contains_key(&id) && clients.len() >= MAX_CLIENTS {
            clients.retain(|_, b| refilled(b, now) < REFUSAL_BURST);
            if clients.len() >= MAX_CLIENTS {
                return false;
            }
        }
        let b = clients.entry(id).or_insert(Bucket {
            tokens: REFUSAL_BURST,
            at: now,
        });
        b.tokens = refilled(b, now);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// An admitted verification costs the client nothing.
    fn give_back(&self, peer: IpAddr) {
        if let Some(b) = lock(&self.clients).get_mut(&client_id(peer)) {
            b.tokens = (b.tokens + 1.0).min(REFUSAL_BURST);
        }
    }
}

fn refilled(b: &Bucket, now: Instant) -> f64 {
    (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * REFUSALS_PER_SEC)
        .min(REFUSAL_BURST)
}

/// One client: an IPv4 address, or an IPv6 /64 (what one host usually has to itself).
fn client_id(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
    }
}

async fn read_identity(mut r: reqwest::Response) -> Option<Identity> {
    let mut body = Vec::new();
    while let Some(chunk) = r.chunk().await.ok()? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_id(a), client_id(b));
        assert_ne!(client_id(a), client_id(c));
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(client_id(v4), v4);
    }
}
