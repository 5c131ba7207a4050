//! One issuance: a new order for all of a site's names, one challenge per name answered
//! through portico's own listeners, a CSR with a fresh P-256 key, the chain back.
//!
//! - HTTP-01: the key authorization is published through [`Challenges`]: memory for the
//!   port-80 listener, and the store, so any replica can answer.
//! - TLS-ALPN-01: a self-signed certificate with the `acmeIdentifier` extension goes into
//!   the resolver's challenge map, served only to `acme-tls/1` handshakes.
//!
//! A host that is an IP address is ordered as an RFC 8738 `ip` identifier (a CA refuses
//! an address sent as a `dns` one) and lands in the CSR as an `iPAddress` name. Its
//! TLS-ALPN-01 validator sends the reverse-DNS name as SNI (`4.3.2.1.in-addr.arpa`),
//! so that is the key of its challenge certificate; the certificate itself names the
//! address (RFC 8738 section 6).
//!
//! The order asks for `acme.profile` when one is set, after checking that the directory
//! lists it ([`check_profile`]), so a misspelt profile is reported with the names the CA
//! offers instead of the CA's bare refusal.
//! Whatever happens, the challenge responses are removed before returning.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, Identifier, NewOrder,
    OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::AcmeError;
use super::challenges::Challenges;
use crate::config;
use crate::tls::CertResolver;

/// Where challenge responses go.
pub(super) struct Responders<'a> {
    pub challenges: &'a Challenges,
    pub resolver: &'a CertResolver,
}

/// A chain and its key, PEM.
pub(super) struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// What one order asks the CA for.
pub(crate) struct Request<'a> {
    /// The site's names: host names and IP addresses.
    pub(crate) names: &'a [String],
    /// How the CA is to validate each identifier.
    pub(crate) challenge: config::ChallengeType,
    /// `acme.profile`; checked with [`check_profile`] first.
    pub(crate) profile: Option<&'a str>,
    /// The certificate this one replaces (ARI).
    pub(crate) replaces: Option<CertificateIdentifier<'static>>,
}

/// Runs one order to the end.
pub(super) async fn issue(
    account: &Account,
    request: &Request<'_>,
    responders: &Responders<'_>,
) -> Result<Issued, AcmeError> {
    let mut answered = Answered::default();
    let result = run(account, request, responders, &mut answered).await;
    answered.clean(responders).await;
    result
}

/// Whether the CA's directory (as `account` read it) lists `profile` in
/// `meta.profiles`; the error names the profiles it does list.
pub(crate) fn check_profile(
    account: &Account,
    directory: &str,
    profile: Option<&str>,
) -> Result<(), AcmeError> {
    let Some(profile) = profile else {
        return Ok(());
    };
    let mut offered: Vec<String> = account.profiles().map(|p| p.name.to_string()).collect();
    if offered.iter().any(|p| p == profile) {
        return Ok(());
    }
    offered.sort();
    Err(AcmeError::UnknownProfile {
        profile: profile.to_string(),
        directory: directory.to_string(),
        offered,
    })
}

/// The ACME identifier of a site name: an IP address as an `ip` identifier (RFC 8738),
/// anything else as a `dns` one.
pub(crate) fn identifier(name: &str) -> Identifier {
    match name.parse::<IpAddr>() {
        Ok(ip) => Identifier::Ip(ip),
        Err(_) => Identifier::Dns(name.to_string()),
    }
}

/// The SNI a TLS-ALPN-01 validator sends for `identifier`, as the resolver sees it
/// (lowercase, no final dot): the name itself, or for an address its reverse-DNS name
/// (RFC 8738 section 6): `4.3.2.1.in-addr.arpa` for 1.2.3.4, the nibbles under
/// `ip6.arpa` for IPv6.
pub(crate) fn alpn_server_name(identifier: &Identifier) -> Option<String> {
    match identifier {
        Identifier::Dns(name) => Some(name.trim_end_matches('.').to_ascii_lowercase()),
        Identifier::Ip(IpAddr::V4(ip)) => {
            let [a, b, c, d] = ip.octets();
            Some(format!("{d}.{c}.{b}.{a}.in-addr.arpa"))
        }
        Identifier::Ip(IpAddr::V6(ip)) => {
            let mut name = String::with_capacity(72);
            for byte in ip.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0x0f, byte >> 4));
            }
            name.push_str("ip6.arpa");
            Some(name)
        }
        _ => None,
    }
}

/// Challenge responses put up so far, to take down afterwards.
#[derive(Default)]
struct Answered {
    tokens: Vec<String>,
    alpn_names: Vec<String>,
}

impl Answered {
    async fn clean(self, responders: &Responders<'_>) {
        for token in &self.tokens {
            responders.challenges.withdraw(token).await;
        }
        for name in &self.alpn_names {
            responders.resolver.remove_alpn_challenge(name);
        }
    }
}

