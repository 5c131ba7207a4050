//! The properties `cargo fuzz` checks (`fuzz/fuzz_targets/`), one function per target,
//! written here beside the code they hold for, so nothing internal has to be public.
//! Compiled only under `cargo fuzz` (`--cfg fuzzing`). Each panics when its property
//! fails; any other panic in the code under test is a finding too.

use std::net::IpAddr;
use std::path::Path;
use std::sync::OnceLock;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{Config, ConfigError};
use crate::config::{PathMatch, PathRewrite, Redirect, Route, RouteAction, RouteLimits, RouteRule};
use crate::listener::http::{Answer, decide};
use crate::listener::proxy_protocol::{Parsed, parse as parse_proxy_header};
use crate::proxy::h1codec::{
    Chunked, Decoded, RequestFraming, ResponseFraming, encode_request, parse_response,
    response_framing,
};
use crate::proxy::headers::{Forwarding, client_address, http1_head_both_ways, strip_hop_by_hop};
use crate::proxy::rule::{RuleError, location, target_path};
use crate::request_id;
use crate::router::{Action, Head, Listener, Router};
use crate::uri::{host, path};

/// The config parser and validator: any text gives a config or a `ConfigError` that
/// names a line of the file, never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(Path::new("fuzz.toml"), text) {
        Ok(config) => {
            // Sites, or the cluster's Ingresses to make them.
            assert!(
                !config.sites.is_empty()
                    || config
                        .kubernetes
                        .as_ref()
                        .is_some_and(|k| k.ingress_class.is_some())
            );
            let _ = config.describe();
        }
        Err(ConfigError::Syntax { line, .. } | ConfigError::Invalid { line, .. }) => {
            assert!(line >= 1 && line <= text.lines().count() + 1, "line {line}");
        }
        Err(ConfigError::Read { .. }) => unreachable!("nothing is read from disk"),
    }
}

const SITE: &str = "[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"root:1\"]\n[[site.route]]\npath = \"/respond\"\nrespond = { status = 403 }\n[[site.route]]\npath = \"/api/\"\nupstreams = [\"api:1\"]\n[[site.route]]\npath = \"/api/v2/\"\nupstreams = [\"v2:1\"]\n";

fn route(path: &str) -> Option<String> {
    static ROUTER: OnceLock<Router<String>> = OnceLock::new();
    let router = ROUTER.get_or_init(|| {
        let config = Config::parse(Path::new("fuzz.toml"), SITE).expect("a valid config");
        Router::new(&config, |upstreams, _| upstreams[0].to_string())
    });
    static GET: http::Method = http::Method::GET;
    let headers = HeaderMap::new();
    let head = Head {
        method: &GET,
        path,
        query: None,
        headers: &headers,
        listener: Listener::Tls,
    };
    let matched = router.route(Some("a.test"), &head, None).ok()?;
    Some(match &matched.route.action {
        Action::Proxy(t) => t.clone(),
        Action::Respond { status, .. } => status.to_string(),
        Action::Redirect(_) | Action::Split(_) => unreachable!("the file has neither"),
    })
}

