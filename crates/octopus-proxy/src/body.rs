//! The one body type that flows through every layer: a boxed stream of bytes. Bodies
//! are streamed, never collected, so memory per request stays bounded.
//!
//! A newtype rather than an alias: with the `dyn Error` inside a type alias, rustc
//! cannot prove the request futures `Send` (higher-ranked lifetime inference), and a
//! concrete type also keeps every service signature short.

use crate::cause::find_cause;
use crate::held::Held;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Body {
    inner: http_body_util::combinators::BoxBody<Bytes, BoxError>,
    /// Counts this request holds until its response body is done or dropped (the
    /// listener's admission, the cluster's request slot, the endpoint's in-flight
    /// unit): held in place rather than by a boxed wrapper per layer.
    held: [Option<Held>; HELD_SLOTS],
    /// The cluster that produced this response (an endpoint's answer, or an error
    /// naming one), for metrics labels and retry counters. Carried here rather than
    /// in the response's extensions, whose first insert costs two allocations.
    served_by: Option<Arc<str>>,
}

/// Admission, circuit breaker, in-flight: the most one response carries.
const HELD_SLOTS: usize = 3;

impl Body {
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        Body {
            inner: body.map_err(Into::into).boxed(),
            held: Default::default(),
            served_by: None,
        }
    }

    /// Keeps `held` until this body is dropped.
    pub fn hold(mut self, held: impl Into<Held>) -> Self {
        let held = held.into();
        match self.held.iter_mut().find(|s| s.is_none()) {
            Some(slot) => {
                *slot = Some(held);
                self
            }
            // More than the slots (not on any path today): still correct, one box.
            None => {
                let served_by = self.served_by.take();
                let mut b = Body::new(Guarded::new(self, held));
                b.served_by = served_by;
                b
            }
        }
    }

    /// The cluster that produced this response, if any.
    pub fn served_by(&self) -> Option<&Arc<str>> {
        self.served_by.as_ref()
    }

    pub fn set_served_by(&mut self, cluster: Arc<str>) {
        self.served_by = Some(cluster);
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Body")
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Body::new(Full::new(data.into()))
}

pub fn empty() -> Body {
    Body::new(Empty::<Bytes>::new())
}

pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    Body::new(body)
}

pin_project_lite::pin_project! {
    /// A body that holds `guard` (an in-flight slot, a limit permit) until the body is
    /// dropped: hyper drops it once the last byte is sent or the client goes away.
    pub struct Guarded<B, G> {
        #[pin]
        inner: B,
        guard: G,
    }
}

impl<B, G> Guarded<B, G> {
    pub fn new(inner: B, guard: G) -> Self {
        Guarded { inner, guard }
    }
}

impl<B: http_body::Body, G> http_body::Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What went wrong with a client's request body. It is the client's doing, never
/// the endpoint's: outlier detection, health and retries ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBodyFault {
    /// The client went away (or reset its stream) before the body was complete.
    Aborted,
    /// The body's framing was invalid (e.g. a bad chunk size).
    Malformed,
    /// More than the route's `max_request_body_bytes`.
    TooLarge,
    /// Nothing arrived for `request_body_timeout`.
    Stalled,
}

impl ClientBodyFault {
    fn code(self) -> u8 {
        match self {
            ClientBodyFault::Aborted => 1,
            ClientBodyFault::Malformed => 2,
            ClientBodyFault::TooLarge => 3,
            ClientBodyFault::Stalled => 4,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => ClientBodyFault::Aborted,
            2 => ClientBodyFault::Malformed,
            3 => ClientBodyFault::TooLarge,
            4 => ClientBodyFault::Stalled,
            _ => return None,
        })
    }
}

/// The error a client's request body fails with, whatever layer reads it.
#[derive(Debug, thiserror::Error)]
#[error("{}", match .fault {
    ClientBodyFault::Aborted => "the client aborted the request body",
    ClientBodyFault::Malformed => "malformed request body framing",
    ClientBodyFault::TooLarge => "request body larger than the route's max_request_body_bytes",
    ClientBodyFault::Stalled => "the request body sent nothing for request_body_timeout",
})]
pub struct ClientBodyError {
    pub fault: ClientBodyFault,
    #[source]
    pub source: Option<BoxError>,
}

/// Shared between a request's [`FromClient`] body and the layers below it (a request
/// extension): the endpoint learns that a failed exchange was the client's fault even
/// when the upstream client reports only its own error (an HTTP/2 stream it reset).
/// It also counts the bytes the client sent, for the access log.
#[derive(Debug, Clone, Default)]
pub struct ClientBodyWatch(Arc<WatchState>);

#[derive(Debug, Default)]
struct WatchState {
    fault: AtomicU8,
    bytes: AtomicU64,
}

impl ClientBodyWatch {
    pub fn fault(&self) -> Option<ClientBodyFault> {
        ClientBodyFault::from_code(self.0.fault.load(Ordering::Acquire))
    }
    fn set(&self, f: ClientBodyFault) {
        self.0.fault.store(f.code(), Ordering::Release);
    }
    /// Body bytes received from the client so far.
    pub fn bytes(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }
}

