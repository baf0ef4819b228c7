//! The compiled, immutable form of a config: route table, cluster services, metric
//! handles. A reload compiles a whole new snapshot beside the old one and swaps it in
//! with one store; requests keep the snapshot they started with until they end.
//!
//! Live state that must survive a reload lives outside the snapshot's own data: a
//! [`Cluster`] whose spec is unchanged is taken over whole; a changed cluster is rebuilt
//! but takes over the endpoints (pools, counters, health) whose address stays.

pub use crate::cluster::{BuildContext, Cluster};
use crate::rate_limit::Bucket;
use crate::router::{Matcher, Router};
use crate::{stack, BoxService};
use octopus_config::{ClusterConfig, Config, Protocol};
use octopus_metrics::TargetMetrics;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use crate::error::{CompileError, INBOUND_ROUTE, LOCAL_APP, NONE_LABEL};

const INBOUND_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Route {
    pub name: Arc<str>,
    /// `max_request_body_bytes`, if set.
    pub max_body: Option<u64>,
    /// Protocols a client may `Upgrade` to.
    pub upgrades: Vec<String>,
    pub request_body_timeout: Duration,
    pub service: BoxService,
    targets: Vec<(Arc<str>, TargetMetrics)>,
    /// For responses that name no cluster (e.g. the route timeout fired): the route's
    /// only cluster when it has one, else `none`.
    fallback: TargetMetrics,
}

impl Route {
    pub fn metrics_for(&self, cluster: Option<&str>) -> &TargetMetrics {
        cluster
            .and_then(|c| self.targets.iter().find(|(name, _)| &**name == c))
            .map_or(&self.fallback, |(_, m)| m)
    }
}

pub struct Outbound {
    pub router: Router<Route>,
    pub no_route: TargetMetrics,
}

pub struct Inbound {
    /// The mTLS terminator when `inbound.tls` is set; kept across reloads that leave
    /// it unchanged, so its rotation watch keeps running.
    pub tls: Option<Arc<octopus_tls::ServerTls>>,
    pub cluster: Arc<Cluster>,
    pub forward_to: SocketAddr,
    /// Protocols a peer may `Upgrade` to.
    pub upgrades: Vec<String>,
    pub request_body_timeout: Duration,
    pub protocol: Protocol,
    pub metrics: TargetMetrics,
}

pub struct Snapshot {
    pub generation: u64,
    pub loaded_at: SystemTime,
    pub source: Option<String>,
    /// SHA-256 of the file this config was read from, when it came from a file.
    pub digest: Option<String>,
    pub config: Arc<Config>,
    pub outbound: Option<Outbound>,
    pub inbound: Option<Inbound>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// Rate-limit buckets by route name: live state a reload takes over while the
    /// route's limit is unchanged.
    pub buckets: BTreeMap<String, Arc<Bucket>>,
}

