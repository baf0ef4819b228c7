//! Client-facing limits: oversized or overlong request heads (431), too many
//! connections (closed at accept), request bodies over a route's cap (413).

use bytes::Bytes;
use octopus_tests::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn proxy(listener_extra: &str, route_extra: &str, up: &Upstream) -> octopus_proxy::Proxy {
    start(&format!(
        "outbound:\n  listen: 127.0.0.1:0\n{listener_extra}  routes:\n    - name: r\n      match: {{ host: svc }}\n      cluster: svc\n{route_extra}clusters:\n{}",
        cluster("svc", "http1", &[up.addr()])
    ))
    .await
}

/// Sends raw bytes and returns the status line of the answer ("" if closed).
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request).await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn oversized_and_overlong_heads_get_431() {
    let up = Upstream::start("up").await;
    let p = proxy("  max_header_bytes: 8192\n  max_headers: 10\n", "", &up).await;
    let out = p.outbound_addr().unwrap();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: svc\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert!(raw(out, big.as_bytes()).await.starts_with("HTTP/1.1 431"));
    let mut many = String::from("GET / HTTP/1.1\r\nHost: svc\r\n");
    for i in 0..20 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert!(raw(out, many.as_bytes()).await.starts_with("HTTP/1.1 431"));
    assert!(raw(out, b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 200"));
    assert_eq!(up.hits(), 1, "refused heads never reach the upstream");
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_accept() {
    let up = Upstream::start("up").await;
    let p = proxy("  max_connections: 2\n", "", &up).await;
    let out = p.outbound_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(out).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        assert!(s.read(&mut buf).await.unwrap() > 0);
        held.push(s);
    }
    assert_eq!(
        raw(out, b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n").await,
        "",
        "the third connection is closed"
    );
    let m = admin(&p, "/metrics").await.text();
    assert!(
        m.contains(r#"octopus_listener_overflow_total{listener="outbound"} 1"#),
        "{m}"
    );
    // The held connections still work; closing one frees a slot.
    held[0]
        .write_all(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    assert!(held[0].read(&mut buf).await.unwrap() > 0);
    held.pop();
    assert!(
        eventually(Duration::from_secs(2), async || raw(
            out,
            b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n"
        )
        .await
        .starts_with("HTTP/1.1 200"))
        .await
    );
}

#[tokio::test]
async fn request_bodies_over_the_route_cap_get_413() {
    let up = Upstream::start("up").await;
    let p = proxy("", "      max_request_body_bytes: 1024\n", &up).await;
    let out = p.outbound_addr().unwrap();
    let client = HttpClient::http1();
    let post = |n: usize| {
        http::Request::post(format!("http://{out}/echo-body"))
            .header("host", "svc")
            .body(http_body_util::Full::new(Bytes::from(vec![b'x'; n])))
            .unwrap()
    };
    let r = client.send(post(2048)).await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (413, "request body too large\n".to_string())
    );
    assert_eq!(
        up.hits(),
        0,
        "a declared length over the cap is refused before forwarding"
    );
    assert_eq!(client.send(post(512)).await.status, 200);

    // A chunked body with no declared length is cut off when it passes the cap.
    let resp = post_chunked(out, "/delay/300", &[800, 800]).await;
    assert_eq!(resp.status(), 413);
}

/// POSTs a body of chunks of these sizes with no declared length, on a connection of
/// its own.
async fn post_chunked(
    out: std::net::SocketAddr,
    path: &str,
    chunks: &[usize],
) -> http::Response<hyper::body::Incoming> {
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(out).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel(chunks.len().max(1));
    let req = http::Request::post(path)
        .header("host", "svc")
        .body(ChannelBody(rx))
        .unwrap();
    for &n in chunks {
        tx.send(Bytes::from(vec![b'y'; n])).await.unwrap();
    }
    drop(tx);
    sender.send_request(req).await.unwrap()
}

#[tokio::test]
async fn malformed_requests_are_refused_without_disturbing_others() {
    let up = Upstream::start("up").await;
    let p = proxy("", "", &up).await;
    let out = p.outbound_addr().unwrap();
    // A keep-alive client in the middle of its work the whole time.
    let client = HttpClient::http1();
    assert_eq!(client.get(out, "svc", "/", &[]).await.status, 200);

    let cases: [(&str, &[u8]); 3] = [
        ("garbage request line", b"GARBAGE\r\n\r\n"),
        (
            "invalid header byte",
            b"GET / HTTP/1.1\r\nHost: svc\r\nX-Bad: a\x01b\r\n\r\n",
        ),
        (
            "two different Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        ),
    ];
    for (name, bytes) in cases {
        let status = raw(out, bytes).await;
        assert!(status.starts_with("HTTP/1.1 400"), "{name}: got {status:?}");
    }
    assert_eq!(up.hits(), 1, "no malformed request reached the upstream");

    // Content-Length with Transfer-Encoding (the CL.TE smuggling shape): the chunked
    // framing wins and octopus re-frames the request, so the upstream never sees the
    // conflicting length and the bytes after the chunked body are not a hidden request.
    let mut s = tokio::net::TcpStream::connect(out).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !answer.contains("\"content-length\":\"5\""),
        "the upstream saw the conflicting length: {answer}"
    );

    // A body cut short by the client: that request fails, nothing else does.
    let mut s = tokio::net::TcpStream::connect(out).await.unwrap();
    s.write_all(b"POST /echo-body HTTP/1.1\r\nHost: svc\r\nContent-Length: 100\r\n\r\nshort")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;

    // An HTTP/2 protocol violation: the connection gets a GOAWAY frame.
    let mut h2 = tokio::net::TcpStream::connect(out).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // A DATA frame on stream 0 is a connection error (RFC 9113 section 6.1).
    h2.write_all(&[0, 0, 1, 0x0, 0, 0, 0, 0, 0, b'x'])
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), h2.read_to_end(&mut got)).await;
    let goaway = got.windows(4).any(|w| w[3] == 0x7 && w[..3] == [0, 0, 8]);
    assert!(goaway, "no GOAWAY in {got:?}");

    for _ in 0..5 {
        assert_eq!(
            client.get(out, "svc", "/", &[]).await.status,
            200,
            "other clients are unaffected"
        );
    }
}

#[tokio::test]
async fn http2_clients_are_told_the_stream_limit() {
    let up = Upstream::start("up").await;
    let p = proxy("  max_concurrent_streams: 7\n", "", &up).await;
    let mut s = tokio::net::TcpStream::connect(p.outbound_addr().unwrap())
        .await
        .unwrap();
    // Connection preface and an empty SETTINGS frame.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head[3], 0x4, "the server's first frame is SETTINGS");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    let settings: Vec<(u16, u32)> = payload
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    assert!(
        settings.contains(&(0x3, 7)),
        "SETTINGS_MAX_CONCURRENT_STREAMS = 7 in {settings:?}"
    );
}

#[tokio::test]
async fn hostile_upstreams_fail_only_their_own_request() {
    use octopus_testkit::{malicious_server, Misbehaviour};
    let good = Upstream::start("good").await;
    let (huge, _t1) = malicious_server(Misbehaviour::HugeHead(100 * 1024)).await;
    let (endless, _t2) = malicious_server(Misbehaviour::EndlessHeaders).await;
    let (garbage, _t3) = malicious_server(Misbehaviour::Garbage).await;
    let (short, _t4) = malicious_server(Misbehaviour::ShortBody).await;
    let mut routes = String::new();
    let mut clusters = String::new();
    for (name, addr) in [
        ("huge", huge),
        ("endless", endless),
        ("garbage", garbage),
        ("short", short),
        ("good", good.addr()),
    ] {
        routes.push_str(&format!(
            "    - name: {name}\n      match: {{ host: {name} }}\n      cluster: {name}\n      timeout: 5s\n"
        ));
        clusters.push_str(&cluster(name, "http1", &[addr]));
    }
    let p = start(&format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n{routes}clusters:\n{clusters}"
    ))
    .await;
    let out = p.outbound_addr().unwrap();

    // A client of the good service keeps one connection open throughout.
    let client = HttpClient::http1();
    assert_eq!(client.get(out, "good", "/", &[]).await.status, 200);
    for host in ["huge", "endless", "garbage"] {
        let r = tokio::time::timeout(Duration::from_secs(4), get(out, host, "/"))
            .await
            .unwrap_or_else(|_| panic!("{host}: no answer"));
        assert_eq!(r.status, 502, "{host}: {}", r.text());
        assert_eq!(r.headers["x-octopus-error"], "bad_response", "{host}");
        assert_eq!(client.get(out, "good", "/", &[]).await.status, 200);
    }

    // A body cut short after the head was forwarded: the client must see the
    // truncation (connection closed early), never a complete-looking response.
    let mut s = tokio::net::TcpStream::connect(out).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: short\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(4), s.read_to_end(&mut got))
        .await
        .expect("the proxy closes the client connection")
        .ok();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(
        body.len() < 1000,
        "a truncated body is not completed: {text}"
    );

    assert_eq!(client.get(out, "good", "/", &[]).await.status, 200);
    let m = admin(&p, "/metrics").await.text();
    for host in ["huge", "endless", "garbage"] {
        let line = format!(
            r#"octopus_requests_total{{cluster="{host}",code="502",direction="outbound",route="{host}"}} 1"#
        );
        assert!(m.contains(&line), "{line} missing from\n{m}");
    }
}

