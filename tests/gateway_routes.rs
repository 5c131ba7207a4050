//! Gateway API HTTPRoute rules in the request path, over real sockets: method, header
//! and query conditions and their precedence, header edits both ways, redirects and
//! their port rules, URL rewrites, weighted splits, and routes for port 80; with the
//! attacks beside each (a second header line, encoded query names, a Host with
//! userinfo, hop-by-hop headers written into an edit).
//!
//! The routes are what the HTTPRoute translator makes: a config parsed from TOML, then
//! its sites' routes replaced through the model's public fields.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use portico::config::{
    Config, HeaderEdits, ListenerScope, PathMatch, PathRewrite, Redirect, Rewrite, Route,
    RouteAction, RouteLimits, RouteRule, Upstream, UpstreamProtocol, Weighted,
};
use portico::metrics::Metrics;
use portico::proxy::Proxy;
use portico_test_support as common;

use common::{Proto, Reply, backend, backend_counted, empty, h1, h2, read, send1};

const SITE: &str = "[[site]]\nhosts = [\"g.test\"]\ntls = \"internal\"\nupstreams = [\"127.0.0.1:9\"]\n\n[[site]]\nhosts = [\"*.example\"]\ntls = \"internal\"\nupstreams = [\"127.0.0.1:9\"]\n";

/// Serves `config` on 127.0.0.1:0 as a listener of protocol `proto` would: `"https"`
/// (the TLS listener, without the certificate check) or `"http"` (port 80).
async fn serve(config: &Config, proto: &'static str) -> (SocketAddr, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let proxy = Arc::new(Proxy::with_metrics(config, metrics.clone()));
    let addr = common::serve_proxy(proxy, proto, None).await;
    (addr, metrics)
}

/// The config with `g.test`'s routes replaced by `routes`.
fn with_routes(routes: Vec<Route>) -> Config {
    let mut config = Config::parse(Path::new("gateway.toml"), SITE).unwrap();
    config.sites[0].routes = routes;
    config.sites[0].routes.sort_by_key(Route::precedence);
    config
}

fn route(path: &str, matching: PathMatch, rule: RouteRule, action: RouteAction) -> Route {
    Route {
        path: path.into(),
        matching,
        action,
        limits: RouteLimits::default(),
        rule,
    }
}

fn prefix(path: &str, rule: RouteRule, action: RouteAction) -> Route {
    route(path, PathMatch::Elements, rule, action)
}

fn to(addr: SocketAddr) -> RouteAction {
    RouteAction::Proxy {
        upstreams: vec![Upstream {
            authority: addr.to_string().parse().unwrap(),
        }]
        .into(),
        protocol: UpstreamProtocol::Http1,
    }
}

fn respond(status: u16, body: &str) -> RouteAction {
    RouteAction::Respond {
        status: StatusCode::from_u16(status).unwrap(),
        body: body.into(),
    }
}

fn header(name: &str, value: &str) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_bytes(name.as_bytes()).unwrap(),
        HeaderValue::from_str(value).unwrap(),
    )
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(HeaderName, HeaderValue)> {
    pairs.iter().map(|(k, v)| header(k, v)).collect()
}

/// A request for `target` on `host`, with header lines `lines` in order.
fn request(
    method: Method,
    host: &str,
    target: &str,
    lines: &[(&str, &str)],
) -> Request<common::TestBody> {
    let mut req = Request::builder()
        .method(method)
        .uri(target)
        .header("host", host);
    for (k, v) in lines {
        req = req.header(*k, *v);
    }
    req.body(empty()).unwrap()
}

async fn get(addr: SocketAddr, target: &str, lines: &[(&str, &str)]) -> Reply {
    send1(addr, request(Method::GET, "g.test", target, lines)).await
}

