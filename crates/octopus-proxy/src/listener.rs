//! Accept loops. Every listener speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c),
//! detected per connection, and drains gracefully: on shutdown it stops accepting,
//! asks open connections to close after their in-flight requests, and waits. A
//! connection idle for the listener's `idle_timeout` is closed the same graceful way.

use crate::activity::Activity;
use crate::body::Body;
use crate::counted::{ByteCounters, Counted};
use crate::original_dst::original_dst;
use crate::tcp;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use octopus_config::ListenerLimits;
use octopus_metrics::Metrics;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A slow client gets this long to send a request head (slowloris protection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept error (e.g. EMFILE) instead of spinning on it.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
const ACCEPT_WARNING_INTERVAL: Duration = Duration::from_secs(10);

fn connection_builder(limits: &ListenerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // A request head over these limits is answered 431 by hyper.
        .max_buf_size(limits.max_header_bytes as usize)
        .max_headers(limits.max_headers as usize);
    // Pings find HTTP/2 peers that vanished without closing their connection.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes);
    builder
}

/// The settings of a listener that may change with a reload, read per connection.
pub(crate) trait Settings: Send + Sync + 'static {
    fn limits(&self) -> ListenerLimits;
    /// The TLS terminator for new connections, on TLS listeners.
    fn tls(&self) -> Option<Arc<octopus_tls::ServerTls>> {
        None
    }
    /// The descriptor group this listener's connections draw from (none for admin,
    /// which lives on the reserve).
    fn descriptors(&self) -> Option<Arc<crate::descriptors::Group>> {
        None
    }
    /// What becomes of a connection to `dst` (its original destination when
    /// `captured` by iptables, else the listener's own address) if it is not HTTP.
    fn plan(&self, _dst: SocketAddr, _captured: bool) -> Plan {
        Plan::http()
    }
}

/// How a listener treats one connection before it knows its protocol.
pub(crate) struct Plan {
    /// Where the connection goes if it is opaque (not HTTP); `None`: it is closed.
    pub opaque: Option<tcp::Destination>,
    /// Carry it as opaque TCP at once, with no detection (an `opaque_ports` port).
    pub opaque_only: bool,
    /// Detect its protocol (captured connections, or ones a TCP route may take).
    /// Without detection a connection is HTTP, or TLS on an mTLS listener.
    pub detect: bool,
    pub detect_timeout: Duration,
    /// Counts a connection closed because nothing may take it.
    pub refused: Option<tcp::TcpMetrics>,
    /// Where this connection's HTTP requests go other than by the routes: outbound,
    /// the original destination of a captured connection (for requests no route
    /// takes, `unmatched: passthrough`); inbound, the app port a peer connected to
    /// when it is not `forward_to`'s.
    pub http_to: Option<SocketAddr>,
    /// The side's access log, when this connection is sampled: opaque connections get
    /// a line when they end.
    pub log: Option<crate::access_log::AccessLog>,
}

impl Plan {
    pub(crate) fn http() -> Plan {
        Plan {
            opaque: None,
            opaque_only: false,
            detect: false,
            detect_timeout: Duration::ZERO,
            refused: None,
            http_to: None,
            log: None,
        }
    }
}

/// Fixed settings (the admin listener).
pub(crate) struct Fixed;

impl Settings for Fixed {
    fn limits(&self) -> ListenerLimits {
        ListenerLimits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            ..ListenerLimits::default()
        }
    }
}

/// Who is on the other end of a downstream connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `peer`'s IP as an `x-forwarded-for` element.
    pub forwarded_for: crate::headers::ForwardedFor,
    /// Set on TLS listeners: the identity the client certificate proves, if any.
    pub identity: Option<Arc<str>>,
    /// False when the identity is not in the listener's allow-list.
    pub allowed: bool,
    pub tls: bool,
    /// Where a captured connection was going, when octopus may send HTTP requests no
    /// route takes there (`outbound.unmatched: passthrough`).
    pub passthrough: Option<SocketAddr>,
    /// The connection to that destination, opened by the first such request and kept
    /// for the client connection's life (one upstream connection per client
    /// connection, as the app would have had without octopus).
    pub passthrough_endpoint: std::sync::OnceLock<Arc<crate::endpoint::Endpoint>>,
}

