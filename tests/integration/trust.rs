//! Trust boundaries, tried as an attacker would: upgrade tunnels, headers that forge
//! or strip what octopus vouches for, authorities that differ from what was routed,
//! CONNECT, foreign transfer codings, and clients whose broken bodies must never
//! count against a healthy endpoint. Each test asserts what the app received.

use bytes::Bytes;
use http_body_util::Full;
use octopus_testkit::{malicious_server, Misbehaviour, RawApp};
use octopus_tests::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FORGED: &str = "spiffe://cluster.local/ns/shop/sa/ADMIN-FORGED";

fn outbound(listener_extra: &str, route_extra: &str, clusters: &str) -> String {
    format!(
        "outbound:\n  listen: 127.0.0.1:0\n{listener_extra}  routes:\n    - name: r\n      match: {{ host: svc }}\n      cluster: svc\n{route_extra}clusters:\n{clusters}"
    )
}

fn inbound(app: SocketAddr, extra: &str) -> String {
    format!("inbound:\n  listen: 127.0.0.1:0\n  forward_to: {app}\n{extra}")
}

/// One HTTP/1.1 response read off a raw connection: the head (lower-cased) and as
/// much body as `content-length` says.
struct RawReply {
    head: String,
    body: Vec<u8>,
}

impl RawReply {
    fn status(&self) -> u16 {
        self.head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim())
        })
    }
}

/// Reads one response; `None` if the connection closed before a whole head came.
async fn read_reply(s: &mut TcpStream) -> Option<RawReply> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("octopus answers in time")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let mut body = buf[end..].to_vec();
    let want: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while body.len() < want {
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(RawReply { head, body })
}

async fn send_raw(addr: SocketAddr, request: &[u8]) -> (TcpStream, Option<RawReply>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let r = read_reply(&mut s).await;
    (s, r)
}

const H2C_UPGRADE: &str = "GET / HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade, HTTP2-Settings\r\n\
     Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\
     x-octopus-peer-identity: spiffe://cluster.local/ns/shop/sa/ADMIN-FORGED\r\n\
     x-forwarded-for: 6.6.6.6\r\n\r\n";

/// The HTTP/2 preface and a SETTINGS frame: what a client sends inside an h2c tunnel.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn h2c_upgrades_are_removed_and_nothing_is_tunnelled_to_the_app() {
    // Inbound (plain) and outbound, each in front of an app that takes h2c upgrades.
    let in_app = RawApp::start(false).await;
    let out_app = RawApp::start(false).await;
    let pin = start(&inbound(in_app.addr(), "")).await;
    let pout = start(&outbound(
        "",
        "",
        &cluster("svc", "http1", &[out_app.addr()]),
    ))
    .await;
    for (addr, app) in [
        (pin.inbound_addr().unwrap(), &in_app),
        (pout.outbound_addr().unwrap(), &out_app),
    ] {
        let (mut s, reply) = send_raw(addr, H2C_UPGRADE.as_bytes()).await;
        let reply = reply.expect("an answer");
        assert_eq!(
            reply.status(),
            200,
            "proxied as a plain request: {}",
            reply.head
        );
        assert_eq!(reply.body, b"ok");
        // What a client would send once it believed the upgrade worked.
        let _ = s.write_all(H2_PREFACE).await;
        let _ = tokio::time::timeout(Duration::from_millis(300), read_reply(&mut s)).await;
        let seen = app.seen();
        assert_eq!(seen.heads.len(), 1, "{:?}", seen.heads);
        let head = &seen.heads[0];
        assert!(!head.contains("upgrade"), "{head}");
        assert!(!head.contains("http2-settings"), "{head}");
        assert!(!head.contains("x-octopus-peer-identity"), "{head}");
        // The client's list with the hop octopus saw appended: the last entry is
        // the one the app may trust.
        assert!(
            head.contains("x-forwarded-for: 6.6.6.6, 127.0.0.1\r\n"),
            "{head}"
        );
        assert!(seen.tunnelled.is_empty(), "nothing is spliced to the app");
    }
}

