//! The proxy: everything a request meets after the listener has decoded it, up to the
//! response it gets back. [`Proxy::serve`] is the one entry point; the listener calls it
//! once per request, over HTTP/1.1 or HTTP/2.
//!
//! The request flows through small layers, each in its own module:
//!
//! ```text
//! Proxy::serve ─ router (host, then longest prefix and a rule's conditions; 400/421/404)
//!      │          ├─ respond route: fixed status and body
//!      │          ├─ redirect route: Location from the rule (rule)
//!      │          └─ split route: one backend by weight, then as above or below
//!      ▼
//! forward ─ headers (hop-by-hop out, X-Forwarded-* and Via in)
//!      │  ─ balance (round robin, skip cooling-down endpoints, one retry)
//!      │  ─ pool (one pooled client per upstream; cool-down)
//!      │      ├─ h1pool (HTTP/1.1, in the request's task; wire format: h1codec)
//!      │      └─ connect (dial the one upstream, within its connect timeout)
//!      │  ─ body (request body reclaimable until first polled, for that retry)
//!      ▼
//! upstream response ─ headers (hop-by-hop out) ─ streamed back
//!                   └─ 101: upgrade joins both connections
//! error ─ ProxyError → 502 / 504 with a short text body
//! ```
//!
//! The routing table lives in an `ArcSwap`: a reload ([`Proxy::update`]) builds a new
//! one and swaps it in; requests already past routing finish with the route they got,
//! and no request ever waits on a lock. Endpoints (connection pools and health) are
//! shared between the old and new tables when an upstream stays.

mod balance;
mod body;
mod connect;
mod error;
mod forward;
pub(crate) mod h1codec;
mod h1pool;
pub(crate) mod headers;
mod pool;
pub(crate) mod rule;
mod upgrade;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::header;
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::access_log::{self, AccessLog, Pending, Record};
use crate::body::{Body, text};
use crate::config::{Cidr, Config, HostPattern, LogFormat, UpstreamProtocol};
use crate::metrics::{Metrics, SiteCounters};
use crate::report::Chain;
use crate::request_id;
use crate::router::{Action, Head, Listener, RouteError, Router, request_host};
use crate::tls::resolver::site_id;
use balance::Balancer;
use pool::Pools;

/// What the listener knows about the client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address: the TCP peer, or the source address a trusted load
    /// balancer's PROXY protocol header gave.
    pub peer: SocketAddr,
    /// `"https"` on the TLS listener; becomes `X-Forwarded-Proto`.
    pub proto: &'static str,
    /// Host patterns of the certificate this connection was handshaken with (the site's
    /// hosts). A request whose host they do not cover gets 421: HTTP/2 clients reuse a
    /// connection for every name its certificate covers, and only for those.
    /// `None` = no TLS (tests, plain listeners): no such check.
    pub cert_hosts: Option<Arc<[HostPattern]>>,
    /// The TLS version the handshake chose (`TLSv1.2`, `TLSv1.3`), for the access log;
    /// `None` without TLS.
    pub tls_version: Option<&'static str>,
    /// The SNI name the client sent, for the access log.
    pub sni: Option<Arc<str>>,
    /// The access log's text of what does not change on the connection, made for its
    /// first logged request (`LogText::default()` when the connection is made).
    pub log_text: LogText,
}

/// The parts of a text access log line that repeat on every request of one connection,
/// formatted once: ` site=… client=…` (for the site of the last request: HTTP/2
/// clients reuse a connection for every site its certificate covers) and
/// ` tls=… sni=…`.
#[derive(Debug, Default)]
pub struct LogText {
    head: Mutex<Option<SiteHead>>,
    tail: OnceLock<Arc<[u8]>>,
}

/// A site, a client and the ` site=… client=…` made for them.
type SiteHead = (Arc<str>, IpAddr, Arc<[u8]>);

impl Clone for LogText {
    /// A cache: a copy starts empty.
    fn clone(&self) -> LogText {
        LogText::default()
    }
}

