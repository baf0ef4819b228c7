//! File-descriptor budget. Every downstream connection and every upstream connection
//! costs one descriptor; when the process runs out, every listener fails to accept,
//! the admin port included. So octopus splits what `RLIMIT_NOFILE` allows into a
//! reserve (admin, config watch, DNS, TLS files, the runtime) and two equal groups,
//! outbound and inbound. A listener's connections and the upstream connections made
//! for its requests draw from its group: one saturated side (say, HTTP/2 clients
//! multiplexing slow requests onto the inbound listener) is refused with 503 while
//! the other side and the admin port keep working.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as nginx's
/// `worker_rlimit_nofile` and Go's runtime do: the default soft limit (often 1024) is
/// far below what a proxy beside a busy service needs. Returns the soft limit now in
/// force.
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit; assuming 1024");
            1024
        }
    }
}

/// The soft `RLIMIT_NOFILE` in force now.
pub fn nofile_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}

/// Descriptors kept out of the traffic groups: a tenth of the limit, at least 64 and
/// at most 1024.
pub fn reserve(limit: u64) -> u64 {
    (limit / 10).clamp(64, 1024).min(limit)
}

/// The outbound and inbound groups sized from a descriptor limit.
#[derive(Clone)]
pub struct Budget {
    pub outbound: Arc<Group>,
    pub inbound: Arc<Group>,
}

impl Budget {
    /// `metrics` gets `octopus_descriptors_refused_total{side}` counted.
    pub fn from_limit(limit: u64, metrics: Option<&octopus_metrics::Metrics>) -> Self {
        let share = (limit.saturating_sub(reserve(limit)) / 2).max(1) as usize;
        let refused =
            |side: &str| metrics.map(|m| m.descriptors_refused_total.with_label_values(&[side]));
        Budget {
            outbound: Group::new("outbound", share, refused("outbound")),
            inbound: Group::new("inbound", share, refused("inbound")),
        }
    }

    /// Sets `octopus_descriptors{side, state}` from the live counts (at scrape time).
    pub fn report(&self, metrics: &octopus_metrics::Metrics) {
        for g in [&self.outbound, &self.inbound] {
            metrics
                .descriptors
                .with_label_values(&[g.name, "used"])
                .set(g.used() as i64);
            metrics
                .descriptors
                .with_label_values(&[g.name, "capacity"])
                .set(g.capacity as i64);
        }
    }
}

/// One side's descriptors: a capacity and a lock-free count.
#[derive(Debug)]
pub struct Group {
    name: &'static str,
    capacity: usize,
    used: AtomicUsize,
    refused: Option<prometheus::IntCounter>,
}

impl Group {
    pub fn new(
        name: &'static str,
        capacity: usize,
        refused: Option<prometheus::IntCounter>,
    ) -> Arc<Self> {
        Arc::new(Group {
            name,
            capacity,
            used: AtomicUsize::new(0),
            refused,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// One descriptor, held until the returned slot is dropped; `None` when the
    /// group is spent.
    pub fn acquire(self: &Arc<Self>) -> Option<Slot> {
        let got = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok();
        if !got {
            if let Some(c) = &self.refused {
                c.inc();
            }
        }
        got.then(|| Slot(self.clone()))
    }
}

/// A descriptor counted against its group while the connection holding it is open.
#[derive(Debug)]
pub struct Slot(Arc<Group>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_split_what_the_reserve_leaves() {
        let b = Budget::from_limit(2048, None);
        assert_eq!(reserve(2048), 204);
        assert_eq!(b.outbound.capacity(), 922);
        assert_eq!(b.inbound.capacity(), 922);
        assert_eq!(reserve(1_048_576), 1024);
        assert_eq!(reserve(100), 64);
    }

    #[test]
    fn slots_are_counted_and_returned() {
        let g = Group::new("t", 2, None);
        let a = g.acquire().unwrap();
        let _b = g.acquire().unwrap();
        assert!(g.acquire().is_none());
        drop(a);
        assert_eq!(g.used(), 1);
        assert!(g.acquire().is_some());
    }
}