/// The backend (or fixed answer) that served `target`.
async fn who(addr: SocketAddr, method: Method, target: &str, lines: &[(&str, &str)]) -> String {
    let reply = send1(addr, request(method, "g.test", target, lines)).await;
    match reply.status {
        StatusCode::OK if reply.text().starts_with("backend: ") => {
            reply.report().get("backend").to_string()
        }
        status => format!("{} {}", status.as_u16(), reply.text().trim()),
    }
}

/// Mirrors HTTPRouteHeaderMatching, HTTPRouteQueryParamMatching and
/// HTTPRouteMethodMatching, with the attacks (a second header line, encoded query names).
#[tokio::test]
async fn header_query_and_method_conditions_choose_the_route() {
    let canary = backend("canary", Proto::Http1).await;
    let stable = backend("stable", Proto::Http1).await;
    let posted = backend("posted", Proto::Http1).await;
    let config = with_routes(vec![
        prefix(
            "/",
            RouteRule {
                headers: headers(&[("X-Env", "canary")]),
                ..RouteRule::default()
            },
            to(canary),
        ),
        prefix(
            "/",
            RouteRule {
                query: vec![("env".into(), "canary".into())],
                ..RouteRule::default()
            },
            to(canary),
        ),
        prefix(
            "/",
            RouteRule {
                method: Some(Method::POST),
                ..RouteRule::default()
            },
            to(posted),
        ),
        prefix("/", RouteRule::default(), to(stable)),
    ]);
    let (addr, _) = serve(&config, "https").await;

    assert_eq!(who(addr, Method::GET, "/x", &[]).await, "stable");
    assert_eq!(
        who(addr, Method::GET, "/x", &[("x-env", "canary")]).await,
        "canary"
    );
    assert_eq!(
        who(addr, Method::GET, "/x", &[("X-ENV", "canary")]).await,
        "canary"
    );
    assert_eq!(who(addr, Method::GET, "/x?env=canary", &[]).await, "canary");
    assert_eq!(
        who(addr, Method::GET, "/x?a=1&env=canar%79", &[]).await,
        "canary"
    );
    assert_eq!(who(addr, Method::POST, "/x", &[]).await, "posted");
    assert_eq!(who(addr, Method::PUT, "/x", &[]).await, "stable");

    // Attacks: a header condition is not met by another case of the value, a second
    // line (either order: the value is both lines joined), or a longer value.
    for lines in [
        &[("x-env", "Canary")][..],
        &[("x-env", "canary"), ("x-env", "stable")],
        &[("x-env", "stable"), ("x-env", "canary")],
        &[("x-env", "canary, stable")],
        &[("x-env", "canaryx")],
    ] {
        assert_eq!(
            who(addr, Method::GET, "/x", lines).await,
            "stable",
            "{lines:?}"
        );
    }
    // Trailing whitespace: HTTP/1.1 drops it as the syntax's (RFC 9110 §5.5), so only
    // HTTP/2, where it is kept, can carry it; then it is part of the value.
    let mut client = h2(addr).await;
    let req = Request::get("http://g.test/x")
        .header("x-env", "canary ")
        .body(empty())
        .unwrap();
    if let Ok(response) = client.send_request(req).await {
        let reply = read(response).await;
        if reply.status == StatusCode::OK {
            assert_eq!(reply.report().get("backend"), "stable");
        } else {
            assert!(reply.status.is_client_error(), "{reply:?}");
        }
    }
    // A query condition holds for decoded names and values only as a whole pair, and
    // for every occurrence of the name.
    for target in [
        "/x?ENV=canary",
        "/x?env%3Dcanary=1",
        "/x?x=1%26env%3Dcanary",
        "/x?env=canary&env=stable",
        "/x?env=stable&env=canary",
        "/x?env=canary%zz",
        "/x?env=canary%",
        "/x?env=canary+",
        "/x?envx=canary",
        "/x?env[]=canary",
    ] {
        assert_eq!(
            who(addr, Method::GET, target, &[]).await,
            "stable",
            "{target}"
        );
    }
    // Encoded letters of the name are the name: an upstream decodes them too.
    assert_eq!(
        who(addr, Method::GET, "/x?%65nv=canary", &[]).await,
        "canary"
    );
}

