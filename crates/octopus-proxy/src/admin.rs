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
            // Reset-and-refill of the endpoint gauges must not interleave with another
            // scrape's, or one of them would miss series.
            let page = {
                let _one_at_a_time = shared.scrape.lock().unwrap_or_else(|p| p.into_inner());
                refresh_endpoint_gauges(shared);
                shared.descriptors.report(&shared.metrics);
                shared.metrics.encode()
            };
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

/// Endpoint gauges are set from live state at scrape time rather than on every
/// request; resetting first drops series of endpoints that are gone.
fn refresh_endpoint_gauges(shared: &Shared) {
    let snap = shared.snapshot.load();
    let m = &shared.metrics;
    m.endpoint_healthy.reset();
    m.endpoint_in_flight.reset();
    m.endpoint_weight.reset();
    m.endpoint_ejected.reset();
    let inbound = snap.inbound.as_ref().map(|i| &i.cluster);
    for cluster in snap.clusters.values().chain(inbound) {
        for member in cluster.members() {
            let ep = member.endpoint.addr().to_string();
            let labels = [&*cluster.name, ep.as_str()];
            m.endpoint_healthy
                .with_label_values(&labels)
                .set(i64::from(member.endpoint.is_healthy()));
            m.endpoint_in_flight
                .with_label_values(&labels)
                .set(member.endpoint.in_flight() as i64);
            m.endpoint_weight
                .with_label_values(&labels)
                .set(i64::from(member.weight));
            m.endpoint_ejected
                .with_label_values(&labels)
                .set(i64::from(member.endpoint.is_ejected()));
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
