//! A fast Label Studio stand-in for the controller's scale benchmark (bench/controller/): real Label
//! Studio on 2 cores cannot mint 10,000 access tokens a lifetime. It answers the two calls the
//! refresher makes the way Label Studio 1.23.2 does (docs/label-studio-token-api.md):
//! - `POST /api/token/refresh` `{"refresh": <PAT>}` → 200 `{"access": <JWT>}` with `token_type`
//!   `access`, `iat` = now, `exp` = now + TTL and the PAT's `user_id`; 401 `token_not_valid` for
//!   anything that is not an unexpired refresh-type JWT;
//! - `GET /api/current-user/whoami` with `Authorization: Bearer <access>` → 200 `{"id", "username",
//!   "email"}` only for a token it issued (keyed signature) that has not expired, else 401.
//!
//! Every answer carries a `Date` header in Django's format. Each request takes `latency` (Label
//! Studio spends ~11–22 ms of CPU per exchange), so the controller's concurrency cap is visible in
//! [`Counters::max_in_flight`]. Nothing is stored per token: issued tokens are recognised by their
//! signature, a keyed hash over header and claims, as a real HS256 signature would be.

use std::{
    hash::BuildHasher,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::{io::AsyncWriteExt, net::TcpListener};

use crate::http1::{read_request, render, Response};

/// What the stand-in has answered (all counters since start).
#[derive(Default, Debug)]
pub struct Counters {
    /// `POST /api/token/refresh` answered 200.
    pub refresh_ok: AtomicU64,
    /// `POST /api/token/refresh` refused.
    pub refresh_refused: AtomicU64,
    /// `whoami` answered 200.
    pub whoami_ok: AtomicU64,
    /// `whoami` refused (unknown or expired token).
    pub whoami_refused: AtomicU64,
    /// Any other request (404).
    pub other: AtomicU64,
    /// Requests being answered now.
    pub in_flight: AtomicU64,
    /// Most requests answered at once since start.
    pub max_in_flight: AtomicU64,
}

impl Counters {
    /// Every request answered so far.
    pub fn total(&self) -> u64 {
        self.refresh_ok.load(Relaxed)
            + self.refresh_refused.load(Relaxed)
            + self.whoami_ok.load(Relaxed)
            + self.whoami_refused.load(Relaxed)
            + self.other.load(Relaxed)
    }

    /// The counters as JSON.
    pub fn json(&self) -> Value {
        json!({
            "refresh_ok": self.refresh_ok.load(Relaxed),
            "refresh_refused": self.refresh_refused.load(Relaxed),
            "whoami_ok": self.whoami_ok.load(Relaxed),
            "whoami_refused": self.whoami_refused.load(Relaxed),
            "other": self.other.load(Relaxed),
            "max_in_flight": self.max_in_flight.load(Relaxed),
        })
    }
}

/// How the stand-in behaves.
#[derive(Clone, Copy, Debug)]
pub struct StandinConfig {
    /// Lifetime of the access tokens it issues (Label Studio: 300 s).
    pub ttl: Duration,
    /// Time each answer takes.
    pub latency: Duration,
}

/// A running stand-in.
pub struct Standin {
    /// Base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    /// Its counters.
    pub counters: Arc<Counters>,
}

/// An unsigned-looking refresh-type JWT (a PAT) for `user_id`, valid for `lifetime`.
pub fn pat(user_id: i64, lifetime: Duration) -> String {
    let now = jiff::Timestamp::now().as_second();
    let claims = json!({
        "token_type": "refresh",
        "iat": now,
        "exp": now + i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2),
        "jti": format!("{:032x}", fastrand::u128(..)),
        "user_id": user_id,
    });
    crate::jwt::unsigned(&claims)
}

