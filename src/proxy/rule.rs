//! What a Gateway API rule does to a request besides choosing it: the `Location` of a
//! `RequestRedirect`, and the path and query a `URLRewrite` sends upstream. Header
//! edits are in [`super::headers`], the choice of a weighted backend in the router.
//!
//! Decisions (docs/requests.md states them for users):
//! - a redirect writes the request's host back only after the strict parser
//!   ([`crate::uri::host::parse`]) took it: userinfo (`localhost@evil.example`), a bad
//!   port or any other junk gets 400, never a `Location`;
//! - the port of a redirect is the Gateway API's: the one the rule names; else the
//!   well-known port of the scheme the rule names; else the listener's, which for
//!   portico is 80 on plain HTTP and 443 on TLS (the Gateway's listener ports), never
//!   the port in the request's Host. A scheme's default port is never written;
//! - a path rewrite (of a redirect or of `URLRewrite`) starts from the normal form of
//!   the path, the one the route matched ([`crate::router::rewrite_path`]); without
//!   one the path goes as the client sent it. The query always stays as sent.

use http::uri::PathAndQuery;
use http::{StatusCode, Uri};

use crate::config::{PathMatch, PathRewrite, Redirect};
use crate::router::{Listener, rewrite_path};
use crate::uri::host;

/// Why a rule's redirect or rewrite cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RuleError {
    /// The request's Host is not a plain host and port: nothing of it may be written
    /// into a `Location`.
    #[error("malformed Host header")]
    BadHost(#[source] host::HostError),
    /// The rule's hostname, scheme or path make no valid URL (a translator's mistake,
    /// not the client's).
    #[error("this route's redirect or rewrite makes no valid URL")]
    BadTarget,
}

impl RuleError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            RuleError::BadHost(_) => StatusCode::BAD_REQUEST,
            RuleError::BadTarget => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The port a scheme has when a URL names none.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// The `Location` of a redirect: the request's URL (its listener's scheme, its host,
/// `path`, `query`) with what `redirect` names replaced. `path` is the path to keep
/// when the rule does not rewrite it: the request's as sent, or already rewritten.
pub(crate) fn location(
    redirect: &Redirect,
    listener: Listener,
    raw_host: Option<&str>,
    path: &str,
    query: Option<&str>,
) -> Result<String, RuleError> {
    let request = host::parse(raw_host.unwrap_or_default()).map_err(RuleError::BadHost)?;
    let (listener_scheme, listener_port) = match listener {
        Listener::Plain => ("http", 80),
        Listener::Tls => ("https", 443),
    };
    let scheme = match &redirect.scheme {
        Some(s) => {
            let s = s.to_ascii_lowercase();
            let valid = s.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
            if !valid {
                return Err(RuleError::BadTarget);
            }
            s
        }
        None => listener_scheme.to_string(),
    };
    let host = match &redirect.hostname {
        // The rule's own hostname passes the same parser: a Location names a host and
        // nothing else, whoever wrote it.
        Some(name) => match host::parse(name) {
            Ok(a) if a.port.is_none() => a.url_host(),
            _ => return Err(RuleError::BadTarget),
        },
        None => request.url_host(),
    };
    let port = match (redirect.port, &redirect.scheme) {
        (Some(port), _) => port,
        (None, Some(_)) => default_port(&scheme).unwrap_or(listener_port),
        (None, None) => listener_port,
    };
    let mut out = format!("{scheme}://{host}");
    if default_port(&scheme) != Some(port) {
        out.push_str(&format!(":{port}"));
    }
    // Asterisk-form (`OPTIONS *`) and authority-form targets have no path to keep.
    out.push_str(if path.starts_with('/') { path } else { "/" });
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    // What is written must read back as a URL with this host: anything else is a bug
    // of ours or the rule's, answered 500 rather than sent.
    match out.parse::<Uri>() {
        Ok(uri) if uri.authority().is_some_and(|a| !a.as_str().contains('@')) => Ok(out),
        _ => Err(RuleError::BadTarget),
    }
}

/// The path for a redirect or rewrite: `rewrite` applied to the normal form `normal`
/// of the path that the route (`pattern`, `matching`) took, or the path as sent.
pub(crate) fn target_path(
    rewrite: Option<&PathRewrite>,
    pattern: &str,
    matching: PathMatch,
    normal: &str,
    sent: &str,
) -> String {
    match rewrite {
        Some(rewrite) => rewrite_path(rewrite, pattern, matching, normal),
        None => sent.to_string(),
    }
}

