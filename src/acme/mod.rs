//! ACME (RFC 8555): the certificate path's source of publicly trusted certificates.
//!
//! - [`challenges`]: HTTP-01 tokens in flight, answered by the port-80 listener;
//! - [`account`]: one account per (directory, email), created once and kept in the store;
//! - [`order`]: one issuance: order, challenges (HTTP-01 or TLS-ALPN-01), CSR with a
//!   fresh P-256 key, certificate chain;
//! - [`manager`]: which site needs a certificate when, the per-certificate lock, backoff,
//!   and handing new certificates to the store and the resolver.

pub mod account;
pub mod challenges;
pub mod manager;
pub mod order;

pub use manager::AcmeManager;

use crate::store::{LockError, StoreError};

/// Why an ACME step failed. The CA's problem document, when there is one, is kept whole
/// so the log shows its type, detail and subproblems.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME request failed: {0}")]
    Ca(#[source] instant_acme::Error),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("lock: {0}")]
    Lock(#[from] LockError),
    #[error("cannot read {path}: {source}", path = .path.display())]
    CaRoot {
        path: std::path::PathBuf,
        #[source]
        source: instant_acme::Error,
    },
    #[error("stored ACME account is unreadable: {0}")]
    Account(#[source] serde_json::Error),
    #[error("challenge {kind} is not offered for {name}")]
    NoChallenge { kind: &'static str, name: String },
    #[error("authorization for {name} failed: {problem}")]
    Invalid { name: String, problem: String },
    #[error("the CA gave an order status of {0:?}")]
    OrderStatus(instant_acme::OrderStatus),
    #[error("cannot make a key or CSR: {0}")]
    Key(#[source] rcgen::Error),
    #[error("the issued certificate is unusable: {0}")]
    Certificate(#[source] crate::tls::TlsError),
    #[error("acme.eab_hmac_key is not base64url")]
    EabKey,
    #[error("lost the issuance lock while ordering")]
    LockLost,
}

impl From<instant_acme::Error> for AcmeError {
    fn from(e: instant_acme::Error) -> Self {
        AcmeError::Ca(e)
    }
}

impl AcmeError {
    /// When the CA asked us to come back, if it said.
    pub fn retry_at(&self) -> Option<std::time::Instant> {
        match self {
            AcmeError::Ca(instant_acme::Error::Timeout(at)) => *at,
            _ => None,
        }
    }
}

/// The CA's problem document written out for operators: type, detail, subproblems.
pub fn describe(err: &AcmeError) -> String {
    match err {
        AcmeError::Ca(instant_acme::Error::Api(problem)) => {
            let mut out = format!(
                "{} ({})",
                problem.detail.as_deref().unwrap_or("no detail"),
                problem.r#type.as_deref().unwrap_or("no type")
            );
            for sub in &problem.subproblems {
                out.push_str(&format!("; {sub}"));
            }
            out
        }
        other => {
            // Transport errors hide the useful part (refused, DNS, TLS) in their sources.
            let mut out = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(e) = source {
                let text = e.to_string();
                if !out.contains(&text) {
                    out.push_str(&format!(": {text}"));
                }
                source = e.source();
            }
            out
        }
    }
}
