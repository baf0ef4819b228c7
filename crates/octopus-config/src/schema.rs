//! The typed schema of the whole control file (`shared/config-contract.md`, extended in
//! `docs/configuration.md`). Every struct rejects unknown keys, so a typo is an error
//! rather than a silently ignored setting.

use crate::types::{Cidrs, Duration, HashOn, HostPort, Hosts, LbPolicy, Protocol, RetryOn};
use serde::{de, Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The pod's Kubernetes namespace, for expanding service names in `match.host`
    /// (`payments` also matches `payments.shop.svc.cluster.local`). Absent: the
    /// `POD_NAMESPACE` environment variable, else no expansion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Kubernetes cluster's DNS domain.
    #[serde(default = "defaults::cluster_domain")]
    pub cluster_domain: String,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<OutboundConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<InboundConfig>,
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// How long a graceful shutdown waits for in-flight requests.
    #[serde(default = "defaults::drain_timeout")]
    pub drain_timeout: Duration,
    /// OpenTelemetry spans per request, exported over OTLP (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
}

impl Config {
    /// The ports of the listeners this config opens (admin, metrics, outbound,
    /// inbound).
    pub fn listen_ports(&self) -> Vec<u16> {
        let mut ports = vec![self.admin.listen.port];
        ports.extend(self.admin.metrics_listen.as_ref().map(|a| a.port));
        ports.extend(self.outbound.as_ref().map(|o| o.listen.port));
        ports.extend(self.inbound.as_ref().map(|i| i.listen.port));
        ports.retain(|p| *p != 0);
        ports
    }
}

/// `tracing:`: a server span per request and a client span per upstream try.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    pub otlp: OtlpConfig,
    /// Share of new traces recorded (0.0-1.0). Parent-based: a request whose
    /// `traceparent` says sampled (or not) is recorded (or not) whatever this says.
    #[serde(default = "defaults::sample")]
    pub sample_ratio: f64,
    /// `service.name` of octopus' spans.
    #[serde(default = "defaults::service_name")]
    pub service_name: String,
}

/// Where spans are exported.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// `http://host:port` of the collector (4318 for http/protobuf, 4317 for grpc by
    /// convention). Plain HTTP: run the collector as a local agent or sidecar.
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with binary protobuf bodies: POST `/v1/traces`.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP/gRPC over HTTP/2 cleartext.
    #[serde(rename = "grpc")]
    Grpc,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "defaults::admin_listen")]
    pub listen: HostPort,
    /// Let peers other than loopback change the log filter (`PUT /log-level`). Off by
    /// default: keep admin on loopback and change the level with `kubectl exec` or a
    /// port-forward.
    #[serde(default)]
    pub allow_remote_log_level: bool,
    /// A second listener that serves `GET /metrics` and nothing else, for Prometheus
    /// (e.g. `0.0.0.0:9902`), so `admin.listen` can stay on loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<HostPort>,
    /// Probes of the local app that octopus runs on the kubelet's behalf, served at
    /// `GET /app-health/<name>` on `listen` and `metrics_listen`. The kubelet cannot
    /// probe the app itself once inbound traffic is captured into the mTLS-only inbound
    /// listener, and an exec probe would need octopus inside the app's image.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub app_probes: BTreeMap<String, AppProbeConfig>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: defaults::admin_listen(),
            allow_remote_log_level: false,
            metrics_listen: None,
            app_probes: BTreeMap::new(),
        }
    }
}

/// `admin.app_probes.<name>`: an HTTP GET of `path` (200-399 passes, the kubelet's
/// rule), or a TCP connect when `path` is absent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppProbeConfig {
    pub port: u16,
    /// Path (and query) of the HTTP GET, starting with `/`. Absent: a TCP connect check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The app's address: an IP literal, loopback by default because the app and
    /// octopus share the pod's network namespace. The scheme is always plain http.
    #[serde(default = "AppProbeConfig::default_host")]
    pub host: std::net::IpAddr,
    /// The whole probe (connect and answer) must finish within this.
    #[serde(default = "AppProbeConfig::default_timeout")]
    pub timeout: Duration,
}

