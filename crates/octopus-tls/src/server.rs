//! Inbound TLS termination: TLS 1.3 (1.2 when allowed), ALPN h2 and http/1.1, a client
//! certificate chaining to `client_ca` required, and the identity it proves checked
//! against `allowed_identities`.

use crate::{failure_reason, material, provider, rotate, rustls_error, TlsError};
use arc_swap::ArcSwap;
use octopus_config::InboundTlsConfig;
use octopus_metrics::Metrics;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client gets this long to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ServerTls {
    spec: InboundTlsConfig,
    config: Arc<ArcSwap<ServerConfig>>,
    metrics: Arc<Metrics>,
    rotation: tokio::task::AbortHandle,
}

/// A completed handshake.
pub struct Accepted {
    pub stream: TlsStream<TcpStream>,
    /// The identity the client's certificate proves, if it has a URI or DNS SAN.
    pub identity: Option<String>,
    /// Whether that identity may call the app (always true without an allow-list).
    pub allowed: bool,
    /// The peer sidecar asked for opaque TCP (ALPN `octopus-tcp`): the stream's bytes
    /// go to the app port the connection was made to, not to an HTTP server.
    pub opaque: bool,
}

impl Drop for ServerTls {
    fn drop(&mut self) {
        self.rotation.abort();
    }
}

fn build(spec: &InboundTlsConfig, metrics: &Metrics) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let roots = material::roots(&spec.client_ca)?;
    let (chain, key) = material::keypair(&spec.cert, &spec.key, &provider)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Rustls {
            context: format!("{}: client CA", spec.client_ca),
            source: rustls::Error::General(e.to_string()),
        })?;
    let versions: &[&rustls::SupportedProtocolVersion] = if spec.min_version == "1.2" {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|source| TlsError::Rustls {
            context: "inbound TLS versions".into(),
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key)
        .map_err(|source| TlsError::Rustls {
            context: format!("{}: server certificate", spec.cert),
            source,
        })?;
    config.alpn_protocols = vec![
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
        crate::OPAQUE_ALPN.to_vec(),
    ];
    for (path, chain) in [
        (&spec.cert, Some(chain)),
        (&spec.client_ca, material::certs(&spec.client_ca).ok()),
    ] {
        if let Some(t) = chain.as_deref().and_then(material::not_after) {
            metrics.tls_cert_expiry.with_label_values(&[path]).set(t);
        }
    }
    Ok(config)
}

impl ServerTls {
    /// Loads the material and starts watching its files for rotation.
    pub fn load(spec: &InboundTlsConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, TlsError> {
        let config = Arc::new(ArcSwap::from_pointee(build(spec, &metrics)?));
        let (s, m) = (spec.clone(), metrics.clone());
        let rotation = rotate::rebuild_on_change(
            "inbound",
            vec![spec.cert.clone(), spec.key.clone(), spec.client_ca.clone()],
            config.clone(),
            move || build(&s, &m),
        );
        Ok(Arc::new(ServerTls {
            spec: spec.clone(),
            config,
            metrics,
            rotation,
        }))
    }

    pub fn spec(&self) -> &InboundTlsConfig {
        &self.spec
    }

    /// Runs the handshake; `None` when it failed (counted and logged).
    pub async fn accept(&self, tcp: TcpStream, peer: std::net::SocketAddr) -> Option<Accepted> {
        let acceptor = TlsAcceptor::from(self.config.load_full());
        let count = |result: &str| {
            self.metrics
                .tls_handshakes_total
                .with_label_values(&["inbound", result])
                .inc()
        };
        // A connection closed before its first byte never attempted a handshake: a TCP
        // connect check, or a peer sidecar that dialled ahead for a server that might
        // speak first. Not a handshake failure, so it does not feed TLS alerts.
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        let mut first = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
            tracing::debug!(%peer, "inbound connection closed before a TLS handshake began");
            return None;
        }
        let stream = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let reason = rustls_error(&e).map_or("protocol", failure_reason);
                count(reason);
                tracing::info!(%peer, reason, error = %e, "inbound TLS handshake refused");
                return None;
            }
            Err(_) => {
                count("protocol");
                tracing::info!(%peer, "inbound TLS handshake timed out");
                return None;
            }
        };
        let presented = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(crate::identities)
            .unwrap_or_default();
        // Any SAN on the allow-list admits the client, and that SAN is the identity the
        // app sees; without a list, the first URI SAN (else DNS SAN) is.
        let matched = presented
            .iter()
            .find(|id| self.spec.allowed_identities.iter().any(|a| a == *id));
        let allowed = self.spec.allowed_identities.is_empty() || matched.is_some();
        let identity = matched.or(presented.first()).cloned();
        if allowed {
            count("ok");
        } else {
            count("bad_identity");
            tracing::warn!(%peer, identity = identity.as_deref().unwrap_or("<none>"), "inbound mTLS: identity not allowed; its requests get 403");
        }
        let opaque = stream.get_ref().1.alpn_protocol() == Some(crate::OPAQUE_ALPN);
        Some(Accepted {
            stream,
            identity,
            allowed,
            opaque,
        })
    }
}
