//! Octopus mTLS (rustls with the ring provider): loading certificates and keys,
//! terminating inbound TLS with client-certificate identity checks, originating TLS to
//! upstream clusters with server-identity checks, and picking up rotated files without
//! a restart.
//!
//! Identities are a certificate's URI SANs (SPIFFE IDs) or DNS SANs. Peers are always
//! verified against the configured CA; the identity check is separate from the address
//! dialled, so a pod IP needs no place in a certificate.
#![forbid(unsafe_code)]

mod client;
mod error;
mod identity;
pub mod inspect;
mod material;
mod rotate;
mod server;

pub use client::{is_identity_mismatch, ClientTls};
pub use error::{IdentityMismatch, TlsError};
pub use identity::{identities, peer_identity};
pub use server::{Accepted, ServerTls};

use std::sync::Arc;

/// The ALPN protocol of opaque TCP between sidecars: the client sidecar wraps a
/// non-HTTP stream in mTLS and names this, so the server sidecar splices the stream to
/// the app instead of parsing HTTP.
pub const OPAQUE_ALPN: &[u8] = b"octopus-tcp";

/// The one crypto provider octopus uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A bounded label for `octopus_tls_handshakes_total{result}`.
pub fn failure_reason(err: &rustls::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    match err {
        E::NoCertificatesPresented => "no_client_cert",
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => "unknown_ca",
        E::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => "expired",
        E::InvalidCertificate(C::Other(o)) if o.0.downcast_ref::<IdentityMismatch>().is_some() => {
            "bad_identity"
        }
        E::AlertReceived(rustls::AlertDescription::UnknownCA) => "unknown_ca",
        E::AlertReceived(rustls::AlertDescription::CertificateExpired) => "expired",
        E::AlertReceived(rustls::AlertDescription::CertificateRequired) => "no_client_cert",
        _ => "protocol",
    }
}

/// The rustls error inside an I/O error from a handshake, if any.
pub fn rustls_error(err: &std::io::Error) -> Option<&rustls::Error> {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
}
