//! Protocol bridging (HTTP/1.1 <-> HTTP/2), streamed bodies, and upgrades.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use octopus_tests::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn proxy_to(up: &Upstream, protocol: &str) -> octopus_proxy::Proxy {
    let yaml = format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - {{ name: r, match: {{ host: svc }}, cluster: svc }}\nclusters:\n{}",
        cluster("svc", protocol, &[up.addr()])
    );
    start(&yaml).await
}

#[tokio::test]
async fn http1_client_to_http2_upstream() {
    let up = Upstream::start_h2("h2-only").await;
    let proxy = proxy_to(&up, "http2").await;
    let client = HttpClient::http1();
    for _ in 0..5 {
        let r = client
            .get(proxy.outbound_addr().unwrap(), "svc", "/x", &[])
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = r.json();
        assert_eq!(seen["version"], "HTTP/2.0");
        assert_eq!(
            seen["authority"], "svc",
            "the service name travels as :authority"
        );
    }
}

#[tokio::test]
async fn http2_client_to_http1_upstream() {
    let up = Upstream::start_with(
        "h1-only",
        Protocols::Http1Only,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let proxy = proxy_to(&up, "http1").await;
    let client = HttpClient::http2(proxy.outbound_addr().unwrap());
    // Concurrent streams on one client connection, each answered over HTTP/1.1.
    let replies = futures_util::future::join_all((0..20).map(|i| {
        let client = client.clone();
        let addr = proxy.outbound_addr().unwrap();
        async move { client.get(addr, "svc", &format!("/s{i}"), &[]).await }
    }))
    .await;
    for r in replies {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["version"], "HTTP/1.1");
        assert_eq!(r.json()["headers"]["host"], "svc");
    }
}

#[tokio::test]
async fn ten_mib_bodies_stream_both_ways() {
    let up = Upstream::start("big").await;
    let proxy = proxy_to(&up, "http1").await;
    let out = proxy.outbound_addr().unwrap();
    const SIZE: usize = 10 * 1024 * 1024;
    let upload: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let req = http::Request::post(format!("http://{out}/echo-body"))
        .header("host", "svc")
        .body(Full::new(Bytes::from(upload.clone())))
        .unwrap();
    let r = HttpClient::http1().send(req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), SIZE);
    assert!(r.body == upload, "echoed body differs");
    let r = get(out, "svc", &format!("/bytes/{SIZE}")).await;
    assert_eq!(r.body.len(), SIZE);
}

/// Each chunk must come back before the next is sent: if octopus collected the request
/// body before forwarding it, this would stall and time out.
#[tokio::test]
async fn bodies_are_streamed_not_buffered() {
    for protocol in ["http1", "http2"] {
        let up = Upstream::start("echo").await;
        let proxy = proxy_to(&up, protocol).await;
        let io = hyper_util::rt::TokioIo::new(
            tokio::net::TcpStream::connect(proxy.outbound_addr().unwrap())
                .await
                .unwrap(),
        );
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let req = http::Request::post("http://svc/echo-body")
            .body(ChannelBody(rx))
            .unwrap();
        tx.send(Bytes::from(vec![b'a'; 64 * 1024])).await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
            .await
            .expect("response head arrives while the request body is still open")
            .unwrap();
        let mut body = resp.into_body();
        let mut received = 0usize;
        for round in 1..=20usize {
            while received < round * 64 * 1024 {
                let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                    .await
                    .unwrap_or_else(|_| panic!("{protocol}: chunk {round} was not streamed back"))
                    .unwrap()
                    .unwrap();
                received += frame.into_data().map(|d| d.len()).unwrap_or(0);
            }
            if round < 20 {
                tx.send(Bytes::from(vec![b'a'; 64 * 1024])).await.unwrap();
            }
        }
        drop(tx);
        assert_eq!(received, 20 * 64 * 1024);
    }
}

#[tokio::test]
async fn websocket_upgrade_round_trip() {
    let up = Upstream::start("ws").await;
    let proxy = proxy_to(&up, "http1").await;
    let mut s = tokio::net::TcpStream::connect(proxy.outbound_addr().unwrap())
        .await
        .unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "connection closed during handshake"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"hello"[..], b"through the octopus", &[0u8, 1, 2, 255]] {
        s.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg);
    }
}
