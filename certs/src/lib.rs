//! Certificates of the coalition: a development CA that issues server and client certificates
//! (rcgen), and the identity read back out of a client certificate (x509-parser).
//!
//! Convention: a client certificate carries exactly one URI SAN
//! `spiffe://<coalition>/<role>/<name>` where role is `partner`, `finance` or `operator`.
//! The subject CN is informational only and never trusted.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, string::Ia5String,
};
use std::fmt;
use time::{Duration, OffsetDateTime};

/// Errors while issuing or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or could not sign.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The certificate is not valid DER X.509.
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
    /// The certificate names no identity of this coalition.
    #[error("certificate names no coalition identity: {0}")]
    NoIdentity(String),
}

/// The role a certificate grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A partner business acting for itself.
    Partner,
    /// The coalition's finance team.
    Finance,
    /// The coalition's on-call operators.
    Operator,
    /// The programme team (tiers, campaigns).
    Programme,
}

impl Role {
    /// The path segment of the role in the SPIFFE URI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Partner => "partner",
            Role::Finance => "finance",
            Role::Operator => "operator",
            Role::Programme => "programme",
        }
    }

    /// Parses a path segment back into a role.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "partner" => Some(Role::Partner),
            "finance" => Some(Role::Finance),
            "operator" => Some(Role::Operator),
            "programme" => Some(Role::Programme),
            _ => None,
        }
    }
}

/// Who a client certificate says it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The role granted.
    pub role: Role,
    /// The partner id, or the name of the finance or operator identity.
    pub name: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role.as_str(), self.name)
    }
}

/// The URI SAN that names `identity` in `coalition`.
pub fn spiffe_uri(coalition: &str, identity: &Identity) -> String {
    format!(
        "spiffe://{coalition}/{}/{}",
        identity.role.as_str(),
        identity.name
    )
}

/// Reads the identity out of a DER client certificate: the one `spiffe://<coalition>/…` URI SAN.
pub fn identity_from_der(coalition: &str, der: &[u8]) -> Result<Identity, CertError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Parse(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::Parse(e.to_string()))?
        .ok_or_else(|| CertError::NoIdentity("no subject alternative name".into()))?;
    let prefix = format!("spiffe://{coalition}/");
    let mut found = None;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && let Some(rest) = uri.strip_prefix(&prefix)
        {
            if found.is_some() {
                return Err(CertError::NoIdentity(
                    "more than one coalition URI SAN".into(),
                ));
            }
            found = Some(rest.to_string());
        }
    }
    let rest =
        found.ok_or_else(|| CertError::NoIdentity(format!("no URI SAN starting with {prefix}")))?;
    let (role, name) = rest
        .split_once('/')
        .ok_or_else(|| CertError::NoIdentity(format!("malformed identity path {rest:?}")))?;
    let role =
        Role::parse(role).ok_or_else(|| CertError::NoIdentity(format!("unknown role {role:?}")))?;
    if name.is_empty() || name.contains('/') {
        return Err(CertError::NoIdentity(format!(
            "malformed identity name {name:?}"
        )));
    }
    Ok(Identity {
        role,
        name: name.to_string(),
    })
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

/// A certificate authority that can issue certificates (the coalition's dev CA, or a test's).
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA private key, PEM.
    pub key_pem: String,
    serial: std::sync::atomic::AtomicU64,
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

impl Authority {
    /// Makes a new self-signed CA named `name`, valid ten years.
    pub fn generate(name: &str) -> Result<Authority, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "coalition");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 3650);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Authority {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
            serial: std::sync::atomic::AtomicU64::new(now_serial_base()),
        })
    }

    /// Loads a CA from its PEM certificate and key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Authority, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Authority {
            issuer,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            serial: std::sync::atomic::AtomicU64::new(now_serial_base()),
        })
    }

    fn next_serial(&self) -> u64 {
        self.serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Issues a server certificate for the given DNS names and IP addresses.
    pub fn issue_server(&self, names: &[&str]) -> Result<Issued, CertError> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("coalitiond"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(self.next_serial().into());
        validity(&mut params, 825);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a client certificate naming `identity` in `coalition`, valid `days` days
    /// (negative `days` make an already expired certificate, for tests).
    pub fn issue_client(
        &self,
        coalition: &str,
        identity: &Identity,
        days: i64,
    ) -> Result<Issued, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, identity.to_string());
        let uri = Ia5String::try_from(spiffe_uri(coalition, identity))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(self.next_serial().into());
        if days >= 0 {
            validity(&mut params, days);
        } else {
            let now = OffsetDateTime::now_utc();
            params.not_before = now + Duration::days(days * 2);
            params.not_after = now + Duration::days(days);
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl Authority {
    /// A CRL, signed by this CA, listing `serials` (big-endian bytes) as revoked; `number` must grow
    /// with every CRL issued. Valid for `days`.
    pub fn crl(&self, serials: &[Vec<u8>], number: u64, days: i64) -> Result<String, CertError> {
        let now = OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(days),
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(s),
                    revocation_time: now - Duration::minutes(5),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

fn pem_der(pem: &str) -> Result<Vec<u8>, CertError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| CertError::Parse(e.to_string()))?;
    Ok(p.contents)
}

/// The serial number of a PEM certificate, big-endian bytes.
pub fn serial_of(cert_pem: &str) -> Result<Vec<u8>, CertError> {
    let der = pem_der(cert_pem)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| CertError::Parse(e.to_string()))?;
    Ok(cert.tbs_certificate.raw_serial().to_vec())
}

/// The revoked serial numbers listed in a PEM CRL.
pub fn crl_serials(crl_pem: &str) -> Result<Vec<Vec<u8>>, CertError> {
    let der = pem_der(crl_pem)?;
    let (_, crl) =
        x509_parser::parse_x509_crl(&der).map_err(|e| CertError::Parse(e.to_string()))?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect())
}

/// Serial numbers start from the current time in microseconds so that two CA loads never reuse one.
fn now_serial_base() -> u64 {
    let now = OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificate_round_trips_its_identity() {
        let ca = Authority::generate("test CA").unwrap();
        let id = Identity {
            role: Role::Partner,
            name: "skyways".into(),
        };
        let issued = ca.issue_client("acme", &id, 30).unwrap();
        let der = pem_to_der(&issued.cert_pem);
        assert_eq!(identity_from_der("acme", &der).unwrap(), id);
        assert!(
            identity_from_der("other", &der).is_err(),
            "another coalition's URI must not match"
        );
    }

    #[test]
    fn crl_lists_what_was_revoked() {
        let ca = Authority::generate("test CA").unwrap();
        let id = Identity {
            role: Role::Partner,
            name: "skyways".into(),
        };
        let issued = ca.issue_client("acme", &id, 30).unwrap();
        let serial = serial_of(&issued.cert_pem).unwrap();
        let crl = ca.crl(std::slice::from_ref(&serial), 1, 30).unwrap();
        assert_eq!(crl_serials(&crl).unwrap(), vec![serial]);
    }

    fn pem_to_der(pem: &str) -> Vec<u8> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        p.contents
    }
}
