//! Carrying an opaque connection: bytes both ways until both sides are done (a
//! half-close is passed on, so request/response protocols that shut down their write
//! side still get their answer), or until no byte has moved either way for the idle
//! timeout.

use super::{Destination, Upstream};
use crate::activity::Activity;
use crate::counted::{ByteCounters, Counted};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Each direction's copy buffer. Measured with iperf3 through one sidecar (bench/tcp.py,
/// 3 s runs): 8 KiB (tokio's default) 15.5 Gbit/s, 16 KiB 18.3, 32 KiB 26.5, 64 KiB 17.0;
/// the two-sidecar paths moved less than 10 % across sizes. 16 KiB keeps an open
/// connection at 32 KiB of buffers (a thousand idle database connections: 32 MiB).
const BUF: usize = 16 * 1024;

/// Carries `client` <-> `upstream`; `greeting` (what the server said before the
/// client spoke, read during detection) goes to the client first. Returns the bytes
/// received from the client and sent to it.
pub async fn carry<C>(
    client: C,
    upstream: Upstream,
    greeting: &[u8],
    dest: &Destination,
) -> (u64, u64)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let m = dest.metrics();
    m.ok.inc();
    m.open.inc();
    let _open = Open(m.open.clone());
    let counters = ByteCounters {
        received: m.received.clone(),
        sent: m.sent.clone(),
    };
    let clock = Arc::new(Activity::new());
    let mut client = Touch::new(Counted::new(client, Some(counters)), clock.clone());
    let mut upstream = upstream;
    upstream.carried();
    let mut upstream = Touch::new(upstream, clock.clone());
    if !greeting.is_empty() {
        if let Err(e) = client.write_all(greeting).await {
            tracing::debug!(error = %e, "client left before the server's greeting");
            return (client.read, client.written);
        }
    }
    let idle = dest.idle_timeout();
    tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUF, BUF) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "TCP connection ended with an error");
            }
        }
        _ = clock.idle_for(idle) => {
            tracing::debug!(?idle, "TCP connection idle; closed");
        }
    }
    (client.read, client.written)
}

/// Lowers the open-connections gauge however the connection ends.
struct Open(prometheus::IntGauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Marks activity on every read that brings bytes, and counts what is read and
/// written (for the access log: what the client actually sent and got).
struct Touch<T> {
    inner: T,
    clock: Arc<Activity>,
    read: u64,
    written: u64,
}

impl<T> Touch<T> {
    fn new(inner: T, clock: Arc<Activity>) -> Self {
        Touch {
            inner,
            clock,
            read: 0,
            written: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Touch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            this.clock.touch();
            this.read += n as u64;
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Touch<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            this.written += *n as u64;
        }
        polled
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