impl ConnInfo {
    /// A plain-HTTP client: no certificate, so no identity to check.
    fn plain(peer: SocketAddr) -> Self {
        ConnInfo {
            peer,
            forwarded_for: crate::headers::ForwardedFor::new(peer.ip()),
            identity: None,
            allowed: true,
            tls: false,
            passthrough: None,
            passthrough_endpoint: std::sync::OnceLock::new(),
        }
    }
}

/// Serves `listener` until `stop` fires, then drains its connections.
pub(crate) async fn serve<H, Fut>(
    listener: TcpListener,
    name: &'static str,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
    settings: impl Settings,
    handler: H,
) where
    H: Fn(Request<Incoming>, Arc<ConnInfo>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let mut current = settings.limits();
    let mut builder = connection_builder(&current);
    // Open connections, checked against `max_connections` at each accept.
    let open = Arc::new(AtomicUsize::new(0));
    let refused = metrics.listener_overflow_total.with_label_values(&[name]);
    let accept_errors = metrics
        .listener_accept_errors_total
        .with_label_values(&[name]);
    // Out of descriptors, every accept fails: log once per interval, count them all.
    let mut last_warning: Option<std::time::Instant> = None;
    let mut last_fd_warning: Option<Instant> = None;
    let descriptors = settings.descriptors();
    // Each connection task holds a sender; the drain is over when all are dropped.
    let (alive, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    let accepted = metrics.connections_total.with_label_values(&[name]);
    let bytes = ByteCounters {
        received: metrics
            .downstream_bytes_total
            .with_label_values(&[name, "received"]),
        sent: metrics
            .downstream_bytes_total
            .with_label_values(&[name, "sent"]),
    };
    let active = metrics.connections_active.with_label_values(&[name]);
    // What every connection of this listener shares: one reference count each.
    let side = Arc::new(Side {
        name,
        metrics: metrics.clone(),
        transports: ["mtls", "plaintext"]
            .map(|t| metrics.inbound_connections_total.with_label_values(&[t])),
        speakers: crate::detect::FirstSpeakers::default(),
    });
    // A connection made to the listener itself has the listener's address as its
    // destination (no getsockname per connection).
    let local = listener.local_addr().ok();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => break,
            res = listener.accept() => match res {
                Ok(pair) => pair,
                Err(e) => {
                    accept_errors.inc();
                    if last_warning.is_none_or(|t| t.elapsed() >= ACCEPT_WARNING_INTERVAL) {
                        last_warning = Some(std::time::Instant::now());
                        tracing::warn!(
                            listener = name,
                            error = %e,
                            total = accept_errors.get(),
                            "accept failed; backing off (logged at most every 10 s, all counted in octopus_listener_accept_errors_total)"
                        );
                    }
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Settings follow config reloads: rebuild the builder when they changed.
        let wanted = settings.limits();
        if wanted != current {
            current = wanted;
            builder = connection_builder(&current);
        }
        if open.load(Ordering::Acquire) >= current.max_connections as usize {
            // Over the limit: close at once rather than let connections pile up.
            refused.inc();
            drop(stream);
            continue;
        }
        // The side's descriptor share spent (its upstream connections count too):
        // refuse this one so the other side and the admin port keep theirs.
        let fd = match &descriptors {
            Some(g) => match g.acquire() {
                Some(slot) => Some(slot),
                None => {
                    refused.inc();
                    if last_fd_warning.is_none_or(|t| t.elapsed() >= ACCEPT_WARNING_INTERVAL) {
                        last_fd_warning = Some(Instant::now());
                        tracing::warn!(
                            listener = name,
                            budget = g.capacity(),
                            "file-descriptor budget of this side spent; refusing connections (counted in octopus_listener_overflow_total)"
                        );
                    }
                    drop(stream);
                    continue;
                }
            },
            None => None,
        };
        open.fetch_add(1, Ordering::AcqRel);
        accepted.inc();
        active.inc();
        let end = ConnectionEnd {
            name,
            peer,
            _open: OpenConnection(open.clone()),
            active: active.clone(),
            _fd: fd,
            _alive: alive.clone(),
        };
        // Captured connections carry where they were going; others were made to the
        // listener itself. One getsockopt per connection.
        let captured = local.and_then(|l| original_dst(&stream, l));
        let dst = captured.or(local);
        let plan = match dst {
            Some(dst) => settings.plan(dst, captured.is_some()),
            None => Plan::http(),
        };
        let tls = settings.tls();
        let (h, builder, stop, bytes) = (
            handler.clone(),
            builder.clone(),
            stop.clone(),
            bytes.clone(),
        );
        let idle = current.idle_timeout;
        // One task per connection; plain HTTP connections get tasks of their own kind,
        // so an idle plain connection's task is not sized for a TLS handshake's or a
        // detection's state (measured: 7.4 KiB for one task serving either, per
        // connection). Handshakes and detection run in the connection's own task,
        // never in the accept loop. The plain task calls `serve_connection` directly:
        // each async layer around it would copy its (large) future once more per
        // connection (measured: +3,800 instructions per connection with two layers).
        if tls.is_none() && !plan.detect && !plan.opaque_only {
            tokio::spawn(async move {
                let info = ConnInfo::plain(peer);
                let result = serve_connection(&builder, stream, bytes, h, info, stop, idle).await;
                end.finish(result);
            });
        } else {
            let job = Job {
                builder,
                bytes,
                handler: h,
                stop,
                idle,
                peer,
                side: side.clone(),
                first_byte_wait: current.header_read_timeout,
                accepted: Instant::now(),
                destination: dst,
            };
            tokio::spawn(async move {
                let result = Box::pin(job.run(stream, plan, tls)).await;
                end.finish(result);
            });
        }
    }
    drop(listener);
    drop(alive);
    let _ = all_closed.recv().await;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the connections of one listener share.
struct Side {
    name: &'static str,
    metrics: Arc<Metrics>,
    /// `octopus_inbound_connections_total{transport="mtls"|"plaintext"}`.
    transports: [prometheus::IntCounter; 2],
    /// Who speaks first where (see `FirstSpeakers`).
    speakers: crate::detect::FirstSpeakers,
}

/// One accepted connection and what serving it needs.
struct Job<H> {
    builder: auto::Builder<TokioExecutor>,
    bytes: ByteCounters,
    handler: H,
    stop: watch::Receiver<bool>,
    idle: Duration,
    peer: SocketAddr,
    side: Arc<Side>,
    first_byte_wait: Duration,
    accepted: Instant,
    /// Where the client was connecting: the original destination, or the listener.
    destination: Option<SocketAddr>,
}

impl<H, Fut> Job<H>
where
    H: Fn(Request<Incoming>, Arc<ConnInfo>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    /// Plain HTTP (HTTP/1.1 or h2c); `passthrough`: where unrouted requests may go.
    async fn plain_http<I>(self, io: I, passthrough: Option<SocketAddr>) -> Result<(), BoxError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let mut info = ConnInfo::plain(self.peer);
        info.passthrough = passthrough;
        self.http(io, info).await
    }

    async fn http<I>(self, io: I, info: ConnInfo) -> Result<(), BoxError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        serve_connection(
            &self.builder,
            io,
            self.bytes,
            self.handler,
            info,
            self.stop,
            self.idle,
        )
        .await
    }

    /// A connection that may be TLS (mTLS listeners), opaque TCP, or HTTP.
    async fn run(
        self,
        stream: tokio::net::TcpStream,
        plan: Plan,
        tls: Option<Arc<octopus_tls::ServerTls>>,
    ) -> Result<(), BoxError> {
        use crate::detect::{Protocol, Sniffed, Speaker};
        let dst = self.destination;
        let permissive = tls
            .as_ref()
            .is_none_or(|t| t.spec().mode == octopus_config::TlsMode::Permissive);
        if let (Some(tls), false) = (&tls, permissive) {
            // Strict mTLS: every connection is a TLS handshake first.
            return self.mtls(stream, tls.clone(), plan).await;
        }
        if plan.opaque_only && tls.is_none() {
            // A declared opaque port: no detection, the bytes go as they come.
            return self.opaque(stream, plan, None, Vec::new(), None).await;
        }
        // From here: a plaintext listener's connection, or a permissive mTLS
        // listener's (where a TLS record first means a peer sidecar).
        let detect = plan.detect || plan.opaque_only;
        let start = Instant::now();
        let known = dst.and_then(|d| self.side.speakers.get(d));
        let (dial, wait) = if detect {
            // Dial ahead unless this destination's clients are known to speak first.
            let dial = plan
                .opaque
                .clone()
                .filter(|_| known != Some(Speaker::Client))
                .map(|d| {
                    Box::pin(d.dial()) as crate::detect::Connecting<tcp::Upstream, tcp::TcpError>
                });
            (dial, plan.detect_timeout)
        } else {
            // Not captured (a plain client of a permissive listener): a silent client
            // is handed to the TLS side, as before detection existed.
            (None, self.first_byte_wait)
        };
        let sniffed = crate::detect::sniff(&stream, dial, wait).await;
        let seen = match &sniffed {
            // A peer sidecar's ClientHello says nothing about the app's own clients.
            Sniffed::Client(Protocol::Tls, _) if tls.is_some() => None,
            Sniffed::Client(..) => Some(Speaker::Client),
            Sniffed::Server(..) | Sniffed::Timeout(_) => Some(Speaker::Server),
            Sniffed::ClientClosed => None,
        };
        if let (Some(d), Some(who), true) = (dst, seen, detect) {
            if known != Some(who) {
                self.side.speakers.set(d, who);
            }
        }
        let detected = |p: &str| {
            if detect {
                self.side
                    .metrics
                    .protocol_detect_seconds
                    .with_label_values(&[self.side.name, p])
                    .observe(start.elapsed().as_secs_f64());
            }
        };
        let tls_listener = tls.is_some();
        match sniffed {
            Sniffed::Client(Protocol::Tls, pending) if tls.is_some() => {
                // A connection dialled ahead is closed now, not kept (with its slot,
                // descriptor and in-flight count) for this connection's whole life.
                drop(pending);
                detected("tls");
                match tls {
                    Some(tls) => self.mtls(stream, tls, plan).await,
                    None => Ok(()),
                }
            }
            Sniffed::Client(p, pending) if plan.opaque_only => {
                detected(p.name());
                self.count_plaintext(tls_listener);
                let dialled = pending.finish().await;
                self.opaque(stream, plan, dialled, Vec::new(), None).await
            }
            Sniffed::Client(p @ (Protocol::Http1 | Protocol::Http2), pending) => {
                drop(pending);
                detected(p.name());
                self.count_plaintext(tls_listener);
                let to = plan.http_to;
                self.plain_http(stream, to).await
            }
            Sniffed::Client(p, pending) => {
                detected(p.name());
                self.count_plaintext(tls_listener);
                if !plan.detect {
                    // Not captured and not HTTP: hyper answers it 400, as before.
                    return self.plain_http(stream, None).await;
                }
                let dialled = pending.finish().await;
                self.opaque(stream, plan, dialled, Vec::new(), None).await
            }
            Sniffed::Server(up, greeting) => {
                // On a permissive listener a peer sidecar's ClientHello may arrive just
                // after a local app's greeting: give it a moment before taking the
                // connection for a plaintext one.
                if let Some(tls) = tls {
                    if tls_follows(&stream, PERMISSIVE_TLS_GRACE).await {
                        drop(up);
                        detected("tls");
                        return self.mtls(stream, tls, plan).await;
                    }
                }
                detected("opaque");
                self.count_plaintext(tls_listener);
                self.opaque(stream, plan, Some(Ok(up)), greeting, None)
                    .await
            }
            Sniffed::Timeout(pending) => {
                if !detect {
                    return match tls {
                        Some(tls) => self.mtls(stream, tls, plan).await,
                        None => self.plain_http(stream, None).await,
                    };
                }
                detected("opaque");
                self.side
                    .metrics
                    .protocol_detect_timeouts_total
                    .with_label_values(&[self.side.name])
                    .inc();
                self.count_plaintext(tls_listener);
                let dialled = pending.finish().await;
                self.opaque(stream, plan, dialled, Vec::new(), None).await
            }
            Sniffed::ClientClosed => Ok(()),
        }
    }

    /// `octopus_inbound_connections_total{transport="plaintext"}`, on listeners with
    /// TLS (permissive).
    fn count_plaintext(&self, on_tls_listener: bool) {
        if on_tls_listener {
            self.side.transports[1].inc();
        }
    }

    /// Carries an opaque connection to the plan's destination, using the connection
    /// detection already opened (and what its server already said) when there is one;
    /// writes its access-log line when it ends.
    async fn opaque<C>(
        self,
        client: C,
        plan: Plan,
        dialled: Option<Result<tcp::Upstream, tcp::TcpError>>,
        greeting: Vec<u8>,
        identity: Option<Arc<str>>,
    ) -> Result<(), BoxError>
    where
        C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let Some(dest) = plan.opaque.clone() else {
            let why = if self.side.name == "inbound" {
                "the port is not one of inbound.opaque_ports (or is octopus' own)"
            } else {
                "no route takes this connection"
            };
            self.refuse(&plan, why, identity);
            return Ok(());
        };
        let mut line = self.tcp_line(&plan, identity);
        if let Some(rec) = line.as_mut() {
            rec.route = dest.route();
            rec.cluster = dest.cluster();
        }
        let dialled = match dialled {
            Some(d) => d,
            None => dest.clone().dial().await,
        };
        match dialled {
            Ok(up) => {
                let endpoint = up.endpoint;
                let (bytes_in, bytes_out) = tcp::carry(client, up, &greeting, &dest).await;
                if let Some(rec) = line.as_mut() {
                    rec.result = "ok";
                    rec.endpoint = endpoint;
                    rec.bytes_in = bytes_in;
                    rec.bytes_out = bytes_out;
                }
            }
            Err(e) => {
                let m = dest.metrics();
                let result = if e.is_limit() {
                    m.refuse();
                    "refused"
                } else {
                    m.connect_failed.inc();
                    "connect_failed"
                };
                // Counted and in the access log; per-connection lines at info would
                // let a peer flood the log by dialling closed ports.
                tracing::debug!(peer = %self.peer, listener = self.side.name, error = %e, "TCP connection not carried");
                if let Some(rec) = line.as_mut() {
                    rec.result = result;
                    rec.error = Some(e.to_string());
                }
            }
        }
        self.write_line(&plan, line);
        Ok(())
    }

    /// The access-log line of an opaque connection, when it is sampled: a refusal
    /// until it is carried.
    fn tcp_line(
        &self,
        plan: &Plan,
        identity: Option<Arc<str>>,
    ) -> Option<crate::access_log::TcpRecord> {
        plan.log.as_ref().map(|_| crate::access_log::TcpRecord {
            start: std::time::SystemTime::now() - self.accepted.elapsed(),
            direction: self.side.name,
            route: crate::error::NONE_LABEL.into(),
            cluster: None,
            endpoint: None,
            client: self.peer,
            destination: self.destination,
            result: "refused",
            error: None,
            duration: Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
            peer_identity: identity,
        })
    }

    /// Writes an opaque connection's line, timed from its accept to now.
    fn write_line(&self, plan: &Plan, line: Option<crate::access_log::TcpRecord>) {
        if let (Some(log), Some(mut rec)) = (&plan.log, line) {
            rec.duration = self.accepted.elapsed();
            log.write_tcp(rec);
        }
    }

    /// Closes an opaque connection nothing may take: counted, logged at debug (a peer
    /// could otherwise flood the log), and in the access log.
    fn refuse(&self, plan: &Plan, why: &str, identity: Option<Arc<str>>) {
        if let Some(m) = &plan.refused {
            m.refuse();
        }
        let mut line = self.tcp_line(plan, identity);
        if let Some(rec) = line.as_mut() {
            rec.error = Some(why.to_string());
        }
        self.write_line(plan, line);
        tracing::debug!(peer = %self.peer, listener = self.side.name, why, "opaque connection closed");
    }

    /// The mTLS handshake, then HTTP, or opaque TCP when the peer sidecar asked for it
    /// by ALPN (only from an allowed identity).
    async fn mtls(
        self,
        stream: tokio::net::TcpStream,
        tls: Arc<octopus_tls::ServerTls>,
        plan: Plan,
    ) -> Result<(), BoxError> {
        let Some(acc) = tls.accept(stream, self.peer).await else {
            return Ok(());
        };
        self.side.transports[0].inc();
        if acc.opaque {
            let identity = acc.identity.map(Arc::<str>::from);
            if !acc.allowed {
                // The handshake already logged the identity at warn.
                self.refuse(&plan, "the peer's identity is not allowed", identity);
                return Ok(());
            }
            return self
                .opaque(acc.stream, plan, None, Vec::new(), identity)
                .await;
        }
        let info = ConnInfo {
            identity: acc.identity.map(Arc::<str>::from),
            allowed: acc.allowed,
            tls: true,
            passthrough: plan.http_to,
            ..ConnInfo::plain(self.peer)
        };
        self.http(acc.stream, info).await
    }
}

