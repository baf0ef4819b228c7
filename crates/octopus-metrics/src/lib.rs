//! Octopus metrics: one Prometheus registry per process holding the contract's metric
//! families (`shared/config-contract.md`), plus process metrics read from /proc.
//!
//! Label values come from config names and endpoint addresses only, never from request
//! data, so cardinality is bounded by the config.
#![forbid(unsafe_code)]

mod endpoints;
mod process;

pub use endpoints::{EndpointSample, EndpointSource};

use arc_swap::ArcSwap;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::Arc;
use std::time::Duration;

/// Request latency buckets (seconds): sub-millisecond proxy hops up to slow upstreams.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Protocol detection: most clients speak within microseconds of connecting; the top
/// buckets show silent connections waiting for `detect_timeout`.
const DETECT_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// All metric families of one octopus process. Each is named once, where it is
/// created and registered (see [`Families`]).
pub struct Metrics {
    registry: Registry,
    requests_total: IntCounterVec,
    request_duration: HistogramVec,
    proxy_errors_total: IntCounterVec,
    pub config_reloads_total: IntCounterVec,
    pub config_generation: IntGauge,
    pub access_log_lines_total: IntCounterVec,
    pub access_log_dropped_total: IntCounter,
    pub trace_spans_total: IntCounterVec,
    pub downstream_bytes_total: IntCounterVec,
    pub inbound_connections_total: IntCounterVec,
    pub app_probes_total: IntCounterVec,
    pub protocol_detect_seconds: HistogramVec,
    pub protocol_detect_timeouts_total: IntCounterVec,
    pub tcp_connections: IntGaugeVec,
    pub tcp_connections_total: IntCounterVec,
    pub tcp_bytes_total: IntCounterVec,
    pub upstream_bytes_total: IntCounterVec,
    pub connections_total: IntCounterVec,
    pub connections_active: IntGaugeVec,
    pub listener_overflow_total: IntCounterVec,
    pub listener_accept_errors_total: IntCounterVec,
    pub descriptors: IntGaugeVec,
    pub descriptors_refused_total: IntCounterVec,
    pub dns_failures_total: IntCounterVec,
    pub mirror_requests_total: IntCounterVec,
    pub rate_limited_total: IntCounterVec,
    pub upstream_retries_total: IntCounterVec,
    pub retry_budget_exhausted_total: IntCounterVec,
    pub circuit_overflow_total: IntCounterVec,
    pub upstream_connections_opened_total: IntCounterVec,
    pub upstream_connections_closed_total: IntCounterVec,
    pub upstream_connections_failed_total: IntCounterVec,
    pub tls_handshakes_total: IntCounterVec,
    pub tls_cert_expiry: IntGaugeVec,
    /// Per-endpoint gauges, read from live cluster state when scraped.
    endpoints: endpoints::EndpointCollector,
    process: process::ProcessMetrics,
}

/// Creates metric families and registers each as it is made, so a family's name,
/// help and labels are written in one place.
struct Families<'a>(&'a Registry);

