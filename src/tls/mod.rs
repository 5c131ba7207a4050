//! TLS: where the certificate path ends and the request path begins.
//!
//! - `resolver` picks a certificate per handshake from an `ArcSwap` snapshot;
//! - `hkdf` gives aws-lc-rs' TLS 1.3 suites an HKDF that reuses each keyed HMAC;
//! - `internal` is the local CA behind `tls = "internal"`;
//! - `files` loads `tls = "files"` certificates and reloads them when they change;
//! - this module builds the rustls `ServerConfig` (aws-lc-rs, TLS 1.2 + 1.3, ALPN h2 and
//!   http/1.1) and turns PEM into the `CertifiedKey` the resolver serves.

pub(crate) mod files;
mod hkdf;
mod internal;
pub(crate) mod resolver;

use crate::config::HostPattern;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

pub use internal::{Issued, LEAF_LIFETIME, LocalCa};
pub use resolver::{CertResolver, SiteCert, SiteId, Snapshot, site_id};

/// Why a certificate could not be used or TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The chain holds no certificate.
    #[error("{what}: no PEM certificate found")]
    NoCertificate {
        /// What was being loaded (a file, a store object).
        what: String,
    },
    /// The PEM does not parse.
    #[error("{what}: cannot parse PEM")]
    Pem {
        /// What was being loaded.
        what: String,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The key is not one rustls can sign with, or not the leaf's.
    #[error("{what}: the private key does not fit the certificate or is not supported")]
    Key {
        /// What was being loaded.
        what: String,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The leaf is not a certificate x509-parser can read.
    #[error("{what}: cannot parse the certificate: {reason}")]
    X509 {
        /// What was being loaded.
        what: String,
        /// The parser's reason.
        reason: String,
    },
    /// A certificate or key file cannot be read.
    #[error("cannot read {path}", path = .path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The local CA could not make a key or certificate.
    #[error("cannot issue a certificate")]
    Issue {
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// rustls refused the server configuration.
    #[error("rustls configuration")]
    Config {
        /// Why.
        #[source]
        source: rustls::Error,
    },
}

/// The one crypto provider of the whole binary: aws-lc-rs' default, its TLS 1.3 suites
/// with an HKDF that keys each secret's HMAC once (see `hkdf`).
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    hkdf::swap_suites(&mut provider.cipher_suites);
    Arc::new(provider)
}

/// The rustls server configuration every HTTPS connection uses.
pub(crate) fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let config_resolver: Arc<dyn rustls::server::ResolvesServerCert> = resolver;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Config { source })?
        .with_no_client_auth()
        .with_cert_resolver(config_resolver);
    // Normal clients never offer acme-tls/1, so listing it last changes nothing for them.
    config.alpn_protocols = vec![
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
        resolver::ACME_TLS_ALPN.to_vec(),
    ];
    // Stateless resumption keeps returning clients cheap (handshake-heavy load).
    config.ticketer =
        rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|source| TlsError::Config { source })?;
    // One ticket per full handshake, not rustls' two: each costs an HKDF, a ticket
    // encryption and a record, and a browser spends one per new connection anyway.
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

/// `shared` with one certificate for every handshake: for a client without SNI whose
/// site was chosen by the address it connected to. Everything else (ALPN, tickets,
/// session cache) stays shared; TLS-ALPN-01 validators, which always send SNI, get
/// nothing from it.
pub(crate) fn fixed_config(
    shared: &Arc<ServerConfig>,
    key: Arc<CertifiedKey>,
) -> Arc<ServerConfig> {
    let mut config = ServerConfig::clone(shared);
    config.cert_resolver = Arc::new(Fixed(key));
    Arc::new(config)
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validator = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == resolver::ACME_TLS_ALPN));
        (!validator).then(|| self.0.clone())
    }
}

/// A certificate chain and key ready to serve, with the leaf's validity.
pub struct Loaded {
    /// The chain and the signing key, as rustls serves them.
    pub key: Arc<CertifiedKey>,
    /// The leaf's notBefore.
    pub not_before: SystemTime,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
}

impl Loaded {
    /// Whether a third or less of the lifetime is left at `now`: the renewal rule for
    /// ACME and internal certificates alike.
    pub fn due(&self, now: SystemTime) -> bool {
        due(self.not_before, self.not_after, now)
    }
}

/// A third or less of the lifetime left (or already expired).
pub(crate) fn due(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> bool {
    let life = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    match not_after.duration_since(now) {
        Ok(left) => left <= life / 3,
        Err(_) => true,
    }
}

/// Parses a PEM chain (leaf first) and a PEM private key. `what` names the source in
/// errors (a path or a store object); key bytes never appear in an error.
pub fn load_pem(what: &str, chain_pem: &[u8], key_pem: &[u8]) -> Result<Loaded, TlsError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: what.to_string(),
            source,
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            what: what.to_string(),
        });
    };
    let (not_before, not_after) = validity(what, leaf)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::Pem {
        what: what.to_string(),
        source,
    })?;
    let certified =
        CertifiedKey::from_der(chain, key, &provider()).map_err(|source| TlsError::Key {
            what: what.to_string(),
            source,
        })?;
    Ok(Loaded {
        key: Arc::new(certified),
        not_before,
        not_after,
    })
}

/// Whether the leaf of `loaded` names `host` among its DNS names (a wildcard name
/// covering one label), or its IP address. Any certificate serves the catch-all.
pub(crate) fn leaf_covers(loaded: &Loaded, host: &HostPattern) -> bool {
    use x509_parser::extensions::GeneralName;
    if *host == HostPattern::Any {
        return true;
    }
    let Some(leaf) = loaded.key.cert.first() else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|name| match name {
        GeneralName::DNSName(dns) => {
            let dns = dns.to_ascii_lowercase();
            match (host, dns.strip_prefix("*.")) {
                (HostPattern::Exact(h), Some(suffix)) => {
                    HostPattern::Wildcard(suffix.to_string()).matches(h)
                }
                (HostPattern::Exact(h), None) => *h == dns,
                (HostPattern::Wildcard(w) | HostPattern::Suffix(w), Some(suffix)) => w == suffix,
                (HostPattern::Wildcard(_) | HostPattern::Suffix(_) | HostPattern::Any, _) => false,
            }
        }
        GeneralName::IPAddress(bytes) => host.ip().is_some_and(|ip| match ip {
            std::net::IpAddr::V4(v4) => bytes[..] == v4.octets(),
            std::net::IpAddr::V6(v6) => bytes[..] == v6.octets(),
        }),
        _ => false,
    })
}

/// The leaf's notBefore and notAfter.
pub(crate) fn validity(what: &str, der: &[u8]) -> Result<(SystemTime, SystemTime), TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::X509 {
        what: what.to_string(),
        reason: e.to_string(),
    })?;
    let v = cert.validity();
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Ok((at(v.not_before.timestamp()), at(v.not_after.timestamp())))
}

/// A self-signed certificate for `names` as PEM: (chain, key) (unit tests).
#[cfg(test)]
pub(crate) fn self_signed_pem(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A self-signed certificate for `names`, loaded as the resolver takes it (unit tests of
/// the resolver and the metrics).
#[cfg(test)]
pub(crate) fn self_signed(names: &[&str]) -> Loaded {
    let (chain, key) = self_signed_pem(names);
    load_pem("test", chain.as_bytes(), key.as_bytes()).unwrap()
}
