//! Protocol upgrades (WebSocket and any other `Upgrade`) over HTTP/1.1: after the
//! upstream answers 101, the client's connection (handed over by hyper) and the
//! upstream's (handed over by `h1pool`, with any bytes read past the 101) are joined
//! byte for byte until either side closes.
//!
//! Only HTTP/1.1 clients to HTTP/1.1 upstreams: HTTP/2 has no `Upgrade` (its WebSocket
//! uses extended CONNECT, RFC 8441, which the listener does not enable).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::headers::{connection_has, restore_upgrade, strip_hop_by_hop};
use crate::body::Body;
use crate::report::Chain;

/// The `Upgrade` value of a request that asks for one (`Connection: upgrade` and an
/// `Upgrade` header, HTTP/1.1 only). A request offering `h2c` is served as a plain
/// request: an upgrade to cleartext HTTP/2 is between the client and the hop it talks
/// to, and passed on it would let a client speak HTTP/2 to the upstream past the
/// proxy's rules (h2c smuggling).
pub(super) fn requested<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != http::Version::HTTP_11 {
        return None;
    }
    let headers = req.headers();
    if !connection_has(headers, "upgrade") {
        return None;
    }
    let value = headers.get(header::UPGRADE)?;
    let offers_h2c = value.to_str().map_or(true, |v| {
        v.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c"))
    });
    if offers_h2c {
        return None;
    }
    Some(value.clone())
}

/// Answers the client with the upstream's 101 and spawns the task that joins both
/// upgraded connections.
pub(super) fn join<B>(
    client: OnUpgrade,
    mut upstream: Response<B>,
    upstream_io: (TcpStream, Bytes),
    name: String,
) -> Response<Body> {
    let mut headers = std::mem::take(upstream.headers_mut());
    let protocol = headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut headers);
    if let Some(protocol) = protocol {
        restore_upgrade(&mut headers, protocol);
    }
    tokio::spawn(async move {
        // The client's side is ready only once hyper has written our 101, after
        // `serve` returned: hence a task.
        let client_io = match client.await {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!(upstream = %name, error = %Chain(&e), "upgrade did not complete");
                return;
            }
        };
        let mut client_io = TokioIo::new(client_io);
        let (mut upstream_io, early) = upstream_io;
        // What the upstream sent right behind its 101 was read with it.
        if !early.is_empty()
            && let Err(e) = client_io.write_all(&early).await
        {
            tracing::debug!(upstream = %name, error = %Chain(&e), "upgraded connection ended with an error");
            return;
        }
        match tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io).await {
            Ok((up, down)) => {
                tracing::debug!(upstream = %name, bytes_up = up, bytes_down = down, "upgraded connection closed");
            }
            Err(e) => {
                tracing::debug!(upstream = %name, error = %Chain(&e), "upgraded connection ended with an error");
            }
        }
    });
    let mut response = Response::new(crate::body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *response.headers_mut() = headers;
    response
}