/// Mirrors HTTPRouteMatching and HTTPRouteMatchingAcrossRoutes: the spec's precedence.
#[tokio::test]
async fn precedence_path_then_method_then_headers_then_query_then_order() {
    let with = |method: bool, h: &[(&str, &str)], q: &[(&str, &str)]| RouteRule {
        method: method.then_some(Method::GET),
        headers: headers(h),
        query: q
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..RouteRule::default()
    };
    let config = with_routes(vec![
        prefix("/", with(false, &[], &[]), respond(200, "fallthrough")),
        prefix(
            "/",
            with(false, &[], &[("a", "1"), ("b", "1")]),
            respond(200, "two queries"),
        ),
        prefix(
            "/",
            with(false, &[("h1", "1")], &[]),
            respond(200, "one header"),
        ),
        prefix(
            "/",
            with(false, &[("h1", "1"), ("h2", "1")], &[]),
            respond(200, "two headers, first"),
        ),
        prefix(
            "/",
            with(false, &[("h1", "1"), ("h2", "1")], &[]),
            respond(200, "two headers, second"),
        ),
        prefix("/", with(true, &[], &[]), respond(200, "method")),
        prefix("/api", with(false, &[], &[]), respond(200, "longer path")),
        route(
            "/api/x",
            PathMatch::Exact,
            with(false, &[], &[]),
            respond(200, "exact"),
        ),
    ]);
    let (addr, _) = serve(&config, "https").await;
    let both = [("h1", "1"), ("h2", "1")];
    let post = |target: &'static str, lines: &'static [(&'static str, &'static str)]| async move {
        who(addr, Method::POST, target, lines).await
    };
    assert_eq!(
        who(addr, Method::GET, "/?a=1&b=1", &both).await,
        "200 method"
    );
    assert_eq!(
        post("/?a=1&b=1", &[("h1", "1"), ("h2", "1")]).await,
        "200 two headers, first"
    );
    assert_eq!(post("/?a=1&b=1", &[("h1", "1")]).await, "200 one header");
    assert_eq!(post("/?a=1&b=1", &[("h2", "1")]).await, "200 two queries");
    assert_eq!(post("/?a=1", &[("h2", "1")]).await, "200 fallthrough");
    // The path comes first: a longer path beats every condition.
    assert_eq!(
        who(addr, Method::GET, "/api/y?a=1&b=1", &both).await,
        "200 longer path"
    );
    assert_eq!(who(addr, Method::GET, "/api/x", &both).await, "200 exact");
}