/// A site whose routes under `/api` have Gateway API conditions: method POST, the
/// header `x-env: canary`, the query `env=canary` (in that precedence), then a plain
/// route at `/`.
fn conditional(
    method: &http::Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Option<String> {
    static ROUTER: OnceLock<Router<String>> = OnceLock::new();
    let router = ROUTER.get_or_init(|| {
        let mut config = Config::parse(Path::new("fuzz.toml"), SITE).expect("a valid config");
        let route = |path: &str, rule: RouteRule, name: &str| Route {
            path: path.into(),
            matching: PathMatch::Elements,
            action: RouteAction::Respond {
                status: http::StatusCode::OK,
                body: name.into(),
            },
            limits: RouteLimits::default(),
            rule,
        };
        let mut routes = vec![
            route("/", RouteRule::default(), "plain"),
            route(
                "/api",
                RouteRule {
                    query: vec![("env".into(), "canary".into())],
                    ..RouteRule::default()
                },
                "query",
            ),
            route(
                "/api",
                RouteRule {
                    headers: vec![(
                        HeaderName::from_static("x-env"),
                        HeaderValue::from_static("canary"),
                    )],
                    ..RouteRule::default()
                },
                "header",
            ),
            route(
                "/api",
                RouteRule {
                    method: Some(http::Method::POST),
                    ..RouteRule::default()
                },
                "post",
            ),
        ];
        routes.sort_by_key(Route::precedence);
        config.sites[0].routes = routes;
        Router::new(&config, |upstreams, _| upstreams[0].to_string())
    });
    let head = Head {
        method,
        path,
        query,
        headers,
        listener: Listener::Tls,
    };
    let matched = router.route(Some("a.test"), &head, None).ok()?;
    Some(match &matched.route.action {
        Action::Respond { body, .. } => String::from_utf8_lossy(body).into_owned(),
        _ => unreachable!("fixed answers only"),
    })
}

/// Routing with conditions: the query (after `?`) is also the value of an `x-env`
/// header. The route does not depend on how the path is spelt; the header route is
/// taken only for exactly `canary`, and never once a second line says otherwise; the
/// query route never once another occurrence of `env` says otherwise.
fn conditions(raw: &str) {
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    let get = http::Method::GET;
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_str(query.unwrap_or(raw)).ok();
    if let Some(v) = &value {
        headers.append("x-env", v.clone());
    }
    let got = conditional(&get, path, query, &headers);
    match path::normalize(path) {
        Ok(normal) => assert_eq!(
            got,
            conditional(&get, &normal, query, &headers),
            "{path:?} routes apart from {normal:?}"
        ),
        Err(_) => assert_eq!(got, None, "an unroutable path was routed: {raw:?}"),
    }
    if got.as_deref() == Some("header") {
        assert_eq!(
            value.as_ref().map(HeaderValue::as_bytes),
            Some(&b"canary"[..])
        );
    }
    let mut two = headers.clone();
    two.append("x-env", HeaderValue::from_static("other"));
    assert_ne!(
        conditional(&get, path, query, &two).as_deref(),
        Some("header")
    );
    let contradicted = format!("{}&env=other", query.unwrap_or_default());
    let none = HeaderMap::new();
    assert_ne!(
        conditional(&get, path, Some(&contradicted), &none).as_deref(),
        Some("query"),
        "{contradicted:?}"
    );
    let post = conditional(&http::Method::POST, path, query, &headers);
    if got.as_deref().is_some_and(|r| r != "plain") {
        assert_eq!(post.as_deref(), Some("post"), "{raw:?}");
    }
}

/// Path normalisation and routing: a normal form has no empty or dot segment, is its
/// own normal form, and routes like every spelling of it, also with conditions.
pub fn path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    conditions(raw);
    let Ok(normal) = path::normalize(raw) else {
        assert!(
            route(raw).is_none(),
            "an unroutable path was routed: {raw:?}"
        );
        return;
    };
    assert!(normal.starts_with('/'), "{normal:?}");
    assert!(
        !normal[1..].split('/').rev().skip(1).any(|s| s.is_empty()),
        "empty segment in {normal:?}"
    );
    assert!(
        !normal.split('/').any(|s| s == "." || s == ".."),
        "dot segment in {normal:?}"
    );
    assert_eq!(
        path::normalize(&normal).ok().as_deref(),
        Some(&*normal),
        "not idempotent"
    );
    assert_eq!(
        route(raw),
        route(&normal),
        "{raw:?} routes apart from {normal:?}"
    );
}

fn trusted(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 10)
}

