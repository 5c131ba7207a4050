//! Forwarding one request to a route's upstreams and its response back: rewrite the
//! head for the next hop, pick an endpoint, send with the response-header timeout,
//! retry once on another endpoint when the connection could not be made, and stream
//! both bodies through untouched.
//!
//! Decisions:
//! - **Host**: the upstream gets the host the client asked for, as written (port and
//!   case kept), like Caddy's default and nginx's `proxy_set_header Host $http_host`:
//!   as the `Host` header to HTTP/1.1 upstreams (also for HTTP/2 clients, whose
//!   `:authority` becomes `Host`), as `:authority` to h2c upstreams. Virtual hosts behind
//!   the proxy keep working and absolute URLs they build point at the public name.
//! - HTTP/1.1 upstreams always get HTTP/1.1 (keep-alive, chunked bodies), even from
//!   HTTP/1.0 or HTTP/2 clients; h2c upstreams get HTTP/2.
//! - `upstream_timeout` bounds each attempt from sending to the response headers
//!   (connecting included); the body afterwards may take as long as it takes.
//! - A connect timeout answers 504 (as nginx does); refused, reset, DNS failure: 502.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use super::balance::Balancer;
use super::body::RetryBody;
use super::error::ProxyError;
use super::h1pool::UpgradedUpstream;
use super::headers::{Forwarding, apply_edits, http1_head, strip_hop_by_hop};
use super::pool::Outgoing;
use super::{Body, ConnInfo, upgrade};
use crate::access_log::UpstreamTrace;
use crate::config::UpstreamProtocol;
use crate::report::Chain;
use crate::request_id::NewId;
use crate::router::Filters;

/// The request head as it goes upstream, kept so a retry can send it again.
enum Head {
    /// To an HTTP/1.1 upstream: written once, up to its framing
    /// ([`super::headers::http1_head`]).
    Http1 {
        method: Method,
        head: Vec<u8>,
        /// The request asks for a protocol upgrade.
        upgrade: bool,
    },
    /// To an h2c upstream: hyper's client writes it.
    H2c {
        method: Method,
        path: PathAndQuery,
        headers: HeaderMap,
        /// `:authority`: the client's host.
        authority: Option<Authority>,
    },
}

impl Head {
    /// The request for one attempt. `last` hands the head over instead of copying it:
    /// no retry will need it again.
    fn request(&mut self, endpoint_authority: &Authority, body: RetryBody, last: bool) -> Outgoing {
        match self {
            Head::Http1 {
                method,
                head,
                upgrade,
            } => Outgoing::Http1 {
                method: method.clone(),
                head: if last {
                    std::mem::take(head)
                } else {
                    head.clone()
                },
                upgrade: *upgrade,
                body,
            },
            Head::H2c {
                method,
                path,
                headers,
                authority,
            } => {
                let authority = authority.clone().unwrap_or(endpoint_authority.clone());
                let uri = Uri::builder()
                    .scheme(Scheme::HTTP)
                    .authority(authority)
                    .path_and_query(path.clone())
                    .build()
                    // All three parts are already-parsed values, so this cannot fail;
                    // should it ever, the client refuses the relative URI and the
                    // request gets a 502 rather than the proxy a panic.
                    .unwrap_or_default();
                let mut req = Request::new(body);
                *req.method_mut() = method.clone();
                *req.uri_mut() = uri;
                *req.version_mut() = Version::HTTP_2;
                *req.headers_mut() = if last {
                    std::mem::take(headers)
                } else {
                    headers.clone()
                };
                Outgoing::H2c(req)
            }
        }
    }
}

/// Who sent a request, as the forwarding headers will say it.
#[derive(Debug, Clone)]
pub(super) struct Sender {
    /// The peer is in `listen.trusted_proxies`: its forwarding headers are believed.
    pub trusted: bool,
    /// The client after trusted proxies ([`super::headers::client_address`]).
    pub client: std::net::IpAddr,
    /// The request's id when portico made it: it replaces the client's upstream.
    pub request_id: Option<NewId>,
}

/// What the access log wants to know of a forwarded request, when it is on.
pub(super) struct Traced<'a> {
    /// Request body bytes read, when the request has a body.
    pub bytes_in: Option<Arc<AtomicU64>>,
    /// The upstream tried last, and its time to the response head.
    pub upstream: &'a mut UpstreamTrace,
}

/// The limits of one forwarded request: its route's, else `[limits]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bounds {
    /// From sending to the response head, per attempt.
    pub upstream_timeout: Duration,
    /// The request body's largest size: past it the request is aborted with 413.
    pub max_body_bytes: Option<u64>,
}

/// What a Gateway API rule changes in a forwarded request and its response.
pub(super) struct Rewrites {
    /// Header edits both ways, and the Host sent upstream.
    pub filters: Arc<Filters>,
    /// The path and query sent upstream, when the rule rewrites the path.
    pub path: Option<PathAndQuery>,
}

