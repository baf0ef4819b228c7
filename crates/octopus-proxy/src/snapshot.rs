//! The compiled, immutable form of a config: route table, cluster services, metric
//! handles. A reload compiles a whole new snapshot beside the old one and swaps it in
//! with one store; requests keep the snapshot they started with until they end.
//!
//! Live state that must survive a reload lives outside the snapshot's own data: a
//! [`Cluster`] whose spec is unchanged is taken over whole; a changed cluster is rebuilt
//! but takes over the endpoints (pools, counters, health) whose address stays.

use crate::access_log::AccessLog;
pub use crate::cluster::{BuildContext, Cluster};
use crate::rate_limit::Bucket;
use crate::router::{Matcher, Names, Router};
use crate::trace::Tracer;
use crate::{stack, BoxService};
use octopus_config::{Config, InboundConfig, OutboundConfig, Protocol, RouteConfig};
use octopus_metrics::Metrics;
use octopus_metrics::TargetMetrics;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use crate::error::{CompileError, INBOUND_ROUTE, LOCAL_APP, NONE_LABEL};

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
    pub access_log: Option<AccessLog>,
    /// TCP routes, opaque ports, and what becomes of unmatched captured traffic.
    pub tcp: crate::tcp::TcpTable,
    /// HTTP requests of captured connections that no route takes, sent on to where
    /// they were going (`route="passthrough"`).
    pub passthrough: Passthrough,
}

/// What unrouted HTTP requests of captured connections get: a route's defaults.
pub struct Passthrough {
    pub metrics: TargetMetrics,
    pub upgrades: Vec<String>,
    pub request_body_timeout: Duration,
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
    pub access_log: Option<AccessLog>,
    /// Opaque TCP to the app: ports carried without detection, how long a silent
    /// plain connection waits, the idle timeout, the metrics (`route="inbound"`).
    pub opaque_ports: Vec<u16>,
    pub detect_timeout: Duration,
    pub tcp_idle_timeout: Duration,
    pub tcp: crate::tcp::TcpMetrics,
    /// The ports octopus listens on (admin, metrics, outbound, inbound): never a
    /// destination of a captured peer connection.
    pub own_ports: Vec<u16>,
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
    /// `tracing:`, kept (with its exporter) while the section is unchanged.
    pub tracer: Option<Arc<Tracer>>,
}

