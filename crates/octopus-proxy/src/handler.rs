//! The request path of the outbound and inbound listeners: route, adjust headers, call
//! the route's service stack, turn errors into responses, record metrics, and splice
//! upgraded (WebSocket) connections.

use crate::access_log::{AccessLog, Record};
use crate::body::{self, Body, ClientBodyFault, ClientBodyWatch, FromClient};
use crate::endpoint::{ConnectionSpec, Endpoint};
use crate::error::ProxyError;
use crate::exchange::Exchange;
use crate::headers;
use crate::listener::ConnInfo;
use crate::snapshot::{Inbound, Route, NONE_LABEL};
use crate::Shared;
use http::{header, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use octopus_config::UnderscoreHeaders;
use octopus_metrics::TargetMetrics;
use std::time::{Duration, Instant, SystemTime};

/// The verified identity of an inbound mTLS peer, as the app receives it.
pub const PEER_IDENTITY: &str = "x-octopus-peer-identity";

/// Which way traffic flows: the `direction` label of metrics, and which listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

enum Target<'a> {
    Route(&'a Route),
    /// The local app: `forward_to`, or (a captured peer connection to another app
    /// port) the connection's own endpoint for that port.
    Inbound(&'a Inbound, Option<std::sync::Arc<Endpoint>>),
    /// A captured connection's request no route takes, sent on to where it was going
    /// (`outbound.unmatched: passthrough`).
    Passthrough(&'a crate::snapshot::Passthrough, std::sync::Arc<Endpoint>),
}

impl Target<'_> {
    fn name(&self) -> &str {
        match self {
            Target::Route(r) => &r.name,
            Target::Inbound(..) => crate::snapshot::INBOUND_ROUTE,
            Target::Passthrough(..) => crate::tcp::PASSTHROUGH,
        }
    }

    fn metrics(&self, cluster: Option<&str>) -> &TargetMetrics {
        match self {
            Target::Route(r) => r.metrics_for(cluster),
            Target::Inbound(i, _) => &i.metrics,
            Target::Passthrough(p, _) => &p.metrics,
        }
    }

    fn metrics_of(&self, e: &ProxyError) -> &TargetMetrics {
        self.metrics(e.cluster().map(|c| &**c))
    }
}

/// What the handler learns about a request on its way, for its access-log line and
/// its error response.
#[derive(Default)]
struct Note {
    /// Set when octopus answered for itself.
    error: Option<(&'static str, crate::error::Fault)>,
    cluster: Option<std::sync::Arc<str>>,
    route: Option<std::sync::Arc<str>>,
    client_body: Option<ClientBodyWatch>,
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
    let scan = headers::scan(req.headers());
    let request_id = headers::request_id(&scan);
    let log = access_log(&snap, dir).filter(|l| l.sampled());
    let trace = snap.tracer.as_ref().and_then(|t| t.start(req.headers()));
    if let Some(t) = &trace {
        // Each upstream try opens a client span through this.
        req.extensions_mut().insert(t.tries());
    }
    let observed = log.is_some() || trace.is_some();
    // A request being logged or traced carries a record its tries fill in (endpoint,
    // attempts).
    let exchange = observed.then(|| {
        let x = Exchange::default();
        req.extensions_mut().insert(x.clone());
        x
    });
    let trace_id = trace
        .as_ref()
        .map(|t| crate::trace::context::hex(&t.trace_id));
    // Boxed: most requests are neither logged nor traced, and the handler's future
    // (whose slot hyper keeps per connection) should not carry a record's room.
    let mut line = observed.then(|| {
        Box::new(Pending {
            log: log.cloned(),
            trace,
            record: Some(Record {
                start: SystemTime::now(),
                direction: dir.name(),
                route: NONE_LABEL.into(),
                cluster: None,
                endpoint: None,
                client: conn.peer,
                method: req.method().clone(),
                authority: req.uri().authority().cloned().or_else(|| {
                    scan.host
                        .as_ref()
                        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
                }),
                path: req.uri().path_and_query().cloned(),
                protocol: req.version(),
                status: crate::error::CLIENT_CLOSED,
                error: Some("client_aborted"),
                fault: Some("client"),
                attempts: 0,
                duration: Duration::ZERO,
                upstream: None,
                bytes_in: 0,
                bytes_out: 0,
                request_id: Some(request_id.to_value()),
                trace_id,
                peer_identity: conn.identity.clone(),
            }),
            start,
            exchange,
            client_body: None,
        })
    });
    let mut note = Note::default();
    let mut resp = respond(
        shared,
        &snap,
        (dir, conn, start, scan, &request_id),
        req,
        &mut note,
    )
    .await;
    if note.error.is_some() {
        // octopus' own answers name the request, so a client's report can be found.
        resp.headers_mut()
            .insert(headers::REQUEST_ID, request_id.to_value());
    }
    match line.take() {
        Some(mut pending) => {
            if let Some(rec) = pending.record.as_mut() {
                rec.status = resp.status().as_u16();
                rec.route = note.route.unwrap_or_else(|| NONE_LABEL.into());
                rec.cluster = cluster_of(&resp).or(note.cluster);
                rec.error = note.error.map(|(kind, _)| kind);
                rec.fault = note.error.map(|(_, fault)| fault.name());
                if let Some(watch) = &note.client_body {
                    pending.client_body = Some(watch.clone());
                }
            }
            resp.map(|b| Body::new(Logged { inner: b, pending }))
        }
        None => resp,
    }
}

fn access_log(snap: &crate::snapshot::Snapshot, dir: Direction) -> Option<&AccessLog> {
    match dir {
        Direction::Outbound => snap.outbound.as_ref()?.access_log.as_ref(),
        Direction::Inbound => snap.inbound.as_ref()?.access_log.as_ref(),
    }
}

/// Routes a request and forwards it, or answers for octopus: the request path proper.
async fn respond(
    shared: &Shared,
    snap: &crate::snapshot::Snapshot,
    (dir, conn, start, scan, request_id): (
        Direction,
        &ConnInfo,
        Instant,
        headers::Scan,
        &headers::RequestId,
    ),
    req: Request<Incoming>,
    note: &mut Note,
) -> Response<Body> {
    let report = |e: &ProxyError, route: &str| {
        shared
            .failures
            .report(e, dir.name(), route, request_id.as_str())
    };
    let (early, limits) = match dir {
        Direction::Outbound => match (snap.outbound.as_ref(), snap.config.outbound.as_ref()) {
            (Some(out), Some(cfg)) => (&out.no_route, cfg.limits()),
            _ => return ProxyError::NoRoute.into_response(),
        },
        Direction::Inbound => match (snap.inbound.as_ref(), snap.config.inbound.as_ref()) {
            (Some(inb), Some(cfg)) => (&inb.metrics, cfg.limits()),
            _ => return ProxyError::NoRoute.into_response(),
        },
    };
    let Some(admitted) = shared.admission(dir).admit(limits.max_requests) else {
        let listener = dir.name();
        return fail(
            ProxyError::Overloaded { listener },
            early,
            start,
            note,
            &report,
        );
    };
    // Checked before routing: the authority must be one octopus can route on and
    // forward unchanged, and CONNECT would ask for a raw tunnel.
    if req.method() == Method::CONNECT {
        return fail(ProxyError::ConnectUnsupported, early, start, note, &report);
    }
    let authority = match headers::authority(&req, &scan) {
        Ok(a) => a,
        Err(e) => return fail(e, early, start, note, &report),
    };
    let target = match dir {
        Direction::Outbound => {
            let host = authority.as_ref().map(headers::route_host);
            let out = snap.outbound.as_ref();
            match out.and_then(|o| o.router.find(host, &req)) {
                Some(route) => Target::Route(route),
                None => match (out, conn.passthrough) {
                    (Some(out), Some(dst)) => Target::Passthrough(
                        &out.passthrough,
                        connection_endpoint(shared, conn, dst, &req, dir, None),
                    ),
                    _ => return fail(ProxyError::NoRoute, early, start, note, &report),
                },
            }
        }
        Direction::Inbound => match snap.inbound.as_ref() {
            Some(inb) => Target::Inbound(
                inb,
                conn.passthrough.map(|port| {
                    connection_endpoint(shared, conn, port, &req, dir, inb.cluster.limits())
                }),
            ),
            None => return fail(ProxyError::NoRoute, early, start, note, &report),
        },
    };
    note.route = Some(match &target {
        Target::Route(r) => r.name.clone(),
        Target::Inbound(..) => crate::snapshot::INBOUND_ROUTE.into(),
        Target::Passthrough(..) => crate::tcp::PASSTHROUGH.into(),
    });
    // From here a request that ends without an answer (the client went away) is
    // recorded as 499 client_aborted when its future is dropped.
    let mut outcome = Outcome {
        metrics: target.metrics(None),
        start,
        recorded: false,
    };
    let rules = (authority, scan, limits.headers_with_underscores, request_id);
    let resp = match forward(dir, conn, &target, rules, admitted, req, note).await {
        Ok(resp) => {
            let cluster = cluster_of(&resp);
            target
                .metrics(cluster.as_deref())
                .record(resp.status().as_u16(), start.elapsed());
            resp
        }
        Err(e) => {
            let metrics = target.metrics_of(&e);
            let route = target.name();
            fail(e, metrics, start, note, &|e: &ProxyError, _: &str| {
                report(e, route)
            })
        }
    };
    outcome.recorded = true;
    resp
}

/// Records a failure (metrics, a rate-limited log line, the request's note) and turns
/// it into the client's answer.
fn fail(
    e: ProxyError,
    metrics: &TargetMetrics,
    start: Instant,
    note: &mut Note,
    report: &dyn Fn(&ProxyError, &str),
) -> Response<Body> {
    if let ProxyError::Internal(why) = &e {
        tracing::error!(why, "internal error; please report it");
    }
    metrics.record(e.recorded_status(), start.elapsed());
    metrics.error(e.kind());
    report(&e, NONE_LABEL);
    note.error = Some((e.kind(), e.fault()));
    note.cluster = e.cluster().cloned();
    e.into_response()
}

/// Records a request dropped before it was answered: the client closed its connection
/// or reset its stream. nginx logs these as 499; they are never an endpoint's fault.
struct Outcome<'a> {
    metrics: &'a TargetMetrics,
    start: Instant,
    recorded: bool,
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            let elapsed = self.start.elapsed();
            tracing::debug!(
                status = crate::error::CLIENT_CLOSED,
                ?elapsed,
                "client went away before its answer (client_aborted)"
            );
            self.metrics.record(crate::error::CLIENT_CLOSED, elapsed);
            self.metrics.error("client_aborted");
        }
    }
}