impl LogText {
    /// ` site=… client=…` for `site` and `client`, made again only when either changed.
    fn head(&self, site: &Arc<str>, client: IpAddr) -> Arc<[u8]> {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        match &*head {
            Some((s, c, text)) if Arc::ptr_eq(s, site) && *c == client => text.clone(),
            _ => {
                let text: Arc<[u8]> = access_log::text_head(Some(site), client).into();
                *head = Some((site.clone(), client, text.clone()));
                text
            }
        }
    }

    /// ` tls=… sni=…` for `conn`.
    fn tail(&self, conn: &ConnInfo) -> Arc<[u8]> {
        self.tail
            .get_or_init(|| access_log::text_tail(conn.tls_version, conn.sni.as_deref()).into())
            .clone()
    }
}

impl ConnInfo {
    /// The listener the connection came in on, by its protocol.
    pub(crate) fn listener(&self) -> Listener {
        match self.proto {
            "https" => Listener::Tls,
            _ => Listener::Plain,
        }
    }
}

/// One config's routing table and the limits that apply to forwarding.
struct Table {
    router: Router<Arc<Balancer>>,
    upstream_timeout: Duration,
    /// `portico_requests_total`: one per site, indexed like the config's (and the
    /// router's) sites, so counting a response is one atomic add and no lookup.
    counters: Vec<Arc<SiteCounters>>,
    /// Requests whose host names no site.
    unmatched: Arc<SiteCounters>,
    /// `listen.trusted_proxies`: peers whose forwarding headers are believed.
    trusted_proxies: Vec<Cidr>,
    /// `log.access`: the format of access log lines, `None` when off.
    access: Option<LogFormat>,
    /// Site ids as the access log names them, indexed like `counters`.
    site_names: Vec<Arc<str>>,
}

impl Table {
    /// The access log's name of the site `raw_host` names.
    fn site_name(&self, raw_host: Option<&str>) -> Option<Arc<str>> {
        self.router
            .site_of(raw_host)
            .and_then(|i| self.site_names.get(i).cloned())
    }

    /// The counters of the site `raw_host` names (`site=""` when none).
    fn counters_for(&self, raw_host: Option<&str>) -> &SiteCounters {
        match self.router.site_of(raw_host) {
            Some(i) => &self.counters[i],
            None => &self.unmatched,
        }
    }
}

/// The request path after TLS: routing and forwarding.
pub struct Proxy {
    table: ArcSwap<Table>,
    pools: Pools,
    metrics: Arc<Metrics>,
    access_log: Arc<AccessLog>,
}

impl Proxy {
    /// A proxy with metrics of its own (tests); the server uses [`Proxy::with_metrics`].
    pub fn new(config: &Config) -> Proxy {
        Proxy::with_metrics(config, Arc::new(Metrics::new()))
    }

    /// A proxy that counts its responses by site and status in `metrics`.
    pub fn with_metrics(config: &Config, metrics: Arc<Metrics>) -> Proxy {
        let pools = Pools::default();
        let table = build(config, &pools, &metrics);
        Proxy {
            table: ArcSwap::from_pointee(table),
            pools,
            access_log: Arc::new(AccessLog::stdout(metrics.clone())),
            metrics,
        }
    }

    /// Waits, up to `deadline`, until the access log lines of finished requests are
    /// written (at shutdown).
    pub async fn flush_access_log(&self, deadline: Duration) {
        self.access_log.drain(deadline).await;
    }

    /// Swaps in a new config's sites and routes. Pools (idle connections, health) of
    /// upstreams that remain are kept; requests in flight finish on the old routes.
    pub fn update(&self, config: &Config) {
        let table = build(config, &self.pools, &self.metrics);
        // The old table stays alive in requests that loaded it; its endpoints that the
        // new one does not use close their pools when the last of those finishes.
        self.table.store(Arc::new(table));
        self.pools.prune();
    }

    /// Whether port 80 routes the requests for `raw_host` rather than redirecting them
    /// to https: its site is served without TLS, or has a route for port 80.
    pub(crate) fn serves_port_80(&self, raw_host: Option<&str>) -> bool {
        self.table.load().router.serves_port_80(raw_host)
    }

