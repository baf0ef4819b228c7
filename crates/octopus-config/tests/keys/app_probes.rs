//! `admin.app_probes`: defaults, and every refusal names the field path and line.

use super::errors;
use octopus_config::{load_str, AppProbeConfig};

fn probes(body: &str) -> String {
    format!("admin:\n  metrics_listen: 0.0.0.0:9902\n  app_probes:\n{body}")
}

#[test]
fn app_probes_parse_with_defaults() {
    let c = load_str(
        &probes(
            "    ready: { port: 8080, path: /healthz }\n    live: { port: 8080, path: '/livez?full=1', timeout: 2s }\n    db: { port: 5432, host: '::1' }\n",
        ),
        "t.yaml",
    )
    .unwrap();
    let p = &c.admin.app_probes;
    assert_eq!(
        p["ready"],
        AppProbeConfig {
            port: 8080,
            path: Some("/healthz".into()),
            host: "127.0.0.1".parse().unwrap(),
            timeout: octopus_config::Duration::from_millis(1000),
        }
    );
    assert_eq!(p["live"].timeout.get(), std::time::Duration::from_secs(2));
    assert_eq!(p["db"].path, None);
    assert_eq!(p["db"].host, "::1".parse::<std::net::IpAddr>().unwrap());
    // Absent means none, and `/config` leaves the empty map out.
    let plain = load_str("admin:\n  listen: 127.0.0.1:9901\n", "t.yaml").unwrap();
    assert!(plain.admin.app_probes.is_empty());
    let shown = serde_json::to_value(&plain).unwrap();
    assert!(shown["admin"].get("app_probes").is_none(), "{shown}");
}

#[test]
fn bad_probe_names_are_refused_with_their_path() {
    let long = "a".repeat(64);
    let e = errors(&probes(&format!(
        "    Ready: {{ port: 8080 }}\n    a_b: {{ port: 8080 }}\n    {long}: {{ port: 8080 }}\n    '': {{ port: 8080 }}\n"
    )));
    assert_eq!(e.len(), 4, "{e:?}");
    for (line, name) in [(4, "Ready"), (5, "a_b"), (6, long.as_str()), (7, "")] {
        let want = format!(
            "line {line}: admin.app_probes.{name}: `{name}`: a probe name must be 1-63 characters of [a-z0-9-]"
        );
        assert!(e.iter().any(|m| m.starts_with(&want)), "{want}\n{e:?}");
    }
    // 63 characters is the limit, not over it.
    let ok = "a".repeat(63);
    load_str(&probes(&format!("    {ok}: {{ port: 1 }}\n")), "t.yaml").unwrap();
}

#[test]
fn bad_paths_and_ports_are_refused() {
    let e = errors(&probes(
        "    ready: { port: 8080, path: healthz }\n    live: { port: 0, path: '/a b' }\n",
    ));
    assert_eq!(
        e,
        [
            "line 5: admin.app_probes.live.port: must be 1-65535",
            "line 5: admin.app_probes.live.path: `/a b`: ' ' is not allowed in a URL path; percent-encode it",
            "line 4: admin.app_probes.ready.path: `healthz`: must start with `/`",
        ]
    );
    let e = errors(&probes("    ready: { port: 70000 }\n"));
    assert!(
        e[0].contains("admin.app_probes.ready.port") && e[0].contains("line 4"),
        "{e:?}"
    );
}

#[test]
fn timeouts_must_be_above_zero_and_at_most_a_minute() {
    let e = errors(&probes(
        "    a: { port: 1, timeout: 0s }\n    b: { port: 1, timeout: 61s }\n    c: { port: 1, timeout: 60s }\n    d: { port: 1, timeout: 1ms }\n",
    ));
    assert_eq!(
        e,
        [
            "line 4: admin.app_probes.a.timeout: must be greater than 0",
            "line 5: admin.app_probes.b.timeout: must be at most 60s",
        ]
    );
}

#[test]
fn unknown_keys_and_host_names_are_refused() {
    let e = errors(&probes("    ready: { port: 8080, scheme: https }\n"));
    assert!(
        e[0].contains("admin.app_probes.ready") && e[0].contains("unknown field `scheme`"),
        "{e:?}"
    );
    let e = errors(&probes("    ready: { port: 8080, host: localhost }\n"));
    assert!(
        e[0].contains("admin.app_probes.ready.host") && e[0].contains("line 4"),
        "{e:?}"
    );
}
