//! Programmable upstream servers for octopus' tests and `make run`'s demo.
//!
//! An [`Upstream`] is a real HTTP server on 127.0.0.1 (HTTP/1.1 and h2c, or h2c only)
//! whose behaviour is chosen per request by path:
//!
//! | path | answer |
//! |---|---|
//! | `/status/NNN` | status NNN |
//! | `/delay/MS` | waits MS milliseconds, then the echo |
//! | `/echo-body` | streams the request body back |
//! | `/collect-body` | reads the whole request body, then answers its length |
//! | `/bytes/N` | N bytes, streamed in 64 KiB chunks |
//! | any, with `Upgrade:` | 101, then echoes raw bytes on the upgraded connection |
//! | `/healthz` | the status set by [`Upstream::set_health`] (200 by default) |
//! | anything else | JSON: upstream name, method, path, HTTP version, headers |
//!
//! Every response carries `x-upstream: <name>`. [`Upstream::hits`] counts requests
//! (health checks excluded); [`Upstream::set_delay`] slows every answer.
#![forbid(unsafe_code)]

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

mod keepalive;
pub use keepalive::{KeepAlive, KeepAliveServer};

pub type TestBody = BoxBody<Bytes, hyper::Error>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// HTTP/1.1 and h2c prior knowledge, detected per connection.
    Auto,
    /// h2c only: an HTTP/1.1 request fails.
    Http2Only,
    /// HTTP/1.1 only.
    Http1Only,
}

/// Behaviour a test can change while the server runs.
#[derive(Default)]
struct Knobs {
    delay_ms: AtomicU64,
    /// 0 means 200.
    health: AtomicU16,
    /// When non-zero, every answer but health checks has this status.
    status: AtomicU16,
    /// Every other new connection is reset once its first request arrives, and the
    /// others close after one answer, so the resets go on for as long as it is set.
    reset_half: std::sync::atomic::AtomicBool,
}

pub struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    knobs: Arc<Knobs>,
    task: JoinHandle<()>,
    /// Tasks of open connections, so `kill` can cut them like a crash would.
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    peak_connections: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl Upstream {
    /// An upstream on an ephemeral 127.0.0.1 port speaking HTTP/1.1 and h2c.
    pub async fn start(name: &str) -> Upstream {
        Self::start_with(
            name,
            Protocols::Auto,
            "127.0.0.1:0".parse().expect("literal address"),
        )
        .await
    }

    pub async fn start_h2(name: &str) -> Upstream {
        Self::start_with(
            name,
            Protocols::Http2Only,
            "127.0.0.1:0".parse().expect("literal address"),
        )
        .await
    }

    /// Panics when the address cannot be bound: a test or demo set-up error.
    pub async fn start_with(name: &str, protocols: Protocols, addr: SocketAddr) -> Upstream {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind upstream {name} on {addr}: {e}"));
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let hits = Arc::new(AtomicUsize::new(0));
        let knobs = Arc::new(Knobs::default());
        let name: Arc<str> = name.into();
        let h = hits.clone();
        let k = knobs.clone();
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let c = conns.clone();
        let peak_connections = Arc::new(AtomicUsize::new(0));
        let peak = peak_connections.clone();
        let accepted_total = Arc::new(AtomicUsize::new(0));
        let counted = accepted_total.clone();
        let task = tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            match protocols {
                Protocols::Auto => {}
                Protocols::Http2Only => builder = builder.http2_only(),
                Protocols::Http1Only => builder = builder.http1_only(),
            }
            let mut accepted = 0u64;
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted += 1;
                counted.fetch_add(1, Ordering::SeqCst);
                if k.reset_half.load(Ordering::SeqCst) && accepted % 2 == 1 {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 4096];
                        let _ = stream.read(&mut buf).await;
                        reset(stream);
                    });
                    continue;
                }
                let (name, hits, knobs, builder) =
                    (name.clone(), h.clone(), k.clone(), builder.clone());
                let conn = tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        if req.uri().path() != "/healthz" {
                            hits.fetch_add(1, Ordering::SeqCst);
                        }
                        respond(name.clone(), knobs.clone(), req)
                    });
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
                let mut open = c.lock().unwrap_or_else(|p| p.into_inner());
                open.retain(|h| !h.is_finished());
                open.push(conn.abort_handle());
                peak.fetch_max(open.len(), Ordering::SeqCst);
            }
        });
        Upstream {
            addr,
            hits,
            knobs,
            task,
            conns,
            peak_connections,
            accepted: accepted_total,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The most connections that were open at once.
    pub fn peak_connections(&self) -> usize {
        self.peak_connections.load(Ordering::SeqCst)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Crashes the server: stops accepting and drops every open connection at once
    /// (in-flight requests see a reset). Start a new one on `addr()` to restart it.
    pub fn kill(&self) {
        self.task.abort();
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            c.abort();
        }
    }

    /// Every later answer waits this long first (upgrades and health checks excepted).
    pub fn set_delay(&self, delay: Duration) {
        self.knobs
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Every later answer (health checks excepted) has this status; 0 restores normal
    /// behaviour.
    pub fn set_status(&self, status: u16) {
        self.knobs.status.store(status, Ordering::SeqCst);
    }

    /// Resets every other new connection after its first request arrives, and closes
    /// the rest after one answer (see `Knobs::reset_half`); `false` stops it.
    pub fn set_reset_half(&self, on: bool) {
        self.knobs.reset_half.store(on, Ordering::SeqCst);
    }

    /// The status `/healthz` answers from now on.
    pub fn set_health(&self, status: u16) {
        self.knobs.health.store(status, Ordering::SeqCst);
    }

    /// Stops accepting; established connections end when their tasks next fail.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address nothing listens on: connecting to it is refused.
pub async fn dead_address() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind ephemeral port");
    let addr = l.local_addr().expect("bound listener has an address");
    drop(l);
    addr
}

/// A raw TCP server on an ephemeral 127.0.0.1 port that runs `handle` on each
/// accepted connection in a task of its own: the upstreams that misbehave below HTTP.
async fn raw_server<F, Fut>(handle: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind ephemeral port");
    let addr = l.local_addr().expect("bound listener has an address");
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(handle(s));
        }
    });
    (addr, task)
}

