//! The HTTP/1.1 upstream client: requests written and responses read by portico itself
//! (the wire format is `h1codec`), on connections kept in an idle list per worker
//! thread.
//!
//! Why not hyper's client: measured with `scripts/profile` (callgrind, instructions per
//! proxied request), hyper-util's pooled client, then hyper's connection-level one, were
//! a quarter of the request path. The connection-level client still runs every
//! connection as a task of its own: a request crossed a channel to it, woke it to write,
//! woke it again to read, and came back through a oneshot, its body through another
//! channel. Here the request's own task writes the head, reads the response head and,
//! through [`UpstreamBody`], the body: no task, no channel, no wake-up between them.
//!
//! A connection goes back to its worker's idle list the moment its response body has
//! been read to the end (for a body of known length, with its last bytes, so it is
//! reusable even if nobody polls again); a body dropped before its end closes its
//! connection. A checkout takes the oldest idle connection that has not idled past
//! [`super::pool::POOL_IDLE_TIMEOUT`] and that the upstream has not closed (a look at
//! the socket's readiness, without a syscall when nothing arrived). A request that
//! finds its pooled connection closed before any byte of the response is sent again
//! once on a new connection when nothing of its body was read and it is idempotent or
//! was not written at all (RFC 9110 §9.2.2).
//!
//! While a request body goes up, the response head is read too: an upstream that
//! answers early (a 413, a redirect) is answered at once, the rest of the body is not
//! sent, and the connection is closed after that response.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Response, StatusCode, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_service::Service;

use super::connect::{ConnectError, Connector};
use super::h1codec::{
    Chunked, Decoded, MAX_HEAD, RequestFraming, ResponseFraming, ResponseHead, WireError,
    chunk_prefix, finish_head, parse_response, response_framing,
};
use crate::body::BoxError;
use crate::workers;

/// Why an HTTP/1.1 upstream request failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum H1Error {
    /// No connection could be made: nothing of the request was sent.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Writing to or reading from the upstream failed.
    #[error("the connection to the upstream failed")]
    Io(#[source] std::io::Error),
    /// The upstream closed the connection before the response was complete.
    #[error("the upstream closed the connection before the response was complete")]
    Closed,
    /// The upstream's response is not valid HTTP/1.1.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The client's request body failed while it was sent (the cause says how: a
    /// broken body, or one over the route's limit).
    #[error("the request body could not be sent")]
    RequestBody(#[source] BoxError),
    /// The request body ended before, or went past, the length its head announced.
    #[error("the request body did not match its Content-Length")]
    RequestLength,
}

/// One connection to the upstream, with what was read past the last response.
struct Conn {
    io: TcpStream,
    buf: BytesMut,
}

/// The room a read gets at least: a response head with a small body fits in one.
const READ_MIN: usize = 16 * 1024;
/// The most room a read of a body of known length gets.
const READ_MAX: usize = 64 * 1024;

/// Makes room in `buf` for a read of about `want` bytes. Reading a body in reads as
/// large as what is left of it matters: each read becomes a DATA frame or a write to
/// the client: a 16 KiB body read in 8 KiB pieces cost 47.0 µs of CPU per request
/// against 33.5 µs in one piece (two `scripts/bench` runs, h2 with 16 KiB bodies;
/// docs/benchmarks.md).
fn make_room(buf: &mut BytesMut, want: usize) {
    let want = want.clamp(1, READ_MAX);
    if buf.capacity() - buf.len() < want {
        buf.reserve(want.max(READ_MIN));
    }
}

impl Conn {
    /// Reads more into `buf`, with room for `want` bytes: the number of bytes read, 0
    /// at the end of the stream.
    fn poll_read_more(
        &mut self,
        cx: &mut Context<'_>,
        want: usize,
    ) -> Poll<std::io::Result<usize>> {
        make_room(&mut self.buf, want);
        // Through `AsyncRead`, not `try_read_buf`: a short read there tells tokio the
        // socket is drained, so the checkout's look at an idle connection costs no
        // syscall (`scripts/profile h2-16k`, STRACE=1: 3.14 recvfrom per request before).
        std::pin::pin!(self.io.read_buf(&mut self.buf)).poll(cx)
    }

    /// An idle connection is still usable when nothing arrived on it: not the end of
    /// the stream (the upstream's idle timeout), and not bytes nobody asked for.
    fn still_open(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                self.io.try_read(&mut [0; 1]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            ),
        }
    }
}