/// Applies the trust rules to a routed request, calls the target's stack, and checks
/// what comes back. The order matters: hop-by-hop headers (and those `Connection`
/// names) and underscore look-alikes go first, then octopus sets its own headers, so
/// no client header can remove or imitate them.
async fn forward(
    dir: Direction,
    conn: &ConnInfo,
    target: &Target<'_>,
    (authority, scan, underscores, request_id): (
        Option<http::uri::Authority>,
        headers::Scan,
        UnderscoreHeaders,
        &headers::RequestId,
    ),
    admitted: crate::admission::Admitted,
    mut req: Request<Incoming>,
    note: &mut Note,
) -> Result<Response<Body>, ProxyError> {
    if let Target::Inbound(..) = target {
        if conn.tls && !conn.allowed {
            return Err(ProxyError::IdentityNotAllowed);
        }
    }
    if scan.transfer_encoding && headers::has_foreign_transfer_coding(req.headers()) {
        return Err(ProxyError::UnsupportedTransferCoding);
    }
    let (max_body, upgrades, body_timeout) = match target {
        Target::Route(r) => (r.max_body, &r.upgrades, r.request_body_timeout),
        Target::Inbound(i, _) => (None, &i.upgrades, i.request_body_timeout),
        Target::Passthrough(p, _) => (None, &p.upgrades, p.request_body_timeout),
    };
    if let Some(limit) = max_body {
        // A declared length over the limit is refused before anything is sent.
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ProxyError::ClientBody {
                fault: ClientBodyFault::TooLarge,
                source: None,
            });
        }
    }

    // 1. Strip: hop-by-hop headers, any `Upgrade` offer not allowed (h2c above all),
    //    every `x-octopus-*` header and underscore look-alikes of reserved names. Only
    //    octopus' mirror marks a copy as shadow traffic, so the local app cannot make
    //    a real request look like one; inbound keeps the mark, so the copy a peer's
    //    mirror sent still reaches the shadow app marked.
    let offer = if scan.upgrade {
        headers::allowed_upgrade(&req, upgrades)
    } else {
        None
    };
    let downstream_upgrade = offer.is_some().then(|| hyper::upgrade::on(&mut req));
    if scan.hop_by_hop {
        headers::strip_hop_by_hop(req.headers_mut(), offer.clone());
    }
    if scan.suspect {
        let keep = match dir {
            Direction::Inbound => Some(crate::mirror::SHADOW_HEADER),
            Direction::Outbound => None,
        };
        headers::strip_untrusted(req.headers_mut(), underscores, keep)?;
    }

    // 2. Set: what octopus vouches for.
    if dir == Direction::Inbound {
        if let Some(id) = conn
            .identity
            .as_deref()
            .and_then(|id| HeaderValue::from_str(id).ok())
        {
            req.headers_mut().insert(PEER_IDENTITY, id);
        }
    }
    headers::append_forwarded_for(req.headers_mut(), &conn.forwarded_for);
    req.headers_mut()
        .insert(headers::REQUEST_ID, request_id.to_value());
    if let Some(a) = &authority {
        // The upstream sees the authority octopus routed on, in `Host` too. Without a
        // URI authority, `Host` is where it came from: nothing to rewrite.
        let same = req.uri().authority().is_none()
            || scan
                .host
                .as_ref()
                .is_some_and(|h| h.as_bytes() == a.as_str().as_bytes());
        if !same {
            let host = HeaderValue::from_str(a.as_str())
                .map_err(|_| ProxyError::BadRequest("invalid request authority"))?;
            req.headers_mut().insert(header::HOST, host);
        }
    }

    // The body as octopus forwards it: errors are the client's, with a size limit and
    // a stall timeout. A request without a body needs none of it.
    let req = if http_body::Body::is_end_stream(req.body()) {
        req.map(body::boxed)
    } else {
        let watch = ClientBodyWatch::default();
        req.extensions_mut().insert(watch.clone());
        note.client_body = Some(watch.clone());
        req.map(|b| Body::new(FromClient::new(b, max_body, body_timeout, watch)))
    };

    let call = match target {
        Target::Route(r) => r.service.call_shared(req),
        Target::Inbound(i, None) => i.cluster.call(req),
        Target::Inbound(_, Some(ep)) | Target::Passthrough(_, ep) => {
            tower::Service::call(&mut crate::endpoint::EndpointService::new(ep.clone()), req)
        }
    };
    let mut resp = call.await?;
    if headers::is_upgrade_response(&resp) {
        let refuse = |reason| ProxyError::BadResponse {
            cluster: cluster_of(&resp).unwrap_or_else(|| NONE_LABEL.into()),
            reason,
        };
        let (Some(down), Some(offered)) = (downstream_upgrade, offer.as_ref()) else {
            // A 101 the client did not ask for (or octopus removed) cannot be relayed.
            return Err(refuse(
                "switched protocols without an allowed upgrade request",
            ));
        };
        if !headers::upgrade_matches(&resp, offered) {
            return Err(refuse("switched to a protocol the client did not offer"));
        }
        let chosen = resp.headers().get(header::UPGRADE).cloned();
        let up = hyper::upgrade::on(&mut resp);
        // The tunnel keeps the listener's admission: it holds two descriptors.
        tokio::spawn(tunnel(down, up, admitted));
        headers::strip_hop_by_hop(resp.headers_mut(), chosen);
        return Ok(resp);
    }
    headers::strip_hop_by_hop(resp.headers_mut(), None);
    Ok(resp.map(|b| b.hold(admitted)))
}

