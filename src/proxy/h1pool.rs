//! The HTTP/1.1 upstream client: hyper's connection-level client
//! (`hyper::client::conn::http1`) with a small pool per worker thread, instead of
//! hyper-util's general-purpose client.
//!
//! Why: measured with `scripts/profile` (callgrind, instructions per proxied request),
//! the general client spent a large share of the request path on things a proxy with one
//! pool per upstream and per thread does not need: a pool keyed by scheme and authority
//! behind one mutex (the key SipHash-ed byte by byte at every checkout and checkin), a
//! race between the checkout and a lazily started connect, a task spawned per request
//! just to wait until the connection could be pooled again, and the request URI rebuilt
//! into origin form.
//!
//! Here a connection goes back to its worker's idle list when the response body has been
//! read to the end (hyper can take the next request as soon as that happens); a body
//! dropped before its end takes its connection with it, which hyper then closes. A
//! checkout takes the oldest idle connection that is still open and has not idled past
//! [`super::pool::POOL_IDLE_TIMEOUT`]; those past it, or closed by the upstream, are
//! dropped on the way. A request that finds its pooled connection closed before hyper
//! wrote anything of it is sent again once on a new connection, as hyper-util's client
//! does.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tower_service::Service;

use super::body::RetryBody;
use super::connect::{ConnectError, Connector};
use crate::report::Chain;
use crate::workers;

/// Why an HTTP/1.1 upstream request failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum H1Error {
    /// No connection could be made: nothing of the request was sent.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The HTTP/1.1 handshake on a new connection failed: nothing was sent either.
    #[error("HTTP/1.1 handshake with the upstream failed")]
    Handshake(#[source] hyper::Error),
    /// The exchange failed after the connection was made.
    #[error("HTTP/1.1 exchange with the upstream failed")]
    Exchange(#[source] hyper::Error),
}

/// An idle connection and when it became idle.
struct Idle {
    sender: SendRequest<RetryBody>,
    since: Instant,
}

/// One idle list per worker thread; each is only ever locked by its own worker (and by
/// non-worker threads in tests), so the locks are uncontended.
struct Lists {
    lists: Vec<Mutex<VecDeque<Idle>>>,
    idle_timeout: Duration,
}

impl Lists {
    fn list(&self, worker: usize) -> MutexGuard<'_, VecDeque<Idle>> {
        // Nothing panics while holding it; a poisoned list is still a valid list.
        self.lists[worker % self.lists.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn checkout(&self, worker: usize) -> Option<SendRequest<RetryBody>> {
        let now = Instant::now();
        let mut list = self.list(worker);
        while let Some(idle) = list.pop_front() {
            if idle.sender.is_closed() || now.duration_since(idle.since) > self.idle_timeout {
                continue;
            }
            return Some(idle.sender);
        }
        None
    }

    fn checkin(&self, worker: usize, sender: SendRequest<RetryBody>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut list = self.list(worker);
        // The oldest are at the front: drop those idle too long while here.
        while list
            .front()
            .is_some_and(|idle| now.duration_since(idle.since) > self.idle_timeout)
        {
            list.pop_front();
        }
        list.push_back(Idle { sender, since: now });
    }
}

/// The pooled HTTP/1.1 client of one upstream.
pub(super) struct H1Pool {
    connector: Connector,
    lists: Arc<Lists>,
}

impl H1Pool {
    pub(super) fn new(connector: Connector, idle_timeout: Duration) -> H1Pool {
        H1Pool {
            connector,
            lists: Arc::new(Lists {
                lists: (0..workers::count()).map(|_| Mutex::default()).collect(),
                idle_timeout,
            }),
        }
    }

    /// Sends `req` (its URI may be absolute: it goes out in origin form) and returns the
    /// response head; the body hands the connection back when read to its end.
    pub(super) async fn request(
        &self,
        mut req: Request<RetryBody>,
    ) -> Result<Response<PooledBody>, H1Error> {
        let origin = req
            .uri()
            .path_and_query()
            .cloned()
            .map_or_else(|| Uri::from_static("/"), Uri::from);
        *req.uri_mut() = origin;
        let worker = workers::worker_index();
        let mut req = req;
        if let Some(mut sender) = self.lists.checkout(worker) {
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(self.pooled(worker, sender, response)),
                Err(mut err) => match err.take_message() {
                    // Closed under us before anything was written: a new connection.
                    Some(unsent) => req = unsent,
                    None => return Err(H1Error::Exchange(err.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let response = sender.send_request(req).await.map_err(H1Error::Exchange)?;
        Ok(self.pooled(worker, sender, response))
    }

    async fn connect(&self) -> Result<SendRequest<RetryBody>, H1Error> {
        let io: TokioIo<tokio::net::TcpStream> =
            self.connector.clone().call(Uri::default()).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(H1Error::Handshake)?;
        // On the calling worker, like the client connection that uses it; upgrades
        // (101) hand the socket over to `proxy::upgrade`.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %Chain(&e), "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn pooled(
        &self,
        worker: usize,
        sender: SendRequest<RetryBody>,
        response: Response<Incoming>,
    ) -> Response<PooledBody> {
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // The connection becomes the upgraded one: never pooled again. The sender
            // lives as long as the response, until `proxy::upgrade` has taken it over.
            return response.map(|body| PooledBody {
                body,
                checkin: None,
                _upgrading: Some(sender),
            });
        }
        response.map(|body| {
            let checkin = Checkin {
                lists: self.lists.clone(),
                worker,
                sender,
            };
            // An empty body (204, 304, HEAD, Content-Length: 0) is already over.
            if body.is_end_stream() {
                checkin.give_back();
                PooledBody {
                    body,
                    checkin: None,
                    _upgrading: None,
                }
            } else {
                PooledBody {
                    body,
                    checkin: Some(checkin),
                    _upgrading: None,
                }
            }
        })
    }
}

/// Hands a connection back to its worker's idle list.
struct Checkin {
    lists: Arc<Lists>,
    worker: usize,
    sender: SendRequest<RetryBody>,
}

impl Checkin {
    fn give_back(self) {
        self.lists.checkin(self.worker, self.sender);
    }
}

/// An upstream response body; at its end the connection goes back to the pool.
pub(super) struct PooledBody {
    body: Incoming,
    /// `None` once the body has ended (and the connection was given back), or when it
    /// ended before anyone read it.
    checkin: Option<Checkin>,
    _upgrading: Option<SendRequest<RetryBody>>,
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.body.is_end_stream(),
            // A broken body: the connection is not reused (dropped with the body).
            Poll::Ready(Some(Err(_))) => {
                self.checkin = None;
                false
            }
            Poll::Pending => false,
        };
        if ended && let Some(checkin) = self.checkin.take() {
            checkin.give_back();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
