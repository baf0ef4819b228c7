//! Reading PEM files into rustls types, with errors that name the file.

use crate::error::TlsError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;
use x509_parser::prelude::{FromDer, X509Certificate};

pub(crate) fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    std::fs::metadata(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })?;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            path: path.into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.into() });
    }
    Ok(certs)
}

pub(crate) fn key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    std::fs::metadata(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        path: path.into(),
        reason: e.to_string(),
    })
}

pub(crate) fn roots(path: &str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store.add(c).map_err(|source| TlsError::Rustls {
            context: format!("{path}: unusable CA certificate"),
            source,
        })?;
    }
    Ok(store)
}

/// A certificate chain and its key, checked to belong together.
pub(crate) fn keypair(
    cert_path: &str,
    key_path: &str,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = certs(cert_path)?;
    let key = key(key_path)?;
    match rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), provider) {
        Ok(_) => Ok((chain, key)),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
            cert: cert_path.into(),
            key: key_path.into(),
        }),
        Err(source) => Err(TlsError::Rustls {
            context: format!("{key_path}: unusable private key"),
            source,
        }),
    }
}

/// Unix time when the first certificate of `chain` expires.
pub(crate) fn not_after(chain: &[CertificateDer<'_>]) -> Option<i64> {
    let (_, cert) = X509Certificate::from_der(chain.first()?.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}
