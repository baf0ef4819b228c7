//! Dials one fixed endpoint address, whatever authority the request carries, with the
//! cluster's connect timeout. One connector (and so one connection pool) per endpoint.

use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
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
}

#[derive(Debug, Clone)]
pub struct Connector {
    addr: SocketAddr,
    timeout: Duration,
}

impl Connector {
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Connector { addr, timeout }
    }
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let (addr, timeout) = (self.addr, self.timeout);
        Box::pin(async move {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| ConnectError::Timeout { addr, timeout })?
                .map_err(|source| ConnectError::Io { addr, source })?;
            // Proxied requests are small writes; Nagle would add up to 40 ms per hop.
            let _ = stream.set_nodelay(true);
            Ok(TokioIo::new(stream))
        })
    }
}
