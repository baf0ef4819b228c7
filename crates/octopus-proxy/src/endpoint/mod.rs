//! One upstream endpoint: its connection pool (keep-alive; HTTP/2 multiplexed when the
//! cluster speaks it) and its live counters. Endpoint state is shared by every routing
//! table that names the same cluster, so it outlives config reloads.

mod connector;
mod ejection;
mod pool;

pub use connector::{Conn, ConnectError, Connector};
pub use ejection::Ejection;
pub(crate) use ejection::{CLOSED, HALF_OPEN, OPEN};
use pool::{Pool, PoolError};
pub use pool::{PoolCounters, PoolSettings, PoolStats};

use crate::body::{self, Body, ClientBodyWatch};
use crate::circuit_breaker::Circuit;
use crate::error::{Fault, ProxyError};
use crate::exchange::Exchange;
use crate::headers;
use crate::held::{Held, Release};
use http::{header, Request, Response, Uri, Version};
use octopus_config::Protocol;
use octopus_tls::ClientTls;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

pub struct Endpoint {
    addr: SocketAddr,
    authority: http::uri::Authority,
    cluster: Arc<str>,
    protocol: Protocol,
    pool: Arc<Pool>,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Set by active health checks; endpoints start healthy so traffic flows at once.
    healthy: AtomicBool,
    /// Consecutive health-check results (successes, failures) toward a transition.
    check_streak: Mutex<(u32, u32)>,
    /// Passive health: outlier detection's ejection state.
    pub(crate) ejection: Ejection,
    /// Called when the endpoint's availability changes (health check, ejection):
    /// installed by the newest cluster using the endpoint, so its balancer republishes
    /// the members that may take traffic. The endpoint knows nothing about who listens.
    on_availability: Mutex<Option<AvailabilityHook>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("cluster", &self.cluster)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// See [`Endpoint::set_availability_hook`].
pub type AvailabilityHook = Arc<dyn Fn() + Send + Sync>;

/// Live figures of one endpoint, for `/clusters`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointStats {
    pub address: String,
    pub healthy: bool,
    /// Outlier detection: `closed`, `open` (ejected) or `half_open`.
    pub outlier: &'static str,
    pub in_flight: usize,
    pub requests_total: u64,
    pub failures_total: u64,
    /// Open upstream connections, and how many of them are idle.
    pub connections_open: usize,
    pub connections_idle: usize,
    /// HTTP/1.1 requests that reused a pooled connection.
    pub connections_reused_total: u64,
}

/// Everything an endpoint's connections are made with: the one value that both builds
/// an endpoint and decides whether a reload may reuse it (pools, counters, health and
/// ejection state survive only while it is equal). A cluster's circuit-breaker
/// limits and TLS client are shared by its endpoints, so they are part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSpec {
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    /// Largest response head; hyper refuses a larger (or endless) one, which fails
    /// that one request with 502.
    pub max_response_header_bytes: u32,
    pub max_response_headers: u32,
    pub circuit_breaker: Option<octopus_config::CircuitBreakerConfig>,
    pub tls: Option<octopus_config::ClusterTlsConfig>,
    pub pool: PoolSettings,
}

impl ConnectionSpec {
    /// Plain connections with the schema's defaults but for protocol and timeout.
    pub fn new(protocol: Protocol, connect_timeout: Duration) -> Self {
        ConnectionSpec {
            protocol,
            connect_timeout,
            max_response_header_bytes: octopus_config::DEFAULT_MAX_HEADER_BYTES,
            max_response_headers: octopus_config::DEFAULT_MAX_HEADERS,
            circuit_breaker: None,
            tls: None,
            pool: PoolSettings::default(),
        }
    }

    pub fn of(spec: &octopus_config::ClusterConfig) -> Self {
        ConnectionSpec {
            protocol: spec.protocol,
            connect_timeout: spec.connect_timeout.get(),
            max_response_header_bytes: spec.max_response_header_bytes,
            max_response_headers: spec.max_response_headers,
            circuit_breaker: spec.circuit_breaker.clone(),
            tls: spec.tls.clone(),
            pool: PoolSettings::of(&spec.pool),
        }
    }
}