/// The header rewrite of a forwarded request: whatever a client sends, no hop-by-hop
/// header survives, an untrusted client's forwarding headers are replaced, and the
/// request ends with exactly one sane `X-Request-Id` (the client's only when it was
/// sane and alone), and an HTTP/1.1 head gets the same fields written straight as
/// through the map. The first byte's bits say whether the peer is trusted and the
/// request an upgrade; then one `name: value` per line.
pub fn headers(data: &[u8]) {
    let (flags, lines) = data.split_first().unwrap_or((&0, &[]));
    let mut headers = HeaderMap::new();
    for line in lines.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let peer = IpAddr::from(if flags & 1 == 1 {
        [10, 0, 0, 1]
    } else {
        [192, 0, 2, 1]
    });
    strip_hop_by_hop(&mut headers);
    for hop in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
        "trailer",
    ] {
        assert!(!headers.contains_key(hop), "{hop} survived");
    }
    if let Some(te) = headers.get("te") {
        assert_eq!(te, "trailers");
    }
    let sent: Vec<Vec<u8>> = headers
        .get_all("x-request-id")
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect();
    let id = request_id::of(&headers);
    assert!(request_id::is_sane(id.as_bytes()), "{id:?}");
    match &sent[..] {
        [one] if request_id::is_sane(one) => {
            assert!(id.new_id().is_none());
            assert_eq!(id.as_bytes(), &one[..]);
        }
        _ => assert!(id.new_id().is_some(), "{sent:?}"),
    }
    let is_trusted = trusted(peer);
    let client = client_address(&headers, peer, trusted);
    if !is_trusted {
        assert_eq!(client, peer);
    }
    let forwarding = Forwarding {
        peer,
        trusted: is_trusted,
        client,
        proto: "https",
        original_host: "a.test",
        version: http::Version::HTTP_11,
        request_id: id.new_id(),
    };
    // Straight into an HTTP/1.1 head, or through the map: the same fields.
    let upgrade = (flags & 2 == 2).then(|| HeaderValue::from_static("websocket"));
    let [straight, mapped] =
        http1_head_both_ways(&headers, &forwarding, "up.test", upgrade.as_ref());
    assert_eq!(straight, mapped);
    forwarding.insert(&mut headers);
    let now: Vec<&[u8]> = headers
        .get_all("x-request-id")
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    assert_eq!(now, [id.as_bytes()]);
    assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(headers.get_all("x-real-ip").iter().count(), 1);
    assert_eq!(headers["x-real-ip"], client.to_string());
    if is_trusted {
        let xff = headers["x-forwarded-for"].to_str().unwrap_or_default();
        assert!(xff.ends_with(&peer.to_string()), "{xff}");
    } else {
        assert_eq!(headers["x-forwarded-for"], peer.to_string());
        assert!(!headers.contains_key("forwarded"));
    }
}

/// The port-80 handler's decision: a redirect goes only to a served host, as parsed,
/// never to anything a Host header smuggles in. `host \n path-and-query`.
pub fn port80(data: &[u8]) {
    let mut parts = data.splitn(2, |&b| b == b'\n');
    let host = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or(b"/");
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    let mut req = http::Request::new(());
    *req.uri_mut() = uri;
    if let Ok(value) = HeaderValue::from_bytes(host) {
        req.headers_mut().insert(http::header::HOST, value);
    }
    match decide(&req, |h| h == "a.test" || h == "::1", 8443) {
        Answer::Redirect(location) => {
            let uri: http::Uri = location.parse().expect("a Location we wrote parses");
            assert_eq!(uri.scheme_str(), Some("https"));
            let host = uri.host().unwrap_or_default();
            assert!(
                host == "a.test" || host == "[::1]",
                "redirect to {location:?}"
            );
            let authority = uri.authority().map_or("", |a| a.as_str());
            assert!(!authority.contains('@'), "{location:?}");
        }
        Answer::Challenge { host, .. } => assert!(host == "a.test" || host == "::1"),
        Answer::Refuse(status, _) => assert!(status.is_client_error()),
    }
    if let Ok(raw_host) = std::str::from_utf8(host) {
        redirects(raw_host, req.uri());
    }
}

