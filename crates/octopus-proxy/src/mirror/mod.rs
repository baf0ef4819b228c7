//! Traffic mirroring (shadow launches): a sampled copy of a route's requests goes to
//! another cluster, fire-and-forget. The copy runs in its own task; its response,
//! latency and failure never reach the client, and a mirror that cannot keep up with
//! a request body is cut off rather than slowing the original.

mod tee;

use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::BoxService;
use http::{HeaderValue, Request, Response};
use http_body::Body as _;
use prometheus::IntCounter;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

/// A mirrored request (and the reading of its response) is abandoned after this long,
/// so a hanging shadow cluster cannot pile up tasks.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

/// Marks copies so the shadow service can tell them from real traffic.
pub const SHADOW_HEADER: &str = "x-octopus-shadow";

#[derive(Clone)]
pub struct MirrorLayer {
    target: BoxService,
    percent: f64,
    sent: IntCounter,
}

impl MirrorLayer {
    /// `percent` of requests (0-100) are copied to `target`; `sent` counts the copies.
    pub fn new(target: BoxService, percent: f64, sent: IntCounter) -> Self {
        MirrorLayer {
            target,
            percent,
            sent,
        }
    }
}

impl<S> Layer<S> for MirrorLayer {
    type Service = Mirror<S>;
    fn layer(&self, inner: S) -> Mirror<S> {
        Mirror {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Mirror<S> {
    inner: S,
    layer: MirrorLayer,
}

impl<S> Service<Request<Body>> for Mirror<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if fastrand::f64() * 100.0 >= self.layer.percent {
            return self.inner.call(req);
        }
        let (req, shadow) = copy(req);
        self.layer.sent.inc();
        let target = self.layer.target.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(MIRROR_TIMEOUT, async move {
                match target.oneshot(shadow).await {
                    Ok(resp) => {
                        // Read the answer so the connection can be reused; ignore it.
                        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "mirrored request failed (ignored)"),
                }
            })
            .await;
        });
        self.inner.call(req)
    }
}

/// Splits a request into the original and a shadow copy with a teed body.
fn copy(req: Request<Body>) -> (Request<Body>, Request<Body>) {
    let (parts, body) = req.into_parts();
    let mut shadow = Request::new(body::empty());
    *shadow.method_mut() = parts.method.clone();
    *shadow.uri_mut() = parts.uri.clone();
    *shadow.version_mut() = parts.version;
    *shadow.headers_mut() = parts.headers.clone();
    // The copy shares the client's body, so its failure is the client's there too.
    if let Some(w) = parts.extensions.get::<crate::body::ClientBodyWatch>() {
        shadow.extensions_mut().insert(w.clone());
    }
    shadow
        .headers_mut()
        .insert(SHADOW_HEADER, HeaderValue::from_static("true"));
    let original_body = if body.is_end_stream() {
        body
    } else {
        let (primary, copy) = tee::tee(body);
        *shadow.body_mut() = copy;
        primary
    };
    (Request::from_parts(parts, original_body), shadow)
}
