//! Sockets: the first step of the request path. Owns accepting, the connection cap, the
//! TLS handshake ([`https`]), port 80 ([`http`]), serving each connection as HTTP/1.1 or
//! HTTP/2, idle timeouts, and draining connections on shutdown.
//!
//! Protocol choice follows ALPN, not a sniffed preface, so every phase has a timeout:
//! the handshake (`limits.handshake_timeout`), the request headers (hyper's
//! `header_read_timeout` on HTTP/1.1) and idleness (`limits.idle_timeout`, counted from
//! the last response finished while nothing is in flight, for both protocols).

/// `AsyncWrite` for a reading wrapper whose writes go straight to its `io` field: the
/// wrappers of this module change what is read, never what is written.
macro_rules! write_through {
    ($wrapper:ident) => {
        impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<I> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
            }
        }
    };
}

mod head_deadline;
pub(crate) mod http;
pub(crate) mod https;
pub(crate) mod proxy_protocol;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::body::{Body, BoxError};
use crate::config::Limits;
use crate::metrics::{ConnectionError, Metrics};
use crate::report::Chain;
use crate::shutdown::Phase;

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The address is taken, not ours, or needs a privilege we lack.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Connections the kernel completes and queues for each listener before portico
/// accepts them; Linux caps it at `net.core.somaxconn` (4096 by default). The standard
/// library's 128 dropped the SYNs of a burst of new clients (`ListenOverflows` in
/// `nstat`), and each dropped client waited a second for its SYN to be sent again:
/// 500 clients at once, from two threads, got half the handshakes/s of haproxy. nginx
/// asks for 511, Go (so Caddy and Traefik) for `somaxconn`.
const BACKLOG: u32 = 4096;

/// A listening socket on `addr`, with address reuse (a restart binds at once, whatever
/// the old sockets' TIME_WAIT) and a backlog of [`BACKLOG`].
pub(crate) fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, ListenError> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    listen().map_err(|source| ListenError::Bind { addr, source })
}

/// Bounds open connections and, on shutdown, tells when the last one is gone: every
/// connection holds one permit, so having all permits back means fully drained.
#[derive(Debug, Clone)]
pub(crate) struct Connections {
    permits: Arc<Semaphore>,
    max: u32,
}

