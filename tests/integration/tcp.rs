//! Opaque TCP through `tcp_routes` on connections made straight to the outbound
//! listener (capture, where the destination comes from iptables, is tested in network
//! namespaces by `crates/octopus/tests/mesh.rs`): L4 balancing with outlier detection
//! on connect failures, a server that speaks first, idle and connection limits, byte
//! metrics, HTTP beside TCP on one listener, and opaque TCP wrapped in mTLS between
//! two sidecars with the identity checked.

use octopus_tests::pki::{self, Ca};
use octopus_tests::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";

/// A TCP server that answers each line with `<name>:<line>`; with a banner, it greets
/// first (a server-speaks-first protocol, like SMTP or MySQL).
async fn line_server(name: &'static str, banner: Option<&'static str>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if let Some(b) = banner {
                    if s.write_all(b.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let reply = format!("{name}:{}", String::from_utf8_lossy(&buf[..n]));
                            if s.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn round_trip(s: &mut TcpStream, line: &str) -> String {
    s.write_all(line.as_bytes()).await.unwrap();
    String::from_utf8_lossy(&first_bytes(s).await).into_owned()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// What arrives first on `s` within ten seconds: empty when the connection is closed
/// (or reset) without a byte.
async fn first_bytes(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer or a close within 10 s")
        .unwrap_or(0);
    buf.truncate(n);
    buf
}

/// Connects to `addr`, takes the server's greeting, sends `line`: (greeting, answer).
async fn greeting_then_echo(addr: SocketAddr, line: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let greeting = String::from_utf8_lossy(&first_bytes(&mut s).await).into_owned();
    (greeting, round_trip(&mut s, line).await)
}

/// An outbound sidecar whose TCP route `db` sends everything to `to` over mTLS,
/// proving `leaf` and expecting the server to prove DB.
fn mtls_tcp_outbound(to: SocketAddr, leaf: &pki::Leaf, ca: &std::path::Path) -> String {
    format!(
        "outbound:
  listen: 127.0.0.1:0
  tcp_routes:
    - {{ name: db, cluster: db }}
clusters:
  db:
    protocol: tcp
    endpoints: [{to}]
    tls: {{ cert: {}, key: {}, ca: {}, server_identity: \"{DB}\" }}
",
        leaf.cert.display(),
        leaf.key.display(),
        ca.display()
    )
}

/// An inbound sidecar in front of `app` proving `server`, with `extra` lines under
/// `inbound:` and `tls_extra` under `tls:`.
fn mtls_inbound(
    app: SocketAddr,
    server: &pki::Leaf,
    ca: &std::path::Path,
    extra: &str,
    tls_extra: &str,
) -> String {
    format!(
        "inbound:
  listen: 127.0.0.1:0
  forward_to: {app}
{extra}  tls:
    cert: {}
    key: {}
    client_ca: {}
{tls_extra}",
        server.cert.display(),
        server.key.display(),
        ca.display()
    )
}

#[tokio::test]
async fn tcp_routes_balance_skip_dead_endpoints_and_count_bytes() {
    let a = line_server("a", None).await;
    let b = line_server("b", None).await;
    let dead = dead_address().await;
    let backends = [dead, a, b];
    let web = Upstream::start("web").await;
    let yaml = format!(
        "outbound:
  listen: 127.0.0.1:0
  detect_timeout: 30s
  routes:
    - {{ name: web, match: {{ host: web }}, cluster: web }}
  tcp_routes:
    - name: db
      match: {{ destination: 127.0.0.0/8 }}
      cluster: db
clusters:
  web:
    endpoints: [{web}]
  db:
    protocol: tcp
    lb: round_robin
    endpoints: [{}]
    outlier_detection: {{ consecutive_failures: 1, base_ejection_time: 60s }}
",
        backends
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        web = web.addr(),
    );
    let proxy = start(&yaml).await;
    let addr = proxy.outbound_addr().unwrap();
    let mut served = Vec::new();
    for i in 0..6 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let got = round_trip(&mut s, &format!("ping{i}\n")).await;
        served.push(got[..1].to_string());
        assert!(got.ends_with(&format!(":ping{i}\n")), "{got}");
    }
    // The dead endpoint cost no connection: its dial failed over to a live one, then
    // outlier detection ejected it.
    assert!(served.contains(&"a".to_string()) && served.contains(&"b".to_string()));
    let m = admin(&proxy, "/metrics").await.text();
    assert_eq!(
        metric(
            &m,
            r#"octopus_tcp_connections_total{result="ok",route="db"}"#
        ),
        6.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"octopus_tcp_bytes_total{direction="received",route="db"}"#
        ),
        36.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"octopus_tcp_bytes_total{direction="sent",route="db"}"#
        ),
        48.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!(r#"octopus_endpoint_ejected{{cluster="db",endpoint="{dead}"}}"#)
        ),
        1.0,
        "{m}"
    );
    assert!(
        m.contains(
            r#"octopus_protocol_detect_seconds_count{listener="outbound",protocol="opaque"} 6"#
        ),
        "{m}"
    );
    // HTTP on the same listener is still routed.
    let r = get(addr, "web", "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream(), "web");
}

#[tokio::test]
async fn a_server_that_speaks_first_is_answered_without_waiting_for_detection() {
    let smtp = line_server("smtp", Some("220 smtp.test ready\r\n")).await;
    // Detection would wait a minute for the client; only the server's greeting can end
    // it within the test's read timeout.
    let yaml = format!(
        "outbound:
  listen: 127.0.0.1:0
  detect_timeout: 60s
  tcp_routes:
    - {{ name: smtp, cluster: smtp }}
clusters:
  smtp:
    protocol: tcp
    endpoints: [{smtp}]
"
    );
    let proxy = start(&yaml).await;
    let mut s = TcpStream::connect(proxy.outbound_addr().unwrap())
        .await
        .unwrap();
    assert_eq!(
        first_bytes(&mut s).await,
        b"220 smtp.test ready\r\n",
        "the greeting arrives without the client speaking"
    );
    assert_eq!(round_trip(&mut s, "HELO me\r\n").await, "smtp:HELO me\r\n");
    let m = admin(&proxy, "/metrics").await.text();
    assert_eq!(
        metric(
            &m,
            r#"octopus_protocol_detect_timeouts_total{listener="outbound"}"#
        ),
        0.0
    );
}

#[tokio::test]
async fn idle_timeout_connection_limit_and_silent_clients() {
    let db = line_server("db", None).await;
    let yaml = format!(
        "outbound:
  listen: 127.0.0.1:0
  detect_timeout: 50ms
  tcp_routes:
    - {{ name: db, cluster: db, idle_timeout: 1s }}
clusters:
  db:
    protocol: tcp
    endpoints: [{db}]
    circuit_breaker: {{ max_connections: 1 }}
"
    );
    let proxy = start(&yaml).await;
    let addr = proxy.outbound_addr().unwrap();
    // A silent client (and silent server) becomes opaque after detect_timeout.
    let timeouts = async || {
        let m = admin(&proxy, "/metrics").await.text();
        metric(
            &m,
            r#"octopus_protocol_detect_timeouts_total{listener="outbound"}"#,
        )
    };
    let mut first = TcpStream::connect(addr).await.unwrap();
    assert!(eventually(Duration::from_secs(10), async || timeouts().await == 1.0).await);
    assert_eq!(round_trip(&mut first, "x\n").await, "db:x\n");
    // The cluster allows one connection: a second is closed, counted as refused.
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(b"y\n").await.unwrap();
    assert_eq!(first_bytes(&mut second).await, b"", "closed without a byte");
    // Nothing moves on the first for the idle timeout: octopus closes it.
    assert_eq!(first_bytes(&mut first).await, b"", "closed without a byte");
    let m = admin(&proxy, "/metrics").await.text();
    assert_eq!(
        metric(
            &m,
            r#"octopus_tcp_connections_total{result="refused",route="db"}"#
        ),
        1.0,
        "{m}"
    );
    // The second spoke at once (unless this machine took 50 ms to send it).
    assert!(timeouts().await >= 1.0, "{m}");
    assert!(
        eventually(Duration::from_secs(5), async || {
            let m = admin(&proxy, "/metrics").await.text();
            metric(&m, r#"octopus_tcp_connections{route="db"}"#) == 0.0
        })
        .await
    );
}

#[tokio::test]
async fn opaque_tcp_between_sidecars_is_mtls_wrapped_and_identity_checked() {
    let dir = pki::dir("tcp-mtls");
    let ca = Ca::new("mesh ca");
    let ca_path = ca.write(&dir, "ca.crt");
    let server = ca.issue(&dir, "db", &[DB], false);
    let frontend = ca.issue(&dir, "frontend", &[FRONTEND], false);
    let stranger = ca.issue(
        &dir,
        "stranger",
        &["spiffe://cluster.local/ns/x/sa/y"],
        false,
    );
    // The app behind the server sidecar records every byte it receives, to prove the
    // stream arrived decrypted and unchanged.
    let app = line_server("app", None).await;
    let inbound = start(&mtls_inbound(
        app,
        &server,
        &ca_path,
        &format!("  opaque_ports: [{}]\n", app.port()),
        &format!("    allowed_identities: [\"{FRONTEND}\"]\n"),
    ))
    .await;
    let outbound_for =
        |leaf: &pki::Leaf| mtls_tcp_outbound(inbound.inbound_addr().unwrap(), leaf, &ca_path);
    // A connection that closes before its first byte (a TCP check, or a sidecar that
    // dialled ahead for a server that might speak first) is no failed handshake.
    drop(
        TcpStream::connect(inbound.inbound_addr().unwrap())
            .await
            .unwrap(),
    );
    let outbound = start(&outbound_for(&frontend)).await;
    // A binary protocol's bytes (not HTTP, not TLS) cross both sidecars unchanged.
    let mut s = TcpStream::connect(outbound.outbound_addr().unwrap())
        .await
        .unwrap();
    let msg = "\u{0}\u{1}binary\u{7f}\n";
    assert_eq!(round_trip(&mut s, msg).await, format!("app:{msg}"));
    let im = admin(&inbound, "/metrics").await.text();
    assert_eq!(
        metric(
            &im,
            r#"octopus_tls_handshakes_total{direction="inbound",result="ok"}"#
        ),
        1.0,
        "{im}"
    );
    assert_eq!(
        metric(
            &im,
            r#"octopus_tls_handshakes_total{direction="inbound",result="protocol"}"#
        ),
        0.0,
        "{im}"
    );
    assert_eq!(
        metric(
            &im,
            r#"octopus_tcp_connections_total{result="ok",route="inbound"}"#
        ),
        1.0,
        "{im}"
    );
    let om = admin(&outbound, "/metrics").await.text();
    assert_eq!(
        metric(
            &om,
            r#"octopus_tls_handshakes_total{direction="outbound",result="ok"}"#
        ),
        1.0,
        "{om}"
    );
    drop(s);

    // A sidecar whose identity is not allowed gets its TLS handshake, then nothing:
    // the connection is closed before a byte reaches the app.
    let other = start(&outbound_for(&stranger)).await;
    let mut s = TcpStream::connect(other.outbound_addr().unwrap())
        .await
        .unwrap();
    s.write_all(b"let me in\n").await.unwrap();
    assert_eq!(first_bytes(&mut s).await, b"", "closed without a byte");
    let im = admin(&inbound, "/metrics").await.text();
    assert_eq!(
        metric(
            &im,
            r#"octopus_tcp_connections_total{result="refused",route="inbound"}"#
        ),
        1.0,
        "{im}"
    );

    // An allowed peer cannot use the opaque path to put raw bytes on an HTTP app's port
    // (say, a request with a forged x-octopus-peer-identity behind empty lines that an
    // app's parser skips): only ports the inbound side declares opaque take them.
    let web = Upstream::start("web").await;
    let http_inbound = start(&mtls_inbound(web.addr(), &server, &ca_path, "", "")).await;
    let sneaky = start(&mtls_tcp_outbound(
        http_inbound.inbound_addr().unwrap(),
        &frontend,
        &ca_path,
    ))
    .await;
    let mut s = TcpStream::connect(sneaky.outbound_addr().unwrap())
        .await
        .unwrap();
    let forged = format!(
        "{}GET / HTTP/1.1\r\nhost: web\r\nx-octopus-peer-identity: spiffe://cluster.local/ns/x/sa/admin\r\n\r\n",
        "\r\n".repeat(10)
    );
    s.write_all(forged.as_bytes()).await.unwrap();
    assert_eq!(first_bytes(&mut s).await, b"", "closed without a byte");
    assert_eq!(web.hits(), 0, "raw bytes reached the HTTP app");
    let hm = admin(&http_inbound, "/metrics").await.text();
    assert_eq!(
        metric(
            &hm,
            r#"octopus_tcp_connections_total{result="refused",route="inbound"}"#
        ),
        1.0,
        "{hm}"
    );
}

#[tokio::test]
async fn a_reload_leaves_open_tcp_connections_alone() {
    let a = line_server("a", None).await;
    let b = line_server("b", None).await;
    let yaml = |to: SocketAddr| {
        format!(
            "outbound:
  listen: 127.0.0.1:0
  tcp_routes:
    - {{ name: db, cluster: db }}
clusters:
  db:
    protocol: tcp
    endpoints: [{to}]
"
        )
    };
    let proxy = start(&yaml(a)).await;
    let addr = proxy.outbound_addr().unwrap();
    let mut old = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut old, "1\n").await, "a:1\n");
    proxy.reload(parse(&yaml(b)), None).await.unwrap();
    // The open connection keeps its upstream; new connections follow the new config.
    assert_eq!(round_trip(&mut old, "2\n").await, "a:2\n");
    let mut new = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut new, "3\n").await, "b:3\n");
}

#[tokio::test]
async fn each_tcp_connection_gets_an_access_log_line() {
    let db = line_server("db", None).await;
    let dead = dead_address().await;
    let log = temp_file("tcp-access", "");
    let yaml = format!(
        "outbound:
  listen: 127.0.0.1:0
  access_log: {{ path: {} }}
  tcp_routes:
    - {{ name: db, match: {{ destination: 127.0.0.1/32 }}, cluster: db }}
    - {{ name: gone, cluster: gone }}
clusters:
  db:
    protocol: tcp
    endpoints: [{db}]
  gone:
    protocol: tcp
    endpoints: [{dead}]
",
        log.display()
    );
    let proxy = start(&yaml).await;
    let addr = proxy.outbound_addr().unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut s, "hello\n").await, "db:hello\n");
    drop(s);
    // The same connection over IPv6 loopback matches no destination of `db`: it goes
    // to `gone`, whose endpoint refuses.
    if let Ok(l) = tokio::net::TcpListener::bind("[::1]:0").await {
        drop(l);
        let v6 = start(&yaml.replace("127.0.0.1:0", "\"[::1]:0\"")).await;
        let mut s = TcpStream::connect(v6.outbound_addr().unwrap())
            .await
            .unwrap();
        s.write_all(b"x\n").await.unwrap();
        let _ = first_bytes(&mut s).await;
    }
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(10), async || lines()
            .iter()
            .any(|l| l["result"] == "ok"))
        .await
    );
    let ok = lines().into_iter().find(|l| l["result"] == "ok").unwrap();
    assert_eq!(ok["protocol"], "tcp", "{ok}");
    assert_eq!(ok["direction"], "outbound", "{ok}");
    assert_eq!(ok["route"], "db", "{ok}");
    assert_eq!(ok["cluster"], "db", "{ok}");
    assert_eq!(ok["endpoint"], db.to_string(), "{ok}");
    assert_eq!(ok["destination"], addr.to_string(), "{ok}");
    assert_eq!(ok["bytes_in"], 6, "{ok}");
    assert_eq!(ok["bytes_out"], 9, "{ok}");
    assert!(ok["duration_ms"].as_f64().unwrap() > 0.0, "{ok}");
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        assert!(
            eventually(Duration::from_secs(10), async || lines()
                .iter()
                .any(|l| l["result"] == "connect_failed"))
            .await,
            "{:?}",
            lines()
        );
        let failed = lines()
            .into_iter()
            .find(|l| l["result"] == "connect_failed")
            .unwrap();
        assert_eq!(failed["route"], "gone", "{failed}");
        assert!(
            failed["error"].as_str().unwrap().contains("gone"),
            "{failed}"
        );
    }
}