/// A Gateway API redirect's `Location` for any Host and target: one that parses as a
/// URL whose authority passed the strict host parser, with the request's host (or the
/// rule's), no userinfo, no default port written; else 400 for a Host the strict
/// parser refuses, and nothing else.
fn redirects(raw_host: &str, uri: &http::Uri) {
    let plain = Redirect {
        scheme: None,
        hostname: None,
        port: None,
        path: None,
        status: http::StatusCode::FOUND,
    };
    let rules = [
        plain.clone(),
        Redirect {
            scheme: Some("https".into()),
            ..plain.clone()
        },
        Redirect {
            scheme: Some("http".into()),
            hostname: Some("other.test".into()),
            port: Some(8443),
            ..plain.clone()
        },
        Redirect {
            port: Some(443),
            path: Some(PathRewrite::Prefix("/new".into())),
            ..plain.clone()
        },
        Redirect {
            path: Some(PathRewrite::Full("/".into())),
            ..plain
        },
    ];
    let strict = host::parse(raw_host);
    for rule in &rules {
        let path = match (&rule.path, path::normalize(uri.path())) {
            (None, _) => uri.path().to_string(),
            (Some(_), Ok(normal)) => target_path(
                rule.path.as_ref(),
                "/",
                PathMatch::Elements,
                &normal,
                uri.path(),
            ),
            // Unroutable: never gets as far as a redirect.
            (Some(_), Err(_)) => continue,
        };
        for listener in [Listener::Plain, Listener::Tls] {
            match location(rule, listener, Some(raw_host), &path, uri.query()) {
                Ok(written) => {
                    let url: http::Uri = written.parse().expect("a Location we wrote parses");
                    let scheme = url.scheme_str().unwrap_or_default();
                    assert!(scheme == "http" || scheme == "https", "{written:?}");
                    let authority = url.authority().map_or("", |a| a.as_str());
                    assert!(!authority.contains('@'), "{written:?}");
                    let parsed = host::parse(authority).expect("its host passes the strict parser");
                    let want = match &rule.hostname {
                        Some(name) => name.clone(),
                        None => strict
                            .as_ref()
                            .expect("written only for a strict host")
                            .host
                            .clone(),
                    };
                    assert_eq!(parsed.host, want, "{written:?}");
                    let default = if scheme == "https" { 443 } else { 80 };
                    assert_ne!(parsed.port, Some(default), "{written:?}");
                }
                Err(RuleError::BadHost(_)) => assert!(strict.is_err(), "{raw_host:?} refused"),
                Err(RuleError::BadTarget) => panic!("{raw_host:?} {uri} made no Location"),
            }
        }
    }
}

/// The Host/authority parser: what it accepts is a plain host (and port) that reads
/// back the same, and agrees with the lenient lookup form.
pub fn host(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let lookup = host::normalize(raw);
    assert_eq!(lookup, host::normalize_any(raw), "{raw:?}");
    let Ok(authority) = host::parse(raw) else {
        return;
    };
    assert_eq!(authority.host, lookup, "{raw:?}");
    assert!(
        authority
            .url_host()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b)),
        "{raw:?}"
    );
    let again = match authority.port {
        Some(p) => format!("{}:{p}", authority.url_host()),
        None => authority.url_host(),
    };
    assert_eq!(host::parse(&again), Ok(authority), "{raw:?} -> {again:?}");
}

/// The PROXY protocol parser: any bytes give an answer, a header never claims more
/// bytes than were read, and a header is found only once all of it has arrived.
pub fn proxy_protocol(data: &[u8]) {
    let Ok(parsed) = parse_proxy_header(data) else {
        return;
    };
    if let Parsed::Header { len, .. } = parsed {
        assert!(len <= data.len());
        for cut in 1..len {
            assert!(
                matches!(parse_proxy_header(&data[..cut]), Ok(Parsed::Incomplete)),
                "a header found in {cut} of its {len} bytes"
            );
        }
        assert_eq!(parse_proxy_header(&data[..len]).ok(), Some(parsed));
    }
}

