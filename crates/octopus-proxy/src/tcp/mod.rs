//! Opaque TCP: connections that are not HTTP (detected, or on an `opaque_ports` port)
//! go to a `tcp_routes` cluster, to their original destination unchanged
//! (passthrough), or inbound to the app port the peer connected to. Octopus carries
//! their bytes both ways without looking at them; it only picks where they go, counts
//! them, and closes a connection idle for too long.
//!
//! ```text
//! listener -> detect -> tcp: route (port / CIDR) or passthrough -> dial -> carry
//! ```
//!
//! A connection holds the route (and so its cluster) it started with: a reload never
//! cuts an open connection; new connections follow the new table.

mod carry;
mod dial;

pub use carry::carry;
pub use dial::{TcpError, Upstream};

use crate::cluster::Cluster;
use crate::descriptors::Group;
use crate::error::CompileError;
use octopus_config::{Cidrs, OutboundConfig, Unmatched};
use octopus_metrics::Metrics;
use prometheus::{IntCounter, IntGauge};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The `route` label of connections carried to their original destination.
pub const PASSTHROUGH: &str = "passthrough";

/// A TCP connection's metric handles: open connections, bytes each way, outcomes.
/// Every series exists from the moment the route does.
#[derive(Clone)]
pub struct TcpMetrics {
    pub(crate) open: IntGauge,
    pub(crate) received: IntCounter,
    pub(crate) sent: IntCounter,
    pub(crate) ok: IntCounter,
    pub(crate) connect_failed: IntCounter,
    pub(crate) refused: IntCounter,
}

impl TcpMetrics {
    pub fn new(m: &Metrics, route: &str) -> Self {
        let total = |result| m.tcp_connections_total.with_label_values(&[route, result]);
        TcpMetrics {
            open: m.tcp_connections.with_label_values(&[route]),
            received: m.tcp_bytes_total.with_label_values(&[route, "received"]),
            sent: m.tcp_bytes_total.with_label_values(&[route, "sent"]),
            ok: total("ok"),
            connect_failed: total("connect_failed"),
            refused: total("refused"),
        }
    }

    /// A connection octopus closed because nothing may take it.
    pub fn refuse(&self) {
        self.refused.inc();
    }
}

/// One `tcp_routes` entry, compiled.
pub struct TcpRoute {
    pub name: Arc<str>,
    port: Option<u16>,
    destination: Option<Cidrs>,
    pub cluster: Arc<Cluster>,
    pub idle_timeout: Duration,
    pub metrics: TcpMetrics,
}

impl TcpRoute {
    fn matches(&self, dst: SocketAddr) -> bool {
        self.port.is_none_or(|p| p == dst.port())
            && self
                .destination
                .as_ref()
                .is_none_or(|c| c.contains(dst.ip()))
    }
}

/// The outbound side's TCP table: routes in config order, opaque ports, and what
/// becomes of a connection no route takes.
pub struct TcpTable {
    routes: Vec<Arc<TcpRoute>>,
    opaque_ports: Vec<u16>,
    unmatched: Unmatched,
    detect_timeout: Duration,
    passthrough: TcpMetrics,
}

/// How long a passthrough connection may take to connect: its destination is
/// anywhere the app was going, maybe far away.
pub const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The local app is on this host.
pub const LOCAL_APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Passthrough connections have no route to say otherwise.
const PASSTHROUGH_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

impl TcpTable {
    pub fn compile(
        out: &OutboundConfig,
        clusters: &BTreeMap<String, Arc<Cluster>>,
        metrics: &Metrics,
    ) -> Result<Self, CompileError> {
        let routes = out
            .tcp_routes
            .iter()
            .map(|r| {
                let cluster = clusters.get(&r.cluster).cloned().ok_or_else(|| {
                    CompileError(format!(
                        "tcp route `{}`: unknown cluster `{}`",
                        r.name, r.cluster
                    ))
                })?;
                Ok(Arc::new(TcpRoute {
                    name: r.name.as_str().into(),
                    port: r.matches.port,
                    destination: r.matches.destination.clone(),
                    cluster,
                    idle_timeout: r.idle_timeout.get(),
                    metrics: TcpMetrics::new(metrics, &r.name),
                }))
            })
            .collect::<Result<Vec<_>, CompileError>>()?;
        Ok(TcpTable {
            routes,
            opaque_ports: out.opaque_ports.clone(),
            unmatched: out.unmatched,
            detect_timeout: out.detect_timeout.get(),
            passthrough: TcpMetrics::new(metrics, PASSTHROUGH),
        })
    }

