//! Retries, above the traffic split and the balancer, so each try may land on another
//! cluster side and another endpoint (the balancer skips endpoints already tried).
//!
//! A try is retried when it failed in a way `retry_on` names, more tries are allowed,
//! the method is idempotent (or the route allows others), the request body could be
//! kept for replay, and the retry budget has room. Between tries: exponential backoff
//! with full jitter. The route timeout sits above this layer and bounds all tries.

mod budget;
mod replay;

pub use budget::Budget;

use crate::balance::Attempted;
use crate::body::{self, Body};
use crate::error::ProxyError;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use octopus_config::{RetryConfig, RetryOn};
use prometheus::IntCounterVec;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

pub const ATTEMPTS_HEADER: &str = "x-octopus-attempts";

#[derive(Clone)]
pub struct RetryLayer {
    policy: Arc<RetryConfig>,
    budget: Arc<Budget>,
    retries: IntCounterVec,
    exhausted: IntCounterVec,
}

impl RetryLayer {
    /// `retries` / `exhausted` are `octopus_upstream_retries_total{cluster}` and
    /// `octopus_retry_budget_exhausted_total{cluster}`.
    pub fn new(policy: RetryConfig, retries: IntCounterVec, exhausted: IntCounterVec) -> Self {
        let budget = Arc::new(Budget::new(
            policy.budget.ratio,
            policy.budget.min_per_second,
        ));
        RetryLayer {
            policy: Arc::new(policy),
            budget,
            retries,
            exhausted,
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    layer: RetryLayer,
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// What one try's outcome means for the next.
enum Verdict {
    Done,
    Retry,
}

fn judge(
    policy: &RetryConfig,
    result: &Result<Response<Body>, ProxyError>,
    per_try_expired: bool,
) -> Verdict {
    let wants = |r: RetryOn| policy.retry_on.contains(&r);
    let retry = match result {
        Ok(resp) => policy
            .retry_on
            .iter()
            .any(|r| r.matches_status(resp.status().as_u16())),
        // A per-try timeout exists to move on to another endpoint: always retried.
        Err(ProxyError::Timeout { .. }) => per_try_expired,
        Err(ProxyError::ConnectFailed { .. }) => wants(RetryOn::ConnectFailure),
        Err(ProxyError::UpstreamReset { .. }) => wants(RetryOn::Reset),
        // The endpoint's answer was unusable (malformed, oversized head): octopus
        // would answer 502 for it, so it counts as a gateway error.
        Err(ProxyError::BadResponse { .. }) => wants(RetryOn::GatewayError),
        Err(_) => false,
    };
    if retry {
        Verdict::Retry
    } else {
        Verdict::Done
    }
}

fn cluster_of(result: &Result<Response<Body>, ProxyError>) -> Arc<str> {
    let c = match result {
        Ok(resp) => resp.body().served_by().cloned(),
        Err(e) => e.cluster().cloned(),
    };
    c.unwrap_or_else(|| crate::error::NONE_LABEL.into())
}

/// Full jitter: a uniform wait in `[0, min(max, base * 2^(n-1))]` before retry `n`.
fn backoff(policy: &RetryConfig, retry: u32) -> Duration {
    let base = policy.backoff.base.get();
    let cap = base
        .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
        .min(policy.backoff.max.get());
    cap.mul_f64(fastrand::f64())
}

impl<S> Service<Request<Body>> for Retry<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let layer = self.layer.clone();
        let inner = self.inner.clone();
        layer.budget.deposit();
        Box::pin(async move {
            let policy = &*layer.policy;
            let may_retry =
                policy.attempts > 1 && (policy.non_idempotent || idempotent(req.method()));
            let (parts, body) = req.into_parts();
            let replay = if may_retry {
                replay::buffer(body, policy.max_replay_bytes as usize).await?
            } else {
                replay::Replay::Stream(body)
            };
            let (bytes, mut once) = match replay {
                replay::Replay::Buffered(b) => (b, None),
                // Too large (or not retryable): one try, body streamed.
                replay::Replay::Stream(b) => (Bytes::new(), Some(b)),
            };
            let attempts = if once.is_some() { 1 } else { policy.attempts };
            // Only a request that may be tried again needs the tried-endpoint set.
            let attempted = (attempts > 1).then(Attempted::default);
            let mut parts = Some(parts);
            let mut n = 1;
            loop {
                let body = once.take().unwrap_or_else(|| body::full(bytes.clone()));
                // The last try takes the client's head; earlier ones copy it.
                let mut req = match (n == attempts, parts.take()) {
                    (true, Some(p)) => Request::from_parts(p, body),
                    (_, Some(p)) => {
                        let mut req = Request::new(body);
                        *req.method_mut() = p.method.clone();
                        *req.uri_mut() = p.uri.clone();
                        *req.version_mut() = p.version;
                        *req.headers_mut() = p.headers.clone();
                        // Layers below see what the client's request carried (the body
                        // watch among them), on every try.
                        *req.extensions_mut() = p.extensions.clone();
                        parts = Some(p);
                        req
                    }
                    (_, None) => {
                        return Err(ProxyError::Internal("retry ran out of request heads"))
                    }
                };
                if let Some(a) = &attempted {
                    req.extensions_mut().insert(a.clone());
                }
                let call = inner.clone().oneshot(req);
                let (result, expired) = match policy.per_try_timeout {
                    Some(t) => match tokio::time::timeout(t.get(), call).await {
                        Ok(r) => (r, false),
                        Err(_) => (Err(ProxyError::Timeout { cluster: None }), true),
                    },
                    None => (call.await, false),
                };
                let retry =
                    n < attempts && matches!(judge(policy, &result, expired), Verdict::Retry);
                if retry {
                    let cluster = cluster_of(&result);
                    if layer.budget.try_withdraw() {
                        layer.retries.with_label_values(&[&cluster]).inc();
                        drop(result);
                        tokio::time::sleep(backoff(policy, n)).await;
                        n += 1;
                        continue;
                    }
                    layer.exhausted.with_label_values(&[&cluster]).inc();
                    tracing::debug!(%cluster, "retry budget exhausted; returning the failure");
                }
                return result.map(|mut resp| {
                    if n > 1 && policy.attempts_header {
                        resp.headers_mut()
                            .insert(ATTEMPTS_HEADER, HeaderValue::from(n));
                    }
                    resp
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy(yaml: &str) -> RetryConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn layer(p: RetryConfig) -> RetryLayer {
        let c = |n: &str| IntCounterVec::new(prometheus::Opts::new(n, n), &["cluster"]).unwrap();
        RetryLayer::new(p, c("retries"), c("exhausted"))
    }

    /// An upstream that answers `status` for the first `failures` tries, then 200.
    fn flaky(
        failures: u32,
        status: u16,
    ) -> (
        impl Service<
                Request<Body>,
                Response = Response<Body>,
                Error = ProxyError,
                Future = impl Send,
            > + Clone
            + Send
            + 'static,
        Arc<AtomicU32>,
    ) {
        let tries = Arc::new(AtomicU32::new(0));
        let t = tries.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            let n = t.fetch_add(1, Ordering::SeqCst);
            async move {
                use http_body_util::BodyExt;
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let mut resp = Response::new(body::full(body));
                if n < failures {
                    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                }
                Ok::<_, ProxyError>(resp)
            }
        });
        (svc, tries)
    }

    #[tokio::test(start_paused = true)]
    async fn retries_gateway_errors_and_replays_the_body() {
        let (svc, tries) = flaky(2, 503);
        let retry = layer(policy(
            "attempts: 3\nretry_on: [gateway-error]\nnon_idempotent: true\n",
        ))
        .layer(svc);
        let req = Request::post("/").body(body::full("payload")).unwrap();
        let resp = retry.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[ATTEMPTS_HEADER], "3");
        use http_body_util::BodyExt;
        assert_eq!(
            resp.into_body().collect().await.unwrap().to_bytes(),
            "payload"
        );
        assert_eq!(tries.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn post_is_not_retried_by_default_and_status_must_be_listed() {
        let (svc, tries) = flaky(1, 503);
        let retry = layer(policy("attempts: 3\nretry_on: [gateway-error]\n")).layer(svc);
        let resp = retry
            .oneshot(Request::post("/").body(body::full("x")).unwrap())
            .await
            .unwrap();
        assert_eq!(
            (resp.status().as_u16(), tries.load(Ordering::SeqCst)),
            (503, 1)
        );

        let (svc, tries) = flaky(1, 500);
        let retry = layer(policy("attempts: 3\nretry_on: [gateway-error]\n")).layer(svc);
        let resp = retry
            .oneshot(Request::get("/").body(body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            (resp.status().as_u16(), tries.load(Ordering::SeqCst)),
            (500, 1),
            "500 is not a gateway error"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_with_full_jitter_and_stays_under_max() {
        let p = policy("attempts: 5\nbackoff: { base: 25ms, max: 100ms }\n");
        for n in 1..=6 {
            let cap = Duration::from_millis((25u64 << (n - 1)).min(100));
            for _ in 0..50 {
                assert!(backoff(&p, n) <= cap);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn per_try_timeout_moves_on() {
        let tries = Arc::new(AtomicU32::new(0));
        let t = tries.clone();
        let svc = tower::service_fn(move |_req: Request<Body>| {
            let first = t.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Ok::<_, ProxyError>(Response::new(body::empty()))
            }
        });
        let retry = layer(policy("attempts: 2\nper_try_timeout: 100ms\n")).layer(svc);
        let started = tokio::time::Instant::now();
        let resp = retry
            .oneshot(Request::get("/").body(body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(started.elapsed() < Duration::from_millis(100 + 250 + 1));
    }
}