    /// Handles one request completely. Never panics on network input and never fails:
    /// errors become responses (400, 421, 404, 502, 504).
    pub async fn serve(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<Body> {
        let request_id = request_id::of(req.headers());
        let raw_host = request_host(&req).map(str::to_owned);
        // Sends its line with status 499 if this future is dropped before the head.
        let mut pending = Pending::default();
        // The table guard is dropped before any await: a guard held across a slow
        // upstream would pin the old table and its pools through reloads.
        let (balancer, bounds, counters, sender, rewrites) = {
            let table = self.table.load();
            let trusts = |ip| table.trusted_proxies.iter().any(|c: &Cidr| c.contains(ip));
            let peer = conn.peer.ip();
            let client = headers::client_address(req.headers(), peer, trusts);
            if let Some(format) = table.access {
                let record = Record {
                    format,
                    time: SystemTime::now(),
                    start: Instant::now(),
                    site: None,
                    client,
                    method: req.method().clone(),
                    // Moved in below, not copied.
                    host: None,
                    // A reference count, not a copy; the line has the path without
                    // the query, which may carry tokens.
                    path: if req.uri().path().is_empty() {
                        None
                    } else {
                        req.uri().path_and_query().cloned()
                    },
                    version: req.version(),
                    status: 0,
                    bytes_in: (!req.body().is_end_stream()).then(|| Arc::new(AtomicU64::new(0))),
                    bytes_out: 0,
                    upstream: Default::default(),
                    tls: conn.tls_version,
                    sni: conn.sni.clone(),
                    request_id: request_id.clone(),
                    text_head: None,
                    text_tail: (format == LogFormat::Text).then(|| conn.log_text.tail(conn)),
                };
                pending = Pending::new(record, &self.access_log);
            }
            if let Err(refused) = framing(&req) {
                table
                    .counters_for(raw_host.as_deref())
                    .count(refused.status);
                let site = table.site_name(raw_host.as_deref());
                let response = error_response(refused.status, refused.message);
                return logged(pending, site, raw_host, response);
            }
            let listener = conn.listener();
            let matched = table.router.route(
                raw_host.as_deref(),
                &Head::of(&req, listener),
                conn.cert_hosts.as_deref(),
            );
            let m = match matched {
                Err(err) => {
                    // Errors are the rare path: a second host lookup finds the site.
                    table.counters_for(raw_host.as_deref()).count(err.status());
                    let site = table.site_name(raw_host.as_deref());
                    return logged(pending, site, raw_host, route_error(&err));
                }
                Ok(m) => m,
            };
            // A reference count, taken only where a line is written.
            let site = || table.site_names.get(m.site).cloned();
            let filters = m.route.filters.as_ref();
            let action = match &m.route.action {
                Action::Split(split) => split.pick(),
                action => action,
            };
            let balancer = match action {
                Action::Respond { status, body } => {
                    table.counters[m.site].count(*status);
                    let mut response = text(*status, body.clone());
                    if let Some(f) = filters {
                        headers::apply_edits(response.headers_mut(), &f.response_headers);
                    }
                    return logged(pending, site(), raw_host, response);
                }
                Action::Redirect(redirect) => {
                    let path = rule::target_path(
                        redirect.path.as_ref(),
                        &m.route.path,
                        m.route.matching,
                        &m.path,
                        req.uri().path(),
                    );
                    let response = rule::location(
                        redirect,
                        listener,
                        raw_host.as_deref(),
                        &path,
                        req.uri().query(),
                    )
                    .and_then(|location| redirect_response(redirect.status, location));
                    let mut response = response.unwrap_or_else(|err| rule_error(&err));
                    if let Some(f) = filters {
                        headers::apply_edits(response.headers_mut(), &f.response_headers);
                    }
                    table.counters[m.site].count(response.status());
                    return logged(pending, site(), raw_host, response);
                }
                // The router builds splits of fixed answers and proxies only.
                Action::Split(_) => {
                    table.counters[m.site].count(StatusCode::INTERNAL_SERVER_ERROR);
                    let response =
                        error_response(StatusCode::INTERNAL_SERVER_ERROR, "no valid backend");
                    return logged(pending, site(), raw_host, response);
                }
                Action::Proxy(balancer) => balancer,
            };
            if let Some(max) = m.route.limits.max_body_bytes
                // hyper's hint is the declared Content-Length.
                && http_body::Body::size_hint(req.body()).lower() > max
            {
                table.counters[m.site].count(StatusCode::PAYLOAD_TOO_LARGE);
                let response = error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is larger than this route allows",
                );
                return logged(pending, site(), raw_host, response);
            }
            // A rule's rewrites, worked out while the route is at hand: the request
            // in flight keeps only what it needs, not the table.
            let rewrites = match filters {
                None => None,
                Some(f) => {
                    let path = match &f.path {
                        None => Ok(None),
                        Some(rewrite) => {
                            let path = crate::router::rewrite_path(
                                rewrite,
                                &m.route.path,
                                m.route.matching,
                                &m.path,
                            );
                            rule::rewritten(&path, req.uri().query()).map(Some)
                        }
                    };
                    match path {
                        Ok(path) => Some(forward::Rewrites {
                            filters: f.clone(),
                            path,
                        }),
                        Err(err) => {
                            table.counters[m.site].count(err.status());
                            return logged(pending, site(), raw_host, rule_error(&err));
                        }
                    }
                }
            };
            if let Some(r) = pending.record() {
                r.site = site();
                if r.format == LogFormat::Text
                    && let Some(site) = &r.site
                {
                    r.text_head = Some(conn.log_text.head(site, client));
                }
            }
            let sender = forward::Sender {
                trusted: trusts(peer),
                client,
                request_id: request_id.new_id(),
            };
            let bounds = forward::Bounds {
                upstream_timeout: m
                    .route
                    .limits
                    .upstream_timeout
                    .unwrap_or(table.upstream_timeout),
                max_body_bytes: m.route.limits.max_body_bytes,
            };
            (
                balancer.clone(),
                bounds,
                table.counters[m.site].clone(),
                sender,
                rewrites,
            )
        };
        // `route` succeeded, so there is a host.
        // With the access log on, the host lives in the record (also for a request
        // dropped before its head) and forward borrows it from there: not copied.
        let mut own_host = Some(raw_host.unwrap_or_default());
        let (original_host, traced) = match pending.record() {
            Some(r) => {
                r.host = own_host.take();
                let Record {
                    host,
                    upstream,
                    bytes_in,
                    ..
                } = r;
                let traced = forward::Traced {
                    bytes_in: bytes_in.clone(),
                    upstream,
                };
                (host.as_deref().unwrap_or_default(), Some(traced))
            }
            None => (own_host.as_deref().unwrap_or_default(), None),
        };
        let response = match forward::forward(
            req,
            conn,
            sender,
            original_host,
            balancer,
            bounds,
            rewrites,
            traced,
        )
        .await
        {
            Ok(response) => response,
            Err(err) => {
                tracing::debug!(status = err.status().as_u16(), "proxy error answered");
                error_response(err.status(), err.public_message())
            }
        };
        // Counted when the head is ready, as access logs do; a body cut short later
        // does not change the status the client got.
        counters.count(response.status());
        pending.finish(response)
    }
}