/// The cluster's objects as the API server sends them (any JSON, typed where it fits):
/// the Ingress builder never panics, and what it makes is servable: every site has a
/// host and a route, every route a path from `/`, every proxy route an upstream, and
/// matching any path against the routes is total.
pub fn ingress(data: &[u8]) {
    crate::cluster::fuzz_build(data);
}

/// What an upstream sends back, read by `proxy::h1codec`: a response head and its body.
/// The first byte picks the request's method and the size of the pieces the bytes
/// arrive in. Read whole or piece by piece, the head and the body come out the same;
/// the body never holds more bytes than arrived. Then the request side: any headers
/// give a head that reads back as exactly one request, framed only as it was told.
pub fn upstream(data: &[u8]) {
    let (flags, input) = data.split_first().unwrap_or((&0, &[]));
    let method = if flags & 1 == 1 {
        http::Method::HEAD
    } else {
        http::Method::GET
    };
    let piece = usize::from(flags >> 1).max(1);
    let whole = read_response(input, input.len().max(1), &method);
    let pieces = read_response(input, piece, &method);
    assert_eq!(whole, pieces, "read whole and in pieces of {piece}");
    if let Some(Ok((_, _, body, _))) = &whole {
        assert!(body.len() <= input.len());
    }
    request_head(input, flags);
}

/// The status, the header count, the chunked body decoded and whether it ended, for
/// `input` arriving `piece` bytes at a time; `None` while the head is incomplete.
type ReadBack = Option<Result<(u16, usize, Vec<u8>, bool), String>>;

fn read_response(input: &[u8], piece: usize, method: &http::Method) -> ReadBack {
    let mut buf = bytes::BytesMut::new();
    let mut rest = input.chunks(piece);
    let mut head = loop {
        match parse_response(&mut buf) {
            Ok(Some(head)) => break head,
            Ok(None) => match rest.next() {
                Some(more) => buf.extend_from_slice(more),
                None => return None,
            },
            Err(e) => return Some(Err(e.to_string())),
        }
    };
    let framing = match response_framing(&mut head, method) {
        Ok((framing, _)) => framing,
        Err(e) => return Some(Err(e.to_string())),
    };
    let status = head.status.as_u16();
    let count = head.headers.len();
    if framing != ResponseFraming::Chunked {
        return Some(Ok((status, count, Vec::new(), false)));
    }
    let mut decoder = Chunked::default();
    let mut body = Vec::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Decoded::Data(data)) => body.extend_from_slice(&data),
            Ok(Decoded::End) => return Some(Ok((status, count, body, true))),
            Ok(Decoded::NeedMore) => match rest.next() {
                Some(more) => buf.extend_from_slice(more),
                None => return Some(Ok((status, count, body, false))),
            },
            Err(e) => return Some(Err(e.to_string())),
        }
    }
}

fn request_head(input: &[u8], flags: &u8) {
    let mut headers = HeaderMap::new();
    for line in input.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            headers.append(name, value);
        }
    }
    let framing = match flags % 3 {
        0 => RequestFraming::Empty,
        1 => RequestFraming::Length(u64::from(*flags)),
        _ => RequestFraming::Chunked,
    };
    let mut out = Vec::new();
    encode_request(&http::Method::POST, "/p", &headers, framing, &mut out);
    // A line per value at most (cookies are joined), and the framing line: a fixed
    // array of 256 refused heads this writes correctly (TooManyHeaders).
    let mut lines = vec![httparse::EMPTY_HEADER; headers.len() + 1];
    let mut request = httparse::Request::new(&mut lines);
    let parsed = request.parse(&out);
    assert!(
        matches!(parsed, Ok(httparse::Status::Complete(n)) if n == out.len()),
        "{parsed:?}: {:?}",
        String::from_utf8_lossy(&out)
    );
    let count = |name: &str| {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    let (lengths, chunked) = match framing {
        RequestFraming::Chunked => (0, 1),
        _ => (1, 0),
    };
    assert_eq!(count("content-length"), lengths);
    assert_eq!(count("transfer-encoding"), chunked);
}