/// The connection's own endpoint for where its unrouted requests go (outbound: the
/// original destination; inbound: the app port the peer connected to, under the local
/// app's connection limit), opened by the first such request: HTTP/2 when the client spoke HTTP/2 (prior knowledge, so the
/// destination does too), else HTTP/1.1. Its connections count against the side's
/// descriptors like any other.
fn connection_endpoint<B>(
    shared: &Shared,
    conn: &ConnInfo,
    dst: std::net::SocketAddr,
    req: &Request<B>,
    dir: Direction,
    limits: Option<std::sync::Arc<crate::circuit_breaker::Circuit>>,
) -> std::sync::Arc<Endpoint> {
    conn.passthrough_endpoint
        .get_or_init(|| {
            let protocol = if req.version() == http::Version::HTTP_2 {
                octopus_config::Protocol::Http2
            } else {
                octopus_config::Protocol::Http1
            };
            let (label, descriptors, timeout) = match dir {
                Direction::Outbound => (
                    crate::tcp::PASSTHROUGH,
                    &shared.descriptors.outbound,
                    crate::tcp::PASSTHROUGH_CONNECT_TIMEOUT,
                ),
                Direction::Inbound => (
                    crate::error::LOCAL_APP,
                    &shared.descriptors.inbound,
                    crate::tcp::LOCAL_APP_CONNECT_TIMEOUT,
                ),
            };
            Endpoint::new(
                label.into(),
                dst,
                &ConnectionSpec::new(protocol, timeout),
                limits,
                None,
                Some(descriptors.clone()),
                None,
            )
        })
        .clone()
}