/// `response`, with its access log line to come when the log is on.
fn logged(
    mut pending: Pending,
    site: Option<Arc<str>>,
    host: Option<String>,
    response: Response<Body>,
) -> Response<Body> {
    if let Some(record) = pending.record() {
        record.site = site;
        record.host = host;
    }
    pending.finish(response)
}

/// A request refused for its framing before routing.
struct Refused {
    status: StatusCode,
    message: &'static str,
}

/// RFC 9112 framing rules hyper leaves to the application. hyper already refuses a
/// `Transfer-Encoding` whose last coding is not `chunked`, and one on HTTP/1.0, and
/// drops a `Content-Length` next to it; what is left:
/// - more than one `Host` header: 400 (which one would the upstream believe?);
/// - a transfer coding other than one `chunked` (`gzip, chunked`): 501. Decoding it is
///   not portico's job, and passing it on after hyper de-chunked the body would change
///   what the body means.
fn framing<B>(req: &Request<B>) -> Result<(), Refused> {
    let headers = req.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err(Refused {
            status: StatusCode::BAD_REQUEST,
            message: "more than one Host header",
        });
    }
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|c| c.trim_ascii());
    match (codings.next(), codings.next()) {
        (None, _) => Ok(()),
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(Refused {
            status: StatusCode::NOT_IMPLEMENTED,
            message: "transfer codings other than chunked are not supported",
        }),
    }
}

