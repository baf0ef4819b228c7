//! Load-balancing policies, draining, health checks and DNS discovery, driven by real
//! traffic through octopus.

use octopus_tests::*;
use std::sync::Arc;
use std::time::Duration;

fn one_route(clusters: &str) -> String {
    format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - {{ name: r, match: {{ host: svc }}, cluster: svc }}\nclusters:\n{clusters}"
    )
}

#[tokio::test]
async fn round_robin_3000_requests_exactly_even() {
    let ups = [
        Upstream::start("e1").await,
        Upstream::start("e2").await,
        Upstream::start("e3").await,
    ];
    let eps: Vec<String> = ups.iter().map(|u| u.addr().to_string()).collect();
    let proxy = start(&one_route(&format!(
        "  svc:\n    lb: round_robin\n    endpoints: [{}]\n",
        eps.join(", ")
    )))
    .await;
    let client = HttpClient::http1();
    for _ in 0..3000 {
        assert_eq!(
            client
                .get(proxy.outbound_addr().unwrap(), "svc", "/", &[])
                .await
                .status,
            200
        );
    }
    assert_eq!(
        ups.iter().map(Upstream::hits).collect::<Vec<_>>(),
        [1000, 1000, 1000]
    );
}

#[tokio::test]
async fn weighted_3_to_1_is_exact_and_smooth() {
    let (heavy, light) = (
        Upstream::start("heavy").await,
        Upstream::start("light").await,
    );
    let proxy = start(&one_route(&format!(
        "  svc:\n    lb: weighted\n    endpoints:\n      - {{ address: {}, weight: 3 }}\n      - {{ address: {}, weight: 1 }}\n",
        heavy.addr(),
        light.addr()
    )))
    .await;
    let client = HttpClient::http1();
    let mut order = Vec::with_capacity(4000);
    for _ in 0..4000 {
        order.push(
            client
                .get(proxy.outbound_addr().unwrap(), "svc", "/", &[])
                .await
                .upstream(),
        );
    }
    assert_eq!((heavy.hits(), light.hits()), (3000, 1000));
    let longest = order
        .chunk_by(|a, b| a == b)
        .filter(|run| run[0] == "heavy")
        .map(<[String]>::len)
        .max();
    assert_eq!(longest, Some(3), "never more than 3 heavy picks in a row");
}

