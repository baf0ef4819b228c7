//! Every failure octopus answers for itself, as one typed error. [`ProxyError::into_response`]
//! is the single place errors become HTTP responses, so layers just return `Err`.

use crate::body::{self, Body, BoxError, ClientBodyError, ClientBodyFault};
use http::{header, HeaderValue, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

/// Label of the inbound listener's route and of the local application as a cluster.
pub const INBOUND_ROUTE: &str = "inbound";
pub const LOCAL_APP: &str = "local_app";
/// Metric label for requests no route matched, or that failed before a cluster was chosen.
pub const NONE_LABEL: &str = "none";

/// A validated config that still cannot be built (a certificate that fails to load,
/// an address that is not an IP): the reload or start-up is refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CompileError(pub String);

/// Every value [`ProxyError::kind`] can return: the `kind` label values of
/// `octopus_proxy_errors_total`, whose series exist from start-up at 0.
pub const ERROR_KINDS: [&str; 18] = [
    "no_route",
    "no_healthy_endpoint",
    "circuit_open",
    "connect_failed",
    "upstream_reset",
    "bad_response",
    "timeout",
    "bad_request",
    "identity_mismatch",
    "identity_not_allowed",
    "client_aborted",
    "body_too_large",
    "request_body_timeout",
    "connect_unsupported",
    "unsupported_transfer_coding",
    "overloaded",
    "rate_limited",
    "internal",
];

/// nginx's "client closed request": recorded, never sent.
pub const CLIENT_CLOSED: u16 = 499;

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
    CircuitOpen {
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
    /// The client's request body failed: aborted, malformed, too large, stalled.
    #[error("{}", match .fault {
        ClientBodyFault::Aborted => "client aborted the request",
        ClientBodyFault::Malformed => "bad request: malformed request body",
        ClientBodyFault::TooLarge => "request body too large",
        ClientBodyFault::Stalled => "request body timeout",
    })]
    ClientBody {
        fault: ClientBodyFault,
        #[source]
        source: Option<BoxError>,
    },
    /// CONNECT asks for a raw tunnel, which no route can name yet.
    #[error("CONNECT is not supported")]
    ConnectUnsupported,
    /// A request framed with a transfer coding octopus does not implement.
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    /// A broken invariant of octopus itself (never the client's or the upstream's):
    /// answered 500 and logged, so it is seen rather than passed off as a bad request.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The route's `rate_limit` bucket is empty.
    #[error("rate limited")]
    RateLimited { retry_after: std::time::Duration },
    /// The listener's `max_requests` is reached: shed at once.
    #[error("too many requests in progress on the {listener} listener")]
    Overloaded { listener: &'static str },
}

/// Whose fault a failure is. Only upstream faults count against an endpoint (outlier
/// detection, failure counters) and only they are worth a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The downstream client: a bad request, an aborted or stalled body.
    Client,
    /// Octopus itself: its own limits, its configuration (no route).
    Octopus,
    /// The upstream endpoint: refused, reset, timed out, answered garbage.
    Upstream,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Octopus => "octopus",
            Fault::Upstream => "upstream",
        }
    }
}