impl Connections {
    pub(crate) fn new(max: usize) -> Self {
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
    pub(crate) async fn drained(&self) {
        let _all = self
            .permits
            .acquire_many(self.max)
            .await
            .expect("the connection semaphore is never closed");
    }

    pub(crate) fn open(&self) -> usize {
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
                    tracing::warn!(error = %Chain(&e), "accept failed");
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

/// Requests in flight and the time the last one finished, for the idle timeout and
/// the request-head deadline.
#[derive(Debug)]
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Requests begun so far.
    begun: AtomicUsize,
    /// Milliseconds since `start` when the connection last became idle.
    idle_since: AtomicU64,
    /// The request-head deadline passed and the client got 408.
    head_timed_out: AtomicBool,
    /// HTTP/1.1: a request-head deadline ([`head_deadline`]) guards this connection.
    head_deadline: bool,
}

impl Activity {
    fn new(head_deadline: bool) -> Arc<Self> {
        Arc::new(Activity {
            head_deadline,
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            begun: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_timed_out: AtomicBool::new(false),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.begun.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// When the connection would time out if nothing happens, or None while busy.
    /// An HTTP/1.1 connection that has not sent its first request is timed by its
    /// request-head deadline (and its 408) instead.
    fn deadline(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if self.head_deadline && self.begun.load(Ordering::Acquire) == 0 {
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

/// Serves one connection with `handler` until it closes, idles out, or shutdown drains
/// it. Protocol errors that end it are counted in `metrics`.
pub(crate) async fn serve_connection<I, H, F>(
    io: I,
    h2: bool,
    limits: &Limits,
    metrics: &Metrics,
    mut shutdown: watch::Receiver<Phase>,
    handler: H,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<Body>> + Send + 'static,
{
    let activity = Activity::new(!h2);
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
    let result = if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_h2_streams)
            .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        let conn = builder.serve_connection(TokioIo::new(io), service);
        drive(conn, &activity, limits, &mut shutdown).await
    } else {
        let io = head_deadline::HeadDeadline::new(io, activity.clone(), limits.header_read_timeout);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // `HeadDeadline` keeps that time, and answers 408.
            .header_read_timeout(None)
            .max_buf_size(limits.max_header_bytes.max(8192));
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        drive(conn, &activity, limits, &mut shutdown).await
    };
    if activity.head_timed_out.load(Ordering::Acquire) {
        protocol_error(metrics, ConnectionError::HeaderTimeout);
    } else if let Err(e) = result {
        match classify(&e) {
            Some(reason) => protocol_error(metrics, reason),
            None => tracing::debug!(error = %Chain(&e), "connection ended with an error"),
        }
    }
}

/// The protocol violation a connection error stands for, if it is one (not a client
/// going away, a reset, or an I/O error).
fn classify(e: &hyper::Error) -> Option<ConnectionError> {
    if e.is_parse() || e.is_parse_too_large() {
        return Some(ConnectionError::H1Protocol);
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(h2) = c.downcast_ref::<h2::Error>() {
            // A GOAWAY portico sent: the client broke a rule or flooded.
            if h2.is_go_away() && h2.is_library() {
                return match h2.reason() {
                    Some(h2::Reason::ENHANCE_YOUR_CALM) => Some(ConnectionError::H2TooManyResets),
                    Some(h2::Reason::NO_ERROR) | None => None,
                    Some(_) => Some(ConnectionError::H2Protocol),
                };
            }
            return None;
        }
        cause = c.source();
    }
    None
}

/// Counts a connection ended for a client's protocol error, and logs it at most once a
/// second with the number since the last line: an attacker opening thousands of bad
/// connections must not flood the log (the metric has every one).
pub(crate) fn protocol_error(metrics: &Metrics, reason: ConnectionError) {
    metrics.connection_error(reason);
    static NEXT_SECOND: AtomicU64 = AtomicU64::new(0);
    static SINCE_LAST_LINE: AtomicU64 = AtomicU64::new(0);
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    SINCE_LAST_LINE.fetch_add(1, Ordering::AcqRel);
    let now = EPOCH.get_or_init(Instant::now).elapsed().as_secs();
    let next = NEXT_SECOND.load(Ordering::Acquire);
    if now >= next
        && NEXT_SECOND
            .compare_exchange(next, now + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    {
        let count = SINCE_LAST_LINE.swap(0, Ordering::AcqRel);
        tracing::warn!(
            reason = reason.as_str(),
            count,
            "client connections ended for protocol errors (one line a second at most; portico_connection_errors_total counts each)"
        );
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

/// Runs a connection to its end; its error, if it ended with one.
async fn drive<C: Graceful>(
    conn: C,
    activity: &Activity,
    limits: &Limits,
    shutdown: &mut watch::Receiver<Phase>,
) -> Result<(), hyper::Error> {
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    match *shutdown.borrow_and_update() {
        Phase::Serving => {}
        Phase::Draining => {
            closing = true;
            conn.as_mut().start_graceful_shutdown();
        }
        Phase::Closed => return Ok(()),
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
    // Polled only when they can be ready (`poll_beside`); made or reset: fresh.
    let (mut phase_fresh, mut idle_fresh) = (true, true);
    loop {
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(Event::Done(result));
            }
            let changed = shutdown.has_changed().unwrap_or(true);
            if let Poll::Ready(phase) =
                poll_beside(phase_change.as_mut(), &mut phase_fresh, changed, cx)
            {
                return Poll::Ready(Event::Phase(phase));
            }
            let elapsed = idle.is_elapsed();
            if poll_beside(idle.as_mut(), &mut idle_fresh, elapsed, cx).is_ready() {
                return Poll::Ready(Event::Idle);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Done(result) => return result,
            Event::Phase(phase) => {
                // Seen here too, so the next wait starts after this change.
                shutdown.borrow_and_update();
                match phase {
                    Phase::Serving => {}
                    Phase::Draining => {
                        if !closing {
                            closing = true;
                            conn.as_mut().start_graceful_shutdown();
                        }
                    }
                    Phase::Closed => return Ok(()),
                }
                phase_change = Box::pin(next_phase(shutdown.clone()));
                phase_fresh = true;
            }
            Event::Idle => {
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
                idle_fresh = true;
            }
        }
    }
}

/// Polls a future that waits beside a connection's real work (its idle timer, its
/// shutdown wait) only when it can have become ready: on its first poll after it was
/// made or reset (`*fresh`, cleared here), or when `woke` says its event happened
/// (`Sleep::is_elapsed`, `watch::Receiver::has_changed`). In between it keeps the
/// waker it registered, the task's own, and its wake-up still comes. Polling it at
/// every wake-up of the task (every read, every response) re-registered that waker
/// each time: ~550 instructions per HTTP/1.1 request for a connection's two
/// (scripts/profile). A request's upstream timeout gains nothing from it: its cost is
/// the timer's registration, and its exchange wakes it once or twice.
///
/// Polled outside the task's coop budget: a poll turned away for want of budget
/// registers nothing, and would leave the waiter deaf. tokio's own `timeout` polls its
/// timer the same way once the budget is spent.
fn poll_beside<F: Future + ?Sized>(
    waiter: Pin<&mut F>,
    fresh: &mut bool,
    woke: bool,
    cx: &mut Context<'_>,
) -> Poll<F::Output> {
    if !(*fresh || woke) {
        return Poll::Pending;
    }
    *fresh = false;
    Pin::new(&mut tokio::task::coop::unconstrained(waiter)).poll(cx)
}

/// What woke [`drive`]'s loop.
enum Event {
    Done(Result<(), hyper::Error>),
    Phase(Phase),
    Idle,
}

/// The next shutdown phase after the one `rx` has seen; a dropped sender means the
/// server is gone: same as the deadline.
async fn next_phase(mut rx: watch::Receiver<Phase>) -> Phase {
    match rx.changed().await {
        Ok(()) => *rx.borrow_and_update(),
        Err(_) => Phase::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst larger than the standard library's backlog of 128 is held by the kernel
    /// while no one accepts: every connect completes, and every connection is then
    /// accepted. With a backlog of 128 the 129th connect waits for the guard.
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_backlog() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // The kernel's cap, where it is lower than the burst (older kernels: 128).
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        let mut clients = Vec::new();
        // 300: well past 128, and few enough descriptors under a soft limit of 1024.
        for n in 0..300.min(somaxconn) {
            let connect = tokio::net::TcpStream::connect(addr);
            match tokio::time::timeout(Duration::from_secs(20), connect).await {
                Ok(Ok(tcp)) => clients.push(tcp),
                Ok(Err(e)) => panic!("connection {n}: {e}"),
                Err(_) => panic!("connection {n} was not queued: the backlog is too short"),
            }
        }
        for _ in 0..clients.len() {
            listener.accept().await.unwrap();
        }
    }

    #[test]
    fn a_taken_address_names_itself() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).unwrap_err();
        assert_eq!(err.to_string(), format!("cannot listen on {addr}"));
        let ListenError::Bind { source, .. } = err;
        assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
    }
}
