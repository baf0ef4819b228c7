//! The admin listener: Prometheus metrics, liveness and readiness probes, read-only
//! views of the config and cluster state, the running log filter, and probes of the
//! local app run for the kubelet (`/app-health/<name>`). Bound to its own port so it
//! never shares a connection limit or a route table with traffic.

use crate::body::{self, Body};
use crate::Shared;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use octopus_config::AppProbeConfig;
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
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
    if let Some(resp) = on_both_ports(shared, &req).await {
        return resp;
    }
    match req.uri().path() {
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
            "not found; try /metrics /ready /live /config /clusters /log-level /app-health/<name>\n",
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

/// The `admin.metrics_listen` listener: `GET /metrics` and the app probes
/// (`/app-health/<name>`) and nothing else, so Prometheus and the kubelet can reach it
/// from outside the pod while `/config` and `/log-level` stay on loopback.
pub(crate) async fn metrics_only<B>(shared: &Shared, req: Request<B>) -> Response<Body> {
    match on_both_ports(shared, &req).await {
        Some(resp) => resp,
        None => text(
            StatusCode::NOT_FOUND,
            "only /metrics and /app-health/<name> are served on this port; the rest of admin is on admin.listen\n",
        ),
    }
}

/// What `admin.listen` and `admin.metrics_listen` both answer: a refusal of anything
/// but GET/HEAD, `/metrics`, and the app probes. `None`: not one of these.
async fn on_both_ports<B>(shared: &Shared, req: &Request<B>) -> Option<Response<Body>> {
    if let Some(refused) = read_only(req) {
        return Some(refused);
    }
    if let Some(name) = req.uri().path().strip_prefix(APP_HEALTH) {
        return Some(app_health(shared, name).await);
    }
    (req.uri().path() == "/metrics").then(|| metrics_page(shared))
}

/// Where the app probes are served: `/app-health/<name>`, Istio's spelling, so a pod
/// spec's probe reads the same in either mesh.
const APP_HEALTH: &str = "/app-health/";

/// Sent on every HTTP app probe, so the app's access log tells probes from traffic.
const PROBE_USER_AGENT: &str = "octopus-app-probe";

/// `GET /app-health/<name>`: runs the configured probe of the local app now and
/// answers 200 if it passed, else 503 with one line saying why. The kubelet probes
/// this port instead of the app, whose port may only take mTLS once inbound traffic
/// is captured. Probes bypass the traffic path: no route, no admission, no request
/// metrics, only `octopus_app_probes_total`.
async fn app_health(shared: &Shared, name: &str) -> Response<Body> {
    // Copied out of the snapshot so a reload during a slow probe neither waits for it
    // nor keeps the old config alive.
    let found = shared
        .snapshot
        .load()
        .config
        .admin
        .app_probes
        .get_key_value(name)
        .map(|(n, p)| (n.clone(), p.clone()));
    let Some((name, probe)) = found else {
        let names: Vec<String> = shared
            .snapshot
            .load()
            .config
            .admin
            .app_probes
            .keys()
            .cloned()
            .collect();
        // The request's text is not echoed back: only configured names are listed.
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "no such app probe; configured in admin.app_probes: [{}]\n",
                names.join(", ")
            ),
        );
    };
    let outcome = shared.app_probes.run(&name, &probe).await;
    // The label is the config's key, never request text, so series stay bounded.
    let result = if outcome.is_ok() { "ok" } else { "failed" };
    shared
        .metrics
        .app_probes_total
        .with_label_values(&[name.as_str(), result])
        .inc();
    match outcome {
        Ok(passed) => text(StatusCode::OK, format!("{name}: {passed}\n")),
        Err(why) => {
            // The kubelet keeps a failed HTTP probe's body out of the pod's events, so
            // this line is where an operator finds out why the app is not ready.
            tracing::info!(probe = %name, reason = %why, "app probe failed");
            text(StatusCode::SERVICE_UNAVAILABLE, format!("{name}: {why}\n"))
        }
    }
}

/// App probes in progress, by probe name: callers of a probe already running share
/// its result instead of starting another, so however many requests reach
/// `/app-health/<name>` at once (kubelet retries, a scraper, a flood from inside the
/// allowed namespace), the app sees at most one probe of each name at a time. Each
/// probe runs in a task of its own that retires its entry when done, so a caller that
/// gives up (the kubelet's timeout) neither stalls the probe nor leaves a half-run one
/// for the next caller.
#[derive(Default)]
pub(crate) struct AppProbes {
    flights: Arc<std::sync::Mutex<std::collections::HashMap<String, (u64, Flight)>>>,
    next: std::sync::atomic::AtomicU64,
}

type Flight = futures_util::future::Shared<
    std::pin::Pin<Box<dyn Future<Output = Result<String, String>> + Send>>,
>;