/// Closes `s` with a reset (RST) instead of a FIN: linger 0 is the point here.
fn reset(s: TcpStream) {
    #[allow(deprecated)]
    let _ = s.set_linger(Some(Duration::ZERO));
    drop(s);
}

/// A server that accepts connections and closes them at once, before any response:
/// what a crashing or resetting upstream looks like.
pub async fn closing_server() -> (SocketAddr, JoinHandle<()>) {
    raw_server(|mut s| async move {
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
    })
    .await
}

/// A server that reads each request, starts a response head, then resets the
/// connection (RST): a crash mid-response, before anything usable was sent.
pub async fn resetting_server() -> (SocketAddr, JoinHandle<()>) {
    raw_server(|mut s| async move {
        let mut buf = [0u8; 4096];
        if s.read(&mut buf).await.unwrap_or(0) > 0 {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Le").await;
        }
        reset(s);
    })
    .await
}

/// What a [`malicious_server`] answers to every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// A valid status line followed by this many bytes of header fields.
    HugeHead(usize),
    /// Header fields forever, a line at a time, until the peer goes away.
    EndlessHeaders,
    /// Bytes that are not an HTTP response.
    Garbage,
    /// A 200 with `Content-Length: 1000` and only 10 bytes of body, then a close.
    ShortBody,
    /// A 200 whose body is framed `Transfer-Encoding: gzip, chunked`.
    ForeignTransferCoding,
}

/// A hostile HTTP/1.1 upstream: reads a request head, then misbehaves as told.
pub async fn malicious_server(how: Misbehaviour) -> (SocketAddr, JoinHandle<()>) {
    raw_server(move |mut s| async move {
        let mut buf = [0u8; 4096];
        if s.read(&mut buf).await.unwrap_or(0) == 0 {
            return;
        }
        match how {
            Misbehaviour::HugeHead(n) => {
                let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
                let line = format!("x-filler: {}\r\n", "a".repeat(990));
                while head.len() < n {
                    head.extend_from_slice(line.as_bytes());
                }
                head.extend_from_slice(b"content-length: 0\r\n\r\n");
                let _ = s.write_all(&head).await;
            }
            Misbehaviour::EndlessHeaders => {
                let line = format!("x-more: {}\r\n", "b".repeat(1000));
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
                while s.write_all(line.as_bytes()).await.is_ok() {}
            }
            Misbehaviour::Garbage => {
                let _ = s.write_all(b"\x00\x01 this is not HTTP \xff\r\n\r\n").await;
            }
            Misbehaviour::ForeignTransferCoding => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nxxxxx\r\n0\r\n\r\n")
                    .await;
            }
            Misbehaviour::ShortBody => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                    .await;
                return;
            }
        }
        // Keep the socket until the proxy gives up, so the proxy, not the close,
        // decides the outcome.
        let _ = s.read(&mut buf).await;
    })
    .await
}

/// An HTTP/1.1 app server that takes `h2c` upgrades the way hypercorn does: it
/// answers `101 Switching Protocols` to a request offering `Upgrade: h2c` (or, when
/// `always_switch` is set, to every request: a hostile app) and from then on treats
/// the connection as a tunnel. It records every request head it parsed and every
/// byte that reached it through a tunnel, so a test can prove what the app received.
pub struct RawApp {
    addr: SocketAddr,
    seen: Arc<std::sync::Mutex<RawSeen>>,
    task: JoinHandle<()>,
}