/// Mirrors HTTPRouteRequestHeaderModifier and HTTPRouteResponseHeaderModifier, with
/// edits that try to write framing and hop-by-hop headers.
#[tokio::test]
async fn header_modifiers_edit_both_ways_but_never_framing_or_hop_by_hop() {
    let echo = backend("echo", Proto::Http1).await;
    let config = with_routes(vec![prefix(
        "/",
        RouteRule {
            request_headers: HeaderEdits {
                set: headers(&[
                    ("x-set", "new"),
                    ("connection", "x-secret"),
                    ("transfer-encoding", "chunked"),
                    ("content-length", "5"),
                    ("host", "evil.example"),
                    ("keep-alive", "timeout=1"),
                ]),
                add: headers(&[
                    ("x-add", "two"),
                    ("transfer-encoding", "gzip"),
                    ("connection", "close"),
                    ("upgrade", "websocket"),
                    ("te", "gzip"),
                ]),
                remove: vec![
                    HeaderName::from_static("x-drop"),
                    HeaderName::from_static("content-length"),
                ],
            },
            response_headers: HeaderEdits {
                set: headers(&[("x-resp-set", "1"), ("keep-alive", "timeout=1")]),
                add: headers(&[("x-resp-add", "1"), ("proxy-authenticate", "Basic")]),
                remove: vec![HeaderName::from_static("x-backend")],
            },
            ..RouteRule::default()
        },
        to(echo),
    )]);
    let (addr, _) = serve(&config, "https").await;
    let mut req = request(
        Method::POST,
        "g.test",
        "/e",
        &[
            ("x-set", "old"),
            ("x-set", "older"),
            ("x-add", "one"),
            ("x-drop", "1"),
            ("x-secret", "1"),
        ],
    );
    *req.body_mut() = common::full("hello world");
    let reply = send1(addr, req).await;
    let report = reply.report();
    assert_eq!(report.header("x-set"), Some("new"));
    assert_eq!(report.header_count("x-set"), 1);
    let added: Vec<&str> = report
        .headers
        .iter()
        .filter(|(k, _)| k == "x-add")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(added, ["one", "two"]);
    assert_eq!(report.header("x-drop"), None);
    // Edits of framing and hop-by-hop headers never reach the upstream, nor change
    // the body it reads.
    for name in [
        "connection",
        "transfer-encoding",
        "keep-alive",
        "upgrade",
        "te",
    ] {
        assert_eq!(report.header(name), None, "{name} reached the upstream");
    }
    assert_eq!(report.header("content-length"), Some("11"));
    assert_eq!(report.get("len"), "11");
    assert_eq!(report.header("host"), Some("g.test"));
    // The client's x-secret was not named by a Connection header of the client's.
    assert_eq!(report.header("x-secret"), Some("1"));
    // The response.
    assert_eq!(reply.headers["x-resp-set"], "1");
    assert_eq!(reply.headers["x-resp-add"], "1");
    assert!(reply.headers.get("x-backend").is_none());
    assert!(reply.headers.get("keep-alive").is_none());
    assert!(reply.headers.get("proxy-authenticate").is_none());
}

fn redirect() -> Redirect {
    Redirect {
        scheme: None,
        hostname: None,
        port: None,
        path: None,
        status: StatusCode::FOUND,
    }
}