impl AppProbes {
    /// The probe's outcome, as the text of its answer: joined if one is in progress.
    async fn run(&self, name: &str, probe: &AppProbeConfig) -> Result<String, String> {
        use futures_util::FutureExt;
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            match flights.get(name) {
                Some((_, f)) => f.clone(),
                None => {
                    let id = self.next.fetch_add(1, Ordering::Relaxed);
                    let (probe, key, map) =
                        (probe.clone(), name.to_string(), Arc::clone(&self.flights));
                    let task = tokio::spawn(async move {
                        let outcome = run_app_probe(&probe)
                            .await
                            .map(|p| p.to_string())
                            .map_err(|e| e.to_string());
                        let mut flights = map.lock().unwrap_or_else(|p| p.into_inner());
                        if flights.get(&key).is_some_and(|(i, _)| *i == id) {
                            flights.remove(&key);
                        }
                        outcome
                    });
                    let joined: std::pin::Pin<Box<dyn Future<Output = _> + Send>> =
                        Box::pin(async move {
                            task.await
                                .unwrap_or_else(|e| Err(format!("the probe failed to run: {e}")))
                        });
                    let f = joined.shared();
                    flights.insert(name.to_string(), (id, f.clone()));
                    f
                }
            }
        };
        flight.await
    }
}

/// A probe that passed.
#[derive(Debug)]
enum ProbePassed {
    Http { target: String, status: StatusCode },
    Tcp { addr: SocketAddr },
}

impl std::fmt::Display for ProbePassed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbePassed::Http { target, status } => {
                write!(f, "{target} answered {}", status_text(status))
            }
            ProbePassed::Tcp { addr } => write!(f, "{addr} accepted a TCP connection"),
        }
    }
}

/// Why a probe failed; its text is the 503's body.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("{addr} refused the connection (is the app listening?)")]
    Refused { addr: SocketAddr },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("timed out: {target} did not answer within {timeout}")]
    TimedOut {
        target: String,
        timeout: octopus_config::Duration,
    },
    #[error("{target} answered {}", status_text(.status))]
    Status { target: String, status: StatusCode },
    #[error("{target}: {source}")]
    Http {
        target: String,
        source: hyper::Error,
    },
    #[error("cannot build a request for {target}: {source}")]
    Request { target: String, source: http::Error },
}

/// `500 Internal Server Error`, or just the code when it has no standard reason.
fn status_text(status: &StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// Runs one probe within its timeout: an HTTP/1.1 GET when it has a path (200-399
/// passes, as for the kubelet's `httpGet`), else a TCP connect (as `tcpSocket`).
async fn run_app_probe(probe: &AppProbeConfig) -> Result<ProbePassed, ProbeError> {
    let addr = SocketAddr::new(probe.host, probe.port);
    let target = match &probe.path {
        Some(path) => format!("http://{addr}{path}"),
        None => format!("tcp {addr}"),
    };
    let attempt = async {
        let stream = match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(ProbeError::Refused { addr })
            }
            Err(source) => return Err(ProbeError::Connect { addr, source }),
        };
        let Some(path) = &probe.path else {
            return Ok(ProbePassed::Tcp { addr });
        };
        let status = http_get(stream, addr, path, &target).await?;
        if (200..400).contains(&status.as_u16()) {
            Ok(ProbePassed::Http {
                target: target.clone(),
                status,
            })
        } else {
            Err(ProbeError::Status {
                target: target.clone(),
                status,
            })
        }
    };
    match tokio::time::timeout(probe.timeout.get(), attempt).await {
        Ok(outcome) => outcome,
        Err(_elapsed) => Err(ProbeError::TimedOut {
            target,
            timeout: probe.timeout,
        }),
    }
}

/// One GET over `stream`; only the status matters, the body is never read.
async fn http_get(
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    path: &str,
    target: &str,
) -> Result<StatusCode, ProbeError> {
    let http_err = |source| ProbeError::Http {
        target: target.to_string(),
        source,
    };
    let req = Request::get(path)
        // `SocketAddr`'s text brackets an IPv6 host, as a Host header needs.
        .header(header::HOST, addr.to_string())
        .header(header::USER_AGENT, PROBE_USER_AGENT)
        .header(header::ACCEPT, "*/*")
        // One request per connection, as the kubelet does: nothing is left for the
        // app to keep open between probes.
        .header(header::CONNECTION, "close")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|source| ProbeError::Request {
            target: target.to_string(),
            source,
        })?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http_err)?;
    // The connection is driven here, not on a spawned task, so a timeout or the end
    // of the probe drops the socket with it.
    let mut conn = std::pin::pin!(conn);
    let send = sender.send_request(req);
    let mut send = std::pin::pin!(send);
    let resp = tokio::select! {
        biased;
        r = &mut send => r.map_err(http_err)?,
        r = &mut conn => {
            r.map_err(http_err)?;
            // The connection may finish in the same poll that delivered the answer
            // (the app closes after it); the answer is then waiting here, and if there
            // was none this reports the connection closed early.
            send.await.map_err(http_err)?
        }
    };
    Ok(resp.status())
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
    // The app-probe series of the config serving now exist at 0 from its first scrape,
    // so `increase()` sees a probe's first failure. Created here rather than when the
    // snapshot is compiled: a scrape is the only place they can be seen anyway.
    for name in shared.snapshot.load().config.admin.app_probes.keys() {
        for result in ["ok", "failed"] {
            shared
                .metrics
                .app_probes_total
                .with_label_values(&[name.as_str(), result]);
        }
    }
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