impl Families<'_> {
    fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        // Distinct, statically named families cannot fail to register.
        self.0
            .register(Box::new(c.clone()))
            .expect("metric families have distinct names");
        c
    }
    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(
            IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition"),
        )
    }
    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(
            IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition"),
        )
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let f = Families(&registry);
        let m = Metrics {
            requests_total: f.counters(
                "octopus_requests_total",
                "Requests answered, by direction, route, cluster and status code.",
                &["direction", "route", "cluster", "code"],
            ),
            request_duration: f.register(
                HistogramVec::new(
                    HistogramOpts::new(
                        "octopus_request_duration_seconds",
                        "Time from receiving a request's head to sending the response head, retries included.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["direction", "route", "cluster"],
                )
                .expect("static metric definition"),
            ),
            proxy_errors_total: f.counters(
                "octopus_proxy_errors_total",
                "Requests octopus answered (or lost) with an error of its own, by kind (the x-octopus-error value, or client_aborted).",
                &["direction", "route", "cluster", "kind"],
            ),
            config_reloads_total: f.counters(
                "octopus_config_reloads_total",
                "Config reload attempts by result (success|failure).",
                &["result"],
            ),
            config_generation: f.register(
                IntGauge::new(
                    "octopus_config_generation",
                    "Generation of the config now serving; 1 at start, +1 per successful reload.",
                )
                .expect("static metric definition"),
            ),
            access_log_lines_total: f.counters(
                "octopus_access_log_lines_total",
                "Access-log lines written, by listener direction.",
                &["direction"],
            ),
            access_log_dropped_total: f.register(
                IntCounter::new(
                    "octopus_access_log_dropped_total",
                    "Access-log lines dropped because the writer's queue was full (traffic is never held up for a log line).",
                )
                .expect("static metric definition"),
            ),
            inbound_connections_total: f.counters(
                "octopus_inbound_connections_total",
                "Connections accepted on an inbound listener with tls, by transport: mtls (handshake completed) or plaintext (inbound.tls.mode: permissive).",
                &["transport"],
            ),
            app_probes_total: f.counters(
                "octopus_app_probes_total",
                "Probes of the local app run for GET /app-health/<probe> (admin.app_probes), by probe and result: ok (HTTP 200-399, or the TCP connect succeeded) or failed.",
                &["probe", "result"],
            ),
            protocol_detect_seconds: f.register(
                HistogramVec::new(
                    HistogramOpts::new(
                        "octopus_protocol_detect_seconds",
                        "Time from accepting a captured connection to knowing its protocol (http1|http2|tls|opaque; opaque includes a server that spoke first), by listener.",
                    )
                    .buckets(DETECT_BUCKETS.to_vec()),
                    &["listener", "protocol"],
                )
                .expect("static metric definition"),
            ),
            protocol_detect_timeouts_total: f.counters(
                "octopus_protocol_detect_timeouts_total",
                "Captured connections on which neither side spoke within detect_timeout, carried as opaque TCP, by listener.",
                &["listener"],
            ),
            tcp_connections: f.gauges(
                "octopus_tcp_connections",
                "Opaque TCP connections open now, by route (a tcp_routes name, passthrough, or inbound).",
                &["route"],
            ),
            tcp_connections_total: f.counters(
                "octopus_tcp_connections_total",
                "Opaque TCP connections by route and result: ok (carried), connect_failed (no endpoint answered), refused (no route, or a limit).",
                &["route", "result"],
            ),
            tcp_bytes_total: f.counters(
                "octopus_tcp_bytes_total",
                "Bytes of opaque TCP connections, by route and direction (received: from the client; sent: to the client).",
                &["route", "direction"],
            ),
            downstream_bytes_total: f.counters(
                "octopus_downstream_bytes_total",
                "Bytes received from and sent to clients on a listener (HTTP bytes: after TLS), by listener and direction (received|sent).",
                &["listener", "direction"],
            ),
            upstream_bytes_total: f.counters(
                "octopus_upstream_bytes_total",
                "Bytes sent to and received from a cluster's endpoints (HTTP bytes: before TLS), by cluster and direction (sent|received).",
                &["cluster", "direction"],
            ),
            trace_spans_total: f.counters(
                "octopus_trace_spans_total",
                "Spans by fate: exported to the collector, dropped (export queue full), or export_failed (the collector refused or could not be reached).",
                &["result"],
            ),
            upstream_connections_opened_total: f.counters(
                "octopus_upstream_connections_opened_total",
                "Upstream connections opened (TCP, TLS and HTTP handshake done), by cluster.",
                &["cluster"],
            ),
            upstream_connections_closed_total: f.counters(
                "octopus_upstream_connections_closed_total",
                "Upstream connections closed, by either side, by cluster.",
                &["cluster"],
            ),
            upstream_connections_failed_total: f.counters(
                "octopus_upstream_connections_failed_total",
                "Upstream connections that could not be opened (refused, timed out, TLS or HTTP/2 handshake failed), by cluster.",
                &["cluster"],
            ),
            connections_total: f.counters(
                "octopus_connections_total",
                "Downstream connections accepted, by listener.",
                &["listener"],
            ),
            connections_active: f.gauges(
                "octopus_connections_active",
                "Downstream connections open now, by listener.",
                &["listener"],
            ),
            listener_overflow_total: f.counters(
                "octopus_listener_overflow_total",
                "Connections closed at accept because the listener's max_connections (or its side's descriptor share) was reached.",
                &["listener"],
            ),
            listener_accept_errors_total: f.counters(
                "octopus_listener_accept_errors_total",
                "Failed accepts (e.g. EMFILE: out of file descriptors); each pauses the listener 50 ms.",
                &["listener"],
            ),
            descriptors: f.gauges(
                "octopus_descriptors",
                "File descriptors of each side (outbound, inbound): used by connections from clients and to upstreams, and the side's capacity.",
                &["side", "state"],
            ),
            descriptors_refused_total: f.counters(
                "octopus_descriptors_refused_total",
                "Connections (accepted or to an upstream) refused because the side's descriptor share was spent.",
                &["side"],
            ),
            dns_failures_total: f.counters(
                "octopus_dns_resolution_failures_total",
                "Failed DNS lookups of endpoint names; the last good addresses keep serving.",
                &["cluster"],
            ),
            mirror_requests_total: f.counters(
                "octopus_mirror_requests_total",
                "Shadow copies sent by a route's mirror (responses are ignored).",
                &["route", "cluster"],
            ),
            rate_limited_total: f.counters(
                "octopus_rate_limited_total",
                "Requests answered 429 rate_limited by a route's rate_limit.",
                &["route"],
            ),
            upstream_retries_total: f.counters(
                "octopus_upstream_retries_total",
                "Retries sent (tries after the first), by the cluster of the failed try.",
                &["cluster"],
            ),
            retry_budget_exhausted_total: f.counters(
                "octopus_retry_budget_exhausted_total",
                "Failures returned without a retry because the route's retry budget was spent.",
                &["cluster"],
            ),
            circuit_overflow_total: f.counters(
                "octopus_circuit_overflow_total",
                "Requests answered 503 at once because a cluster limit was reached.",
                &["cluster", "limit"],
            ),
            tls_handshakes_total: f.counters(
                "octopus_tls_handshakes_total",
                "TLS handshakes by direction (inbound|outbound) and result (ok, no_client_cert, unknown_ca, expired, bad_identity, protocol).",
                &["direction", "result"],
            ),
            tls_cert_expiry: f.gauges(
                "octopus_tls_cert_expiry_timestamp_seconds",
                "When the first certificate of a loaded PEM file expires (unix time).",
                &["path"],
            ),
            endpoints: f.register(endpoints::EndpointCollector::new()),
            process: process::ProcessMetrics::new(),
            // A handle to the same registry (it is reference-counted).
            registry: registry.clone(),
        };
        let build_info = f.gauges(
            "octopus_build_info",
            "Always 1; labelled with the octopus version and the git revision it was built from.",
            &["version", "revision"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("OCTOPUS_REVISION")])
            .set(1);
        for c in m.process.collectors() {
            registry
                .register(c)
                .expect("metric families have distinct names");
        }
        // Series that exist from the start, so alerts on `increase(...)` see them.
        for t in ["mtls", "plaintext"] {
            m.inbound_connections_total.with_label_values(&[t]);
        }
        for l in ["outbound", "inbound"] {
            m.protocol_detect_timeouts_total.with_label_values(&[l]);
        }
        for r in ["exported", "dropped", "export_failed"] {
            m.trace_spans_total.with_label_values(&[r]);
        }
        for r in ["success", "failure"] {
            m.config_reloads_total.with_label_values(&[r]);
        }
        for side in ["outbound", "inbound"] {
            m.descriptors_refused_total.with_label_values(&[side]);
            m.access_log_lines_total.with_label_values(&[side]);
        }
        Arc::new(m)
    }

    /// Where the endpoint gauges are read from at each scrape (the running proxy's
    /// clusters). Until one is set they have no series.
    pub fn set_endpoint_source(&self, source: std::sync::Weak<dyn EndpointSource>) {
        self.endpoints.set_source(source);
    }

    /// Handles for one (direction, route, cluster) target, resolved once when the
    /// routing table is compiled so the request path does no label look-ups.
    pub fn target(&self, direction: &str, route: &str, cluster: &str) -> TargetMetrics {
        TargetMetrics {
            duration: self
                .request_duration
                .with_label_values(&[direction, route, cluster]),
            labels: Arc::new([
                direction.to_string(),
                route.to_string(),
                cluster.to_string(),
            ]),
            family: self.requests_total.clone(),
            errors: self.proxy_errors_total.clone(),
            codes: Arc::new(ArcSwap::from_pointee(Vec::new())),
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        self.process.refresh();
        let mut buf = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        // Encoding well-formed families into a Vec cannot fail.
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Per-target request metrics. Status-code counters are created on first use and
/// kept in a copy-on-write list: reads are a lock-free load and a short scan.
#[derive(Clone)]
pub struct TargetMetrics {
    duration: Histogram,
    labels: Arc<[String; 3]>,
    family: IntCounterVec,
    errors: IntCounterVec,
    codes: Arc<ArcSwap<Vec<(u16, IntCounter)>>>,
}

impl TargetMetrics {
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
        self.counter(status).inc();
    }

    /// Creates this target's `octopus_proxy_errors_total` series for `kinds` at 0, so
    /// `increase()` and alerts see the first burst of a kind that never happened before.
    pub fn touch_errors(&self, kinds: &[&str]) {
        let [d, r, c] = &*self.labels;
        for kind in kinds {
            self.errors.with_label_values(&[d.as_str(), r, c, kind]);
        }
    }

    /// Counts one error of `kind` in `octopus_proxy_errors_total`. Errors are the rare
    /// path: the label look-up happens here rather than at compile time.
    pub fn error(&self, kind: &str) {
        let [d, r, c] = &*self.labels;
        self.errors.with_label_values(&[d, r, c, kind]).inc();
    }

    fn counter(&self, status: u16) -> IntCounter {
        if let Some((_, c)) = self.codes.load().iter().find(|(s, _)| *s == status) {
            return c.clone();
        }
        let [d, r, c] = &*self.labels;
        let counter = self
            .family
            .with_label_values(&[d, r, c, &status.to_string()]);
        self.codes.rcu(|list| {
            let mut list = Vec::clone(list);
            if !list.iter().any(|(s, _)| *s == status) {
                list.push((status, counter.clone()));
            }
            list
        });
        counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_by_labels() {
        let m = Metrics::new();
        let t = m.target("outbound", "r1", "c1");
        t.record(200, Duration::from_millis(3));
        t.record(200, Duration::from_millis(3));
        t.record(503, Duration::from_millis(1));
        let text = m.encode();
        assert!(text.contains(r#"octopus_requests_total{cluster="c1",code="200",direction="outbound",route="r1"} 2"#), "{text}");
        assert!(text.contains(
            r#"octopus_requests_total{cluster="c1",code="503",direction="outbound",route="r1"} 1"#
        ));
        assert!(text.contains(r#"octopus_request_duration_seconds_count{cluster="c1",direction="outbound",route="r1"} 3"#));
        assert!(text.contains("process_resident_memory_bytes"));
        assert!(text.contains(r#"octopus_config_reloads_total{result="failure"} 0"#));
        let build = text
            .lines()
            .find(|l| l.starts_with("octopus_build_info{"))
            .unwrap();
        assert!(
            build.contains(r#"revision=""#) && build.ends_with(" 1"),
            "{build}"
        );
        assert!(!build.contains(r#"revision="""#), "{build}");
    }
}