    pub fn detect_timeout(&self) -> Duration {
        self.detect_timeout
    }

    pub fn unmatched(&self) -> Unmatched {
        self.unmatched
    }

    pub fn is_opaque_port(&self, port: u16) -> bool {
        self.opaque_ports.contains(&port)
    }

    pub fn has_routes(&self) -> bool {
        !self.routes.is_empty()
    }

    /// Where an opaque connection to `dst` goes: the first TCP route that matches,
    /// else (for a captured connection, unless the config refuses) its original
    /// destination. `None`: the connection is closed.
    pub fn destination(
        &self,
        dst: SocketAddr,
        captured: bool,
        descriptors: Option<Arc<Group>>,
    ) -> Option<Destination> {
        if let Some(r) = self.routes.iter().find(|r| r.matches(dst)) {
            return Some(Destination::Route(r.clone()));
        }
        (captured && self.unmatched == Unmatched::Passthrough).then(|| Destination::Direct {
            addr: dst,
            route: PASSTHROUGH,
            connect_timeout: PASSTHROUGH_CONNECT_TIMEOUT,
            idle_timeout: PASSTHROUGH_IDLE_TIMEOUT,
            metrics: self.passthrough.clone(),
            descriptors,
            limits: None,
        })
    }

    /// The metrics of connections no route takes.
    pub fn passthrough_metrics(&self) -> &TcpMetrics {
        &self.passthrough
    }
}

/// Where one opaque connection goes.
#[derive(Clone)]
pub enum Destination {
    /// A TCP route's cluster: balanced, limited, outlier-checked, maybe mTLS.
    Route(Arc<TcpRoute>),
    /// One address: the original destination (passthrough), or the local app's port
    /// (inbound).
    Direct {
        addr: SocketAddr,
        /// The `route` label: `passthrough`, or `inbound` for the local app.
        route: &'static str,
        connect_timeout: Duration,
        idle_timeout: Duration,
        metrics: TcpMetrics,
        descriptors: Option<Arc<Group>>,
        /// The local app's connection limit (`inbound.circuit_breaker`).
        limits: Option<Arc<crate::circuit_breaker::Circuit>>,
    },
}

impl Destination {
    /// The local app's port `addr`, for an inbound connection.
    pub fn local_app(
        addr: SocketAddr,
        idle_timeout: Duration,
        metrics: TcpMetrics,
        descriptors: Option<Arc<Group>>,
        limits: Option<Arc<crate::circuit_breaker::Circuit>>,
    ) -> Self {
        Destination::Direct {
            addr,
            route: crate::error::INBOUND_ROUTE,
            connect_timeout: LOCAL_APP_CONNECT_TIMEOUT,
            idle_timeout,
            metrics,
            descriptors,
            limits,
        }
    }

    pub fn metrics(&self) -> &TcpMetrics {
        match self {
            Destination::Route(r) => &r.metrics,
            Destination::Direct { metrics, .. } => metrics,
        }
    }

    /// The `route` label.
    pub fn route(&self) -> Arc<str> {
        match self {
            Destination::Route(r) => r.name.clone(),
            Destination::Direct { route, .. } => Arc::from(*route),
        }
    }

    /// The cluster, for access-log lines: a route's, or the local app.
    pub fn cluster(&self) -> Option<Arc<str>> {
        match self {
            Destination::Route(r) => Some(r.cluster.name.clone()),
            Destination::Direct { route, .. } if *route == crate::error::INBOUND_ROUTE => {
                Some(crate::error::LOCAL_APP.into())
            }
            Destination::Direct { .. } => None,
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        match self {
            Destination::Route(r) => r.idle_timeout,
            Destination::Direct { idle_timeout, .. } => *idle_timeout,
        }
    }
}
