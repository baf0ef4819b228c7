//! Dials one fixed endpoint address, whatever authority the request carries, with the
//! cluster's connect timeout. One connector (and so one connection pool) per endpoint.
//! With a cluster connection limit, every open connection holds a slot until closed,
//! and a descriptor of its listener side's share.

use crate::circuit_breaker::Circuit;
use crate::counted::{ByteCounters, Counted};
use crate::descriptors;
use hyper_util::rt::TokioIo;
use octopus_tls::ClientTls;
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
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr}: {source}")]
    IdentityMismatch {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The cluster's `max_connections` is reached.
    #[error("connection limit of the cluster reached")]
    MaxConnections,
    /// The listener side's share of file descriptors is spent (see `descriptors`).
    #[error("the {0} side's file-descriptor budget is spent")]
    Descriptors(&'static str),
    /// The HTTP/2 connection preface (or HTTP/1.1 set-up) failed.
    #[error("HTTP handshake: {0}")]
    Handshake(#[source] hyper::Error),
}

impl ConnectError {
    /// Whether the dial itself failed (the endpoint did not answer properly), rather
    /// than octopus declining to dial because of its own limits.
    pub fn is_dial_failure(&self) -> bool {
        !matches!(
            self,
            ConnectError::MaxConnections | ConnectError::Descriptors(_)
        )
    }
}

#[derive(Clone)]
pub struct Connector {
    addr: SocketAddr,
    timeout: Duration,
    limits: Option<Arc<Circuit>>,
    tls: Option<Arc<ClientTls>>,
    descriptors: Option<Arc<descriptors::Group>>,
    bytes: Option<ByteCounters>,
}

impl Connector {
    pub fn new(
        addr: SocketAddr,
        timeout: Duration,
        limits: Option<Arc<Circuit>>,
        tls: Option<Arc<ClientTls>>,
        descriptors: Option<Arc<descriptors::Group>>,
        bytes: Option<ByteCounters>,
    ) -> Self {
        Connector {
            addr,
            timeout,
            limits,
            tls,
            descriptors,
            bytes,
        }
    }
}

impl Connector {
    /// Opens one connection: descriptor share, cluster connection slot, TCP, TLS.
    pub async fn connect(&self) -> Result<Conn, ConnectError> {
        let fd = match &self.descriptors {
            Some(g) => Some(g.acquire().ok_or(ConnectError::Descriptors(g.name()))?),
            None => None,
        };
        let slot = match &self.limits {
            Some(l) => Some(l.open_connection().ok_or(ConnectError::MaxConnections)?),
            None => None,
        };
        let (addr, timeout) = (self.addr, self.timeout);
        // The connect timeout covers the TCP connect and the TLS handshake.
        let connect = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|source| ConnectError::Io { addr, source })?;
            // Proxied requests are small writes; Nagle would add up to 40 ms per hop.
            let _ = stream.set_nodelay(true);
            let bytes = self.bytes.clone();
            match &self.tls {
                None => Ok(Io::Plain(TokioIo::new(Counted::new(stream, bytes)))),
                Some(tls) => match tls.connect(addr, stream).await {
                    Ok(s) => Ok(Io::Tls(Box::new(TokioIo::new(Counted::new(s, bytes))))),
                    Err(e) if octopus_tls::is_identity_mismatch(&e) => {
                        Err(ConnectError::IdentityMismatch { addr, source: e })
                    }
                    Err(source) => Err(ConnectError::Tls { addr, source }),
                },
            }
        };
        let io = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ConnectError::Timeout { addr, timeout })??;
        Ok(Conn {
            io,
            _slot: slot,
            _fd: fd,
        })
    }
}

enum Io {
    Plain(TokioIo<Counted<TcpStream>>),
    Tls(Box<TokioIo<Counted<tokio_rustls::client::TlsStream<TcpStream>>>>),
}

/// An upstream connection, plain or TLS; releases its connection-limit slot when
/// closed.
pub struct Conn {
    io: Io,
    _slot: Option<crate::circuit_breaker::ConnectionSlot>,
    _fd: Option<descriptors::Slot>,
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.get_mut().io {
            Io::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Io::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}