#[tokio::test]
async fn an_app_that_switches_protocols_anyway_gets_no_tunnel() {
    let app = RawApp::start(true).await;
    let p = start(&inbound(app.addr(), "")).await;
    let (mut s, reply) = send_raw(p.inbound_addr().unwrap(), H2C_UPGRADE.as_bytes()).await;
    let reply = reply.expect("an answer");
    assert_eq!(reply.status(), 502, "{}", reply.head);
    assert_eq!(reply.header("x-octopus-error"), Some("bad_response"));
    let _ = s.write_all(H2_PREFACE).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        app.seen().tunnelled.is_empty(),
        "nothing is spliced to the app"
    );
}

#[tokio::test]
async fn websocket_passes_where_allowed_and_not_elsewhere() {
    let up = Upstream::start("up").await;
    let yaml = format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: ws\n      match: {{ host: ws }}\n      cluster: svc\n    - name: plain\n      match: {{ host: plain }}\n      cluster: svc\n      upgrades: []\nclusters:\n{}",
        cluster("svc", "http1", &[up.addr()])
    );
    let p = start(&yaml).await;
    let out = p.outbound_addr().unwrap();
    let mut ws = upgraded(out, "ws").await;
    echo_round_trip(&mut ws, b"hello through the tunnel").await;
    let handshake = "GET /chat HTTP/1.1\r\nHost: plain\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let (_s, reply) = send_raw(out, handshake.as_bytes()).await;
    let reply = reply.expect("an answer");
    assert_eq!(reply.status(), 200, "{}", reply.head);
    let seen: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert!(seen["headers"].get("upgrade").is_none(), "{seen}");
    assert!(seen["headers"].get("connection").is_none(), "{seen}");
}

