//! The local CA behind `tls = "internal"`: a source of certificates on the certificate
//! path for names no public CA will issue for (localhost, IPs, `*.internal`).
//!
//! The root (ECDSA P-256, about ten years) is created once and kept in the store; leaves
//! are short-lived P-256 certificates renewed like ACME ones, when a third of their
//! lifetime is left, so a leaked leaf key is worth little and renewal is exercised daily.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use super::TlsError;
use crate::config::HostPattern;

/// How long a leaf of the local CA lives. A third of it (56 h) before expiry it is
/// renewed. Public so that an embedder (and the tests) can tell a local CA leaf by its
/// lifetime and know when the next renewal is due.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Tolerates clients whose clocks are a little behind.
const BACKDATE: Duration = Duration::from_secs(3600);

/// The local CA of `tls = "internal"`: an ECDSA P-256 root that signs short-lived
/// leaves. Created once and kept in the store, so every replica and restart issues
/// from the same root.
pub struct LocalCa {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa").finish_non_exhaustive()
    }
}

/// A freshly issued leaf: PEM chain (leaf only: the root is what clients trust) and key.
pub struct Issued {
    /// The leaf, PEM.
    pub chain_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
}

fn rcgen_err(source: rcgen::Error) -> TlsError {
    TlsError::Issue { source }
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

impl LocalCa {
    /// A new root, valid from an hour ago for ten years.
    pub fn generate(now: SystemTime) -> Result<LocalCa, TlsError> {
        let key = KeyPair::generate().map_err(rcgen_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "portico");
        dn.push(DnType::CommonName, "portico local CA root");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(now + ROOT_LIFETIME);
        let cert = params.self_signed(&key).map_err(rcgen_err)?;
        let key_pem = key.serialize_pem();
        Ok(LocalCa {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The root as kept in the store.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<LocalCa, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(rcgen_err)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(rcgen_err)?;
        Ok(LocalCa {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    /// The root certificate, PEM: what clients trust (`curl --cacert`).
    pub fn root_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root's private key, for the store only.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A leaf for `hosts` with a fresh P-256 key.
    pub fn issue(&self, hosts: &[HostPattern], now: SystemTime) -> Result<Issued, TlsError> {
        let key = KeyPair::generate().map_err(rcgen_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "portico local CA");
        if let Some(first) = hosts.first() {
            dn.push(DnType::CommonName, first.to_string());
        }
        params.distinguished_name = dn;
        params.subject_alt_names = hosts
            .iter()
            .map(|h| {
                let name = h.to_string();
                match name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                {
                    Ok(ip) => Ok(SanType::IpAddress(ip)),
                    Err(_) => name.try_into().map(SanType::DnsName),
                }
            })
            .collect::<Result<_, _>>()
            .map_err(rcgen_err)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(now + LEAF_LIFETIME);
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_err)?;
        Ok(Issued {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_survives_a_round_trip_and_signs_leaves() {
        let now = SystemTime::now();
        let ca = LocalCa::generate(now).unwrap();
        let again = LocalCa::from_pem(ca.root_pem(), ca.key_pem()).unwrap();
        let hosts = [
            HostPattern::Exact("localhost".into()),
            HostPattern::Wildcard("example.internal".into()),
            HostPattern::Exact("127.0.0.1".into()),
        ];
        let leaf = again.issue(&hosts, now).unwrap();
        let loaded =
            super::super::load_pem("test", leaf.chain_pem.as_bytes(), leaf.key_pem.as_bytes())
                .unwrap();
        assert!(!loaded.due(now));
        assert!(loaded.due(now + LEAF_LIFETIME * 2 / 3 + Duration::from_secs(1)));
        let der = loaded.key.end_entity_cert().unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        use rustls::pki_types::pem::PemObject;
        let root_der =
            rustls::pki_types::CertificateDer::from_pem_slice(ca.root_pem().as_bytes()).unwrap();
        let (_, root) = x509_parser::parse_x509_certificate(&root_der).unwrap();
        assert_eq!(cert.issuer(), root.subject());
        cert.verify_signature(Some(root.public_key())).unwrap();
    }
}
