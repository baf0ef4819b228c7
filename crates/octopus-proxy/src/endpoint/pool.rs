//! One endpoint's upstream connections, over hyper's connection-level client.
//!
//! Why not hyper-util's pooled client: it keys every checkout by a hashed
//! (scheme, authority) in a map behind one lock, spawns a task per HTTP/1.1 request
//! to wait for the connection to become idle again, and keeps every idle connection
//! it ever opened. Here each endpoint owns its pool outright (the balancer already
//! picked the endpoint, so there is nothing to look up), a connection goes back the
//! moment its response body ends, and the idle set is bounded.
//!
//! HTTP/1.1: one request per connection at a time. Idle connections are a LIFO stack:
//! the most recently used one is reused first (least likely to have been closed by
//! the upstream's own idle timeout), the oldest ones sit at the bottom where the
//! sweeper closes them after `idle_timeout`. `max_idle_per_endpoint` bounds what stays
//! idle once traffic drops: connections beyond it are closed after `SURPLUS_GRACE`
//! without a request. Closing them at check-in instead would make every request beyond
//! that concurrency dial and close a connection of its own (measured: h2c clients with
//! 320 requests in flight to an HTTP/1.1 cluster fell from ~23k to 6.6k req/s).
//!
//! HTTP/2: requests share connections, up to `max_streams_per_connection` in flight on
//! each; one more is dialled only when all are full. Only one dial is in progress at a
//! time, so a burst of requests at start-up opens one connection, not one each.
//!
//! Dead connections: hyper's connection task notices an upstream close on an idle
//! connection (it keeps reading), so a closed one is skipped at checkout. If the close
//! races the checkout, hyper hands the request back unsent and it goes to the next
//! connection (or a new one), so a request is never failed by a connection that died
//! before it was written.

use super::connector::{ConnectError, Connector};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::body::Body;
use http::{Request, Response};

/// The pool's limits (from the cluster's `pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub max_idle: usize,
    pub idle_timeout: Duration,
    pub max_streams: usize,
}

impl PoolSettings {
    pub fn of(c: &octopus_config::PoolConfig) -> Self {
        PoolSettings {
            max_idle: c.max_idle_per_endpoint as usize,
            idle_timeout: c.idle_timeout.get(),
            max_streams: c.max_streams_per_connection.max(1) as usize,
        }
    }
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings::of(&octopus_config::PoolConfig::default())
    }
}

/// Counters of connections opened, closed and failed to open, for the cluster's
/// `octopus_upstream_connections_*_total` series. Optional so unit tests and benches
/// can build endpoints without a registry.
#[derive(Clone)]
pub struct PoolCounters {
    pub opened: prometheus::IntCounter,
    pub closed: prometheus::IntCounter,
    pub failed: prometheus::IntCounter,
    /// Bytes over the cluster's connections (`octopus_upstream_bytes_total`).
    pub bytes: crate::counted::ByteCounters,
}

/// What went wrong getting a response through the pool.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError {
    /// No connection could be made; shared by every request that waited on the dial.
    #[error(transparent)]
    Connect(Arc<ConnectError>),
    /// The exchange failed on a connection.
    #[error(transparent)]
    Request(hyper::Error),
}

/// Connections of one endpoint at one moment, for metrics and `/clusters`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open (idle or not).
    pub open: usize,
    /// Open connections carrying no request.
    pub idle: usize,
}

struct IdleConn {
    tx: http1::SendRequest<Body>,
    since: Instant,
}

struct H2Conn {
    tx: http2::SendRequest<Body>,
    /// Requests in flight on it (response bodies included).
    streams: Arc<AtomicUsize>,
    /// Given a stream since the last sweep.
    used: bool,
    /// Sweeps in a row that found it unused and without streams.
    quiet: u32,
}

#[derive(Default)]
struct State {
    idle: VecDeque<IdleConn>,
    h2: Vec<H2Conn>,
    /// An HTTP/2 dial is in progress; others wait for it rather than dial too.
    dialing: bool,
    /// Completed HTTP/2 dials, and why the last one failed (if it did): a waiter that
    /// slept through a failed dial shares its error instead of dialling again.
    dials: u64,
    dial_error: Option<Arc<ConnectError>>,
}

