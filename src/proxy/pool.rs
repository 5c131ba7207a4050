//! Upstream connections: one [`Endpoint`] per (upstream, protocol), each with its own
//! pool (HTTP/1.1: `h1pool`, portico's own; h2c: hyper's HTTP/2 client), and the
//! [`Pools`] registry that hands the same endpoints to every router built from a
//! reloaded config, so idle connections and health state survive a reload for
//! upstreams that remain.
//!
//! Each endpoint's client dials only its own upstream ([`Connector`] ignores the URI's
//! authority). That frees the request URI to carry the client's original host: an h2c
//! upstream sees it as `:authority`, exactly as the client wrote it, the way Caddy and
//! Go's HTTP/2 transport do it.
//!
//! Passive health lives here too: an endpoint that failed to connect is "cooling down"
//! for [`COOL_DOWN`] and the balancer skips it meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::Body;
use super::body::RetryBody;
use super::connect::{ConnectError, Connector};
use super::h1pool::{H1Error, H1Pool};
use crate::config::{Upstream, UpstreamProtocol};
use crate::workers;

/// How long an upstream that failed to connect is skipped.
pub(super) const COOL_DOWN: Duration = Duration::from_secs(10);

/// How long an idle pooled connection is kept (nginx's upstream `keepalive_timeout` is
/// 60 s; Go's transport uses 90 s).
pub(super) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub(super) type UpstreamClient = Client<Connector, RetryBody>;

/// How an endpoint talks to its upstream.
enum Clients {
    /// HTTP/1.1: the lean pool of [`super::h1pool`], an idle list per worker thread.
    Http1(H1Pool),
    /// h2c: one pooled hyper-util client per worker thread, so a connection and the
    /// upstream connections it uses stay on one thread (see `workers`).
    H2c(Vec<UpstreamClient>),
}

/// Why an upstream exchange failed, from either client.
#[derive(Debug, thiserror::Error)]
pub(super) enum UpstreamError {
    #[error(transparent)]
    Http1(#[from] H1Error),
    #[error(transparent)]
    H2c(#[from] hyper_util::client::legacy::Error),
    /// A request written for the other protocol than the endpoint's.
    #[error("the request was written for another upstream protocol")]
    Protocol,
}

impl UpstreamError {
    /// Nothing of the request was sent: no connection could be made.
    pub(super) fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Http1(e) => matches!(e, H1Error::Connect(_)),
            UpstreamError::H2c(e) => e.is_connect(),
            UpstreamError::Protocol => false,
        }
    }

    /// The connect timed out (`upstream_connect_timeout`).
    pub(super) fn is_connect_timeout(&self) -> bool {
        let connect = match self {
            UpstreamError::Http1(H1Error::Connect(e)) => Some(e),
            UpstreamError::Http1(_) | UpstreamError::Protocol => None,
            UpstreamError::H2c(e) => {
                std::error::Error::source(e).and_then(|e| e.downcast_ref::<ConnectError>())
            }
        };
        matches!(connect, Some(ConnectError::Timeout { .. }))
    }
}

/// One request as it goes to an endpoint, in the form its client takes.
pub(super) enum Outgoing {
    /// To an HTTP/1.1 upstream: the head written up to its framing
    /// (`headers::http1_head`); the client frames it by the body.
    Http1 {
        method: Method,
        head: Vec<u8>,
        /// The request asks for a protocol upgrade.
        upgrade: bool,
        body: RetryBody,
    },
    /// To an h2c upstream.
    H2c(Request<RetryBody>),
}

/// One upstream, with its connection pool and its health.
pub(super) struct Endpoint {
    pub upstream: Upstream,
    clients: Clients,
    /// Milliseconds since `epoch` until which this endpoint is cooling down; 0 = healthy.
    failed_until: AtomicU64,
    epoch: Instant,
}

