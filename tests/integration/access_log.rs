//! Access logs and request ids, end to end: what each line says about a request that
//! succeeded, failed upstream, failed on octopus' side, or was abandoned by its
//! client; sampling, the query setting, reopening and size rotation.

use octopus_tests::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn log_path(tag: &str) -> PathBuf {
    let dir = octopus_tests::pki::dir(&format!("access-log-{tag}"));
    dir.join("access.log")
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

async fn wait_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    assert!(
        eventually(Duration::from_secs(5), async || lines(path).len() >= n).await,
        "expected {n} lines in {}, got {:?}",
        path.display(),
        lines(path)
    );
    lines(path)
}

fn by_id<'a>(lines: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["request_id"] == id)
        .unwrap_or_else(|| panic!("no line for request {id} in {lines:?}"))
}

async fn metric(proxy: &octopus_proxy::Proxy, series: &str) -> f64 {
    let text = admin(proxy, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in metrics"))
}

#[tokio::test]
async fn each_request_gets_one_line_saying_what_happened_and_whose_fault() {
    let up = Upstream::start("up").await;
    let slow = Upstream::start("slow").await;
    let path = log_path("lines");
    let yaml = format!(
        "outbound:
  listen: 127.0.0.1:0
  access_log: {{ path: {}, include_query: false }}
  routes:
    - {{ name: shop, match: {{ host: shop }}, cluster: up }}
    - {{ name: slow, match: {{ host: slow }}, cluster: slow }}
    - name: dead
      match: {{ host: dead }}
      cluster: dead
      retry: {{ attempts: 2, retry_on: [connect-failure], backoff: {{ base: 1ms, max: 2ms }} }}
clusters:
{}{}{}",
        path.display(),
        cluster("up", "http1", &[up.addr()]),
        cluster("slow", "http1", &[slow.addr()]),
        cluster("dead", "http1", &["127.0.0.1:1".parse().unwrap()]),
    );
    let proxy = start(&yaml).await;
    let out = proxy.outbound_addr().unwrap();
    let client = HttpClient::http1();

    // A client's own id is kept and reaches the app; the query stays out of the log.
    let ok = client
        .get(
            out,
            "shop",
            "/items?token=secret",
            &[("x-request-id", "abc-1")],
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["headers"]["x-request-id"], "abc-1");
    // Without one, octopus makes one (a UUID v4) and the app receives it.
    let made = client.get(out, "shop", "/x", &[]).await;
    let made_id = made.json()["headers"]["x-request-id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(made_id.len(), 36, "{made_id}");
    // A forged second id is not passed on as two: one value reaches the app.
    let two = client
        .get(
            out,
            "shop",
            "/y",
            &[("x-request-id", "a"), ("x-request-id", "b")],
        )
        .await;
    let two_id = two.json()["headers"]["x-request-id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        two_id.len(),
        36,
        "two client ids are replaced by one of ours: {two_id}"
    );

    // Octopus' own answers carry the id: an upstream failure after two tries, no route.
    let dead = client
        .get(out, "dead", "/", &[("x-request-id", "dead-1")])
        .await;
    assert_eq!(dead.status, 502);
    assert_eq!(dead.headers["x-request-id"], "dead-1");
    assert_eq!(dead.headers["x-octopus-error"], "connect_failed");
    let none = client.get(out, "nowhere", "/", &[]).await;
    assert_eq!(none.status, 404);
    let none_id = none.headers["x-request-id"].to_str().unwrap().to_string();

    // An upload: its bytes are counted.
    let upload = client
        .send(
            http::Request::post(format!("http://{out}/collect-body"))
                .header("host", "shop")
                .header("x-request-id", "up-1")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"hello",
                )))
                .unwrap(),
        )
        .await;
    assert_eq!(upload.status, 200);

    // A client that gives up before its answer: 499 client_aborted.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        client.get(out, "slow", "/delay/3000", &[("x-request-id", "gone-1")]),
    )
    .await;
    assert!(gave_up.is_err());

    let all = wait_lines(&path, 7).await;
    let l = by_id(&all, "abc-1");
    assert_eq!(l["direction"], "outbound");
    assert_eq!(l["route"], "shop");
    assert_eq!(l["cluster"], "up");
    assert_eq!(l["endpoint"], up.addr().to_string());
    assert_eq!(l["method"], "GET");
    assert_eq!(l["authority"], "shop");
    assert_eq!(l["path"], "/items", "include_query: false drops the query");
    assert_eq!(l["protocol"], "HTTP/1.1");
    assert_eq!(l["status"], 200);
    assert_eq!(l["attempts"], 1);
    assert!(l["error"].is_null() && l["fault"].is_null(), "{l}");
    assert_eq!(l["bytes_out"].as_u64().unwrap(), ok.body.len() as u64);
    assert!(l["duration_ms"].as_f64().unwrap() >= l["upstream_ms"].as_f64().unwrap());
    assert!(l["start"].as_str().unwrap().ends_with('Z'));
    assert!(l["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    by_id(&all, &made_id);
    by_id(&all, &two_id);

    let l = by_id(&all, "dead-1");
    assert_eq!(l["status"], 502);
    assert_eq!(l["error"], "connect_failed");
    assert_eq!(l["fault"], "upstream");
    assert_eq!(l["attempts"], 2, "both tries are counted");
    assert_eq!(l["cluster"], "dead");

    let l = by_id(&all, &none_id);
    assert_eq!(l["status"], 404);
    assert_eq!(l["route"], "none");
    assert_eq!(l["error"], "no_route");
    assert_eq!(l["fault"], "octopus");
    assert_eq!(l["attempts"], 0);

    let l = by_id(&all, "up-1");
    assert_eq!(l["method"], "POST");
    assert_eq!(l["bytes_in"], 5);

    let l = by_id(&all, "gone-1");
    assert_eq!(l["status"], 499);
    assert_eq!(l["error"], "client_aborted");
    assert_eq!(l["fault"], "client");

    assert_eq!(
        metric(
            &proxy,
            r#"octopus_access_log_lines_total{direction="outbound"}"#
        )
        .await,
        all.len() as f64
    );
    assert_eq!(
        metric(&proxy, "octopus_access_log_dropped_total").await,
        0.0
    );
    // Error series exist from the start, at 0 for kinds that never happened.
    assert_eq!(
        metric(
            &proxy,
            r#"octopus_proxy_errors_total{cluster="up",direction="outbound",kind="timeout",route="shop"}"#
        )
        .await,
        0.0
    );
}

#[tokio::test]
async fn sampling_reopening_and_rotation() {
    let up = Upstream::start("up").await;
    let (none_path, path) = (log_path("sample0"), log_path("rotate"));
    let yaml = format!(
        "outbound:
  listen: 127.0.0.1:0
  access_log: {{ path: {}, sample: 0.0 }}
  routes:
    - {{ name: shop, match: {{ host: shop }}, cluster: up }}
inbound:
  listen: 127.0.0.1:0
  forward_to: {}
  access_log: {{ path: {}, max_bytes: 4096 }}
clusters:
{}",
        none_path.display(),
        up.addr(),
        path.display(),
        cluster("up", "http1", &[up.addr()]),
    );
    let proxy = start(&yaml).await;
    let (out, inb) = (
        proxy.outbound_addr().unwrap(),
        proxy.inbound_addr().unwrap(),
    );
    let client = HttpClient::http1();
    for _ in 0..10 {
        assert_eq!(client.get(out, "shop", "/", &[]).await.status, 200);
    }
    // Inbound lines until the file passes 4096 bytes and is rotated to PATH.1.
    let rotated = PathBuf::from(format!("{}.1", path.display()));
    let mut sent = 0;
    while !rotated.exists() && sent < 200 {
        let id = format!("in-{sent}");
        let r = client
            .get(inb, "app", "/?q=1", &[("x-request-id", &id)])
            .await;
        assert_eq!(r.status, 200);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(rotated.exists(), "no rotation to {}", rotated.display());
    assert!(std::fs::metadata(&rotated).unwrap().len() >= 4096);
    let last = format!("in-{}", sent - 1);
    assert!(
        eventually(Duration::from_secs(5), async || {
            lines(&path)
                .iter()
                .chain(&lines(&rotated))
                .any(|l| l["request_id"] == last)
        })
        .await
    );
    let all = lines(&rotated);
    let l = &all[0];
    assert_eq!(l["direction"], "inbound");
    assert_eq!(l["route"], "inbound");
    assert_eq!(l["cluster"], "local_app");
    assert_eq!(l["path"], "/?q=1", "the query is logged by default");
    // sample: 0.0 logs nothing.
    assert!(lines(&none_path).is_empty());
    assert_eq!(
        metric(
            &proxy,
            r#"octopus_access_log_lines_total{direction="outbound"}"#
        )
        .await,
        0.0
    );

    // logrotate moves the file away, then octopus reopens it (SIGUSR1 in the binary).
    let moved = PathBuf::from(format!("{}.moved", path.display()));
    std::fs::rename(&path, &moved).unwrap();
    proxy.reopen_access_logs();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = client
        .get(inb, "app", "/", &[("x-request-id", "after")])
        .await;
    assert_eq!(r.status, 200);
    let fresh = wait_lines(&path, 1).await;
    by_id(&fresh, "after");
    assert!(lines(&moved).iter().all(|l| l["request_id"] != "after"));
}

#[tokio::test]
async fn bytes_are_counted_per_listener_and_per_cluster() {
    let up = Upstream::start("up").await;
    let yaml = format!(
        "outbound:
  listen: 127.0.0.1:0
  routes:
    - {{ name: shop, match: {{ host: shop }}, cluster: up }}
clusters:
{}",
        cluster("up", "http1", &[up.addr()]),
    );
    let proxy = start(&yaml).await;
    let out = proxy.outbound_addr().unwrap();
    let body = bytes::Bytes::from(vec![b'x'; 100_000]);
    let r = HttpClient::http1()
        .send(
            http::Request::post(format!("http://{out}/echo-body"))
                .header("host", "shop")
                .body(http_body_util::Full::new(body.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body);
    let got = |series: &'static str| metric(&proxy, series);
    // Each side carried the body one way and back, plus the heads.
    let down_in =
        got(r#"octopus_downstream_bytes_total{direction="received",listener="outbound"}"#).await;
    let down_out =
        got(r#"octopus_downstream_bytes_total{direction="sent",listener="outbound"}"#).await;
    let up_out = got(r#"octopus_upstream_bytes_total{cluster="up",direction="sent"}"#).await;
    let up_in = got(r#"octopus_upstream_bytes_total{cluster="up",direction="received"}"#).await;
    for (name, v) in [
        ("down in", down_in),
        ("down out", down_out),
        ("up out", up_out),
        ("up in", up_in),
    ] {
        assert!((100_000.0..102_000.0).contains(&v), "{name}: {v}");
    }
}