pin_project_lite::pin_project! {
    /// A client's request body as octopus forwards it: its errors become
    /// [`ClientBodyError`]s (reported to the [`ClientBodyWatch`]), it fails once more
    /// than `limit` bytes passed, and once nothing arrived for `idle`. The timer is only
    /// created when the body first has to wait, so bodies that come with their head
    /// never touch the timer wheel.
    pub struct FromClient<B> {
        #[pin]
        inner: B,
        left: Option<u64>,
        idle: Duration,
        timer: Option<Pin<Box<Sleep>>>,
        last_progress: Instant,
        watch: ClientBodyWatch,
        done: bool,
    }
}

impl<B> FromClient<B> {
    pub fn new(inner: B, limit: Option<u64>, idle: Duration, watch: ClientBodyWatch) -> Self {
        FromClient {
            inner,
            left: limit,
            idle,
            timer: None,
            last_progress: Instant::now(),
            watch,
            done: false,
        }
    }
}

/// Malformed framing (hyper reports it as an invalid-input I/O error or a parse
/// error) or, for anything else (EOF, reset, stream cancelled), an abort.
fn classify(e: &(dyn std::error::Error + 'static)) -> ClientBodyFault {
    let parse = find_cause::<hyper::Error>(e).is_some_and(hyper::Error::is_parse);
    let invalid = find_cause::<std::io::Error>(e).is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
        )
    });
    if parse || invalid {
        ClientBodyFault::Malformed
    } else {
        ClientBodyFault::Aborted
    }
}

impl<B> http_body::Body for FromClient<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let fail = |fault: ClientBodyFault, source: Option<BoxError>, done: &mut bool| {
            this.watch.set(fault);
            *done = true;
            Poll::Ready(Some(Err(
                Box::new(ClientBodyError { fault, source }) as BoxError
            )))
        };
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.watch
                        .0
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if let (Some(left), Some(data)) = (this.left.as_mut(), frame.data_ref()) {
                    let n = data.len() as u64;
                    if n > *left {
                        return fail(ClientBodyFault::TooLarge, None, this.done);
                    }
                    *left -= n;
                }
                if this.timer.is_some() {
                    *this.last_progress = Instant::now();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                let fault = classify(&*e);
                fail(fault, Some(e), this.done)
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let idle = *this.idle;
                let timer = this.timer.get_or_insert_with(|| {
                    *this.last_progress = Instant::now();
                    Box::pin(tokio::time::sleep(idle))
                });
                // Progress only records when data came; the timer is moved to the new
                // deadline when it fires, so a flowing body costs no timer updates.
                while timer.as_mut().poll(cx).is_ready() {
                    let deadline = *this.last_progress + idle;
                    if deadline <= Instant::now() {
                        return fail(ClientBodyFault::Stalled, None, this.done);
                    }
                    timer.as_mut().reset(deadline);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn watched(
        body: impl http_body::Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static,
        limit: Option<u64>,
    ) -> (Body, ClientBodyWatch) {
        let watch = ClientBodyWatch::default();
        let b = Body::new(FromClient::new(
            body,
            limit,
            Duration::from_millis(100),
            watch.clone(),
        ));
        (b, watch)
    }

    #[tokio::test]
    async fn limit_is_enforced_and_reported() {
        let (b, watch) = watched(full(vec![0u8; 10]), Some(5));
        let err = b.collect().await.unwrap_err();
        let e = err.downcast_ref::<ClientBodyError>().unwrap();
        assert_eq!(e.fault, ClientBodyFault::TooLarge);
        assert_eq!(watch.fault(), Some(ClientBodyFault::TooLarge));
        let (b, watch) = watched(full(vec![0u8; 5]), Some(5));
        assert_eq!(b.collect().await.unwrap().to_bytes().len(), 5);
        assert_eq!(watch.fault(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_idle_but_a_slow_one_does_not() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let stream = http_body_util::StreamBody::new(futures_util::stream::unfold(
            rx,
            |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
            },
        ));
        let (b, watch) = watched(stream, None);
        let reader = tokio::spawn(b.collect());
        // A chunk every 60 ms keeps a 100 ms idle timeout from firing.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(60)).await;
            tx.send(Bytes::from_static(b"x")).await.unwrap();
        }
        // Then nothing for longer than the timeout.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(
            err.downcast_ref::<ClientBodyError>().unwrap().fault,
            ClientBodyFault::Stalled
        );
        assert_eq!(watch.fault(), Some(ClientBodyFault::Stalled));
        drop(tx);
    }

    #[tokio::test]
    async fn read_errors_are_the_clients() {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid chunk size");
        assert_eq!(classify(&io), ClientBodyFault::Malformed);
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "eof");
        assert_eq!(classify(&eof), ClientBodyFault::Aborted);
    }
}
