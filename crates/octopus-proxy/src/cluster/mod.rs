//! A cluster's live state: its members (from the config's IP literals and DNS names),
//! their health, and the balancer over them. Background tasks (DNS refresh, active
//! health checks) belong to the cluster and stop when it is dropped, which happens
//! once no routing table and no in-flight request refers to it.

mod dns;
mod health;

pub use dns::{Resolve, SystemResolver};

use crate::balance::{Balancer, Member, Membership, Picker};
use crate::circuit_breaker::Circuit;
use crate::descriptors::Group;
use crate::endpoint::{ConnectionSpec, Endpoint, EndpointStats, PoolCounters};
use crate::error::{CompileError, LOCAL_APP};
use crate::outlier::Outlier;
use crate::{stack, BoxService};
use octopus_config::{ClusterConfig, HostPort, InboundConfig};
use octopus_metrics::Metrics;
use octopus_tls::ClientTls;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::task::AbortHandle;

#[derive(Debug, serde::Serialize)]
pub struct MemberView {
    #[serde(flatten)]
    pub stats: EndpointStats,
    pub weight: u32,
    /// Whether the balancer may pick it now (healthy, not ejected, weight > 0).
    pub available: bool,
}

/// What building clusters needs from the process: the metrics registry, the DNS
/// resolver, and the descriptor group their upstream connections draw from.
#[derive(Clone)]
pub struct BuildContext {
    pub metrics: Arc<Metrics>,
    pub resolver: Arc<dyn Resolve>,
    /// The outbound side's group: every cluster but the local app's.
    pub descriptors: Option<Arc<Group>>,
    /// The inbound side's group: the local app's connections.
    pub inbound_descriptors: Option<Arc<Group>>,
}

pub struct Cluster {
    pub name: Arc<str>,
    pub spec: ClusterConfig,
    members: Arc<Membership>,
    service: BoxService,
    /// What its endpoints' connections are made with: the endpoint-reuse key.
    connection: ConnectionSpec,
    limits: Option<Arc<Circuit>>,
    tls: Option<Arc<ClientTls>>,
    /// The balancing policy's picker and outlier detection, for opaque TCP
    /// connections, which pick an endpoint per connection outside the HTTP stack.
    picker: Picker,
    outlier: Option<Arc<Outlier>>,
    tasks: Vec<AbortHandle>,
    /// Last good DNS answers, kept so a rebuilt cluster starts from them if DNS is
    /// down at reload time.
    resolved: Arc<Mutex<Resolved>>,
}

type Resolved = HashMap<HostPort, Vec<SocketAddr>>;

/// Connecting to the local app; it is on loopback, so a second is plenty.
const LOCAL_APP_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_background();
    }
}

/// Endpoints of a previous cluster by address, for reuse when their connection
/// settings are unchanged: pools, counters and health survive reloads and
/// re-resolution.
pub(crate) struct EndpointPool {
    cluster: Arc<str>,
    spec: ClusterConfig,
    connection: ConnectionSpec,
    known: HashMap<SocketAddr, Arc<Endpoint>>,
    /// The cluster's connection/request limits, shared by all its endpoints.
    limits: Option<Arc<Circuit>>,
    /// The cluster's TLS client, shared by all its endpoints.
    tls: Option<Arc<ClientTls>>,
    descriptors: Option<Arc<Group>>,
    counters: PoolCounters,
}