fn build(config: &Config, pools: &Pools, metrics: &Metrics) -> Table {
    let connect_timeout = config.limits.upstream_connect_timeout;
    // Routes that share one upstream list (the Ingresses of one Service) share one
    // balancer: its endpoints are looked up once, not once per route.
    let mut shared: std::collections::HashMap<(usize, usize, UpstreamProtocol), Arc<Balancer>> =
        std::collections::HashMap::new();
    let router = Router::new(config, |upstreams, protocol| {
        let key = (upstreams.as_ptr() as usize, upstreams.len(), protocol);
        shared
            .entry(key)
            .or_insert_with(|| {
                let endpoints = upstreams
                    .iter()
                    .map(|u| pools.endpoint(u, protocol, connect_timeout))
                    .collect();
                Arc::new(Balancer::new(endpoints, protocol))
            })
            .clone()
    });
    Table {
        router,
        upstream_timeout: config.limits.upstream_timeout,
        counters: config
            .sites
            .iter()
            .map(|site| metrics.site_counters(&site_id(site)))
            .collect(),
        unmatched: metrics.unmatched_counters(),
        trusted_proxies: config.listen.trusted_proxies.clone(),
        access: config.log.access.then_some(config.log.format),
        site_names: config
            .sites
            .iter()
            .map(|site| Arc::from(site_id(site)))
            .collect(),
    }
}

fn rule_error(err: &rule::RuleError) -> Response<Body> {
    tracing::debug!(error = %Chain(err), "redirect or rewrite refused");
    error_response(err.status(), &err.to_string())
}

/// A `RequestRedirect`'s answer.
fn redirect_response(
    status: StatusCode,
    location: String,
) -> Result<Response<Body>, rule::RuleError> {
    let location = http::HeaderValue::try_from(location).map_err(|_| rule::RuleError::BadTarget)?;
    let mut response = text(status, "redirecting\n");
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

fn route_error(err: &RouteError) -> Response<Body> {
    tracing::debug!(error = %Chain(err), "request not routed");
    error_response(err.status(), &err.to_string())
}

/// A short text/plain answer that says which failure it was.
fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    text(status, format!("{message}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        Config::parse(Path::new("t.toml"), text).unwrap()
    }

    /// The endpoints (pools, health) the current table uses for `host`'s `/` route.
    fn endpoints(proxy: &Proxy, host: &str) -> Vec<Arc<pool::Endpoint>> {
        let table = proxy.table.load();
        let head = Request::get("/").body(()).unwrap();
        let matched = table
            .router
            .route(Some(host), &Head::of(&head, Listener::Tls), None)
            .unwrap();
        match &matched.route.action {
            Action::Proxy(balancer) => (0..2).map(|i| balancer.endpoint(i).clone()).collect(),
            _ => panic!("not a proxy route"),
        }
    }

    #[test]
    fn update_keeps_endpoints_of_upstreams_that_remain() {
        let proxy = Proxy::new(&config(
            "[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"keep:1\", \"drop:1\"]\n",
        ));
        let before = endpoints(&proxy, "a.test");
        let dropped = Arc::downgrade(&before[1]);
        before[0].mark_failed();
        proxy.update(&config(
            "[[site]]\nhosts = [\"b.test\"]\nupstreams = [\"new:1\", \"keep:1\"]\n",
        ));
        let after = endpoints(&proxy, "b.test");
        assert!(
            Arc::ptr_eq(&before[0], &after[1]),
            "pool of keep:1 was rebuilt"
        );
        assert!(after[1].is_cooling_down(), "health state was lost");
        drop(before);
        // The old table is gone (no request holds it), so drop:1's pool is closed.
        assert!(dropped.upgrade().is_none());
        // Another protocol is another pool.
        proxy.update(&config(
            "[[site]]\nhosts = [\"b.test\"]\nupstreams = [\"new:1\", \"keep:1\"]\nupstream_protocol = \"h2c\"\n",
        ));
        assert!(!Arc::ptr_eq(&after[1], &endpoints(&proxy, "b.test")[1]));
    }
}