/// Mirrors HTTPRouteRedirectHostAndStatus, HTTPRouteRedirectScheme, HTTPRouteRedirectPath,
/// HTTPRouteRedirectPort and HTTPRouteRedirectPortAndScheme, with a Host that carries
/// userinfo.
#[tokio::test]
async fn redirects_follow_the_gateway_port_rules_and_never_reflect_a_bad_host() {
    let rules = vec![
        prefix(
            "/same",
            RouteRule::default(),
            RouteAction::Redirect(redirect()),
        ),
        prefix(
            "/to-https",
            RouteRule::default(),
            RouteAction::Redirect(Redirect {
                scheme: Some("https".into()),
                status: StatusCode::MOVED_PERMANENTLY,
                ..redirect()
            }),
        ),
        prefix(
            "/to-http",
            RouteRule::default(),
            RouteAction::Redirect(Redirect {
                scheme: Some("http".into()),
                ..redirect()
            }),
        ),
        prefix(
            "/port",
            RouteRule::default(),
            RouteAction::Redirect(Redirect {
                port: Some(8443),
                ..redirect()
            }),
        ),
        prefix(
            "/default-port",
            RouteRule::default(),
            RouteAction::Redirect(Redirect {
                scheme: Some("https".into()),
                port: Some(443),
                ..redirect()
            }),
        ),
        prefix(
            "/elsewhere",
            RouteRule::default(),
            RouteAction::Redirect(Redirect {
                hostname: Some("other.test".into()),
                path: Some(PathRewrite::Full("/landing".into())),
                ..redirect()
            }),
        ),
        prefix(
            "/old",
            RouteRule::default(),
            RouteAction::Redirect(Redirect {
                path: Some(PathRewrite::Prefix("/new".into())),
                status: StatusCode::MOVED_PERMANENTLY,
                ..redirect()
            }),
        ),
    ];
    let mut config = with_routes(rules.clone());
    // The wildcard site routes `localhost@evil.example`: the lookup reads it as one
    // label under `example`. Only the strict parser stands between it and a Location.
    config.sites[1].routes = vec![prefix(
        "/",
        RouteRule::default(),
        RouteAction::Redirect(redirect()),
    )];
    let (tls, _) = serve(&config, "https").await;
    let (plain, _) = serve(
        &with_routes(
            rules
                .into_iter()
                .map(|mut r| {
                    r.rule.listener = ListenerScope::Http;
                    r
                })
                .collect(),
        ),
        "http",
    )
    .await;

    let location = |reply: &Reply| {
        reply
            .headers
            .get("location")
            .map(|v| v.to_str().unwrap().to_string())
    };
    for (addr, host, target, status, want) in [
        // Nothing set: the listener's scheme and port, not the Host's port.
        (
            tls,
            "g.test:8443",
            "/same/x?q=1",
            302,
            "https://g.test/same/x?q=1",
        ),
        (
            plain,
            "g.test:8080",
            "/same/x?q=1",
            302,
            "http://g.test/same/x?q=1",
        ),
        // A scheme: its well-known port, never written.
        (plain, "g.test", "/to-https", 301, "https://g.test/to-https"),
        (tls, "g.test:8443", "/to-http", 302, "http://g.test/to-http"),
        // A port: written unless it is the scheme's default.
        (tls, "g.test", "/port", 302, "https://g.test:8443/port"),
        (plain, "g.test", "/port", 302, "http://g.test:8443/port"),
        (
            plain,
            "g.test",
            "/default-port",
            302,
            "https://g.test/default-port",
        ),
        // Host and path.
        (
            tls,
            "g.test",
            "/elsewhere/x?y=1",
            302,
            "https://other.test/landing?y=1",
        ),
        (tls, "g.test", "/old/x/y?z", 301, "https://g.test/new/x/y?z"),
        (tls, "g.test", "/%6fld", 301, "https://g.test/new"),
        (tls, "G.Test.", "/same", 302, "https://g.test/same"),
        (tls, "[::1]", "/", 421, ""),
    ] {
        let reply = send1(addr, request(Method::GET, host, target, &[])).await;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{host}{target}: {}",
            reply.text()
        );
        if status != 421 {
            assert_eq!(location(&reply).as_deref(), Some(want), "{host}{target}");
        }
    }
    // A Host that routes (`*.example`) but is not a plain host: 400, nothing reflected.
    for host in ["localhost@evil.example", "a.example:99999"] {
        let reply = send1(tls, request(Method::GET, host, "/x", &[])).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{host}");
        assert_eq!(location(&reply), None);
        assert!(!reply.text().contains("evil"), "{}", reply.text());
    }
    let reply = send1(tls, request(Method::GET, "www.example", "/x", &[])).await;
    assert_eq!(location(&reply).as_deref(), Some("https://www.example/x"));
}