#[tokio::test]
async fn connection_cannot_strip_the_verified_identity_and_look_alikes_are_dropped() {
    use octopus_tests::pki::{self, Ca};
    const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
    let dir = pki::dir("trust-identity");
    let ca = Ca::new("mesh ca");
    let ca_path = ca.write(&dir, "ca.crt");
    let server = ca.issue(&dir, "server", &["payments.test"], false);
    let client = ca.issue(&dir, "frontend", &[FRONTEND], false);
    let app = Upstream::start("app").await;
    let yaml = format!(
        "inbound:\n  listen: 127.0.0.1:0\n  forward_to: {}\n  tls:\n    cert: {}\n    key: {}\n    client_ca: {}\n",
        app.addr(),
        server.cert.display(),
        server.key.display(),
        ca_path.display()
    );
    let p = start(&yaml).await;
    let tls = TlsClient::new(
        &ca.pem,
        Some((&client.cert_pem, &client.key_pem)),
        "payments.test",
        &[b"http/1.1"],
    );
    let stream = tls.connect(p.inbound_addr().unwrap()).await.unwrap();
    let req = http::Request::get("https://payments.test/who")
        .header("host", "payments.test")
        .header(
            "connection",
            "x-octopus-peer-identity, x-forwarded-for, keep-alive",
        )
        .header("x_octopus_peer_identity", FORGED)
        .header("x_forwarded_for", "6.6.6.6")
        .header("x_app_flag", "kept")
        .body(Full::<Bytes>::default())
        .unwrap();
    let reply = request_over(stream, false, req).await.unwrap();
    assert_eq!(reply.status, 200);
    let h = &reply.json()["headers"];
    assert_eq!(h["x-octopus-peer-identity"], FRONTEND, "{h}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert!(h.get("x_octopus_peer_identity").is_none(), "{h}");
    assert!(h.get("x_forwarded_for").is_none(), "{h}");
    assert_eq!(h["x_app_flag"], "kept", "other names follow `allow`");
}

#[tokio::test]
async fn headers_with_underscores_allow_drop_reject() {
    let up = Upstream::start("up").await;
    let c = cluster("svc", "http1", &[up.addr()]);
    let hdr = [("x_app_flag", "1"), ("x-octopus-peer-identity", FORGED)];
    for (action, want) in [("allow", 200), ("drop", 200), ("reject", 400)] {
        let p = start(&outbound(
            &format!("  headers_with_underscores: {action}\n"),
            "",
            &c,
        ))
        .await;
        let r = HttpClient::http1()
            .get(p.outbound_addr().unwrap(), "svc", "/", &hdr)
            .await;
        assert_eq!(r.status.as_u16(), want, "{action}: {}", r.text());
        if want == 200 {
            let h = &r.json()["headers"];
            assert_eq!(
                h.get("x_app_flag").is_some(),
                action == "allow",
                "{action}: {h}"
            );
        } else {
            assert_eq!(r.headers["x-octopus-error"], "bad_request");
        }
    }
}

/// Uploads a client abandons (closing after part of the body), with malformed chunk
/// sizes, or that stall: each is the client's fault, so a cluster that ejects after
/// two failures keeps both endpoints and every good request still succeeds.
#[tokio::test]
async fn client_body_failures_never_count_against_endpoints() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let yaml = format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      match: {{ host: svc }}\n      cluster: svc\n      request_body_timeout: 200ms\n    - name: retried\n      match: {{ host: retried }}\n      cluster: svc\n      retry: {{ attempts: 3, retry_on: [reset, connect-failure, gateway-error], non_idempotent: true }}\n\
         clusters:\n  svc:\n    endpoints: [{}, {}]\n    outlier_detection: {{ consecutive_failures: 2, max_ejection_percent: 100, base_ejection_time: 30s }}\n",
        a.addr(),
        b.addr()
    );
    let p = start(&yaml).await;
    let out = p.outbound_addr().unwrap();
    for host in ["svc", "retried"] {
        for _ in 0..6 {
            // Half an upload, then the client closes its side and goes away.
            let mut s = TcpStream::connect(out).await.unwrap();
            let head = format!(
                "POST /collect-body HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\n\r\n0123456789"
            );
            s.write_all(head.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(s);
            // Half an upload, then a half-close: the client still reads the answer.
            let mut s = TcpStream::connect(out).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            if let Some(r) = read_reply(&mut s).await {
                assert_eq!(r.status(), 400, "{}", r.head);
                assert_eq!(r.header("x-octopus-error"), Some("client_aborted"));
            }
            // A malformed chunk size.
            let bad = format!(
                "POST /collect-body HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
            );
            let (_s, r) = send_raw(out, bad.as_bytes()).await;
            if let Some(r) = r {
                assert_eq!(r.status(), 400, "{}", r.head);
            }
        }
    }
    // Stalled uploads: nothing after the first bytes; 408 once the route's 200ms pass.
    for _ in 0..3 {
        let head =
            "POST /collect-body HTTP/1.1\r\nHost: svc\r\nContent-Length: 100\r\n\r\n0123456789";
        let (_s, r) = send_raw(out, head.as_bytes()).await;
        let r = r.expect("a 408");
        assert_eq!(r.status(), 408, "{}", r.head);
        assert_eq!(r.header("x-octopus-error"), Some("request_body_timeout"));
    }
    // Both endpoints still serve, and neither counted a failure.
    for _ in 0..10 {
        let r = get(out, "svc", "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let clusters = admin(&p, "/clusters").await.json();
    let eps = clusters["clusters"]["svc"]["endpoints"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(eps.len(), 2);
    for ep in eps {
        assert_eq!(ep["outlier"], "closed", "{ep}");
        assert_eq!(ep["failures_total"], 0, "{ep}");
        assert_eq!(ep["available"], true, "{ep}");
    }
    let m = admin(&p, "/metrics").await.text();
    let count = |needle: &str| -> u64 {
        m.lines()
            .filter(|l| l.starts_with("octopus_proxy_errors_total") && l.contains(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(count(r#"kind="client_aborted""#) >= 6, "{m}");
    assert_eq!(count(r#"kind="request_body_timeout""#), 3, "{m}");
    assert!(
        m.lines()
            .any(|l| l.starts_with("octopus_requests_total") && l.contains(r#"code="499""#)),
        "aborts are recorded as 499: {m}"
    );
    assert!(
        !m.lines()
            .any(|l| l.starts_with("octopus_upstream_retries_total") && !l.ends_with(" 0")),
        "a client's broken body is never retried: {m}"
    );
}

#[tokio::test]
async fn listener_max_requests_sheds_the_excess_at_once() {
    let up = Upstream::start("up").await;
    let p = start(&outbound(
        "  max_requests: 2\n",
        "",
        &cluster("svc", "http1", &[up.addr()]),
    ))
    .await;
    let out = p.outbound_addr().unwrap();
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(out, "svc", "/delay/700").await.status }))
        .collect();
    assert!(
        eventually(Duration::from_secs(5), async || up.hits() == 2).await,
        "both slow requests reached the upstream"
    );
    let r = get(out, "svc", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["x-octopus-error"], "overloaded");
    for t in slow {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(get(out, "svc", "/").await.status, 200, "slots are released");
}

/// Many HTTP/2 streams on one inbound connection: `inbound.circuit_breaker` caps the
/// requests in progress and the connections the app sees; the excess is shed with
/// 503 at once instead of holding descriptors.
#[tokio::test]
async fn inbound_limits_bound_what_reaches_the_app() {
    let app = Upstream::start("app").await;
    let p = start(&inbound(
        app.addr(),
        "  circuit_breaker: { max_connections: 2, max_pending_requests: 100, max_requests: 3 }\n",
    ))
    .await;
    let client = HttpClient::http2(p.inbound_addr().unwrap());
    let burst = |n: usize| {
        let client = client.clone();
        async move {
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let c = client.clone();
                    tokio::spawn(async move {
                        let r = c
                            .get(
                                SocketAddr::from(([0, 0, 0, 0], 0)),
                                "app",
                                "/delay/300",
                                &[],
                            )
                            .await;
                        (r.status.as_u16(), r.headers.get("x-octopus-error").cloned())
                    })
                })
                .collect();
            let mut counts = (0, 0);
            for t in tasks {
                match t.await.unwrap() {
                    (200, _) => counts.0 += 1,
                    (503, Some(kind)) if kind == "circuit_open" => counts.1 += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            counts
        }
    };
    let (ok, shed) = burst(10).await;
    assert_eq!(ok + shed, 10);
    assert!(ok >= 2 && shed >= 7, "max_requests 3: ok {ok}, shed {shed}");
    assert!(
        app.peak_connections() <= 2,
        "the app saw {} connections at once",
        app.peak_connections()
    );
    // Once the burst is over every slot is free again.
    assert_eq!(burst(2).await, (2, 0));
}

#[tokio::test]
async fn the_upstream_sees_the_authority_octopus_routed_on() {
    let up = Upstream::start("up").await;
    let p = start(&outbound("", "", &cluster("svc", "http1", &[up.addr()]))).await;
    let out = p.outbound_addr().unwrap();
    // Absolute-form URI wins over a different Host.
    let (_s, r) = send_raw(
        out,
        b"GET http://svc/x HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    )
    .await;
    let r = r.unwrap();
    assert_eq!(r.status(), 200, "{}", r.head);
    let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(seen["headers"]["host"], "svc", "{seen}");
    assert_eq!(seen["path"], "/x");
    // HTTP/2 `:authority` wins over a `host` field.
    let h2 = HttpClient::http2(out);
    let req = http::Request::get("http://svc/y")
        .header("host", "evil.example")
        .body(Full::<Bytes>::default())
        .unwrap();
    let r = h2.send(req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["host"], "svc");
    let hits = up.hits();
    // Ambiguous or malformed authorities are refused before routing.
    for bad in [
        "GET / HTTP/1.1\r\nHost: svc\r\nHost: evil.example\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: evil@svc\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: svc:abc\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: svc:99999\r\n\r\n",
        "GET http://evil@svc/ HTTP/1.1\r\nHost: svc\r\n\r\n",
    ] {
        let (_s, r) = send_raw(out, bad.as_bytes()).await;
        let r = r.unwrap_or_else(|| panic!("no answer to {bad:?}"));
        assert_eq!(r.status(), 400, "{bad:?}: {}", r.head);
    }
    assert_eq!(up.hits(), hits, "refused requests never reach the upstream");
}

#[tokio::test]
async fn connect_is_refused_on_both_protocols() {
    let up = Upstream::start("up").await;
    let p = start(&outbound("", "", &cluster("svc", "http1", &[up.addr()]))).await;
    let out = p.outbound_addr().unwrap();
    let (_s, r) = send_raw(out, b"CONNECT svc:443 HTTP/1.1\r\nHost: svc:443\r\n\r\n").await;
    let r = r.unwrap();
    assert_eq!(r.status(), 405, "{}", r.head);
    assert_eq!(r.header("x-octopus-error"), Some("connect_unsupported"));
    let h2 = HttpClient::http2(out);
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("svc:443")
        .body(Full::<Bytes>::default())
        .unwrap();
    let r = h2.send(req).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["x-octopus-error"], "connect_unsupported");
    assert_eq!(up.hits(), 0, "CONNECT never reaches the upstream");
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_never_dropped_silently() {
    let (bad_up, _task) = malicious_server(Misbehaviour::ForeignTransferCoding).await;
    let good_up = Upstream::start("up").await;
    let yaml = format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: gz\n      match: {{ host: gz }}\n      cluster: gz\n    - name: svc\n      match: {{ host: svc }}\n      cluster: svc\nclusters:\n{}{}",
        cluster("gz", "http1", &[bad_up]),
        cluster("svc", "http1", &[good_up.addr()])
    );
    let p = start(&yaml).await;
    let out = p.outbound_addr().unwrap();
    let r = get(out, "gz", "/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.headers["x-octopus-error"], "bad_response");
    let (_s, r) = send_raw(
        out,
        b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nxxxxx\r\n0\r\n\r\n",
    )
    .await;
    let r = r.unwrap();
    assert_eq!(r.status(), 501, "{}", r.head);
    assert_eq!(
        r.header("x-octopus-error"),
        Some("unsupported_transfer_coding")
    );
    assert_eq!(good_up.hits(), 0);
}

/// The inbound listener's own copies of the keys: `upgrades`, `request_body_timeout`,
/// `headers_with_underscores` and `max_requests`, each driven with traffic.
#[tokio::test]
async fn inbound_trust_keys_apply_to_what_the_app_receives() {
    let app = Upstream::start("app").await;
    let p = start(&inbound(
        app.addr(),
        "  upgrades: []\n  request_body_timeout: 200ms\n  headers_with_underscores: drop\n  max_requests: 1\n",
    ))
    .await;
    let addr = p.inbound_addr().unwrap();
    // No upgrade may pass: a WebSocket handshake is an ordinary request to the app.
    let handshake = "GET /chat HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nx_app_flag: 1\r\n\r\n";
    let (_s, r) = send_raw(addr, handshake.as_bytes()).await;
    let r = r.expect("an answer");
    assert_eq!(r.status(), 200, "{}", r.head);
    let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(seen["headers"].get("upgrade").is_none(), "{seen}");
    assert!(
        seen["headers"].get("x_app_flag").is_none(),
        "dropped: {seen}"
    );
    // A stalled body: 408 after 200ms, and while it is held the one request slot is
    // taken, so another request is shed.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"POST /collect-body HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n0123")
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || app.hits() == 2).await,
        "the stalled upload reached the app"
    );
    let r = get(addr, "app", "/").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.headers["x-octopus-error"], "overloaded");
    let r = read_reply(&mut stalled).await.expect("a 408");
    assert_eq!(r.status(), 408, "{}", r.head);
    assert_eq!(
        get(addr, "app", "/").await.status,
        200,
        "the slot is free again"
    );
}
