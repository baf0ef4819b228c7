use super::Bucket;
use crate::body::Body;
use crate::error::ProxyError;
use futures_util::future::{ready, Either, Ready};
use http::{Request, Response};
use prometheus::IntCounter;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Admits a route's requests through its [`Bucket`].
#[derive(Clone)]
pub struct RateLimitLayer {
    bucket: Arc<Bucket>,
    limited: IntCounter,
}

impl RateLimitLayer {
    /// `limited` is the route's `octopus_rate_limited_total{route}`.
    pub fn new(bucket: Arc<Bucket>, limited: IntCounter) -> Self {
        RateLimitLayer { bucket, limited }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            bucket: self.bucket.clone(),
            limited: self.limited.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    bucket: Arc<Bucket>,
    limited: IntCounter,
}

pub type ResponseFuture<F> = Either<F, Ready<Result<Response<Body>, ProxyError>>>;

impl<S> Service<Request<Body>> for RateLimit<S>
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
        match self.bucket.try_take() {
            Ok(()) => Either::Left(self.inner.call(req)),
            Err(retry_after) => {
                self.limited.inc();
                Either::Right(ready(Err(ProxyError::RateLimited { retry_after })))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn over_the_limit_is_429_with_retry_after_and_counted() {
        let bucket = Bucket::new(octopus_config::RateLimitConfig {
            requests_per_second: 1.0,
            burst: Some(2),
        });
        let counter = IntCounter::new("t", "t").unwrap();
        let ok = tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, ProxyError>(Response::new(crate::body::empty()))
        });
        let svc = RateLimitLayer::new(bucket, counter.clone()).layer(ok);
        for _ in 0..2 {
            let r = svc
                .clone()
                .oneshot(Request::new(crate::body::empty()))
                .await;
            assert!(r.is_ok());
        }
        let e = svc
            .oneshot(Request::new(crate::body::empty()))
            .await
            .unwrap_err();
        let resp = e.into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["x-octopus-error"], "rate_limited");
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(counter.get(), 1);
    }
}