impl Endpoint {
    pub fn new(
        cluster: Arc<str>,
        addr: SocketAddr,
        settings: &ConnectionSpec,
        limits: Option<Arc<Circuit>>,
        tls: Option<Arc<ClientTls>>,
        descriptors: Option<Arc<crate::descriptors::Group>>,
        counters: Option<PoolCounters>,
    ) -> Arc<Self> {
        let protocol = settings.protocol;
        let pool = Pool::new(
            Connector::new(
                addr,
                settings.connect_timeout,
                limits,
                tls,
                descriptors,
                counters.as_ref().map(|c| c.bytes.clone()),
            ),
            protocol == Protocol::Http2,
            settings.max_response_header_bytes,
            settings.max_response_headers,
            settings.pool,
            counters,
        );
        let authority = addr
            .to_string()
            .parse()
            .unwrap_or_else(|_| http::uri::Authority::from_static("localhost"));
        Arc::new(Endpoint {
            addr,
            authority,
            cluster,
            protocol,
            pool,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            check_streak: Mutex::new((0, 0)),
            ejection: Ejection::default(),
            on_availability: Mutex::new(None),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Requests sent and not yet finished (response body included): the load measure
    /// of least-connections; for HTTP/2 it counts streams, not connections.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Holds one fake in-flight request until the guard is dropped.
    #[cfg(test)]
    pub(crate) fn test_hold(self: &Arc<Self>) -> Held {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Held::new(self.clone())
    }

    /// Counts a request sent to this endpoint, in flight until the result is dropped
    /// (the response body holds it).
    pub(crate) fn start_request(self: &Arc<Self>) -> Held {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Held::new(self.clone())
    }

    /// Opens one connection of this endpoint's kind (descriptor share, cluster
    /// connection limit, connect timeout, TLS) outside the HTTP pool: an opaque TCP
    /// connection owns it for its whole life. Counted as in flight until `Held` drops,
    /// so least-connections balances TCP connections too.
    pub(crate) async fn dial(self: &Arc<Self>) -> Result<(Conn, Held), ConnectError> {
        let conn = self.pool.connector().connect().await?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok((conn, Held::new(self.clone())))
    }

    /// Counts an opaque connection carried through this endpoint, for `/clusters`.
    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an upstream failure (see [`upstream_verdict`]) for `/clusters`.
    pub(crate) fn count_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Who to tell when this endpoint's availability changes; replaces the previous
    /// listener (a reload's new cluster takes over a reused endpoint).
    pub fn set_availability_hook(&self, hook: AvailabilityHook) {
        *self
            .on_availability
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Tells the hook that this endpoint's availability changed.
    pub(crate) fn availability_changed(&self) {
        let hook = self
            .on_availability
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(h) = hook {
            h();
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.ejection.is_open()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records one health-check result; returns the new health when it changed.
    pub(crate) fn record_check(
        &self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        let mut streak = self.check_streak.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            *streak = (streak.0.saturating_add(1), 0);
        } else {
            *streak = (0, streak.1.saturating_add(1));
        }
        let healthy = self.is_healthy();
        let flip = if healthy {
            !ok && streak.1 >= unhealthy_threshold
        } else {
            ok && streak.0 >= healthy_threshold
        };
        if flip {
            self.healthy.store(!healthy, Ordering::Relaxed);
            Some(!healthy)
        } else {
            None
        }
    }

    /// Forgets health-check state (the cluster no longer checks this endpoint).
    pub(crate) fn reset_health(&self) {
        *self.check_streak.lock().unwrap_or_else(|p| p.into_inner()) = (0, 0);
        self.healthy.store(true, Ordering::Relaxed);
    }

    /// Open connections now, for metrics.
    pub fn connections(&self) -> PoolStats {
        self.pool.stats()
    }

    /// One active health check: GET `path` on this endpoint, healthy on a 2xx within
    /// `timeout`. Uses the endpoint's own pool, so it also proves a live connection.
    pub(crate) async fn probe(&self, path: &str, timeout: Duration) -> bool {
        let Ok(mut req) = Request::get(path).body(body::empty()) else {
            return false;
        };
        req.headers_mut().insert(
            header::USER_AGENT,
            http::HeaderValue::from_static("octopus-health-check"),
        );
        if self.prepare(&mut req).is_err() {
            return false;
        }
        match tokio::time::timeout(timeout, self.pool.send(req)).await {
            Ok(Ok(resp)) => {
                let ok = resp.status().is_success();
                // Read the body so the connection can go back to the pool.
                let _ = tokio::time::timeout(
                    timeout,
                    http_body_util::BodyExt::collect(resp.into_body()),
                )
                .await;
                ok
            }
            _ => false,
        }
    }

    pub fn stats(&self) -> EndpointStats {
        let conns = self.pool.stats();
        EndpointStats {
            connections_open: conns.open,
            connections_idle: conns.idle,
            connections_reused_total: self.pool.reused(),
            address: self.addr.to_string(),
            healthy: self.is_healthy(),
            outlier: self.ejection.name(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            requests_total: self.requests.load(Ordering::Relaxed),
            failures_total: self.failures.load(Ordering::Relaxed),
        }
    }

    /// Puts the request in the shape its upstream connection needs. HTTP/1.1: the
    /// origin-form target (`/path?query`) and a `Host` header. HTTP/2: the absolute
    /// URI (its authority travels as `:authority`) and no `Host`. The handler has set
    /// `Host` to the authority it routed on, so a request from an HTTP/1.1 client to
    /// an HTTP/1.1 cluster, the common case, is sent as it is.
    fn prepare(&self, req: &mut Request<Body>) -> Result<(), ProxyError> {
        match self.protocol {
            // A TCP cluster's endpoints never see a request (the config refuses HTTP
            // routes to them); HTTP/1.1 is the harmless answer if one did.
            Protocol::Http1 | Protocol::Tcp => {
                *req.version_mut() = Version::HTTP_11;
                let uri = req.uri();
                if uri.scheme().is_some() || uri.authority().is_some() {
                    let authority = uri.authority().cloned();
                    let pq = uri
                        .path_and_query()
                        .cloned()
                        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
                    *req.uri_mut() = Uri::from(pq);
                    if !req.headers().contains_key(header::HOST) {
                        let host = authority.unwrap_or_else(|| self.authority.clone());
                        req.headers_mut().insert(header::HOST, host_value(&host)?);
                    }
                } else if !req.headers().contains_key(header::HOST) {
                    req.headers_mut()
                        .insert(header::HOST, host_value(&self.authority)?);
                }
            }
            Protocol::Http2 => {
                *req.version_mut() = Version::HTTP_2;
                let uri = req.uri();
                if uri.scheme() != Some(&http::uri::Scheme::HTTP) || uri.authority().is_none() {
                    let authority = match uri.authority() {
                        Some(a) => a.clone(),
                        None => match req.headers().get(header::HOST) {
                            Some(h) => http::uri::Authority::try_from(h.as_bytes())
                                .map_err(|_| ProxyError::BadRequest("invalid Host header"))?,
                            None => self.authority.clone(),
                        },
                    };
                    let pq = uri
                        .path_and_query()
                        .cloned()
                        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
                    let mut parts = http::uri::Parts::default();
                    parts.scheme = Some(http::uri::Scheme::HTTP);
                    parts.authority = Some(authority);
                    parts.path_and_query = Some(pq);
                    *req.uri_mut() = Uri::from_parts(parts)
                        .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
                }
                // The authority travels as `:authority`; a Host header would duplicate it.
                req.headers_mut().remove(header::HOST);
            }
        }
        Ok(())
    }
}

fn host_value(a: &http::uri::Authority) -> Result<http::HeaderValue, ProxyError> {
    http::HeaderValue::from_str(a.as_str())
        .map_err(|_| ProxyError::BadRequest("invalid request authority"))
}

/// What a request's in-flight unit gives back, however it ends (success, error,
/// drop): see [`Endpoint::start_request`].
impl Release for Endpoint {
    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether an exchange with an endpoint speaks for or against it: `Some(true)` for a
/// usable answer, `Some(false)` for an upstream failure (a 5xx, or an error that is
/// the upstream's fault), `None` when it says nothing about the endpoint (octopus'
/// own limits, or the client's body failed). Failure counters and outlier detection
/// both judge by this one rule.
pub fn upstream_verdict<B>(
    result: &Result<Response<B>, ProxyError>,
    client_body: Option<&ClientBodyWatch>,
) -> Option<bool> {
    if client_body.and_then(ClientBodyWatch::fault).is_some() {
        return None;
    }
    match result {
        Ok(resp) => Some(!resp.status().is_server_error()),
        Err(e) if e.fault() == Fault::Upstream => Some(false),
        Err(_) => None,
    }
}

/// The innermost service of the outbound stack: sends a request to one endpoint
/// through its pool and types what went wrong. Accounting (`in_flight`) and
/// outlier detection are layers around it (see `stack::endpoint`).
#[derive(Clone)]
pub struct EndpointService {
    pub endpoint: Arc<Endpoint>,
}

impl EndpointService {
    pub fn new(endpoint: Arc<Endpoint>) -> Self {
        EndpointService { endpoint }
    }
}

impl tower::Service<Request<Body>> for EndpointService {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let ep = self.endpoint.clone();
        Box::pin(async move {
            ep.prepare(&mut req)?;
            // Set by the client's body when it fails: then the exchange failed
            // because of the client, whatever the upstream client reports.
            let client_body = req.extensions().get::<ClientBodyWatch>().cloned();
            // Only requests being logged carry an exchange record, and only recorded
            // traces a client span per try.
            let exchange = req.extensions().get::<Exchange>().cloned();
            let tries = req.extensions().get::<crate::trace::Tries>().cloned();
            let try_span = tries.map(|t| t.begin(&mut req, &ep.cluster, ep.addr));
            let sent = exchange.as_ref().map(|x| {
                x.try_sent(ep.addr);
                std::time::Instant::now()
            });
            let result = ep.pool.send(req).await;
            if let (Some(x), Some(sent)) = (&exchange, sent) {
                x.answered(sent.elapsed());
            }
            let client_fault = client_body.as_ref().and_then(ClientBodyWatch::fault);
            let result = match (result, client_fault) {
                (Err(e), Some(fault)) => {
                    tracing::debug!(cluster = %ep.cluster, endpoint = %ep.addr, ?fault, error = %error_chain(&e), "request failed on the client's body; not the endpoint's fault");
                    Err(ProxyError::ClientBody {
                        fault,
                        source: Some(Box::new(e)),
                    })
                }
                (Err(e), None) => Err(ep.classify(e)),
                (Ok(resp), _) if headers::has_foreign_transfer_coding(resp.headers()) => {
                    tracing::warn!(cluster = %ep.cluster, endpoint = %ep.addr, "refused an upstream response with a transfer coding other than chunked");
                    Err(ProxyError::BadResponse {
                        cluster: ep.cluster.clone(),
                        reason: "transfer coding other than chunked",
                    })
                }
                (Ok(resp), _) => Ok(resp),
            };
            if let Some(span) = try_span {
                span.end(result.as_ref().map(|r| r.status().as_u16()));
            }
            result.map(|resp| {
                let mut resp = resp.map(Body::new);
                resp.body_mut().set_served_by(ep.cluster.clone());
                resp
            })
        })
    }
}

impl Endpoint {
    /// The typed error for a failed exchange with this endpoint.
    fn classify(&self, e: PoolError) -> ProxyError {
        let (cluster, endpoint) = (self.cluster.clone(), self.addr);
        match e {
            PoolError::Connect(e) => match &*e {
                ConnectError::MaxConnections => ProxyError::CircuitOpen {
                    cluster,
                    limit: "max_connections",
                },
                ConnectError::Descriptors(side) => {
                    tracing::warn!(%cluster, side, "file-descriptor budget spent; request shed");
                    ProxyError::CircuitOpen {
                        cluster,
                        limit: "descriptors",
                    }
                }
                ConnectError::IdentityMismatch { source, .. } => {
                    tracing::warn!(%cluster, %endpoint, error = %source, "upstream identity mismatch");
                    ProxyError::IdentityMismatch { cluster, endpoint }
                }
                _ => {
                    tracing::debug!(%cluster, %endpoint, error = %error_chain(&*e), "connect failed");
                    ProxyError::ConnectFailed {
                        cluster,
                        endpoint,
                        source: Box::new(e),
                    }
                }
            },
            PoolError::Request(e) => {
                if let Some(reason) = unparsable_response(&e) {
                    tracing::warn!(%cluster, %endpoint, reason, "refused an upstream response");
                    return ProxyError::BadResponse { cluster, reason };
                }
                tracing::debug!(%cluster, %endpoint, error = %error_chain(&e), "upstream request failed");
                ProxyError::UpstreamReset {
                    cluster,
                    endpoint,
                    source: Box::new(e),
                }
            }
        }
    }
}

/// Why hyper refused the upstream's response head, if it did: an operator should
/// see "too large" or "malformed", not a reset.
fn unparsable_response(e: &hyper::Error) -> Option<&'static str> {
    if e.is_parse_too_large() {
        Some("response head too large")
    } else if e.is_parse() {
        Some("malformed response head")
    } else {
        None
    }
}

/// `outer: inner: innermost`, for logs: client errors hide the useful part in sources.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
