//! Identities in certificates: URI SANs (SPIFFE IDs) first, then DNS SANs.

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Every URI and DNS SAN of a certificate, URIs first.
pub fn identities(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::URI(u) => uris.push(u.to_string()),
            GeneralName::DNSName(d) => dns.push(d.to_ascii_lowercase()),
            _ => {}
        }
    }
    uris.extend(dns);
    uris
}

/// The identity a peer's end-entity certificate proves: its first URI SAN, else its
/// first DNS SAN.
pub fn peer_identity(chain: &[CertificateDer<'_>]) -> Option<String> {
    chain.first().and_then(|c| identities(c).into_iter().next())
}
