//! `octopus cert inspect`: what an operator needs to know about a PEM file.

use crate::{identities, material, TlsError};
use x509_parser::prelude::{FromDer, X509Certificate};

pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    pub expires_in_days: i64,
}

pub fn inspect(path: &str) -> Result<Vec<CertInfo>, TlsError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    material::certs(path)?
        .iter()
        .map(|der| {
            let (_, c) = X509Certificate::from_der(der.as_ref()).map_err(|e| TlsError::Pem {
                path: path.into(),
                reason: e.to_string(),
            })?;
            let v = c.validity();
            Ok(CertInfo {
                subject: c.subject().to_string(),
                issuer: c.issuer().to_string(),
                sans: identities(der),
                not_before: v.not_before.to_string(),
                not_after: v.not_after.to_string(),
                expires_in_days: (v.not_after.timestamp() - now) / 86_400,
            })
        })
        .collect()
}
