//! mTLS with certificates made in the test: inbound termination and identity checks,
//! outbound origination with server-identity checks, rotation without restart, and a
//! real external client.

use bytes::Bytes;
use http_body_util::Full;
use octopus_tests::pki::{self, Ca, Leaf};
use octopus_tests::*;
use std::path::Path;
use std::time::Duration;

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";

fn inbound_yaml(app: &Upstream, cert: &Path, key: &Path, ca: &Path, allowed: &[&str]) -> String {
    let allowed = if allowed.is_empty() {
        String::new()
    } else {
        format!(
            "    allowed_identities: [{}]\n",
            allowed
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!(
        "inbound:\n  listen: 127.0.0.1:0\n  forward_to: {}\n  tls:\n    cert: {}\n    key: {}\n    client_ca: {}\n{allowed}",
        app.addr(),
        cert.display(),
        key.display(),
        ca.display()
    )
}

struct Setup {
    dir: std::path::PathBuf,
    ca: Ca,
    app: Upstream,
    server: Leaf,
}

async fn setup(tag: &str) -> Setup {
    let dir = pki::dir(tag);
    let ca = Ca::new("mesh ca");
    ca.write(&dir, "ca.crt");
    let server = ca.issue(&dir, "server", &[PAYMENTS, "payments.test"], false);
    Setup {
        dir,
        ca,
        app: Upstream::start("app").await,
        server,
    }
}

fn get_req(host: &str, extra: &[(&str, &str)]) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::get(format!("https://{host}/who"));
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(Full::default()).unwrap()
}

/// An HTTP/1.1 client of the inbound listener that presents `leaf`.
fn h1_client(ca: &Ca, leaf: &Leaf) -> TlsClient {
    TlsClient::new(
        &ca.pem,
        Some((&leaf.cert_pem, &leaf.key_pem)),
        "payments.test",
        &[b"http/1.1"],
    )
}

/// `GET /who` over a new connection of `client`.
async fn get_who(client: &TlsClient, addr: std::net::SocketAddr) -> Reply {
    request_over(
        client.connect(addr).await.unwrap(),
        false,
        get_req("payments.test", &[]),
    )
    .await
    .unwrap()
}

async fn handshakes(proxy: &octopus_proxy::Proxy, direction: &str, result: &str) -> u64 {
    let m = admin(proxy, "/metrics").await.text();
    let needle =
        format!(r#"octopus_tls_handshakes_total{{direction="{direction}",result="{result}"}} "#);
    m.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn good_clients_over_h1_and_h2_reach_the_app_with_their_identity() {
    let s = setup("good").await;
    let client_cert = s.ca.issue(&s.dir, "frontend", &[FRONTEND], false);
    let proxy = start(&inbound_yaml(
        &s.app,
        &s.server.cert,
        &s.server.key,
        &s.dir.join("ca.crt"),
        &[FRONTEND],
    ))
    .await;
    let addr = proxy.inbound_addr().unwrap();
    for (h2, alpn) in [(false, &b"http/1.1"[..]), (true, &b"h2"[..])] {
        let client = TlsClient::new(
            &s.ca.pem,
            Some((&client_cert.cert_pem, &client_cert.key_pem)),
            "payments.test",
            &[alpn],
        );
        let stream = client.connect(addr).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn), "ALPN");
        // A spoofed identity header is replaced by the verified one.
        let r = request_over(
            stream,
            h2,
            get_req(
                "payments.test",
                &[("x-octopus-peer-identity", "spiffe://evil")],
            ),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["headers"]["x-octopus-peer-identity"], FRONTEND);
    }
    assert_eq!(handshakes(&proxy, "inbound", "ok").await, 2);
    let m = admin(&proxy, "/metrics").await.text();
    assert!(m.contains(&format!(
        r#"octopus_tls_cert_expiry_timestamp_seconds{{path="{}"}}"#,
        s.server.cert.display()
    )));
}

#[tokio::test]
async fn bad_clients_are_refused_with_the_right_reason() {
    let s = setup("bad").await;
    let other_ca = Ca::new("other ca");
    let stranger = other_ca.issue(&s.dir, "stranger", &[FRONTEND], false);
    let expired = s.ca.issue(&s.dir, "expired", &[FRONTEND], true);
    let intruder = s.ca.issue(
        &s.dir,
        "intruder",
        &["spiffe://cluster.local/ns/shop/sa/intruder"],
        false,
    );
    let proxy = start(&inbound_yaml(
        &s.app,
        &s.server.cert,
        &s.server.key,
        &s.dir.join("ca.crt"),
        &[FRONTEND],
    ))
    .await;
    let addr = proxy.inbound_addr().unwrap();

    let cases: [(&str, Option<&Leaf>); 3] = [
        ("no_client_cert", None),
        ("unknown_ca", Some(&stranger)),
        ("expired", Some(&expired)),
    ];
    for (reason, cert) in cases {
        let client = TlsClient::new(
            &s.ca.pem,
            cert.map(|c| (c.cert_pem.as_str(), c.key_pem.as_str())),
            "payments.test",
            &[b"http/1.1"],
        );
        let refused = match client.connect(addr).await {
            Err(_) => true,
            Ok(stream) => request_over(stream, false, get_req("payments.test", &[]))
                .await
                .is_err(),
        };
        assert!(refused, "{reason}: the request went through");
        assert!(
            eventually(Duration::from_secs(2), async || handshakes(
                &proxy, "inbound", reason
            )
            .await
                == 1)
            .await,
            "{reason} not counted"
        );
    }
    assert_eq!(s.app.hits(), 0, "no refused client reached the app");

    // A valid certificate for an identity that is not allowed in: 403.
    let r = get_who(&h1_client(&s.ca, &intruder), addr).await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (403, "identity not allowed\n".to_string())
    );
    assert_eq!(handshakes(&proxy, "inbound", "bad_identity").await, 1);
    assert_eq!(s.app.hits(), 0);
}

