//! Sockets: the first step of the request path. Owns accepting, the connection cap, the
//! TLS handshake ([`https`]), port 80 ([`http`]), serving each connection as HTTP/1.1 or
//! HTTP/2, idle timeouts, and draining connections on shutdown.
//!
//! Protocol choice follows ALPN, not a sniffed preface, so every phase has a timeout:
//! the handshake (`limits.handshake_timeout`), the request headers (hyper's
//! `header_read_timeout` on HTTP/1.1) and idleness (`limits.idle_timeout`, counted from
//! the last response finished while nothing is in flight, for both protocols).

pub mod http;
pub mod https;
pub mod workers;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::config::Limits;
use crate::proxy::{Body, BoxError};

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Where shutdown is; it only moves forward. Accept loops stop at `Draining`;
/// connections finish their requests then, and are dropped at `Closed` (the deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    Draining,
    Closed,
}

/// Bounds open connections and, on shutdown, tells when the last one is gone: every
/// connection holds one permit, so having all permits back means fully drained.
#[derive(Debug, Clone)]
pub struct Connections {
    permits: Arc<Semaphore>,
    max: u32,
}

impl Connections {
    pub fn new(max: usize) -> Self {
        let max = max.min(Semaphore::MAX_PERMITS).min(u32::MAX as usize) as u32;
        Connections {
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
        }
    }

    /// Waits for room for one more connection (backpressure instead of refusing: the
    /// kernel's backlog holds the rest).
    async fn admit(&self) -> OwnedSemaphorePermit {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("the connection semaphore is never closed")
    }

    /// Resolves when every connection has finished.
    pub async fn drained(&self) {
        let _all = self
            .permits
            .acquire_many(self.max)
            .await
            .expect("the connection semaphore is never closed");
    }

    pub fn open(&self) -> usize {
        self.max as usize - self.permits.available_permits()
    }
}

/// The next connection, once there is room for it; `None` once shutdown has begun.
/// The permit is taken after accepting, so waiting accept loops do not count as open
/// connections; accept errors (EMFILE and friends) back off instead of spinning.
pub(crate) async fn accept(
    listener: &tokio::net::TcpListener,
    connections: &Connections,
    shutdown: &mut watch::Receiver<Phase>,
) -> Option<(
    tokio::net::TcpStream,
    std::net::SocketAddr,
    OwnedSemaphorePermit,
)> {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return None,
        };
        let permit = tokio::select! {
            p = connections.admit() => p,
            _ = shutdown.changed() => return None,
        };
        let _ = tcp.set_nodelay(true);
        return Some((tcp, peer, permit));
    }
}

/// Requests in flight and the time the last one finished, for the idle timeout.
#[derive(Debug)]
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `start` when the connection last became idle.
    idle_since: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// When the connection would time out if nothing happens, or None while busy.
    fn deadline(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since.load(Ordering::Acquire));
        Some(self.start + since + idle)
    }
}

/// Held by a response body until it is finished or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.start.elapsed().as_millis() as u64;
        self.0.idle_since.store(now, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection counted as busy until it is done.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves one connection with `handler` until it closes, idles out, or shutdown drains it.
pub(crate) async fn serve_connection<I, H, F>(
    io: I,
    h2: bool,
    limits: &Limits,
    mut shutdown: watch::Receiver<Phase>,
    handler: H,
) where
    I: Read + Write + Unpin + Send + 'static,
    H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<Body>> + Send + 'static,
{
    let activity = Activity::new();
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req| {
            let in_flight = activity.begin();
            // Boxed at once: the future is large, and hyper moves it into a task per stream.
            let response = Box::pin(handler(req));
            async move {
                let response = response.await;
                // Not boxed again: hyper serves `Tracked` as it is.
                Ok::<_, std::convert::Infallible>(response.map(|inner| Tracked {
                    inner,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_h2_streams)
            .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        let conn = builder.serve_connection(io, service);
        drive(conn, &activity, limits, &mut shutdown).await;
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192));
        let conn = builder.serve_connection(io, service).with_upgrades();
        drive(conn, &activity, limits, &mut shutdown).await;
    }
}

/// The two hyper connection types share `graceful_shutdown` but no trait for it.
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn start_graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: Read + Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<BoxError>,
    S::ResBody: HttpBody + 'static,
    <S::ResBody as HttpBody>::Error: Into<BoxError>,
{
    fn start_graceful_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

impl<I, S, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    I: Read + Write + Unpin,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<BoxError>,
    S::ResBody: HttpBody + Send + 'static,
    <S::ResBody as HttpBody>::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn start_graceful_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

async fn drive<C: Graceful>(
    conn: C,
    activity: &Activity,
    limits: &Limits,
    shutdown: &mut watch::Receiver<Phase>,
) {
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    match *shutdown.borrow_and_update() {
        Phase::Serving => {}
        Phase::Draining => {
            closing = true;
            conn.as_mut().start_graceful_shutdown();
        }
        Phase::Closed => return,
    }
    // One timer and one shutdown wait for the whole connection, not new ones at every
    // wake-up: the connection wakes for every read and every response, and each new
    // timer or watch wait registered and deregistered itself (a lock each). The idle
    // timer is lazy: it fires at the earliest moment the connection could be idle for
    // long enough, and is moved on if requests came meanwhile.
    let idle = tokio::time::sleep_until(
        activity
            .deadline(limits.idle_timeout)
            .unwrap_or_else(|| Instant::now() + limits.idle_timeout),
    );
    let mut idle = std::pin::pin!(idle);
    let mut phase_change = Box::pin(next_phase(shutdown.clone()));
    loop {
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            phase = &mut phase_change => {
                // Seen here too, so the next wait starts after this change.
                shutdown.borrow_and_update();
                match phase {
                    Phase::Serving => {}
                    Phase::Draining => if !closing {
                        closing = true;
                        conn.as_mut().start_graceful_shutdown();
                    },
                    Phase::Closed => return,
                }
                phase_change = Box::pin(next_phase(shutdown.clone()));
            }
            _ = idle.as_mut() => {
                let now = Instant::now();
                match activity.deadline(limits.idle_timeout) {
                    Some(at) if at <= now => {
                        if !closing {
                            closing = true;
                            conn.as_mut().start_graceful_shutdown();
                        }
                        // Draining now; nothing more for this timer to do until the
                        // connection finishes (or shutdown closes it).
                        idle.as_mut().reset(now + limits.idle_timeout);
                    }
                    Some(at) => idle.as_mut().reset(at),
                    None => idle.as_mut().reset(now + limits.idle_timeout),
                }
            }
        }
    }
}

/// The next shutdown phase after the one `rx` has seen; a dropped sender means the
/// server is gone: same as the deadline.
async fn next_phase(mut rx: watch::Receiver<Phase>) -> Phase {
    match rx.changed().await {
        Ok(()) => *rx.borrow_and_update(),
        Err(_) => Phase::Closed,
    }
}
