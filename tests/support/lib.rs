//! Shared helpers for the end-to-end tests: start octopus in-process from YAML text on
//! ephemeral loopback ports, and talk to it over HTTP/1.1 or h2c.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use octopus_metrics::Metrics;
use octopus_proxy::Proxy;
use std::net::SocketAddr;
use std::sync::Arc;

pub use octopus_testkit::{
    closing_server, dead_address, resetting_server, KeepAlive, KeepAliveServer, Protocols, Upstream,
};

pub mod chaos;

/// Parses and validates control-file text like a real file. Unless the text sets
/// `admin:`, the admin listener goes on an ephemeral port so tests can run in parallel.
pub fn parse(yaml: &str) -> octopus_config::Config {
    let mut config = octopus_config::load_str(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"));
    if !yaml.contains("admin:") {
        config.admin.listen = "127.0.0.1:0".parse().unwrap();
    }
    config
}

/// Starts octopus from control-file text (see [`parse`]).
pub async fn start(yaml: &str) -> Proxy {
    Proxy::start(parse(yaml), None, Metrics::new())
        .await
        .expect("octopus starts")
}

/// A cluster block with the given endpoints, for building test configs.
pub fn cluster(name: &str, protocol: &str, endpoints: &[SocketAddr]) -> String {
    let eps: Vec<String> = endpoints.iter().map(|a| a.to_string()).collect();
    format!(
        "  {name}:\n    protocol: {protocol}\n    endpoints: [{}]\n",
        eps.join(", ")
    )
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The demo upstream's JSON description of the request it received.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn upstream(&self) -> String {
        self.headers
            .get("x-upstream")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

/// HTTP/1.1 through a keep-alive pool (the `Host` header names the service), or h2c
/// prior knowledge over one multiplexed connection (`:authority` names it).
#[derive(Clone)]
pub enum HttpClient {
    Http1(Box<Client<HttpConnector, Full<Bytes>>>),
    Http2(
        SocketAddr,
        Arc<tokio::sync::OnceCell<SendRequest<Full<Bytes>>>>,
    ),
}

impl HttpClient {
    pub fn http1() -> Self {
        HttpClient::Http1(Box::new(Client::builder(TokioExecutor::new()).build_http()))
    }

    /// An h2c client that dials `addr` whatever authority its requests carry.
    pub fn http2(addr: SocketAddr) -> Self {
        HttpClient::Http2(addr, Arc::new(tokio::sync::OnceCell::new()))
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        let resp = match self {
            HttpClient::Http1(c) => c.request(req).await.expect("request reaches octopus"),
            HttpClient::Http2(addr, cell) => {
                let sender = cell
                    .get_or_init(|| async {
                        let io = TokioIo::new(
                            tokio::net::TcpStream::connect(*addr)
                                .await
                                .expect("connect"),
                        );
                        let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                            .await
                            .expect("h2 handshake");
                        tokio::spawn(conn);
                        sender
                    })
                    .await;
                sender
                    .clone()
                    .send_request(req)
                    .await
                    .expect("request reaches octopus")
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// GET `path` from service `host` through octopus at `addr`.
    pub async fn get(
        &self,
        addr: SocketAddr,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut b = match self {
            HttpClient::Http1(_) => {
                Request::get(format!("http://{addr}{path}")).header("host", host)
            }
            HttpClient::Http2(..) => Request::get(format!("http://{host}{path}")),
        };
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(Full::default()).unwrap()).await
    }
}

pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    HttpClient::http1().get(addr, host, path, &[]).await
}

/// GET on the admin port.
pub async fn admin(proxy: &Proxy, path: &str) -> Reply {
    get(proxy.admin_addr(), "admin", path).await
}

/// A request body fed chunk by chunk from the test, to prove bodies stream through
/// octopus rather than being collected first.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// A DNS resolver whose answers the test sets: `None` makes the lookup fail.
#[derive(Default)]
pub struct FakeResolver {
    answers: std::sync::Mutex<std::collections::HashMap<String, Option<Vec<std::net::IpAddr>>>>,
}

impl FakeResolver {
    pub fn set(&self, host: &str, answer: Option<Vec<std::net::IpAddr>>) {
        self.answers
            .lock()
            .unwrap()
            .insert(host.to_string(), answer);
    }
}

impl octopus_proxy::cluster::Resolve for FakeResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>,
    > {
        let answer = self.answers.lock().unwrap().get(host).cloned().flatten();
        Box::pin(async move {
            answer
                .map(|ips| {
                    ips.into_iter()
                        .map(|ip| SocketAddr::new(ip, port))
                        .collect()
                })
                .ok_or_else(|| std::io::Error::other(format!("no answer for {host}")))
        })
    }
}

/// Starts octopus with a test-controlled DNS resolver.
pub async fn start_with_resolver(yaml: &str, resolver: Arc<FakeResolver>) -> Proxy {
    Proxy::start_with_resolver(parse(yaml), None, None, Metrics::new(), resolver)
        .await
        .expect("octopus starts")
}

/// Calls `f` every 20 ms until it returns true or `limit` passes; returns whether it did.
pub async fn eventually(limit: std::time::Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Opens an upgraded (WebSocket-style) connection through octopus; the test upstream
/// echoes raw bytes on it.
pub async fn upgraded(addr: SocketAddr, host: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "GET /chat HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write handshake");
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.expect("read handshake"),
            1,
            "closed during handshake"
        );
        got.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 101"), "{text}");
    s
}

/// Sends `msg` on an upgraded connection and checks it comes back.
pub async fn echo_round_trip(s: &mut tokio::net::TcpStream, msg: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(msg)
        .await
        .expect("write on upgraded connection");
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("echo arrives in time")
        .expect("upgraded connection still open");
    assert_eq!(buf, msg);
}

/// Writes `text` to a fresh file under the temp dir and returns its path.
pub fn temp_file(tag: &str, text: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let p = std::env::temp_dir().join(format!("octopus-{tag}-{}-{nanos}.yaml", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

/// Client tasks sending GETs in a loop until stopped; each records (start, status,
/// upstream).
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(tokio::time::Instant, u16, String)>>>,
}

impl Load {
    pub fn start(addr: SocketAddr, host: &'static str, clients: usize) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let client = HttpClient::http1();
                    let mut seen = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let started = tokio::time::Instant::now();
                        let r = client.get(addr, host, "/", &[]).await;
                        seen.push((started, r.status.as_u16(), r.upstream()));
                    }
                    seen
                })
            })
            .collect();
        Load { stop, tasks }
    }

    pub async fn finish(self) -> Vec<(tokio::time::Instant, u16, String)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap());
        }
        all
    }
}

