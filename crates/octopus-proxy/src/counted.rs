//! Byte counters on a connection: a transparent `AsyncRead`/`AsyncWrite` wrapper that
//! adds what passes through to two counters (received, sent). One relaxed atomic add
//! per read or write call; no allocation beyond the two counter handles per
//! connection. Over TLS it counts the plaintext (HTTP bytes, not record overhead).

use prometheus::IntCounter;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The `received` and `sent` counters of one side of a connection.
#[derive(Clone)]
pub struct ByteCounters {
    pub received: IntCounter,
    pub sent: IntCounter,
}

pin_project_lite::pin_project! {
    pub struct Counted<T> {
        #[pin]
        inner: T,
        counters: Option<ByteCounters>,
    }
}

impl<T> Counted<T> {
    /// Counts into `counters`; with `None` (endpoints built without metrics, in tests)
    /// it only passes through.
    pub fn new(inner: T, counters: Option<ByteCounters>) -> Self {
        Counted { inner, counters }
    }
}

impl<T: AsyncRead> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if let (Some(c), true) = (this.counters.as_ref(), n > 0) {
            c.received.inc_by(n as u64);
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, buf);
        if let (Some(c), Poll::Ready(Ok(n))) = (this.counters.as_ref(), &polled) {
            c.sent.inc_by(*n as u64);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write_vectored(cx, bufs);
        if let (Some(c), Poll::Ready(Ok(n))) = (this.counters.as_ref(), &polled) {
            c.sent.inc_by(*n as u64);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_both_ways() {
        let counters = ByteCounters {
            received: IntCounter::new("r", "r").unwrap(),
            sent: IntCounter::new("s", "s").unwrap(),
        };
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = Counted::new(a, Some(counters.clone()));
        a.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.unwrap();
        b.write_all(b"ok").await.unwrap();
        let mut back = [0u8; 2];
        a.read_exact(&mut back).await.unwrap();
        assert_eq!((counters.sent.get(), counters.received.get()), (5, 2));
    }
}