#[tokio::test]
async fn sidecar_pair_over_mtls_and_identity_mismatch() {
    let s = setup("pair").await;
    let frontend = s.ca.issue(&s.dir, "frontend", &[FRONTEND], false);
    let inbound = start(&inbound_yaml(
        &s.app,
        &s.server.cert,
        &s.server.key,
        &s.dir.join("ca.crt"),
        &[FRONTEND],
    ))
    .await;
    let outbound_yaml = |identity: &str| {
        format!(
            "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - {{ name: r, match: {{ host: payments }}, cluster: payments }}\nclusters:\n  payments:\n    endpoints: [{}]\n    tls:\n      cert: {}\n      key: {}\n      ca: {}\n      server_identity: \"{identity}\"\n",
            inbound.inbound_addr().unwrap(),
            frontend.cert.display(),
            frontend.key.display(),
            s.dir.join("ca.crt").display()
        )
    };
    // client -> outbound octopus -mTLS-> inbound octopus -> app
    let outbound = start(&outbound_yaml(PAYMENTS)).await;
    let r = get(outbound.outbound_addr().unwrap(), "payments", "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-octopus-peer-identity"], FRONTEND);
    assert_eq!(handshakes(&outbound, "outbound", "ok").await, 1);

    // The server proves PAYMENTS, not what this cluster expects: 502, counted.
    let wrong = start(&outbound_yaml("spiffe://cluster.local/ns/shop/sa/billing")).await;
    let r = get(wrong.outbound_addr().unwrap(), "payments", "/").await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (502, "upstream identity mismatch\n".to_string())
    );
    assert_eq!(handshakes(&wrong, "outbound", "bad_identity").await, 1);
}