impl AppProbeConfig {
    fn default_host() -> std::net::IpAddr {
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    }
    /// The kubelet's own default `timeoutSeconds`.
    fn default_timeout() -> Duration {
        Duration::from_millis(1_000)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    pub listen: HostPort,
    /// A client gets this long to send a request head; an idle HTTP/1.1 keep-alive
    /// connection is closed after it too.
    #[serde(default = "defaults::header_read_timeout")]
    pub header_read_timeout: Duration,
    /// Open client connections at most; more are accepted and closed at once.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
    /// Largest request head (request line + headers) in bytes; larger gets 431.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: u32,
    /// Most request headers; more gets 431.
    #[serde(default = "defaults::max_headers")]
    pub max_headers: u32,
    /// Most concurrent HTTP/2 streams per client connection.
    #[serde(default = "defaults::max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// A client connection with no request started or in progress for this long is
    /// closed gracefully (HTTP/2: GOAWAY; streams in progress finish).
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Duration,
    /// Requests (HTTP/2 streams included) in progress on this listener at most, over
    /// all its connections; more are answered 503 `overloaded` at once. Bounds what
    /// multiplexed clients can make octopus hold open upstream.
    #[serde(default = "defaults::max_requests")]
    pub max_requests: u32,
    /// What to do with request headers whose names contain `_` (Envoy's
    /// `headers_with_underscores_action`): `allow`, `drop` or `reject` (400). Look-alikes
    /// of octopus' own headers (`x_octopus_peer_identity`, `x_forwarded_for`) are
    /// always dropped, whatever this says.
    #[serde(default)]
    pub headers_with_underscores: UnderscoreHeaders,
    /// One JSON line per request, written off the request path (off by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Connections that are not HTTP, or arrive for an `opaque_ports` port, matched on
    /// their destination (the original one when captured); the first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp_routes: Vec<TcpRouteConfig>,
    /// Destination ports carried as opaque TCP with no protocol detection (databases
    /// and brokers whose clients or servers speak first in ways detection cannot tell).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<u16>,
    /// A captured HTTP request or TCP connection that matches no route: `passthrough`
    /// (to its original destination, unchanged) or `refuse` (404 / connection closed).
    #[serde(default)]
    pub unmatched: Unmatched,
    /// How long a captured connection may stay silent (client and server) before it is
    /// carried as opaque TCP. A server that speaks first switches it at once.
    #[serde(default = "defaults::detect_timeout")]
    pub detect_timeout: Duration,
}

/// `outbound.unmatched`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    #[default]
    Passthrough,
    Refuse,
}

/// `outbound.tcp_routes[]`: opaque TCP to a `protocol: tcp` cluster.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpRouteConfig {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matches: TcpMatchConfig,
    pub cluster: String,
    /// A connection with no bytes either way for this long is closed.
    #[serde(default = "defaults::tcp_idle_timeout")]
    pub idle_timeout: Duration,
}

/// What a TCP route matches: the destination port and/or network; both optional
/// (an empty match takes every connection that reaches it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpMatchConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Cidrs>,
}

/// `outbound.access_log` / `inbound.access_log`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// `stdout`, or a file octopus appends to (created if missing).
    pub path: String,
    /// Share of requests logged, 0.0-1.0 (each request drawn at random).
    #[serde(default = "defaults::sample")]
    pub sample: f64,
    /// Log the query string with the path; `false` logs the path alone (queries often
    /// carry tokens and personal data).
    #[serde(default = "defaults::yes")]
    pub include_query: bool,
    /// A file is renamed to `PATH.1` (replacing an older one) and reopened once it
    /// grows past this many bytes; unset: never (use logrotate and SIGUSR1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matches: MatchConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<SplitTarget>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorConfig>,
    /// Whole request, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryConfig>,
    /// Largest request body accepted on this route, in bytes; larger gets 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
    /// Protocols a client may switch to with `Upgrade` (default: only `websocket`);
    /// any other offer (`h2c` above all) is removed and the request proxied as usual.
    #[serde(default = "defaults::upgrades")]
    pub upgrades: Vec<String>,
    /// A request body that sends nothing for this long is abandoned: 408.
    #[serde(default = "defaults::request_body_timeout")]
    pub request_body_timeout: Duration,
    /// Local rate limit of the route (token bucket); over it: 429 `rate_limited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
}

