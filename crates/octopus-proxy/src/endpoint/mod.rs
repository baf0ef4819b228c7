//! One upstream endpoint: its pooled client (keep-alive; HTTP/2 multiplexed when the
//! cluster speaks it) and its live counters. Endpoint state is shared by every routing
//! table that names the same cluster, so it outlives config reloads.

mod connector;

pub use connector::{ConnectError, Connector};

use crate::body::{self, Body, BoxError};
use crate::error::{ProxyError, ServedBy};
use http::{header, Request, Response, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use octopus_config::Protocol;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Idle pooled connections are closed after this long; shorter than common upstream
/// keep-alive timeouts so octopus, not the upstream, closes first.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Endpoint {
    addr: SocketAddr,
    authority: http::uri::Authority,
    cluster: Arc<str>,
    protocol: Protocol,
    client: Client<Connector, Body>,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
}

/// Live figures of one endpoint, for `/clusters`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointStats {
    pub address: String,
    pub in_flight: usize,
    pub requests_total: u64,
    pub failures_total: u64,
}

impl Endpoint {
    pub fn new(
        cluster: Arc<str>,
        addr: SocketAddr,
        protocol: Protocol,
        connect_timeout: Duration,
    ) -> Arc<Self> {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        if protocol == Protocol::Http2 {
            builder.http2_only(true);
        }
        let client = builder.build(Connector::new(addr, connect_timeout));
        let authority = addr
            .to_string()
            .parse()
            .unwrap_or_else(|_| http::uri::Authority::from_static("localhost"));
        Arc::new(Endpoint {
            addr,
            authority,
            cluster,
            protocol,
            client,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> EndpointStats {
        EndpointStats {
            address: self.addr.to_string(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            requests_total: self.requests.load(Ordering::Relaxed),
            failures_total: self.failures.load(Ordering::Relaxed),
        }
    }

    /// Puts the request in the shape the upstream client needs: absolute URI (the
    /// original authority, else this endpoint's address), the cluster's HTTP version.
    fn prepare(&self, req: &mut Request<Body>) -> Result<(), ProxyError> {
        // The listener already made the URI absolute when the client named a host, so
        // the common case rebuilds nothing.
        let uri = req.uri();
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) || uri.authority().is_none() {
            let authority = uri
                .authority()
                .cloned()
                .unwrap_or_else(|| self.authority.clone());
            let pq = uri.path_and_query().map_or("/", |p| p.as_str());
            *req.uri_mut() = Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(pq)
                .build()
                .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
        }
        match self.protocol {
            Protocol::Http1 => *req.version_mut() = Version::HTTP_11,
            Protocol::Http2 => {
                *req.version_mut() = Version::HTTP_2;
                // The authority travels as `:authority`; a Host header would duplicate it.
                req.headers_mut().remove(header::HOST);
            }
        }
        Ok(())
    }
}

/// Decrements the in-flight count however the request ends (success, error, drop).
struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The innermost service of the outbound stack: sends a request to one endpoint.
#[derive(Clone)]
pub struct EndpointService(pub Arc<Endpoint>);

impl tower::Service<Request<Body>> for EndpointService {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let ep = self.0.clone();
        Box::pin(async move {
            ep.prepare(&mut req)?;
            ep.requests.fetch_add(1, Ordering::Relaxed);
            ep.in_flight.fetch_add(1, Ordering::Relaxed);
            let _guard = InFlight(ep.clone());
            match ep.client.request(req).await {
                Ok(resp) => {
                    let mut resp = resp.map(body::boxed);
                    if resp.status().is_server_error() {
                        ep.failures.fetch_add(1, Ordering::Relaxed);
                    }
                    resp.extensions_mut().insert(ServedBy(ep.cluster.clone()));
                    Ok(resp)
                }
                Err(e) => {
                    ep.failures.fetch_add(1, Ordering::Relaxed);
                    let (cluster, endpoint) = (ep.cluster.clone(), ep.addr);
                    let connect = e.is_connect();
                    let source: BoxError = Box::new(e);
                    tracing::debug!(%cluster, %endpoint, error = %error_chain(&*source), "upstream request failed");
                    Err(if connect {
                        ProxyError::ConnectFailed {
                            cluster,
                            endpoint,
                            source,
                        }
                    } else {
                        ProxyError::UpstreamReset {
                            cluster,
                            endpoint,
                            source,
                        }
                    })
                }
            }
        })
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
