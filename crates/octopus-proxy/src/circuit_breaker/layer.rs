use super::Circuit;
use crate::body::Body;
use crate::error::ProxyError;
use http::{Request, Response};
use prometheus::IntCounterVec;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone)]
pub struct CircuitBreakerLayer {
    cluster: Arc<str>,
    limits: Arc<Circuit>,
    overflow: IntCounterVec,
}

impl CircuitBreakerLayer {
    /// `overflow` is `octopus_circuit_overflow_total{cluster, limit}`.
    pub fn new(cluster: Arc<str>, limits: Arc<Circuit>, overflow: IntCounterVec) -> Self {
        CircuitBreakerLayer {
            cluster,
            limits,
            overflow,
        }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;
    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    layer: CircuitBreakerLayer,
}

impl<S> Service<Request<Body>> for CircuitBreaker<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let slot = match self.layer.limits.admit() {
            Ok(slot) => slot,
            Err(limit) => {
                self.layer
                    .overflow
                    .with_label_values(&[&self.layer.cluster, limit])
                    .inc();
                let cluster = self.layer.cluster.clone();
                return Box::pin(async move { Err(ProxyError::CircuitOpen { cluster, limit }) });
            }
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            // The slot is held until the response body is done.
            Ok(resp.map(|b| Body::new(crate::body::Guarded::new(b, slot))))
        })
    }
}