/// An idle connection and when it became idle.
struct Idle {
    conn: Conn,
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

    fn checkout(&self, worker: usize) -> Option<Conn> {
        let now = Instant::now();
        let mut list = self.list(worker);
        while let Some(idle) = list.pop_front() {
            if now.duration_since(idle.since) > self.idle_timeout || !idle.conn.still_open() {
                continue;
            }
            return Some(idle.conn);
        }
        None
    }

    fn checkin(&self, worker: usize, mut conn: Conn) {
        // Empty, but it may still hold the allocation its last reads went into (shared
        // with body bytes not yet sent on): an idle connection keeps no buffer.
        conn.buf = BytesMut::new();
        let now = Instant::now();
        let mut list = self.list(worker);
        // The oldest are at the front: drop those idle too long while here.
        while list
            .front()
            .is_some_and(|idle| now.duration_since(idle.since) > self.idle_timeout)
        {
            list.pop_front();
        }
        list.push_back(Idle { conn, since: now });
    }
}

/// The upstream's side of an upgraded connection (after a 101), handed to
/// `proxy::upgrade` through the response's extensions: the socket, and whatever the
/// upstream sent after its 101 that was read with it.
#[derive(Clone)]
pub(super) struct UpgradedUpstream(Arc<Mutex<Option<(TcpStream, Bytes)>>>);

impl UpgradedUpstream {
    /// The socket and the bytes already read from it; `None` if already taken.
    pub(super) fn take(&self) -> Option<(TcpStream, Bytes)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// How one attempt failed, and whether another connection may try again.
struct Failed {
    error: H1Error,
    /// The pooled connection was found closed before any response byte, and the
    /// request may be sent again (the body is still whole).
    retry: bool,
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
    #[cfg(test)]
    pub(super) async fn request<B>(
        &self,
        req: http::Request<B>,
    ) -> Result<Response<UpstreamBody>, H1Error>
    where
        B: HttpBody<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut head = Vec::with_capacity(256 + parts.headers.len() * 48);
        super::h1codec::encode_head(
            &parts.method,
            target,
            &parts.headers,
            |_, _| true,
            &mut head,
        );
        let upgrade = parts.headers.contains_key(http::header::UPGRADE);
        self.send(&parts.method, head, upgrade, body).await
    }

    /// Sends a request whose head is written up to its framing (`encode_head`), frames
    /// it by `body`, and returns the response head; the body hands the connection back
    /// when read to its end. `upgrade`: the request asks for a protocol upgrade.
    pub(super) async fn send<B>(
        &self,
        method: &Method,
        mut head: Vec<u8>,
        upgrade: bool,
        body: B,
    ) -> Result<Response<UpstreamBody>, H1Error>
    where
        B: HttpBody<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let framing = if body.is_end_stream() {
            RequestFraming::Empty
        } else {
            match body.size_hint().exact() {
                Some(n) => RequestFraming::Length(n),
                None => RequestFraming::Chunked,
            }
        };
        finish_head(method, framing, &mut head);
        let mut body = Some(body);
        let worker = workers::worker_index();
        let exchange = Exchange {
            head: &head,
            framing,
            method,
            upgrade,
        };
        if let Some(conn) = self.lists.checkout(worker) {
            match exchange.run(conn, &mut body, true).await {
                Ok((head, body)) => return Ok(self.respond(worker, head, body)),
                Err(Failed { retry: true, error }) => {
                    tracing::debug!(error = %crate::report::Chain(&error), "pooled upstream connection was closed; sending again on a new one");
                }
                Err(failed) => return Err(failed.error),
            }
        }
        let conn = self.connect().await?;
        match exchange.run(conn, &mut body, false).await {
            Ok((head, body)) => Ok(self.respond(worker, head, body)),
            Err(failed) => Err(failed.error),
        }
    }

    async fn connect(&self) -> Result<Conn, H1Error> {
        let io = self.connector.clone().call(Uri::default()).await?;
        Ok(Conn {
            io: io.into_inner(),
            buf: BytesMut::new(),
        })
    }

    fn respond(&self, worker: usize, head: ResponseHead, body: Read) -> Response<UpstreamBody> {
        let mut response = Response::new(UpstreamBody {
            state: State::Done,
            conn: None,
            checkin: None,
        });
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        match body {
            Read::Upgraded(conn) => {
                response
                    .extensions_mut()
                    .insert(UpgradedUpstream(Arc::new(Mutex::new(Some((
                        conn.io,
                        conn.buf.freeze(),
                    ))))));
            }
            Read::Body {
                conn,
                framing,
                reusable,
            } => {
                let state = match framing {
                    ResponseFraming::Empty => State::Length(0),
                    ResponseFraming::Length(n) => State::Length(n),
                    ResponseFraming::Chunked => State::Chunked(Chunked::default()),
                    ResponseFraming::Close => State::Close,
                };
                let body = response.body_mut();
                body.state = state;
                body.conn = Some(conn);
                body.checkin = reusable.then(|| (self.lists.clone(), worker));
                if body.is_end_stream() {
                    body.finish();
                }
            }
        }
        response
    }
}

