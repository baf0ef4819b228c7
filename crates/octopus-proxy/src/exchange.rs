//! What the tries of one request tell the request's access-log line: how many tries
//! were sent, to which endpoint the last one went, and how long the upstream took to
//! answer it. A request extension (cloned onto every retry's request) that the
//! endpoint layer fills in; it exists only for requests being logged, so requests
//! that are not pay one failed extension look-up per try.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Exchange(Arc<State>);

#[derive(Debug, Default)]
struct State {
    attempts: AtomicU32,
    endpoint: Mutex<Option<SocketAddr>>,
    /// Microseconds from the last try's send to its response head.
    upstream_us: AtomicU64,
}

impl Exchange {
    /// A try is being sent to `endpoint`.
    pub fn try_sent(&self, endpoint: SocketAddr) {
        self.0.attempts.fetch_add(1, Ordering::Relaxed);
        *self.0.endpoint.lock().unwrap_or_else(|p| p.into_inner()) = Some(endpoint);
    }

    /// The last try's answer (or failure) came after `elapsed`.
    pub fn answered(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.0.upstream_us.store(us, Ordering::Relaxed);
    }

    pub fn attempts(&self) -> u32 {
        self.0.attempts.load(Ordering::Relaxed)
    }

    pub fn endpoint(&self) -> Option<SocketAddr> {
        *self.0.endpoint.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The upstream's time for the last try; `None` when no try was sent.
    pub fn upstream_time(&self) -> Option<Duration> {
        (self.attempts() > 0)
            .then(|| Duration::from_micros(self.0.upstream_us.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_tries_and_keeps_the_last_endpoint() {
        let x = Exchange::default();
        assert_eq!(x.upstream_time(), None);
        let shared = x.clone();
        shared.try_sent("127.0.0.1:1".parse().unwrap());
        shared.answered(Duration::from_millis(3));
        shared.try_sent("127.0.0.1:2".parse().unwrap());
        shared.answered(Duration::from_millis(5));
        assert_eq!(x.attempts(), 2);
        assert_eq!(x.endpoint(), Some("127.0.0.1:2".parse().unwrap()));
        assert_eq!(x.upstream_time(), Some(Duration::from_millis(5)));
    }
}
