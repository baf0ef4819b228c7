//! When a connection was last busy, for its idle timeout. An HTTP connection is busy
//! from a request's head until its response head (a response body streaming
//! afterwards is never cut: the close is graceful, it only stops the connection taking
//! new requests); an opaque TCP connection whenever a byte moves. Both wait on the
//! same clock: idle means nothing in progress and nothing since for the whole timeout.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub(crate) struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `start` at which the connection was last busy.
    idle_since_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    /// Something happened now (a byte moved).
    pub(crate) fn touch(&self) {
        self.idle_since_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Release);
    }

    /// A request in progress until the returned guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> ActiveRequest {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        ActiveRequest(self.clone())
    }

    /// Resolves once the connection has been idle for `idle`.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        loop {
            let wait = if self.in_flight.load(Ordering::Acquire) > 0 {
                idle
            } else {
                let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
                match (since + idle).checked_sub(self.start.elapsed()) {
                    None => return,
                    Some(left) if left.is_zero() => return,
                    Some(left) => left,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Marks one request in progress on its connection until dropped.
pub(crate) struct ActiveRequest(Arc<Activity>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_means_nothing_moved_for_the_whole_timeout() {
        let activity = Activity::new();
        let idle = Duration::from_secs(10);
        tokio::time::sleep(Duration::from_secs(6)).await;
        activity.touch();
        let started = Instant::now();
        activity.idle_for(idle).await;
        // Ten seconds after the last touch, not after the start.
        assert_eq!(started.elapsed().as_secs(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_progress_is_never_idle() {
        let activity = Arc::new(Activity::new());
        let request = activity.begin();
        let idle = Duration::from_secs(1);
        let waited = tokio::time::timeout(Duration::from_secs(5), activity.idle_for(idle)).await;
        assert!(waited.is_err(), "idle while a request was in progress");
        drop(request);
        let started = Instant::now();
        activity.idle_for(idle).await;
        assert_eq!(started.elapsed().as_secs(), 1);
    }
}
