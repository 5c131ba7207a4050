//! Dialling an upstream: the [`Connector`] both upstream clients (HTTP/1.1 in
//! `h1pool`, h2c through hyper-util in `pool`) make their connections with, and the
//! [`ConnectError`] they report when none could be made. A leaf of its own because
//! `pool` holds both clients and so imports `h1pool`: were the dialler in `pool`,
//! `h1pool` would import it back, a cycle.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::Upstream;

/// Why a connection to an upstream could not be made. Nothing of the request was sent.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    #[error("connecting to {upstream} timed out after {after:?}")]
    Timeout { upstream: String, after: Duration },
    #[error("cannot connect to {upstream}")]
    Io {
        upstream: String,
        #[source]
        source: std::io::Error,
    },
}

/// Dials one upstream, whatever URI the client asks for.
#[derive(Clone)]
pub(super) struct Connector {
    upstream: Arc<Upstream>,
    timeout: Duration,
}

impl Connector {
    /// A connector that dials `upstream`, giving up after `timeout`
    /// (`upstream_connect_timeout`).
    pub(super) fn new(upstream: &Upstream, timeout: Duration) -> Connector {
        Connector {
            upstream: Arc::new(upstream.clone()),
            timeout,
        }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = BoxFuture<'static, Result<Self::Response, ConnectError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let upstream = self.upstream.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let authority = &upstream.authority;
            // `Authority::host` keeps IPv6 brackets; the resolver wants them off.
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            // Validated config: every upstream has a port.
            let port = authority.port_u16().unwrap_or(80);
            // Resolved at each connect, so a Kubernetes Service name that moves is
            // followed; addresses are tried in order within the one timeout.
            let stream = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
                .await
                .map_err(|_| ConnectError::Timeout {
                    upstream: upstream.to_string(),
                    after: timeout,
                })?
                .map_err(|source| ConnectError::Io {
                    upstream: upstream.to_string(),
                    source,
                })?;
            // Small writes (headers, h2 frames) should not wait for Nagle.
            let _ = stream.set_nodelay(true);
            Ok(TokioIo::new(stream))
        })
    }
}
