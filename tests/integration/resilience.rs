//! Retries, budgets, cluster limits, outlier detection and per-try timeouts against
//! real faulty upstreams.

use bytes::Bytes;
use http_body_util::Full;
use octopus_tests::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn route(route_extra: &str, cluster_extra: &str, endpoints: &[SocketAddr]) -> String {
    let eps: Vec<String> = endpoints.iter().map(|a| a.to_string()).collect();
    format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      match: {{ host: svc }}\n      cluster: svc\n{route_extra}clusters:\n  svc:\n    endpoints: [{}]\n{cluster_extra}",
        eps.join(", ")
    )
}

fn post(addr: SocketAddr, path: &str, body: Bytes) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("http://{addr}{path}"))
        .header("host", "svc")
        .body(Full::new(body))
        .unwrap()
}

#[tokio::test]
async fn gateway_errors_are_retried_on_other_endpoints() {
    let ups = [
        Upstream::start("bad").await,
        Upstream::start("ok1").await,
        Upstream::start("ok2").await,
    ];
    ups[0].set_status(503);
    let addrs: Vec<_> = ups.iter().map(Upstream::addr).collect();
    let proxy = start(&route(
        // A third of all requests need a retry: a budget of 1 retry per request.
        "      retry: { attempts: 3, retry_on: [gateway-error], backoff: { base: 1ms, max: 5ms }, budget: { ratio: 1.0, min_per_second: 10 } }\n",
        "",
        &addrs,
    ))
    .await;
    let client = HttpClient::http1();
    let mut retried = 0;
    for _ in 0..1000 {
        let r = client
            .get(proxy.outbound_addr().unwrap(), "svc", "/", &[])
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        if let Some(n) = r.headers.get("x-octopus-attempts") {
            assert_eq!(n, "2", "the retry went to a healthy endpoint at once");
            retried += 1;
        }
    }
    assert_eq!(
        retried,
        ups[0].hits(),
        "every request that met the bad endpoint was retried once"
    );
    let m = admin(&proxy, "/metrics").await.text();
    assert!(
        m.contains(&format!(
            r#"octopus_upstream_retries_total{{cluster="svc"}} {retried}"#
        )),
        "{m}"
    );
}

#[tokio::test]
async fn resets_and_refused_connections_are_retried() {
    let ok = Upstream::start("ok").await;
    let (resetting, _task) = resetting_server().await;
    let refused = dead_address().await;
    let proxy = start(&route(
        // Two thirds of first tries fail: a budget of 2 retries per request.
        "      retry: { attempts: 3, retry_on: [connect-failure, reset], backoff: { base: 1ms, max: 5ms }, budget: { ratio: 2.0, min_per_second: 10 } }\n",
        "",
        &[resetting, refused, ok.addr()],
    ))
    .await;
    let client = HttpClient::http1();
    for _ in 0..300 {
        let r = client
            .get(proxy.outbound_addr().unwrap(), "svc", "/", &[])
            .await;
        assert_eq!(
            (r.status.as_u16(), r.upstream()),
            (200, "ok".to_string()),
            "{}",
            r.text()
        );
    }
    assert_eq!(ok.hits(), 300);
}

#[tokio::test]
async fn post_is_retried_only_when_allowed_and_only_with_a_replayable_body() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.set_status(503);
    let addrs = [bad.addr(), good.addr()];
    let client = HttpClient::http1();

    // Default: POST is not retried; the client sees the bad endpoint's 503s.
    let proxy = start(&route(
        "      retry: { attempts: 3, retry_on: [gateway-error] }\n",
        "",
        &addrs,
    ))
    .await;
    let mut failures = 0;
    for _ in 0..20 {
        let r = client
            .send(post(
                proxy.outbound_addr().unwrap(),
                "/echo-body",
                Bytes::from_static(b"x"),
            ))
            .await;
        failures += usize::from(r.status == 503);
    }
    assert_eq!(
        failures, 10,
        "round robin: half the POSTs met the bad endpoint"
    );
    assert_eq!(bad.hits() + good.hits(), 20, "no POST was sent twice");

    // non_idempotent: a 10 KiB body is replayed byte for byte.
    let proxy = start(&route(
        "      retry: { attempts: 3, retry_on: [gateway-error], non_idempotent: true }\n",
        "",
        &addrs,
    ))
    .await;
    let body: Bytes = (0..10 * 1024)
        .map(|i| (i % 253) as u8)
        .collect::<Vec<u8>>()
        .into();
    for _ in 0..20 {
        let r = client
            .send(post(
                proxy.outbound_addr().unwrap(),
                "/echo-body",
                body.clone(),
            ))
            .await;
        assert_eq!((r.status.as_u16(), r.upstream()), (200, "good".to_string()));
        assert!(r.body == body, "replayed body differs");
    }

    // A 1 MiB body exceeds the replay buffer: streamed once, never retried.
    let (before_bad, before_good) = (bad.hits(), good.hits());
    let big = Bytes::from(vec![7u8; 1024 * 1024]);
    let mut failed = 0;
    for _ in 0..10 {
        let r = client
            .send(post(
                proxy.outbound_addr().unwrap(),
                "/echo-body",
                big.clone(),
            ))
            .await;
        failed += usize::from(r.status == 503);
    }
    assert_eq!(
        bad.hits() - before_bad,
        failed,
        "every try of a big body that failed reached the client"
    );
    assert_eq!(
        (bad.hits() - before_bad) + (good.hits() - before_good),
        10,
        "one try per request"
    );
}