pub use crate::cause::find_cause;

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoHealthyEndpoint { .. } | ProxyError::CircuitOpen { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::ConnectFailed { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::BadResponse { .. }
            | ProxyError::IdentityMismatch { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::IdentityNotAllowed => StatusCode::FORBIDDEN,
            ProxyError::ClientBody { fault, .. } => match fault {
                ClientBodyFault::Aborted | ClientBodyFault::Malformed => StatusCode::BAD_REQUEST,
                ClientBodyFault::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                ClientBodyFault::Stalled => StatusCode::REQUEST_TIMEOUT,
            },
            ProxyError::ConnectUnsupported => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The status code metrics and logs record: like nginx, 499 for a client that went
    /// away (whatever was written to its closed connection).
    pub fn recorded_status(&self) -> u16 {
        match self {
            ProxyError::ClientBody {
                fault: ClientBodyFault::Aborted,
                ..
            } => CLIENT_CLOSED,
            other => other.status().as_u16(),
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::ClientBody { .. }
            | ProxyError::ConnectUnsupported
            | ProxyError::UnsupportedTransferCoding
            | ProxyError::RateLimited { .. }
            | ProxyError::IdentityNotAllowed => Fault::Client,
            ProxyError::NoRoute
            | ProxyError::CircuitOpen { .. }
            | ProxyError::Overloaded { .. }
            | ProxyError::Internal(_) => Fault::Octopus,
            ProxyError::NoHealthyEndpoint { .. }
            | ProxyError::ConnectFailed { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::BadResponse { .. }
            | ProxyError::IdentityMismatch { .. }
            | ProxyError::Timeout { .. } => Fault::Upstream,
        }
    }

    /// The error a failed read of the client's body becomes: its fault as the body
    /// reported it (the error keeps its cause).
    pub fn client_body(e: BoxError) -> ProxyError {
        let fault =
            find_cause::<ClientBodyError>(&*e).map_or(ClientBodyFault::Aborted, |c| c.fault);
        ProxyError::ClientBody {
            fault,
            source: Some(e),
        }
    }

    /// Short, stable machine-readable kind for the `x-octopus-error` header and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::NoHealthyEndpoint { .. } => "no_healthy_endpoint",
            ProxyError::CircuitOpen { .. } => "circuit_open",
            ProxyError::ConnectFailed { .. } => "connect_failed",
            ProxyError::UpstreamReset { .. } => "upstream_reset",
            ProxyError::BadResponse { .. } => "bad_response",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::IdentityMismatch { .. } => "identity_mismatch",
            ProxyError::IdentityNotAllowed => "identity_not_allowed",
            ProxyError::ClientBody { fault, .. } => match fault {
                ClientBodyFault::Aborted => "client_aborted",
                ClientBodyFault::Malformed => "bad_request",
                ClientBodyFault::TooLarge => "body_too_large",
                ClientBodyFault::Stalled => "request_body_timeout",
            },
            ProxyError::ConnectUnsupported => "connect_unsupported",
            ProxyError::UnsupportedTransferCoding => "unsupported_transfer_coding",
            ProxyError::Overloaded { .. } => "overloaded",
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::Internal(_) => "internal",
        }
    }

    pub fn cluster(&self) -> Option<&Arc<str>> {
        match self {
            ProxyError::NoHealthyEndpoint { cluster }
            | ProxyError::ConnectFailed { cluster, .. }
            | ProxyError::UpstreamReset { cluster, .. }
            | ProxyError::BadResponse { cluster, .. }
            | ProxyError::CircuitOpen { cluster, .. }
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
        if let ProxyError::RateLimited { retry_after } = &self {
            // Whole seconds, rounded up: a client that waits this long gets a token.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let ProxyError::ConnectUnsupported = self {
            h.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE"),
            );
        }
        if let Some(c) = self.cluster() {
            resp.body_mut().set_served_by(c.clone());
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed() {
        let c: Arc<str> = "c".into();
        let ep: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let src = || -> BoxError { "x".into() };
        let mut all = vec![
            ProxyError::NoRoute,
            ProxyError::NoHealthyEndpoint { cluster: c.clone() },
            ProxyError::ConnectFailed {
                cluster: c.clone(),
                endpoint: ep,
                source: src(),
            },
            ProxyError::UpstreamReset {
                cluster: c.clone(),
                endpoint: ep,
                source: src(),
            },
            ProxyError::CircuitOpen {
                cluster: c.clone(),
                limit: "max_requests",
            },
            ProxyError::BadResponse {
                cluster: c.clone(),
                reason: "r",
            },
            ProxyError::IdentityMismatch {
                cluster: c.clone(),
                endpoint: ep,
            },
            ProxyError::IdentityNotAllowed,
            ProxyError::Timeout { cluster: None },
            ProxyError::BadRequest("b"),
            ProxyError::ConnectUnsupported,
            ProxyError::UnsupportedTransferCoding,
            ProxyError::Internal("i"),
            ProxyError::RateLimited {
                retry_after: std::time::Duration::from_secs(1),
            },
            ProxyError::Overloaded {
                listener: "outbound",
            },
        ];
        for fault in [
            ClientBodyFault::Aborted,
            ClientBodyFault::Malformed,
            ClientBodyFault::TooLarge,
            ClientBodyFault::Stalled,
        ] {
            all.push(ProxyError::ClientBody {
                fault,
                source: None,
            });
        }
        for e in &all {
            assert!(
                ERROR_KINDS.contains(&e.kind()),
                "{} is not in ERROR_KINDS",
                e.kind()
            );
        }
        let mut kinds: Vec<&str> = all.iter().map(ProxyError::kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(
            kinds.len(),
            ERROR_KINDS.len(),
            "ERROR_KINDS lists a kind no error has"
        );
    }
}
