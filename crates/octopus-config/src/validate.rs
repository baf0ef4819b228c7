//! Semantic checks: everything serde cannot express. All problems are collected so an
//! operator fixes a file in one pass.

use crate::error::{did_you_mean, ConfigError};
use crate::schema::*;
use crate::types::{http_token, HostPort, Protocol};
use std::collections::{HashMap, HashSet};

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The collector's address from `http://host:port[/]`: plain HTTP only.
pub fn otlp_endpoint(endpoint: &str) -> Result<HostPort, String> {
    let bad = || {
        format!("`{endpoint}`: expected http://HOST:PORT, e.g. http://127.0.0.1:4318 (https is not supported: run the collector as a local agent)")
    };
    let rest = endpoint.strip_prefix("http://").ok_or_else(bad)?;
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    if hostport.contains('/') {
        return Err(bad());
    }
    hostport.parse::<HostPort>().map_err(|_| bad())
}

/// What the checks may touch outside the file's text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checks {
    /// Skip opening the TLS files a config names (`octopus validate --offline`): a
    /// ConfigMap checked in CI names paths that exist only inside the pod.
    pub offline: bool,
}

pub(crate) fn check(c: &Config, checks: Checks) -> Vec<ConfigError> {
    let mut v = Checker {
        errors: Vec::new(),
        checks,
    };
    v.listeners(c);
    v.app_probes(&c.admin);
    if let Some(out) = &c.outbound {
        v.routes(out, c);
        v.tcp_routes(out, c);
        v.access_log("outbound.access_log", out.access_log.as_ref());
    }
    if let Some(inb) = &c.inbound {
        v.access_log("inbound.access_log", inb.access_log.as_ref());
        if inb.app_protocol == Protocol::Tcp {
            v.err(
                "inbound.app_protocol",
                "`tcp`: the app's HTTP protocol is http1 or http2; opaque TCP reaches the app by the port a peer connected to",
            );
        }
        v.ports("inbound.opaque_ports", &inb.opaque_ports);
        v.detect_timeout("inbound.detect_timeout", inb.detect_timeout);
        v.at_least_10ms("inbound.tcp_idle_timeout", inb.tcp_idle_timeout.get());
    }
    if let Some(inb) = &c.inbound {
        if let Some(tls) = &inb.tls {
            for (key, path) in [
                ("cert", &tls.cert),
                ("key", &tls.key),
                ("client_ca", &tls.client_ca),
            ] {
                v.readable(&format!("inbound.tls.{key}"), path);
            }
            if tls.min_version != "1.2" && tls.min_version != "1.3" {
                v.err(
                    "inbound.tls.min_version",
                    format!("`{}`: expected \"1.2\" or \"1.3\"", tls.min_version),
                );
            }
            if tls.allowed_identities.iter().any(|i| i.trim().is_empty()) {
                v.err(
                    "inbound.tls.allowed_identities",
                    "identities must not be empty",
                );
            }
        }
    }
    for (name, cluster) in &c.clusters {
        v.cluster(name, cluster);
        v.not_octopus_itself(name, cluster, c);
    }
    if let Some(t) = &c.tracing {
        v.tracing(t);
    }
    if let Some(ns) = &c.namespace {
        if !dns_label(ns) {
            v.err("namespace", format!("`{ns}`: a Kubernetes namespace is a DNS label (lower-case letters, digits and `-`, at most 63)"));
        }
    }
    if !c.cluster_domain.split('.').all(dns_label) {
        v.err(
            "cluster_domain",
            format!(
                "`{}`: expected a DNS name such as cluster.local",
                c.cluster_domain
            ),
        );
    }
    v.errors
}

struct Checker {
    errors: Vec<ConfigError>,
    checks: Checks,
}

