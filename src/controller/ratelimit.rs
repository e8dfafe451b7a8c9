//! A client-side rate limit for the Kubernetes API (kube has none): a token bucket of `burst`
//! requests refilled at `qps` per second, as client-go's `--kube-api-qps/--kube-api-burst` that
//! cert-manager (20/50) and External Secrets (50/100) expose. Watches count once, when they start.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;

/// The shared bucket.
#[derive(Debug)]
pub struct Bucket {
    qps: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    /// `qps` > 0 requests per second on average, `burst` ≥ 1 at once.
    pub fn new(qps: f64, burst: u32) -> Arc<Self> {
        let burst = f64::from(burst.max(1));
        Arc::new(Bucket {
            qps: qps.max(0.001),
            burst,
            state: Mutex::new((burst, Instant::now())),
        })
    }

    /// How long the caller must wait before its request may go (0: at once). Takes the token now,
    /// so concurrent callers queue in order.
    pub fn reserve(&self) -> Duration {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, last) = *g;
        let refilled =
            (tokens + now.saturating_duration_since(last).as_secs_f64() * self.qps).min(self.burst);
        let left = refilled - 1.0;
        *g = (left, now);
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((-left / self.qps).min(3600.0))
        }
    }
}

/// The tower layer.
#[derive(Clone)]
pub struct RateLimitLayer(pub Arc<Bucket>);

impl<S> tower_layer::Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;
    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited {
            inner: Arc::new(tokio::sync::Mutex::new(inner)),
            bucket: self.0.clone(),
        }
    }
}

/// The service: waits for the bucket, then calls the inner service (which is locked only while
/// it accepts the request, never while the response is awaited).
pub struct RateLimited<S> {
    inner: Arc<tokio::sync::Mutex<S>>,
    bucket: Arc<Bucket>,
}

impl<S, R> tower_service::Service<R> for RateLimited<S>
where
    S: tower_service::Service<R> + Send + 'static,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> Self::Future {
        let inner = self.inner.clone();
        let wait = self.bucket.reserve();
        Box::pin(async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let fut = {
                let mut svc = inner.lock().await;
                std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
                svc.call(req)
            };
            fut.await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_qps() {
        let b = Bucket::new(10.0, 5);
        for _ in 0..5 {
            assert_eq!(b.reserve(), Duration::ZERO);
        }
        // The sixth waits one refill interval, the seventh two.
        assert_eq!(b.reserve(), Duration::from_millis(100));
        assert_eq!(b.reserve(), Duration::from_millis(200));
        tokio::time::advance(Duration::from_secs(10)).await;
        // Refilled to the burst, not beyond.
        for _ in 0..5 {
            assert_eq!(b.reserve(), Duration::ZERO);
        }
        assert!(b.reserve() > Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_through_the_layer_are_spaced() {
        use tower_layer::Layer;
        use tower_service::Service;
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let c = calls.clone();
        let inner = tower::service_fn(move |_: ()| {
            c.lock().unwrap().push(Instant::now());
            async { Ok::<_, std::convert::Infallible>(()) }
        });
        let mut svc = RateLimitLayer(Bucket::new(2.0, 1)).layer(inner);
        let start = Instant::now();
        let futs: Vec<_> = (0..4).map(|_| svc.call(())).collect();
        futures::future::join_all(futs).await;
        let at: Vec<u64> = calls
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.duration_since(start).as_millis() as u64)
            .collect();
        assert_eq!(at, [0, 500, 1000, 1500]);
    }
}
