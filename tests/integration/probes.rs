//! App probes for the kubelet (`admin.app_probes`, `GET /app-health/<name>`): octopus
//! probes real app listeners on 127.0.0.1 and answers 200 or 503 with the reason, on
//! `admin.listen` and on `admin.metrics_listen`, which serves nothing else of admin.

use octopus_tests::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An app that answers every request with `status` and closes, keeping each request
/// head it received so the test can check what octopus sent.
struct App {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl App {
    async fn answering(status: &'static str) -> App {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 3\r\nconnection: close\r\n\r\napp"
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        App { addr, heads }
    }
}

/// An app that accepts connections and never answers (held open until the test ends).
async fn hanging_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// A plain TCP listener that accepts and closes, like a database's port for a connect
/// check.
async fn tcp_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { while l.accept().await.is_ok() {} });
    addr
}

fn probe_config(probes: &[(&str, String)]) -> String {
    let mut yaml =
        "admin:\n  listen: 127.0.0.1:0\n  metrics_listen: 127.0.0.1:0\n  app_probes:\n".to_string();
    for (name, body) in probes {
        yaml.push_str(&format!("    {name}: {{ {body} }}\n"));
    }
    yaml
}

async fn head(addr: SocketAddr, path: &str) -> Reply {
    let req = http::Request::head(format!("http://{addr}{path}"))
        .body(http_body_util::Full::default())
        .unwrap();
    HttpClient::http1().send(req).await
}