/// Test certificates made with rcgen, written to a temp directory as PEM files.
pub mod pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    use std::path::{Path, PathBuf};

    pub struct Ca {
        pub name: String,
        params: CertificateParams,
        key: KeyPair,
        pub pem: String,
    }

    /// A certificate and key in PEM, with where they were written.
    pub struct Leaf {
        pub cert_pem: String,
        pub key_pem: String,
        pub cert: PathBuf,
        pub key: PathBuf,
    }

    pub fn dir(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let d =
            std::env::temp_dir().join(format!("octopus-pki-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    impl Ca {
        pub fn new(name: &str) -> Ca {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let pem = params.self_signed(&key).unwrap().pem();
            Ca {
                name: name.into(),
                params,
                key,
                pem,
            }
        }

        /// Writes the CA certificate to `dir/<file>`.
        pub fn write(&self, dir: &Path, file: &str) -> PathBuf {
            let p = dir.join(file);
            std::fs::write(&p, &self.pem).unwrap();
            p
        }

        /// Issues a certificate for `identities` (`spiffe://...` become URI SANs, the
        /// rest DNS SANs), valid now unless `expired`.
        pub fn issue(&self, dir: &Path, file: &str, identities: &[&str], expired: bool) -> Leaf {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(
                DnType::CommonName,
                identities.first().copied().unwrap_or("leaf"),
            );
            for id in identities {
                let san = if id.contains("://") {
                    SanType::URI(id.to_string().try_into().unwrap())
                } else {
                    SanType::DnsName(id.to_string().try_into().unwrap())
                };
                params.subject_alt_names.push(san);
            }
            if expired {
                params.not_before = rcgen::date_time_ymd(2000, 1, 1);
                params.not_after = rcgen::date_time_ymd(2001, 1, 1);
            }
            let issuer = Issuer::from_params(&self.params, &self.key);
            let cert_pem = params.signed_by(&key, &issuer).unwrap().pem();
            let key_pem = key.serialize_pem();
            let cert = dir.join(format!("{file}.crt"));
            let keyp = dir.join(format!("{file}.key"));
            std::fs::write(&cert, &cert_pem).unwrap();
            std::fs::write(&keyp, &key_pem).unwrap();
            Leaf {
                cert_pem,
                key_pem,
                cert,
                key: keyp,
            }
        }
    }
}

/// An HTTPS client with an optional client certificate, trusting `ca_pem`, that dials
/// `addr` and verifies the server as `server_name`.
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    server_name: String,
}

impl TlsClient {
    pub fn new(
        ca_pem: &str,
        client: Option<(&str, &str)>,
        server_name: &str,
        alpn: &[&[u8]],
    ) -> TlsClient {
        Self::build(ca_pem, client, server_name, alpn, rustls::DEFAULT_VERSIONS)
    }

    /// As [`TlsClient::new`] (HTTP/1.1), limited to the given TLS versions.
    pub fn new_with_versions(
        ca_pem: &str,
        client: Option<(&str, &str)>,
        server_name: &str,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> TlsClient {
        Self::build(ca_pem, client, server_name, &[b"http/1.1"], versions)
    }

    fn build(
        ca_pem: &str,
        client: Option<(&str, &str)>,
        server_name: &str,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> TlsClient {
        use rustls::pki_types::pem::PemObject;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client {
            Some((cert, key)) => {
                let chain: Vec<_> =
                    rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                        .map(|c| c.unwrap())
                        .collect();
                let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsClient {
            config: Arc::new(config),
            server_name: server_name.into(),
        }
    }

    /// Connects and completes the handshake (errors are the handshake's).
    pub async fn connect(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from(self.server_name.clone()).unwrap();
        let mut s = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await?;
        // TLS 1.3 client certificates are checked after the client's Finished: a
        // refusal arrives with the first read, so probe with a tiny exchange.
        use tokio::io::AsyncWriteExt;
        s.flush().await?;
        Ok(s)
    }
}

/// Sends one request over an established HTTP/1.1 or HTTP/2 (per ALPN) connection.
pub async fn request_over<S>(
    stream: S,
    h2: bool,
    req: http::Request<Full<Bytes>>,
) -> Result<Reply, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let resp = if h2 {
        let (mut s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        s.send_request(req).await?
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        s.send_request(req).await?
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}