/// Mirrors HTTPRouteRewriteHost and HTTPRouteRewritePath.
#[tokio::test]
async fn url_rewrites_change_host_and_path_and_keep_the_query() {
    let echo = backend("echo", Proto::Http1).await;
    let h2c = backend("h2c", Proto::H2c).await;
    let rewrite = |hostname: Option<&str>, path: Option<PathRewrite>| RouteRule {
        rewrite: Some(Rewrite {
            hostname: hostname.map(str::to_string),
            path,
        }),
        ..RouteRule::default()
    };
    let mut h2c_action = to(h2c);
    if let RouteAction::Proxy { protocol, .. } = &mut h2c_action {
        *protocol = UpstreamProtocol::H2c;
    }
    let config = with_routes(vec![
        prefix("/host", rewrite(Some("internal.svc"), None), to(echo)),
        prefix("/h2c", rewrite(Some("internal.svc"), None), h2c_action),
        prefix(
            "/full",
            rewrite(None, Some(PathRewrite::Full("/one".into()))),
            to(echo),
        ),
        prefix(
            "/strip",
            rewrite(None, Some(PathRewrite::Prefix("/".into()))),
            to(echo),
        ),
        prefix(
            "/foo",
            rewrite(None, Some(PathRewrite::Prefix("/bar".into()))),
            to(echo),
        ),
    ]);
    let (addr, _) = serve(&config, "https").await;

    let report = get(addr, "/host/x?a=1", &[]).await.report();
    assert_eq!(report.header("host"), Some("internal.svc"));
    assert_eq!(report.header("x-forwarded-host"), Some("g.test"));
    assert_eq!(report.get("uri"), "/host/x?a=1", "no path rewrite: as sent");
    let report = get(addr, "/h2c", &[]).await.report();
    assert_eq!(report.get("authority"), "internal.svc");
    for (target, want) in [
        ("/full/deep/er?x=1&y", "/one?x=1&y"),
        ("/full", "/one"),
        ("/strip/x?q", "/x?q"),
        ("/strip", "/"),
        ("/strip/", "/"),
        ("/foo/x/y", "/bar/x/y"),
        ("/foo", "/bar"),
        // The rewrite starts from the path's normal form, the one the route matched.
        ("/f%6Fo//x/./y?q=%2F", "/bar/x/y?q=%2F"),
    ] {
        let report = get(addr, target, &[]).await.report();
        assert_eq!(report.get("uri"), want, "{target}");
    }
}

/// Mirrors HTTPRouteWeight: 1,000 requests split within ±5% of the weights.
#[tokio::test]
async fn weighted_split_shares_requests_by_weight_and_never_picks_weight_zero() {
    let (a, _) = backend_counted("a", Proto::Http1).await;
    let (b, _) = backend_counted("b", Proto::Http1).await;
    let (never, never_accepted) = backend_counted("never", Proto::Http1).await;
    let split = RouteAction::Split(
        vec![
            Weighted {
                weight: 70,
                action: to(a),
            },
            Weighted {
                weight: 0,
                action: to(never),
            },
            Weighted {
                weight: 30,
                action: to(b),
            },
        ]
        .into(),
    );
    let config = with_routes(vec![prefix("/", RouteRule::default(), split)]);
    let (addr, metrics) = serve(&config, "https").await;
    let mut client = h1(addr).await;
    let (mut seen_a, mut seen_b) = (0, 0);
    for _ in 0..1000 {
        let response = client
            .send_request(request(Method::GET, "g.test", "/", &[]))
            .await
            .unwrap();
        match read(response).await.report().get("backend") {
            "a" => seen_a += 1,
            "b" => seen_b += 1,
            other => panic!("{other} was chosen"),
        }
    }
    assert!((650..=750).contains(&seen_a), "a: {seen_a}");
    assert!((250..=350).contains(&seen_b), "b: {seen_b}");
    assert_eq!(never_accepted.load(Ordering::SeqCst), 0);
    // Counted per site like any other response.
    let text = metrics.render();
    assert!(
        text.contains("portico_requests_total{site=\"g.test\",code=\"200\"} 1000\n"),
        "{text}"
    );
}

/// Mirrors HTTPRouteInvalidBackendRefUnknownKind and HTTPRouteInvalidNonExistentBackendRef
/// in the request path: the invalid backend's share of requests gets 500.
#[tokio::test]
async fn an_invalid_backend_answers_500_in_its_share() {
    let a = backend("a", Proto::Http1).await;
    let split = RouteAction::Split(
        vec![
            Weighted {
                weight: 1,
                action: to(a),
            },
            Weighted {
                weight: 1,
                action: respond(500, "no valid backend"),
            },
        ]
        .into(),
    );
    let only_invalid = RouteAction::Split(
        vec![Weighted {
            weight: 3,
            action: respond(500, "invalid reference"),
        }]
        .into(),
    );
    let config = with_routes(vec![
        prefix("/half", RouteRule::default(), split),
        prefix(
            "/none",
            RouteRule {
                response_headers: HeaderEdits {
                    set: headers(&[("x-edited", "1")]),
                    ..HeaderEdits::default()
                },
                ..RouteRule::default()
            },
            only_invalid,
        ),
    ]);
    let (addr, metrics) = serve(&config, "https").await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(get(addr, "/half", &[]).await.status.as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 500).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    let reply = get(addr, "/none", &[]).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.text(), "invalid reference");
    assert_eq!(reply.headers["x-edited"], "1");
    let text = metrics.render();
    assert!(
        text.contains("portico_requests_total{site=\"g.test\",code=\"500\"} 6\n"),
        "{text}"
    );
}

