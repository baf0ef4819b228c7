//! A listener's cap on requests in progress (`max_requests`), over all its
//! connections: HTTP/2 lets one connection carry many streams, so a connection limit
//! alone does not bound the work (and upstream connections) clients can cause.

use crate::held::{Held, Release};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Requests in progress on one listener side.
#[derive(Debug, Default)]
pub struct Admission {
    in_flight: AtomicUsize,
}

impl Admission {
    pub fn new() -> Arc<Self> {
        Arc::new(Admission::default())
    }

    /// Admits one request while fewer than `max` are in progress.
    pub fn admit(self: &Arc<Self>, max: u32) -> Option<Admitted> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max as usize).then_some(n + 1)
            })
            .ok()
            .map(|_| Admitted(Held::new(self.clone())))
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// One admitted request; held by its response body until the last byte is sent or
/// the client goes away.
#[derive(Debug)]
pub struct Admitted(Held);

impl From<Admitted> for Held {
    fn from(a: Admitted) -> Held {
        a.0
    }
}

impl Release for Admission {
    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_releases() {
        let a = Admission::new();
        let one = a.admit(2).unwrap();
        let _two = a.admit(2).unwrap();
        assert!(a.admit(2).is_none());
        drop(one);
        assert!(a.admit(2).is_some());
        assert_eq!(a.in_flight(), 1);
    }
}
