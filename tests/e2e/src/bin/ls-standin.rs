//! The fast Label Studio stand-in (`ls_standin`) as a process of its own, for trying the
//! controller by hand at scale: prints its URL, then its counters as JSON every `STATS_EVERY` seconds.
//!
//! ```sh
//! cargo run -p ls-token-refresher-e2e --bin ls-standin -- ttl=300 latency_ms=15
//! ```
//! A PAT it accepts: any unexpired JWT with `token_type` `refresh`; `pat_file=FILE` writes one
//! for user 1 there (never printed).

use std::time::Duration;

use ls_token_refresher_e2e::ls_standin::{self, StandinConfig};

/// How often the counters are printed (seconds).
const STATS_EVERY: u64 = 10;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let arg = |key: &str, default: u64| {
        std::env::args()
            .skip(1)
            .find_map(|a| a.strip_prefix(&format!("{key}=")).map(str::to_owned))
            .map(|v| {
                v.parse().unwrap_or_else(|_| {
                    eprintln!("ls-standin: {key}={v} is not a whole number");
                    std::process::exit(2)
                })
            })
            .unwrap_or(default)
    };
    let s = ls_standin::start(StandinConfig {
        ttl: Duration::from_secs(arg("ttl", 300)),
        latency: Duration::from_millis(arg("latency_ms", 15)),
    })
    .await;
    println!("{}", s.url);
    if let Some(path) = std::env::args()
        .skip(1)
        .find_map(|a| a.strip_prefix("pat_file=").map(str::to_owned))
    {
        std::fs::write(&path, ls_standin::pat(1, Duration::from_secs(86_400)))
            .unwrap_or_else(|e| panic!("write {path}: {e}"));
    }
    loop {
        tokio::time::sleep(Duration::from_secs(STATS_EVERY)).await;
        println!("{}", s.counters.json());
    }
}