impl Snapshot {
    /// Compiles a validated config. Live state whose spec did not change (clusters,
    /// the local app, rate-limit buckets, the inbound TLS terminator) is taken over from
    /// `previous`, keeping its pools, counters and tokens.
    pub async fn compile(
        config: Config,
        generation: u64,
        source: Option<String>,
        digest: Option<String>,
        previous: Option<&Snapshot>,
        ctx: &BuildContext,
    ) -> Result<Snapshot, CompileError> {
        let clusters = compile_clusters(&config, previous, ctx).await?;
        let mut buckets = BTreeMap::new();
        let outbound = match &config.outbound {
            Some(out) => Some(compile_outbound(
                out,
                &Names::of(&config),
                &clusters,
                previous,
                &mut buckets,
                ctx,
            )?),
            None => None,
        };
        let inbound = match &config.inbound {
            Some(inb) => {
                Some(compile_inbound(inb, &config, previous, outbound.as_ref(), ctx).await?)
            }
            None => None,
        };
        let tracer = config
            .tracing
            .as_ref()
            .map(|spec| {
                Tracer::compile(spec, previous.and_then(|p| p.tracer.as_ref()), &ctx.metrics)
            })
            .transpose()?;
        Ok(Snapshot {
            tracer,
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

/// Every cluster: an unchanged one is taken over whole, a changed one rebuilt (reusing
/// the endpoints whose connection spec is unchanged).
async fn compile_clusters(
    config: &Config,
    previous: Option<&Snapshot>,
    ctx: &BuildContext,
) -> Result<BTreeMap<String, Arc<Cluster>>, CompileError> {
    let mut clusters = BTreeMap::new();
    for (name, spec) in &config.clusters {
        let old = previous.and_then(|p| p.clusters.get(name));
        let cluster = match old.filter(|c| &c.spec == spec) {
            Some(c) => c.clone(),
            None => Cluster::build(name, spec, old.map(|c| &**c), ctx).await?,
        };
        clusters.insert(name.clone(), cluster);
    }
    Ok(clusters)
}

/// The route table, in config order.
fn compile_outbound(
    out: &OutboundConfig,
    names: &Names,
    clusters: &BTreeMap<String, Arc<Cluster>>,
    previous: Option<&Snapshot>,
    buckets: &mut BTreeMap<String, Arc<Bucket>>,
    ctx: &BuildContext,
) -> Result<Outbound, CompileError> {
    let metrics = &ctx.metrics;
    let routes = out
        .routes
        .iter()
        .map(|r| {
            let matcher = Matcher::compile_in(&r.matches, names)
                .map_err(|e| CompileError(format!("route `{}`: {e}", r.name)))?;
            // An unchanged limit keeps its bucket (and its tokens) across reloads.
            let bucket = r
                .rate_limit
                .as_ref()
                .map(|spec| Bucket::reuse(previous.and_then(|p| p.buckets.get(&r.name)), spec));
            if let Some(b) = &bucket {
                buckets.insert(r.name.clone(), b.clone());
                // The series exists from the moment the limit is configured.
                metrics.rate_limited_total.with_label_values(&[&r.name]);
            }
            Ok((matcher, compile_route(r, clusters, bucket, metrics)?))
        })
        .collect::<Result<Vec<_>, CompileError>>()?;
    let access_log = out
        .access_log
        .as_ref()
        .map(|spec| AccessLog::compile(spec, "outbound", previous_logs(previous), metrics))
        .transpose()?;
    Ok(Outbound {
        router: Router::new(routes),
        no_route: target(metrics, "outbound", NONE_LABEL, NONE_LABEL),
        access_log,
        tcp: crate::tcp::TcpTable::compile(out, clusters, metrics)?,
        passthrough: Passthrough {
            metrics: target(
                metrics,
                "outbound",
                crate::tcp::PASSTHROUGH,
                crate::tcp::PASSTHROUGH,
            ),
            upgrades: octopus_config::DEFAULT_UPGRADES
                .iter()
                .map(|u| u.to_string())
                .collect(),
            request_body_timeout: octopus_config::DEFAULT_REQUEST_BODY_TIMEOUT,
        },
    })
}

/// A target's metric handles, with its error series created at 0 for every kind, so
/// the first burst of a kind is an `increase()` an alert can see.
fn target(metrics: &Metrics, direction: &str, route: &str, cluster: &str) -> TargetMetrics {
    let t = metrics.target(direction, route, cluster);
    t.touch_errors(&crate::error::ERROR_KINDS);
    t
}

/// The access logs of the previous snapshot, whose writers a new one may take over.
fn previous_logs(previous: Option<&Snapshot>) -> impl Iterator<Item = &AccessLog> {
    previous.into_iter().flat_map(|p| {
        let out = p.outbound.as_ref().and_then(|o| o.access_log.as_ref());
        let inb = p.inbound.as_ref().and_then(|i| i.access_log.as_ref());
        out.into_iter().chain(inb)
    })
}

/// One route: its service stack (see `stack::route`) and its metric handles.
fn compile_route(
    r: &RouteConfig,
    clusters: &BTreeMap<String, Arc<Cluster>>,
    bucket: Option<Arc<Bucket>>,
    metrics: &Metrics,
) -> Result<Route, CompileError> {
    let weighted: Vec<(u32, &str)> = match (&r.cluster, &r.split) {
        (Some(c), _) => vec![(1, c.as_str())],
        (None, Some(split)) => split
            .iter()
            .map(|t| (t.weight, t.cluster.as_str()))
            .collect(),
        (None, None) => return Err(CompileError(format!("route `{}` has no cluster", r.name))),
    };
    let lookup = |c: &str| {
        clusters
            .get(c)
            .map(|c| c.service())
            .ok_or_else(|| CompileError(format!("route `{}`: unknown cluster `{c}`", r.name)))
    };
    let targets = weighted
        .iter()
        .map(|(w, c)| Ok((*w, lookup(c)?)))
        .collect::<Result<Vec<_>, CompileError>>()?;
    let mirror = r.mirror.as_ref().map(|m| lookup(&m.cluster)).transpose()?;
    if let Some(retry) = &r.retry {
        // Retry series exist at 0 from the moment a route may retry, so the first burst
        // is an increase an alert can see; a per-try timeout's retries name no cluster.
        let cut = retry.per_try_timeout.map(|_| NONE_LABEL);
        for (_, c) in weighted.iter().copied().chain(cut.map(|c| (0, c))) {
            metrics.upstream_retries_total.with_label_values(&[c]);
            metrics.retry_budget_exhausted_total.with_label_values(&[c]);
        }
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
            (
                Arc::<str>::from(*c),
                target(metrics, "outbound", &r.name, c),
            )
        })
        .collect();
    let fallback = match targets.as_slice() {
        [(_, only)] => only.clone(),
        _ => target(metrics, "outbound", &r.name, NONE_LABEL),
    };
    Ok(Route {
        name: r.name.as_str().into(),
        max_body: r.max_request_body_bytes,
        upgrades: r.upgrades.clone(),
        request_body_timeout: r.request_body_timeout.get(),
        service,
        targets,
        fallback,
    })
}

/// The inbound side: the local app (taken over while unchanged) and the TLS
/// terminator (kept while its spec is unchanged, so its rotation watch keeps running).
async fn compile_inbound(
    inb: &InboundConfig,
    config: &Config,
    previous: Option<&Snapshot>,
    outbound: Option<&Outbound>,
    ctx: &BuildContext,
) -> Result<Inbound, CompileError> {
    // Both listeners may log to one place: they share its writer.
    let this_outbound = outbound.and_then(|o| o.access_log.as_ref());
    let access_log = inb
        .access_log
        .as_ref()
        .map(|spec| {
            let reusable = this_outbound.into_iter().chain(previous_logs(previous));
            AccessLog::compile(spec, "inbound", reusable, &ctx.metrics)
        })
        .transpose()?;
    let forward_to = inb.forward_to.socket_addr().ok_or_else(|| {
        CompileError(format!(
            "inbound.forward_to {} is not an IP address",
            inb.forward_to
        ))
    })?;
    let old = previous.and_then(|p| p.inbound.as_ref());
    let cluster = Cluster::local_app(inb, old.map(|i| &i.cluster), ctx).await?;
    let tls = match &inb.tls {
        None => None,
        Some(spec) => Some(
            old.and_then(|i| i.tls.clone())
                .filter(|t| t.spec() == spec)
                .map_or_else(
                    || octopus_tls::ServerTls::load(spec, ctx.metrics.clone()),
                    Ok,
                )
                .map_err(|e| CompileError(format!("inbound.tls: {e}")))?,
        ),
    };
    Ok(Inbound {
        tls,
        cluster,
        forward_to,
        upgrades: inb.upgrades.clone(),
        request_body_timeout: inb.request_body_timeout.get(),
        protocol: inb.app_protocol,
        metrics: target(&ctx.metrics, "inbound", INBOUND_ROUTE, LOCAL_APP),
        access_log,
        opaque_ports: inb.opaque_ports.clone(),
        detect_timeout: inb.detect_timeout.get(),
        tcp_idle_timeout: inb.tcp_idle_timeout.get(),
        tcp: crate::tcp::TcpMetrics::new(&ctx.metrics, INBOUND_ROUTE),
        own_ports: config.listen_ports(),
    })
}