/// What an exchange leaves after the response head.
enum Read {
    /// A response body to read from the connection.
    Body {
        conn: Conn,
        framing: ResponseFraming,
        reusable: bool,
    },
    /// A 101 to a request that asked for an upgrade: the connection is no longer HTTP.
    Upgraded(Conn),
}

/// One request's head and what is needed to read its response.
struct Exchange<'a> {
    head: &'a [u8],
    framing: RequestFraming,
    method: &'a Method,
    upgrade: bool,
}

impl Exchange<'_> {
    /// Sends the request on `conn` and reads the response head. `pooled`: the
    /// connection served earlier requests, so an end of stream before any response
    /// byte means the upstream closed it while idle.
    async fn run<B>(
        &self,
        mut conn: Conn,
        body: &mut Option<B>,
        pooled: bool,
    ) -> Result<(ResponseHead, Read), Failed>
    where
        B: HttpBody<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        // Sent again only if nothing of the body was taken and the upstream cannot
        // have acted on it: idempotent, or not written at all.
        let idempotent = matches!(
            *self.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        let stale = |error: H1Error, written: bool, body: &Option<B>| Failed {
            retry: pooled
                && body.is_some()
                && (idempotent || !written)
                && matches!(&error, H1Error::Closed | H1Error::Io(_)),
            error,
        };
        if let Err(e) = conn.io.write_all(self.head).await {
            return Err(stale(H1Error::Io(e), false, body));
        }
        // Set when the body could not all be sent.
        let mut write_error = None;
        if self.framing != RequestFraming::Empty {
            let Some(body) = body.take() else {
                return Err(Failed {
                    error: H1Error::RequestLength,
                    retry: false,
                });
            };
            let sent = {
                let Conn { io, buf } = &mut conn;
                let (mut reader, mut writer) = io.split();
                tokio::select! {
                    sent = send_body(&mut writer, body, self.framing) => Ok(sent),
                    head = read_head(&mut reader, buf) => Err(head),
                }
            };
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(SendError::Body(e))) => {
                    return Err(Failed {
                        error: H1Error::RequestBody(e),
                        retry: false,
                    });
                }
                Ok(Err(SendError::Length)) => {
                    return Err(Failed {
                        error: H1Error::RequestLength,
                        retry: false,
                    });
                }
                // The upstream may have answered and closed (a 413 before the whole
                // body): its answer is still worth reading.
                Ok(Err(SendError::Io(e))) => write_error = Some(e),
                Err(head) => {
                    let head = head.map_err(|error| Failed {
                        error,
                        retry: false,
                    })?;
                    return self.finish(conn, head, true);
                }
            }
        }
        let head = {
            let Conn { io, buf } = &mut conn;
            read_head(io, buf).await
        };
        match head {
            Ok(head) => self.finish(conn, head, write_error.is_some()),
            Err(_) if let Some(e) = write_error => Err(Failed {
                error: H1Error::Io(e),
                retry: false,
            }),
            Err(error) if conn.buf.is_empty() => Err(stale(error, true, body)),
            Err(error) => Err(Failed {
                error,
                retry: false,
            }),
        }
    }

    /// The response head read: how its body is framed, or the upgraded connection.
    /// `early`: the request body was not all sent, so the connection is not reused.
    fn finish(
        &self,
        conn: Conn,
        mut head: ResponseHead,
        early: bool,
    ) -> Result<(ResponseHead, Read), Failed> {
        if head.status == StatusCode::SWITCHING_PROTOCOLS && self.upgrade && !early {
            return Ok((head, Read::Upgraded(conn)));
        }
        let (framing, reusable) = response_framing(&mut head, self.method).map_err(|e| Failed {
            error: e.into(),
            retry: false,
        })?;
        // A 101 nobody asked for is the caller's to refuse; its connection is done.
        let reusable = reusable && !early && head.status != StatusCode::SWITCHING_PROTOCOLS;
        Ok((
            head,
            Read::Body {
                conn,
                framing,
                reusable,
            },
        ))
    }
}

