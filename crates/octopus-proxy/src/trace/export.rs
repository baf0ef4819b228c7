//! The span exporter: a bounded queue the request path drops spans into without
//! waiting, and a task that batches them (512 spans, or whatever came within a second)
//! into one OTLP `ExportTraceServiceRequest` and sends it to the collector: POST
//! `/v1/traces` with a protobuf body (OTLP/HTTP), or the `TraceService/Export` gRPC
//! method over HTTP/2 cleartext. A full queue drops spans, a failed export drops its
//! batch; both are counted (`octopus_trace_spans_total{result}`), and nothing retries
//! in a loop: a dead collector costs a connect attempt per batch.

use super::{Kind, SpanData, Value};
use crate::error::CompileError;
use bytes::{BufMut, Bytes, BytesMut};
use http::{header, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use octopus_config::{HostPort, OtlpProtocol, TracingConfig};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prometheus::IntCounter;
use prost::Message;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Spans waiting for export at most; beyond, spans are dropped and counted.
const QUEUE: usize = 4096;
const BATCH: usize = 512;
/// A batch goes out at most this long after its first span.
const LINGER: Duration = Duration::from_secs(1);
/// While a batch fills, queued spans are taken every TICK rather than one wake-up of
/// the task per span.
const TICK: Duration = Duration::from_millis(20);
/// Connect and export together.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

pub struct Exporter {
    tx: mpsc::Sender<SpanData>,
    dropped: IntCounter,
}

struct Counters {
    exported: IntCounter,
    failed: IntCounter,
}

impl Exporter {
    /// Starts the export task (on the current tokio runtime).
    pub fn start(
        spec: &TracingConfig,
        metrics: &octopus_metrics::Metrics,
    ) -> Result<Arc<Exporter>, CompileError> {
        let target = octopus_config::otlp_endpoint(&spec.otlp.endpoint)
            .map_err(|e| CompileError(format!("tracing.otlp.endpoint: {e}")))?;
        let spans = &metrics.trace_spans_total;
        let counters = Counters {
            exported: spans.with_label_values(&["exported"]),
            failed: spans.with_label_values(&["export_failed"]),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let resource = Resource {
            attributes: vec![
                kv("service.name", Value::Str(spec.service_name.clone())),
                kv(
                    "service.version",
                    Value::Str(env!("CARGO_PKG_VERSION").into()),
                ),
            ],
            ..Default::default()
        };
        tokio::spawn(run(rx, target, spec.otlp.protocol, resource, counters));
        Ok(Arc::new(Exporter {
            tx,
            dropped: spans.with_label_values(&["dropped"]),
        }))
    }

    /// Queues a finished span; never waits.
    pub fn record(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<SpanData>,
    target: HostPort,
    protocol: OtlpProtocol,
    resource: Resource,
    counters: Counters,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        loop {
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
            let now = tokio::time::Instant::now();
            if batch.len() >= BATCH || now >= deadline {
                break;
            }
            tokio::time::sleep(TICK.min(deadline - now)).await;
        }
        let n = batch.len() as u64;
        let body = encode(&resource, batch.drain(..));
        match tokio::time::timeout(EXPORT_TIMEOUT, send(&target, protocol, body)).await {
            Ok(Ok(())) => counters.exported.inc_by(n),
            Ok(Err(e)) => {
                counters.failed.inc_by(n);
                tracing::debug!(collector = %target, error = %e, spans = n, "span export failed");
            }
            Err(_) => {
                counters.failed.inc_by(n);
                tracing::debug!(collector = %target, spans = n, "span export timed out");
            }
        }
    }
}

fn kv(key: &str, value: Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => any_value::Value::StringValue(s),
        Value::Int(i) => any_value::Value::IntValue(i),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One `ExportTraceServiceRequest` (protobuf bytes) for a batch.
pub(crate) fn encode(resource: &Resource, spans: impl Iterator<Item = SpanData>) -> Bytes {
    let spans: Vec<Span> = spans
        .map(|s| Span {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: s.name,
            kind: match s.kind {
                Kind::Server => span::SpanKind::Server,
                Kind::Client => span::SpanKind::Client,
            } as i32,
            start_time_unix_nano: nanos(s.start),
            end_time_unix_nano: nanos(s.end),
            attributes: s.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
            status: s.error.map(|message| Status {
                message,
                code: status::StatusCode::Error as i32,
            }),
            ..Default::default()
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "octopus".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    Bytes::from(request.encode_to_vec())
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn send(target: &HostPort, protocol: OtlpProtocol, body: Bytes) -> Result<(), BoxError> {
    let addr = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await?
        .next()
        .ok_or("the collector's name resolved to no address")?;
    let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await?);
    let authority = target.to_string();
    match protocol {
        OtlpProtocol::HttpProtobuf => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            let req = Request::post("/v1/traces")
                .header(header::HOST, &authority)
                .header(header::CONTENT_TYPE, "application/x-protobuf")
                .body(Full::new(body))?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            // Read the answer so the collector's partial-success notes are not left
            // unread; its content does not change what is counted.
            let _ = resp.into_body().collect().await;
            if !status.is_success() {
                return Err(format!("collector answered {status}").into());
            }
        }
        OtlpProtocol::Grpc => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            // gRPC message framing: uncompressed flag, big-endian length, message.
            let mut framed = BytesMut::with_capacity(5 + body.len());
            framed.put_u8(0);
            framed.put_u32(u32::try_from(body.len())?);
            framed.put_slice(&body);
            let req = Request::post(format!("http://{authority}{GRPC_PATH}"))
                .header(header::CONTENT_TYPE, "application/grpc")
                .header(header::TE, "trailers")
                .body(Full::new(framed.freeze()))?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            // A trailers-only answer carries grpc-status in its headers.
            let head_status = resp.headers().get("grpc-status").cloned();
            let collected = resp.into_body().collect().await?;
            let grpc_status = head_status.or_else(|| {
                collected
                    .trailers()
                    .and_then(|t| t.get("grpc-status").cloned())
            });
            if !status.is_success() {
                return Err(format!("collector answered {status}").into());
            }
            match grpc_status.as_ref().map(|v| v.as_bytes()) {
                Some(b"0") => {}
                Some(other) => {
                    return Err(format!(
                        "collector answered grpc-status {}",
                        String::from_utf8_lossy(other)
                    )
                    .into())
                }
                None => return Err("collector answered without a grpc-status".into()),
            }
        }
    }
    Ok(())
}
