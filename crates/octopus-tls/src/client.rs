//! Outbound TLS origination: a client certificate for octopus' own identity, and a
//! server certificate that must chain to the cluster's `ca` and carry
//! `server_identity` as a URI or DNS SAN, whatever address was dialled.

use crate::error::IdentityMismatch;
use crate::{failure_reason, material, provider, rotate, rustls_error, TlsError};
use arc_swap::ArcSwap;
use octopus_config::{ClusterTlsConfig, Protocol};
use octopus_metrics::Metrics;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub struct ClientTls {
    spec: ClusterTlsConfig,
    config: Arc<ArcSwap<ClientConfig>>,
    metrics: Arc<Metrics>,
    rotation: tokio::task::AbortHandle,
}

impl Drop for ClientTls {
    fn drop(&mut self) {
        self.rotation.abort();
    }
}

/// Chain verification by webpki, identity by SAN: the standard verifier checks names
/// as DNS names of the dialled host, which neither SPIFFE IDs nor pod IPs fit.
#[derive(Debug)]
struct IdentityVerifier {
    chain: Arc<WebPkiServerVerifier>,
    identity: String,
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The chain is verified before the name: a name error means the chain is good.
        let placeholder = ServerName::try_from("identity.octopus.invalid")
            .map_err(|_| rustls::Error::General("server name".into()))?;
        match self
            .chain
            .verify_server_cert(end_entity, intermediates, &placeholder, ocsp, now)
        {
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        let presented = crate::identities(end_entity);
        if presented.iter().any(|id| id == &self.identity) {
            Ok(ServerCertVerified::assertion())
        } else {
            let mismatch = IdentityMismatch {
                expected: self.identity.clone(),
                presented,
            };
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(mismatch)),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

fn build(
    spec: &ClusterTlsConfig,
    protocol: Protocol,
    metrics: &Metrics,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let roots = material::roots(&spec.ca)?;
    let (chain, key) = material::keypair(&spec.cert, &spec.key, &provider)?;
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Rustls {
            context: format!("{}: CA", spec.ca),
            source: rustls::Error::General(e.to_string()),
        })?;
    let verifier = IdentityVerifier {
        chain: webpki,
        identity: spec.server_identity.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            context: "outbound TLS versions".into(),
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain.clone(), key)
        .map_err(|source| TlsError::Rustls {
            context: format!("{}: client certificate", spec.cert),
            source,
        })?;
    // ALPN tells the peer's sidecar what the stream carries: HTTP it serves itself, or
    // opaque TCP it hands to the app port the connection was made to.
    config.alpn_protocols = vec![match protocol {
        Protocol::Http1 => b"http/1.1".to_vec(),
        Protocol::Http2 => b"h2".to_vec(),
        Protocol::Tcp => crate::OPAQUE_ALPN.to_vec(),
    }];
    if let Some(t) = material::not_after(&chain) {
        metrics
            .tls_cert_expiry
            .with_label_values(&[&spec.cert])
            .set(t);
    }
    Ok(config)
}

impl ClientTls {
    /// Loads the material (ALPN offers what `protocol` carries) and watches it for
    /// rotation.
    pub fn load(
        spec: &ClusterTlsConfig,
        protocol: Protocol,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, TlsError> {
        let config = Arc::new(ArcSwap::from_pointee(build(spec, protocol, &metrics)?));
        let (s, m) = (spec.clone(), metrics.clone());
        let rotation = rotate::rebuild_on_change(
            "outbound",
            vec![spec.cert.clone(), spec.key.clone(), spec.ca.clone()],
            config.clone(),
            move || build(&s, protocol, &m),
        );
        Ok(Arc::new(ClientTls {
            spec: spec.clone(),
            config,
            metrics,
            rotation,
        }))
    }

    pub fn spec(&self) -> &ClusterTlsConfig {
        &self.spec
    }

    /// Runs the client handshake on a connected socket.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        tcp: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        // SNI carries the identity when it is a DNS name; otherwise none is sent.
        let name = match ServerName::try_from(self.spec.server_identity.clone()) {
            Ok(n @ ServerName::DnsName(_)) => n,
            _ => ServerName::IpAddress(addr.ip().into()),
        };
        let result = TlsConnector::from(self.config.load_full())
            .connect(name, tcp)
            .await;
        let reason = match &result {
            Ok(_) => "ok",
            Err(e) => rustls_error(e).map_or("protocol", failure_reason),
        };
        self.metrics
            .tls_handshakes_total
            .with_label_values(&["outbound", reason])
            .inc();
        result
    }
}

/// Whether a connect error is an identity mismatch (for the 502 reason).
pub fn is_identity_mismatch(e: &std::io::Error) -> bool {
    matches!(
        rustls_error(e),
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(o))) if o.0.downcast_ref::<IdentityMismatch>().is_some()
    )
}