/// A route's token bucket: refilled at `requests_per_second`, holding at most
/// `burst` requests (default: one second's worth).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests_per_second: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl RateLimitConfig {
    /// The bucket's size: `burst`, else one second's worth (at least 1).
    pub fn capacity(&self) -> u32 {
        self.burst
            .unwrap_or_else(|| self.requests_per_second.ceil().clamp(1.0, u32::MAX as f64) as u32)
    }
}

/// `headers_with_underscores`: see [`OutboundConfig::headers_with_underscores`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum UnderscoreHeaders {
    #[default]
    Allow,
    Drop,
    Reject,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Request authority without port: exact, `*.suffix`, or `*` for any, or a list of
    /// them; absent = any. A Kubernetes service name also matches its qualified forms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Hosts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitTarget {
    pub cluster: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    pub cluster: String,
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Total tries, the first included.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default = "defaults::retry_on")]
    pub retry_on: Vec<RetryOn>,
    #[serde(default = "defaults::backoff")]
    pub backoff: BackoffConfig,
    #[serde(default = "defaults::budget")]
    pub budget: BudgetConfig,
    /// Retry POST and PATCH too (only when the upstream handles repeats safely).
    #[serde(default)]
    pub non_idempotent: bool,
    /// Request bodies up to this size are kept for replay; larger ones are streamed
    /// and their requests not retried.
    #[serde(default = "defaults::max_replay_bytes")]
    pub max_replay_bytes: u32,
    /// Add `x-octopus-attempts` to responses that took more than one try.
    #[serde(default = "defaults::yes")]
    pub attempts_header: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    pub base: Duration,
    pub max: Duration,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    pub ratio: f64,
    pub min_per_second: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    pub listen: HostPort,
    #[serde(default = "defaults::header_read_timeout")]
    pub header_read_timeout: Duration,
    /// Open client connections at most; more are accepted and closed at once.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
    /// Largest request head (request line + headers) in bytes; larger gets 431.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: u32,
    /// Most request headers; more gets 431.
    #[serde(default = "defaults::max_headers")]
    pub max_headers: u32,
    /// Most concurrent HTTP/2 streams per client connection.
    #[serde(default = "defaults::max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// A client connection with no request started or in progress for this long is
    /// closed gracefully (HTTP/2: GOAWAY; streams in progress finish).
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Duration,
    /// Requests (HTTP/2 streams included) in progress on this listener at most, over
    /// all its connections; more are answered 503 `overloaded` at once. Bounds what
    /// multiplexed clients can make octopus hold open upstream.
    #[serde(default = "defaults::max_requests")]
    pub max_requests: u32,
    /// What to do with request headers whose names contain `_` (Envoy's
    /// `headers_with_underscores_action`): `allow`, `drop` or `reject` (400). Look-alikes
    /// of octopus' own headers (`x_octopus_peer_identity`, `x_forwarded_for`) are
    /// always dropped, whatever this says.
    #[serde(default)]
    pub headers_with_underscores: UnderscoreHeaders,
    /// Protocols a peer may switch to with `Upgrade` (default: only `websocket`).
    #[serde(default = "defaults::upgrades")]
    pub upgrades: Vec<String>,
    /// A request body that sends nothing for this long is abandoned: 408.
    #[serde(default = "defaults::request_body_timeout")]
    pub request_body_timeout: Duration,
    /// Limits on what octopus opens to the local app (as a cluster's `circuit_breaker`):
    /// connections, pending and in-progress requests. Always on for inbound.
    #[serde(default = "defaults::inbound_limits")]
    pub circuit_breaker: CircuitBreakerConfig,
    /// One JSON line per request, written off the request path (off by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogConfig>,
    pub forward_to: HostPort,
    #[serde(default)]
    pub app_protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<InboundTlsConfig>,
    /// App ports whose plain (non-mTLS) captured connections are carried as opaque TCP
    /// with no protocol detection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<u16>,
    /// As `outbound.detect_timeout`, for plain captured connections.
    #[serde(default = "defaults::detect_timeout")]
    pub detect_timeout: Duration,
    /// An opaque TCP connection to the app with no bytes either way for this long is
    /// closed.
    #[serde(default = "defaults::tcp_idle_timeout")]
    pub tcp_idle_timeout: Duration,
}