fn metric(page: &str, probe: &str, result: &str) -> Option<u64> {
    let prefix = format!("octopus_app_probes_total{{probe=\"{probe}\",result=\"{result}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn app_probes_answer_for_the_app_on_both_admin_ports() {
    let healthy = App::answering("200 OK").await;
    let redirecting = App::answering("302 Found").await;
    let broken = App::answering("500 Internal Server Error").await;
    let hang = hanging_app().await;
    let down = dead_address().await;
    let db = tcp_app().await;
    let yaml = probe_config(&[
        (
            "ready",
            format!("port: {}, path: /healthz", healthy.addr.port()),
        ),
        (
            "moved",
            format!("port: {}, path: /old", redirecting.addr.port()),
        ),
        (
            "broken",
            format!("port: {}, path: /healthz", broken.addr.port()),
        ),
        ("down", format!("port: {}, path: /healthz", down.port())),
        (
            "hang",
            format!("port: {}, path: /healthz, timeout: 300ms", hang.port()),
        ),
        ("db", format!("port: {}", db.port())),
        ("db-down", format!("port: {}", down.port())),
    ]);
    let proxy = start(&yaml).await;
    let m = proxy.metrics_addr().expect("the metrics listener is bound");
    let a = proxy.admin_addr();

    // Every configured probe's series exist at 0 before any probe ran.
    let page = get(m, "prometheus", "/metrics").await.text();
    for probe in ["ready", "moved", "broken", "down", "hang", "db", "db-down"] {
        for result in ["ok", "failed"] {
            assert_eq!(metric(&page, probe, result), Some(0), "{probe} {result}");
        }
    }

    // A healthy app: 200 on both ports, and the app saw the kubelet-like request.
    for addr in [m, a] {
        let r = get(addr, "kubelet", "/app-health/ready").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains("200"), "{}", r.text());
    }
    let heads = healthy.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    let first = heads[0].to_ascii_lowercase();
    assert!(first.starts_with("get /healthz http/1.1\r\n"), "{first}");
    assert!(
        first.contains(&format!("\r\nhost: 127.0.0.1:{}\r\n", healthy.addr.port())),
        "{first}"
    );
    assert!(
        first.contains("\r\nuser-agent: octopus-app-probe\r\n"),
        "{first}"
    );
    // HEAD is answered the same way, with no body.
    let r = head(m, "/app-health/ready").await;
    assert_eq!((r.status.as_u16(), r.body.len()), (200, 0));

    // 3xx passes, as for the kubelet.
    assert_eq!(get(m, "kubelet", "/app-health/moved").await.status, 200);

    // The app's 500: 503, and the body says what the app answered.
    let r = get(m, "kubelet", "/app-health/broken").await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("answered 500"), "{}", r.text());
    assert_eq!(r.text().lines().count(), 1, "{}", r.text());
    assert_eq!(head(m, "/app-health/broken").await.status, 503);

    // Nothing listening: 503 refused.
    let r = get(m, "kubelet", "/app-health/down").await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("refused"), "{}", r.text());

    // An app that accepts and never answers: 503 once the probe's timeout passes.
    let started = Instant::now();
    let r = get(m, "kubelet", "/app-health/hang").await;
    let took = started.elapsed();
    assert_eq!(r.status, 503);
    assert!(r.text().contains("timed out"), "{}", r.text());
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // TCP connect checks.
    let r = get(m, "kubelet", "/app-health/db").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(m, "kubelet", "/app-health/db-down").await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("refused"), "{}", r.text());

    // Unknown names, and methods other than GET and HEAD.
    for addr in [m, a] {
        for path in [
            "/app-health/nope",
            "/app-health/",
            "/app-health/ready/extra",
        ] {
            assert_eq!(get(addr, "kubelet", path).await.status, 404, "{path}");
        }
        let post = http::Request::post(format!("http://{addr}/app-health/ready"))
            .body(http_body_util::Full::default())
            .unwrap();
        assert_eq!(HttpClient::http1().send(post).await.status, 405);
    }
    assert_eq!(
        healthy.heads.lock().unwrap().len(),
        3,
        "404s and 405s must not probe the app"
    );

    // The metrics port still serves nothing else of admin.
    for path in ["/config", "/clusters", "/log-level", "/ready"] {
        let r = get(m, "kubelet", path).await;
        assert_eq!(r.status, 404, "{path}");
        assert!(!r.text().contains("generation"), "{path}: {}", r.text());
    }
    assert_eq!(get(a, "operator", "/config").await.status, 200);

    // Counted per probe and result; probes are not traffic.
    let page = get(a, "prometheus", "/metrics").await.text();
    for (probe, ok, failed) in [
        ("ready", 3, 0),
        ("moved", 1, 0),
        ("broken", 0, 2),
        ("down", 0, 1),
        ("hang", 0, 1),
        ("db", 1, 0),
        ("db-down", 0, 1),
    ] {
        assert_eq!(metric(&page, probe, "ok"), Some(ok), "{probe} ok");
        assert_eq!(
            metric(&page, probe, "failed"),
            Some(failed),
            "{probe} failed"
        );
    }
    assert!(
        !page.contains("octopus_requests_total{"),
        "probes were counted as requests"
    );
    assert!(
        !page.contains("probe=\"nope\""),
        "an unknown name made a series"
    );

    // A reload re-points a probe; the next request uses the new target.
    let yaml = probe_config(&[(
        "ready",
        format!("port: {}, path: /healthz", broken.addr.port()),
    )]);
    proxy.reload(parse(&yaml), None).await.unwrap();
    let r = get(
        proxy.metrics_addr().unwrap(),
        "kubelet",
        "/app-health/ready",
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("answered 500"), "{}", r.text());
}

#[tokio::test]
async fn concurrent_probes_of_one_name_share_one_probe_of_the_app() {
    // An app that takes a second to answer and counts the connections it gets.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = l.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    let proxy = start(&probe_config(&[(
        "slow",
        format!("port: {}, path: /healthz, timeout: 10s", app.port()),
    )]))
    .await;
    let m = proxy.metrics_addr().unwrap();
    let answers =
        futures_util::future::join_all((0..8).map(|_| get(m, "kubelet", "/app-health/slow"))).await;
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Eight callers at once, one probe of the app; a later call probes afresh.
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(get(m, "kubelet", "/app-health/slow").await.status, 200);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}
