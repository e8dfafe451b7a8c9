//! A workload that reads the published token set every 20 ms (resolving `..data` once per read) and
//! checks that its files agree, that the token is not at or past its `exp`, and that the real API
//! accepts it: on every new token and at most every `check_every` otherwise.

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::{
    clock::{rfc3339, unix_now},
    http1::http_status,
    jwt::jwt_exp,
    token_dir::read_set,
};

/// What a consumer saw.
#[derive(Clone, Debug, Default)]
pub struct ConsumerReport {
    /// Reads that found a published set.
    pub samples: u64,
    /// Reads that found nothing (before the first publish, or a generation removed mid-read).
    pub empty: u64,
    /// Sets whose files disagree with each other.
    pub torn: u64,
    /// Samples holding a token at or past its `exp`.
    pub expired: u64,
    /// API checks that did not answer 200 (token still unexpired by more than a second).
    pub rejected: u64,
    /// API checks made.
    pub api_checks: u64,
    /// Distinct tokens seen.
    pub tokens: BTreeSet<String>,
    /// First few problems, secret-free.
    pub problems: Vec<String>,
    /// How long it ran.
    pub seconds: f64,
}

/// A workload that reads the published set every 20 ms (resolving `..data` once per read) and checks
/// the token it holds against the real API on every new token and at most every `check_every`.
pub struct Consumer {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<ConsumerReport>>,
}

impl Consumer {
    /// Starts reading `dir`; API checks go straight to `ls_url` (not through any proxy).
    pub fn start(dir: &Path, ls_url: &str, check_every: Duration) -> Consumer {
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, ls_url, stop2) = (dir.to_path_buf(), ls_url.to_owned(), stop.clone());
        let handle = std::thread::spawn(move || consume(&dir, &ls_url, check_every, &stop2));
        Consumer {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops and returns what it saw.
    pub fn stop(mut self) -> ConsumerReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().expect("consumer thread")
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn consume(dir: &Path, ls_url: &str, check_every: Duration, stop: &AtomicBool) -> ConsumerReport {
    let mut r = ConsumerReport::default();
    let t0 = Instant::now();
    let mut last_token = String::new();
    let mut last_check: Option<Instant> = None;
    let problem = |r: &mut ConsumerReport, p: String| {
        if r.problems.len() < 5 {
            r.problems.push(p);
        }
    };
    // Bounded: stops when asked, or after 15 minutes whatever happens.
    while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(900) {
        match read_set(dir) {
            None => r.empty += 1,
            Some((token, auth, exp_text)) => {
                r.samples += 1;
                let now = unix_now();
                let exp = jwt_exp(&token);
                let consistent = auth == format!("Bearer {token}")
                    && exp.is_some_and(|e| exp_text == rfc3339(e));
                if !consistent {
                    r.torn += 1;
                    problem(
                        &mut r,
                        format!("torn set at +{:.2}s", t0.elapsed().as_secs_f64()),
                    );
                }
                let exp = exp.unwrap_or(0) as f64;
                if exp <= now {
                    r.expired += 1;
                    problem(
                        &mut r,
                        format!(
                            "expired token held at +{:.2}s ({:.2}s past exp)",
                            t0.elapsed().as_secs_f64(),
                            now - exp
                        ),
                    );
                }
                let due =
                    token != last_token || last_check.is_none_or(|t| t.elapsed() >= check_every);
                if due && exp - now > 1.0 {
                    r.api_checks += 1;
                    last_check = Some(Instant::now());
                    let status = http_status(ls_url, "/api/current-user/whoami", &auth);
                    if status != Some(200) {
                        r.rejected += 1;
                        problem(
                            &mut r,
                            format!(
                                "API answered {status:?} at +{:.2}s for a token valid {:.1}s more",
                                t0.elapsed().as_secs_f64(),
                                exp - now
                            ),
                        );
                    }
                }
                if token != last_token {
                    r.tokens.insert(token.clone());
                    last_token = token;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    r.seconds = t0.elapsed().as_secs_f64();
    r
}
