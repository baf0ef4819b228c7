//! Outlier detection: passive, per-endpoint ejection below the balancer, as a layer
//! around each endpoint's service. `consecutive_failures` upstream failures in a row
//! (5xx answers, connect failures, resets, bad responses; never the client's own
//! faults) eject an endpoint (open): it stops being picked for
//! `base_ejection_time x times ejected` (capped). Then it is half-open: it takes
//! traffic again and its next result decides, a success closes it, a failure ejects it
//! again at once. No more than `max_ejection_percent` of a cluster is ever ejected, so
//! a cluster-wide failure does not empty the cluster.
//!
//! The state lives with the endpoint ([`crate::endpoint::Ejection`]) so it survives
//! reloads; how much of the cluster is ejected comes through an injected hook, and an
//! ejection reaches the balancer through the endpoint's availability hook.

use crate::body::{Body, ClientBodyWatch};
use crate::endpoint::{upstream_verdict, Endpoint, CLOSED, HALF_OPEN, OPEN};
use crate::error::ProxyError;
use http::{Request, Response};
use octopus_config::OutlierDetectionConfig;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

/// Ejections never last longer than this, however often an endpoint failed.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// How many of the cluster's endpoints are ejected now, and how many there are:
/// injected by the cluster, which owns the member list.
pub type EjectedShare = Arc<dyn Fn() -> (usize, usize) + Send + Sync>;

/// A cluster's detector: its settings and a view of its members.
pub struct Outlier {
    cluster: Arc<str>,
    spec: OutlierDetectionConfig,
    share: EjectedShare,
}

impl Outlier {
    pub fn new(cluster: Arc<str>, spec: OutlierDetectionConfig, share: EjectedShare) -> Arc<Self> {
        Arc::new(Outlier {
            cluster,
            spec,
            share,
        })
    }

    /// Records one response (or failure to get one) from `ep`.
    pub fn record(&self, ep: &Arc<Endpoint>, ok: bool) {
        let o = &ep.ejection;
        if ok {
            if o.consecutive.load(Ordering::Relaxed) != 0 {
                o.consecutive.store(0, Ordering::Relaxed);
            }
            if o.state
                .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                tracing::info!(cluster = %self.cluster, endpoint = %ep.addr(), "outlier detection: probe succeeded; endpoint closed (back in rotation)");
            }
            return;
        }
        let failures = o.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        let state = o.state.load(Ordering::Acquire);
        let trip =
            (state == HALF_OPEN) || (state == CLOSED && failures >= self.spec.consecutive_failures);
        if trip
            && self.room_to_eject()
            && o.state
                .compare_exchange(state, OPEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.eject(ep);
        }
    }

    fn room_to_eject(&self) -> bool {
        let (ejected, total) = (self.share)();
        (ejected + 1) * 100 <= total * self.spec.max_ejection_percent as usize
    }

    fn eject(&self, ep: &Arc<Endpoint>) {
        let times = ep.ejection.times_ejected.fetch_add(1, Ordering::AcqRel) + 1;
        let duration = self
            .spec
            .base_ejection_time
            .get()
            .saturating_mul(times)
            .min(MAX_EJECTION.max(self.spec.base_ejection_time.get()));
        tracing::warn!(cluster = %self.cluster, endpoint = %ep.addr(), times, ?duration, "outlier detection: endpoint ejected");
        ep.ejection.consecutive.store(0, Ordering::Release);
        ep.availability_changed();
        let ep = ep.clone();
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            if ep
                .ejection
                .state
                .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                tracing::info!(%cluster, endpoint = %ep.addr(), "outlier detection: ejection over; endpoint half-open (next result decides)");
                ep.availability_changed();
            }
        });
    }
}

/// Puts a cluster's detector around each endpoint's service.
#[derive(Clone)]
pub struct OutlierLayer {
    detector: Arc<Outlier>,
    endpoint: Arc<Endpoint>,
}

impl OutlierLayer {
    pub fn new(detector: Arc<Outlier>, endpoint: Arc<Endpoint>) -> Self {
        OutlierLayer { detector, endpoint }
    }
}

impl<S> Layer<S> for OutlierLayer {
    type Service = OutlierDetection<S>;
    fn layer(&self, inner: S) -> OutlierDetection<S> {
        OutlierDetection {
            inner,
            detector: self.detector.clone(),
            endpoint: self.endpoint.clone(),
        }
    }
}

/// Records every outcome of one endpoint's service with the cluster's detector.
#[derive(Clone)]
pub struct OutlierDetection<S> {
    inner: S,
    detector: Arc<Outlier>,
    endpoint: Arc<Endpoint>,
}

impl<S> Service<Request<Body>> for OutlierDetection<S>
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
            inner: self.inner.call(req),
            detector: self.detector.clone(),
            endpoint: self.endpoint.clone(),
            watch,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        detector: Arc<Outlier>,
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
        if let Some(ok) = upstream_verdict(&result, this.watch.as_ref()) {
            this.detector.record(this.endpoint, ok);
        }
        Poll::Ready(result)
    }
}
