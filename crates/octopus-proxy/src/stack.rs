//! The request path, composed in one place. Reading this file top to bottom gives
//! the order of every layer a request passes through; adding a layer is a module with
//! a `FooLayer` + `Foo<S>` pair and one line here.
//!
//! ```text
//! handler        route lookup, trust rules (strip, then set), metrics, 499 on abort
//!   route        rate limit -> mirror -> timeout -> retry -> split | the one cluster
//!   cluster      circuit breaker -> balancer over the endpoint stacks
//!   endpoint     outlier detection -> in-flight accounting -> endpoint (pooled client,
//!                connector)
//! ```
//!
//! Each level is boxed once, at its boundary ([`BoxService`]): a route's stack, a
//! cluster's stack. Layers a config leaves out are `option_layer`s, so they cost
//! nothing. The order is the contract:
//! - the rate limit is outermost: a request over it is answered at once, before a copy
//!   is mirrored or a try is made;
//! - the mirror copies once per client request, whatever retries follow;
//! - the route timeout bounds all tries together;
//! - retry sits above the split and the balancer, so each try may land on another
//!   cluster side and another endpoint (linkerd2-proxy orders its stack the same way);
//! - the circuit breaker sheds a request before any endpoint is picked;
//! - outlier detection sits below the balancer, around each endpoint, so an ejected
//!   endpoint simply stops being picked.

use crate::balance::{Balancer, MakeEndpoint};
use crate::circuit_breaker::{Circuit, CircuitBreakerLayer};
use crate::endpoint::{Endpoint, EndpointService};
use crate::in_flight::{InFlight, InFlightLayer};
use crate::mirror::MirrorLayer;
use crate::outlier::{Outlier, OutlierDetection, OutlierLayer};
use crate::rate_limit::{Bucket, RateLimitLayer};
use crate::retry::RetryLayer;
use crate::split::Split;
use crate::timeout::TimeoutLayer;
use crate::BoxService;
use octopus_config::RouteConfig;
use octopus_metrics::Metrics;
use std::sync::Arc;
use tower::util::Either;
use tower::ServiceBuilder;

/// What a route's stack is built from: its config, the services of the clusters it
/// sends to (with their weights), its mirror's cluster, and its rate-limit bucket
/// (kept across reloads while the limit is unchanged).
pub(crate) struct RouteParts<'a> {
    pub config: &'a RouteConfig,
    pub targets: Vec<(u32, BoxService)>,
    pub mirror: Option<BoxService>,
    pub bucket: Option<Arc<Bucket>>,
    pub metrics: &'a Metrics,
}

/// The route stack: rate limit -> mirror -> timeout -> retry -> split | cluster.
pub(crate) fn route(p: RouteParts<'_>) -> BoxService {
    let (r, m) = (p.config, p.metrics);
    let mut targets = p.targets;
    let inner = if targets.len() == 1 {
        Either::Right(targets.remove(0).1)
    } else {
        Either::Left(Split::new(targets, r.hash_on.clone()))
    };
    let rate_limit = p
        .bucket
        .map(|b| RateLimitLayer::new(b, m.rate_limited_total.with_label_values(&[&r.name])));
    let mirror = match (p.mirror, &r.mirror) {
        (Some(target), Some(spec)) => Some(MirrorLayer::new(
            target,
            spec.percent,
            m.mirror_requests_total
                .with_label_values(&[&r.name, &spec.cluster]),
        )),
        _ => None,
    };
    let timeout = r.timeout.map(|t| TimeoutLayer::new(t.get()));
    let retry = r.retry.clone().map(|policy| {
        RetryLayer::new(
            policy,
            m.upstream_retries_total.clone(),
            m.retry_budget_exhausted_total.clone(),
        )
    });
    BoxService::new(
        ServiceBuilder::new()
            .option_layer(rate_limit)
            .option_layer(mirror)
            .option_layer(timeout)
            .option_layer(retry)
            .service(inner),
    )
}

/// The cluster stack: circuit breaker (when the cluster sets `circuit_breaker`) ->
/// balancer, whose members are [`endpoint`] stacks.
pub(crate) fn cluster<M: MakeEndpoint>(
    name: &Arc<str>,
    circuit: Option<Arc<Circuit>>,
    metrics: &Metrics,
    balancer: Balancer<M>,
) -> BoxService {
    let breaker = circuit
        .map(|c| CircuitBreakerLayer::new(name.clone(), c, metrics.circuit_overflow_total.clone()));
    BoxService::new(
        ServiceBuilder::new()
            .option_layer(breaker)
            .service(balancer),
    )
}

/// One endpoint's stack, made per pick by the balancer: outlier detection (when the
/// cluster has it) -> in-flight accounting -> the endpoint's own service.
pub(crate) type EndpointStack =
    Either<OutlierDetection<InFlight<EndpointService>>, InFlight<EndpointService>>;

/// How a cluster's balancer makes each member's [`EndpointStack`].
pub(crate) fn endpoint(
    outlier: Option<Arc<Outlier>>,
) -> impl Fn(Arc<Endpoint>) -> EndpointStack + Send + Sync + 'static {
    move |ep: Arc<Endpoint>| {
        ServiceBuilder::new()
            .option_layer(
                outlier
                    .as_ref()
                    .map(|o| OutlierLayer::new(o.clone(), ep.clone())),
            )
            .layer(InFlightLayer::new(ep.clone()))
            .service(EndpointService::new(ep))
    }
}
