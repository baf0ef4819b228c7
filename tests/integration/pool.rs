//! The upstream connection pool against real upstreams: reuse, the bounded idle set,
//! the idle timeout, connections the upstream closed, an upstream that closes instead
//! of answering, and HTTP/2 stream limits. Asserts what the upstream saw (connections
//! accepted, requests and bodies received) and the pool's metrics.

use bytes::Bytes;
use http_body_util::Full;
use octopus_tests::*;
use std::net::SocketAddr;
use std::time::Duration;

fn config(cluster_extra: &str, route_extra: &str, protocol: &str, ep: SocketAddr) -> String {
    format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      match: {{ host: svc }}\n      cluster: svc\n{route_extra}clusters:\n  svc:\n    protocol: {protocol}\n    endpoints: [{ep}]\n{cluster_extra}"
    )
}

fn post(addr: SocketAddr, body: &'static str) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("http://{addr}/upload"))
        .header("host", "svc")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// The value of one series on the metrics page (0 when absent).
fn series(page: &str, name_and_labels: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Asserts each series' value on the metrics page.
fn expect_series(page: &str, want: &[(&str, f64)]) {
    for (name, value) in want {
        assert_eq!(series(page, name), *value, "{name}");
    }
}

/// `n` GETs to `svc` sent at once; their replies.
async fn at_once(client: &HttpClient, out: SocketAddr, n: usize) -> Vec<Reply> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.get(out, "svc", "/", &[]).await })
        })
        .collect();
    let mut replies = Vec::with_capacity(n);
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    replies
}

async fn metrics(proxy: &octopus_proxy::Proxy) -> String {
    admin(proxy, "/metrics").await.text()
}

