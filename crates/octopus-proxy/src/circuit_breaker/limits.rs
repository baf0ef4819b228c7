use crate::held::{Held, Release};
use octopus_config::CircuitBreakerConfig;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A cluster's limits and the live counts they are checked against. Shared by the
/// cluster's endpoints (connections) and its limit layer (requests).
#[derive(Debug)]
pub struct Circuit {
    pub spec: CircuitBreakerConfig,
    /// HTTP/1 carries one request per connection, so requests beyond the open
    /// connections are waiting for one; HTTP/2 multiplexes and never waits here.
    multiplexed: bool,
    connections: AtomicUsize,
    requests: AtomicUsize,
    /// `octopus_circuit_overflow_total{cluster, limit="max_connections"}`, counted
    /// where the connection is refused.
    connection_overflow: Option<prometheus::IntCounter>,
}

/// Held while an upstream connection is open.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<Circuit>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Held while a request is in flight, response body included.
#[derive(Debug)]
pub struct RequestSlot(Held);

impl From<RequestSlot> for Held {
    fn from(s: RequestSlot) -> Held {
        s.0
    }
}

/// What a [`RequestSlot`] gives back: one request (connections have their own slot).
impl Release for Circuit {
    fn release(&self) {
        self.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Circuit {
    pub fn new(
        spec: CircuitBreakerConfig,
        multiplexed: bool,
        connection_overflow: Option<prometheus::IntCounter>,
    ) -> Arc<Self> {
        Arc::new(Circuit {
            spec,
            multiplexed,
            connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            connection_overflow,
        })
    }

    fn acquire(counter: &AtomicUsize, max: u32) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max as usize).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn open_connection(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let slot = Self::acquire(&self.connections, self.spec.max_connections)
            .then(|| ConnectionSlot(self.clone()));
        if slot.is_none() {
            if let Some(c) = &self.connection_overflow {
                c.inc();
            }
        }
        slot
    }

    /// Admits a request, or names the limit it would break.
    pub fn admit(self: &Arc<Self>) -> Result<RequestSlot, &'static str> {
        if !self.multiplexed {
            let conns = self.connections.load(Ordering::Acquire);
            let waiting = self.requests.load(Ordering::Acquire).saturating_sub(conns);
            if conns >= self.spec.max_connections as usize
                && waiting >= self.spec.max_pending_requests as usize
            {
                return Err("max_pending_requests");
            }
        }
        if Self::acquire(&self.requests, self.spec.max_requests) {
            Ok(RequestSlot(Held::new(self.clone())))
        } else {
            Err("max_requests")
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(c: u32, p: u32, r: u32) -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            max_connections: c,
            max_pending_requests: p,
            max_requests: r,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_capped_and_released() {
        let l = Circuit::new(spec(100, 100, 2), true, None);
        let a = l.admit().unwrap();
        let _b = l.admit().unwrap();
        assert_eq!(l.admit().unwrap_err(), "max_requests");
        drop(a);
        assert!(l.admit().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn pending_counts_requests_beyond_open_http1_connections() {
        let l = Circuit::new(spec(1, 1, 100), false, None);
        let _c = l.open_connection().unwrap();
        assert!(l.open_connection().is_none(), "max_connections");
        let _r1 = l.admit().unwrap(); // on the connection
        let _r2 = l.admit().unwrap(); // waiting: 1 pending allowed
        assert_eq!(l.admit().unwrap_err(), "max_pending_requests");
    }
}
