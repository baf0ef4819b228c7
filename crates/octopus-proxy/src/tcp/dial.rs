//! Opening the upstream side of an opaque connection. Through a route: the cluster's
//! balancer picks an endpoint, dialled with the cluster's connect timeout, connection
//! limit and TLS; a dial that fails (refused, timed out, TLS refused) counts against
//! that endpoint for outlier detection and the next endpoint is tried. Direct: one
//! address (passthrough, or the local app's port).

use super::Destination;
use crate::endpoint::{Conn, ConnectError, Connector, Endpoint};
use crate::held::Held;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
    #[error("{source}")]
    Direct {
        addr: SocketAddr,
        #[source]
        source: ConnectError,
    },
}

impl TcpError {
    /// Octopus declined (its own limits: connections, descriptors) rather than the
    /// destination failing.
    pub fn is_limit(&self) -> bool {
        match self {
            TcpError::Limit { .. } => true,
            TcpError::Direct { source, .. } => !source.is_dial_failure(),
            TcpError::NoEndpoint { .. } | TcpError::Dial { .. } => false,
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The upstream side of an opaque connection, plain or TLS. Holds what it counts
/// against while open: the endpoint's in-flight count, and (in the connection) the
/// cluster's connection slot and a descriptor of its side's share.
pub struct Upstream {
    io: Box<dyn Io>,
    pub endpoint: Option<SocketAddr>,
    /// The endpoint, told when the connection is carried: one dialled ahead and
    /// dropped (the client spoke HTTP) is no connection of the endpoint's.
    picked: Option<Arc<Endpoint>>,
    _held: Option<Held>,
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
                            // A dial that worked speaks for the endpoint whether or not
                            // the connection is then carried (a dial ahead for a client
                            // that spoke HTTP), as a refused one speaks against it.
                            cluster.record_dial(&ep, true);
                            up.picked = Some(ep);
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
                // The same connector as an endpoint's: descriptor share, connection
                // limit, connect timeout.
                let conn = Connector::new(addr, connect_timeout, limits, None, descriptors, None)
                    .connect()
                    .await
                    .map_err(|source| TcpError::Direct { addr, source })?;
                Ok(Upstream {
                    io: Box::new(TokioIo::new(conn)),
                    endpoint: Some(addr),
                    picked: None,
                    _held: None,
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
    })
}

impl Upstream {
    /// The connection is carried: it counts for its endpoint (`/clusters`).
    pub(crate) fn carried(&mut self) {
        if let Some(ep) = self.picked.take() {
            ep.count_request();
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