/// Forwards `req` (routed to `balancer`) and returns the upstream's response.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward(
    mut req: Request<Incoming>,
    conn: &ConnInfo,
    sender: Sender,
    original_host: &str,
    balancer: Arc<Balancer>,
    bounds: Bounds,
    rewrites: Option<Rewrites>,
    mut traced: Option<Traced<'_>>,
) -> Result<Response<Body>, ProxyError> {
    let upstream_timeout = bounds.upstream_timeout;
    let protocol = balancer.protocol;
    let upgrade = match protocol {
        UpstreamProtocol::Http1 => upgrade::requested(&req),
        // An upgrade cannot cross into HTTP/2: the request goes as a plain one.
        UpstreamProtocol::H2c => None,
    };
    // Taken before the request is taken apart: it is the client's connection, handed
    // over by hyper once our 101 is written.
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    let forwarding = Forwarding {
        peer: conn.peer.ip(),
        trusted: sender.trusted,
        client: sender.client,
        proto: conn.proto,
        original_host,
        version: parts.version,
        request_id: sender.request_id,
    };
    // `X-Forwarded-Host` keeps the client's host; a `URLRewrite` changes only the one
    // the upstream is asked for.
    let upstream_host = rewrites
        .as_ref()
        .and_then(|r| r.filters.hostname.as_deref())
        .unwrap_or(original_host);
    // After portico's own handling, the route's edits have the last word, except on
    // the headers `apply_edits` leaves alone (the Host among them).
    let edits = rewrites
        .as_ref()
        .map(|r| &r.filters.request_headers)
        .filter(|e| !e.is_empty());
    let path = match rewrites.as_ref().and_then(|r| r.path.clone()) {
        Some(path) => path,
        None => parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    let mut head = match protocol {
        UpstreamProtocol::Http1 => Head::Http1 {
            // The client's host, as written; an HTTP/2 client's `:authority` too.
            head: http1_head(
                &parts.method,
                path.as_str(),
                headers,
                &forwarding,
                edits,
                upstream_host,
                upgrade.as_ref(),
            ),
            method: parts.method,
            upgrade: upgrade.is_some(),
        },
        UpstreamProtocol::H2c => {
            forwarding.insert(&mut headers);
            if let Some(edits) = edits {
                apply_edits(&mut headers, edits);
            }
            // In HTTP/2 the host travels as `:authority`; a `Host` header next to it
            // would be redundant at best and contradictory at worst.
            headers.remove(header::HOST);
            Head::H2c {
                method: parts.method,
                path,
                headers,
                authority: upstream_host.parse::<Authority>().ok(),
            }
        }
    };

    let Some(mut index) = balancer.pick() else {
        return Err(ProxyError::NoUpstream);
    };
    let mut body = body;
    let mut retried = false;
    let response = loop {
        let endpoint = balancer.endpoint(index).clone();
        // A retry is possible only once, and only with another upstream to go to.
        let last = retried || balancer.pick_after(index).is_none();
        let (retry_body, reclaim) = if last {
            (RetryBody::direct(body), None)
        } else {
            let (retry_body, reclaim) = RetryBody::new(body);
            (retry_body, Some(reclaim))
        };
        let retry_body = retry_body
            .counting(traced.as_ref().and_then(|t| t.bytes_in.clone()))
            .limited(bounds.max_body_bytes);
        let request = head.request(&endpoint.upstream.authority, retry_body, last);
        let sent_at = traced.as_mut().map(|t| {
            // A clone of the parsed authority: a reference count, not a new string.
            t.upstream.upstream = Some(endpoint.upstream.authority.clone());
            Instant::now()
        });
        let result = tokio::time::timeout(upstream_timeout, endpoint.send(request)).await;
        match result {
            Ok(Ok(response)) => {
                endpoint.mark_ok();
                if let (Some(t), Some(at)) = (traced.as_mut(), sent_at) {
                    t.upstream.head = Some(at.elapsed());
                }
                break response;
            }
            Err(_elapsed) => {
                // Slow is not down: no cool-down, and no retry (the upstream may be
                // working on it; replaying could do the work twice).
                let err = ProxyError::Timeout {
                    upstream: endpoint.upstream.to_string(),
                    after: upstream_timeout,
                };
                tracing::warn!(error = %Chain(&err), "upstream timeout");
                return Err(err);
            }
            Ok(Err(source)) => {
                let err = ProxyError::from_client(endpoint.upstream.to_string(), source);
                if err.is_client() {
                    tracing::debug!(error = %Chain(&err), "request body failed; upstream request aborted");
                    return Err(err);
                }
                if !err.is_connect() {
                    tracing::warn!(error = %Chain(&err), "upstream request failed");
                    return Err(err);
                }
                endpoint.mark_failed();
                let retry = if last {
                    None
                } else {
                    balancer.pick_after(index)
                };
                // Nothing was sent, so the body is still whole unless hyper polled it.
                match (retry, reclaim.and_then(|r| r.take())) {
                    (Some(next), Some(unsent)) => {
                        tracing::warn!(error = %Chain(&err), "upstream connect failed; trying the next upstream");
                        index = next;
                        body = unsent;
                        retried = true;
                    }
                    _ => {
                        tracing::warn!(error = %Chain(&err), "upstream connect failed");
                        return Err(err);
                    }
                }
            }
        }
    };

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let name = balancer.endpoint(index).upstream.to_string();
        let upstream_io = response
            .extensions()
            .get::<UpgradedUpstream>()
            .and_then(UpgradedUpstream::take);
        return match (client_upgrade, upstream_io) {
            (Some(client), Some(upstream_io)) => {
                Ok(upgrade::join(client, response, upstream_io, name))
            }
            _ => {
                let err = ProxyError::UnexpectedUpgrade { upstream: name };
                tracing::warn!(error = %Chain(&err), "upstream protocol error");
                Err(err)
            }
        };
    }
    let (parts, body) = response.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    if let Some(r) = &rewrites {
        apply_edits(&mut headers, &r.filters.response_headers);
    }
    // A fresh response: the upstream response's extensions (connection info) are of no
    // concern to the client connection.
    let mut out = Response::new(body);
    *out.status_mut() = parts.status;
    *out.headers_mut() = headers;
    Ok(out)
}
