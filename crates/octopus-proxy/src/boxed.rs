//! The type-erased service at each stack level's boundary (a route's stack, a
//! cluster's stack).
//!
//! Shared rather than cloned: tower's `BoxCloneSyncService` allocates a new box on
//! every clone, and a request clones one per level it enters (the handler takes the
//! route's stack out of the shared snapshot, split and retry take a cluster's). Here a
//! clone is a reference count, and a call clones the concrete stack inside (its
//! layers hold `Arc`s and metric handles, so that allocates nothing) and boxes its
//! future: one allocation per level, as before, instead of two.
//!
//! Calling the inner stack without `poll_ready` first is sound because every service
//! in octopus' stack is always ready: limits (rate limit, circuit breaker, descriptor
//! shares) shed in `call` instead of applying backpressure.

use crate::body::Body;
use crate::error::ProxyError;
use http::{Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

pub type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

/// What a stack level must be to sit behind a [`BoxService`].
pub trait Stack:
    Service<Request<Body>, Response = Response<Body>, Error = ProxyError, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Stack for S where
    S: Service<
            Request<Body>,
            Response = Response<Body>,
            Error = ProxyError,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

trait Call: Send + Sync {
    fn call(&self, req: Request<Body>) -> BoxFuture;
}

struct Erased<S>(S);

impl<S: Stack> Call for Erased<S> {
    fn call(&self, req: Request<Body>) -> BoxFuture {
        Box::pin(self.0.clone().call(req))
    }
}

#[derive(Clone)]
pub struct BoxService(Arc<dyn Call>);

impl BoxService {
    pub fn new<S: Stack>(service: S) -> Self {
        BoxService(Arc::new(Erased(service)))
    }

    /// Calls the stack through a shared reference: no clone of this handle needed.
    pub fn call_shared(&self, req: Request<Body>) -> BoxFuture {
        self.0.call(req)
    }
}

impl Service<Request<Body>> for BoxService {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> BoxFuture {
        self.0.call(req)
    }
}
