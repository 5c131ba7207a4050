//! Router: the step of the request path between the HTTP connection and the proxy. It
//! answers one question per request: which route of which site does this request go
//! to, given its Host (or HTTP/2 `:authority`) and its path?
//!
//! A [`Router`] is built once per config (at start and at every reload) and is then
//! read-only, so the proxy keeps it in an `ArcSwap` and a lookup takes no lock: two hash
//! lookups for the host (exact name, then the `*.suffix` wildcard one label up; with a
//! Gateway API wildcard, one more per label, then its catch-all) and a scan of the
//! site's routes, which the config already sorted longest path first.
//!
//! The router is generic over what a proxy route leads to (`T`), so it knows nothing of
//! upstream pools; [`crate::proxy`] supplies `T` when it builds the router.
//!
//! Decisions (docs/requests.md states them for users):
//! - the host comes from the request URI's authority when there is one (HTTP/2
//!   `:authority`, HTTP/1.1 absolute-form), else from the `Host` header, as RFC 9112
//!   §3.2.2 says; a request with neither gets 400;
//! - TOML route paths are plain byte prefixes of the normalised path ([`crate::uri::path`]: escapes of
//!   unreserved characters decoded, `//` merged, dot segments removed), like nginx's
//!   `location /prefix` without regex; a path with no safe normal form gets 400;
//! - Ingress paths match as the Ingress spec says ([`PathMatch`]): the longest path
//!   first, `Exact` before `Prefix` at one length, a `defaultBackend` last;
//! - a Host that no site covers and a Host that the connection's certificate does not
//!   cover both get 421, with bodies that say which;
//! - a Gateway API rule ([`RouteRule`]) adds conditions to the path: a route whose path
//!   matches but whose method, headers, query or listener do not is skipped, and the
//!   next route in order is tried (then 404). Routes without a rule pay one `Option`
//!   test and one listener comparison for it; precedence after the path: a method, more
//!   header matches, more query matches, then the order given (Gateway API);
//! - a route of [`ListenerScope::Http`] is served only on port 80, one of
//!   [`ListenerScope::Https`] only over TLS; [`ListenerScope::Any`] over TLS, and on
//!   port 80 only for a site served without TLS (a TLS site's routes are not exposed
//!   over plain HTTP because some other route of the site is);
//! - a header condition holds when the request's value, all its lines joined with `, `
//!   as RFC 9110 §5.3 combines them (`; ` for `Cookie`), is exactly the wanted value:
//!   a second line with another value makes it fail, whichever line an upstream reads;
//! - a query condition holds when the parameter is present and every occurrence of it
//!   has exactly the wanted value, names and values compared after percent-decoding
//!   (`+` stays `+`); an escape that does not decode never matches.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, header};

use crate::config::{
    Config, HeaderEdits, HostIndex, HostPattern, ListenerScope, PathMatch, PathRewrite, Redirect,
    RouteAction, RouteLimits, RouteRule, TlsSource, Upstream, UpstreamProtocol,
};
use crate::uri::host::normalize as normalize_host;
use crate::uri::path;

/// Why a request has no route. Each maps to a status and a body without internals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RouteError {
    #[error("missing Host header")]
    MissingHost,
    #[error("no site for this host")]
    NoSite,
    /// The Host names a site, but this connection was handshaken for another
    /// certificate: the client must open a new connection for this name.
    #[error("this connection's certificate does not cover this host")]
    NotCovered,
    #[error("no route for this path")]
    NoRoute,
    #[error("bad request path")]
    BadPath(#[source] path::PathError),
}

impl RouteError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            RouteError::MissingHost | RouteError::BadPath(_) => StatusCode::BAD_REQUEST,
            RouteError::NoSite | RouteError::NotCovered => StatusCode::MISDIRECTED_REQUEST,
            RouteError::NoRoute => StatusCode::NOT_FOUND,
        }
    }
}

/// What a matched route does.
#[derive(Debug)]
pub(crate) enum Action<T> {
    /// A fixed answer (`respond = { status, body }`), served as text/plain.
    Respond { status: StatusCode, body: Bytes },
    /// Forward to upstreams; `T` is what the proxy built for them.
    Proxy(T),
    /// Answer with a redirect (`RequestRedirect`).
    Redirect(Box<Redirect>),
    /// One of several backends per request, by weight.
    Split(Split<T>),
}

/// Weighted backends (an HTTPRoute rule's `backendRefs`), each an [`Action::Respond`]
/// or an [`Action::Proxy`].
///
/// The choice is deterministic and smooth rather than random: request `n` takes the
/// point `n × stride mod total` of the line where each backend owns a stretch as long
/// as its weight, with `stride` coprime to `total` and near `total / φ`. So every
/// `total` consecutive requests hit each backend exactly `weight` times, spread out
/// rather than in runs, and a pick is one atomic add and a short search, with no lock.
#[derive(Debug)]
pub(crate) struct Split<T> {
    /// (end of the backend's stretch, backend), stretches in order from 0; weight-0
    /// backends are left out, so they are never chosen.
    backends: Box<[(u64, Action<T>)]>,
    /// The sum of the weights, reduced by their greatest common divisor.
    total: u64,
    stride: u64,
    next: AtomicU64,
}

