//! Each error a client can see: status, plain-text reason, `x-octopus-error`, and the
//! proxy keeps serving afterwards.

use octopus_tests::*;
use std::time::{Duration, Instant};

#[tokio::test]
async fn each_error_status_has_a_reason() {
    let slow = Upstream::start("slow").await;
    let (closing, _task) = closing_server().await;
    let dead = dead_address().await;
    let yaml = format!(
        "outbound:
  listen: 127.0.0.1:0
  routes:
    - {{ name: dead, match: {{ host: dead }}, cluster: dead }}
    - {{ name: closing, match: {{ host: closing }}, cluster: closing }}
    - {{ name: empty, match: {{ host: empty }}, cluster: empty }}
    - {{ name: slow, match: {{ host: slow }}, cluster: slow, timeout: 200ms }}
clusters:
{}{}{}  empty:
    endpoints: []
",
        cluster("dead", "http1", &[dead]),
        cluster("closing", "http1", &[closing]),
        cluster("slow", "http1", &[slow.addr()]),
    );
    let proxy = start(&yaml).await;
    let out = proxy.outbound_addr().unwrap();
    let cases = [
        ("nowhere", "/", 404, "no route\n", "no_route"),
        (
            "empty",
            "/",
            503,
            "no healthy endpoint\n",
            "no_healthy_endpoint",
        ),
        (
            "dead",
            "/",
            502,
            "upstream connect failed\n",
            "connect_failed",
        ),
        ("closing", "/", 502, "upstream reset\n", "upstream_reset"),
        ("slow", "/delay/2000", 504, "upstream timeout\n", "timeout"),
    ];
    for (host, path, status, body, kind) in cases {
        let started = Instant::now();
        let r = get(out, host, path).await;
        assert_eq!(r.status, status, "{host}");
        assert_eq!(r.text(), body, "{host}");
        assert_eq!(r.headers["x-octopus-error"], kind, "{host}");
        assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{host} answered at once"
        );
    }
    // The slow upstream still serves requests within the timeout.
    assert_eq!(get(out, "slow", "/delay/10").await.status, 200);
    let m = admin(&proxy, "/metrics").await.text();
    for needle in [
        r#"octopus_requests_total{cluster="none",code="404",direction="outbound",route="none"} 1"#,
        r#"octopus_requests_total{cluster="empty",code="503",direction="outbound",route="empty"} 1"#,
        r#"octopus_requests_total{cluster="dead",code="502",direction="outbound",route="dead"} 1"#,
        r#"octopus_requests_total{cluster="slow",code="504",direction="outbound",route="slow"} 1"#,
        r#"octopus_requests_total{cluster="slow",code="200",direction="outbound",route="slow"} 1"#,
    ] {
        assert!(m.contains(needle), "missing {needle}");
    }
}

#[tokio::test]
async fn upstream_5xx_is_passed_through_not_rewritten() {
    let up = Upstream::start("up").await;
    let yaml = format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - {{ name: r, match: {{ host: svc }}, cluster: svc }}\nclusters:\n{}",
        cluster("svc", "http1", &[up.addr()])
    );
    let proxy = start(&yaml).await;
    let r = get(proxy.outbound_addr().unwrap(), "svc", "/status/503").await;
    assert_eq!(r.status, 503);
    assert!(r.headers.get("x-octopus-error").is_none());
    assert_eq!(r.upstream(), "up");
}
