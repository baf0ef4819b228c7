//! Outlier detection: a passive, per-endpoint circuit breaker below the balancer.
//! `consecutive_failures` 5xx answers or connection failures in a row eject an
//! endpoint (open): it stops being picked for `base_ejection_time x times ejected`
//! (capped). Then it is half-open: it takes traffic again and its next result decides,
//! a success closes the breaker, a failure ejects it again at once. No more than
//! `max_ejection_percent` of a cluster is ever ejected, so a cluster-wide failure does
//! not empty the cluster.

use crate::balance::Membership;
use crate::endpoint::Endpoint;
use octopus_config::OutlierDetectionConfig;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Ejections never last longer than this, however often an endpoint failed.
const MAX_EJECTION: Duration = Duration::from_secs(300);

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Per-endpoint breaker state: atomics only, updated on every response.
#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive: AtomicU32,
    state: AtomicU8,
    times_ejected: AtomicU32,
}

impl OutlierState {
    pub fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) == OPEN
    }

    pub fn name(&self) -> &'static str {
        match self.state.load(Ordering::Acquire) {
            OPEN => "open",
            HALF_OPEN => "half_open",
            _ => "closed",
        }
    }

    /// Back to closed with a clean slate (the cluster no longer detects outliers).
    pub(crate) fn reset(&self) {
        self.consecutive.store(0, Ordering::Release);
        self.times_ejected.store(0, Ordering::Release);
        self.state.store(CLOSED, Ordering::Release);
    }
}

/// A cluster's detector: its settings and its members.
pub struct Outlier {
    cluster: Arc<str>,
    spec: OutlierDetectionConfig,
    members: Weak<Membership>,
}

impl Outlier {
    pub fn new(
        cluster: Arc<str>,
        spec: OutlierDetectionConfig,
        members: &Arc<Membership>,
    ) -> Arc<Self> {
        Arc::new(Outlier {
            cluster,
            spec,
            members: Arc::downgrade(members),
        })
    }

    /// Records one response (or failure to get one) from `ep`.
    pub fn record(&self, ep: &Arc<Endpoint>, ok: bool) {
        let o = &ep.outlier;
        if ok {
            if o.consecutive.load(Ordering::Relaxed) != 0 {
                o.consecutive.store(0, Ordering::Relaxed);
            }
            if o.state
                .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                tracing::info!(cluster = %self.cluster, endpoint = %ep.addr(), "outlier detection: probe succeeded; endpoint closed (back in rotation)");
            }
            return;
        }
        let failures = o.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        let state = o.state.load(Ordering::Acquire);
        let trip =
            (state == HALF_OPEN) || (state == CLOSED && failures >= self.spec.consecutive_failures);
        if trip
            && self.room_to_eject()
            && o.state
                .compare_exchange(state, OPEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.eject(ep);
        }
    }

    fn room_to_eject(&self) -> bool {
        let Some(members) = self.members.upgrade() else {
            return false;
        };
        let set = members.load();
        let total = set.all().len();
        let ejected = set.all().iter().filter(|m| m.endpoint.is_ejected()).count();
        (ejected + 1) * 100 <= total * self.spec.max_ejection_percent as usize
    }

    fn eject(&self, ep: &Arc<Endpoint>) {
        let times = ep.outlier.times_ejected.fetch_add(1, Ordering::AcqRel) + 1;
        let duration = self
            .spec
            .base_ejection_time
            .get()
            .saturating_mul(times)
            .min(MAX_EJECTION.max(self.spec.base_ejection_time.get()));
        tracing::warn!(cluster = %self.cluster, endpoint = %ep.addr(), times, ?duration, "outlier detection: endpoint ejected");
        ep.outlier.consecutive.store(0, Ordering::Release);
        ep.availability_changed();
        let ep = ep.clone();
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            if ep
                .outlier
                .state
                .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                tracing::info!(%cluster, endpoint = %ep.addr(), "outlier detection: ejection over; endpoint half-open (next result decides)");
                ep.availability_changed();
            }
        });
    }
}
