//! The admin port: probes, metrics, config and cluster views.

use octopus_tests::*;

#[tokio::test]
async fn probes_metrics_config_and_clusters() {
    let up = Upstream::start("up").await;
    let yaml = format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - {{ name: r, match: {{ host: svc }}, cluster: svc, timeout: 3s }}\nclusters:\n{}",
        cluster("svc", "http1", &[up.addr()])
    );
    let proxy = start(&yaml).await;
    for _ in 0..3 {
        get(proxy.outbound_addr().unwrap(), "svc", "/").await;
    }
    assert_eq!(admin(&proxy, "/live").await.status, 200);
    let ready = admin(&proxy, "/ready").await;
    assert_eq!(
        (ready.status.as_u16(), ready.text().as_str()),
        (200, "ready\n")
    );

    let m = admin(&proxy, "/metrics").await;
    assert!(m.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let m = m.text();
    for needle in [
        r#"octopus_requests_total{cluster="svc",code="200",direction="outbound",route="r"} 3"#,
        r#"octopus_request_duration_seconds_count{cluster="svc",direction="outbound",route="r"} 3"#,
        "octopus_config_generation 1",
        r#"octopus_connections_total{listener="outbound"}"#,
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(m.contains(needle), "missing {needle}");
    }

    let config = admin(&proxy, "/config").await.json();
    assert_eq!(config["generation"], 1);
    assert_eq!(config["config"]["outbound"]["routes"][0]["timeout"], "3s");
    assert_eq!(
        config["config"]["clusters"]["svc"]["endpoints"][0]["address"],
        up.addr().to_string()
    );

    let clusters = admin(&proxy, "/clusters").await.json();
    let ep = &clusters["clusters"]["svc"]["endpoints"][0];
    assert_eq!(ep["address"], up.addr().to_string());
    assert_eq!(ep["requests_total"], 3);
    assert_eq!(ep["in_flight"], 0);

    assert_eq!(admin(&proxy, "/nope").await.status, 404);
    let post = http::Request::post(format!("http://{}/metrics", proxy.admin_addr()))
        .body(http_body_util::Full::default())
        .unwrap();
    assert_eq!(HttpClient::http1().send(post).await.status, 405);
}

#[tokio::test]
async fn metrics_listen_serves_metrics_alone_and_follows_reloads() {
    let up = Upstream::start("up").await;
    let yaml = |metrics: &str| {
        format!(
            "admin:\n  listen: 127.0.0.1:0\n{metrics}outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - {{ name: r, match: {{ host: svc }}, cluster: svc }}\nclusters:\n{}",
            cluster("svc", "http1", &[up.addr()])
        )
    };
    let proxy = start(&yaml("  metrics_listen: 127.0.0.1:0\n")).await;
    get(proxy.outbound_addr().unwrap(), "svc", "/").await;
    let m = proxy.metrics_addr().expect("the metrics listener is bound");
    let page = get(m, "prometheus", "/metrics").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains(
        r#"octopus_requests_total{cluster="svc",code="200",direction="outbound",route="r"} 1"#
    ));
    // Nothing else of admin is reachable there.
    for path in ["/config", "/clusters", "/log-level", "/ready"] {
        let r = get(m, "prometheus", path).await;
        assert_eq!(r.status, 404, "{path}");
        assert!(!r.text().contains("generation"), "{path}: {}", r.text());
    }
    // The admin port keeps everything.
    assert_eq!(admin(&proxy, "/config").await.status, 200);
    // A reload without the key closes the metrics listener.
    proxy.reload(parse(&yaml("")), None).await.unwrap();
    assert_eq!(proxy.metrics_addr(), None);
    assert!(
        eventually(std::time::Duration::from_secs(5), async || {
            tokio::net::TcpStream::connect(m).await.is_err()
        })
        .await
    );
}
