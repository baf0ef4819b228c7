//! Route matching, traffic split, round robin and header rewriting, end to end.

use octopus_tests::*;

async fn three_services() -> (Upstream, Upstream, Upstream, octopus_proxy::Proxy) {
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let yaml = format!(
        "outbound:
  listen: 127.0.0.1:0
  routes:
    - name: header-rule
      match: {{ host: shop, headers: {{ x-canary: \"true\" }} }}
      cluster: c
    - name: api-post
      match: {{ host: shop, path_prefix: /api, method: POST }}
      cluster: b
    - name: api
      match: {{ host: shop, path_prefix: /api }}
      cluster: c
    - name: shop
      match: {{ host: shop }}
      cluster: a
    - name: wildcard
      match: {{ host: \"*.internal\" }}
      cluster: b
clusters:
{}{}{}",
        cluster("a", "http1", &[a.addr()]),
        cluster("b", "http1", &[b.addr()]),
        cluster("c", "http1", &[c.addr()]),
    );
    let proxy = start(&yaml).await;
    (a, b, c, proxy)
}

#[tokio::test]
async fn routes_by_host_path_method_and_header() {
    let (_a, _b, _c, proxy) = three_services().await;
    let out = proxy.outbound_addr().unwrap();
    let client = HttpClient::http1();
    assert_eq!(client.get(out, "shop", "/", &[]).await.upstream(), "a");
    assert_eq!(
        client.get(out, "SHOP:8080", "/x", &[]).await.upstream(),
        "a",
        "host match ignores case and port"
    );
    assert_eq!(
        client.get(out, "shop", "/api/items", &[]).await.upstream(),
        "c"
    );
    assert_eq!(
        client
            .get(out, "shop", "/", &[("x-canary", "true")])
            .await
            .upstream(),
        "c"
    );
    assert_eq!(
        client
            .get(out, "shop", "/", &[("x-canary", "no")])
            .await
            .upstream(),
        "a"
    );
    assert_eq!(
        client
            .get(out, "billing.internal", "/", &[])
            .await
            .upstream(),
        "b"
    );
    let post = http::Request::post(format!("http://{out}/api/orders"))
        .header("host", "shop")
        .body(http_body_util::Full::default())
        .unwrap();
    assert_eq!(client.send(post).await.upstream(), "b");
    let miss = client.get(out, "unknown", "/", &[]).await;
    assert_eq!(miss.status, 404);
    assert_eq!(miss.text(), "no route\n");
    proxy.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let ups = [
        Upstream::start("e1").await,
        Upstream::start("e2").await,
        Upstream::start("e3").await,
    ];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr()).collect();
    let yaml = format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      match: {{ host: svc }}\n      cluster: svc\nclusters:\n{}",
        cluster("svc", "http1", &addrs)
    );
    let proxy = start(&yaml).await;
    let client = HttpClient::http1();
    for _ in 0..300 {
        assert_eq!(
            client
                .get(proxy.outbound_addr().unwrap(), "svc", "/", &[])
                .await
                .status,
            200
        );
    }
    let hits: Vec<usize> = ups.iter().map(|u| u.hits()).collect();
    assert_eq!(hits, vec![100, 100, 100]);
}

#[tokio::test]
async fn split_follows_weights() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let yaml = format!(
        "outbound:
  listen: 127.0.0.1:0
  routes:
    - name: r
      match: {{ host: svc }}
      split:
        - {{ cluster: stable, weight: 80 }}
        - {{ cluster: canary, weight: 20 }}
        - {{ cluster: off, weight: 0 }}
clusters:
{}{}{}",
        cluster("stable", "http1", &[stable.addr()]),
        cluster("canary", "http1", &[canary.addr()]),
        cluster("off", "http1", &[dead_address().await]),
    );
    let proxy = start(&yaml).await;
    let client = HttpClient::http1();
    for _ in 0..2000 {
        assert_eq!(
            client
                .get(proxy.outbound_addr().unwrap(), "svc", "/", &[])
                .await
                .status,
            200
        );
    }
    // 20% of 2000 = 400, binomial sd ~18: a wide 6-sd band, and weight 0 gets nothing.
    let c = canary.hits();
    assert!((290..=510).contains(&c), "canary got {c}");
    assert_eq!(stable.hits() + c, 2000);
    let metrics = admin(&proxy, "/metrics").await.text();
    let line = format!(
        r#"octopus_requests_total{{cluster="canary",code="200",direction="outbound",route="r"}} {c}"#
    );
    assert!(metrics.contains(&line), "{line} not in metrics");
}

#[tokio::test]
async fn forwards_headers_like_a_proxy() {
    let up = Upstream::start("up").await;
    let yaml = format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      match: {{ host: svc }}\n      cluster: svc\nclusters:\n{}",
        cluster("svc", "http1", &[up.addr()])
    );
    let proxy = start(&yaml).await;
    let reply = HttpClient::http1()
        .get(
            proxy.outbound_addr().unwrap(),
            "svc",
            "/p?q=1",
            &[
                ("connection", "x-private"),
                ("x-private", "secret"),
                ("x-forwarded-for", "10.1.2.3"),
                ("te", "deflate"),
            ],
        )
        .await;
    let seen = reply.json();
    let h = &seen["headers"];
    assert_eq!(seen["path"], "/p");
    assert_eq!(h["host"], "svc", "the original Host reaches the upstream");
    assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert!(
        h.get("x-private").is_none(),
        "headers named by Connection are hop-by-hop"
    );
    assert!(h.get("te").is_none());
}

#[tokio::test]
async fn inbound_forwards_to_the_local_app() {
    let app = Upstream::start("app").await;
    let yaml = format!(
        "inbound:\n  listen: 127.0.0.1:0\n  forward_to: {}\n",
        app.addr()
    );
    let proxy = start(&yaml).await;
    let reply = get(proxy.inbound_addr().unwrap(), "my-service", "/hello").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream(), "app");
    assert_eq!(reply.json()["headers"]["host"], "my-service");
    let metrics = admin(&proxy, "/metrics").await.text();
    assert!(metrics.contains(r#"octopus_requests_total{cluster="local_app",code="200",direction="inbound",route="inbound"} 1"#));
}

#[tokio::test]
async fn kubernetes_service_names_route_within_the_namespace() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let yaml = format!(
        "namespace: shop
outbound:
  listen: 127.0.0.1:0
  routes:
    - name: payments
      match: {{ host: [payments, payments-alt] }}
      cluster: a
    - name: catalog
      match: {{ host: catalog.other }}
      cluster: b
clusters:
{}{}",
        cluster("a", "http1", &[a.addr()]),
        cluster("b", "http1", &[b.addr()]),
    );
    let proxy = start(&yaml).await;
    let out = proxy.outbound_addr().unwrap();
    let h1 = HttpClient::http1();
    for (host, want) in [
        ("payments", "a"),
        ("payments.shop", "a"),
        ("payments.shop.svc:8080", "a"),
        ("payments.shop.svc.cluster.local:8080", "a"),
        ("payments.shop.svc.cluster.local.", "a"),
        ("payments-alt.shop.svc.cluster.local", "a"),
        ("catalog.other.svc.cluster.local", "b"),
    ] {
        let r = h1.get(out, host, "/", &[]).await;
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(r.upstream(), want, "{host}");
        // The upstream sees the name the app used.
        assert_eq!(r.json()["headers"]["host"], host, "{host}");
    }
    for host in ["payments.other", "catalog", "payments.shop.svc.example.org"] {
        assert_eq!(h1.get(out, host, "/", &[]).await.status, 404, "{host}");
    }
    // HTTP/2: the :authority is matched the same way.
    let h2 = HttpClient::http2(out);
    let r = h2
        .get(out, "payments.shop.svc.cluster.local", "/", &[])
        .await;
    assert_eq!(r.upstream(), "a");
}
