//! Bounded polling.

use std::{
    future::Future,
    time::{Duration, Instant},
};

/// Calls `f` every `every` until it returns `Some`; None once `timeout` has passed (`f` is tried at
/// least once, and once more after the deadline's last sleep).
pub async fn poll<T, F, Fut>(timeout: Duration, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if t0.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `cond` every 100 ms until it holds; None after `timeout`, else the seconds it took.
pub async fn wait_for<F, Fut>(timeout: Duration, mut cond: F) -> Option<f64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let t0 = Instant::now();
    poll(timeout, Duration::from_millis(100), || {
        let fut = cond();
        async move { fut.await.then(|| t0.elapsed().as_secs_f64()) }
    })
    .await
}