impl<T> Split<T> {
    /// `weighted`: (weight, backend); `None` when no weight is above 0.
    fn new(weighted: Vec<(u64, Action<T>)>) -> Option<Split<T>> {
        let divisor = weighted
            .iter()
            .map(|(w, _)| *w)
            .filter(|w| *w > 0)
            .reduce(gcd)?;
        let mut end = 0u64;
        let backends: Box<[(u64, Action<T>)]> = weighted
            .into_iter()
            .filter(|(w, _)| *w > 0)
            .map(|(w, action)| {
                end += w / divisor;
                (end, action)
            })
            .collect();
        let total = end;
        // Near total / φ: successive points land far apart (a low-discrepancy sequence).
        let mut stride = ((total as f64) * 0.618_033_988_75) as u64;
        stride = stride.clamp(1, total);
        while gcd(stride, total) != 1 {
            stride += 1;
        }
        Some(Split {
            backends,
            total,
            stride,
            next: AtomicU64::new(0),
        })
    }

    /// The backend for the next request.
    pub(crate) fn pick(&self) -> &Action<T> {
        // Relaxed: the counter only spreads load, it orders nothing.
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.total;
        let point = ((u128::from(n) * u128::from(self.stride)) % u128::from(self.total)) as u64;
        let i = self.backends.partition_point(|(end, _)| *end <= point);
        // `point < total`, the last stretch's end: `i` is in range.
        &self.backends[i.min(self.backends.len() - 1)].1
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[derive(Debug)]
pub(crate) struct Route<T> {
    /// The path, starting with `/`, and how it is matched.
    pub path: String,
    pub matching: PathMatch,
    pub action: Action<T>,
    /// Its own limits over `[limits]`.
    pub limits: RouteLimits,
    /// The listener it is served on.
    pub scope: ListenerScope,
    /// What a request must have besides the path; `None` (the file's and Ingresses'
    /// routes) costs the request path one test.
    conditions: Option<Box<Conditions>>,
    /// Header edits and rewrites; shared with the request in flight, which outlives
    /// the routing table's guard.
    pub filters: Option<Arc<Filters>>,
}

/// A route's conditions besides the path ([`RouteRule`]'s matches).
#[derive(Debug)]
struct Conditions {
    method: Option<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
    query: Vec<(String, String)>,
}

/// What a route changes on the way through ([`RouteRule`]'s filters).
#[derive(Debug)]
pub(crate) struct Filters {
    /// Applied to the request going upstream.
    pub request_headers: HeaderEdits,
    /// Applied to the answer going back.
    pub response_headers: HeaderEdits,
    /// The Host (`:authority`) sent upstream instead of the client's.
    pub hostname: Option<String>,
    /// The path sent upstream instead of the client's.
    pub path: Option<PathRewrite>,
}

#[derive(Debug)]
struct SiteRoutes<T> {
    /// In [`crate::config::Route::precedence`] order, so the first match is the one to
    /// take.
    routes: Vec<Route<T>>,
    /// The site is served without TLS: its [`ListenerScope::Any`] routes are served on
    /// port 80.
    plain: bool,
    /// Some route is served on port 80 ([`ListenerScope::Http`] or, for a plain site,
    /// [`ListenerScope::Any`]): port 80 routes the site's requests instead of
    /// redirecting them to https.
    on_port_80: bool,
}

/// The listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    /// Port 80, plain HTTP.
    Plain,
    /// The TLS listener.
    Tls,
}

/// What routing reads of a request besides its host.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head<'a> {
    pub method: &'a Method,
    /// As received; normalised for matching.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub listener: Listener,
}