fn cluster_of(resp: &Response<Body>) -> Option<std::sync::Arc<str>> {
    resp.body().served_by().cloned()
}

/// Splices the client's and the upstream's upgraded connections until either closes.
async fn tunnel(down: OnUpgrade, up: OnUpgrade, _admitted: crate::admission::Admitted) {
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

/// A request's access-log line and server span, written when its response body ends
/// (or is dropped: the client went away, recorded as 499 `client_aborted` unless an
/// answer was already under way).
struct Pending {
    log: Option<AccessLog>,
    trace: Option<crate::trace::Trace>,
    record: Option<Record>,
    start: Instant,
    exchange: Option<Exchange>,
    client_body: Option<ClientBodyWatch>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut rec) = self.record.take() else {
            return;
        };
        rec.duration = self.start.elapsed();
        if let Some(x) = &self.exchange {
            rec.attempts = x.attempts();
            rec.endpoint = x.endpoint();
            rec.upstream = x.upstream_time();
        }
        if let Some(w) = &self.client_body {
            rec.bytes_in = w.bytes();
        }
        if let Some(trace) = self.trace.take() {
            let (name, attributes, error) = server_span(&rec);
            trace.finish(name, attributes, error);
        }
        if let Some(log) = &self.log {
            log.write(rec);
        }
    }
}