impl Snapshot {
    /// Compiles a validated config. Clusters (and the inbound target) whose spec did not
    /// change are taken over from `previous`, keeping their pools and counters.
    pub async fn compile(
        config: Config,
        generation: u64,
        source: Option<String>,
        digest: Option<String>,
        previous: Option<&Snapshot>,
        ctx: &BuildContext,
    ) -> Result<Snapshot, CompileError> {
        let metrics = &ctx.metrics;
        let mut clusters = BTreeMap::new();
        for (name, spec) in &config.clusters {
            let old = previous.and_then(|p| p.clusters.get(name));
            let cluster = match old.filter(|c| &c.spec == spec) {
                Some(c) => c.clone(),
                None => Cluster::build(name, spec, old.map(|c| &**c), ctx).await?,
            };
            clusters.insert(name.clone(), cluster);
        }

        let mut buckets = BTreeMap::new();
        let outbound = match &config.outbound {
            None => None,
            Some(out) => {
                let mut routes = Vec::with_capacity(out.routes.len());
                for r in &out.routes {
                    let matcher = Matcher::compile(&r.matches)
                        .map_err(|e| CompileError(format!("route `{}`: {e}", r.name)))?;
                    let weighted: Vec<(u32, &str)> = match (&r.cluster, &r.split) {
                        (Some(c), _) => vec![(1, c.as_str())],
                        (None, Some(split)) => split
                            .iter()
                            .map(|t| (t.weight, t.cluster.as_str()))
                            .collect(),
                        (None, None) => {
                            return Err(CompileError(format!("route `{}` has no cluster", r.name)))
                        }
                    };
                    let lookup = |c: &str| {
                        clusters.get(c).ok_or_else(|| {
                            CompileError(format!("route `{}`: unknown cluster `{c}`", r.name))
                        })
                    };
                    let targets = weighted
                        .iter()
                        .map(|(w, c)| Ok((*w, lookup(c)?.service())))
                        .collect::<Result<Vec<_>, CompileError>>()?;
                    let mirror = match &r.mirror {
                        Some(m) => Some(lookup(&m.cluster)?.service()),
                        None => None,
                    };
                    // An unchanged limit keeps its bucket (and its tokens) across reloads.
                    let bucket = r.rate_limit.as_ref().map(|spec| {
                        Bucket::reuse(previous.and_then(|p| p.buckets.get(&r.name)), spec)
                    });
                    if let Some(b) = &bucket {
                        buckets.insert(r.name.clone(), b.clone());
                        // The series exists from the moment the limit is configured.
                        metrics.rate_limited_total.with_label_values(&[&r.name]);
                    }
                    let service = stack::route(stack::RouteParts {
                        config: r,
                        targets,
                        mirror,
                        bucket,
                        metrics,
                    });
                    let targets: Vec<(Arc<str>, TargetMetrics)> = weighted
                        .iter()
                        .map(|(_, c)| {
                            (Arc::<str>::from(*c), metrics.target("outbound", &r.name, c))
                        })
                        .collect();
                    let fallback = match targets.as_slice() {
                        [(_, only)] => only.clone(),
                        _ => metrics.target("outbound", &r.name, NONE_LABEL),
                    };
                    routes.push((
                        matcher,
                        Route {
                            name: r.name.as_str().into(),
                            max_body: r.max_request_body_bytes,
                            upgrades: r.upgrades.clone(),
                            request_body_timeout: r.request_body_timeout.get(),
                            service,
                            targets,
                            fallback,
                        },
                    ));
                }
                Some(Outbound {
                    router: Router::new(routes),
                    no_route: metrics.target("outbound", NONE_LABEL, NONE_LABEL),
                })
            }
        };

        let inbound = match &config.inbound {
            None => None,
            Some(inb) => {
                let forward_to = inb.forward_to.socket_addr().ok_or_else(|| {
                    CompileError(format!(
                        "inbound.forward_to {} is not an IP address",
                        inb.forward_to
                    ))
                })?;
                // The local app is a one-endpoint cluster with the inbound limits; its
                // connections draw from the inbound side's descriptors.
                let spec = ClusterConfig {
                    lb: Default::default(),
                    protocol: inb.app_protocol,
                    endpoints: vec![octopus_config::EndpointConfig {
                        address: inb.forward_to.clone(),
                        weight: 1,
                    }],
                    connect_timeout: octopus_config::Duration(INBOUND_CONNECT_TIMEOUT),
                    dns_refresh_interval: octopus_config::Duration(INBOUND_CONNECT_TIMEOUT),
                    circuit_breaker: Some(inb.circuit_breaker.clone()),
                    outlier_detection: None,
                    health_check: None,
                    tls: None,
                    max_response_header_bytes: octopus_config::DEFAULT_MAX_HEADER_BYTES,
                    max_response_headers: octopus_config::DEFAULT_MAX_HEADERS,
                };
                let old = previous
                    .and_then(|p| p.inbound.as_ref())
                    .map(|i| &i.cluster);
                let cluster = match old.filter(|c| c.spec == spec) {
                    Some(c) => c.clone(),
                    None => {
                        let app_ctx = BuildContext {
                            descriptors: ctx.inbound_descriptors.clone(),
                            ..ctx.clone()
                        };
                        Cluster::build(LOCAL_APP, &spec, old.map(|c| &**c), &app_ctx).await?
                    }
                };
                let tls = match &inb.tls {
                    None => None,
                    Some(spec) => Some(
                        previous
                            .and_then(|p| p.inbound.as_ref())
                            .and_then(|i| i.tls.clone())
                            .filter(|t| t.spec() == spec)
                            .map_or_else(
                                || octopus_tls::ServerTls::load(spec, ctx.metrics.clone()),
                                Ok,
                            )
                            .map_err(|e| CompileError(format!("inbound.tls: {e}")))?,
                    ),
                };
                Some(Inbound {
                    tls,
                    cluster,
                    forward_to,
                    upgrades: inb.upgrades.clone(),
                    request_body_timeout: inb.request_body_timeout.get(),
                    protocol: inb.app_protocol,
                    metrics: metrics.target("inbound", INBOUND_ROUTE, LOCAL_APP),
                })
            }
        };

        Ok(Snapshot {
            generation,
            loaded_at: SystemTime::now(),
            source,
            digest,
            config: Arc::new(config),
            outbound,
            inbound,
            clusters,
            buckets,
        })
    }
}