impl<'a> Head<'a> {
    /// The parts of `req` routing reads.
    pub(crate) fn of<B>(req: &'a http::Request<B>, listener: Listener) -> Head<'a> {
        Head {
            method: req.method(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
            listener,
        }
    }
}

/// Host → site → longest path prefix, built from one [`Config`].
#[derive(Debug)]
pub(crate) struct Router<T> {
    sites: Vec<SiteRoutes<T>>,
    /// Host → index in `sites`.
    hosts: HostIndex<usize>,
}

/// A successful lookup: the route and its site.
#[derive(Debug)]
pub(crate) struct Matched<'r, T> {
    pub route: &'r Route<T>,
    /// The site's index in the config's `sites` (for per-site counters).
    pub site: usize,
    /// The normal form of the request's path, which the route matched (and which a
    /// path rewrite starts from).
    pub path: Cow<'r, str>,
}

impl<T> Router<T> {
    /// Builds the router for `config`; `make` turns each proxy route's upstreams into the
    /// `T` the proxy wants (called once per proxy route, in config order).
    pub(crate) fn new(
        config: &Config,
        mut make: impl FnMut(&[Upstream], UpstreamProtocol) -> T,
    ) -> Router<T> {
        let mut sites = Vec::with_capacity(config.sites.len());
        let mut hosts = HostIndex::with_capacity(config.sites.len());
        for (i, site) in config.sites.iter().enumerate() {
            for host in &site.hosts {
                // The config refuses a host listed by two sites; the index keeps the
                // first anyway, as `Config::site_for` does.
                hosts.insert_with(host, || i);
            }
            // The config sorts already; sorting again keeps the router correct on its
            // own. Stable: ties keep the order they were given in.
            let mut ordered: Vec<&crate::config::Route> = site.routes.iter().collect();
            ordered.sort_by_key(|r| r.precedence());
            let routes: Vec<Route<T>> = ordered
                .into_iter()
                .map(|route| Route {
                    path: route.path.clone(),
                    matching: route.matching,
                    limits: route.limits,
                    scope: route.rule.listener,
                    conditions: route.rule.has_conditions().then(|| {
                        Box::new(Conditions {
                            method: route.rule.method.clone(),
                            headers: route.rule.headers.clone(),
                            query: route.rule.query.clone(),
                        })
                    }),
                    filters: route
                        .rule
                        .has_filters()
                        .then(|| Arc::new(filters(&route.rule))),
                    action: action(&route.action, &mut make, true),
                })
                .collect();
            let plain = site.tls == TlsSource::Off;
            let on_port_80 = routes.iter().any(|r| match r.scope {
                ListenerScope::Http => true,
                ListenerScope::Any => plain,
                ListenerScope::Https => false,
            });
            sites.push(SiteRoutes {
                routes,
                plain,
                on_port_80,
            });
        }
        Router { sites, hosts }
    }

    /// Routes a request given its raw host (Host header or `:authority`, with any port),
    /// the rest of its head (its path normalised here for matching), and the host
    /// patterns of the connection's certificate (`None` when the connection has no TLS).
    pub(crate) fn route<'a>(
        &'a self,
        raw_host: Option<&str>,
        head: &Head<'a>,
        cert_hosts: Option<&[HostPattern]>,
    ) -> Result<Matched<'a, T>, RouteError> {
        let raw_host = raw_host.ok_or(RouteError::MissingHost)?;
        let host = normalize_host(raw_host);
        if host.is_empty() {
            return Err(RouteError::MissingHost);
        }
        let site = self.site_index(&host).ok_or(RouteError::NoSite)?;
        if let Some(patterns) = cert_hosts
            && !patterns.iter().any(|p| p.matches(&host))
        {
            return Err(RouteError::NotCovered);
        }
        let path = path::normalize(head.path).map_err(RouteError::BadPath)?;
        let routes = &self.sites[site];
        let route = routes
            .routes
            .iter()
            .find(|r| r.matching.matches(&r.path, &path) && r.takes(head, routes.plain))
            .ok_or(RouteError::NoRoute)?;
        Ok(Matched { route, site, path })
    }

    /// Whether port 80 routes the requests for a raw host rather than redirecting them
    /// to https: its site is served without TLS, or has a route for port 80.
    pub(crate) fn serves_port_80(&self, raw_host: Option<&str>) -> bool {
        self.site_of(raw_host)
            .is_some_and(|i| self.sites[i].on_port_80)
    }

    /// The index in the config's `sites` of the site a raw host names, if any (the
    /// lookup `route` starts with; for attributing a refused request to its site).
    pub(crate) fn site_of(&self, raw_host: Option<&str>) -> Option<usize> {
        self.site_index(&normalize_host(raw_host?))
    }

    /// Exact names win over wildcards, the longest wildcard over shorter ones, and any
    /// of them over the catch-all ([`HostIndex`]).
    fn site_index(&self, host: &str) -> Option<usize> {
        self.hosts.get(host).copied()
    }
}

/// The host a request is addressed to, as the client wrote it (port and case kept):
/// the URI authority when present (HTTP/2 `:authority`, HTTP/1.1 absolute-form), else
/// the `Host` header.
pub(crate) fn request_host<B>(req: &http::Request<B>) -> Option<&str> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.as_str());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|h| !h.is_empty())
}

