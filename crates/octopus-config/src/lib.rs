//! The Octopus control file: its typed schema, parsing with line numbers and field
//! paths, and the semantic checks that run before any config is allowed to serve.
//!
//! Config flows one way: YAML text -> [`Config`] (typed, every key known) -> checked
//! by [`validate`] -> handed to the proxy, which compiles it into its routing table.
//! Nothing outside this crate parses YAML.
#![forbid(unsafe_code)]

mod error;
#[doc(hidden)]
pub mod fuzzing;
mod locate;
mod schema;
mod types;
mod validate;
mod watch;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors};
pub use schema::*;
pub use types::{Cidr, Cidrs, Duration, HashOn, HostPort, Hosts, LbPolicy, Protocol, RetryOn};
pub use validate::{otlp_endpoint, Checks};
pub use watch::ConfigWatcher;

/// Reads, parses and validates a control file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    load_file_with_digest(path).map(|(config, _)| config)
}

/// [`load_file`], also returning the SHA-256 of the file's bytes (hex), so a reload can
/// tell an edit from a touch and operators can match `/config` against `sha256sum`.
pub fn load_file_with_digest(path: &Path) -> Result<(Config, String), ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::single(
            &origin,
            ConfigError::new("", format!("cannot read file: {e}")),
        )
    })?;
    let config = load_str(&text, &origin)?;
    Ok((config, digest(text.as_bytes())))
}

/// The JSON Schema of the control file (for editors: VS Code YAML and others).
pub fn json_schema() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(Config)).unwrap_or_default();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("title".into(), "Octopus control file".into());
    }
    schema
}

/// Lower-case hex SHA-256, as `sha256sum` prints it.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parses and validates control-file text; `origin` names it in error messages.
pub fn load_str(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    load_str_with(text, origin, Checks::default())
}

/// [`load_str`] with a choice of [`Checks`] (`octopus validate --offline`).
pub fn load_str_with(text: &str, origin: &str, checks: Checks) -> Result<Config, ConfigErrors> {
    if text.trim().is_empty() {
        return Err(ConfigErrors::single(
            origin,
            ConfigError::new(
                "",
                "the file is empty; at least `admin:` or a listener is required",
            ),
        ));
    }
    let config: Config =
        parse_yaml(text).map_err(|e| ConfigErrors::single(origin, ConfigError::from_yaml(&e)))?;
    let mut errors = validate::check(&config, checks);
    if errors.is_empty() {
        return Ok(config);
    }
    let lines = locate::LineIndex::build(text);
    for e in &mut errors {
        if e.line.is_none() {
            e.line = lines.line_of(&e.path);
        }
    }
    Err(ConfigErrors {
        origin: origin.to_string(),
        errors,
    })
}

