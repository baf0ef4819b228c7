//! Traffic split (canary): each request picks one cluster with probability
//! proportional to its weight. Weighted random rather than a rotation, so concurrent
//! requests need no shared state at all; over many requests the shares converge.
//!
//! With `hash_on`, the split is sticky: the request's key (a header or cookie) is
//! hashed to a fixed point in `[0, 1)` and the cluster whose share of the weight line
//! covers that point serves it. Moving weight from 95/5 to 90/10 moves only the users
//! whose point lies in the 5% that changed hands; everyone else stays put. Requests
//! without the key fall back to the random pick.

mod sticky;

use crate::body::Body;
use crate::error::ProxyError;
use crate::BoxService;
use http::{Request, Response};
use octopus_config::HashOn;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

#[derive(Clone)]
pub struct Split {
    /// (cumulative weight upper bound, cluster service); zero-weight targets omitted.
    targets: Arc<[(u64, BoxService)]>,
    total: u64,
    hash_on: Option<Arc<HashOn>>,
}

impl Split {
    /// `targets` must contain at least one positive weight (validation guarantees it).
    pub fn new(targets: Vec<(u32, BoxService)>, hash_on: Option<HashOn>) -> Self {
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
            hash_on: hash_on.map(Arc::new),
        }
    }

    fn pick(&self, r: u64) -> Option<&BoxService> {
        self.targets
            .iter()
            .find(|(upper, _)| r < *upper)
            .map(|(_, s)| s)
    }

    /// A point on the weight line `[0, total)`: from the sticky key when there is one.
    fn point<B>(&self, req: &Request<B>) -> u64 {
        if self.total == 0 {
            return 0;
        }
        match self.hash_on.as_deref().and_then(|h| sticky::key(h, req)) {
            // Scale the 64-bit hash onto the line: the same key keeps its relative
            // position whatever the weights are.
            Some(key) => ((u128::from(sticky::hash(key)) * u128::from(self.total)) >> 64) as u64,
            None => fastrand::u64(0..self.total),
        }
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
        let r = self.point(&req);
        match self.pick(r) {
            Some(svc) => svc.call_shared(req),
            // Validation refuses a split whose weights are all 0.
            None => Box::pin(async {
                Err(ProxyError::Internal(
                    "split has no cluster with positive weight",
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn named(name: &'static str) -> BoxService {
        BoxService::new(tower::service_fn(move |_req: Request<Body>| async move {
            Ok::<_, ProxyError>(Response::new(body::full(name)))
        }))
    }

    async fn side(s: &Split, req: Request<Body>) -> String {
        let resp = s.clone().oneshot(req).await.unwrap();
        String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    }

    #[test]
    fn picks_by_cumulative_weight_and_skips_zero() {
        let s = Split::new(
            vec![(3, named("a")), (0, named("zero")), (1, named("b"))],
            None,
        );
        assert_eq!(s.total, 4);
        assert_eq!(s.targets.len(), 2);
        assert!(s.pick(0).is_some() && s.pick(3).is_some() && s.pick(4).is_none());
    }

    #[tokio::test]
    async fn shares_follow_weights() {
        let s = Split::new(vec![(90, named("a")), (10, named("b"))], None);
        let mut a = 0;
        for _ in 0..5000 {
            if side(&s, Request::new(body::empty())).await == "a" {
                a += 1;
            }
        }
        // 90% of 5000 with a binomial sd of ~21: 6 sd either way.
        assert!((4370..=4630).contains(&a), "a got {a}");
    }

    #[tokio::test]
    async fn sticky_keys_stay_and_only_the_moved_share_moves() {
        let hash_on: HashOn = "header:x-user".parse().unwrap();
        let before = Split::new(
            vec![(95, named("v1")), (5, named("v2"))],
            Some(hash_on.clone()),
        );
        let after = Split::new(vec![(90, named("v1")), (10, named("v2"))], Some(hash_on));
        let req = |user: &str| {
            Request::builder()
                .header("x-user", user)
                .body(body::empty())
                .unwrap()
        };
        let (mut moved, mut v2_before, mut v2_after) = (0, 0, 0);
        for u in 0..2000 {
            let user = format!("user-{u}");
            let first = side(&before, req(&user)).await;
            for _ in 0..3 {
                assert_eq!(
                    side(&before, req(&user)).await,
                    first,
                    "same key, same side"
                );
            }
            let second = side(&after, req(&user)).await;
            if first == "v2" {
                v2_before += 1;
                assert_eq!(
                    second, "v2",
                    "growing the canary never moves its users back"
                );
            }
            v2_after += usize::from(second == "v2");
            moved += usize::from(first != second);
        }
        assert_eq!(
            moved,
            v2_after - v2_before,
            "only users in the share that changed hands move"
        );
        assert!((40..=170).contains(&v2_before), "about 5%: {v2_before}");
        assert!((120..=290).contains(&v2_after), "about 10%: {v2_after}");
    }
}
