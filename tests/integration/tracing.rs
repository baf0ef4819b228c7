//! Distributed tracing end to end: a collector in the test receives octopus' OTLP
//! exports (HTTP/protobuf and gRPC) and decodes them with the official OTLP protobuf
//! types; the assertions are on parent/child ids, attributes, and the `traceparent`
//! the upstream received.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use octopus_tests::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An OTLP trace receiver on 127.0.0.1: OTLP/HTTP (`POST /v1/traces`) and OTLP/gRPC
/// (`TraceService/Export`) on one port, keeping every span it decodes.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    service_names: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let names = Arc::new(Mutex::new(Vec::new()));
        let (s, n) = (spans.clone(), names.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (s, n) = (s.clone(), n.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (s, n) = (s.clone(), n.clone());
                        async move { Ok::<_, std::convert::Infallible>(receive(req, &s, &n).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Collector {
            addr,
            spans,
            service_names: names,
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    fn of_trace(&self, trace_id: &[u8]) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

async fn receive(
    req: Request<Incoming>,
    spans: &Mutex<Vec<Span>>,
    names: &Mutex<Vec<String>>,
) -> Response<http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>> {
    let grpc = req.uri().path() == "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    assert!(grpc || req.uri().path() == "/v1/traces", "{}", req.uri());
    if grpc {
        assert_eq!(req.headers()["content-type"], "application/grpc");
    } else {
        assert_eq!(req.headers()["content-type"], "application/x-protobuf");
    }
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let message = if grpc {
        assert_eq!(body[0], 0, "uncompressed");
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert_eq!(body.len(), 5 + len);
        body.slice(5..)
    } else {
        body
    };
    let export = ExportTraceServiceRequest::decode(message).expect("a valid OTLP export");
    for rs in export.resource_spans {
        for attr in rs.resource.map(|r| r.attributes).unwrap_or_default() {
            if attr.key == "service.name" {
                if let Some(Value::StringValue(v)) = attr.value.and_then(|v| v.value) {
                    names.lock().unwrap().push(v);
                }
            }
        }
        for ss in rs.scope_spans {
            spans.lock().unwrap().extend(ss.spans);
        }
    }
    if grpc {
        // An empty ExportTraceServiceResponse, then grpc-status 0 in the trailers.
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let body = Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed();
        Response::builder()
            .header("content-type", "application/grpc")
            .body(body)
            .unwrap()
    } else {
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap()
    }
}

fn attr(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone())
        .and_then(|v| v.value)
}

fn text(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(Value::StringValue(s)) => s,
        other => panic!("{key}: {other:?} in {span:?}"),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(Value::IntValue(i)) => i,
        other => panic!("{key}: {other:?} in {span:?}"),
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn wait_spans(c: &Collector, trace_id: &[u8], n: usize) -> Vec<Span> {
    assert!(
        eventually(Duration::from_secs(10), async || c.of_trace(trace_id).len()
            >= n)
        .await,
        "expected {n} spans of trace {}, got {:?}",
        hex(trace_id),
        c.of_trace(trace_id)
    );
    c.of_trace(trace_id)
}

#[tokio::test]
async fn a_retried_request_is_one_server_span_with_a_client_span_per_try() {
    let collector = Collector::start().await;
    let up = Upstream::start("up").await;
    let yaml = format!(
        "tracing:
  otlp: {{ endpoint: http://{}, protocol: http/protobuf }}
  sample_ratio: 1.0
  service_name: shop-sidecar
outbound:
  listen: 127.0.0.1:0
  routes:
    - name: pay
      match: {{ host: pay }}
      cluster: pay
      retry: {{ attempts: 2, retry_on: [connect-failure], backoff: {{ base: 1ms, max: 2ms }} }}
clusters:
{}",
        collector.addr,
        cluster("pay", "http1", &["127.0.0.1:1".parse().unwrap(), up.addr()]),
    );
    let proxy = start(&yaml).await;
    let out = proxy.outbound_addr().unwrap();
    let client = HttpClient::http1();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace}-{caller_span}-01");
    // Round robin over [dead, up]: one of two requests tries the dead endpoint first.
    let mut retried = None;
    for i in 0..2 {
        let id = format!("req-{i}");
        let r = client
            .get(
                out,
                "pay",
                "/charge",
                &[("traceparent", &traceparent), ("x-request-id", &id)],
            )
            .await;
        assert_eq!(r.status, 200);
        let seen = r.json()["headers"]["traceparent"]
            .as_str()
            .unwrap()
            .to_string();
        if r.headers.get("x-octopus-attempts").is_some() {
            retried = Some((id, seen));
        }
    }
    let (id, seen) = retried.expect("one request was retried");
    // The upstream continues the caller's trace from octopus' client span.
    assert!(
        seen.starts_with(&format!("00-{trace}-")) && seen.ends_with("-01"),
        "{seen}"
    );
    assert_ne!(
        &seen[36..52],
        caller_span,
        "the upstream's parent is octopus' span"
    );

    let spans = wait_spans(&collector, &unhex(trace), 5).await;
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32 && text(s, "octopus.request_id") == id)
        .expect("the retried request's server span");
    assert_eq!(
        server.parent_span_id,
        unhex(caller_span),
        "child of the caller's span"
    );
    assert_eq!(server.name, "GET pay");
    assert_eq!(text(server, "octopus.route"), "pay");
    assert_eq!(text(server, "octopus.cluster"), "pay");
    assert_eq!(text(server, "octopus.direction"), "outbound");
    assert_eq!(text(server, "url.path"), "/charge");
    assert_eq!(int(server, "http.response.status_code"), 200);
    assert_eq!(int(server, "octopus.attempts"), 2);
    assert!(
        server.status.is_none(),
        "a 200 is not an error: {:?}",
        server.status
    );
    assert!(server.end_time_unix_nano >= server.start_time_unix_nano);

    let mut tries: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32 && s.parent_span_id == server.span_id)
        .collect();
    tries.sort_by_key(|s| int(s, "octopus.attempt"));
    assert_eq!(tries.len(), 2, "{spans:?}");
    let (first, second) = (tries[0], tries[1]);
    assert_eq!(int(first, "octopus.attempt"), 1);
    assert_eq!(text(first, "octopus.error.kind"), "connect_failed");
    assert_eq!(int(first, "server.port"), 1);
    assert!(
        first.status.as_ref().is_some_and(|s| s.code == 2),
        "error status"
    );
    assert_eq!(int(second, "octopus.attempt"), 2);
    assert_eq!(int(second, "http.response.status_code"), 200);
    assert_eq!(int(second, "server.port"), i64::from(up.addr().port()));
    assert_eq!(text(second, "octopus.cluster"), "pay");
    assert_eq!(
        hex(&second.span_id),
        &seen[36..52],
        "the upstream saw the second try's span"
    );
    for s in &tries {
        assert!(s.start_time_unix_nano >= server.start_time_unix_nano);
        assert!(s.end_time_unix_nano <= server.end_time_unix_nano);
    }
    assert!(collector
        .service_names
        .lock()
        .unwrap()
        .iter()
        .all(|n| n == "shop-sidecar"));
}

#[tokio::test]
async fn grpc_export_parent_based_sampling_b3_and_a_dead_collector() {
    let collector = Collector::start().await;
    let up = Upstream::start("up").await;
    let log = octopus_tests::pki::dir("tracing-log").join("access.log");
    let config = |endpoint: String| {
        format!(
            "tracing:
  otlp: {{ endpoint: http://{endpoint}, protocol: grpc }}
  sample_ratio: 0.0
outbound:
  listen: 127.0.0.1:0
  access_log: {{ path: {} }}
  routes:
    - {{ name: shop, match: {{ host: shop }}, cluster: up }}
clusters:
{}",
            log.display(),
            cluster("up", "http1", &[up.addr()]),
        )
    };
    let proxy = start(&config(collector.addr.to_string())).await;
    let out = proxy.outbound_addr().unwrap();
    let client = HttpClient::http1();

    // sample_ratio 0: a new trace is not recorded, and nothing is added upstream.
    let r = client.get(out, "shop", "/", &[]).await;
    assert!(r.json()["headers"].get("traceparent").is_none());
    // The caller decided "not sampled": passed through untouched, not recorded.
    let unsampled = "00-11111111111111111111111111111111-2222222222222222-00";
    let r = client
        .get(out, "shop", "/", &[("traceparent", unsampled)])
        .await;
    assert_eq!(r.json()["headers"]["traceparent"], unsampled);
    // The caller decided "sampled": recorded whatever the ratio (parent-based).
    let sampled = "00-33333333333333333333333333333333-4444444444444444-01";
    client
        .get(out, "shop", "/", &[("traceparent", sampled)])
        .await;
    // B3 single header, sampled.
    let b3 = "55555555555555555555555555555555-6666666666666666-1";
    let r = client.get(out, "shop", "/", &[("b3", b3)]).await;
    let continued = r.json()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        continued.starts_with("00-55555555555555555555555555555555-"),
        "{continued}"
    );

    let spans = wait_spans(&collector, &unhex("33333333333333333333333333333333"), 2).await;
    assert!(spans.iter().any(
        |s| s.kind == SpanKind::Server as i32 && s.parent_span_id == unhex("4444444444444444")
    ));
    let spans = wait_spans(&collector, &unhex("55555555555555555555555555555555"), 2).await;
    assert!(spans.iter().any(
        |s| s.kind == SpanKind::Server as i32 && s.parent_span_id == unhex("6666666666666666")
    ));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(collector
        .of_trace(&unhex("11111111111111111111111111111111"))
        .is_empty());
    assert_eq!(
        collector.spans().len(),
        4,
        "no span for the unsampled requests"
    );
    let m = admin(&proxy, "/metrics").await.text();
    assert!(
        m.contains(r#"octopus_trace_spans_total{result="exported"} 4"#),
        "{m}"
    );
    // The access log names the trace of recorded requests only.
    let ids: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["trace_id"].clone())
        .collect();
    assert_eq!(
        ids,
        [
            serde_json::Value::Null,
            serde_json::Value::Null,
            "33333333333333333333333333333333".into(),
            "55555555555555555555555555555555".into()
        ]
    );

    // A collector that is not there: requests are unaffected, the loss is counted.
    let dead = start(&config("127.0.0.1:1".into())).await;
    let out = dead.outbound_addr().unwrap();
    for _ in 0..5 {
        let r = client
            .get(out, "shop", "/", &[("traceparent", sampled)])
            .await;
        assert_eq!(r.status, 200);
    }
    assert!(
        eventually(Duration::from_secs(10), async || {
            admin(&dead, "/metrics")
                .await
                .text()
                .contains(r#"octopus_trace_spans_total{result="export_failed"} 10"#)
        })
        .await,
        "{}",
        admin(&dead, "/metrics").await.text()
    );
}
