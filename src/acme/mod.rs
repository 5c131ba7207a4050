//! ACME (RFC 8555): the certificate path's source of publicly trusted certificates.
//!
//! - `challenges`: HTTP-01 tokens in flight, answered by the port-80 listener;
//! - `http`: the client for the CA: system roots plus `acme.ca_root`, and the CA's
//!   `Retry-After` kept with the errors it came with;
//! - `account`: one account per (directory, email), created once and kept in the store;
//! - `order`: one issuance: order, challenges (HTTP-01 or TLS-ALPN-01), CSR with a
//!   fresh P-256 key, certificate chain;
//! - `manager`: which site needs a certificate when, the per-certificate lock, backoff,
//!   and handing new certificates to the store and the resolver.

mod account;
mod challenges;
mod http;
mod manager;
mod order;

pub use challenges::Challenges;
pub(crate) use manager::AcmeManager;
pub use manager::Tuning;

use crate::store::{LockError, StoreError};

/// Why an ACME step failed. The CA's problem document, when there is one, is kept whole
/// so the log shows its type, detail and subproblems.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AcmeError {
    /// `retry_after`: when the CA's error response said to come back (see `http`).
    #[error("ACME request failed")]
    Ca {
        #[source]
        source: instant_acme::Error,
        retry_after: Option<std::time::SystemTime>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot read acme.ca_root {path}", path = .path.display())]
    CaRoot {
        path: std::path::PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("acme.ca_root {path} holds no PEM certificate", path = .path.display())]
    CaRootEmpty { path: std::path::PathBuf },
    #[error("cannot set up TLS for the ACME directory")]
    TlsClient(#[source] rustls::Error),
    #[error("stored ACME account is unreadable")]
    Account(#[source] serde_json::Error),
    #[error("challenge {kind} is not offered for {name}")]
    NoChallenge { kind: &'static str, name: String },
    #[error("authorization for {name} failed: {problem}")]
    Invalid { name: String, problem: String },
    #[error("the CA gave an order status of {0:?}")]
    OrderStatus(instant_acme::OrderStatus),
    #[error("cannot make a key or CSR")]
    Key(#[source] rcgen::Error),
    #[error("the issued certificate is unusable")]
    Certificate(#[source] crate::tls::TlsError),
    #[error("acme.eab_hmac_key is not base64url")]
    EabKey,
    #[error("lost the issuance lock while ordering")]
    LockLost,
    /// `acme.profile` names a profile the directory's `meta.profiles` does not list.
    #[error(
        "acme.profile {profile:?} is not offered by {directory}; it offers {}",
        offered_list(.offered)
    )]
    UnknownProfile {
        /// The profile asked for.
        profile: String,
        /// The directory URL that does not list it.
        directory: String,
        /// What the directory lists, sorted.
        offered: Vec<String>,
    },
}

fn offered_list(offered: &[String]) -> String {
    if offered.is_empty() {
        "no profiles (remove acme.profile)".to_string()
    } else {
        offered
            .iter()
            .map(|p| format!("{p:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl From<instant_acme::Error> for AcmeError {
    /// Converted right where the request failed, so the `Retry-After` noted for this
    /// task (by [`http::scoped`]) is the one of the failing response.
    fn from(source: instant_acme::Error) -> Self {
        AcmeError::Ca {
            source,
            retry_after: http::last_retry_after(),
        }
    }
}

impl AcmeError {
    /// When the CA asked us to come back, if it said: the `Retry-After` of its error
    /// response, or of the order it was still processing when polling gave up.
    pub(crate) fn retry_at(&self) -> Option<std::time::SystemTime> {
        match self {
            AcmeError::Ca {
                retry_after: Some(at),
                ..
            } => Some(*at),
            AcmeError::Ca {
                source: instant_acme::Error::Timeout(Some(at)),
                ..
            } => {
                let wait = at.saturating_duration_since(std::time::Instant::now());
                Some(std::time::SystemTime::now() + wait.min(http::MAX_RETRY_AFTER))
            }
            _ => None,
        }
    }

    /// The type of the CA's problem document, if the CA sent one.
    pub(crate) fn problem_type(&self) -> Option<&str> {
        match self {
            AcmeError::Ca {
                source: instant_acme::Error::Api(problem),
                ..
            } => problem.r#type.as_deref(),
            _ => None,
        }
    }
}

/// The CA's problem document written out for operators: type, detail, subproblems.
pub(crate) fn describe(err: &AcmeError) -> String {
    match err {
        AcmeError::Ca {
            source: instant_acme::Error::Api(problem),
            ..
        } => {
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
        // Transport errors hide the useful part (refused, DNS, TLS) in their sources.
        other => crate::report::chain(other),
    }
}
