//! The identity a client certificate names, read once per certificate: every call of a
//! connection presents the same leaf, and parsing it (x509) on each call was a tenth of
//! the daemon's CPU on a no-op call.

use coalition_certs::{CertError, Identity, identity_from_der};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Certificates remembered at most; past it the cache starts over (a coalition has a few hundred
/// clients, each with a certificate or two at a time).
const MAX_CERTIFICATES: usize = 4096;

/// Identities by the certificate's DER, with the coalition they were read for.
type Cache = Mutex<HashMap<Vec<u8>, (String, Identity)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// [`identity_from_der`], remembered: the result depends on the certificate's bytes and the
/// coalition alone (its validity and revocation are the TLS handshake's, on each connection).
/// A certificate that names no identity is parsed each time it is shown (refused anyway).
pub fn identity_of(coalition: &str, der: &[u8]) -> Result<Identity, CertError> {
    if let Ok(map) = cache().lock()
        && let Some((c, id)) = map.get(der)
        && c == coalition
    {
        return Ok(id.clone());
    }
    let id = identity_from_der(coalition, der)?;
    if let Ok(mut map) = cache().lock() {
        if map.len() >= MAX_CERTIFICATES {
            map.clear();
        }
        map.insert(der.to_vec(), (coalition.to_string(), id.clone()));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coalition_certs::{Authority, Role};

    #[test]
    fn a_certificate_names_the_same_identity_from_the_cache_and_only_for_its_coalition() {
        let ca = Authority::generate("cache-test").unwrap();
        let who = Identity {
            role: Role::Partner,
            name: "skyways".into(),
        };
        let issued = ca.issue_client("cache-test", &who, 1).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(identity_of("cache-test", &pem.contents).unwrap(), who);
        assert_eq!(identity_of("cache-test", &pem.contents).unwrap(), who);
        // Remembered for one coalition, still refused for another.
        assert!(identity_of("another-coalition", &pem.contents).is_err());
    }
}