/// File paths only: /config prints these, never the files' contents.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InboundTlsConfig {
    pub cert: String,
    pub key: String,
    pub client_ca: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_identities: Vec<String>,
    /// Lowest TLS version accepted: "1.3" (default) or "1.2".
    #[serde(default = "defaults::min_tls_version")]
    pub min_version: String,
    /// `strict`: mTLS only. `permissive`: mTLS and plain HTTP on the same port (told
    /// apart by the first byte), to move a service's clients to mTLS one at a time.
    #[serde(default)]
    pub mode: TlsMode,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    Strict,
    Permissive,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    #[serde(default)]
    pub lb: LbPolicy,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Duration,
    /// How often endpoints given as DNS names are re-resolved.
    #[serde(default = "defaults::dns_refresh_interval")]
    pub dns_refresh_interval: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTlsConfig>,
    /// Largest response head (status line and headers) accepted from an endpoint;
    /// a larger or endless one fails that request with 502.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_response_header_bytes: u32,
    /// Most response header fields accepted from an endpoint (HTTP/1.1).
    #[serde(default = "defaults::max_headers")]
    pub max_response_headers: u32,
    /// How each endpoint's upstream connections are kept for reuse.
    #[serde(default)]
    pub pool: PoolConfig,
}

/// Each endpoint's connection pool: how many idle keep-alive connections it keeps,
/// for how long, and how many requests share one HTTP/2 connection.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Most idle connections kept per endpoint (HTTP/1.1); 0 closes each connection
    /// after its request. Like nginx's `keepalive`.
    #[serde(default = "defaults::max_idle_per_endpoint")]
    pub max_idle_per_endpoint: u32,
    /// An idle connection is closed after this long.
    #[serde(default = "defaults::pool_idle_timeout")]
    pub idle_timeout: Duration,
    /// Most requests in flight on one HTTP/2 connection before another is opened.
    #[serde(default = "defaults::max_streams_per_connection")]
    pub max_streams_per_connection: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle_per_endpoint: defaults::max_idle_per_endpoint(),
            idle_timeout: defaults::pool_idle_timeout(),
            max_streams_per_connection: defaults::max_streams_per_connection(),
        }
    }
}

/// `10.0.0.11:8080` or `{ address: 10.0.0.12:8080, weight: 3 }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointConfig {
    pub address: HostPort,
    pub weight: u32,
}