#[tokio::test]
async fn rotation_keeps_connections_and_rejects_broken_files() {
    let s = setup("rotate").await;
    let frontend = s.ca.issue(&s.dir, "frontend", &[FRONTEND], false);
    let proxy = start(&inbound_yaml(
        &s.app,
        &s.server.cert,
        &s.server.key,
        &s.dir.join("ca.crt"),
        &[],
    ))
    .await;
    let addr = proxy.inbound_addr().unwrap();
    let client = h1_client(&s.ca, &frontend);
    let served_cert = async |c: &TlsClient| {
        let stream = c.connect(addr).await.unwrap();
        let der = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
        octopus_tls::identities(&der)
    };
    assert_eq!(served_cert(&client).await, [PAYMENTS, "payments.test"]);

    // A keep-alive connection opened before the rotation.
    let stream = client.connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    assert_eq!(
        sender
            .send_request(get_req("payments.test", &[]))
            .await
            .unwrap()
            .status(),
        200
    );

    // Rotate: a new certificate with an extra SAN, written over the old files.
    let next = s.ca.issue(
        &s.dir,
        "next",
        &[PAYMENTS, "payments.test", "rotated.test"],
        false,
    );
    std::fs::write(&s.server.cert, &next.cert_pem).unwrap();
    std::fs::write(&s.server.key, &next.key_pem).unwrap();
    assert!(
        eventually(Duration::from_secs(3), async || served_cert(&client)
            .await
            .len()
            == 3)
        .await,
        "new handshakes use the new certificate"
    );
    sender.ready().await.unwrap();
    assert_eq!(
        sender
            .send_request(get_req("payments.test", &[]))
            .await
            .unwrap()
            .status(),
        200,
        "the old connection still works"
    );

    // A corrupt replacement is refused; the current certificate keeps serving.
    std::fs::write(
        &s.server.cert,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(served_cert(&client).await.len(), 3);
    // A key that does not match the certificate is refused too.
    std::fs::write(&s.server.cert, &next.cert_pem).unwrap();
    std::fs::write(&s.server.key, &frontend.key_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(served_cert(&client).await.len(), 3);
}

#[tokio::test]
async fn ca_rotation_through_a_trust_bundle() {
    let s = setup("ca-rotate").await;
    let new_ca = Ca::new("new mesh ca");
    let old_client = s.ca.issue(&s.dir, "old", &[FRONTEND], false);
    let new_client = new_ca.issue(&s.dir, "new", &[FRONTEND], false);
    let bundle = s.dir.join("bundle.crt");
    std::fs::write(&bundle, format!("{}{}", s.ca.pem, new_ca.pem)).unwrap();
    let proxy = start(&inbound_yaml(
        &s.app,
        &s.server.cert,
        &s.server.key,
        &bundle,
        &[],
    ))
    .await;
    let addr = proxy.inbound_addr().unwrap();
    let works = async |leaf: &Leaf| match h1_client(&s.ca, leaf).connect(addr).await {
        Ok(stream) => request_over(stream, false, get_req("payments.test", &[]))
            .await
            .is_ok_and(|r| r.status == 200),
        Err(_) => false,
    };
    assert!(
        works(&old_client).await && works(&new_client).await,
        "both CAs trusted during the overlap"
    );
    std::fs::write(&bundle, &new_ca.pem).unwrap();
    assert!(
        eventually(Duration::from_secs(3), async || !works(&old_client).await).await,
        "the old CA's clients are refused once it leaves the bundle"
    );
    assert!(works(&new_client).await);
}

#[tokio::test]
async fn curl_with_a_client_certificate() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("curl is required (`.ci/run` installs it)");
    }
    let s = setup("curl").await;
    let frontend = s.ca.issue(&s.dir, "frontend", &[FRONTEND], false);
    let proxy = start(&inbound_yaml(
        &s.app,
        &s.server.cert,
        &s.server.key,
        &s.dir.join("ca.crt"),
        &[FRONTEND],
    ))
    .await;
    let port = proxy.inbound_addr().unwrap().port();
    let (ca, cert, key) = (
        s.dir.join("ca.crt"),
        frontend.cert.clone(),
        frontend.key.clone(),
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "--resolve",
                &format!("payments.test:{port}:127.0.0.1"),
            ])
            .arg("--cacert")
            .arg(&ca)
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg(format!("https://payments.test:{port}/from-curl"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        body.contains(FRONTEND) && body.contains("/from-curl"),
        "{body}"
    );
    // And without a client certificate, curl is refused.
    let (ca2, port2) = (s.dir.join("ca.crt"), port);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "--resolve",
                &format!("payments.test:{port2}:127.0.0.1"),
            ])
            .arg("--cacert")
            .arg(&ca2)
            .arg(format!("https://payments.test:{port2}/"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        !out.status.success(),
        "curl without a certificate got through"
    );
}

