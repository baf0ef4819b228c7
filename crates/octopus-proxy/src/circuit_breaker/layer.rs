use super::{Circuit, RequestSlot};
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
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match self.layer.limits.admit() {
            Ok(slot) => ResponseFuture::Admitted {
                inner: self.inner.call(req),
                slot: Some(slot),
            },
            Err(limit) => {
                self.layer
                    .overflow
                    .with_label_values(&[&self.layer.cluster, limit])
                    .inc();
                ResponseFuture::Open {
                    error: Some(ProxyError::CircuitOpen {
                        cluster: self.layer.cluster.clone(),
                        limit,
                    }),
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The admitted request's future holding its slot, or the refusal.
    #[project = Projected]
    pub enum ResponseFuture<F> {
        Admitted { #[pin] inner: F, slot: Option<RequestSlot> },
        Open { error: Option<ProxyError> },
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Admitted { inner, slot } => {
                let resp = std::task::ready!(inner.poll(cx))?;
                // The slot is held until the response body is done.
                Poll::Ready(Ok(match slot.take() {
                    Some(s) => resp.map(|b| b.hold(s)),
                    None => resp,
                }))
            }
            Projected::Open { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or(ProxyError::Internal("circuit breaker future polled again")))),
        }
    }
}