#[tokio::test]
async fn a_permissive_opaque_port_takes_plain_clients_and_peer_sidecars() {
    let dir = pki::dir("tcp-permissive");
    let ca = Ca::new("mesh ca");
    let ca_path = ca.write(&dir, "ca.crt");
    let server = ca.issue(&dir, "db", &[DB], false);
    let frontend = ca.issue(&dir, "frontend", &[FRONTEND], false);
    // A database that greets first, behind a sidecar moving to mTLS.
    let db = line_server("db", Some("220 db ready\r\n")).await;
    let inbound = start(&mtls_inbound(
        db,
        &server,
        &ca_path,
        &format!("  opaque_ports: [{}]\n", db.port()),
        "    mode: permissive\n",
    ))
    .await;
    // A plain client that waits for the greeting gets it (after the grace in which a
    // peer sidecar's ClientHello would have arrived), then its echo.
    assert_eq!(
        greeting_then_echo(inbound.inbound_addr().unwrap(), "plain\n").await,
        ("220 db ready\r\n".into(), "db:plain\n".into())
    );
    // A peer sidecar on the same port speaks mTLS (its ClientHello comes first).
    let outbound = start(&mtls_tcp_outbound(
        inbound.inbound_addr().unwrap(),
        &frontend,
        &ca_path,
    ))
    .await;
    assert_eq!(
        greeting_then_echo(outbound.outbound_addr().unwrap(), "meshed\n").await,
        ("220 db ready\r\n".into(), "db:meshed\n".into())
    );
    let m = admin(&inbound, "/metrics").await.text();
    assert_eq!(
        metric(&m, r#"octopus_inbound_connections_total{transport="mtls"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"octopus_inbound_connections_total{transport="plaintext"}"#
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn opaque_ports_skip_detection_and_inbound_timeouts_apply() {
    // outbound.opaque_ports: bytes that look like HTTP go raw to the TCP route.
    let db = line_server("db", None).await;
    let yaml = |opaque: &str| {
        format!(
            "outbound:
  listen: 127.0.0.1:0
  opaque_ports: [{opaque}]
  routes:
    - {{ name: web, match: {{ host: web }}, cluster: web }}
  tcp_routes:
    - {{ name: db, cluster: db }}
clusters:
  web:
    endpoints: [{db}]
  db:
    protocol: tcp
    endpoints: [{db}]
"
        )
    };
    let proxy = start(&yaml("1")).await;
    let addr = proxy.outbound_addr().unwrap();
    proxy
        .reload(parse(&yaml(&addr.port().to_string())), None)
        .await
        .unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        round_trip(&mut s, "GET / HTTP/1.1\r\n").await,
        "db:GET / HTTP/1.1\r\n",
        "carried raw, not parsed as HTTP"
    );
    let m = admin(&proxy, "/metrics").await.text();
    assert!(!m.contains("octopus_protocol_detect_seconds_count"), "{m}");

    // inbound.detect_timeout and inbound.tcp_idle_timeout, on a plaintext inbound
    // whose forward_to port is opaque: a silent client becomes TCP after the detection
    // timeout, and an idle connection is closed after the idle timeout.
    let quiet = line_server("quiet", None).await;
    let inbound = start(&format!(
        "inbound:
  listen: 127.0.0.1:0
  forward_to: {quiet}
  opaque_ports: [{}]
  detect_timeout: 100ms
  tcp_idle_timeout: 2s
  tls:
    mode: permissive
    cert: {cert}
    key: {key}
    client_ca: {ca}
",
        quiet.port(),
        cert = pki_leaf().0.display(),
        key = pki_leaf().1.display(),
        ca = pki_leaf().2.display(),
    ))
    .await;
    let mut s = TcpStream::connect(inbound.inbound_addr().unwrap())
        .await
        .unwrap();
    let timeouts = async || {
        let m = admin(&inbound, "/metrics").await.text();
        metric(
            &m,
            r#"octopus_protocol_detect_timeouts_total{listener="inbound"}"#,
        )
    };
    assert!(eventually(Duration::from_secs(10), async || timeouts().await == 1.0).await);
    assert_eq!(round_trip(&mut s, "late\n").await, "quiet:late\n");
    assert_eq!(first_bytes(&mut s).await, b"", "closed once idle");
}

/// A certificate, key and CA for tests that need a TLS listener but no client of it.
fn pki_leaf() -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    static LEAF: std::sync::OnceLock<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> =
        std::sync::OnceLock::new();
    LEAF.get_or_init(|| {
        let dir = pki::dir("tcp-leaf");
        let ca = Ca::new("mesh ca");
        let ca_path = ca.write(&dir, "ca.crt");
        let leaf = ca.issue(&dir, "db", &[DB], false);
        (leaf.cert, leaf.key, ca_path)
    })
    .clone()
}

#[tokio::test]
async fn a_connection_dialled_ahead_for_an_http_client_is_let_go() {
    // A cluster of one connection, and an HTTP client slower than the accept: octopus
    // dials the TCP route ahead while it waits, then the client speaks HTTP. The early
    // connection must be closed then, not held (with the cluster's only slot) for as
    // long as the HTTP client stays connected.
    let db = line_server("db", None).await;
    let web = Upstream::start("web").await;
    let proxy = start(&format!(
        "outbound:
  listen: 127.0.0.1:0
  routes:
    - {{ name: web, match: {{ host: web }}, cluster: web }}
  tcp_routes:
    - {{ name: db, cluster: db }}
clusters:
  web:
    endpoints: [{}]
  db:
    protocol: tcp
    endpoints: [{db}]
    circuit_breaker: {{ max_connections: 1 }}
",
        web.addr()
    ))
    .await;
    let addr = proxy.outbound_addr().unwrap();
    let mut http = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = round_trip(&mut http, "GET / HTTP/1.1\r\nhost: web\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The HTTP connection is still open; the one TCP connection the cluster allows is
    // free for a real TCP client.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut tcp, "x\n").await, "db:x\n");
    drop(http);
}
