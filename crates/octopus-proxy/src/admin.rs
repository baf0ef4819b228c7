//! The admin listener: Prometheus metrics, liveness and readiness probes, read-only
//! views of the config and cluster state, and the running log filter. Bound to its own
//! port so it never shares a connection limit or a route table with traffic.

use crate::body::{self, Body};
use crate::Shared;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

/// The process' log filter, as `/log-level` reads and changes it. The binary owns
/// logging and injects this at start-up ([`crate::Proxy::set_log_control`]); the
/// proxy knows nothing of how logs are written.
pub trait LogControl: Send + Sync {
    /// The filter in force, in `RUST_LOG` syntax.
    fn current(&self) -> String;
    /// Replaces the filter; returns it as now in force, or why it was refused.
    fn set(&self, directives: &str) -> Result<String, String>;
}

/// Longest filter a `PUT /log-level` may send.
const MAX_FILTER_BYTES: usize = 4096;

pub(crate) async fn handle(
    shared: &Shared,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    if req.uri().path() == "/log-level" {
        return log_level(shared, req, peer).await;
    }
    if let Some(refused) = read_only(&req) {
        return refused;
    }
    match req.uri().path() {
        "/metrics" => metrics_page(shared),
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
            "not found; try /metrics /ready /live /config /clusters /log-level\n",
        ),
    }
}

/// `GET /log-level` shows the filter; `PUT /log-level` with a filter as the body
/// (`debug`, `octopus_proxy=trace,info`) replaces it, from a loopback peer only unless
/// `admin.allow_remote_log_level` is set: debug logs carry request details, and a
/// flood of them is a cheap way to slow the proxy down.
async fn log_level(shared: &Shared, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let Some(control) = shared.log_control.get() else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "this process has no adjustable log filter\n",
        );
    };
    match *req.method() {
        Method::GET | Method::HEAD => text(StatusCode::OK, format!("{}\n", control.current())),
        Method::PUT | Method::POST => {
            let allow_remote = shared.snapshot.load().config.admin.allow_remote_log_level;
            if !may_change_log_level(peer, allow_remote) {
                tracing::warn!(%peer, "refused a log-level change from a non-loopback peer");
                return text(
                    StatusCode::FORBIDDEN,
                    "the log level can be changed from loopback only (admin.allow_remote_log_level)\n",
                );
            }
            let bytes = match http_body_util::Limited::new(req.into_body(), MAX_FILTER_BYTES)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the filter (at most {MAX_FILTER_BYTES} bytes): {e}\n"),
                    )
                }
            };
            let Ok(wanted) = std::str::from_utf8(&bytes) else {
                return text(StatusCode::BAD_REQUEST, "the filter is not UTF-8\n");
            };
            if wanted.trim().is_empty() {
                return text(
                    StatusCode::BAD_REQUEST,
                    "send a filter as the body, e.g. `debug` or `octopus_proxy=trace,info`\n",
                );
            }
            let before = control.current();
            match control.set(wanted) {
                Ok(now) => {
                    tracing::info!(%peer, from = %before, to = %now, "log filter changed");
                    text(StatusCode::OK, format!("{now}\n"))
                }
                Err(why) => text(StatusCode::BAD_REQUEST, format!("{why}\n")),
            }
        }
        _ => {
            let mut resp = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "GET shows the log filter; PUT replaces it\n",
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, PUT"));
            resp
        }
    }
}

/// The `admin.metrics_listen` listener: `GET /metrics` and nothing else, so Prometheus
/// can reach it from outside the pod while `/config` and `/log-level` stay on loopback.
pub(crate) fn metrics_only<B>(shared: &Shared, req: &Request<B>) -> Response<Body> {
    if let Some(refused) = read_only(req) {
        return refused;
    }
    match req.uri().path() {
        "/metrics" => metrics_page(shared),
        _ => text(
            StatusCode::NOT_FOUND,
            "only /metrics is served on this port; the rest of admin is on admin.listen\n",
        ),
    }
}

/// 405 for anything but GET and HEAD: the read-only endpoints change nothing.
fn read_only<B>(req: &Request<B>) -> Option<Response<Body>> {
    (req.method() != Method::GET && req.method() != Method::HEAD).then(|| {
        text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are allowed\n",
        )
    })
}

fn metrics_page(shared: &Shared) -> Response<Body> {
    // Endpoint gauges are read from the clusters by their collector as the registry is
    // gathered; descriptor counts are two gauges set here.
    shared.descriptors.report(&shared.metrics);
    let page = shared.metrics.encode();
    let mut resp = text(StatusCode::OK, page);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
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

/// Whether `peer` may change the log filter: loopback peers (an IPv4-mapped IPv6
/// loopback too) always, others only when the config allows it.
fn may_change_log_level(peer: SocketAddr, allow_remote: bool) -> bool {
    allow_remote || peer.ip().to_canonical().is_loopback()
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

#[cfg(test)]
mod tests {
    use super::may_change_log_level;

    #[test]
    fn only_loopback_changes_the_log_level_unless_allowed() {
        let peer = |s: &str| s.parse().unwrap();
        assert!(may_change_log_level(peer("127.0.0.1:5000"), false));
        assert!(may_change_log_level(peer("[::1]:5000"), false));
        assert!(may_change_log_level(peer("[::ffff:127.0.0.1]:5000"), false));
        assert!(!may_change_log_level(peer("10.1.2.3:5000"), false));
        assert!(!may_change_log_level(peer("[fd00::1]:5000"), false));
        assert!(may_change_log_level(peer("10.1.2.3:5000"), true));
    }
}
