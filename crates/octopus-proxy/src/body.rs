//! The one body type that flows through every layer: a boxed stream of bytes. Bodies
//! are streamed, never collected, so memory per request stays bounded.
//!
//! A newtype rather than an alias: with the `dyn Error` inside a type alias, rustc
//! cannot prove the request futures `Send` (higher-ranked lifetime inference), and a
//! concrete type also keeps every service signature short.

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use std::pin::Pin;
use std::task::{Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Body(http_body_util::combinators::BoxBody<Bytes, BoxError>);

impl Body {
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        Body(body.map_err(Into::into).boxed())
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
        Pin::new(&mut self.0).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
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

/// The error a [`Limited`] body fails with once it passes its limit.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than the route's max_request_body_bytes")]
pub struct TooLarge;

pin_project_lite::pin_project! {
    /// A request body that fails with [`TooLarge`] once more than `limit` bytes passed.
    pub struct Limited<B> {
        #[pin]
        inner: B,
        left: u64,
    }
}

impl<B> Limited<B> {
    pub fn new(inner: B, limit: u64) -> Self {
        Limited { inner, left: limit }
    }
}

impl<B> http_body::Body for Limited<B>
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
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                if n > *this.left {
                    return Poll::Ready(Some(Err(Box::new(TooLarge))));
                }
                *this.left -= n;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a proxy error was caused by a [`Limited`] body passing its limit.
pub fn is_too_large(e: &crate::ProxyError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if err.is::<TooLarge>() {
            return true;
        }
        cur = err.source();
    }
    false
}
