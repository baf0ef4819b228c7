//! Distributed tracing: a server span per request and a client span per upstream try,
//! exported over OTLP (HTTP/protobuf or gRPC) to a collector.
//!
//! Parent-based sampling: a request whose `traceparent` (or `b3`) says sampled is
//! recorded, one that says not sampled is not (its context passes through untouched),
//! and a new trace is recorded with `tracing.sample_ratio`. A request that is not
//! recorded costs one header parse. Spans are queued to the exporter without waiting
//! ([`export`]); a dead collector costs a counter, never a request.
//!
//! The spans are OpenTelemetry's data model on the wire (the `opentelemetry-proto`
//! types), built here rather than through the SDK's tracer: the SDK's exporters bring
//! an HTTP client stack (reqwest or tonic) of their own and a per-span attribute
//! representation octopus does not need; see docs/observability.md.

pub mod context;
mod export;

pub use export::Exporter;

use crate::body::Body;
use crate::error::CompileError;
use context::{new_span_id, new_trace_id};
use http::Request;
use octopus_config::TracingConfig;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// A span attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct SpanData {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub name: String,
    pub kind: Kind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    /// Set when the span failed: its status message.
    pub error: Option<String>,
}

/// `tracing:` compiled: the sampling ratio and the exporter (live state a reload
/// takes over while the section is unchanged).
pub struct Tracer {
    spec: TracingConfig,
    exporter: Arc<Exporter>,
}

impl Tracer {
    pub fn compile(
        spec: &TracingConfig,
        previous: Option<&Arc<Tracer>>,
        metrics: &octopus_metrics::Metrics,
    ) -> Result<Arc<Tracer>, CompileError> {
        if let Some(p) = previous.filter(|p| &p.spec == spec) {
            return Ok(p.clone());
        }
        Ok(Arc::new(Tracer {
            spec: spec.clone(),
            exporter: Exporter::start(spec, metrics)?,
        }))
    }

    /// The trace of a new request, when it is to be recorded.
    pub fn start(&self, headers: &http::HeaderMap) -> Option<Trace> {
        let parent = context::parent(headers);
        let ratio = self.spec.sample_ratio;
        let sampled = match parent.and_then(|p| p.sampled) {
            Some(decided) => decided,
            None => ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio),
        };
        if !sampled {
            return None;
        }
        Some(Trace {
            exporter: self.exporter.clone(),
            trace_id: parent.map_or_else(new_trace_id, |p| p.trace_id),
            span_id: new_span_id(),
            parent: parent.map(|p| p.span_id),
            start: SystemTime::now(),
            tries: Arc::new(AtomicU32::new(0)),
        })
    }
}

/// A recorded request's server span, open until its response body ends.
pub struct Trace {
    exporter: Arc<Exporter>,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    start: SystemTime,
    tries: Arc<AtomicU32>,
}

impl Trace {
    /// The request extension through which each upstream try records a client span.
    pub fn tries(&self) -> Tries {
        Tries {
            exporter: self.exporter.clone(),
            trace_id: self.trace_id,
            parent: self.span_id,
            count: self.tries.clone(),
        }
    }

    /// Ends the server span.
    pub fn finish(
        self,
        name: String,
        attributes: Vec<(&'static str, Value)>,
        error: Option<String>,
    ) {
        self.exporter.record(SpanData {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent: self.parent,
            name,
            kind: Kind::Server,
            start: self.start,
            end: SystemTime::now(),
            attributes,
            error,
        });
    }
}

/// A request extension (cloned onto every retry's request): the endpoint layer opens a
/// client span per try through it.
#[derive(Clone)]
pub struct Tries {
    exporter: Arc<Exporter>,
    trace_id: [u8; 16],
    parent: [u8; 8],
    count: Arc<AtomicU32>,
}

impl Tries {
    /// Opens the client span of one try to `endpoint` of `cluster` and sets the
    /// request's `traceparent` to it, so the upstream continues the trace from there.
    pub fn begin(&self, req: &mut Request<Body>, cluster: &str, endpoint: SocketAddr) -> TrySpan {
        let span_id = new_span_id();
        req.headers_mut().insert(
            context::TRACEPARENT,
            context::traceparent(&self.trace_id, &span_id),
        );
        let attempt = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        TrySpan {
            data: Some(SpanData {
                trace_id: self.trace_id,
                span_id,
                parent: Some(self.parent),
                name: format!("{} {cluster}", req.method()),
                kind: Kind::Client,
                start: SystemTime::now(),
                end: SystemTime::UNIX_EPOCH,
                attributes: vec![
                    ("octopus.cluster", Value::Str(cluster.to_string())),
                    ("server.address", Value::Str(endpoint.ip().to_string())),
                    ("server.port", Value::Int(i64::from(endpoint.port()))),
                    ("octopus.attempt", Value::Int(i64::from(attempt))),
                ],
                error: None,
            }),
            exporter: self.exporter.clone(),
        }
    }
}

/// One try's client span; recorded when ended, or as cancelled when dropped first (a
/// per-try timeout, or the client went away).
pub struct TrySpan {
    data: Option<SpanData>,
    exporter: Arc<Exporter>,
}

impl TrySpan {
    /// Ends the span with the upstream's status, or octopus' error kind for the try.
    pub fn end(mut self, outcome: Result<u16, &crate::error::ProxyError>) {
        if let Some(mut d) = self.data.take() {
            match outcome {
                Ok(status) => {
                    d.attributes
                        .push(("http.response.status_code", Value::Int(i64::from(status))));
                    if status >= 500 {
                        d.error = Some(format!("upstream answered {status}"));
                    }
                }
                Err(e) => {
                    d.attributes
                        .push(("octopus.error.kind", Value::Str(e.kind().to_string())));
                    d.error = Some(e.to_string());
                }
            }
            d.end = SystemTime::now();
            self.exporter.record(d);
        }
    }
}

impl Drop for TrySpan {
    fn drop(&mut self) {
        if let Some(mut d) = self.data.take() {
            d.end = SystemTime::now();
            d.error = Some("cancelled: per-try timeout, or the client went away".into());
            self.exporter.record(d);
        }
    }
}
