//! The admin listener: Prometheus metrics, liveness and readiness probes, and read-only
//! views of the config and cluster state. Bound to its own port so it never shares a
//! connection limit or a route table with traffic.

use crate::body::{self, Body};
use crate::Shared;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

pub(crate) fn handle<B>(shared: &Shared, req: &Request<B>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are allowed\n",
        );
    }
    match req.uri().path() {
        "/metrics" => {
            // Endpoint gauges are read from the clusters by their collector as the
            // registry is gathered; descriptor counts are two gauges set here.
            shared.descriptors.report(&shared.metrics);
            let page = shared.metrics.encode();
            let mut resp = text(StatusCode::OK, page);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => {
            if shared.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/config" => json_response(config_view(shared)),
        "/clusters" => json_response(clusters_view(shared)),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics /ready /live /config /clusters\n",
        ),
    }
}

/// The endpoint gauges' source: every member of every cluster serving now, and the
/// local app.
impl octopus_metrics::EndpointSource for Shared {
    fn sample(&self, out: &mut Vec<octopus_metrics::EndpointSample>) {
        let snap = self.snapshot.load();
        let inbound = snap.inbound.as_ref().map(|i| &i.cluster);
        for cluster in snap.clusters.values().chain(inbound) {
            for member in cluster.members() {
                let ep = &member.endpoint;
                let conns = ep.connections();
                out.push(octopus_metrics::EndpointSample {
                    cluster: cluster.name.clone(),
                    endpoint: ep.addr().to_string(),
                    healthy: ep.is_healthy(),
                    in_flight: ep.in_flight(),
                    weight: member.weight,
                    ejected: ep.is_ejected(),
                    connections_open: conns.open,
                    connections_idle: conns.idle,
                });
            }
        }
    }
}

fn config_view(shared: &Shared) -> serde_json::Value {
    let snap = shared.snapshot.load();
    let config = serde_json::to_value(&*snap.config).unwrap_or(serde_json::Value::Null);
    json!({
        "generation": snap.generation,
        "loaded_at_unix": snap.loaded_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "source": snap.source,
        "sha256": snap.digest,
        "config": config,
    })
}

fn clusters_view(shared: &Shared) -> serde_json::Value {
    let snap = shared.snapshot.load();
    let clusters: serde_json::Map<String, serde_json::Value> = snap
        .clusters
        .iter()
        .map(|(name, c)| {
            let v = json!({
                "lb": c.spec.lb,
                "protocol": c.spec.protocol,
                "endpoints": c.endpoint_stats(),
            });
            (name.clone(), v)
        })
        .collect();
    let inbound = snap.inbound.as_ref().map(|i| {
        json!({ "forward_to": i.forward_to.to_string(), "protocol": i.protocol, "endpoints": i.cluster.endpoint_stats() })
    });
    json!({ "generation": snap.generation, "clusters": clusters, "inbound": inbound })
}

fn json_response(v: serde_json::Value) -> Response<Body> {
    let mut text_body = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into());
    text_body.push('\n');
    let mut resp = Response::new(body::full(text_body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn text(status: StatusCode, body_text: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut resp = Response::new(body::full(body_text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
