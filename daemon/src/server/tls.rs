//! TLS for the gRPC server, on rustls directly (not tonic's TLS) so that the acceptor can verify
//! client certificates against the coalition's CA and, later, CRLs and reloads.

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// Why the TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Rustls(String),
}

/// The crypto provider of the whole daemon: ring, and only ring.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            message: "no certificate in file".into(),
        });
    }
    Ok(certs)
}

/// The files the TLS configuration is made of.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signs client certificates.
    pub ca: std::path::PathBuf,
    /// The server's certificate chain.
    pub cert: std::path::PathBuf,
    /// The server's key.
    pub key: std::path::PathBuf,
    /// A CRL of that CA, if revocation is checked.
    pub crl: Option<std::path::PathBuf>,
}

/// The TLS configuration in force, reloadable from disk (SIGHUP or the operator API). A reload
/// applies to new connections; established ones keep the configuration they were made with.
pub struct TlsState {
    files: TlsFiles,
    current: std::sync::RwLock<Arc<ServerConfig>>,
}

impl TlsState {
    /// Loads the configuration from `files`.
    pub fn load(files: TlsFiles) -> Result<TlsState, TlsError> {
        let (config, _) = server_config(&files)?;
        Ok(TlsState {
            files,
            current: std::sync::RwLock::new(config),
        })
    }

    /// The files it loads from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().expect("tls lock").clone()
    }

    /// Re-reads the files; on any error the configuration in force stays. Returns the number of
    /// revoked serials on the CRL now in force.
    pub fn reload(&self) -> Result<usize, TlsError> {
        let (config, revoked) = server_config(&self.files)?;
        *self.current.write().expect("tls lock") = config;
        tracing::info!(revoked, "TLS configuration reloaded");
        Ok(revoked)
    }
}

/// Builds the server's TLS configuration: its certificate, client certificates required and
/// verified against the CA (and its CRL, if any), HTTP/2 only. Also returns the CRL's size.
pub fn server_config(files: &TlsFiles) -> Result<(Arc<ServerConfig>, usize), TlsError> {
    let (ca, cert, key) = (&files.ca, &files.cert, &files.key);
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for c in certs(ca)? {
        roots
            .add(c)
            .map_err(|e| TlsError::Rustls(format!("CA certificate {}: {e}", ca.display())))?;
    }
    let mut crls = Vec::new();
    let mut revoked = 0;
    if let Some(path) = &files.crl {
        let pem = read(path)?;
        for crl in rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(&pem) {
            let crl = crl.map_err(|e| TlsError::Pem {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            revoked += coalition_certs::crl_serials(&String::from_utf8_lossy(&pem))
                .map_err(|e| TlsError::Pem {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?
                .len();
            crls.push(crl);
        }
        // A configured CRL that holds none would silently un-revoke everything: refuse it.
        if crls.is_empty() {
            return Err(TlsError::Pem {
                path: path.display().to_string(),
                message: "no X509 CRL in file".into(),
            });
        }
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if !crls.is_empty() {
        builder = builder.with_crls(crls).only_check_end_entity_revocation();
    }
    let verifier = builder
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let key_pem = read(key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert)?, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(config), revoked))
}

/// When the server's certificate and the CA run out, and when the CRL's next update is due (unix
/// seconds), read from the files now: `(name, instant)` for each that can be read.
pub fn expiries(files: &TlsFiles) -> Vec<(&'static str, i64)> {
    use x509_parser::prelude::*;
    let mut out = Vec::new();
    let not_after = |path: &std::path::Path| -> Option<i64> {
        let pem = std::fs::read(path).ok()?;
        let (_, p) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
        let (_, cert) = X509Certificate::from_der(&p.contents).ok()?;
        Some(cert.validity().not_after.timestamp())
    };
    if let Some(t) = not_after(&files.cert) {
        out.push(("server", t));
    }
    if let Some(t) = not_after(&files.ca) {
        out.push(("ca", t));
    }
    if let Some(path) = &files.crl {
        let next = std::fs::read(path).ok().and_then(|pem| {
            let (_, p) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
            let (_, crl) = CertificateRevocationList::from_der(&p.contents).ok()?;
            crl.next_update().map(|t| t.timestamp())
        });
        if let Some(t) = next {
            out.push(("crl_next_update", t));
        }
    }
    out
}

impl crate::services::shared::CertificateReload for TlsState {
    fn reload_certificates(&self) -> Result<usize, String> {
        self.reload().map_err(|e| e.to_string())
    }
}
