//! Connecting to a daemon over mutual TLS, as a partner's till (or the demo, the bench and the
//! tests) would.

use std::path::Path;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Installs ring as the process's rustls provider (idempotent). Call first thing.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// PEM material of one client identity.
#[derive(Debug, Clone)]
pub struct ClientPem {
    /// The CA that signed the server certificate.
    pub ca: String,
    /// The client certificate.
    pub cert: String,
    /// The client key.
    pub key: String,
}

impl ClientPem {
    /// Reads `<dir>/ca.pem`, `<dir>/<name>.pem` and `<dir>/<name>.key`.
    pub fn from_dir(dir: &Path, name: &str) -> std::io::Result<ClientPem> {
        Ok(ClientPem {
            ca: std::fs::read_to_string(dir.join("ca.pem"))?,
            cert: std::fs::read_to_string(dir.join(format!("{name}.pem")))?,
            key: std::fs::read_to_string(dir.join(format!("{name}.key")))?,
        })
    }
}

/// Opens an HTTP/2 channel to `addr` (host:port) presenting `pem`'s certificate. The server is
/// verified as `localhost`.
pub async fn connect(addr: &str, pem: &ClientPem) -> Result<Channel, tonic::transport::Error> {
    install_crypto();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pem.ca))
        .identity(Identity::from_pem(&pem.cert, &pem.key))
        .domain_name("localhost");
    Channel::from_shared(format!("https://{addr}"))
        .expect("host:port makes a URI")
        .tls_config(tls)?
        .tcp_nodelay(true)
        .connect()
        .await
}
