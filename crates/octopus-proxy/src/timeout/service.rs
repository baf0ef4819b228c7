use super::ResponseFuture;
use crate::error::ProxyError;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::Service;

#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Timeout<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        Timeout { inner, timeout }
    }
}

impl<S, Req> Service<Req> for Timeout<S>
where
    S: Service<Req, Error = ProxyError>,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture::new(self.inner.call(req), tokio::time::sleep(self.timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test(start_paused = true)]
    async fn fires_after_deadline_only() {
        let slow = tower::service_fn(|d: u64| async move {
            tokio::time::sleep(Duration::from_millis(d)).await;
            Ok::<_, ProxyError>(d)
        });
        let svc = Timeout::new(slow, Duration::from_millis(100));
        assert_eq!(svc.clone().oneshot(50).await.unwrap(), 50);
        assert!(matches!(
            svc.oneshot(150).await,
            Err(ProxyError::Timeout { .. })
        ));
    }
}