/// The path and query sent upstream after a `URLRewrite` of the path.
pub(crate) fn rewritten(path: &str, query: Option<&str>) -> Result<PathAndQuery, RuleError> {
    let target = match query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    PathAndQuery::try_from(target).map_err(|_| RuleError::BadTarget)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect() -> Redirect {
        Redirect {
            scheme: None,
            hostname: None,
            port: None,
            path: None,
            status: StatusCode::FOUND,
        }
    }

    fn at(r: &Redirect, listener: Listener, host: &str) -> Result<String, RuleError> {
        location(r, listener, Some(host), "/p", Some("q=1"))
    }

    #[test]
    fn ports_follow_the_gateway_api() {
        use Listener::{Plain, Tls};
        let r = redirect();
        // Nothing set: the listener's scheme and port, never the Host's port.
        assert_eq!(at(&r, Plain, "a.test:8080").unwrap(), "http://a.test/p?q=1");
        assert_eq!(at(&r, Tls, "a.test:8443").unwrap(), "https://a.test/p?q=1");
        // A scheme alone: its well-known port, not written.
        let r = Redirect {
            scheme: Some("https".into()),
            ..redirect()
        };
        assert_eq!(at(&r, Plain, "a.test").unwrap(), "https://a.test/p?q=1");
        let r = Redirect {
            scheme: Some("HTTP".into()),
            ..redirect()
        };
        assert_eq!(at(&r, Tls, "a.test").unwrap(), "http://a.test/p?q=1");
        // A port alone: the listener's scheme, the port unless it is the default.
        let r = Redirect {
            port: Some(8443),
            ..redirect()
        };
        assert_eq!(at(&r, Tls, "a.test").unwrap(), "https://a.test:8443/p?q=1");
        let r = Redirect {
            port: Some(443),
            ..redirect()
        };
        assert_eq!(at(&r, Tls, "a.test").unwrap(), "https://a.test/p?q=1");
        assert_eq!(at(&r, Plain, "a.test").unwrap(), "http://a.test:443/p?q=1");
        // Both.
        let r = Redirect {
            scheme: Some("http".into()),
            port: Some(80),
            hostname: Some("B.test".into()),
            ..redirect()
        };
        assert_eq!(at(&r, Tls, "a.test").unwrap(), "http://b.test/p?q=1");
        let r = Redirect {
            hostname: Some("[::1]".into()),
            ..redirect()
        };
        assert_eq!(at(&r, Tls, "a.test").unwrap(), "https://[::1]/p?q=1");
    }

    #[test]
    fn a_bad_host_is_refused_not_reflected() {
        let r = redirect();
        for evil in [
            "localhost@evil.example",
            "a.test:99999",
            "evil.example/a.test",
            "a.test?x",
            "",
        ] {
            assert!(
                matches!(at(&r, Listener::Tls, evil), Err(RuleError::BadHost(_))),
                "{evil}"
            );
        }
        assert_eq!(
            location(&r, Listener::Tls, None, "/", None).map_err(|e| e.status()),
            Err(StatusCode::BAD_REQUEST)
        );
        // The rule's own parts are checked too; that is the config's fault: 500.
        for bad in [
            Redirect {
                hostname: Some("x@evil.example".into()),
                ..redirect()
            },
            Redirect {
                hostname: Some("a.test:81".into()),
                ..redirect()
            },
            Redirect {
                scheme: Some("ht tp".into()),
                ..redirect()
            },
        ] {
            assert_eq!(
                at(&bad, Listener::Tls, "a.test").map_err(|e| e.status()),
                Err(StatusCode::INTERNAL_SERVER_ERROR),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn paths_are_kept_or_rewritten() {
        let r = redirect();
        assert_eq!(
            location(&r, Listener::Tls, Some("a.test"), "*", None).unwrap(),
            "https://a.test/"
        );
        let prefix = PathRewrite::Prefix("/new".into());
        let path = target_path(
            Some(&prefix),
            "/old",
            PathMatch::Elements,
            "/old/x",
            "/%6fld/x",
        );
        assert_eq!(path, "/new/x");
        assert_eq!(
            target_path(None, "/old", PathMatch::Elements, "/old/x", "/%6fld/x"),
            "/%6fld/x"
        );
        assert_eq!(rewritten("/new/x", Some("a=1")).unwrap(), "/new/x?a=1");
        assert_eq!(rewritten("/new x", None), Err(RuleError::BadTarget));
    }
}