/// Reads a final response head (interim 1xx responses other than 101 are read and
/// dropped, as hyper's client does).
async fn read_head<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
) -> Result<ResponseHead, H1Error> {
    loop {
        if !buf.is_empty()
            && let Some(head) = parse_response(buf)?
        {
            if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            return Ok(head);
        }
        make_room(buf, READ_MIN);
        match io.read_buf(buf).await {
            Ok(0) => return Err(H1Error::Closed),
            Ok(_) => {}
            Err(e) => return Err(H1Error::Io(e)),
        }
        if buf.len() > MAX_HEAD {
            return Err(WireError::HeadTooLarge.into());
        }
    }
}

enum SendError {
    Body(BoxError),
    Length,
    Io(std::io::Error),
}

/// Sends a request body as `framing` says: each data frame as it comes (one write per
/// frame: prefix, data and suffix in one vectored write for chunks), trailers dropped.
async fn send_body<W, B>(io: &mut W, mut body: B, framing: RequestFraming) -> Result<(), SendError>
where
    W: tokio::io::AsyncWrite + Unpin,
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut sent = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|e| SendError::Body(e.into()))?.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        match framing {
            RequestFraming::Length(n) if sent > n => return Err(SendError::Length),
            RequestFraming::Chunked => {
                let mut chunk = chunk_prefix(data.len()).chain(data).chain(&b"\r\n"[..]);
                io.write_all_buf(&mut chunk).await.map_err(SendError::Io)?;
            }
            _ => io.write_all(&data).await.map_err(SendError::Io)?,
        }
    }
    match framing {
        RequestFraming::Length(n) if sent != n => Err(SendError::Length),
        RequestFraming::Chunked => io.write_all(b"0\r\n\r\n").await.map_err(SendError::Io),
        _ => Ok(()),
    }
}

/// Where a response body is.
enum State {
    /// This many bytes left.
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes.
    Close,
    /// Over (and the connection given back or closed).
    Done,
}

/// An upstream response body, read from its connection as it is polled; at its end the
/// connection goes back to the pool.
pub(super) struct UpstreamBody {
    state: State,
    conn: Option<Conn>,
    /// The idle list to give the connection back to, when it may be reused.
    checkin: Option<(Arc<Lists>, usize)>,
}

impl UpstreamBody {
    /// The body is over: the connection goes back to its idle list, unless the
    /// upstream sent more than the response (which nobody asked for).
    fn finish(&mut self) {
        self.state = State::Done;
        if let (Some(conn), Some((lists, worker))) = (self.conn.take(), self.checkin.take())
            && conn.buf.is_empty()
        {
            lists.checkin(worker, conn);
        }
    }

