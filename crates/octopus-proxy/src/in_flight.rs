//! Per-endpoint load accounting, as a layer around the endpoint's service: requests
//! sent, requests in flight (until the response body is done: least-connections'
//! load measure), and upstream failures for `/clusters`, judged by the same rule as
//! outlier detection (`endpoint::upstream_verdict`).

use crate::body::{Body, ClientBodyWatch};
use crate::endpoint::{upstream_verdict, Endpoint};
use crate::error::ProxyError;
use crate::held::Held;
use http::{Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone)]
pub struct InFlightLayer {
    endpoint: Arc<Endpoint>,
}

impl InFlightLayer {
    pub fn new(endpoint: Arc<Endpoint>) -> Self {
        InFlightLayer { endpoint }
    }
}

impl<S> Layer<S> for InFlightLayer {
    type Service = InFlight<S>;
    fn layer(&self, inner: S) -> InFlight<S> {
        InFlight {
            inner,
            endpoint: self.endpoint.clone(),
        }
    }
}

#[derive(Clone)]
pub struct InFlight<S> {
    inner: S,
    endpoint: Arc<Endpoint>,
}

impl<S> Service<Request<Body>> for InFlight<S>
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
        let watch = req.extensions().get::<ClientBodyWatch>().cloned();
        ResponseFuture {
            held: Some(self.endpoint.start_request()),
            endpoint: self.endpoint.clone(),
            inner: self.inner.call(req),
            watch,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        held: Option<Held>,
        endpoint: Arc<Endpoint>,
        watch: Option<ClientBodyWatch>,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let Some(held) = this.held.take() else {
            return Poll::Ready(result);
        };
        if upstream_verdict(&result, this.watch.as_ref()) == Some(false) {
            this.endpoint.count_failure();
        }
        // The request stays in flight until its response body is done; an error
        // drops the unit here.
        Poll::Ready(result.map(|resp| resp.map(|b| b.hold(held))))
    }
}
