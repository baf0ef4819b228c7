//! Every failure octopus answers for itself, as one typed error. [`ProxyError::into_response`]
//! is the single place errors become HTTP responses, so layers just return `Err`.

use crate::body::{self, Body, BoxError};
use http::{header, HeaderValue, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route")]
    NoRoute,
    #[error("no healthy endpoint")]
    NoHealthyEndpoint { cluster: Arc<str> },
    #[error("upstream connect failed")]
    ConnectFailed {
        cluster: Arc<str>,
        endpoint: SocketAddr,
        #[source]
        source: BoxError,
    },
    /// The connection failed after the request was sent: reset or closed early.
    #[error("upstream reset")]
    UpstreamReset {
        cluster: Arc<str>,
        endpoint: SocketAddr,
        #[source]
        source: BoxError,
    },
    /// A cluster limit (circuit breaker) is reached: shed at once, never queued.
    #[error("circuit open: {limit}")]
    Overflow {
        cluster: Arc<str>,
        limit: &'static str,
    },
    /// The upstream answered with a head hyper refused (malformed, too large) or
    /// one that cannot be forwarded.
    #[error("bad upstream response: {reason}")]
    BadResponse {
        cluster: Arc<str>,
        reason: &'static str,
    },
    /// The upstream's certificate is valid but proves another identity.
    #[error("upstream identity mismatch")]
    IdentityMismatch {
        cluster: Arc<str>,
        endpoint: SocketAddr,
    },
    /// The inbound client's verified identity is not in `allowed_identities`.
    #[error("identity not allowed")]
    IdentityNotAllowed,
    #[error("upstream timeout")]
    Timeout { cluster: Option<Arc<str>> },
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The route's `max_request_body_bytes` was exceeded.
    #[error("request body too large")]
    BodyTooLarge,
}

/// Which cluster produced a response; set on every response that reached a cluster so
/// metrics can label it without re-deciding the split.
#[derive(Debug, Clone)]
pub struct ServedBy(pub Arc<str>);

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoHealthyEndpoint { .. } | ProxyError::Overflow { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::ConnectFailed { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::BadResponse { .. }
            | ProxyError::IdentityMismatch { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::IdentityNotAllowed => StatusCode::FORBIDDEN,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// Short, stable machine-readable kind for the `x-octopus-error` header and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::NoHealthyEndpoint { .. } => "no_healthy_endpoint",
            ProxyError::Overflow { .. } => "circuit_open",
            ProxyError::ConnectFailed { .. } => "connect_failed",
            ProxyError::UpstreamReset { .. } => "upstream_reset",
            ProxyError::BadResponse { .. } => "bad_response",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::IdentityMismatch { .. } => "identity_mismatch",
            ProxyError::IdentityNotAllowed => "identity_not_allowed",
            ProxyError::BodyTooLarge => "body_too_large",
        }
    }

    pub fn cluster(&self) -> Option<&Arc<str>> {
        match self {
            ProxyError::NoHealthyEndpoint { cluster }
            | ProxyError::ConnectFailed { cluster, .. }
            | ProxyError::UpstreamReset { cluster, .. }
            | ProxyError::BadResponse { cluster, .. }
            | ProxyError::Overflow { cluster, .. }
            | ProxyError::IdentityMismatch { cluster, .. } => Some(cluster),
            ProxyError::Timeout { cluster } => cluster.as_ref(),
            _ => None,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let reason = match &self {
            ProxyError::BadRequest(why) => format!("bad request: {why}\n"),
            other => format!("{other}\n"),
        };
        let mut resp = Response::new(body::full(reason));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert("x-octopus-error", HeaderValue::from_static(self.kind()));
        if let Some(c) = self.cluster() {
            resp.extensions_mut().insert(ServedBy(c.clone()));
        }
        resp
    }
}
