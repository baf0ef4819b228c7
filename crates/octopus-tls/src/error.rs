use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not valid PEM: {reason}")]
    Pem { path: String, reason: String },
    #[error("{path}: no certificate in the file")]
    NoCertificate { path: String },
    #[error("{key}: the private key does not match the certificate in {cert}")]
    KeyMismatch { cert: String, key: String },
    #[error("{context}: {source}")]
    Rustls {
        context: String,
        source: rustls::Error,
    },
}

/// The upstream presented a valid certificate for another identity.
#[derive(Debug, Clone)]
pub struct IdentityMismatch {
    pub expected: String,
    pub presented: Vec<String>,
}

impl fmt::Display for IdentityMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "upstream identity mismatch: expected `{}`, certificate has {:?}",
            self.expected, self.presented
        )
    }
}

impl std::error::Error for IdentityMismatch {}
