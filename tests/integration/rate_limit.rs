//! Local rate limiting per route: the first layer added through the composed stack.

use octopus_tests::*;

fn yaml(limit: &str, up: &Upstream) -> String {
    format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: limited\n      match: {{ host: svc }}\n      cluster: svc\n      rate_limit: {limit}\n    - name: free\n      match: {{ host: free }}\n      cluster: svc\nclusters:\n{}",
        cluster("svc", "http1", &[up.addr()])
    )
}

async fn statuses(addr: std::net::SocketAddr, host: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(addr, host, "/").await.status.as_u16());
    }
    out
}

async fn limited_total(p: &octopus_proxy::Proxy) -> String {
    admin(p, "/metrics")
        .await
        .text()
        .lines()
        .find(|l| l.starts_with(r#"octopus_rate_limited_total{route="limited"}"#))
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn over_the_limit_is_429_with_retry_after_and_follows_reloads() {
    let up = Upstream::start("up").await;
    // One token every 100 s: the burst is all a test run will ever get.
    let p = start(&yaml("{ requests_per_second: 0.01, burst: 3 }", &up)).await;
    let out = p.outbound_addr().unwrap();
    assert_eq!(
        limited_total(&p).await,
        r#"octopus_rate_limited_total{route="limited"} 0"#
    );
    assert_eq!(statuses(out, "svc", 3).await, [200, 200, 200]);
    let r = get(out, "svc", "/").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.headers["x-octopus-error"], "rate_limited");
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=100).contains(&wait), "retry-after {wait}");
    assert_eq!(up.hits(), 3, "a limited request never reaches the upstream");
    assert_eq!(
        statuses(out, "free", 5).await,
        [200; 5],
        "other routes are not limited"
    );
    assert_eq!(
        limited_total(&p).await,
        r#"octopus_rate_limited_total{route="limited"} 1"#
    );

    // A reload that leaves the limit as it is keeps the bucket: no free burst.
    p.reload(
        parse(&yaml("{ requests_per_second: 0.01, burst: 3 }", &up)),
        None,
    )
    .await
    .unwrap();
    assert_eq!(statuses(out, "svc", 1).await, [429]);
    // A changed limit applies at once, with a full bucket of its own.
    p.reload(
        parse(&yaml("{ requests_per_second: 0.01, burst: 5 }", &up)),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        statuses(out, "svc", 6).await,
        [200, 200, 200, 200, 200, 429]
    );
    assert_eq!(
        limited_total(&p).await,
        r#"octopus_rate_limited_total{route="limited"} 3"#
    );
}

#[tokio::test]
async fn burst_defaults_to_one_second_of_the_rate() {
    let up = Upstream::start("up").await;
    let p = start(&yaml("{ requests_per_second: 2 }", &up)).await;
    let got = statuses(p.outbound_addr().unwrap(), "svc", 3).await;
    // Two at once, then the third finds the bucket empty (refill: 500 ms per token,
    // far longer than three loopback requests take).
    assert_eq!(got, [200, 200, 429]);
}

#[test]
fn zero_or_negative_limits_are_refused_with_line_and_path() {
    let text = "outbound:\n  listen: 127.0.0.1:1\n  routes:\n    - name: r\n      cluster: c\n      rate_limit: { requests_per_second: 0, burst: 0 }\nclusters:\n  c:\n    endpoints: [127.0.0.1:2]\n";
    let e = octopus_config::load_str(text, "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 6: outbound.routes[0].rate_limit.requests_per_second: 0 is not a rate"),
        "{e}"
    );
    assert!(
        e.contains("line 6: outbound.routes[0].rate_limit.burst: must be at least 1"),
        "{e}"
    );
    let text = text.replace(
        "requests_per_second: 0, burst: 0",
        "requests_per_second: -5",
    );
    let e = octopus_config::load_str(&text, "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("requests_per_second: -5 is not a rate"), "{e}");
    let text = text.replace(
        "requests_per_second: -5",
        "requests_per_second: 5, burst: -1",
    );
    let e = octopus_config::load_str(&text, "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 6") && e.contains("burst"), "{e}");
}