    fn fail(&mut self, error: H1Error) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.state = State::Done;
        self.conn = None;
        self.checkin = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                State::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(conn.buf.len());
                        let data = conn.buf.split_to(n).freeze();
                        *left -= n as u64;
                        if *left == 0 {
                            // With its last bytes: the reader may never poll again.
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Chunked(decoder) => match decoder.decode(&mut conn.buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return this.fail(e.into()),
                },
                State::Close => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            let want = match this.state {
                State::Length(left) => usize::try_from(left).unwrap_or(usize::MAX),
                _ => READ_MIN,
            };
            match ready!(conn.poll_read_more(cx, want)) {
                Ok(0) if matches!(this.state, State::Close) => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(H1Error::Closed),
                Ok(_) => {}
                Err(e) => return this.fail(H1Error::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{Empty, Full, StreamBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::config::Upstream;
    use http::Request;

    async fn listen() -> (TcpListener, H1Pool) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Upstream {
            authority: listener.local_addr().unwrap().to_string().parse().unwrap(),
        };
        let pool = H1Pool::new(
            Connector::new(&upstream, Duration::from_secs(5)),
            Duration::from_secs(90),
        );
        (listener, pool)
    }

    /// Reads one request head (to its empty line) from `sock`; `None` at the end of
    /// the stream.
    async fn read_request(sock: &mut TcpStream) -> Option<String> {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            if sock.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            got.push(byte[0]);
        }
        Some(String::from_utf8(got).unwrap())
    }

    fn get(path: &str) -> Request<Empty<Bytes>> {
        Request::get(path)
            .header("host", "a.test")
            .body(Empty::new())
            .unwrap()
    }

    async fn text(response: Response<UpstreamBody>) -> Result<String, H1Error> {
        let body = response.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    fn idle(pool: &H1Pool) -> usize {
        pool.lists.list(workers::worker_index()).len()
    }

    #[tokio::test]
    async fn a_connection_serves_request_after_request() {
        let (listener, pool) = listen().await;
        let upstream = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut heads = Vec::new();
            for reply in [
                &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"[..],
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n3\r\ntwo\r\n0\r\nT: x\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\n\r\n",
            ] {
                heads.push(read_request(&mut sock).await.unwrap());
                sock.write_all(reply).await.unwrap();
            }
            // The pool never opened a second connection.
            heads
        });
        let first = pool.request(get("http://up/one?x=1")).await.unwrap();
        assert_eq!(text(first).await.unwrap(), "one");
        assert_eq!(idle(&pool), 1);
        let second = pool.request(get("/two")).await.unwrap();
        assert_eq!(second.status(), StatusCode::OK);
        assert_eq!(second.headers()["x-a"], "b");
        assert_eq!(text(second).await.unwrap(), "two");
        let third = pool.request(get("/three")).await.unwrap();
        assert_eq!(third.status(), StatusCode::NO_CONTENT);
        assert!(third.body().is_end_stream());
        assert_eq!(idle(&pool), 1);
        let heads = upstream.await.unwrap();
        assert_eq!(heads[0], "GET /one?x=1 HTTP/1.1\r\nhost: a.test\r\n\r\n");
        assert!(heads[1].starts_with("GET /two HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn a_pooled_connection_closed_while_idle_is_replaced_for_the_retry() {
        let (listener, pool) = listen().await;
        let upstream = tokio::spawn(async move {
            let mut connections = 0;
            // The first connection answers once and is closed by the upstream right
            // after the pool took the request off it, before the next request: the
            // race the retry is for. The second answers normally.
            for reply in [
                &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"[..],
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb",
            ] {
                let (mut sock, _) = listener.accept().await.unwrap();
                connections += 1;
                read_request(&mut sock).await.unwrap();
                sock.write_all(reply).await.unwrap();
                if connections == 1 {
                    // Hold it open until the second request is on its way, then close
                    // without answering it.
                    let _ = read_request(&mut sock).await;
                }
            }
            connections
        });
        assert_eq!(
            text(pool.request(get("/")).await.unwrap()).await.unwrap(),
            "a"
        );
        assert_eq!(
            text(pool.request(get("/")).await.unwrap()).await.unwrap(),
            "b"
        );
        assert_eq!(upstream.await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_post_is_not_sent_twice() {
        let (listener, pool) = listen().await;
        let upstream = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            read_request(&mut sock).await.unwrap();
            sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
                .await
                .unwrap();
            // Reads the POST, then closes without an answer.
            read_request(&mut sock).await.unwrap();
        });
        assert_eq!(
            text(pool.request(get("/")).await.unwrap()).await.unwrap(),
            "a"
        );
        let post = Request::post("/").body(Empty::<Bytes>::new()).unwrap();
        let Err(err) = pool.request(post).await else {
            panic!("a POST was sent again");
        };
        assert!(matches!(err, H1Error::Closed | H1Error::Io(_)), "{err:?}");
        upstream.await.unwrap();
    }

    #[tokio::test]
    async fn bodies_go_up_with_their_length_or_chunked() {
        let (listener, pool) = listen().await;
        let upstream = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            for expect in [&b"hello"[..], b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"] {
                let head = read_request(&mut sock).await.unwrap();
                let mut body = vec![0; expect.len()];
                sock.read_exact(&mut body).await.unwrap();
                got.push((head, body));
                sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await
                    .unwrap();
            }
            got
        });
        let sized = Request::post("/")
            .body(Full::new(Bytes::from("hello")))
            .unwrap();
        assert_eq!(text(pool.request(sized).await.unwrap()).await.unwrap(), "");
        let frames = futures_util::stream::iter([
            Ok::<_, Infallible>(Frame::data(Bytes::from("hello"))),
            Ok(Frame::data(Bytes::from(" world"))),
        ]);
        let chunked = Request::put("/").body(StreamBody::new(frames)).unwrap();
        assert_eq!(
            text(pool.request(chunked).await.unwrap()).await.unwrap(),
            ""
        );
        let got = upstream.await.unwrap();
        assert!(
            got[0].0.ends_with("content-length: 5\r\n\r\n"),
            "{}",
            got[0].0
        );
        assert_eq!(got[0].1, b"hello");
        assert!(
            got[1].0.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{}",
            got[1].0
        );
        assert_eq!(got[1].1, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    }

    #[tokio::test]
    async fn an_early_answer_ends_the_upload_and_the_connection() {
        let (listener, pool) = listen().await;
        let upstream = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            read_request(&mut sock).await.unwrap();
            sock.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!")
                .await
                .unwrap();
            // Whatever else arrives is drained until the pool closes the connection.
            let mut rest = Vec::new();
            sock.read_to_end(&mut rest).await.unwrap();
        });
        // A body that never ends: only the early answer can finish this request.
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        let body = StreamBody::new(tokio_stream_from(rx));
        let req = Request::post("/").body(body).unwrap();
        let response = pool.request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(text(response).await.unwrap(), "big!");
        assert_eq!(idle(&pool), 0);
        upstream.await.unwrap();
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn lengths_that_disagree_retire_the_connection() {
        let (listener, pool) = listen().await;
        let upstream = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            read_request(&mut sock).await.unwrap();
            // Read as chunked ("ab"); a Content-Length reader would have seen "1\r\na".
            sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n").await.unwrap();
            read_request(&mut sock).await
        });
        let response = pool.request(get("/")).await.unwrap();
        assert!(!response.headers().contains_key("content-length"));
        assert_eq!(text(response).await.unwrap(), "ab");
        assert_eq!(idle(&pool), 0);
        // The pool closed it instead of sending another request on it.
        assert_eq!(upstream.await.unwrap(), None);
    }

    #[tokio::test]
    async fn bytes_past_the_response_retire_the_connection() {
        let (listener, pool) = listen().await;
        let upstream = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            read_request(&mut sock).await.unwrap();
            sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil").await.unwrap();
            read_request(&mut sock).await
        });
        assert_eq!(
            text(pool.request(get("/")).await.unwrap()).await.unwrap(),
            "a"
        );
        assert_eq!(idle(&pool), 0);
        assert_eq!(upstream.await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_body_until_close_and_a_cut_body() {
        let (listener, pool) = listen().await;
        let upstream = tokio::spawn(async move {
            for reply in [
                &b"HTTP/1.1 200 OK\r\n\r\nuntil the end"[..],
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\ncut",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            ] {
                let (mut sock, _) = listener.accept().await.unwrap();
                read_request(&mut sock).await.unwrap();
                sock.write_all(reply).await.unwrap();
            }
        });
        assert_eq!(
            text(pool.request(get("/")).await.unwrap()).await.unwrap(),
            "until the end"
        );
        for _ in 0..3 {
            let response = pool.request(get("/")).await.unwrap();
            assert!(text(response).await.is_err());
        }
        assert!(matches!(pool.request(get("/")).await, Err(H1Error::Closed)));
        assert!(matches!(
            pool.request(get("/")).await,
            Err(H1Error::Wire(WireError::TransferCoding))
        ));
        assert_eq!(idle(&pool), 0);
        upstream.await.unwrap();
    }

    #[tokio::test]
    async fn a_head_past_the_limit_is_refused() {
        let (listener, pool) = listen().await;
        let upstream = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            read_request(&mut sock).await.unwrap();
            let mut head = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
            head.resize(MAX_HEAD + 4096, b'a');
            let _ = sock.write_all(&head).await;
        });
        assert!(matches!(
            pool.request(get("/")).await,
            Err(H1Error::Wire(WireError::HeadTooLarge))
        ));
        upstream.await.unwrap();
    }
}