#[tokio::test]
async fn the_budget_stops_a_dead_cluster_from_multiplying_load() {
    let dead = Upstream::start("dead").await;
    dead.set_status(503);
    let proxy = start(&route(
        "      retry: { attempts: 3, retry_on: [gateway-error], backoff: { base: 1ms, max: 2ms }, budget: { ratio: 0.2, min_per_second: 1 } }\n",
        "",
        &[dead.addr()],
    ))
    .await;
    let client = HttpClient::http1();
    for _ in 0..1000 {
        assert_eq!(
            client
                .get(proxy.outbound_addr().unwrap(), "svc", "/", &[])
                .await
                .status,
            503
        );
    }
    // 1000 first tries + 20% of them + the floor of 1/s over the 10 s window.
    let hits = dead.hits();
    eprintln!("budget: upstream received {hits} requests for 1000 client requests");
    assert!(hits <= 1200 + 10, "upstream received {hits}");
    assert!(hits >= 1100, "retries did happen within the budget: {hits}");
    let m = admin(&proxy, "/metrics").await.text();
    assert!(m.contains(r#"octopus_retry_budget_exhausted_total{cluster="svc"}"#));
}

#[tokio::test]
async fn outlier_detection_ejects_probes_and_closes() {
    let (flaky, steady) = (
        Upstream::start("flaky").await,
        Upstream::start("steady").await,
    );
    flaky.set_status(500);
    let proxy = start(&route(
        "",
        "    outlier_detection: { consecutive_failures: 5, base_ejection_time: 500ms, max_ejection_percent: 50 }\n",
        &[flaky.addr(), steady.addr()],
    ))
    .await;
    let out = proxy.outbound_addr().unwrap();
    // Round robin: 10 requests give the flaky endpoint its 5 failures in a row.
    for _ in 0..10 {
        get(out, "svc", "/").await;
    }
    assert_eq!(flaky.hits(), 5);
    let ep = |c: &serde_json::Value| c["clusters"]["svc"]["endpoints"][0].clone();
    assert_eq!(
        ep(&admin(&proxy, "/clusters").await.json())["outlier"],
        "open"
    );
    let m = admin(&proxy, "/metrics").await.text();
    assert!(m.contains(&format!(
        r#"octopus_endpoint_ejected{{cluster="svc",endpoint="{}"}} 1"#,
        flaky.addr()
    )));
    for _ in 0..30 {
        assert_eq!(
            get(out, "svc", "/").await.upstream(),
            "steady",
            "an ejected endpoint gets nothing"
        );
    }
    assert_eq!(flaky.hits(), 5);

    // It recovers; after the ejection time it is probed and closes on a 200.
    flaky.set_status(0);
    assert!(
        eventually(Duration::from_secs(2), async || ep(&admin(
            &proxy,
            "/clusters"
        )
        .await
        .json())["outlier"]
            == "half_open")
        .await,
        "half-open after the ejection time"
    );
    for _ in 0..4 {
        assert_eq!(get(out, "svc", "/").await.status, 200);
    }
    assert!(flaky.hits() > 5, "the probe reached the endpoint");
    assert_eq!(
        ep(&admin(&proxy, "/clusters").await.json())["outlier"],
        "closed"
    );
}

#[tokio::test]
async fn max_requests_sheds_the_excess_at_once() {
    let slow = Upstream::start("slow").await;
    slow.set_delay(Duration::from_millis(600));
    let proxy = start(&route(
        "",
        "    circuit_breaker: { max_requests: 10, max_connections: 100, max_pending_requests: 100 }\n",
        &[slow.addr()],
    ))
    .await;
    let out = proxy.outbound_addr().unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(async move {
                let started = Instant::now();
                let r = get(out, "svc", "/").await;
                (r.status.as_u16(), r.text(), started.elapsed())
            })
        })
        .collect();
    let mut ok = 0;
    let mut shed = 0;
    for t in tasks {
        let (status, text, took) = t.await.unwrap();
        match status {
            200 => ok += 1,
            503 => {
                assert_eq!(text, "circuit open: max_requests\n");
                assert!(
                    took < Duration::from_millis(400),
                    "shed at once, not queued: {took:?}"
                );
                shed += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, shed), (10, 40));
    let m = admin(&proxy, "/metrics").await.text();
    assert!(
        m.contains(r#"octopus_circuit_overflow_total{cluster="svc",limit="max_requests"} 40"#),
        "{m}"
    );
}

#[tokio::test]
async fn per_try_timeout_moves_past_a_hanging_endpoint() {
    let (hang, ok) = (Upstream::start("hang").await, Upstream::start("ok").await);
    hang.set_delay(Duration::from_secs(30));
    let proxy = start(&route(
        "      timeout: 5s\n      retry: { attempts: 2, per_try_timeout: 200ms, backoff: { base: 10ms, max: 50ms } }\n",
        "",
        &[hang.addr(), ok.addr()],
    ))
    .await;
    for _ in 0..6 {
        let started = Instant::now();
        let r = get(proxy.outbound_addr().unwrap(), "svc", "/").await;
        assert_eq!((r.status.as_u16(), r.upstream()), (200, "ok".to_string()));
        // per_try_timeout + the largest backoff, plus scheduling slack.
        assert!(
            started.elapsed() < Duration::from_millis(200 + 50 + 250),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn slow_and_idle_clients_cannot_hold_a_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("up").await;
    let yaml = route("", "", &[up.addr()]).replace(
        "  listen: 127.0.0.1:0\n",
        "  listen: 127.0.0.1:0\n  header_read_timeout: 300ms\n",
    );
    let proxy = start(&yaml).await;
    let out = proxy.outbound_addr().unwrap();

    // Slowloris: a request head that never ends.
    let mut slow = tokio::net::TcpStream::connect(out).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: svc\r\nX-Slow: 1")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // e.g. a 408 before the close
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the slow client was not disconnected");
    assert!(started.elapsed() >= Duration::from_millis(250));

    // Idle keep-alive: one request, then silence.
    let mut idle = tokio::net::TcpStream::connect(out).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection was not closed");
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "the request itself was served"
    );
}

#[tokio::test]
async fn max_connections_is_enforced_and_counted() {
    let slow = Upstream::start("slow").await;
    slow.set_delay(Duration::from_millis(500));
    let proxy = start(&route(
        "",
        "    circuit_breaker: { max_connections: 2, max_pending_requests: 100, max_requests: 100 }\n",
        &[slow.addr()],
    ))
    .await;
    let out = proxy.outbound_addr().unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { get(out, "svc", "/").await }))
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == 503 {
            assert_eq!(r.text(), "circuit open: max_connections\n");
        }
        statuses.push(r.status.as_u16());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 2, "two connections, one request each: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 8);
    let m = admin(&proxy, "/metrics").await.text();
    assert!(
        m.contains(r#"octopus_circuit_overflow_total{cluster="svc",limit="max_connections"} 8"#),
        "{m}"
    );
    // Refusals by our own limit do not count against the endpoint.
    let ep = &admin(&proxy, "/clusters").await.json()["clusters"]["svc"]["endpoints"][0];
    assert_eq!(ep["outlier"], "closed");
}

#[tokio::test]
async fn replay_limit_and_attempts_header_are_configurable() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.set_status(503);
    let proxy = start(&route(
        "      retry: { attempts: 2, retry_on: [gateway-error], non_idempotent: true, max_replay_bytes: 100, attempts_header: false, budget: { ratio: 1.0, min_per_second: 10 } }\n",
        "",
        &[bad.addr(), good.addr()],
    ))
    .await;
    let client = HttpClient::http1();
    // 50-byte bodies fit the 100-byte replay buffer: retried, and no header says so.
    for _ in 0..10 {
        let r = client
            .send(post(
                proxy.outbound_addr().unwrap(),
                "/echo-body",
                Bytes::from(vec![b'a'; 50]),
            ))
            .await;
        assert_eq!(r.status, 200);
        assert!(r.headers.get("x-octopus-attempts").is_none());
    }
    // 200-byte bodies do not fit: one try each, so half of them meet the 503.
    let mut failed = 0;
    for _ in 0..10 {
        let r = client
            .send(post(
                proxy.outbound_addr().unwrap(),
                "/echo-body",
                Bytes::from(vec![b'b'; 200]),
            ))
            .await;
        failed += usize::from(r.status == 503);
    }
    assert_eq!(failed, 5);
}