impl Endpoint {
    fn new(key: &Key, epoch: Instant) -> Endpoint {
        let (upstream, protocol, connect_timeout) = key.clone();
        let connector = Pools::connector(&upstream, connect_timeout);
        let clients = match protocol {
            UpstreamProtocol::Http1 => Clients::Http1(H1Pool::new(connector, POOL_IDLE_TIMEOUT)),
            UpstreamProtocol::H2c => {
                let mut builder = Client::builder(TokioExecutor::new());
                builder
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                    // Without a timer the pool never evicts idle connections.
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    // The client must keep the Host header the proxy sets (the client's own).
                    .set_host(false)
                    // Prior knowledge: h2c upstreams (gRPC) speak HTTP/2 from the first byte.
                    .http2_only(true);
                Clients::H2c(
                    (0..workers::count())
                        .map(|_| builder.build(connector.clone()))
                        .collect(),
                )
            }
        };
        Endpoint {
            clients,
            upstream,
            failed_until: AtomicU64::new(0),
            epoch,
        }
    }

    /// Sends one request to this upstream (on the calling worker's connections) and
    /// returns the response head with its body streaming.
    pub(super) async fn send(&self, out: Outgoing) -> Result<Response<Body>, UpstreamError> {
        match (&self.clients, out) {
            (
                Clients::Http1(pool),
                Outgoing::Http1 {
                    method,
                    head,
                    upgrade,
                    body,
                },
            ) => Ok(pool
                .send(&method, head, upgrade, body)
                .await?
                .map(|b| b.map_err(Into::into).boxed())),
            (Clients::H2c(clients), Outgoing::H2c(req)) => {
                let client = &clients[workers::worker_index() % clients.len()];
                Ok(client
                    .request(req)
                    .await?
                    .map(|b| b.map_err(Into::into).boxed()))
            }
            // A balancer's endpoints are made for its protocol (the pool key holds it),
            // and the request is written for that protocol: never reached.
            _ => Err(UpstreamError::Protocol),
        }
    }

    fn now_ms(&self) -> u64 {
        // +1 so that a failure in the first millisecond is not read as "healthy".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// True while a recent connect failure says to skip this endpoint.
    pub(super) fn is_cooling_down(&self) -> bool {
        let until = self.failed_until.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    /// A connect failure: skip this endpoint for [`COOL_DOWN`].
    pub(super) fn mark_failed(&self) {
        let until = self.now_ms() + COOL_DOWN.as_millis() as u64;
        self.failed_until.store(until, Ordering::Relaxed);
    }

    /// A successful exchange ends any cool-down.
    pub(super) fn mark_ok(&self) {
        // Read first: a store on every request would bounce the cache line between cores.
        if self.failed_until.load(Ordering::Relaxed) != 0 {
            self.failed_until.store(0, Ordering::Relaxed);
        }
    }
}

type Key = (Upstream, UpstreamProtocol, Duration);

/// Every endpoint of the current config, reused across reloads. Only config builds lock
/// it; requests never do.
pub(super) struct Pools {
    epoch: Instant,
    /// Weak: an endpoint lives as long as some router (current or still serving
    /// requests in flight) uses it; a reload that drops an upstream drops its pool once
    /// those requests finish.
    endpoints: Mutex<HashMap<Key, Weak<Endpoint>>>,
}

impl Default for Pools {
    fn default() -> Self {
        Pools {
            epoch: Instant::now(),
            endpoints: Mutex::new(HashMap::new()),
        }
    }
}

impl Pools {
    /// The endpoint for `upstream`, shared with the previous config's if it had one.
    pub(super) fn endpoint(
        &self,
        upstream: &Upstream,
        protocol: UpstreamProtocol,
        connect_timeout: Duration,
    ) -> Arc<Endpoint> {
        let key = (upstream.clone(), protocol, connect_timeout);
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        let endpoint = Arc::new(Endpoint::new(&key, self.epoch));
        map.insert(key, Arc::downgrade(&endpoint));
        endpoint
    }

    /// The connector an endpoint for `upstream` dials with.
    pub(super) fn connector(upstream: &Upstream, connect_timeout: Duration) -> Connector {
        Connector::new(upstream, connect_timeout)
    }

    /// Forgets endpoints no router uses any more.
    pub(super) fn prune(&self) {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, weak| weak.strong_count() > 0);
    }
}