#[tokio::test]
async fn min_version_1_2_admits_tls12_clients() {
    let s = setup("tls12").await;
    let client_cert = s.ca.issue(&s.dir, "frontend", &[FRONTEND], false);
    let only13 = start(&inbound_yaml(
        &s.app,
        &s.server.cert,
        &s.server.key,
        &s.dir.join("ca.crt"),
        &[],
    ))
    .await;
    let with12 = start(
        &(inbound_yaml(
            &s.app,
            &s.server.cert,
            &s.server.key,
            &s.dir.join("ca.crt"),
            &[],
        ) + "    min_version: \"1.2\"\n"),
    )
    .await;
    let tls12_client = TlsClient::new_with_versions(
        &s.ca.pem,
        Some((&client_cert.cert_pem, &client_cert.key_pem)),
        "payments.test",
        &[&rustls::version::TLS12],
    );
    let works = async |addr| match tls12_client.connect(addr).await {
        Ok(stream) => request_over(stream, false, get_req("payments.test", &[]))
            .await
            .is_ok_and(|r| r.status == 200),
        Err(_) => false,
    };
    assert!(
        !works(only13.inbound_addr().unwrap()).await,
        "TLS 1.2 is refused by default"
    );
    assert!(
        works(with12.inbound_addr().unwrap()).await,
        "min_version 1.2 admits TLS 1.2"
    );
}

#[tokio::test]
async fn permissive_inbound_takes_mtls_and_plain_clients_on_one_port() {
    let s = setup("permissive").await;
    let client_cert = s.ca.issue(&s.dir, "frontend", &[FRONTEND], false);
    let yaml = |mode: &str| {
        format!(
            "{}    mode: {mode}\n",
            inbound_yaml(
                &s.app,
                &s.server.cert,
                &s.server.key,
                &s.dir.join("ca.crt"),
                &[FRONTEND]
            )
        )
    };
    let proxy = start(&yaml("permissive")).await;
    let addr = proxy.inbound_addr().unwrap();
    // An mTLS client: its verified identity reaches the app.
    let r = get_who(&h1_client(&s.ca, &client_cert), addr).await;
    assert_eq!(r.json()["headers"]["x-octopus-peer-identity"], FRONTEND);
    // A plain client on the same port: served, with no identity, and a forged one is
    // stripped.
    for h2 in [false, true] {
        let client = if h2 {
            HttpClient::http2(addr)
        } else {
            HttpClient::http1()
        };
        let r = client
            .get(
                addr,
                "payments",
                "/who",
                &[("x-octopus-peer-identity", FRONTEND)],
            )
            .await;
        assert_eq!(r.status, 200, "h2 {h2}: {}", r.text());
        assert!(
            r.json()["headers"].get("x-octopus-peer-identity").is_none(),
            "{}",
            r.text()
        );
    }
    let m = admin(&proxy, "/metrics").await.text();
    assert!(
        m.contains(r#"octopus_inbound_connections_total{transport="mtls"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"octopus_inbound_connections_total{transport="plaintext"} 2"#),
        "{m}"
    );

    // Strict (the default): the same plain request gets no answer.
    proxy.reload(parse(&yaml("strict")), None).await.unwrap();
    let plain = tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /who HTTP/1.1\r\nhost: payments\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        buf
    })
    .await
    .expect("strict mode closes a plain connection");
    assert!(
        !String::from_utf8_lossy(&plain).contains("200 OK"),
        "{}",
        String::from_utf8_lossy(&plain)
    );
}