/// The soft limit on open files of this process, which hosts clients, proxy and
/// upstream at once.
fn open_file_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twice_the_connection_limit_keeps_the_first_half_served() {
    // 1000 of 2000 as the issue asks; fewer only where this process may not open
    // the ~5 descriptors per admitted connection the test needs.
    let limit = 1000.min(open_file_limit() / 5);
    let up = Upstream::start("up").await;
    let p = proxy(&format!("  max_connections: {limit}\n"), "", &up).await;
    let out = p.outbound_addr().unwrap();
    let req = b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n";

    async fn answered(s: &mut tokio::net::TcpStream, req: &[u8]) -> bool {
        if s.write_all(req).await.is_err() {
            return false;
        }
        let mut buf = [0u8; 1024];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await,
            Ok(Ok(n)) if n > 0 && buf.starts_with(b"HTTP/1.1 200")
        )
    }

    let mut admitted = Vec::with_capacity(limit);
    for _ in 0..limit {
        let mut s = tokio::net::TcpStream::connect(out).await.unwrap();
        assert!(answered(&mut s, req).await, "a connection within the limit");
        admitted.push(s);
    }
    // As many again, all at once: each is closed at accept, none is served.
    let excess = futures_util::future::join_all((0..limit).map(|_| async move {
        match tokio::net::TcpStream::connect(out).await {
            Ok(mut s) => answered(&mut s, req).await,
            Err(_) => false,
        }
    }))
    .await;
    assert_eq!(excess.iter().filter(|ok| **ok).count(), 0);
    // The admin port answers, and every admitted connection is still served.
    assert_eq!(admin(&p, "/live").await.status, 200);
    let m = admin(&p, "/metrics").await.text();
    let overflow = format!(r#"octopus_listener_overflow_total{{listener="outbound"}} {limit}"#);
    assert!(m.contains(&overflow), "{overflow} missing");
    for s in admitted.iter_mut() {
        assert!(
            answered(s, req).await,
            "an admitted connection after the burst"
        );
    }
}

