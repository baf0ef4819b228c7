//! `tcp_routes`, `opaque_ports`, `unmatched`, `detect_timeout` and `protocol: tcp`:
//! what is accepted, and what is refused with the field's path.

use super::errors;
use octopus_config::{load_str, Cidr, Protocol, Unmatched};

const CLUSTERS: &str = "clusters:
  pg:
    protocol: tcp
    endpoints: [10.0.0.41:5432]
  web:
    endpoints: [10.0.0.1:8080]
";

#[test]
fn the_contract_example_loads() {
    let c = load_str(
        &format!(
            "outbound:
  listen: 127.0.0.1:15001
  routes:
    - {{ name: web, match: {{ host: web }}, cluster: web }}
  tcp_routes:
    - name: postgres
      match: {{ port: 5432, destination: 10.0.0.0/8 }}
      cluster: pg
    - name: any-pg
      match: {{ destination: [10.0.0.0/8, 'fd00::/8'] }}
      cluster: pg
      idle_timeout: 10m
  opaque_ports: [5432, 6379]
  unmatched: refuse
  detect_timeout: 250ms
{CLUSTERS}"
        ),
        "t.yaml",
    )
    .unwrap();
    let out = c.outbound.unwrap();
    assert_eq!(out.tcp_routes.len(), 2);
    assert_eq!(out.tcp_routes[0].matches.port, Some(5432));
    let nets = out.tcp_routes[1].matches.destination.clone().unwrap();
    assert!(nets.contains("10.1.2.3".parse().unwrap()));
    assert!(nets.contains("fd00::1".parse().unwrap()));
    assert!(!nets.contains("192.168.0.1".parse().unwrap()));
    assert_eq!(out.opaque_ports, vec![5432, 6379]);
    assert_eq!(out.unmatched, Unmatched::Refuse);
    assert_eq!(out.detect_timeout.get().as_millis(), 250);
    assert_eq!(c.clusters["pg"].protocol, Protocol::Tcp);
    // Defaults: passthrough, and a one-second detection timeout.
    let c = load_str("outbound:\n  listen: 127.0.0.1:15001\n", "t.yaml").unwrap();
    let out = c.outbound.unwrap();
    assert_eq!(out.unmatched, Unmatched::Passthrough);
    assert_eq!(out.detect_timeout.get().as_secs(), 1);
}

#[test]
fn networks_parse_and_match_like_routers_do() {
    let c: Cidr = "10.0.0.0/8".parse().unwrap();
    assert!(c.contains("10.255.0.1".parse().unwrap()));
    assert!(!c.contains("11.0.0.1".parse().unwrap()));
    // An IPv4 client seen on a dual-stack socket.
    assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
    let all: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains("203.0.113.9".parse().unwrap()));
    let one: Cidr = "192.0.2.7".parse().unwrap();
    assert_eq!(one.prefix, 32);
    assert!(!one.contains("192.0.2.8".parse().unwrap()));
    for bad in ["10.0.0.0/33", "10.0.0/8", "fd00::/129", "x/8"] {
        assert!(bad.parse::<Cidr>().is_err(), "{bad}");
    }
}

#[test]
fn routes_and_clusters_must_agree_on_the_protocol() {
    let e = errors(&format!(
        "outbound:
  listen: 127.0.0.1:15001
  routes:
    - {{ name: web, match: {{ host: web }}, cluster: pg }}
  tcp_routes:
    - {{ name: db, cluster: web }}
    - {{ name: db2, cluster: nope }}
{CLUSTERS}"
    ));
    let all = e.join("\n");
    assert!(
        all.contains("outbound.routes[0].cluster") && all.contains("has `protocol: tcp`"),
        "{all}"
    );
    assert!(
        all.contains("outbound.tcp_routes[0].cluster") && all.contains("speaks HTTP"),
        "{all}"
    );
    assert!(
        all.contains("outbound.tcp_routes[1].cluster") && all.contains("unknown cluster `nope`"),
        "{all}"
    );
}

#[test]
fn bad_tcp_settings_name_their_field() {
    let e = errors(
        "outbound:
  listen: 127.0.0.1:15001
  tcp_routes:
    - { name: web, cluster: pg }
    - { name: passthrough, cluster: pg }
    - { name: z, cluster: pg, match: { port: 0 }, idle_timeout: 1ms }
  routes:
    - { name: web, match: { host: web }, cluster: web }
  opaque_ports: [5432, 5432, 0]
  detect_timeout: 1ms
inbound:
  listen: 127.0.0.1:15006
  forward_to: 127.0.0.1:8080
  app_protocol: tcp
clusters:
  pg:
    protocol: tcp
    endpoints: [10.0.0.41:5432]
    health_check: { path: /healthz }
  web:
    endpoints: [10.0.0.1:8080]
",
    );
    let all = e.join("\n");
    for needle in [
        "outbound.tcp_routes[0].name",
        "duplicate route name `web`",
        "outbound.tcp_routes[1].name",
        "reserved",
        "outbound.tcp_routes[2].match.port",
        "outbound.tcp_routes[2].idle_timeout",
        "outbound.opaque_ports[1]",
        "listed twice",
        "outbound.opaque_ports[2]",
        "outbound.detect_timeout",
        "inbound.app_protocol",
        "clusters.pg.health_check",
    ] {
        assert!(all.contains(needle), "missing {needle}:\n{all}");
    }
    let e = errors("outbound:\n  listen: 127.0.0.1:1\n  tcp_routes:\n    - { name: a, cluster: c, match: { destination: 10.0.0.0/40 } }\n");
    assert!(
        e[0].contains("line 4") && e[0].contains("prefix length"),
        "{e:?}"
    );
    let e = errors("outbound:\n  listen: 127.0.0.1:1\n  unmatched: drop\n");
    assert!(e[0].contains("outbound.unmatched"), "{e:?}");
}

#[test]
fn detection_is_bounded_and_octopus_is_no_endpoint_of_its_own() {
    let e = errors(
        "outbound:
  listen: 127.0.0.1:15001
  detect_timeout: 2m
  tcp_routes:
    - { name: db, cluster: db }
inbound:
  listen: 127.0.0.1:15006
  forward_to: 127.0.0.1:8080
  detect_timeout: 5ms
clusters:
  db:
    protocol: tcp
    endpoints: [127.0.0.1:15001, 127.0.0.1:15006]
",
    );
    let all = e.join("\n");
    assert!(
        all.contains("outbound.detect_timeout: must be at most 1m"),
        "{all}"
    );
    assert!(
        all.contains("inbound.detect_timeout: must be at least 10ms"),
        "{all}"
    );
    assert!(
        all.contains("clusters.db.endpoints[0]") && all.contains("loop back into octopus"),
        "{all}"
    );
    // Its own inbound listener is a fine endpoint: one octopus as both sidecars.
    assert!(!all.contains("clusters.db.endpoints[1]"), "{all}");
}

#[test]
fn an_empty_list_of_hosts_or_networks_is_refused() {
    let e = errors(
        "outbound:\n  listen: 127.0.0.1:1\n  routes:\n    - { name: a, match: { host: [] }, cluster: c }\n",
    );
    assert!(
        e[0].contains("line 4") && e[0].contains("leave `host` out to match any host"),
        "{e:?}"
    );
    let e = errors(
        "outbound:\n  listen: 127.0.0.1:1\n  tcp_routes:\n    - { name: a, cluster: c, match: { destination: [] } }\n",
    );
    assert!(
        e[0].contains("line 4") && e[0].contains("leave `destination` out to match any"),
        "{e:?}"
    );
}
