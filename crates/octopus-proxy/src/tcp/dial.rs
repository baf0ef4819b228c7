//! Opening the upstream side of an opaque connection. Through a route: the cluster's
//! balancer picks an endpoint, dialled with the cluster's connect timeout, connection
//! limit and TLS; a dial that fails (refused, timed out, TLS refused) counts against
//! that endpoint for outlier detection and the next endpoint is tried. Direct: one
//! address (passthrough, or the local app's port).

use super::Destination;
use crate::endpoint::{Conn, ConnectError, Endpoint};
use crate::held::Held;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Different endpoints a connection tries before it gives up.
const MAX_DIALS: usize = 3;

/// Why an opaque connection could not be carried. Attribution: every variant but
/// `Limit` is the upstream's (or the network's) fault; `Limit` is octopus' own.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("cluster `{cluster}` has no endpoint that can take a connection")]
    NoEndpoint { cluster: Arc<str> },
    #[error("cluster `{cluster}`: {source}")]
    Dial {
        cluster: Arc<str>,
        #[source]
        source: ConnectError,
    },
    #[error("cluster `{cluster}`: {source}")]
    Limit {
        cluster: Arc<str>,
        #[source]
        source: ConnectError,
    },
    #[error("connect to {addr}: {source}")]
    Direct {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {addr} timed out after {timeout:?}")]
    DirectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("the {0} side's file-descriptor budget is spent")]
    Descriptors(&'static str),
    /// The local app's `inbound.circuit_breaker.max_connections` is reached.
    #[error("connection limit of the local app reached")]
    MaxConnections,
}

impl TcpError {
    /// Octopus declined (its own limits) rather than the destination failing.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            TcpError::Limit { .. } | TcpError::Descriptors(_) | TcpError::MaxConnections
        )
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The upstream side of an opaque connection, plain or TLS. Holds what it counts
/// against while open: the endpoint's in-flight count, the cluster's connection slot,
/// a descriptor of its side's share.
pub struct Upstream {
    io: Box<dyn Io>,
    pub endpoint: Option<SocketAddr>,
    /// The route's cluster and endpoint, told when the connection is carried: one
    /// dialled ahead and dropped (the client spoke HTTP) counts for nothing.
    picked: Option<(Arc<super::TcpRoute>, Arc<Endpoint>)>,
    _held: Option<Held>,
    _fd: Option<crate::descriptors::Slot>,
    _slot: Option<crate::circuit_breaker::ConnectionSlot>,
}

impl Destination {
    /// Opens the upstream connection.
    pub async fn dial(self) -> Result<Upstream, TcpError> {
        match self {
            Destination::Route(route) => {
                let cluster = &route.cluster;
                let mut tried: Vec<SocketAddr> = Vec::new();
                let mut last = None;
                while tried.len() < MAX_DIALS {
                    let Some(ep) = cluster.pick(&tried) else {
                        break;
                    };
                    if tried.contains(&ep.addr()) {
                        break;
                    }
                    tried.push(ep.addr());
                    match dial_endpoint(&ep).await {
                        Ok(mut up) => {
                            up.picked = Some((route.clone(), ep));
                            return Ok(up);
                        }
                        Err(e) if e.is_dial_failure() => {
                            tracing::debug!(cluster = %cluster.name, endpoint = %ep.addr(), error = %e, "TCP dial failed; trying another endpoint");
                            cluster.record_dial(&ep, false);
                            last = Some(e);
                        }
                        Err(source) => {
                            return Err(TcpError::Limit {
                                cluster: cluster.name.clone(),
                                source,
                            })
                        }
                    }
                }
                Err(match last {
                    Some(source) => TcpError::Dial {
                        cluster: cluster.name.clone(),
                        source,
                    },
                    None => TcpError::NoEndpoint {
                        cluster: cluster.name.clone(),
                    },
                })
            }
            Destination::Direct {
                addr,
                connect_timeout,
                descriptors,
                limits,
                ..
            } => {
                let fd = match &descriptors {
                    Some(g) => Some(g.acquire().ok_or(TcpError::Descriptors(g.name()))?),
                    None => None,
                };
                let slot = match &limits {
                    Some(l) => Some(l.open_connection().ok_or(TcpError::MaxConnections)?),
                    None => None,
                };
                let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
                    .await
                    .map_err(|_| TcpError::DirectTimeout {
                        addr,
                        timeout: connect_timeout,
                    })?
                    .map_err(|source| TcpError::Direct { addr, source })?;
                let _ = stream.set_nodelay(true);
                Ok(Upstream {
                    io: Box::new(stream),
                    endpoint: Some(addr),
                    picked: None,
                    _held: None,
                    _fd: fd,
                    _slot: slot,
                })
            }
        }
    }
}

async fn dial_endpoint(ep: &Arc<Endpoint>) -> Result<Upstream, ConnectError> {
    let (conn, held): (Conn, Held) = ep.dial().await?;
    Ok(Upstream {
        io: Box::new(TokioIo::new(conn)),
        endpoint: Some(ep.addr()),
        picked: None,
        _held: Some(held),
        _fd: None,
        _slot: None,
    })
}

impl Upstream {
    /// The connection is carried: it counts for its endpoint (`/clusters`) and, as a
    /// dial that worked, for outlier detection.
    pub(crate) fn carried(&mut self) {
        if let Some((route, ep)) = self.picked.take() {
            ep.count_request();
            route.cluster.record_dial(&ep, true);
        }
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}