impl EndpointPool {
    fn new(
        cluster: Arc<str>,
        spec: &ClusterConfig,
        previous: Option<&Cluster>,
        ctx: &BuildContext,
    ) -> Result<Self, CompileError> {
        let metrics = &ctx.metrics;
        // Endpoints carry what they were built with: reuse them only when it is equal.
        let connection = ConnectionSpec::of(spec);
        let compatible = previous.filter(|p| p.connection == connection);
        let limits = match compatible {
            Some(p) => p.limits.clone(),
            None => spec.circuit_breaker.clone().map(|cb| {
                // Every limit's series exists from the moment the limits are configured.
                for limit in ["max_requests", "max_pending_requests"] {
                    metrics
                        .circuit_overflow_total
                        .with_label_values(&[&cluster, limit]);
                }
                let overflow = metrics
                    .circuit_overflow_total
                    .with_label_values(&[&cluster, "max_connections"]);
                Circuit::new(
                    cb,
                    spec.protocol == octopus_config::Protocol::Http2,
                    Some(overflow),
                )
            }),
        };
        let tls = match (compatible, &spec.tls) {
            (Some(p), _) => p.tls.clone(),
            (None, None) => None,
            (None, Some(t)) => Some(
                ClientTls::load(t, spec.protocol, metrics.clone())
                    .map_err(|e| CompileError(format!("cluster `{cluster}`: {e}")))?,
            ),
        };
        let known = compatible
            .map(|p| {
                p.members
                    .load()
                    .all()
                    .iter()
                    .map(|m| (m.endpoint.addr(), m.endpoint.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(EndpointPool {
            spec: spec.clone(),
            connection,
            known,
            limits,
            tls,
            descriptors: ctx.descriptors.clone(),
            counters: PoolCounters {
                opened: metrics
                    .upstream_connections_opened_total
                    .with_label_values(&[&cluster]),
                closed: metrics
                    .upstream_connections_closed_total
                    .with_label_values(&[&cluster]),
                failed: metrics
                    .upstream_connections_failed_total
                    .with_label_values(&[&cluster]),
                bytes: crate::counted::ByteCounters {
                    received: metrics
                        .upstream_bytes_total
                        .with_label_values(&[&cluster, "received"]),
                    sent: metrics
                        .upstream_bytes_total
                        .with_label_values(&[&cluster, "sent"]),
                },
            },
            cluster,
        })
    }

    fn get(&mut self, addr: SocketAddr) -> Arc<Endpoint> {
        let (cluster, connection, limits, tls, fds, counters) = (
            &self.cluster,
            &self.connection,
            &self.limits,
            &self.tls,
            &self.descriptors,
            &self.counters,
        );
        self.known
            .entry(addr)
            .or_insert_with(|| {
                Endpoint::new(
                    cluster.clone(),
                    addr,
                    connection,
                    limits.clone(),
                    tls.clone(),
                    fds.clone(),
                    Some(counters.clone()),
                )
            })
            .clone()
    }

    /// Members for the configured entries, in config order, with DNS names expanded
    /// to `resolved` addresses; an address listed twice keeps its first entry.
    fn members(&mut self, resolved: &HashMap<HostPort, Vec<SocketAddr>>) -> Vec<Member> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for e in self.spec.endpoints.clone() {
            let addrs = match e.address.socket_addr() {
                Some(a) => vec![a],
                None => resolved.get(&e.address).cloned().unwrap_or_default(),
            };
            for addr in addrs {
                if seen.insert(addr) {
                    out.push(Member {
                        endpoint: self.get(addr),
                        weight: e.weight,
                    });
                }
            }
        }
        out
    }
}

impl Cluster {
    /// Builds a cluster, resolving DNS names once before it serves. `previous` is the
    /// cluster of the same name in the config being replaced, if any.
    pub async fn build(
        name: &str,
        spec: &ClusterConfig,
        previous: Option<&Cluster>,
        ctx: &BuildContext,
    ) -> Result<Arc<Cluster>, CompileError> {
        let name: Arc<str> = name.into();
        let mut pool = EndpointPool::new(name.clone(), spec, previous, ctx)?;
        let names: Vec<HostPort> = spec
            .endpoints
            .iter()
            .filter(|e| e.address.ip().is_none())
            .map(|e| e.address.clone())
            .collect();
        let last_good = previous
            .map(|p| p.resolved.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        let (resolved, ttl) =
            dns::resolve_all(&name, &names, &last_good, &ctx.metrics, &*ctx.resolver).await;
        let shared_resolved = Arc::new(Mutex::new(resolved.clone()));
        let members = pool.members(&resolved);
        if spec.health_check.is_none() {
            // Health from a previous config's checks no longer applies.
            members.iter().for_each(|m| m.endpoint.reset_health());
        }
        if spec.outlier_detection.is_none() {
            members.iter().for_each(|m| m.endpoint.ejection.reset());
        }
        let membership = Membership::new(members);
        membership.adopt();
        let limits = pool.limits.clone();
        let connection = pool.connection.clone();
        let tls = pool.tls.clone();
        let mut tasks = Vec::new();
        if !names.is_empty() {
            let refresh = dns::Refresher {
                cluster: name.clone(),
                names,
                resolved,
                shared: shared_resolved.clone(),
                pool,
                members: membership.clone(),
                metrics: ctx.metrics.clone(),
                resolver: ctx.resolver.clone(),
                interval: spec.dns_refresh_interval.get(),
                ttl,
            };
            tasks.push(tokio::spawn(refresh.run()).abort_handle());
        }
        if let Some(hc) = &spec.health_check {
            let checker = health::Checker {
                cluster: name.clone(),
                spec: hc.clone(),
                members: membership.clone(),
            };
            tasks.push(tokio::spawn(checker.run()).abort_handle());
        }
        let outlier = spec.outlier_detection.clone().map(|od| {
            let members = Arc::downgrade(&membership);
            let share: crate::outlier::EjectedShare =
                Arc::new(move || members.upgrade().map_or((0, 0), |m| m.ejected_share()));
            Outlier::new(name.clone(), od, share)
        });
        let balancer = Balancer::new(
            name.clone(),
            membership.clone(),
            spec.lb,
            stack::endpoint(outlier.clone()),
        );
        let service = stack::cluster(&name, limits.clone(), &ctx.metrics, balancer);
        Ok(Arc::new(Cluster {
            name,
            spec: spec.clone(),
            members: membership,
            service,
            connection,
            limits,
            tls,
            picker: Picker::new(spec.lb),
            outlier,
            tasks,
            resolved: shared_resolved,
        }))
    }

    /// The local app as a one-endpoint cluster: `inbound.forward_to`, spoken to with
    /// `app_protocol`, under the `inbound.circuit_breaker` limits, its connections
    /// drawing from the inbound side's descriptors. `previous` is the local app of the
    /// config being replaced: taken over whole while nothing it is built from changed.
    pub async fn local_app(
        inb: &InboundConfig,
        previous: Option<&Arc<Cluster>>,
        ctx: &BuildContext,
    ) -> Result<Arc<Cluster>, CompileError> {
        let spec = ClusterConfig {
            lb: Default::default(),
            protocol: inb.app_protocol,
            endpoints: vec![octopus_config::EndpointConfig {
                address: inb.forward_to.clone(),
                weight: 1,
            }],
            connect_timeout: octopus_config::Duration(LOCAL_APP_CONNECT_TIMEOUT),
            dns_refresh_interval: octopus_config::Duration(LOCAL_APP_CONNECT_TIMEOUT),
            circuit_breaker: Some(inb.circuit_breaker.clone()),
            outlier_detection: None,
            health_check: None,
            tls: None,
            max_response_header_bytes: octopus_config::DEFAULT_MAX_HEADER_BYTES,
            max_response_headers: octopus_config::DEFAULT_MAX_HEADERS,
            pool: Default::default(),
        };
        if let Some(p) = previous.filter(|p| p.spec == spec) {
            return Ok(p.clone());
        }
        let app_ctx = BuildContext {
            descriptors: ctx.inbound_descriptors.clone(),
            ..ctx.clone()
        };
        Cluster::build(LOCAL_APP, &spec, previous.map(|p| &**p), &app_ctx).await
    }

    /// Stops DNS refresh and health checks. Called when a reload replaced this cluster
    /// (its successor checks the same endpoints) even while in-flight requests still
    /// hold it, so two checkers never judge one endpoint.
    pub fn stop_background(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Sends a request through the cluster's stack.
    pub fn call(&self, req: http::Request<crate::body::Body>) -> crate::boxed::BoxFuture {
        self.service.call_shared(req)
    }

    /// An endpoint for one opaque TCP connection, by the cluster's policy, preferring
    /// endpoints not in `tried` (a connection that failed to dial tries another).
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<Arc<Endpoint>> {
        let set = self.members.load();
        if tried.is_empty() {
            return self.picker.pick(&set).map(|m| m.endpoint.clone());
        }
        set.least_loaded_untried(tried).map(|m| m.endpoint)
    }

    /// Feeds a dial's outcome to outlier detection: a refused or timed-out connect
    /// counts against the endpoint like a 5xx does for HTTP.
    pub fn record_dial(&self, ep: &Arc<Endpoint>, ok: bool) {
        if !ok {
            ep.count_failure();
        }
        if let Some(o) = &self.outlier {
            o.record(ep, ok);
        }
    }

    /// The cluster's connection and request limits (`circuit_breaker`), shared by
    /// every connection to it.
    pub fn limits(&self) -> Option<Arc<Circuit>> {
        self.limits.clone()
    }

    pub fn service(&self) -> BoxService {
        self.service.clone()
    }

    pub fn members(&self) -> Vec<Member> {
        self.members.load().all().to_vec()
    }

    /// Live state of every member, for `/clusters`.
    pub fn endpoint_stats(&self) -> Vec<MemberView> {
        let set = self.members.load();
        set.all()
            .iter()
            .map(|m| MemberView {
                stats: m.endpoint.stats(),
                weight: m.weight,
                available: set
                    .available()
                    .iter()
                    .any(|a| Arc::ptr_eq(&a.endpoint, &m.endpoint)),
            })
            .collect()
    }
}