#[tokio::test]
async fn connections_are_reused_and_the_idle_set_is_bounded() {
    let app = KeepAliveServer::start(KeepAlive {
        delay: Duration::from_millis(150),
        ..Default::default()
    })
    .await;
    let proxy = start(&config(
        "    pool: { max_idle_per_endpoint: 2 }\n",
        "",
        "http1",
        app.addr(),
    ))
    .await;
    let out = proxy.outbound_addr().unwrap();
    let client = HttpClient::http1();
    for _ in 0..5 {
        let r = client.get(out, "svc", "/", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.headers["x-connection"], "1",
            "one connection serves them all"
        );
    }
    assert_eq!(app.accepted(), 1);
    let m = metrics(&proxy).await;
    expect_series(
        &m,
        &[
            (
                "octopus_upstream_connections_opened_total{cluster=\"svc\"}",
                1.0,
            ),
            (
                "octopus_upstream_connections{cluster=\"svc\",state=\"idle\"}",
                1.0,
            ),
        ],
    );

    // Six at once need six connections; a second burst right after reuses them all
    // (the surplus is kept a moment), and only two stay once traffic stops.
    for _ in 0..2 {
        for r in at_once(&client, out, 6).await {
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    assert_eq!(
        app.accepted(),
        6,
        "the idle connection was reused, five were added, and all six again"
    );
    assert!(
        eventually(Duration::from_secs(3), async || app.open() == 2).await,
        "the idle set keeps two connections; {} are open",
        app.open()
    );
    let m = metrics(&proxy).await;
    expect_series(
        &m,
        &[
            (
                "octopus_upstream_connections{cluster=\"svc\",state=\"idle\"}",
                2.0,
            ),
            (
                "octopus_upstream_connections_closed_total{cluster=\"svc\"}",
                4.0,
            ),
        ],
    );
}

#[tokio::test]
async fn no_idle_connections_means_one_connection_per_request() {
    let app = KeepAliveServer::start(KeepAlive::default()).await;
    let proxy = start(&config(
        "    pool: { max_idle_per_endpoint: 0 }\n",
        "",
        "http1",
        app.addr(),
    ))
    .await;
    let client = HttpClient::http1();
    for _ in 0..4 {
        let r = client
            .get(proxy.outbound_addr().unwrap(), "svc", "/", &[])
            .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(app.accepted(), 4);
    assert!(eventually(Duration::from_secs(3), async || app.open() == 0).await);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let app = KeepAliveServer::start(KeepAlive::default()).await;
    let proxy = start(&config(
        "    pool: { idle_timeout: 200ms }\n",
        "",
        "http1",
        app.addr(),
    ))
    .await;
    let out = proxy.outbound_addr().unwrap();
    let client = HttpClient::http1();
    assert_eq!(client.get(out, "svc", "/", &[]).await.status, 200);
    assert_eq!(app.open(), 1);
    assert!(
        eventually(Duration::from_secs(3), async || app.open() == 0).await,
        "octopus closed the idle connection"
    );
    let m = metrics(&proxy).await;
    expect_series(
        &m,
        &[
            (
                "octopus_upstream_connections_closed_total{cluster=\"svc\"}",
                1.0,
            ),
            (
                "octopus_upstream_connections{cluster=\"svc\",state=\"idle\"}",
                0.0,
            ),
        ],
    );
    let r = client.get(out, "svc", "/", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-connection"], "2", "a fresh connection");
}

/// POSTs are not retried, so a dead pooled connection handed to one would fail it.
/// Neither an upstream that closes right after each answer (without saying so) nor one
/// that closes connections idle for 50 ms may cost a request.
#[tokio::test]
async fn connections_the_upstream_closed_are_never_handed_to_a_request() {
    for how in [
        KeepAlive {
            answers_per_connection: Some(1),
            ..Default::default()
        },
        KeepAlive {
            idle_close: Some(Duration::from_millis(50)),
            ..Default::default()
        },
    ] {
        let app = KeepAliveServer::start(how).await;
        let proxy = start(&config("", "", "http1", app.addr())).await;
        let out = proxy.outbound_addr().unwrap();
        let client = HttpClient::http1();
        const BODIES: [&str; 10] = ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "b9"];
        for body in BODIES {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let r = client.send(post(out, body)).await;
            assert_eq!(r.status, 200, "{how:?}: {}", r.text());
        }
        let log = app.log();
        let got: Vec<&[u8]> = log.iter().map(|(_, b)| b.as_slice()).collect();
        let want: Vec<&[u8]> = BODIES.iter().map(|b| b.as_bytes()).collect();
        assert_eq!(
            got, want,
            "{how:?}: each body reached the app once, in order"
        );
        assert_eq!(app.accepted(), 10, "{how:?}: a new connection each time");
    }
}

#[tokio::test]
async fn an_upstream_that_closes_instead_of_answering() {
    let app = KeepAliveServer::start(KeepAlive::default()).await;
    let retried = "    - name: retried\n      match: { host: retried }\n      cluster: svc\n      retry: { attempts: 2, retry_on: [reset], backoff: { base: 1ms, max: 2ms } }\n";
    let proxy = start(&config("", retried, "http1", app.addr())).await;
    let out = proxy.outbound_addr().unwrap();
    let client = HttpClient::http1();
    assert_eq!(client.get(out, "svc", "/", &[]).await.status, 200);

    // Not retried (a POST, no policy): reported, attributed to the upstream.
    app.drop_next(1);
    let r = client.send(post(out, "lost")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.headers["x-octopus-error"], "upstream_reset");
    let r = client.send(post(out, "next")).await;
    assert_eq!(r.status, 200, "the next request gets a working connection");

    // With a policy for resets, the retry succeeds on a new connection.
    app.drop_next(1);
    let before = app.requests();
    let r = client.get(out, "retried", "/again", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-octopus-attempts"], "2");
    assert_eq!(app.requests() - before, 2, "the app saw the request twice");
}

#[tokio::test]
async fn http2_requests_share_connections_up_to_the_stream_limit() {
    for (limit, connections) in [
        ("", 1),
        ("    pool: { max_streams_per_connection: 2 }\n", 3),
    ] {
        let app = Upstream::start_h2("h2").await;
        app.set_delay(Duration::from_millis(300));
        let proxy = start(&config(limit, "", "http2", app.addr())).await;
        let out = proxy.outbound_addr().unwrap();
        let client = HttpClient::http1();
        // Six at once, on a cold pool: one dial is made and shared (or three with a
        // limit of two streams each), never one per request.
        for r in at_once(&client, out, 6).await {
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.json()["version"], "HTTP/2.0");
        }
        assert_eq!(app.accepted(), connections, "limit {limit:?}");
        let m = metrics(&proxy).await;
        expect_series(
            &m,
            &[(
                "octopus_upstream_connections_opened_total{cluster=\"svc\"}",
                connections as f64,
            )],
        );
    }
}

#[tokio::test]
async fn a_refused_dial_is_counted_as_failed() {
    let dead = dead_address().await;
    let proxy = start(&config("", "", "http1", dead)).await;
    let r = HttpClient::http1()
        .get(proxy.outbound_addr().unwrap(), "svc", "/", &[])
        .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.headers["x-octopus-error"], "connect_failed");
    let m = metrics(&proxy).await;
    expect_series(
        &m,
        &[
            (
                "octopus_upstream_connections_failed_total{cluster=\"svc\"}",
                1.0,
            ),
            (
                "octopus_upstream_connections_opened_total{cluster=\"svc\"}",
                0.0,
            ),
        ],
    );
}
