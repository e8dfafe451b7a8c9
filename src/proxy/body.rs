//! Bodies that stream through the proxy, with `--proxy-timeout` bounding silence rather than size:
//! an upload or a download may take as long as it needs as long as it keeps moving.
//!
//! - [`Watched`] wraps the client's request body and records when it last moved and whether it is
//!   waiting for the client, so a request that stalls can be blamed on the right side: the client
//!   stopped sending (408), or Label Studio neither reads the body nor answers (504).
//! - [`IdleTimeout`] wraps Label Studio's answer and cuts it when no piece arrives for the timeout
//!   (the connection to the client is then closed mid-body: the only honest signal left once the
//!   status line is out).

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a request body is moving, shared between the body (polled by the upstream client) and the
/// request handler (which decides what a silence means).
#[derive(Debug)]
pub(super) struct Progress(Mutex<State>);

#[derive(Debug, Clone, Copy)]
struct State {
    /// Who the request is waiting for, since when.
    waiting_on_client: bool,
    since: Instant,
    /// Reading the client's body failed (it went away mid-upload, or broke the framing).
    failed: bool,
}

/// What a silence of the whole timeout means.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stall {
    /// Not silent for the whole timeout yet: look again at this deadline.
    Until(Instant),
    /// The client stopped sending its body.
    Client,
    /// Label Studio neither takes the body nor answers.
    Upstream,
}

impl Progress {
    /// A request that starts `now`, waiting for Label Studio (connect, then reading the body).
    pub(super) fn new(now: Instant) -> Arc<Progress> {
        Arc::new(Progress(Mutex::new(State {
            waiting_on_client: false,
            since: now,
            failed: false,
        })))
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn state(&self) -> State {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether reading the client's body failed.
    pub(super) fn client_failed(&self) -> bool {
        self.state().failed
    }

    /// Judges the current wait against `timeout`, at `now`.
    pub(super) fn stall(&self, timeout: Duration, now: Instant) -> Stall {
        let s = self.state();
        let deadline = s.since + timeout;
        if deadline > now {
            Stall::Until(deadline)
        } else if s.waiting_on_client {
            Stall::Client
        } else {
            Stall::Upstream
        }
    }
}

/// The client's request body, reporting its movement to a [`Progress`].
pub(super) struct Watched<B> {
    inner: B,
    progress: Arc<Progress>,
}

impl<B> Watched<B> {
    pub(super) fn new(inner: B, progress: Arc<Progress>) -> Self {
        Watched { inner, progress }
    }
}

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        self.progress.update(|s| match &polled {
            // The wait for the client starts at the first empty poll, not at every poll.
            Poll::Pending if !s.waiting_on_client => {
                s.waiting_on_client = true;
                s.since = Instant::now();
            }
            Poll::Pending => {}
            // A piece, or the end: from now on the request waits for Label Studio again.
            Poll::Ready(Some(Ok(_)) | None) => {
                s.waiting_on_client = false;
                s.since = Instant::now();
            }
            Poll::Ready(Some(Err(_))) => {
                s.waiting_on_client = false;
                s.failed = true;
            }
        });
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Label Studio's answer body, cut when it stays silent for the timeout.
pub(super) struct IdleTimeout<B> {
    inner: B,
    timeout: Duration,
    /// Made at the first wait only: most answers arrive whole with their head and never wait, so
    /// they never pay for a timer.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The sleep runs only while waiting for Label Studio: a client that reads slowly (so the
    /// body is not polled) is not Label Studio's silence.
    armed: bool,
    on_timeout: Option<prometheus::IntCounter>,
}

impl<B> IdleTimeout<B> {
    /// `on_timeout` is incremented if the body is cut.
    pub(super) fn new(
        inner: B,
        timeout: Duration,
        on_timeout: Option<prometheus::IntCounter>,
    ) -> Self {
        IdleTimeout {
            inner,
            timeout,
            sleep: None,
            armed: false,
            on_timeout,
        }
    }
}

/// The error a silent answer body ends with.
#[derive(Debug, thiserror::Error)]
#[error("Label Studio's answer stalled for longer than --proxy-timeout")]
pub(super) struct BodyStalled;

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                self.armed = false;
                Poll::Ready(r.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if !self.armed {
                    self.armed = true;
                    let deadline = Instant::now() + self.timeout;
                    match &mut self.sleep {
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                let Some(sleep) = self.sleep.as_mut() else {
                    return Poll::Pending;
                };
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        if let Some(counter) = self.on_timeout.take() {
                            counter.inc();
                        }
                        Poll::Ready(Some(Err(Box::new(BodyStalled))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silence_is_blamed_on_the_side_that_stopped() {
        let t = Duration::from_secs(10);
        let p = Progress::new(Instant::now());
        let t0 = Instant::now();
        assert_eq!(p.stall(t, t0), Stall::Until(t0 + t));
        assert_eq!(p.stall(t, t0 + t), Stall::Upstream, "never read the body");
        // Waiting for the client's next piece since t0 + 5 s.
        tokio::time::advance(Duration::from_secs(5)).await;
        p.update(|s| {
            s.waiting_on_client = true;
            s.since = Instant::now();
        });
        assert_eq!(
            p.stall(t, t0 + t),
            Stall::Until(t0 + t + Duration::from_secs(5))
        );
        assert_eq!(p.stall(t, t0 + 2 * t), Stall::Client);
    }
}