pub(crate) struct Pool {
    connector: Connector,
    http2: bool,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    settings: PoolSettings,
    state: Mutex<State>,
    dialled: Notify,
    open: Arc<AtomicUsize>,
    counters: Option<PoolCounters>,
    sweeping: AtomicBool,
    /// HTTP/1.1 requests sent on a connection an earlier request used.
    reused: AtomicU64,
}

/// How long an idle connection beyond `max_idle_per_endpoint` is kept for the next
/// request before it is closed.
const SURPLUS_GRACE: Duration = Duration::from_secs(1);

/// hyper asserts its HTTP/1.1 read buffer is at least this large.
const MIN_READ_BUF: usize = 8192;

impl Pool {
    /// What this pool dials with, for a connection that bypasses the pool (opaque TCP).
    pub(crate) fn connector(&self) -> &Connector {
        &self.connector
    }

    pub(crate) fn new(
        connector: Connector,
        http2: bool,
        max_header_bytes: u32,
        max_headers: u32,
        settings: PoolSettings,
        counters: Option<PoolCounters>,
    ) -> Arc<Self> {
        let mut h1 = http1::Builder::new();
        h1.max_buf_size((max_header_bytes as usize).max(MIN_READ_BUF))
            .max_headers(max_headers as usize);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(max_header_bytes);
        Arc::new(Pool {
            connector,
            http2,
            h1,
            h2,
            settings,
            state: Mutex::new(State::default()),
            dialled: Notify::new(),
            open: Arc::new(AtomicUsize::new(0)),
            counters,
            sweeping: AtomicBool::new(false),
            reused: AtomicU64::new(0),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let st = self.state();
        let idle = if self.http2 {
            st.h2
                .iter()
                .filter(|c| c.streams.load(Ordering::Relaxed) == 0)
                .count()
        } else {
            st.idle.len()
        };
        let open = self.open.load(Ordering::Relaxed);
        PoolStats {
            open,
            idle: idle.min(open),
        }
    }

    pub(crate) fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }

    /// Sends `req` on a pooled connection (or a new one) and returns the response,
    /// whose body returns the connection to the pool when it ends.
    pub(crate) async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
    ) -> Result<Response<PooledBody>, PoolError> {
        if self.http2 {
            self.send_h2(req).await
        } else {
            self.send_h1(req).await
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<Response<PooledBody>, PoolError> {
        while let Some(mut tx) = self.checkout_h1() {
            // A connection goes back when its body ends, possibly a moment before hyper
            // has finished the exchange: wait for it (an error means it is closing).
            if !tx.is_ready() && tx.ready().await.is_err() {
                continue;
            }
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    self.reused.fetch_add(1, Ordering::Relaxed);
                    return Ok(self.h1_response(resp, tx));
                }
                Err(mut e) => match e.take_message() {
                    // Closed before the request was written: try the next connection.
                    Some(back) => req = back,
                    None => return Err(PoolError::Request(e.into_error())),
                },
            }
        }
        // Boxed: the dial (TCP connect, TLS handshake) is the rare path, and inline it
        // would make every request's future as large as a TLS handshake's state.
        let mut tx = Box::pin(self.dial_h1()).await.map_err(PoolError::Connect)?;
        match tx.try_send_request(req).await {
            Ok(resp) => Ok(self.h1_response(resp, tx)),
            Err(e) => Err(PoolError::Request(e.into_error())),
        }
    }

    /// The newest idle connection that is neither closed nor past its idle timeout.
    fn checkout_h1(&self) -> Option<http1::SendRequest<Body>> {
        let mut st = self.state();
        while let Some(c) = st.idle.pop_back() {
            if !c.tx.is_closed() && c.since.elapsed() < self.settings.idle_timeout {
                return Some(c.tx);
            }
        }
        None
    }