#[tokio::test]
async fn a_refused_response_head_is_retried_elsewhere_as_a_gateway_error() {
    use octopus_testkit::{malicious_server, Misbehaviour};
    let good = Upstream::start("good").await;
    let (huge, _t) = malicious_server(Misbehaviour::HugeHead(100 * 1024)).await;
    let p = start(&format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r\n      match: {{ host: svc }}\n      cluster: svc\n      retry: {{ attempts: 2, retry_on: [gateway-error], backoff: {{ base: 1ms, max: 2ms }}, budget: {{ ratio: 1.0, min_per_second: 100 }} }}\nclusters:\n{}",
        cluster("svc", "http1", &[huge, good.addr()])
    ))
    .await;
    let out = p.outbound_addr().unwrap();
    for _ in 0..10 {
        let r = get(out, "svc", "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(good.hits(), 10);
}

#[tokio::test]
async fn idle_connections_are_closed_but_slow_requests_are_not() {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let up = Upstream::start("up").await;
    let p = proxy("  idle_timeout: 300ms\n", "", &up).await;
    let out = p.outbound_addr().unwrap();

    // HTTP/1.1: a request slower than the idle timeout is answered; the connection
    // is closed once it has been idle for the timeout.
    let mut s = tokio::net::TcpStream::connect(out).await.unwrap();
    s.write_all(b"GET /delay/800 HTTP/1.1\r\nHost: svc\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle HTTP/1.1 connection was closed");

    // HTTP/2: the same; the close is a GOAWAY, so the client's connection ends cleanly.
    let stream = tokio::net::TcpStream::connect(out).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("http://svc/delay/800")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the idle HTTP/2 connection ended with a GOAWAY: {ended:?}"
    );
}

#[tokio::test]
async fn response_head_limits_are_set_per_cluster() {
    use octopus_testkit::{malicious_server, Misbehaviour};
    // About 20 KiB in 21 header fields: under the defaults, over each tightened limit.
    let (head, _t) = malicious_server(Misbehaviour::HugeHead(20 * 1024)).await;
    let p = start(&format!(
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - {{ name: default, match: {{ host: default }}, cluster: default }}\n    - {{ name: small, match: {{ host: small }}, cluster: small }}\n    - {{ name: few, match: {{ host: few }}, cluster: few }}\nclusters:\n  default:\n    endpoints: [{head}]\n  small:\n    endpoints: [{head}]\n    max_response_header_bytes: 8192\n  few:\n    endpoints: [{head}]\n    max_response_headers: 10\n"
    ))
    .await;
    let out = p.outbound_addr().unwrap();
    assert_eq!(get(out, "default", "/").await.status, 200);
    for host in ["small", "few"] {
        let r = get(out, host, "/").await;
        assert_eq!(r.status, 502, "{host}: {}", r.text());
        assert_eq!(r.headers["x-octopus-error"], "bad_response", "{host}");
    }
}

/// Behind retry (which keeps bodies for replay), a streamed body over the cap is still
/// the client's 413: the error keeps its cause through the replay buffer, and it is
/// never retried.
#[tokio::test]
async fn an_oversized_body_stays_413_behind_retry_and_replay() {
    let up = Upstream::start("up").await;
    let p = proxy(
        "",
        "      max_request_body_bytes: 1024\n      retry: { attempts: 3, retry_on: [reset, connect-failure, gateway-error], non_idempotent: true }\n",
        &up,
    )
    .await;
    let resp = post_chunked(p.outbound_addr().unwrap(), "/collect-body", &[800, 800]).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["x-octopus-error"], "body_too_large");
    assert_eq!(
        up.hits(),
        0,
        "the body never fit the replay buffer's limit: no try"
    );
}