#[derive(Debug, Default, Clone)]
pub struct RawSeen {
    /// Request heads as received, lower-cased.
    pub heads: Vec<String>,
    /// Bytes received on connections after a 101.
    pub tunnelled: Vec<u8>,
}

impl RawApp {
    pub async fn start(always_switch: bool) -> RawApp {
        let seen = Arc::new(std::sync::Mutex::new(RawSeen::default()));
        let record = seen.clone();
        let (addr, task) =
            raw_server(move |s| raw_app_connection(s, always_switch, record.clone())).await;
        RawApp { addr, seen, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn seen(&self) -> RawSeen {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for RawApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw_app_connection(
    mut s: TcpStream,
    always_switch: bool,
    seen: Arc<std::sync::Mutex<RawSeen>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut switched = false;
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if switched {
            seen.lock()
                .unwrap_or_else(|p| p.into_inner())
                .tunnelled
                .extend_from_slice(&chunk[..n]);
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_ascii_lowercase();
            let rest = buf.split_off(end + 4);
            buf = rest;
            let offers_h2c = head.lines().any(|l| {
                l.strip_prefix("upgrade:")
                    .is_some_and(|v| v.contains("h2c"))
            });
            seen.lock()
                .unwrap_or_else(|p| p.into_inner())
                .heads
                .push(head);
            if offers_h2c || always_switch {
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n")
                    .await;
                switched = true;
                if !buf.is_empty() {
                    seen.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .tunnelled
                        .extend_from_slice(&buf);
                }
                break;
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-upstream: raw-app\r\n\r\nok")
                .await;
        }
    }
}

fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

async fn respond(
    name: Arc<str>,
    knobs: Arc<Knobs>,
    mut req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_string();
    let req_is_http1 = req.version() == http::Version::HTTP_11;
    let delay = knobs.delay_ms.load(Ordering::SeqCst);
    if delay > 0 && path != "/healthz" && !req.headers().contains_key(header::UPGRADE) {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut resp = if path == "/healthz" {
        let mut r = Response::new(full(format!("health of {name}\n")));
        let code = knobs.health.load(Ordering::SeqCst);
        *r.status_mut() =
            StatusCode::from_u16(if code == 0 { 200 } else { code }).unwrap_or(StatusCode::OK);
        r
    } else if req.headers().contains_key(header::UPGRADE) {
        upgrade(&mut req)
    } else if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(full(format!("status {code} from {name}\n")));
        *r.status_mut() = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        r
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        Response::new(full(describe(&name, &req)))
    } else if path == "/collect-body" {
        // Like most apps: read the whole body, then answer (its length).
        match req.into_body().collect().await {
            Ok(b) => Response::new(full(format!("{}\n", b.to_bytes().len()))),
            Err(_) => {
                let mut r = Response::new(full("body failed\n"));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                r
            }
        }
    } else if path == "/echo-body" {
        Response::new(req.into_body().boxed())
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        Response::new(stream_bytes(n.parse().unwrap_or(0)))
    } else {
        Response::new(full(describe(&name, &req)))
    };
    let forced = knobs.status.load(Ordering::SeqCst);
    if forced != 0 && path != "/healthz" {
        *resp.status_mut() =
            StatusCode::from_u16(forced).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    }
    if let Ok(v) = HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-upstream", v);
    }
    if knobs.reset_half.load(Ordering::SeqCst) && req_is_http1 {
        // One answer per connection keeps new connections, and so resets, coming.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
}

fn describe(name: &str, req: &Request<Incoming>) -> String {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            )
        })
        .collect();
    let v = serde_json::json!({
        "upstream": name,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "authority": req.uri().authority().map(|a| a.as_str()),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    format!("{v}\n")
}

fn stream_bytes(n: usize) -> TestBody {
    BodyExt::boxed(Repeat {
        left: n,
        chunk: Bytes::from(vec![b'x'; 64 * 1024]),
    })
}

/// `left` bytes of `x`, produced chunk by chunk as the reader pulls them.
struct Repeat {
    left: usize,
    chunk: Bytes,
}

impl http_body::Body for Repeat {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let take = self.left.min(self.chunk.len());
        self.left -= take;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..take)))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left as u64)
    }
}

/// Answers 101 and echoes raw bytes on the upgraded connection until the peer closes.
fn upgrade(req: &mut Request<Incoming>) -> Response<TestBody> {
    let on = hyper::upgrade::on(&mut *req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on.await {
            let mut io = TokioIo::new(upgraded);
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let proto = req
        .headers()
        .get(header::UPGRADE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("websocket"));
    r.headers_mut().insert(header::UPGRADE, proto);
    r
}
