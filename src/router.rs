//! Router: the step of the request path between the HTTP connection and the proxy. It
//! answers one question per request: which route of which site does this request go
//! to, given its Host (or HTTP/2 `:authority`) and its path?
//!
//! A [`Router`] is built once per config (at start and at every reload) and is then
//! read-only, so the proxy keeps it in an `ArcSwap` and a lookup takes no lock: two hash
//! lookups for the host (exact name, then the `*.suffix` wildcard one label up) and a
//! scan of the site's routes, which the config already sorted longest path first.
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
//!   cover both get 421, with bodies that say which.

use std::collections::HashMap;

use bytes::Bytes;
use http::{StatusCode, header};

use crate::config::{
    Config, HostPattern, PathMatch, RouteAction, RouteLimits, Upstream, UpstreamProtocol,
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
}

#[derive(Debug)]
pub(crate) struct Route<T> {
    /// The path, starting with `/`, and how it is matched.
    pub path: String,
    pub matching: PathMatch,
    pub action: Action<T>,
    /// Its own limits over `[limits]`.
    pub limits: RouteLimits,
}

#[derive(Debug)]
struct SiteRoutes<T> {
    /// In [`PathMatch::precedence`] order, so the first match is the one to take.
    routes: Vec<Route<T>>,
}

/// Host → site → longest path prefix, built from one [`Config`].
#[derive(Debug)]
pub(crate) struct Router<T> {
    sites: Vec<SiteRoutes<T>>,
    /// Exact host name → index in `sites`.
    exact: HashMap<String, usize>,
    /// Wildcard suffix (`example.com` for `*.example.com`) → index in `sites`.
    wildcard: HashMap<String, usize>,
}

/// A successful lookup: the route and its site.
#[derive(Debug)]
pub(crate) struct Matched<'r, T> {
    pub route: &'r Route<T>,
    /// The site's index in the config's `sites` (for per-site counters).
    pub site: usize,
}

impl<T> Router<T> {
    /// Builds the router for `config`; `make` turns each proxy route's upstreams into the
    /// `T` the proxy wants (called once per proxy route, in config order).
    pub(crate) fn new(
        config: &Config,
        mut make: impl FnMut(&[Upstream], UpstreamProtocol) -> T,
    ) -> Router<T> {
        let mut sites = Vec::with_capacity(config.sites.len());
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, site) in config.sites.iter().enumerate() {
            for host in &site.hosts {
                // The config refuses a host listed by two sites; `or_insert` keeps the
                // first anyway, as `Config::site_for` does.
                match host {
                    HostPattern::Exact(name) => exact.entry(name.clone()).or_insert(i),
                    HostPattern::Wildcard(suffix) => wildcard.entry(suffix.clone()).or_insert(i),
                };
            }
            let mut routes: Vec<Route<T>> = site
                .routes
                .iter()
                .map(|route| Route {
                    path: route.path.clone(),
                    matching: route.matching,
                    limits: route.limits,
                    action: match &route.action {
                        RouteAction::Respond { status, body } => Action::Respond {
                            status: *status,
                            body: Bytes::from(body.clone()),
                        },
                        RouteAction::Proxy {
                            upstreams,
                            protocol,
                        } => Action::Proxy(make(upstreams, *protocol)),
                    },
                })
                .collect();
            // The config sorts already; sorting again keeps the router correct on its own.
            routes.sort_by_key(|r| r.matching.precedence(&r.path));
            sites.push(SiteRoutes { routes });
        }
        Router {
            sites,
            exact,
            wildcard,
        }
    }

    /// Routes a request given its raw host (Host header or `:authority`, with any port),
    /// its path as received (normalised here for matching), and the host patterns of the
    /// connection's certificate (`None` when the connection has no TLS).
    pub(crate) fn route(
        &self,
        raw_host: Option<&str>,
        path: &str,
        cert_hosts: Option<&[HostPattern]>,
    ) -> Result<Matched<'_, T>, RouteError> {
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
        let path = path::normalize(path).map_err(RouteError::BadPath)?;
        let route = self.sites[site]
            .routes
            .iter()
            .find(|r| r.matching.matches(&r.path, &path))
            .ok_or(RouteError::NoRoute)?;
        Ok(Matched { route, site })
    }

    /// The index in the config's `sites` of the site a raw host names, if any (the
    /// lookup `route` starts with; for attributing a refused request to its site).
    pub(crate) fn site_of(&self, raw_host: Option<&str>) -> Option<usize> {
        self.site_index(&normalize_host(raw_host?))
    }

    /// Exact names win over wildcards; a wildcard covers exactly one more label.
    fn site_index(&self, host: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(host) {
            return Some(i);
        }
        let (label, suffix) = host.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(suffix).copied()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn router(toml: &str) -> Router<String> {
        let config = Config::parse(Path::new("t.toml"), toml).unwrap();
        Router::new(&config, |ups, _| ups[0].to_string())
    }

    fn target(r: &Router<String>, host: &str, path: &str) -> Result<String, RouteError> {
        r.route(Some(host), path, None)
            .map(|m| match &m.route.action {
                Action::Proxy(t) => t.clone(),
                Action::Respond { body, .. } => String::from_utf8_lossy(body).into_owned(),
            })
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
            r.route(Some("a.test"), "/api%2Fv2/", None)
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
            r.route(None, "/", None).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(target(&r, "other.test", "/"), Err(RouteError::NoSite));
        let cert = [HostPattern::Exact("www.a.test".into())];
        assert_eq!(
            r.route(Some("a.test"), "/", Some(&cert)).unwrap_err(),
            RouteError::NotCovered
        );
        assert!(r.route(Some("WWW.a.test:443"), "/", Some(&cert)).is_ok());
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
}
