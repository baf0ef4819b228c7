//! The request path of the outbound and inbound listeners: route, adjust headers, call
//! the route's service stack, turn errors into responses, record metrics, and splice
//! upgraded (WebSocket) connections.

use crate::body::{self, Body};
use crate::error::{ProxyError, ServedBy};
use crate::headers;
use crate::listener::ConnInfo;
use crate::snapshot::{Inbound, Route, NONE_LABEL};
use crate::Shared;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use octopus_metrics::TargetMetrics;
use std::time::Instant;
use tower::ServiceExt;

/// The verified identity of an inbound mTLS peer, as the app receives it.
pub const PEER_IDENTITY: &str = "x-octopus-peer-identity";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

enum Target<'a> {
    Route(&'a Route),
    Inbound(&'a Inbound),
}

impl Target<'_> {
    fn name(&self) -> &str {
        match self {
            Target::Route(r) => &r.name,
            Target::Inbound(_) => crate::snapshot::INBOUND_ROUTE,
        }
    }

    fn metrics(&self, cluster: Option<&str>) -> &TargetMetrics {
        match self {
            Target::Route(r) => r.metrics_for(cluster),
            Target::Inbound(i) => &i.metrics,
        }
    }
}

pub(crate) async fn handle(
    shared: &Shared,
    dir: Direction,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let start = Instant::now();
    // One lock-free load per request; the Arc keeps this config alive until we finish.
    let snap = shared.snapshot.load_full();
    let authority = headers::authority(&req);
    let target = match dir {
        Direction::Outbound => {
            let host = authority.as_ref().map(headers::route_host);
            let Some(out) = snap.outbound.as_ref() else {
                return ProxyError::NoRoute.into_response();
            };
            match out.router.find(host, &req) {
                Some(route) => Target::Route(route),
                None => {
                    let resp = ProxyError::NoRoute.into_response();
                    out.no_route.record(resp.status().as_u16(), start.elapsed());
                    return resp;
                }
            }
        }
        Direction::Inbound => match snap.inbound.as_ref() {
            Some(inb) => Target::Inbound(inb),
            None => return ProxyError::NoRoute.into_response(),
        },
    };
    let service = match &target {
        Target::Route(r) => r.service.clone(),
        Target::Inbound(i) => i.cluster.service(),
    };

    if dir == Direction::Inbound {
        // Only octopus may say who the peer is: a client-sent value is never trusted.
        req.headers_mut().remove(PEER_IDENTITY);
        if conn.tls && !conn.allowed {
            let resp = ProxyError::IdentityNotAllowed.into_response();
            if let Some(inb) = snap.inbound.as_ref() {
                inb.metrics.record(resp.status().as_u16(), start.elapsed());
            }
            return resp;
        }
        if let Some(id) = conn
            .identity
            .as_deref()
            .and_then(|id| http::HeaderValue::from_str(id).ok())
        {
            req.headers_mut().insert(PEER_IDENTITY, id);
        }
    }
    let upgrade = headers::is_upgrade_request(&req);
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let max_body = match &target {
        Target::Route(r) => r.max_body,
        Target::Inbound(_) => None,
    };
    if let Some(limit) = max_body {
        // A declared length over the limit is refused before anything is sent.
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            let resp = ProxyError::BodyTooLarge.into_response();
            target
                .metrics(None)
                .record(resp.status().as_u16(), start.elapsed());
            return resp;
        }
    }
    let mut req = match max_body {
        // A streamed body is cut off once it passes the limit (see `body::Limited`).
        Some(limit) => req.map(|b| body::Body::new(body::Limited::new(b, limit))),
        None => req.map(body::boxed),
    };
    headers::strip_hop_by_hop(req.headers_mut(), upgrade);
    // Only octopus' mirror marks a copy as shadow traffic: the local app cannot make
    // a real request look like one. Inbound keeps it, so the copy a peer's mirror
    // sent still reaches the shadow app marked.
    if dir == Direction::Outbound {
        req.headers_mut().remove(crate::mirror::SHADOW_HEADER);
    }
    headers::append_forwarded_for(req.headers_mut(), &conn.forwarded_for);
    if req.uri().authority().is_none() {
        if let Some(uri) = authority
            .as_ref()
            .and_then(|a| headers::upstream_uri(a, req.uri()))
        {
            *req.uri_mut() = uri;
        }
    }

    let resp = match service.oneshot(req).await {
        Ok(mut resp) => {
            if headers::is_upgrade_response(&resp) {
                match downstream_upgrade {
                    Some(down) => {
                        let up = hyper::upgrade::on(&mut resp);
                        tokio::spawn(tunnel(down, up));
                        headers::strip_hop_by_hop(resp.headers_mut(), true);
                        resp
                    }
                    // A 101 the client did not ask for cannot be relayed.
                    None => ProxyError::BadResponse {
                        cluster: cluster_of(&resp).unwrap_or_else(|| NONE_LABEL.into()),
                        reason: "switched protocols without an upgrade request",
                    }
                    .into_response(),
                }
            } else {
                headers::strip_hop_by_hop(resp.headers_mut(), false);
                resp
            }
        }
        Err(e) => {
            tracing::debug!(?dir, route = target.name(), error = %e, "request failed");
            if body::is_too_large(&e) {
                ProxyError::BodyTooLarge.into_response()
            } else {
                e.into_response()
            }
        }
    };
    let cluster = resp.extensions().get::<ServedBy>().map(|s| s.0.clone());
    target
        .metrics(cluster.as_deref())
        .record(resp.status().as_u16(), start.elapsed());
    resp
}

fn cluster_of<B>(resp: &Response<B>) -> Option<std::sync::Arc<str>> {
    resp.extensions().get::<ServedBy>().map(|s| s.0.clone())
}

/// Splices the client's and the upstream's upgraded connections until either closes.
async fn tunnel(down: OnUpgrade, up: OnUpgrade) {
    match tokio::try_join!(down, up) {
        Ok((down, up)) => {
            let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
            if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}