/// How long a permissive listener waits, after a local app spoke first, for a peer
/// sidecar's ClientHello (sent the moment its connect completed) before it takes the
/// connection for a plaintext client's.
const PERMISSIVE_TLS_GRACE: Duration = Duration::from_millis(50);

/// Whether a TLS handshake record (0x16) arrives within `grace`, without consuming it.
async fn tls_follows(stream: &tokio::net::TcpStream, grace: Duration) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(grace, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == 0x16
    )
}

/// Serves one connection until it ends: on `stop`, or after `idle` with no request
/// started or in progress, it is asked to close gracefully (HTTP/1.1: after the
/// response in progress; HTTP/2: GOAWAY, open streams finish) and served to the end.
async fn serve_connection<I, H, Fut>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    bytes: ByteCounters,
    h: H,
    info: ConnInfo,
    mut stop: watch::Receiver<bool>,
    idle: Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, Arc<ConnInfo>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let conn = builder.serve_connection_with_upgrades(
        TokioIo::new(Counted::new(io, Some(bytes))),
        service(h, Arc::new(info), activity.clone()),
    );
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => return res,
        _ = stop.changed() => {}
        _ = activity.idle_for(idle) => {}
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}

fn service<H, Fut>(
    h: H,
    info: Arc<ConnInfo>,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
where
    H: Fn(Request<Incoming>, Arc<ConnInfo>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    hyper::service::service_fn(move |req| {
        let active = activity.begin();
        let fut = h(req, info.clone());
        async move {
            let resp = fut.await;
            drop(active);
            Ok::<_, Infallible>(resp)
        }
    })
}

/// What a connection's task gives back when it ends, however it ends.
struct ConnectionEnd {
    name: &'static str,
    peer: SocketAddr,
    _open: OpenConnection,
    active: prometheus::IntGauge,
    _fd: Option<crate::descriptors::Slot>,
    _alive: tokio::sync::mpsc::Sender<()>,
}

impl ConnectionEnd {
    fn finish(self, result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
        if let Err(e) = result {
            tracing::debug!(listener = self.name, peer = %self.peer, error = %e, "connection ended with an error");
        }
    }
}

impl Drop for ConnectionEnd {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// Releases a listener connection slot when the connection's task ends.
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