impl schemars::JsonSchema for EndpointConfig {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Endpoint".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let address = generator.subschema_for::<HostPort>();
        schemars::json_schema!({
            "description": "`host:port`, or `{ address, weight }` (weight 0-10000, default 1; 0 drains)",
            "anyOf": [
                address,
                {
                    "type": "object",
                    "properties": {
                        "address": address,
                        "weight": { "type": "integer", "minimum": 0, "maximum": 10000, "default": 1 }
                    },
                    "required": ["address"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

impl<'de> Deserialize<'de> for EndpointConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Long {
            address: HostPort,
            #[serde(default = "defaults::weight")]
            weight: u32,
        }
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = EndpointConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`host:port` or `{ address: host:port, weight: N }`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EndpointConfig, E> {
                let address = v.parse().map_err(E::custom)?;
                Ok(EndpointConfig { address, weight: 1 })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<EndpointConfig, A::Error> {
                let long = Long::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(EndpointConfig {
                    address: long.address,
                    weight: long.weight,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    #[serde(default = "defaults::limit")]
    pub max_connections: u32,
    #[serde(default = "defaults::limit")]
    pub max_pending_requests: u32,
    #[serde(default = "defaults::limit")]
    pub max_requests: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetectionConfig {
    #[serde(default = "defaults::consecutive_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "defaults::base_ejection_time")]
    pub base_ejection_time: Duration,
    #[serde(default = "defaults::max_ejection_percent")]
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub path: String,
    #[serde(default = "defaults::hc_interval")]
    pub interval: Duration,
    #[serde(default = "defaults::hc_timeout")]
    pub timeout: Duration,
    #[serde(default = "defaults::unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    #[serde(default = "defaults::healthy_threshold")]
    pub healthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsConfig {
    pub cert: String,
    pub key: String,
    pub ca: String,
    pub server_identity: String,
}

/// Default largest request or response head, in bytes (listeners and clusters).
pub const DEFAULT_MAX_HEADER_BYTES: u32 = 64 * 1024;
/// Protocols a client may `Upgrade` to unless a route (or `inbound`) says otherwise.
pub const DEFAULT_UPGRADES: &[&str] = &["websocket"];
/// A stalled request body is abandoned after this long unless a route says otherwise.
pub const DEFAULT_REQUEST_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Default most header fields in a request or response head.
pub const DEFAULT_MAX_HEADERS: u32 = 100;

mod defaults {
    use super::*;
    pub fn admin_listen() -> HostPort {
        HostPort {
            host: "127.0.0.1".into(),
            port: 9901,
        }
    }
    pub fn drain_timeout() -> Duration {
        Duration::from_millis(10_000)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_millis(1_000)
    }
    pub fn retry_on() -> Vec<RetryOn> {
        vec![RetryOn::ConnectFailure, RetryOn::Reset]
    }
    pub fn backoff() -> BackoffConfig {
        BackoffConfig {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
    pub fn budget() -> BudgetConfig {
        BudgetConfig {
            ratio: 0.2,
            min_per_second: 10,
        }
    }
    pub fn max_replay_bytes() -> u32 {
        64 * 1024
    }
    pub fn cluster_domain() -> String {
        "cluster.local".into()
    }
    pub fn service_name() -> String {
        "octopus".into()
    }
    pub fn sample() -> f64 {
        1.0
    }
    pub fn yes() -> bool {
        true
    }
    pub fn min_tls_version() -> String {
        "1.3".into()
    }
    pub fn max_connections() -> u32 {
        10_000
    }
    pub fn max_header_bytes() -> u32 {
        DEFAULT_MAX_HEADER_BYTES
    }
    pub fn max_headers() -> u32 {
        DEFAULT_MAX_HEADERS
    }
    pub fn detect_timeout() -> Duration {
        Duration(std::time::Duration::from_secs(1))
    }
    pub fn tcp_idle_timeout() -> Duration {
        Duration(std::time::Duration::from_secs(3600))
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_millis(300_000)
    }
    pub fn max_concurrent_streams() -> u32 {
        100
    }
    pub fn max_idle_per_endpoint() -> u32 {
        32
    }
    /// Shorter than most upstreams' own keep-alive timeouts (nginx 75 s, Envoy 1 h),
    /// so octopus usually closes an idle connection before the upstream does.
    pub fn pool_idle_timeout() -> Duration {
        Duration::from_millis(30_000)
    }
    pub fn max_streams_per_connection() -> u32 {
        100
    }
    pub fn max_requests() -> u32 {
        10_000
    }
    pub fn upgrades() -> Vec<String> {
        super::DEFAULT_UPGRADES
            .iter()
            .map(|u| u.to_string())
            .collect()
    }
    pub fn request_body_timeout() -> Duration {
        Duration(super::DEFAULT_REQUEST_BODY_TIMEOUT)
    }
    pub fn inbound_limits() -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            max_connections: limit(),
            max_pending_requests: limit(),
            max_requests: limit(),
        }
    }
    pub fn header_read_timeout() -> Duration {
        Duration::from_millis(30_000)
    }
    pub fn dns_refresh_interval() -> Duration {
        Duration::from_millis(5_000)
    }
    pub fn weight() -> u32 {
        1
    }
    pub fn limit() -> u32 {
        1024
    }
    pub fn consecutive_failures() -> u32 {
        5
    }
    pub fn base_ejection_time() -> Duration {
        Duration::from_millis(30_000)
    }
    pub fn max_ejection_percent() -> u32 {
        50
    }
    pub fn hc_interval() -> Duration {
        Duration::from_millis(5_000)
    }
    pub fn hc_timeout() -> Duration {
        Duration::from_millis(1_000)
    }
    pub fn unhealthy_threshold() -> u32 {
        2
    }
    pub fn healthy_threshold() -> u32 {
        1
    }
}

impl Config {
    /// The namespace service names are expanded in: `namespace`, else the non-empty
    /// `POD_NAMESPACE` environment variable (the downward API sets it), else none.
    pub fn effective_namespace(&self) -> Option<String> {
        self.namespace.clone().or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.trim().is_empty())
        })
    }

    /// A one-line description for `octopus validate` and the startup log.
    pub fn summary(&self) -> String {
        let routes = self.outbound.as_ref().map_or(0, |o| o.routes.len());
        let endpoints: usize = self.clusters.values().map(|c| c.endpoints.len()).sum();
        let mut s = format!(
            "{routes} route(s), {} cluster(s), {endpoints} endpoint(s); admin {}",
            self.clusters.len(),
            self.admin.listen
        );
        if let Some(o) = &self.outbound {
            s.push_str(&format!(", outbound {}", o.listen));
        }
        if let Some(i) = &self.inbound {
            s.push_str(&format!(", inbound {} -> {}", i.listen, i.forward_to));
        }
        s
    }
}

/// The client-facing limits of a traffic listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    pub header_read_timeout: std::time::Duration,
    pub max_connections: u32,
    pub max_header_bytes: u32,
    pub max_headers: u32,
    pub max_concurrent_streams: u32,
    pub idle_timeout: std::time::Duration,
    pub max_requests: u32,
    pub headers_with_underscores: UnderscoreHeaders,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            header_read_timeout: defaults::header_read_timeout().get(),
            max_connections: defaults::max_connections(),
            max_header_bytes: defaults::max_header_bytes(),
            max_headers: defaults::max_headers(),
            max_concurrent_streams: defaults::max_concurrent_streams(),
            idle_timeout: defaults::idle_timeout().get(),
            max_requests: defaults::max_requests(),
            headers_with_underscores: UnderscoreHeaders::default(),
        }
    }
}

macro_rules! listener_limits {
    ($ty:ty) => {
        impl $ty {
            pub fn limits(&self) -> ListenerLimits {
                ListenerLimits {
                    header_read_timeout: self.header_read_timeout.get(),
                    max_connections: self.max_connections,
                    max_header_bytes: self.max_header_bytes,
                    max_headers: self.max_headers,
                    max_concurrent_streams: self.max_concurrent_streams,
                    idle_timeout: self.idle_timeout.get(),
                    max_requests: self.max_requests,
                    headers_with_underscores: self.headers_with_underscores,
                }
            }
        }
    };
}
listener_limits!(OutboundConfig);
listener_limits!(InboundConfig);
