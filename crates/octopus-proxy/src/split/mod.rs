//! Traffic split (canary): each request picks one cluster with probability
//! proportional to its weight. Weighted random rather than a rotation, so concurrent
//! requests need no shared state at all; over many requests the shares converge.

use crate::body::Body;
use crate::error::ProxyError;
use crate::BoxService;
use http::{Request, Response};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

#[derive(Clone)]
pub struct Split {
    /// (cumulative weight upper bound, cluster service); zero-weight targets omitted.
    targets: Arc<[(u64, BoxService)]>,
    total: u64,
}

impl Split {
    /// `targets` must contain at least one positive weight (validation guarantees it).
    pub fn new(targets: Vec<(u32, BoxService)>) -> Self {
        let mut total = 0u64;
        let targets: Vec<(u64, BoxService)> = targets
            .into_iter()
            .filter(|(w, _)| *w > 0)
            .map(|(w, s)| {
                total += u64::from(w);
                (total, s)
            })
            .collect();
        Split {
            targets: targets.into(),
            total,
        }
    }

    fn pick(&self, r: u64) -> Option<&BoxService> {
        self.targets
            .iter()
            .find(|(upper, _)| r < *upper)
            .map(|(_, s)| s)
    }
}

impl Service<Request<Body>> for Split {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = <BoxService as Service<Request<Body>>>::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let r = if self.total == 0 {
            0
        } else {
            fastrand::u64(0..self.total)
        };
        match self.pick(r) {
            Some(svc) => svc.clone().call(req),
            None => Box::pin(async {
                Err(ProxyError::BadRequest(
                    "route has no cluster with positive weight",
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use tower::ServiceExt;

    fn named(name: &'static str) -> BoxService {
        BoxService::new(tower::service_fn(move |_req: Request<Body>| async move {
            Ok::<_, ProxyError>(Response::new(body::full(name)))
        }))
    }

    #[test]
    fn picks_by_cumulative_weight_and_skips_zero() {
        let s = Split::new(vec![(3, named("a")), (0, named("zero")), (1, named("b"))]);
        assert_eq!(s.total, 4);
        assert_eq!(s.targets.len(), 2);
        assert!(s.pick(0).is_some() && s.pick(3).is_some() && s.pick(4).is_none());
    }

    #[tokio::test]
    async fn shares_follow_weights() {
        use http_body_util::BodyExt;
        let s = Split::new(vec![(90, named("a")), (10, named("b"))]);
        let mut a = 0;
        for _ in 0..5000 {
            let resp = s
                .clone()
                .oneshot(Request::new(body::empty()))
                .await
                .unwrap();
            if resp.into_body().collect().await.unwrap().to_bytes() == "a" {
                a += 1;
            }
        }
        // 90% of 5000 with a binomial sd of ~21: 6 sd either way.
        assert!((4370..=4630).contains(&a), "a got {a}");
    }
}
