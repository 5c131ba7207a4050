//! One issuance: a new order for all of a site's names, one challenge per name answered
//! through portico's own listeners, a CSR with a fresh P-256 key, the chain back.
//!
//! - HTTP-01: the key authorization is published through [`Challenges`]: memory for the
//!   port-80 listener, and the store, so any replica can answer.
//! - TLS-ALPN-01: a self-signed certificate with the `acmeIdentifier` extension goes into
//!   the resolver's challenge map, served only to `acme-tls/1` handshakes.
//!
//! Whatever happens, the challenge responses are removed before returning.

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

/// Runs one order for `names` to the end.
pub(super) async fn issue(
    account: &Account,
    names: &[String],
    kind: config::ChallengeType,
    replaces: Option<CertificateIdentifier<'static>>,
    responders: &Responders<'_>,
) -> Result<Issued, AcmeError> {
    let mut answered = Answered::default();
    let result = run(account, names, kind, replaces, responders, &mut answered).await;
    answered.clean(responders).await;
    result
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
    names: &[String],
    kind: config::ChallengeType,
    replaces: Option<CertificateIdentifier<'static>>,
    responders: &Responders<'_>,
    answered: &mut Answered,
) -> Result<Issued, AcmeError> {
    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut new_order = NewOrder::new(&identifiers);
    if let Some(replaces) = replaces {
        new_order = new_order.replaces(replaces);
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
                let cert = alpn_certificate(&name, key_authorization.digest().as_ref())?;
                responders
                    .resolver
                    .set_alpn_challenge(&name, Arc::new(cert));
                answered.alpn_names.push(name.clone());
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

/// The RFC 8737 validation certificate for `name`.
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