/// The one place YAML is turned into typed structs: swapping the YAML library means
/// changing this function only.
fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, serde_yaml::Error> {
    serde_yaml::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        load_str(text, "t.yaml")
            .unwrap_err()
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn unknown_key_names_path_and_line() {
        let e = errors("outbound:\n  listen: 127.0.0.1:1\n  routes:\n    - name: a\n      match: { hots: a }\n      cluster: c\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("line 5 column"), "{e:?}");
        assert!(e[0].contains("outbound.routes[0].match"), "{e:?}");
        assert!(e[0].contains("unknown field `hots`"), "{e:?}");
    }

    #[test]
    fn bad_duration_and_address_are_located() {
        let e = errors("clusters:\n  c:\n    endpoints: [127.0.0.1:1]\n    connect_timeout: 5x\n");
        assert!(
            e[0].contains("line 4") && e[0].contains("invalid duration `5x`"),
            "{e:?}"
        );
        let e = errors("clusters:\n  c:\n    endpoints: [127.0.0.1]\n");
        assert!(
            e[0].contains("line 3") && e[0].contains("invalid address `127.0.0.1`"),
            "{e:?}"
        );
    }

    #[test]
    fn trust_keys_are_validated_with_lines() {
        let text = "\
outbound:
  listen: 127.0.0.1:1
  max_requests: 0
  headers_with_underscores: reject
  routes:
    - name: a
      cluster: c
      upgrades: [websocket, h2c, \"bad token\"]
      request_body_timeout: 1ms
inbound:
  listen: 127.0.0.1:3
  forward_to: 127.0.0.1:4
  circuit_breaker: { max_connections: 0 }
clusters:
  c:
    endpoints: [127.0.0.1:2]
";
        let e = errors(text);
        assert_eq!(e.len(), 5, "{e:?}");
        assert_eq!(e[0], "line 3: outbound.max_requests: must be at least 1");
        assert_eq!(
            e[1],
            "line 13: inbound.circuit_breaker.max_connections: must be at least 1"
        );
        assert!(
            e[2].starts_with("line 8: outbound.routes[0].upgrades[1]: `h2c` cannot be allowed"),
            "{e:?}"
        );
        assert!(
            e[3].starts_with(
                "line 8: outbound.routes[0].upgrades[2]: `bad token` is not a protocol name"
            ),
            "{e:?}"
        );
        assert_eq!(
            e[4],
            "line 9: outbound.routes[0].request_body_timeout: must be at least 10ms"
        );
        let e = errors("outbound:\n  listen: 127.0.0.1:1\n  headers_with_underscores: keep\n");
        assert!(
            e[0].contains("line 3") && e[0].contains("unknown variant `keep`"),
            "{e:?}"
        );
    }

    #[test]
    fn semantic_errors_are_all_reported_with_lines() {
        let text = "\
outbound:
  listen: 127.0.0.1:1
  routes:
    - name: a
      cluster: nope
    - name: a
      split:
        - { cluster: c, weight: 0 }
clusters:
  c:
    endpoints: [127.0.0.1:2]
";
        let e = errors(text);
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(
            e[0],
            "line 5: outbound.routes[0].cluster: unknown cluster `nope`"
        );
        assert_eq!(
            e[1],
            "line 6: outbound.routes[1].name: duplicate route name `a`"
        );
        assert_eq!(e[2], "line 7: outbound.routes[1].split: split weights are all 0: at least one must be positive");
    }

    #[test]
    fn kubernetes_names_tracing_and_metrics_listen_are_checked() {
        let ok = load_str(
            "namespace: shop\ncluster_domain: corp.internal\nadmin: { listen: 127.0.0.1:9901, metrics_listen: 0.0.0.0:9902 }\noutbound:\n  listen: 127.0.0.1:1\n  routes:\n    - { name: a, match: { host: [payments, payments-alt, \"*.shop.\"] }, cluster: c }\nclusters:\n  c:\n    endpoints: [catalog.shop.svc.cluster.local.:8080]\ntracing:\n  otlp: { endpoint: \"http://127.0.0.1:4317/\", protocol: grpc }\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(ok.effective_namespace().as_deref(), Some("shop"));
        let hosts = ok.outbound.as_ref().unwrap().routes[0]
            .matches
            .host
            .clone()
            .unwrap();
        assert_eq!(hosts.0, ["payments", "payments-alt", "*.shop."]);
        assert_eq!(
            ok.clusters["c"].endpoints[0].address.host,
            "catalog.shop.svc.cluster.local."
        );
        let e = errors("namespace: Shop_1\ncluster_domain: \"a..b\"\nadmin: { listen: 127.0.0.1:9901, metrics_listen: 127.0.0.1:9901 }\ntracing:\n  otlp: { endpoint: https://collector:4318 }\n  sample_ratio: 2\n");
        assert_eq!(e.len(), 5, "{e:?}");
        assert!(
            e[0].contains("admin.metrics_listen: `127.0.0.1:9901` is already used by admin.listen"),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|x| x.contains("tracing.sample_ratio: 2: must be between 0.0 and 1.0")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|x| x.contains(
                "tracing.otlp.endpoint: `https://collector:4318`: expected http://HOST:PORT"
            )),
            "{e:?}"
        );
        assert!(e.iter().any(|x| x.contains("namespace: `Shop_1`")), "{e:?}");
        assert!(
            e.iter().any(|x| x.contains("cluster_domain: `a..b`")),
            "{e:?}"
        );
        let e = errors("outbound:\n  listen: 127.0.0.1:1\n  routes:\n    - { name: a, match: { host: [] }, cluster: c }\nclusters:\n  c:\n    endpoints: [127.0.0.1:2]\n");
        assert!(e[0].contains("an empty list matches nothing"), "{e:?}");
    }

    #[test]
    fn response_head_limits_have_floors() {
        let e = errors("clusters:\n  c:\n    endpoints: [127.0.0.1:2]\n    max_response_header_bytes: 100\n    max_response_headers: 0\n");
        assert_eq!(
            e,
            [
                "line 4: clusters.c.max_response_header_bytes: must be at least 8192",
                "line 5: clusters.c.max_response_headers: must be at least 1"
            ]
        );
    }

    #[test]
    fn pool_settings_are_checked() {
        let e = errors("clusters:\n  c:\n    endpoints: [127.0.0.1:2]\n    pool:\n      idle_timeout: 1ms\n      max_streams_per_connection: 0\n");
        assert_eq!(
            e,
            [
                "line 5: clusters.c.pool.idle_timeout: must be at least 10ms",
                "line 6: clusters.c.pool.max_streams_per_connection: must be at least 1"
            ]
        );
        let e =
            errors("clusters:\n  c:\n    endpoints: [127.0.0.1:2]\n    pool: { max_idle: 3 }\n");
        assert!(e[0].contains("unknown field `max_idle`"), "{e:?}");
        let c = load_str("clusters:\n  c:\n    endpoints: [127.0.0.1:2]\n", "t.yaml").unwrap();
        assert_eq!(c.clusters["c"].pool.max_idle_per_endpoint, 32);
    }

    #[test]
    fn unimplemented_keys_are_refused() {
        let e = errors("inbound:\n  listen: 127.0.0.1:1\n  forward_to: app.local:80\n");
        assert_eq!(e, ["line 3: inbound.forward_to: a DNS name here (use an IP address such as 127.0.0.1) is not supported yet by this octopus version"]);
        let e = errors("clusters:\n  c:\n    endpoints: [127.0.0.1:2]\n    tls: { cert: /nonexistent/a, key: /nonexistent/b, ca: /nonexistent/c, server_identity: d }\n");
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("line 4: clusters.c.tls.cert: cannot read `/nonexistent/a`"),
            "{e:?}"
        );
        let e = errors("clusters:\n  c:\n    endpoints: [127.0.0.1:2]\n    circuit_breaker: { max_requests: 0 }\n");
        assert_eq!(
            e,
            ["line 4: clusters.c.circuit_breaker.max_requests: must be at least 1"]
        );
        let e = errors("outbound:\n  listen: 127.0.0.1:1\n  routes:\n    - name: r\n      cluster: c\n      retry: { attempts: 3, retry_on: [teapot] }\nclusters:\n  c:\n    endpoints: [127.0.0.1:2]\n");
        assert!(e[0].contains("invalid retry_on `teapot`"), "{e:?}");
        let e = errors("clusters:\n  c:\n    endpoints: [127.0.0.1:2]\n    health_check: { path: healthz, interval: 0s }\n");
        assert_eq!(
            e,
            [
                "line 4: clusters.c.health_check.path: `healthz` must start with `/`",
                "line 4: clusters.c.health_check.interval: must be greater than 0"
            ]
        );
    }

    #[test]
    fn json_schema_covers_the_contract() {
        let s = json_schema();
        let text = s.to_string();
        for key in [
            "outbound",
            "inbound",
            "clusters",
            "split",
            "hash_on",
            "retry_on",
            "circuit_breaker",
            "outlier_detection",
            "health_check",
            "server_identity",
            "allowed_identities",
        ] {
            assert!(text.contains(&format!("\"{key}\"")), "schema lacks {key}");
        }
        // Unknown keys are errors in the file, so the schema says so too.
        assert!(text.contains("\"additionalProperties\":false"));
    }

    #[test]
    fn contract_shapes_parse() {
        let c = load_str(
            "clusters:\n  a:\n    endpoints:\n      - 127.0.0.1:1\n      - { address: 127.0.0.1:2, weight: 1 }\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.clusters["a"].endpoints.len(), 2);
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9901");
    }
}
