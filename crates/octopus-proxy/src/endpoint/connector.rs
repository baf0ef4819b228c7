//! Dials one fixed endpoint address, whatever authority the request carries, with the
//! cluster's connect timeout. One connector (and so one connection pool) per endpoint.
//! With a cluster connection limit, every open connection holds a slot until closed.

use crate::breaker::Limits;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connect to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The cluster's `max_connections` is reached.
    #[error("connection limit of the cluster reached")]
    Overflow,
}

#[derive(Debug, Clone)]
pub struct Connector {
    addr: SocketAddr,
    timeout: Duration,
    limits: Option<Arc<Limits>>,
}

impl Connector {
    pub fn new(addr: SocketAddr, timeout: Duration, limits: Option<Arc<Limits>>) -> Self {
        Connector {
            addr,
            timeout,
            limits,
        }
    }
}

impl tower::Service<http::Uri> for Connector {
    type Response = Conn;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let (addr, timeout, limits) = (self.addr, self.timeout, self.limits.clone());
        Box::pin(async move {
            let slot = match limits {
                Some(l) => Some(l.open_connection().ok_or(ConnectError::Overflow)?),
                None => None,
            };
            let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| ConnectError::Timeout { addr, timeout })?
                .map_err(|source| ConnectError::Io { addr, source })?;
            // Proxied requests are small writes; Nagle would add up to 40 ms per hop.
            let _ = stream.set_nodelay(true);
            Ok(Conn {
                io: TokioIo::new(stream),
                _slot: slot,
            })
        })
    }
}

pin_project_lite::pin_project! {
    /// An upstream connection; releases its connection-limit slot when closed.
    pub struct Conn {
        #[pin]
        io: TokioIo<TcpStream>,
        _slot: Option<crate::breaker::ConnectionSlot>,
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
}