/// The server span of a request, from what its log record says.
fn server_span(
    rec: &Record,
) -> (
    String,
    Vec<(&'static str, crate::trace::Value)>,
    Option<String>,
) {
    use crate::trace::Value::{Int, Str};
    let mut attrs = vec![
        ("octopus.direction", Str(rec.direction.to_string())),
        ("octopus.route", Str(rec.route.to_string())),
        ("http.request.method", Str(rec.method.as_str().to_string())),
        ("http.response.status_code", Int(i64::from(rec.status))),
        ("octopus.attempts", Int(i64::from(rec.attempts))),
        ("client.address", Str(rec.client.ip().to_string())),
    ];
    if let Some(c) = &rec.cluster {
        attrs.push(("octopus.cluster", Str(c.to_string())));
    }
    if let Some(e) = rec.endpoint {
        attrs.push(("octopus.endpoint", Str(e.to_string())));
    }
    if let Some(a) = &rec.authority {
        attrs.push(("server.address", Str(a.host().to_string())));
    }
    if let Some(p) = &rec.path {
        attrs.push(("url.path", Str(p.path().to_string())));
    }
    if let Some(id) = rec.request_id.as_ref().and_then(|v| v.to_str().ok()) {
        attrs.push(("octopus.request_id", Str(id.to_string())));
    }
    if let Some(id) = &rec.peer_identity {
        attrs.push(("octopus.peer_identity", Str(id.to_string())));
    }
    let error = match (rec.error, rec.fault) {
        (Some(kind), fault) => {
            attrs.push(("octopus.error.kind", Str(kind.to_string())));
            if let Some(f) = fault {
                attrs.push(("octopus.fault", Str(f.to_string())));
            }
            Some(kind.to_string())
        }
        (None, _) if rec.status >= 500 => Some(format!("upstream answered {}", rec.status)),
        (None, _) => None,
    };
    (format!("{} {}", rec.method, rec.route), attrs, error)
}

/// A response body that counts the bytes sent and writes the request's log line when
/// it is done.
struct Logged {
    inner: Body,
    pending: Box<Pending>,
}

impl http_body::Body for Logged {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let (Some(data), Some(rec)) = (frame.data_ref(), self.pending.record.as_mut()) {
                rec.bytes_out += data.len() as u64;
            }
        }
        polled
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
