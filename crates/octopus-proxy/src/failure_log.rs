//! Failed requests in the log at `info`/`warn` without flooding it: per error kind,
//! the first failure of an interval is logged with its details, the rest of that
//! interval are counted and the count rides on the next line logged for the kind.
//! An outage of a thousand 502s a second costs one line per kind per interval, and
//! a lone 502 at the default level still leaves a line (before, failures were only
//! logged at `debug`). Lock-free: one slot of atomics per kind.

use crate::error::{Fault, ProxyError, ERROR_KINDS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one line per kind per interval.
pub const INTERVAL: Duration = Duration::from_secs(10);

pub struct FailureLog {
    epoch: Instant,
    /// Per kind (indexed as [`ERROR_KINDS`]): when the next line may be written (ms
    /// since `epoch`), and failures not logged since the last line.
    slots: [(AtomicU64, AtomicU64); ERROR_KINDS.len()],
}

impl Default for FailureLog {
    fn default() -> Self {
        FailureLog {
            epoch: Instant::now(),
            slots: std::array::from_fn(|_| (AtomicU64::new(0), AtomicU64::new(0))),
        }
    }
}

impl FailureLog {
    /// Logs `e` (for `route`, on the listener `direction`) unless a failure of its
    /// kind was logged within the interval; then only counts it.
    pub fn report(&self, e: &ProxyError, direction: &str, route: &str, request_id: &str) {
        let kind = e.kind();
        let Some(i) = ERROR_KINDS.iter().position(|k| *k == kind) else {
            return;
        };
        let (next, suppressed) = &self.slots[i];
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due = next.load(Ordering::Relaxed);
        let interval = u64::try_from(INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if now < due
            || next
                .compare_exchange(
                    due,
                    now.saturating_add(interval),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let similar = suppressed.swap(0, Ordering::AcqRel);
        let cluster = e.cluster().map_or("-", |c| &**c);
        let cause = crate::endpoint::error_chain(e);
        let status = e.recorded_status();
        let more = match similar {
            0 => String::new(),
            n => format!(
                " ({n} more of this kind not logged in the previous {}s)",
                INTERVAL.as_secs()
            ),
        };
        match e.fault() {
            // The client's own mistakes are routine for a proxy: info.
            Fault::Client => tracing::info!(
                direction,
                route,
                cluster,
                status,
                kind,
                fault = "client",
                request_id,
                similar,
                "request failed: {cause}{more}"
            ),
            fault => tracing::warn!(
                direction,
                route,
                cluster,
                status,
                kind,
                fault = fault.name(),
                request_id,
                similar,
                "request failed: {cause}{more}"
            ),
        }
    }

    #[cfg(test)]
    fn pending(&self, kind: &str) -> u64 {
        ERROR_KINDS
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.slots[i].1.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval_the_rest_counted() {
        let log = FailureLog::default();
        for _ in 0..5 {
            log.report(&ProxyError::NoRoute, "outbound", "none", "id");
        }
        assert_eq!(log.pending("no_route"), 4, "the first is logged, four wait");
        log.report(&ProxyError::BadRequest("x"), "outbound", "none", "id");
        assert_eq!(
            log.pending("bad_request"),
            0,
            "another kind has its own slot"
        );
        // Once the interval has passed, the next failure is logged with the count.
        log.slots[0].0.store(0, Ordering::Relaxed);
        log.report(&ProxyError::NoRoute, "outbound", "none", "id");
        assert_eq!(log.pending("no_route"), 0);
    }
}