impl Checker {
    fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push(ConfigError::new(path, msg));
    }

    /// Keys whose behaviour has not landed yet are refused rather than ignored: a config
    /// that asks for retries must never run without them.
    fn unsupported(&mut self, path: &str, what: &str) {
        self.err(
            path,
            format!("{what} is not supported yet by this octopus version"),
        );
    }

    /// Certificate files must exist when the config is checked, so `octopus validate`
    /// catches a wrong path before a deploy does.
    fn readable(&mut self, path: &str, file: &str) {
        if self.checks.offline {
            return;
        }
        if let Err(e) = std::fs::File::open(file) {
            self.err(path, format!("cannot read `{file}`: {e}"));
        }
    }

    /// `admin.app_probes`: each name is a path segment of `/app-health/<name>` and a
    /// metric label, so it is held to DNS-label characters; each probe must be one the
    /// admin port can finish well within the kubelet's own timeout.
    fn app_probes(&mut self, admin: &AdminConfig) {
        for (name, probe) in &admin.app_probes {
            let p = format!("admin.app_probes.{name}");
            let name_ok = (1..=63).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !name_ok {
                self.err(
                    &p,
                    format!("`{name}`: a probe name must be 1-63 characters of [a-z0-9-] (it is the path segment of /app-health/<name> and a metrics label)"),
                );
            }
            if probe.port == 0 {
                self.err(format!("{p}.port"), "must be 1-65535");
            }
            if let Some(path) = &probe.path {
                if !path.starts_with('/') {
                    self.err(
                        format!("{p}.path"),
                        format!("`{path}`: must start with `/`"),
                    );
                } else if let Some(bad) = path.chars().find(|ch| !probe_path_char(*ch)) {
                    // Refused here rather than at probe time, where it could only fail
                    // every probe: the request line must be a valid URI path and query.
                    self.err(
                        format!("{p}.path"),
                        format!(
                            "`{path}`: {bad:?} is not allowed in a URL path; percent-encode it"
                        ),
                    );
                }
            }
            let t = probe.timeout.get();
            if t.is_zero() {
                self.err(format!("{p}.timeout"), "must be greater than 0");
            } else if t > std::time::Duration::from_secs(60) {
                self.err(format!("{p}.timeout"), "must be at most 60s");
            }
        }
    }

    fn access_log(&mut self, p: &str, log: Option<&AccessLogConfig>) {
        let Some(log) = log else { return };
        if log.path.trim().is_empty() {
            self.err(format!("{p}.path"), "`stdout` or a file path");
        }
        if !(0.0..=1.0).contains(&log.sample) {
            self.err(
                format!("{p}.sample"),
                format!("{}: must be between 0.0 and 1.0", log.sample),
            );
        }
        if log.max_bytes.is_some_and(|b| b < 4096) {
            self.err(format!("{p}.max_bytes"), "must be at least 4096");
        }
        if log.max_bytes.is_some() && log.path == "stdout" {
            self.err(
                format!("{p}.max_bytes"),
                "stdout cannot be rotated; set a file `path`",
            );
        }
    }

    fn tracing(&mut self, t: &TracingConfig) {
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            self.err(
                "tracing.sample_ratio",
                format!("{}: must be between 0.0 and 1.0", t.sample_ratio),
            );
        }
        if t.service_name.trim().is_empty() {
            self.err("tracing.service_name", "must not be empty");
        }
        if let Err(why) = otlp_endpoint(&t.otlp.endpoint) {
            self.err("tracing.otlp.endpoint", why);
        }
    }

    fn listeners(&mut self, c: &Config) {
        let mut seen: HashMap<std::net::SocketAddr, &str> = HashMap::new();
        let mut listen = |path: &'static str, hp: &HostPort, this: &mut Self| match hp.socket_addr()
        {
            None => this.err(
                path,
                format!(
                    "`{hp}`: a listen address must be an IP literal and port, e.g. 127.0.0.1:15001"
                ),
            ),
            Some(sa) => {
                if sa.port() != 0 {
                    if let Some(other) = seen.insert(sa, path) {
                        this.err(path, format!("`{hp}` is already used by {other}"));
                    }
                }
            }
        };
        listen("admin.listen", &c.admin.listen, self);
        if let Some(m) = &c.admin.metrics_listen {
            listen("admin.metrics_listen", m, self);
        }
        for (prefix, limits) in [
            ("outbound", c.outbound.as_ref().map(|o| o.limits())),
            ("inbound", c.inbound.as_ref().map(|i| i.limits())),
        ] {
            let Some(l) = limits else { continue };
            self.at_least_10ms(
                &format!("{prefix}.header_read_timeout"),
                l.header_read_timeout,
            );
            self.at_least_10ms(&format!("{prefix}.idle_timeout"), l.idle_timeout);
            if l.max_connections == 0 {
                self.err(format!("{prefix}.max_connections"), "must be at least 1");
            }
            if l.max_header_bytes < 8192 {
                self.err(
                    format!("{prefix}.max_header_bytes"),
                    "must be at least 8192",
                );
            }
            if l.max_headers == 0 {
                self.err(format!("{prefix}.max_headers"), "must be at least 1");
            }
            if l.max_requests == 0 {
                self.err(format!("{prefix}.max_requests"), "must be at least 1");
            }
            if l.max_concurrent_streams == 0 {
                self.err(
                    format!("{prefix}.max_concurrent_streams"),
                    "must be at least 1",
                );
            }
        }
        if let Some(o) = &c.outbound {
            listen("outbound.listen", &o.listen, self);
        }
        if let Some(i) = &c.inbound {
            listen("inbound.listen", &i.listen, self);
            if i.forward_to.ip().is_none() {
                self.unsupported(
                    "inbound.forward_to",
                    "a DNS name here (use an IP address such as 127.0.0.1)",
                );
            }
            if i.forward_to.port == 0 {
                self.err("inbound.forward_to", "port 0 is not a valid destination");
            }
            self.upgrades("inbound.upgrades", &i.upgrades);
            self.at_least_10ms("inbound.request_body_timeout", i.request_body_timeout.get());
            self.limits("inbound.circuit_breaker", &i.circuit_breaker);
        }
    }

    fn routes(&mut self, out: &OutboundConfig, c: &Config) {
        let mut names = HashSet::new();
        for (i, r) in out.routes.iter().enumerate() {
            let p = format!("outbound.routes[{i}]");
            self.route_name(&p, &r.name, &mut names, "");
            self.matcher(&p, &r.matches);
            let http_clusters = || {
                c.clusters
                    .iter()
                    .filter(|(_, k)| k.protocol != Protocol::Tcp)
                    .map(|(n, _)| n.as_str())
            };
            let known = |name: &str| http_clusters().any(|n| n == name);
            let unknown = |name: &str| {
                match c.clusters.get(name) {
                Some(_) => format!(
                    "cluster `{name}` has `protocol: tcp`; an HTTP route sends to http1 or http2 clusters (use `tcp_routes` for it)"
                ),
                None => format!("unknown cluster `{name}`{}", did_you_mean(name, http_clusters())),
            }
            };
            match (&r.cluster, &r.split) {
                (Some(_), Some(_)) => self.err(&p, "set either `cluster` or `split`, not both"),
                (None, None) => self.err(&p, "a route needs `cluster` or `split`"),
                (Some(name), None) => {
                    if !known(name) {
                        self.err(format!("{p}.cluster"), unknown(name));
                    }
                }
                (None, Some(split)) => {
                    if split.is_empty() {
                        self.err(format!("{p}.split"), "a split needs at least one cluster");
                    } else if split.iter().all(|t| t.weight == 0) {
                        self.err(
                            format!("{p}.split"),
                            "split weights are all 0: at least one must be positive",
                        );
                    }
                    let mut seen = HashSet::new();
                    for (j, t) in split.iter().enumerate() {
                        if !known(&t.cluster) {
                            self.err(format!("{p}.split[{j}].cluster"), unknown(&t.cluster));
                        } else if !seen.insert(t.cluster.as_str()) {
                            self.err(
                                format!("{p}.split[{j}].cluster"),
                                format!("cluster `{}` appears twice in this split", t.cluster),
                            );
                        }
                    }
                }
            }
            if let Some(t) = r.timeout {
                if t.get().is_zero() {
                    self.err(format!("{p}.timeout"), "must be greater than 0");
                }
            }
            if r.hash_on.is_some() && r.split.is_none() {
                self.err(
                    format!("{p}.hash_on"),
                    "`hash_on` makes a `split` sticky; this route has no split",
                );
            }
            if let Some(m) = &r.mirror {
                if !known(&m.cluster) {
                    self.err(format!("{p}.mirror.cluster"), unknown(&m.cluster));
                }
                if !(0.0..=100.0).contains(&m.percent) {
                    self.err(
                        format!("{p}.mirror.percent"),
                        format!("{} is not a percentage (0-100)", m.percent),
                    );
                }
            }
            if let Some(retry) = &r.retry {
                self.retry(&format!("{p}.retry"), retry);
            }
            self.upgrades(&format!("{p}.upgrades"), &r.upgrades);
            if let Some(rl) = &r.rate_limit {
                let rps = rl.requests_per_second;
                if !(rps.is_finite() && rps > 0.0 && rps <= 1e9) {
                    self.err(
                        format!("{p}.rate_limit.requests_per_second"),
                        format!("{rps} is not a rate: must be greater than 0 (at most 1e9)"),
                    );
                }
                if rl.burst == Some(0) {
                    self.err(format!("{p}.rate_limit.burst"), "must be at least 1");
                }
            }
            self.at_least_10ms(
                &format!("{p}.request_body_timeout"),
                r.request_body_timeout.get(),
            );
        }
    }

    fn tcp_routes(&mut self, out: &OutboundConfig, c: &Config) {
        let mut names: HashSet<&str> = out.routes.iter().map(|r| r.name.as_str()).collect();
        for (i, r) in out.tcp_routes.iter().enumerate() {
            let p = format!("outbound.tcp_routes[{i}]");
            self.route_name(
                &p,
                &r.name,
                &mut names,
                " (HTTP and TCP routes share one namespace: it is the `route` label)",
            );
            match c.clusters.get(&r.cluster) {
                None => {
                    let tcp = c
                        .clusters
                        .iter()
                        .filter(|(_, k)| k.protocol == Protocol::Tcp)
                        .map(|(n, _)| n.as_str());
                    self.err(
                        format!("{p}.cluster"),
                        format!("unknown cluster `{}`{}", r.cluster, did_you_mean(&r.cluster, tcp)),
                    );
                }
                Some(k) if k.protocol != Protocol::Tcp => self.err(
                    format!("{p}.cluster"),
                    format!("cluster `{}` speaks HTTP; a TCP route sends to a cluster with `protocol: tcp`", r.cluster),
                ),
                Some(_) => {}
            }
            if r.matches.port == Some(0) {
                self.err(format!("{p}.match.port"), "port 0 is not a destination");
            }
            self.at_least_10ms(&format!("{p}.idle_timeout"), r.idle_timeout.get());
        }
        self.ports("outbound.opaque_ports", &out.opaque_ports);
        self.detect_timeout("outbound.detect_timeout", out.detect_timeout);
    }

    /// A route's name is its `route` label: not one of octopus' own, a valid label,
    /// unique among the names seen so far.
    fn route_name<'a>(
        &mut self,
        p: &str,
        name: &'a str,
        seen: &mut HashSet<&'a str>,
        why_unique: &str,
    ) {
        if RESERVED_ROUTE_LABELS.contains(&name) {
            self.err(
                format!("{p}.name"),
                format!("`{name}` is reserved for octopus' own metric labels"),
            );
        } else if !valid_label(name) {
            self.err(format!("{p}.name"), format!("`{name}`: a route name must be 1-64 characters of [A-Za-z0-9_.-] (it is a metrics label)"));
        } else if !seen.insert(name) {
            self.err(
                format!("{p}.name"),
                format!("duplicate route name `{name}`{why_unique}"),
            );
        }
    }

    /// A cluster endpoint that is octopus' own outbound listener would loop traffic
    /// back into octopus (with a TCP route's dial ahead, before any client byte).
    /// Its own inbound listener is fine: one octopus as both sidecars of a test.
    fn not_octopus_itself(&mut self, name: &str, cluster: &ClusterConfig, c: &Config) {
        let own: Vec<(&str, std::net::SocketAddr)> =
            [("outbound.listen", c.outbound.as_ref().map(|o| &o.listen))]
                .into_iter()
                .filter_map(|(k, a)| Some((k, a?.socket_addr()?)))
                .filter(|(_, a)| a.port() != 0)
                .collect();
        for (i, e) in cluster.endpoints.iter().enumerate() {
            let Some(ep) = e.address.socket_addr() else {
                continue;
            };
            let loops = own.iter().find(|(_, l)| {
                l.port() == ep.port()
                    && (l.ip() == ep.ip() || (l.ip().is_unspecified() && ep.ip().is_loopback()))
            });
            if let Some((key, _)) = loops {
                self.err(
                    format!("clusters.{name}.endpoints[{i}]"),
                    format!(
                        "`{}` is octopus' own {key}: traffic would loop back into octopus",
                        e.address
                    ),
                );
            }
        }
    }

    fn ports(&mut self, p: &str, ports: &[u16]) {
        let mut seen = HashSet::new();
        for (i, port) in ports.iter().enumerate() {
            if *port == 0 {
                self.err(format!("{p}[{i}]"), "port 0 is not a destination");
            } else if !seen.insert(port) {
                self.err(format!("{p}[{i}]"), format!("port {port} is listed twice"));
            }
        }
    }

    /// Detection holds a connection (and maybe a dial ahead) while it waits: at least
    /// 10ms, at most a minute.
    fn detect_timeout(&mut self, p: &str, d: crate::types::Duration) {
        if d.get() > std::time::Duration::from_secs(60) {
            self.err(p, "must be at most 1m");
        }
        self.at_least_10ms(p, d.get());
    }

    /// Timeouts and intervals shorter than 10ms are typos (`10` for `10s`), not
    /// settings.
    fn at_least_10ms(&mut self, p: &str, d: std::time::Duration) {
        if d < std::time::Duration::from_millis(10) {
            self.err(p, "must be at least 10ms");
        }
    }

    /// Upgrade protocols are HTTP tokens; `h2c` is refused outright: after its 101 the
    /// client's requests would flow inside a tunnel past every octopus rule.
    fn upgrades(&mut self, p: &str, list: &[String]) {
        for (i, u) in list.iter().enumerate() {
            if u.eq_ignore_ascii_case("h2c") {
                self.err(
                    format!("{p}[{i}]"),
                    "`h2c` cannot be allowed: requests inside an h2c upgrade would bypass routing and header rules (clients reach octopus with HTTP/2 prior knowledge instead)",
                );
            } else if !http_token(u) {
                self.err(
                    format!("{p}[{i}]"),
                    format!("`{u}` is not a protocol name (an HTTP token such as `websocket`)"),
                );
            }
        }
    }

    fn limits(&mut self, p: &str, cb: &CircuitBreakerConfig) {
        for (key, v) in [
            ("max_connections", cb.max_connections),
            ("max_pending_requests", cb.max_pending_requests),
            ("max_requests", cb.max_requests),
        ] {
            if v == 0 {
                self.err(format!("{p}.{key}"), "must be at least 1");
            }
        }
    }

    fn retry(&mut self, p: &str, r: &RetryConfig) {
        if !(1..=10).contains(&r.attempts) {
            self.err(
                format!("{p}.attempts"),
                "must be 1-10 (total tries, the first included)",
            );
        }
        if r.per_try_timeout.is_some_and(|t| t.get().is_zero()) {
            self.err(format!("{p}.per_try_timeout"), "must be greater than 0");
        }
        if r.backoff.base.get().is_zero() || r.backoff.base > r.backoff.max {
            self.err(format!("{p}.backoff"), "needs 0 < base <= max");
        }
        if !(0.0..=10.0).contains(&r.budget.ratio) {
            self.err(
                format!("{p}.budget.ratio"),
                "must be 0-10 (retries per request)",
            );
        }
        if r.max_replay_bytes > 16 * 1024 * 1024 {
            self.err(
                format!("{p}.max_replay_bytes"),
                "must be at most 16777216 (16 MiB)",
            );
        }
    }

    fn matcher(&mut self, p: &str, m: &MatchConfig) {
        for h in m.host.iter().flat_map(|h| &h.0) {
            // A trailing dot (a fully qualified name) is the same name.
            let h = h.strip_suffix('.').filter(|n| !n.is_empty()).unwrap_or(h);
            let name = h.strip_prefix("*.").unwrap_or(h);
            let ok = h == "*"
                || (!name.is_empty()
                    && !name.contains('*')
                    && !name.contains(':')
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)));
            if !ok {
                self.err(
                    format!("{p}.match.host"),
                    format!("`{h}`: expected a host name without port, `*.suffix`, or `*`"),
                );
            }
        }
        if let Some(pp) = &m.path_prefix {
            if !pp.starts_with('/') {
                self.err(
                    format!("{p}.match.path_prefix"),
                    format!("`{pp}` must start with `/`"),
                );
            }
        }
        if let Some(method) = &m.method {
            if !http_token(method) {
                self.err(
                    format!("{p}.match.method"),
                    format!("`{method}` is not an HTTP method"),
                );
            }
        }
        for (name, value) in &m.headers {
            if !http_token(name) {
                self.err(
                    format!("{p}.match.headers.{name}"),
                    "not a valid header name",
                );
            }
            if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                self.err(
                    format!("{p}.match.headers.{name}"),
                    "the value has control characters",
                );
            }
        }
    }

    fn cluster(&mut self, name: &str, c: &ClusterConfig) {
        let p = format!("clusters.{name}");
        if RESERVED_CLUSTER_LABELS.contains(&name) {
            self.err(
                &p,
                format!("`{name}` is reserved for octopus' own metric labels"),
            );
        } else if !valid_label(name) {
            self.err(&p, format!("`{name}`: a cluster name must be 1-64 characters of [A-Za-z0-9_.-] (it is a metrics label)"));
        }
        if c.connect_timeout.get().is_zero() {
            self.err(format!("{p}.connect_timeout"), "must be greater than 0");
        }
        if c.dns_refresh_interval.get() < std::time::Duration::from_millis(100) {
            self.err(
                format!("{p}.dns_refresh_interval"),
                "must be at least 100ms",
            );
        }
        // hyper's HTTP/1.1 read buffer cannot be smaller than 8 KiB.
        if c.max_response_header_bytes < 8192 {
            self.err(
                format!("{p}.max_response_header_bytes"),
                "must be at least 8192",
            );
        }
        if c.max_response_headers == 0 {
            self.err(format!("{p}.max_response_headers"), "must be at least 1");
        }
        let mut seen = HashSet::new();
        for (i, e) in c.endpoints.iter().enumerate() {
            let ep = format!("{p}.endpoints[{i}]");
            if e.address.port == 0 {
                self.err(&ep, "port 0 is not a valid destination");
            }
            if e.weight > MAX_WEIGHT {
                self.err(
                    format!("{ep}.weight"),
                    format!("must be at most {MAX_WEIGHT}"),
                );
            }
            if !seen.insert(&e.address) {
                self.err(&ep, format!("duplicate endpoint `{}`", e.address));
            }
        }
        if c.protocol == Protocol::Tcp && c.health_check.is_some() {
            self.err(
                format!("{p}.health_check"),
                "an HTTP health check cannot probe a `protocol: tcp` cluster; outlier_detection ejects endpoints that refuse connections",
            );
        }
        if let Some(hc) = &c.health_check {
            let hp = format!("{p}.health_check");
            if !hc.path.starts_with('/') {
                self.err(
                    format!("{hp}.path"),
                    format!("`{}` must start with `/`", hc.path),
                );
            } else if hc.path.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
                self.err(
                    format!("{hp}.path"),
                    "must be a request path without spaces or control characters",
                );
            }
            if hc.interval.get().is_zero() {
                self.err(format!("{hp}.interval"), "must be greater than 0");
            }
            if hc.timeout.get().is_zero() {
                self.err(format!("{hp}.timeout"), "must be greater than 0");
            }
            if hc.unhealthy_threshold == 0 {
                self.err(format!("{hp}.unhealthy_threshold"), "must be at least 1");
            }
            if hc.healthy_threshold == 0 {
                self.err(format!("{hp}.healthy_threshold"), "must be at least 1");
            }
        }
        if let Some(cb) = &c.circuit_breaker {
            self.limits(&format!("{p}.circuit_breaker"), cb);
        }
        self.at_least_10ms(&format!("{p}.pool.idle_timeout"), c.pool.idle_timeout.get());
        if c.pool.max_streams_per_connection == 0 {
            self.err(
                format!("{p}.pool.max_streams_per_connection"),
                "must be at least 1",
            );
        }
        if let Some(od) = &c.outlier_detection {
            let op = format!("{p}.outlier_detection");
            if od.consecutive_failures == 0 {
                self.err(format!("{op}.consecutive_failures"), "must be at least 1");
            }
            if od.base_ejection_time.get().is_zero() {
                self.err(format!("{op}.base_ejection_time"), "must be greater than 0");
            }
            if od.max_ejection_percent > 100 {
                self.err(format!("{op}.max_ejection_percent"), "must be 0-100");
            }
        }
        if let Some(tls) = &c.tls {
            for (key, path) in [("cert", &tls.cert), ("key", &tls.key), ("ca", &tls.ca)] {
                self.readable(&format!("{p}.tls.{key}"), path);
            }
            if tls.server_identity.trim().is_empty() {
                self.err(
                    format!("{p}.tls.server_identity"),
                    "must name the identity the upstream proves (a SPIFFE URI or DNS name)",
                );
            }
        }
    }
}

/// Label values octopus uses itself: unmatched requests (`none`) and the inbound
/// listener (`inbound` / `local_app`). A config using them would merge series.
/// Keeps smooth weighted round robin's running sums far from overflow.
const MAX_WEIGHT: u32 = 10_000;

const RESERVED_ROUTE_LABELS: [&str; 3] = ["none", "inbound", "passthrough"];
const RESERVED_CLUSTER_LABELS: [&str; 3] = ["none", "local_app", "passthrough"];

/// RFC 3986 path and query characters: unreserved, sub-delims, `:`, `@`, `/`, `?` and
/// `%` of percent-encodings.
fn probe_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/?%".contains(c)
}

fn valid_label(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}