/// Starts the stand-in on a free loopback port (its tasks run on the current runtime).
pub async fn start(config: StandinConfig) -> Standin {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind stand-in");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let counters = Arc::new(Counters::default());
    let key = std::collections::hash_map::RandomState::new();
    let c = counters.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let (c, key) = (c.clone(), key.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(req) = read_request(&mut sock, &mut buf).await {
                    let n = c.in_flight.fetch_add(1, Relaxed) + 1;
                    c.max_in_flight.fetch_max(n, Relaxed);
                    tokio::time::sleep(config.latency).await;
                    let resp = answer(&req.head, &req.body, &req.path, &config, &key, &c);
                    c.in_flight.fetch_sub(1, Relaxed);
                    if sock.write_all(&render(&resp, false)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Standin { url, counters }
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// The keyed signature of `header.claims` (stands for HS256 with Label Studio's SECRET_KEY).
fn sign(key: &std::collections::hash_map::RandomState, signed_part: &str) -> String {
    b64(&key.hash_one(signed_part).to_be_bytes())
}

fn answer(
    head: &[u8],
    body: &[u8],
    path: &str,
    config: &StandinConfig,
    key: &std::collections::hash_map::RandomState,
    c: &Counters,
) -> Response {
    let now = jiff::Timestamp::now();
    let head = String::from_utf8_lossy(head);
    let method = head.split(' ').next().unwrap_or_default();
    let invalid = || {
        json_response(
            401,
            json!({"detail": "Token is invalid or expired", "code": "token_not_valid"}),
            now,
        )
    };
    match (method, path) {
        ("POST", "/api/token/refresh") | ("POST", "/api/token/refresh/") => {
            let pat = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v["refresh"].as_str().map(str::to_owned));
            let claims = pat.as_deref().and_then(crate::jwt::claims).filter(|cl| {
                cl["token_type"] == "refresh"
                    && cl["exp"].as_i64().is_none_or(|e| e > now.as_second())
            });
            let Some(claims) = claims else {
                c.refresh_refused.fetch_add(1, Relaxed);
                return invalid();
            };
            let iat = now.as_second();
            let access_claims = json!({
                "token_type": "access",
                "exp": iat + i64::try_from(config.ttl.as_secs()).unwrap_or(300),
                "iat": iat,
                "jti": format!("{:032x}", fastrand::u128(..)),
                "user_id": claims["user_id"],
            });
            let signed = format!(
                "{}.{}",
                b64(br#"{"alg":"HS256","typ":"JWT"}"#),
                b64(access_claims.to_string().as_bytes())
            );
            let access = format!("{signed}.{}", sign(key, &signed));
            c.refresh_ok.fetch_add(1, Relaxed);
            json_response(200, json!({ "access": access }), now)
        }
        ("GET", "/api/current-user/whoami") | ("GET", "/api/current-user/whoami/") => {
            let token = head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("authorization")
                    .then(|| v.trim().strip_prefix("Bearer ").map(str::to_owned))?
            });
            let issued = token.as_deref().and_then(|t| {
                let (signed, sig) = t.rsplit_once('.')?;
                (sig == sign(key, signed)).then(|| crate::jwt::claims(t))?
            });
            match issued.filter(|cl| cl["exp"].as_i64().is_some_and(|e| e > now.as_second())) {
                Some(cl) => {
                    c.whoami_ok.fetch_add(1, Relaxed);
                    let id = cl["user_id"].as_i64().unwrap_or(0);
                    json_response(
                        200,
                        json!({"id": id, "username": format!("user{id}"), "email": format!("user{id}@example.com")}),
                        now,
                    )
                }
                None => {
                    c.whoami_refused.fetch_add(1, Relaxed);
                    invalid()
                }
            }
        }
        _ => {
            c.other.fetch_add(1, Relaxed);
            json_response(404, json!({"detail": "Not found."}), now)
        }
    }
}

fn json_response(status: u16, body: Value, now: jiff::Timestamp) -> Response {
    Response {
        status,
        reason: match status {
            200 => "OK",
            401 => "Unauthorized",
            _ => "Not Found",
        }
        .into(),
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            // Django's format (RFC 9110 IMF-fixdate).
            (
                "Date".into(),
                now.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string(),
            ),
        ],
        body: body.to_string().into_bytes(),
    }
}