    fn h1_response(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        tx: http1::SendRequest<Body>,
    ) -> Response<PooledBody> {
        // After a 101 the connection belongs to the tunnel; it never comes back.
        let back = if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            Return::Never { _conn: tx }
        } else {
            Return::H1(tx, self.clone())
        };
        resp.map(|inner| PooledBody {
            inner,
            back: Some(back),
        })
    }

    fn checkin_h1(self: &Arc<Self>, tx: http1::SendRequest<Body>) {
        if tx.is_closed() || self.settings.max_idle == 0 {
            return;
        }
        // Beyond `max_idle` it is kept too, for `SURPLUS_GRACE` (see the module doc);
        // the sweeper closes the surplus, oldest first.
        self.state().idle.push_back(IdleConn {
            tx,
            since: Instant::now(),
        });
        self.start_sweeper();
    }

    async fn send_h2(
        self: &Arc<Self>,
        req: Request<Body>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let (mut tx, streams) = self.checkout_h2().await?;
        match tx.send_request(req).await {
            Ok(resp) => Ok(resp.map(|inner| PooledBody {
                inner,
                back: Some(Return::H2 {
                    _stream: StreamGuard(streams),
                }),
            })),
            Err(e) => {
                drop(StreamGuard(streams));
                Err(PoolError::Request(e))
            }
        }
    }

    /// A stream on a connection with room, dialling one when none has any. The dial
    /// runs on its own task, so a request that gives up (its client went away) never
    /// leaves the others waiting on a dial nobody finishes.
    async fn checkout_h2(
        self: &Arc<Self>,
    ) -> Result<(http2::SendRequest<Body>, Arc<AtomicUsize>), PoolError> {
        loop {
            let notified = self.dialled.notified();
            tokio::pin!(notified);
            let dials = {
                let mut st = self.state();
                st.h2.retain(|c| !c.tx.is_closed());
                let max = self.settings.max_streams;
                if let Some(c) = st
                    .h2
                    .iter_mut()
                    .find(|c| c.tx.is_ready() && c.streams.load(Ordering::Relaxed) < max)
                {
                    c.streams.fetch_add(1, Ordering::Relaxed);
                    c.used = true;
                    return Ok((c.tx.clone(), c.streams.clone()));
                }
                // Registered under the lock the dial's completion takes: no lost wake-up.
                notified.as_mut().enable();
                if !st.dialing {
                    st.dialing = true;
                    let pool = self.clone();
                    tokio::spawn(async move {
                        let dialled = pool.dial_h2().await;
                        pool.dial_done(dialled);
                    });
                }
                st.dials
            };
            notified.await;
            let st = self.state();
            if st.dials != dials {
                if let Some(e) = &st.dial_error {
                    return Err(PoolError::Connect(e.clone()));
                }
            }
        }
    }

    fn dial_done(self: &Arc<Self>, dialled: Result<http2::SendRequest<Body>, Arc<ConnectError>>) {
        let mut st = self.state();
        st.dialing = false;
        st.dials += 1;
        match dialled {
            Ok(tx) => {
                st.dial_error = None;
                st.h2.push(H2Conn {
                    tx,
                    streams: Arc::new(AtomicUsize::new(0)),
                    used: true,
                    quiet: 0,
                });
            }
            Err(e) => st.dial_error = Some(e),
        }
        drop(st);
        self.dialled.notify_waiters();
        self.start_sweeper();
    }

    /// Counts a failed dial (not octopus declining to dial: its own limits) and
    /// shares its error with every request that waited on it.
    fn dial_failed(&self, e: ConnectError) -> Arc<ConnectError> {
        if e.is_dial_failure() {
            if let Some(c) = &self.counters {
                c.failed.inc();
            }
        }
        Arc::new(e)
    }

    async fn dial_h1(&self) -> Result<http1::SendRequest<Body>, Arc<ConnectError>> {
        let dialled = async {
            let io = self.connector.connect().await?;
            self.h1.handshake(io).await.map_err(ConnectError::Handshake)
        };
        let (tx, conn) = dialled.await.map_err(|e| self.dial_failed(e))?;
        self.run(conn.with_upgrades());
        Ok(tx)
    }

    async fn dial_h2(&self) -> Result<http2::SendRequest<Body>, Arc<ConnectError>> {
        let dialled = async {
            let io = self.connector.connect().await?;
            self.h2.handshake(io).await.map_err(ConnectError::Handshake)
        };
        let (tx, conn) = dialled.await.map_err(|e| self.dial_failed(e))?;
        self.run(conn);
        Ok(tx)
    }

    /// Drives a new connection on its own task until it closes, counting it open.
    fn run<F>(&self, conn: F)
    where
        F: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
    {
        self.open.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = &self.counters {
            c.opened.inc();
        }
        let (open, closed) = (
            self.open.clone(),
            self.counters.as_ref().map(|c| c.closed.clone()),
        );
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
            open.fetch_sub(1, Ordering::Relaxed);
            if let Some(c) = closed {
                c.inc();
            }
        });
    }

    /// Closes idle connections past `idle_timeout` (every quarter of it) and the
    /// surplus beyond `max_idle` (every `SURPLUS_GRACE`). Runs while the pool has
    /// connections and exists: started by a check-in or a dial, so an unused endpoint
    /// costs no timer and building a pool needs no runtime.
    fn start_sweeper(self: &Arc<Self>) {
        // Every check-in gets here: a load first keeps the common case (a sweeper is
        // running) free of a read-modify-write.
        if self.sweeping.load(Ordering::Acquire) || self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool: Weak<Pool> = Arc::downgrade(self);
        let every = self.sweep_every();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                if !pool.sweep() {
                    return;
                }
            }
        });
    }

    fn sweep_every(&self) -> Duration {
        (self.settings.idle_timeout / 4)
            .min(SURPLUS_GRACE)
            .max(Duration::from_millis(5))
    }

    /// One sweep; `false` when nothing is left to sweep, and the sweeper stops (a
    /// later check-in or dial starts it again: it sees `sweeping` cleared under the
    /// same lock).
    fn sweep(&self) -> bool {
        let timeout = self.settings.idle_timeout;
        let quiet_limit = (timeout.as_millis() / self.sweep_every().as_millis()).max(1) as u32;
        let mut st = self.state();
        // The surplus beyond `max_idle`, oldest first, once it waited `SURPLUS_GRACE`.
        while st.idle.len() > self.settings.max_idle
            && st
                .idle
                .front()
                .is_some_and(|c| c.since.elapsed() >= SURPLUS_GRACE)
        {
            st.idle.pop_front();
        }
        // Past the idle timeout; oldest at the front: stop at the first one still fresh.
        while st
            .idle
            .front()
            .is_some_and(|c| c.tx.is_closed() || c.since.elapsed() >= timeout)
        {
            st.idle.pop_front();
        }
        st.idle.retain(|c| !c.tx.is_closed());
        // An HTTP/2 connection is closed once it has carried nothing for about
        // `idle_timeout` (that many sweeps in a row without a stream).
        st.h2.retain_mut(|c| {
            if c.streams.load(Ordering::Relaxed) > 0 || std::mem::take(&mut c.used) {
                c.quiet = 0;
            } else {
                c.quiet += 1;
            }
            !c.tx.is_closed() && c.quiet < quiet_limit
        });
        let more = !st.idle.is_empty() || !st.h2.is_empty();
        if !more {
            self.sweeping.store(false, Ordering::Release);
        }
        more
    }
}

/// Where a response's connection goes when its body is done.
enum Return {
    H1(http1::SendRequest<Body>, Arc<Pool>),
    /// Held until the body is dropped (a 101's connection), never reused.
    Never {
        _conn: http1::SendRequest<Body>,
    },
    /// The stream's slot, freed when the body is done or dropped.
    H2 {
        _stream: StreamGuard,
    },
}

/// Frees an HTTP/2 stream slot when dropped.
struct StreamGuard(Arc<AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body from the pool: the upstream's body, and the connection (or stream
/// slot) it came on, given back when the body has been read to its end. A body dropped
/// before its end takes its HTTP/1.1 connection with it: the rest of that response
/// would still be on the wire.
pub(crate) struct PooledBody {
    inner: Incoming,
    back: Option<Return>,
}

impl PooledBody {
    fn finish(&mut self) {
        if let Some(Return::H1(tx, pool)) = self.back.take() {
            pool.checkin_h1(tx);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Ok(_))) if http_body::Body::is_end_stream(&self.inner) => {
                self.finish()
            }
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304) may never be polled: it is done all the same.
        if http_body::Body::is_end_stream(&self.inner) {
            self.finish();
        }
    }
}