async fn run(
    account: &Account,
    request: &Request<'_>,
    responders: &Responders<'_>,
    answered: &mut Answered,
) -> Result<Issued, AcmeError> {
    let (names, kind) = (request.names, request.challenge);
    let identifiers: Vec<Identifier> = names.iter().map(|n| identifier(n)).collect();
    let mut new_order = NewOrder::new(&identifiers);
    if let Some(replaces) = &request.replaces {
        new_order = new_order.replaces(replaces.clone());
    }
    if let Some(profile) = request.profile {
        new_order = new_order.profile(profile);
    }
    let mut order = account.new_order(&new_order).await?;
    let challenge_type = match kind {
        config::ChallengeType::Http01 => ChallengeType::Http01,
        config::ChallengeType::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };

    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            // Reused from an earlier order of this account.
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(AcmeError::Invalid {
                    name: authorization.identifier().to_string(),
                    problem: format!("authorization is {other:?}"),
                });
            }
        }
        let name = authorization.identifier().to_string();
        let server_name = alpn_server_name(authorization.identifier().identifier);
        let mut challenge = authorization
            .challenge(challenge_type.clone())
            .ok_or_else(|| AcmeError::NoChallenge {
                kind: kind_name(kind),
                name: name.clone(),
            })?;
        let key_authorization = challenge.key_authorization();
        match kind {
            config::ChallengeType::Http01 => {
                let token = challenge.token.clone();
                answered.tokens.push(token.clone());
                responders
                    .challenges
                    .publish(&token, key_authorization.as_str())
                    .await?;
            }
            config::ChallengeType::TlsAlpn01 => {
                let server_name = server_name.ok_or_else(|| AcmeError::NoChallenge {
                    kind: kind_name(kind),
                    name: name.clone(),
                })?;
                // The certificate names the identifier (an address as an iPAddress
                // name); the map is keyed by what the validator sends as SNI.
                let cert = alpn_certificate(&name, key_authorization.digest().as_ref())?;
                responders
                    .resolver
                    .set_alpn_challenge(&server_name, Arc::new(cert));
                answered.alpn_names.push(server_name);
            }
        }
        challenge.set_ready().await?;
    }

    // Start polling quickly (a CA on the same network validates in milliseconds) and
    // back off fast; a Retry-After from the CA takes precedence inside instant-acme.
    let polling = RetryPolicy::new()
        .initial_delay(Duration::from_millis(15))
        .backoff(2.0)
        .timeout(Duration::from_secs(90));
    match order.poll_ready(&polling).await? {
        OrderStatus::Ready => {}
        OrderStatus::Invalid => return Err(why_invalid(&mut order).await),
        other => return Err(AcmeError::OrderStatus(other)),
    }

    let key = KeyPair::generate().map_err(AcmeError::Key)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(AcmeError::Key)?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(AcmeError::Key)?;
    order.finalize_csr(csr.der()).await?;
    let chain_pem = order.poll_certificate(&polling).await?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

fn kind_name(kind: config::ChallengeType) -> &'static str {
    match kind {
        config::ChallengeType::Http01 => "http-01",
        config::ChallengeType::TlsAlpn01 => "tls-alpn-01",
    }
}

/// The first failed challenge's problem, which says what the CA saw.
async fn why_invalid(order: &mut instant_acme::Order) -> AcmeError {
    let mut authorizations = order.authorizations();
    while let Some(Ok(authorization)) = authorizations.next().await {
        if let Some(problem) = authorization
            .challenges
            .iter()
            .find_map(|c| c.error.clone())
        {
            return AcmeError::Invalid {
                name: authorization.identifier().to_string(),
                problem: super::describe(&AcmeError::Ca {
                    source: instant_acme::Error::Api(problem),
                    retry_after: None,
                }),
            };
        }
    }
    AcmeError::OrderStatus(OrderStatus::Invalid)
}

/// The RFC 8737 validation certificate for `name` (a host name, or an IP address, which
/// rcgen writes as an iPAddress name as RFC 8738 wants).
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<CertifiedKey, AcmeError> {
    let key = KeyPair::generate().map_err(AcmeError::Key)?;
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(AcmeError::Key)?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(AcmeError::Key)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not CertifiedKey::from_der: its key check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension that RFC 8737 requires.
    let signing_key = crate::tls::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|source| {
            AcmeError::Certificate(crate::tls::TlsError::Key {
                what: format!("tls-alpn-01 certificate for {name}"),
                source,
            })
        })?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_ip_identifiers_with_reverse_dns_server_names() {
        assert_eq!(
            identifier("example.com"),
            Identifier::Dns("example.com".into())
        );
        let v4 = identifier("127.0.0.1");
        assert_eq!(v4, Identifier::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(
            alpn_server_name(&v4).as_deref(),
            Some("1.0.0.127.in-addr.arpa")
        );
        assert_eq!(
            alpn_server_name(&identifier("1.2.3.4")).as_deref(),
            Some("4.3.2.1.in-addr.arpa")
        );
        // RFC 3596 section 2.5's example, lowercased.
        let v6 = identifier("4321:0:1:2:3:4:567:89ab");
        assert!(matches!(v6, Identifier::Ip(IpAddr::V6(_))));
        assert_eq!(
            alpn_server_name(&v6).as_deref(),
            Some("b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.1.2.3.4.ip6.arpa")
        );
        assert_eq!(
            alpn_server_name(&Identifier::Dns("A.Example.COM.".into())).as_deref(),
            Some("a.example.com")
        );
    }

    #[test]
    fn an_ip_validation_certificate_names_the_address_only() {
        let cert = alpn_certificate("192.0.2.7", &[7u8; 32]).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert.cert[0]).unwrap();
        let names: Vec<String> = parsed
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect();
        assert_eq!(names, vec!["IPAddress([192, 0, 2, 7])".to_string()]);
        let acme_identifier = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("the acmeIdentifier extension");
        assert!(acme_identifier.critical);
    }
}