#[tokio::test]
async fn least_connections_avoids_a_slow_endpoint() {
    let ups = [
        Upstream::start("slow").await,
        Upstream::start("fast1").await,
        Upstream::start("fast2").await,
    ];
    ups[0].set_delay(Duration::from_millis(200));
    let eps: Vec<String> = ups.iter().map(|u| u.addr().to_string()).collect();
    let proxy = start(&one_route(&format!(
        "  svc:\n    lb: least_connections\n    endpoints: [{}]\n",
        eps.join(", ")
    )))
    .await;
    let out = proxy.outbound_addr().unwrap();
    let clients: Vec<_> = (0..32)
        .map(|_| {
            tokio::spawn(async move {
                let client = HttpClient::http1();
                for _ in 0..40 {
                    assert_eq!(client.get(out, "svc", "/", &[]).await.status, 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let total: usize = ups.iter().map(Upstream::hits).sum();
    assert_eq!(total, 32 * 40);
    let slow_share = ups[0].hits() as f64 / total as f64;
    eprintln!(
        "least_connections: slow {} / fast {} / fast {} of {total}",
        ups[0].hits(),
        ups[1].hits(),
        ups[2].hits()
    );
    assert!(
        slow_share < 0.10,
        "slow endpoint got {:.1}% ({} of {total})",
        slow_share * 100.0,
        ups[0].hits()
    );
}

#[tokio::test]
async fn weight_zero_drains_without_failing_in_flight_requests() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let cfg = |wa: u32| {
        one_route(&format!(
            "  svc:\n    lb: weighted\n    endpoints:\n      - {{ address: {}, weight: {wa} }}\n      - {{ address: {}, weight: 1 }}\n",
            a.addr(),
            b.addr()
        ))
    };
    let proxy = Arc::new(start(&cfg(1)).await);
    let out = proxy.outbound_addr().unwrap();
    // Two slow requests in flight: smooth round robin puts one on each endpoint.
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(out, "svc", "/delay/500").await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(a.hits(), 1, "one slow request is on the endpoint to drain");
    proxy.reload(parse(&cfg(0)), None).await.unwrap();
    for _ in 0..20 {
        assert_eq!(
            get(out, "svc", "/").await.upstream(),
            "b",
            "a drained endpoint gets no new request"
        );
    }
    let mut served: Vec<String> = Vec::new();
    for s in slow {
        let r = s.await.unwrap();
        assert_eq!(r.status, 200, "in-flight requests finish: {}", r.text());
        served.push(r.upstream());
    }
    served.sort();
    assert_eq!(served, ["a", "b"]);
    let clusters = admin(&proxy, "/clusters").await.json();
    let ep = &clusters["clusters"]["svc"]["endpoints"][0];
    assert_eq!(
        (ep["weight"].as_u64(), ep["available"].as_bool()),
        (Some(0), Some(false))
    );
}

#[tokio::test]
async fn health_checks_take_an_endpoint_out_and_back() {
    let (sick, well) = (Upstream::start("sick").await, Upstream::start("well").await);
    let proxy = start(&one_route(&format!(
        "  svc:\n    endpoints: [{}, {}]\n    health_check: {{ path: /healthz, interval: 100ms, timeout: 50ms, unhealthy_threshold: 2, healthy_threshold: 1 }}\n",
        sick.addr(),
        well.addr()
    )))
    .await;
    let out = proxy.outbound_addr().unwrap();
    sick.set_health(503);
    // interval x unhealthy_threshold + 1 interval, plus scheduling slack.
    let out_of_rotation = eventually(Duration::from_millis(400), async || {
        admin(&proxy, "/clusters").await.json()["clusters"]["svc"]["endpoints"][0]["healthy"]
            == false
    })
    .await;
    assert!(
        out_of_rotation,
        "the failing endpoint was not marked unhealthy in time"
    );
    let before = sick.hits();
    for _ in 0..20 {
        assert_eq!(get(out, "svc", "/").await.upstream(), "well");
    }
    assert_eq!(sick.hits(), before);
    let m = admin(&proxy, "/metrics").await.text();
    assert!(
        m.contains(&format!(
            r#"octopus_endpoint_healthy{{cluster="svc",endpoint="{}"}} 0"#,
            sick.addr()
        )),
        "{m}"
    );

    // Everyone unhealthy: 503 at once.
    well.set_health(500);
    assert!(
        eventually(Duration::from_millis(400), async || get(out, "svc", "/")
            .await
            .status
            == 503)
        .await,
        "all endpoints unhealthy answers 503"
    );
    assert_eq!(get(out, "svc", "/").await.text(), "no healthy endpoint\n");

    sick.set_health(200);
    well.set_health(200);
    assert!(
        eventually(Duration::from_millis(300), async || get(out, "svc", "/")
            .await
            .status
            == 200)
        .await,
        "recovered endpoints take traffic again"
    );
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        seen.insert(get(out, "svc", "/").await.upstream());
    }
    assert_eq!(
        seen.len(),
        2,
        "both endpoints are back in rotation: {seen:?}"
    );
}

#[tokio::test]
async fn dns_name_expands_to_every_address_and_refreshes_in_place() {
    // Two upstreams on two loopback addresses with the same port, behind one name.
    let first = Upstream::start("first").await;
    let port = first.addr().port();
    let second = Upstream::start_with(
        "second",
        Protocols::Auto,
        format!("127.0.0.2:{port}").parse().unwrap(),
    )
    .await;
    let resolver = Arc::new(FakeResolver::default());
    resolver.set(
        "payments.svc",
        Some(vec![
            "127.0.0.1".parse().unwrap(),
            "127.0.0.2".parse().unwrap(),
        ]),
    );
    let proxy = start_with_resolver(
        &one_route(&format!(
            "  svc:\n    endpoints: [\"payments.svc:{port}\"]\n    dns_refresh_interval: 100ms\n"
        )),
        resolver.clone(),
    )
    .await;
    let out = proxy.outbound_addr().unwrap();
    for _ in 0..10 {
        get(out, "svc", "/").await;
    }
    assert_eq!(
        (first.hits(), second.hits()),
        (5, 5),
        "both records are endpoints"
    );

    // A failed lookup keeps the last good set, and is counted.
    resolver.set("payments.svc", None);
    let counted = eventually(Duration::from_secs(2), async || {
        admin(&proxy, "/metrics")
            .await
            .text()
            .contains(r#"octopus_dns_resolution_failures_total{cluster="svc"}"#)
    })
    .await;
    assert!(counted);
    for _ in 0..4 {
        assert_eq!(get(out, "svc", "/").await.status, 200);
    }

    // The name now has one record: the other endpoint leaves, the remaining one keeps
    // its counters.
    resolver.set("payments.svc", Some(vec!["127.0.0.2".parse().unwrap()]));
    let shrunk = eventually(Duration::from_secs(2), async || {
        admin(&proxy, "/clusters").await.json()["clusters"]["svc"]["endpoints"]
            .as_array()
            .map(Vec::len)
            == Some(1)
    })
    .await;
    assert!(shrunk);
    let ep = &admin(&proxy, "/clusters").await.json()["clusters"]["svc"]["endpoints"][0];
    assert_eq!(ep["address"], format!("127.0.0.2:{port}"));
    assert_eq!(
        ep["requests_total"], 7,
        "state of the unchanged endpoint survived re-resolution"
    );
    for _ in 0..4 {
        assert_eq!(get(out, "svc", "/").await.upstream(), "second");
    }
}

#[tokio::test]
async fn localhost_resolves_through_the_system_resolver() {
    let up = Upstream::start("local").await;
    let proxy = start(&one_route(&format!(
        "  svc:\n    endpoints: [localhost:{}]\n",
        up.addr().port()
    )))
    .await;
    let r = get(proxy.outbound_addr().unwrap(), "svc", "/").await;
    assert_eq!(
        (r.status.as_u16(), r.upstream()),
        (200, "local".to_string())
    );
    let clusters = admin(&proxy, "/clusters").await.json();
    let addrs: Vec<String> = clusters["clusters"]["svc"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect();
    assert!(addrs.contains(&up.addr().to_string()), "{addrs:?}");
}

#[tokio::test]
async fn endpoint_gauges_are_exported() {
    let up = Upstream::start("g").await;
    let proxy = start(&one_route(&format!(
        "  svc:\n    lb: weighted\n    endpoints: [{{ address: {}, weight: 7 }}]\n",
        up.addr()
    )))
    .await;
    get(proxy.outbound_addr().unwrap(), "svc", "/").await;
    let m = admin(&proxy, "/metrics").await.text();
    let ep = up.addr();
    for needle in [
        format!(r#"octopus_endpoint_weight{{cluster="svc",endpoint="{ep}"}} 7"#),
        format!(r#"octopus_endpoint_healthy{{cluster="svc",endpoint="{ep}"}} 1"#),
        format!(r#"octopus_endpoint_in_flight{{cluster="svc",endpoint="{ep}"}} 0"#),
    ] {
        assert!(m.contains(&needle), "missing {needle}");
    }
}
