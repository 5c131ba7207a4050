//! Errors of the forwarding step and the status each becomes. The client gets a short
//! text/plain body that says which failure it was; the log (warn) gets the upstream and
//! the cause chain. Neither carries request headers, so no credential is ever printed.

use std::time::Duration;

use http::StatusCode;

use super::body::{BodyTooLarge, ClientBodyError};
use super::pool::UpstreamError;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// No connection could be made (refused, unreachable, DNS): 502.
    #[error("cannot connect to upstream {upstream}")]
    Connect {
        upstream: String,
        #[source]
        source: UpstreamError,
    },
    /// The TCP connect did not finish within `upstream_connect_timeout`: 504, as nginx
    /// answers for a connect timeout.
    #[error("connecting to upstream {upstream} timed out")]
    ConnectTimeout {
        upstream: String,
        #[source]
        source: UpstreamError,
    },
    /// No response headers within `upstream_timeout`: 504.
    #[error("upstream {upstream} sent no response headers within {after:?}")]
    Timeout { upstream: String, after: Duration },
    /// The connection broke or the upstream spoke bad HTTP: 502.
    #[error("upstream {upstream} failed")]
    Upstream {
        upstream: String,
        #[source]
        source: UpstreamError,
    },
    /// The route has no upstream (only possible with a config that skipped
    /// validation): 502 rather than a panic.
    #[error("route has no upstream")]
    NoUpstream,
    /// The client's request body was malformed or cut off while it was being sent: 400,
    /// the upstream request aborted. The client's fault, not the upstream's.
    #[error("the client's request body failed while forwarding to {upstream}")]
    ClientBody {
        upstream: String,
        #[source]
        source: UpstreamError,
    },
    /// The request body passed the route's limit while it was sent: 413, the upstream
    /// request aborted.
    #[error("the request body passed the route's limit while forwarding to {upstream}")]
    BodyTooLarge {
        upstream: String,
        #[source]
        source: UpstreamError,
    },
    /// The upstream switched protocols on a request that asked for no upgrade: 502.
    #[error("upstream {upstream} answered 101 to a request without Upgrade")]
    UnexpectedUpgrade { upstream: String },
}

impl ProxyError {
    /// Sorts a client error: connect failures (retryable: nothing was sent) apart from
    /// the rest.
    pub(crate) fn from_client(upstream: String, source: UpstreamError) -> Self {
        if source.is_connect() {
            if source.is_connect_timeout() {
                ProxyError::ConnectTimeout { upstream, source }
            } else {
                ProxyError::Connect { upstream, source }
            }
        } else if caused_by::<BodyTooLarge>(&source) {
            ProxyError::BodyTooLarge { upstream, source }
        } else if caused_by::<ClientBodyError>(&source) {
            ProxyError::ClientBody { upstream, source }
        } else {
            ProxyError::Upstream { upstream, source }
        }
    }

    /// True for failures of the client, not of the upstream: logged at debug, not warn.
    pub(crate) fn is_client(&self) -> bool {
        matches!(
            self,
            ProxyError::ClientBody { .. } | ProxyError::BodyTooLarge { .. }
        )
    }

    /// True when the upstream was never reached: mark it unhealthy, try another.
    pub(crate) fn is_connect(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. } | ProxyError::ConnectTimeout { .. }
        )
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::ConnectTimeout { .. } | ProxyError::Timeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::ClientBody { .. } => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Connect { .. }
            | ProxyError::NoUpstream
            | ProxyError::Upstream { .. }
            | ProxyError::UnexpectedUpgrade { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// What the client reads: which failure, no addresses, no causes.
    pub(crate) fn public_message(&self) -> &'static str {
        match self {
            ProxyError::Connect { .. } => "upstream unreachable",
            ProxyError::ConnectTimeout { .. } => "upstream connect timed out",
            ProxyError::Timeout { .. } => "upstream timed out",
            ProxyError::Upstream { .. } => "upstream connection failed",
            ProxyError::NoUpstream => "no upstream for this route",
            ProxyError::ClientBody { .. } => "malformed or incomplete request body",
            ProxyError::BodyTooLarge { .. } => "the request body is larger than this route allows",
            ProxyError::UnexpectedUpgrade { .. } => "upstream answered with an unexpected upgrade",
        }
    }
}

fn caused_by<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<E>() {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::pool::Pools;
    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    #[tokio::test]
    async fn refused_connect_is_a_retryable_502() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let upstream = crate::config::Upstream {
            authority: addr.to_string().parse().unwrap(),
        };
        let connector = Pools::connector(&upstream, Duration::from_secs(5));
        let client: Client<_, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let source = client
            .get("http://a.test/".parse().unwrap())
            .await
            .unwrap_err();
        let err = ProxyError::from_client(upstream.to_string(), source.into());
        assert!(matches!(err, ProxyError::Connect { .. }), "{err:?}");
        assert!(err.is_connect());
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(err.public_message(), "upstream unreachable");
        // The log line names the upstream and the OS error; the client's body does not.
        let logged = crate::report::chain(&err);
        assert!(logged.contains(&addr.to_string()), "{logged}");
        assert!(logged.to_lowercase().contains("refused"), "{logged}");
    }
}
