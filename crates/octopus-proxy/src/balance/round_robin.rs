use crate::body::Body;
use crate::endpoint::EndpointService;
use crate::error::ProxyError;
use http::{Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

/// Strict rotation over the endpoints: one shared atomic counter, no lock.
#[derive(Clone)]
pub struct RoundRobin {
    cluster: Arc<str>,
    endpoints: Arc<[EndpointService]>,
    next: Arc<AtomicUsize>,
}

impl RoundRobin {
    pub fn new(cluster: Arc<str>, endpoints: Vec<EndpointService>) -> Self {
        RoundRobin {
            cluster,
            endpoints: endpoints.into(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn pick(&self) -> Option<EndpointService> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
        Some(self.endpoints[i].clone())
    }
}

impl Service<Request<Body>> for RoundRobin {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match self.pick() {
            Some(mut ep) => ep.call(req),
            None => {
                let cluster = self.cluster.clone();
                Box::pin(async move { Err(ProxyError::NoHealthyEndpoint { cluster }) })
            }
        }
    }
}