/// The router's form of a route action; `make` builds each proxy action's `T`. A
/// split's backends are only fixed answers and proxies (`top` is false for them):
/// anything else there is a broken reference, answered 500.
fn action<T>(
    action: &RouteAction,
    make: &mut impl FnMut(&[Upstream], UpstreamProtocol) -> T,
    top: bool,
) -> Action<T> {
    let invalid = || Action::Respond {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        body: Bytes::from_static(b"no valid backend\n"),
    };
    match action {
        RouteAction::Respond { status, body } => Action::Respond {
            status: *status,
            body: Bytes::from(body.clone()),
        },
        RouteAction::Proxy {
            upstreams,
            protocol,
        } => Action::Proxy(make(upstreams, *protocol)),
        RouteAction::Redirect(redirect) if top => Action::Redirect(Box::new(redirect.clone())),
        RouteAction::Split(backends) if top => {
            let weighted = backends
                .iter()
                // Never chosen, so not built: no pool for a backend that gets nothing.
                .filter(|b| b.weight > 0)
                .map(|b| (u64::from(b.weight), self::action(&b.action, make, false)))
                .collect();
            Split::new(weighted).map_or_else(invalid, Action::Split)
        }
        RouteAction::Redirect(_) | RouteAction::Split(_) => invalid(),
    }
}

fn filters(rule: &RouteRule) -> Filters {
    let rewrite = rule.rewrite.as_ref();
    Filters {
        request_headers: rule.request_headers.clone(),
        response_headers: rule.response_headers.clone(),
        hostname: rewrite.and_then(|r| r.hostname.clone()),
        path: rewrite.and_then(|r| r.path.clone()),
    }
}

impl<T> Route<T> {
    /// Whether the route takes a request its path already matched: the listener
    /// serves it, and its conditions hold. `plain`: the site is served without TLS.
    fn takes(&self, head: &Head<'_>, plain: bool) -> bool {
        let listener = match (self.scope, head.listener) {
            (ListenerScope::Any | ListenerScope::Https, Listener::Tls) => true,
            (ListenerScope::Http, Listener::Plain) => true,
            (ListenerScope::Any, Listener::Plain) => plain,
            (ListenerScope::Http, Listener::Tls) | (ListenerScope::Https, Listener::Plain) => false,
        };
        listener && self.conditions.as_ref().is_none_or(|c| c.hold(head))
    }
}

impl Conditions {
    fn hold(&self, head: &Head<'_>) -> bool {
        self.method.as_ref().is_none_or(|m| m == head.method)
            && self
                .headers
                .iter()
                .all(|(name, want)| header_is(head.headers, name, want.as_bytes()))
            && self
                .query
                .iter()
                .all(|(name, want)| query_is(head.query, name, want))
    }
}

/// Whether the header `name` is present and its value is exactly `want`. A header on
/// several lines is one value, its lines joined with `, ` (RFC 9110 §5.3; `; ` for
/// `Cookie`, which HTTP/2 splits, RFC 9113 §8.2.3): a client cannot satisfy the
/// condition with one line and hand the upstream another.
fn header_is(headers: &HeaderMap, name: &HeaderName, want: &[u8]) -> bool {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return false;
    };
    let Some(second) = values.next() else {
        return first.as_bytes() == want;
    };
    let separator: &[u8] = if name == header::COOKIE { b"; " } else { b", " };
    let mut joined = Vec::with_capacity(want.len());
    joined.extend_from_slice(first.as_bytes());
    for v in std::iter::once(second).chain(values) {
        joined.extend_from_slice(separator);
        joined.extend_from_slice(v.as_bytes());
        if joined.len() > want.len() {
            return false;
        }
    }
    joined == want
}

/// Whether the query parameter `name` is present and every occurrence of it has
/// exactly the value `want`, both compared after percent-decoding. Every occurrence:
/// upstreams disagree on which of several they read (the first, the last, a list), so
/// the condition must hold for whichever it is. A pair whose name does not decode is
/// not `name` (no decoder reads it as `name` either); a value that does not decode is
/// not `want`.
fn query_is(query: Option<&str>, name: &str, want: &str) -> bool {
    let Some(query) = query else {
        return false;
    };
    let mut found = false;
    for pair in query.split('&') {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(n).as_deref() != Some(name.as_bytes()) {
            continue;
        }
        if percent_decode(v).as_deref() != Some(want.as_bytes()) {
            return false;
        }
        found = true;
    }
    found
}