/// The whole server: a site with a certificate and a route for port 80 serves that
/// route there (only that one), while a site without one still redirects to https,
/// and ACME challenges come first for both.
#[tokio::test]
async fn port_80_serves_http_routes_and_still_redirects_sites_without_them() {
    use common::edge::{get_h1, h1 as tls_h1, install_provider, plain_get, start_with};
    install_provider();
    let echo = backend("echo", Proto::Http1).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[[site]]\nhosts = [\"a.internal\"]\ntls = \"internal\"\nupstreams = [\"127.0.0.1:9\"]\n\n[[site]]\nhosts = [\"b.internal\"]\ntls = \"internal\"\n[[site.route]]\npath = \"/\"\nrespond = {{ status = 200, body = \"b\" }}\n",
        common::edge::header(dir.path())
    );
    let mut config = Config::parse(Path::new("portico.toml"), &text).unwrap();
    let http_only = RouteRule {
        listener: ListenerScope::Http,
        ..RouteRule::default()
    };
    config.sites[0].routes = vec![
        prefix("/plain", http_only.clone(), to(echo)),
        prefix(
            "/moved",
            http_only,
            RouteAction::Redirect(Redirect {
                scheme: Some("https".into()),
                status: StatusCode::MOVED_PERMANENTLY,
                ..redirect()
            }),
        ),
        prefix("/", RouteRule::default(), respond(200, "over tls")),
    ];
    config.sites[0].routes.sort_by_key(Route::precedence);
    let (store, locker) = portico::server::open_store(&config).await.unwrap();
    let p = start_with(dir, config, store, locker, Default::default()).await;
    p.challenges.insert("tok-1", "tok-1.thumbprint");

    let (status, location, body) = plain_get(p.http, "a.internal", "/plain/x?q=1").await;
    assert_eq!((status, location), (200, None), "{body}");
    let report = common::Report::parse(&body);
    assert_eq!(report.get("uri"), "/plain/x?q=1");
    assert_eq!(report.header("x-forwarded-proto"), Some("http"));
    let (status, location, _) = plain_get(p.http, "a.internal:80", "/moved/x").await;
    assert_eq!(
        (status, location.as_deref()),
        (301, Some("https://a.internal/moved/x"))
    );
    // The site's other routes are not served on port 80: as a Gateway's HTTP listener
    // would, it answers 404 rather than the redirect.
    let (status, location, _) = plain_get(p.http, "a.internal", "/other").await;
    assert_eq!((status, location), (404, None));
    // ACME first.
    let (status, _, body) =
        plain_get(p.http, "a.internal", "/.well-known/acme-challenge/tok-1").await;
    assert_eq!((status, body.as_str()), (200, "tok-1.thumbprint"));
    // A site without routes for port 80: the redirect, as before.
    let (status, location, _) = plain_get(p.http, "b.internal", "/x?y").await;
    assert_eq!(status, 308);
    assert_eq!(location.unwrap(), "https://b.internal/x?y");

    // Over TLS the port-80 routes are not there.
    let root = p.root_pem();
    let mut client = tls_h1(p.https, "a.internal", &root).await;
    assert_eq!(
        get_h1(&mut client, "a.internal", "/plain/x").await,
        (200, "over tls".to_string())
    );
    assert_eq!(
        get_h1(&mut client, "a.internal", "/moved").await,
        (200, "over tls".to_string())
    );
    p.stop().await;
}
