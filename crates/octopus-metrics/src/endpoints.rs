//! The per-endpoint gauges (`octopus_endpoint_{healthy,in_flight,weight,ejected}`)
//! and the per-cluster `octopus_upstream_connections{cluster,state}`, read from live
//! cluster state when Prometheus scrapes: a custom collector, so
//! nothing is reset and refilled, no series of a departed endpoint lingers, and two
//! concurrent scrapes need no lock between them.

use arc_swap::ArcSwapOption;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};
use std::sync::{Arc, Weak};

/// One endpoint's state at scrape time.
#[derive(Debug, Clone)]
pub struct EndpointSample {
    pub cluster: Arc<str>,
    pub endpoint: String,
    pub healthy: bool,
    pub in_flight: usize,
    pub weight: u32,
    pub ejected: bool,
    /// Open upstream connections, and how many of them carry no request.
    pub connections_open: usize,
    pub connections_idle: usize,
}

/// Whatever holds the endpoints (the proxy): asked for a sample of each at scrape.
pub trait EndpointSource: Send + Sync {
    fn sample(&self, out: &mut Vec<EndpointSample>);
}

type Definitions = [(&'static str, &'static str); 4];

const GAUGES: Definitions = [
    (
        "octopus_endpoint_healthy",
        "1 while the endpoint passes active health checks (or has none), else 0.",
    ),
    (
        "octopus_endpoint_in_flight",
        "Requests in flight to the endpoint, response bodies included.",
    ),
    (
        "octopus_endpoint_weight",
        "Configured weight of the endpoint; 0 drains it.",
    ),
    (
        "octopus_endpoint_ejected",
        "1 while outlier detection has the endpoint ejected, else 0.",
    ),
];

#[derive(Clone)]
pub(crate) struct EndpointCollector {
    descs: Arc<Vec<Desc>>,
    source: Arc<ArcSwapOption<Weak<dyn EndpointSource>>>,
}

fn families() -> [IntGaugeVec; 4] {
    GAUGES.map(|(name, help)| {
        IntGaugeVec::new(Opts::new(name, help), &["cluster", "endpoint"])
            .expect("static metric definition")
    })
}

fn connections() -> IntGaugeVec {
    IntGaugeVec::new(
        Opts::new(
            "octopus_upstream_connections",
            "Open upstream connections by cluster and state: active (carrying requests) or idle (kept for reuse).",
        ),
        &["cluster", "state"],
    )
    .expect("static metric definition")
}

impl EndpointCollector {
    pub(crate) fn new() -> Self {
        let descs = families()
            .iter()
            .chain(std::iter::once(&connections()))
            .flat_map(|f| f.desc().into_iter().cloned())
            .collect();
        EndpointCollector {
            descs: Arc::new(descs),
            source: Arc::new(ArcSwapOption::empty()),
        }
    }

    pub(crate) fn set_source(&self, source: Weak<dyn EndpointSource>) {
        self.source.store(Some(Arc::new(source)));
    }
}

impl Collector for EndpointCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut samples = Vec::new();
        if let Some(source) = self.source.load().as_ref().and_then(|w| w.upgrade()) {
            source.sample(&mut samples);
        }
        // Fresh families per scrape: what they hold is exactly the endpoints now.
        let [healthy, in_flight, weight, ejected] = families();
        let conns = connections();
        for s in &samples {
            let labels = [&*s.cluster, s.endpoint.as_str()];
            healthy.with_label_values(&labels).set(i64::from(s.healthy));
            in_flight.with_label_values(&labels).set(s.in_flight as i64);
            weight.with_label_values(&labels).set(i64::from(s.weight));
            ejected.with_label_values(&labels).set(i64::from(s.ejected));
            let idle = s.connections_idle.min(s.connections_open);
            conns
                .with_label_values(&[&*s.cluster, "active"])
                .add((s.connections_open - idle) as i64);
            conns
                .with_label_values(&[&*s.cluster, "idle"])
                .add(idle as i64);
        }
        [healthy, in_flight, weight, ejected, conns]
            .iter()
            .flat_map(|f| f.collect())
            .collect()
    }
}