/// `text` with its `%XX` escapes decoded (borrowed when it has none); `None` for a
/// malformed escape.
fn percent_decode(text: &str) -> Option<Cow<'_, [u8]>> {
    let bytes = text.as_bytes();
    if !bytes.contains(&b'%') {
        return Some(Cow::Borrowed(bytes));
    }
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            out.push((hi << 4 | lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(Cow::Owned(out))
}

/// The path a rewrite makes of `normal` (the normal form of the request's path) for a
/// route at `pattern`: the whole path for [`PathRewrite::Full`]; for
/// [`PathRewrite::Prefix`], the part the route matched, by path element, replaced
/// (`/foo` → `/bar`: `/foo/x` is `/bar/x`; `/foo` → `/`: `/foo/x` is `/x`, `/foo` is
/// `/`). Always starts with `/`.
pub(crate) fn rewrite_path(
    rewrite: &PathRewrite,
    pattern: &str,
    matching: PathMatch,
    normal: &str,
) -> String {
    let (replacement, rest) = match rewrite {
        PathRewrite::Full(path) => (path.as_str(), ""),
        PathRewrite::Prefix(prefix) => {
            let matched = match matching {
                PathMatch::Fallback => "",
                _ => pattern.trim_end_matches('/'),
            };
            // The route matched, so `normal` starts with its path; were it not so,
            // keeping all of `normal` is the harmless reading.
            let rest = normal.strip_prefix(matched).unwrap_or(normal);
            // `rest` is empty or starts with `/` (an element boundary): the
            // replacement's own final `/` would double it.
            (prefix.trim_end_matches('/'), rest)
        }
    };
    let mut out = String::with_capacity(replacement.len() + rest.len() + 1);
    if !replacement.starts_with('/') {
        out.push('/');
    }
    out.push_str(replacement);
    // `rest` is empty or starts with `/`; after a bare `/` that would be `//`.
    out.push_str(match out.as_str() {
        "/" => rest.strip_prefix('/').unwrap_or(rest),
        _ => rest,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn router(toml: &str) -> Router<String> {
        let config = Config::parse(Path::new("t.toml"), toml).unwrap();
        Router::new(&config, |ups, _| ups[0].to_string())
    }

    static NO_HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);
    static GET: Method = Method::GET;

    /// A GET for `path` on the TLS listener, without headers or query.
    fn get(path: &str) -> Head<'_> {
        Head {
            method: &GET,
            path,
            query: None,
            headers: &NO_HEADERS,
            listener: Listener::Tls,
        }
    }

    fn name<T: std::fmt::Debug>(action: &Action<T>) -> String {
        match action {
            Action::Proxy(t) => format!("{t:?}").trim_matches('"').to_string(),
            Action::Respond { body, .. } => String::from_utf8_lossy(body).into_owned(),
            Action::Redirect(r) => format!("redirect {}", r.status.as_u16()),
            Action::Split(_) => "split".into(),
        }
    }

    fn target(r: &Router<String>, host: &str, path: &str) -> Result<String, RouteError> {
        r.route(Some(host), &get(path), None)
            .map(|m| name(&m.route.action))
    }

    const SITES: &str = r#"
[[site]]
hosts = ["a.test", "www.a.test"]
upstreams = ["root:1"]
[[site.route]]
path = "/api/"
upstreams = ["api:1"]
[[site.route]]
path = "/api/v2/"
respond = { status = 200, body = "v2" }

[[site]]
hosts = ["*.w.test"]
tls = "internal"
upstreams = ["wild:1"]

[[site]]
hosts = ["x.w.test"]
tls = "internal"
[[site.route]]
path = "/only/"
upstreams = ["exact:1"]
"#;

    #[test]
    fn host_then_longest_prefix() {
        let r = router(SITES);
        assert_eq!(target(&r, "a.test", "/").unwrap(), "root:1");
        assert_eq!(target(&r, "A.Test:8443", "/api/x?q").unwrap(), "api:1");
        assert_eq!(target(&r, "www.a.test", "/api/v2/z").unwrap(), "v2");
        assert_eq!(target(&r, "a.test", "/apix").unwrap(), "root:1");
        assert_eq!(target(&r, "a.test.", "/api").unwrap(), "root:1");
    }

    #[test]
    fn routes_match_the_normalised_path() {
        let r = router(SITES);
        for path in [
            "//api/v2/z",
            "/./api/v2/",
            "/x/../api/v2/",
            "/%61pi/v2/",
            "/api//v2/",
        ] {
            assert_eq!(target(&r, "a.test", path).unwrap(), "v2", "{path}");
        }
        assert_eq!(
            target(&r, "a.test", "/../api/"),
            Err(RouteError::BadPath(path::PathError::AboveRoot))
        );
        assert_eq!(
            r.route(Some("a.test"), &get("/api%2Fv2/"), None)
                .unwrap_err()
                .status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn exact_beats_wildcard_and_wildcard_is_one_label() {
        let r = router(SITES);
        assert_eq!(target(&r, "y.w.test", "/").unwrap(), "wild:1");
        assert_eq!(target(&r, "x.w.test", "/only/1").unwrap(), "exact:1");
        assert_eq!(target(&r, "x.w.test", "/"), Err(RouteError::NoRoute));
        assert_eq!(target(&r, "a.b.w.test", "/"), Err(RouteError::NoSite));
        assert_eq!(target(&r, "w.test", "/"), Err(RouteError::NoSite));
        assert_eq!(target(&r, ".w.test", "/"), Err(RouteError::NoSite));
    }

    #[test]
    fn errors_map_to_status() {
        let r = router(SITES);
        assert_eq!(
            r.route(None, &get("/"), None).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(target(&r, "other.test", "/"), Err(RouteError::NoSite));
        let cert = [HostPattern::Exact("www.a.test".into())];
        assert_eq!(
            r.route(Some("a.test"), &get("/"), Some(&cert)).unwrap_err(),
            RouteError::NotCovered
        );
        assert!(
            r.route(Some("WWW.a.test:443"), &get("/"), Some(&cert))
                .is_ok()
        );
        assert_eq!(
            RouteError::NotCovered.status(),
            StatusCode::MISDIRECTED_REQUEST
        );
        assert_eq!(RouteError::NoRoute.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn host_from_uri_then_header() {
        let req = http::Request::get("http://B.test:81/x")
            .header("host", "a.test")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req), Some("B.test:81"));
        let req = http::Request::get("/x")
            .header("host", " a.test ")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req), Some("a.test"));
        let req = http::Request::get("/x").body(()).unwrap();
        assert_eq!(request_host(&req), None);
    }
    /// A site `g.test` (TLS unless `plain`) whose routes are given as (path, matching,
    /// rule, name): each answers its name.
    fn rules(plain: bool, routes: Vec<(&str, PathMatch, RouteRule, &str)>) -> Router<String> {
        let mut config = Config::parse(
            Path::new("t.toml"),
            "[[site]]\nhosts = [\"g.test\"]\ntls = \"internal\"\nupstreams = [\"x:1\"]\n",
        )
        .unwrap();
        let site = &mut config.sites[0];
        if plain {
            site.tls = TlsSource::Off;
        }
        site.routes = routes
            .into_iter()
            .map(|(path, matching, rule, name)| crate::config::Route {
                path: path.into(),
                matching,
                action: RouteAction::Respond {
                    status: StatusCode::OK,
                    body: name.into(),
                },
                limits: RouteLimits::default(),
                rule,
            })
            .collect();
        Router::new(&config, |ups, _| ups[0].to_string())
    }

    fn header(name: &str, value: &str) -> (HeaderName, HeaderValue) {
        (
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        )
    }

    /// Which route a request takes: `lines` are its headers, in order.
    fn pick(
        r: &Router<String>,
        method: &Method,
        target: &str,
        lines: &[(&str, &str)],
        listener: Listener,
    ) -> Option<String> {
        let mut headers = HeaderMap::new();
        for (k, v) in lines {
            let (k, v) = header(k, v);
            headers.append(k, v);
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let head = Head {
            method,
            path,
            query,
            headers: &headers,
            listener,
        };
        r.route(Some("g.test"), &head, None)
            .ok()
            .map(|m| name(&m.route.action))
    }

    fn tls(r: &Router<String>, target: &str, lines: &[(&str, &str)]) -> Option<String> {
        pick(r, &Method::GET, target, lines, Listener::Tls)
    }

    #[test]
    fn header_conditions_are_exact_and_see_every_line() {
        let rule = RouteRule {
            headers: vec![header("X-Env", "canary")],
            ..RouteRule::default()
        };
        let r = rules(
            false,
            vec![
                ("/", PathMatch::Elements, rule, "canary"),
                ("/", PathMatch::Elements, RouteRule::default(), "stable"),
            ],
        );
        let canary = Some("canary".to_string());
        let stable = Some("stable".to_string());
        assert_eq!(tls(&r, "/x", &[("x-env", "canary")]), canary);
        assert_eq!(
            tls(&r, "/x", &[("X-ENV", "canary")]),
            canary,
            "names ignore case"
        );
        assert_eq!(tls(&r, "/x", &[]), stable);
        for lines in [
            &[("x-env", "Canary")][..],
            &[("x-env", "canary ")],
            &[("x-env", " canary")],
            &[("x-env", "canary, stable")],
            &[("x-env", "canaryx")],
            // A second line, whatever its case or order: the value is `a, b`.
            &[("x-env", "canary"), ("x-env", "stable")],
            &[("x-env", "stable"), ("X-Env", "canary")],
            &[("x-env", "canary"), ("x-env", "canary")],
        ] {
            assert_eq!(tls(&r, "/x", lines), stable, "{lines:?}");
        }
        // The joined value is the value: a rule that names it is met by both spellings.
        let rule = RouteRule {
            headers: vec![header("x-env", "a, b")],
            ..RouteRule::default()
        };
        let r = rules(false, vec![("/", PathMatch::Elements, rule, "ab")]);
        assert_eq!(
            tls(&r, "/", &[("x-env", "a"), ("x-env", "b")]),
            Some("ab".into())
        );
        assert_eq!(tls(&r, "/", &[("x-env", "a, b")]), Some("ab".into()));
        assert_eq!(tls(&r, "/", &[("x-env", "a"), ("x-env", "b, c")]), None);
    }

    #[test]
    fn query_conditions_decode_and_hold_for_every_occurrence() {
        let rule = RouteRule {
            query: vec![("env".into(), "canary one".into())],
            ..RouteRule::default()
        };
        let r = rules(
            false,
            vec![
                ("/", PathMatch::Elements, rule, "canary"),
                ("/", PathMatch::Elements, RouteRule::default(), "stable"),
            ],
        );
        let canary = Some("canary".to_string());
        let stable = Some("stable".to_string());
        for target in [
            "/?env=canary%20one",
            "/?a=1&env=canary%20one&b",
            "/?%65nv=canary%20one",
            "/?env=canary%20one&env=canary%20one",
        ] {
            assert_eq!(tls(&r, target, &[]), canary, "{target}");
        }
        for target in [
            "/",
            "/?env=canary+one",
            "/?ENV=canary%20one",
            "/?env=canary%20one&env=stable",
            "/?env=stable&env=canary%20one",
            "/?env%3Dcanary%20one=x",
            "/?x=1%26env%3Dcanary%20one",
            "/?env=canary%20one%zz",
            "/?env=canary%2",
            "/?env",
            "/?env%=canary%20one",
        ] {
            assert_eq!(tls(&r, target, &[]), stable, "{target}");
        }
        // A name that does not decode is not the name: the condition sees only the
        // occurrence that decodes.
        assert_eq!(tls(&r, "/?env%zz=x&env=canary%20one", &[]), canary);
    }

    #[test]
    fn method_conditions() {
        let rule = RouteRule {
            method: Some(Method::POST),
            ..RouteRule::default()
        };
        let r = rules(false, vec![("/", PathMatch::Elements, rule, "post")]);
        assert_eq!(
            pick(&r, &Method::POST, "/", &[], Listener::Tls),
            Some("post".into())
        );
        assert_eq!(pick(&r, &Method::GET, "/", &[], Listener::Tls), None);
        assert_eq!(
            r.route(Some("g.test"), &get("/"), None).unwrap_err(),
            RouteError::NoRoute
        );
    }

    #[test]
    fn precedence_path_then_method_then_headers_then_query_then_given_order() {
        let with = |method: bool, headers: usize, query: usize| RouteRule {
            method: method.then_some(Method::GET),
            headers: (0..headers)
                .map(|i| header(&format!("h{i}"), "1"))
                .collect(),
            query: (0..query).map(|i| (format!("q{i}"), "1".into())).collect(),
            ..RouteRule::default()
        };
        // Given worst first; each one's conditions are all met by the request below.
        let r = rules(
            false,
            vec![
                ("/", PathMatch::Elements, with(false, 0, 0), "plain"),
                ("/", PathMatch::Elements, with(false, 0, 2), "query2"),
                ("/", PathMatch::Elements, with(false, 1, 0), "header1"),
                ("/", PathMatch::Elements, with(false, 2, 0), "header2-first"),
                (
                    "/",
                    PathMatch::Elements,
                    with(false, 2, 0),
                    "header2-second",
                ),
                ("/", PathMatch::Elements, with(true, 0, 0), "method"),
                ("/a", PathMatch::Elements, with(false, 0, 0), "longer"),
                ("/a", PathMatch::Exact, with(false, 0, 0), "exact"),
            ],
        );
        let order: Vec<String> = r.sites[0].routes.iter().map(|r| name(&r.action)).collect();
        assert_eq!(
            order,
            [
                "exact",
                "longer",
                "method",
                "header2-first",
                "header2-second",
                "header1",
                "query2",
                "plain"
            ]
        );
        let all = [("h0", "1"), ("h1", "1")];
        assert_eq!(tls(&r, "/b?q0=1&q1=1", &all), Some("method".into()));
        let post =
            |target, lines: &[(&str, &str)]| pick(&r, &Method::POST, target, lines, Listener::Tls);
        assert_eq!(post("/b?q0=1&q1=1", &all), Some("header2-first".into()));
        assert_eq!(post("/b?q0=1&q1=1", &all[..1]), Some("header1".into()));
        assert_eq!(post("/b?q0=1&q1=1", &[]), Some("query2".into()));
        assert_eq!(post("/b?q0=1", &[]), Some("plain".into()));
        assert_eq!(post("/a", &[]), Some("exact".into()));
    }

    #[test]
    fn listener_scope() {
        let scoped = |listener| RouteRule {
            listener,
            ..RouteRule::default()
        };
        let routes = || {
            vec![
                (
                    "/http",
                    PathMatch::Elements,
                    scoped(ListenerScope::Http),
                    "http",
                ),
                (
                    "/https",
                    PathMatch::Elements,
                    scoped(ListenerScope::Https),
                    "https",
                ),
                ("/", PathMatch::Elements, scoped(ListenerScope::Any), "any"),
            ]
        };
        let get = |r: &Router<String>, path, listener| pick(r, &Method::GET, path, &[], listener);
        // A site with a certificate: Any is HTTPS only.
        let r = rules(false, routes());
        assert_eq!(get(&r, "/http", Listener::Plain), Some("http".into()));
        assert_eq!(get(&r, "/http", Listener::Tls), Some("any".into()));
        assert_eq!(get(&r, "/https", Listener::Tls), Some("https".into()));
        assert_eq!(get(&r, "/https", Listener::Plain), None);
        assert_eq!(get(&r, "/", Listener::Plain), None);
        assert!(r.serves_port_80(Some("G.test:80")));
        // A site without TLS: Any is port 80 too.
        let r = rules(true, routes());
        assert_eq!(get(&r, "/", Listener::Plain), Some("any".into()));
        assert_eq!(get(&r, "/https", Listener::Plain), Some("any".into()));
        assert!(r.serves_port_80(Some("g.test")));
        // No route for port 80: port 80 redirects it.
        let r = rules(
            false,
            vec![("/", PathMatch::Elements, RouteRule::default(), "any")],
        );
        assert!(!r.serves_port_80(Some("g.test")));
        assert!(!r.serves_port_80(Some("other.test")));
        let r = router(SITES);
        assert!(!r.serves_port_80(Some("a.test")));
    }

    #[test]
    fn split_is_weighted_smooth_and_never_picks_weight_zero() {
        let respond = |body: &str| RouteAction::Respond {
            status: StatusCode::OK,
            body: body.into(),
        };
        let split = |weights: &[(u32, &str)]| {
            let backends: Vec<crate::config::Weighted> = weights
                .iter()
                .map(|(weight, name)| crate::config::Weighted {
                    weight: *weight,
                    action: respond(name),
                })
                .collect();
            let action = RouteAction::Split(backends.into());
            match self::action(&action, &mut |ups: &[Upstream], _| ups[0].to_string(), true) {
                Action::Split(split) => split,
                other => panic!("{other:?}"),
            }
        };
        let count = |s: &Split<String>, n: usize| {
            let mut seen = std::collections::HashMap::<String, usize>::new();
            let mut picks = Vec::new();
            for _ in 0..n {
                let picked = name(s.pick());
                *seen.entry(picked.clone()).or_default() += 1;
                picks.push(picked);
            }
            (seen, picks)
        };
        let s = split(&[(70, "a"), (0, "never"), (30, "b")]);
        let (seen, picks) = count(&s, 1000);
        assert_eq!(seen["a"], 700);
        assert_eq!(seen["b"], 300);
        assert!(!seen.contains_key("never"));
        // Smooth: no long runs of one backend.
        let longest_b = picks
            .split(|p| p == "a")
            .map(|run| run.len())
            .max()
            .unwrap();
        assert!(longest_b <= 1, "{picks:?}");
        // Weights up to the Gateway API's 1,000,000, and awkward ones.
        let s = split(&[(1_000_000, "a"), (1, "b"), (333_333, "c")]);
        let (seen, _) = count(&s, 10_000);
        let share = seen["a"] as f64 / 10_000.0;
        assert!((share - 0.75).abs() < 0.01, "{seen:?}");
        let s = split(&[(u32::MAX, "a"), (u32::MAX, "b")]);
        let (seen, _) = count(&s, 10);
        assert_eq!((seen["a"], seen["b"]), (5, 5));
        // Only weight 0: nothing valid to choose, 500.
        let action = RouteAction::Split(
            vec![crate::config::Weighted {
                weight: 0,
                action: respond("never"),
            }]
            .into(),
        );
        match self::action(&action, &mut |ups: &[Upstream], _| ups[0].to_string(), true) {
            Action::Respond { status, .. } => assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prefix_rewrites_replace_whole_elements() {
        let prefix = |p: &str| PathRewrite::Prefix(p.into());
        // The Gateway API's table (HTTPPathModifier), and `/` for the prefix.
        for (path, pattern, replacement, want) in [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/foo/x", "/foo", "/", "/x"),
            ("/x/y", "/", "/p", "/p/x/y"),
        ] {
            assert_eq!(
                rewrite_path(&prefix(replacement), pattern, PathMatch::Elements, path),
                want,
                "{path} {pattern} {replacement}"
            );
        }
        let full = PathRewrite::Full("/one".into());
        assert_eq!(
            rewrite_path(&full, "/foo", PathMatch::Elements, "/foo/x"),
            "/one"
        );
        assert_eq!(
            rewrite_path(
                &PathRewrite::Full(String::new()),
                "/",
                PathMatch::Exact,
                "/"
            ),
            "/"
        );
    }
}
