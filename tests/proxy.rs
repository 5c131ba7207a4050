//! The request path over real sockets: a hyper client talks to the proxy (HTTP/1.1 or
//! HTTP/2), the proxy to hyper backends (HTTP/1.1 or h2c), all on 127.0.0.1:0.

use portico_test_support as common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use portico::config::HostPattern;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn site(host: &str, upstreams: &[std::net::SocketAddr]) -> String {
    let list: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[site]]\nhosts = [\"{host}\"]\nupstreams = [{}]\n",
        list.join(", ")
    )
}

#[tokio::test]
async fn routes_by_host_ignoring_port_and_case() {
    let a = backend("A", Proto::Http1).await;
    let b = backend("B", Proto::Http1).await;
    let toml = format!(
        "{}{}[[site]]\nhosts = [\"*.w.test\"]\ntls = \"internal\"\nupstreams = [\"{b}\"]\n",
        site("a.test", &[a]),
        site("b.test", &[b])
    );
    let (proxy, _) = start_proxy(&toml).await;

    let r = send1(proxy, get("a.test", "/")).await.report();
    assert_eq!(r.get("backend"), "A");
    let r = send1(proxy, get("B.Test:8443", "/")).await.report();
    assert_eq!(r.get("backend"), "B");
    // The upstream sees the Host the client sent, port and case kept.
    assert_eq!(r.header("host"), Some("B.Test:8443"));
    let r = send1(proxy, get("x.W.test", "/")).await.report();
    assert_eq!(r.get("backend"), "B");
    // HTTP/2: the host is :authority.
    let r = send2(proxy, get2("a.test:443", "/")).await.report();
    assert_eq!(r.get("backend"), "A");
    assert_eq!(r.header("host"), Some("a.test:443"));
}

#[tokio::test]
async fn longest_prefix_wins() {
    let a = backend("A", Proto::Http1).await;
    let api = backend("API", Proto::Http1).await;
    let toml = format!(
        r#"
[[site]]
hosts = ["a.test"]
upstreams = ["{a}"]
[[site.route]]
path = "/api/"
upstreams = ["{api}"]
[[site.route]]
path = "/api/v2/"
respond = {{ status = 200, body = "v2" }}
"#
    );
    let (proxy, _) = start_proxy(&toml).await;
    let backend_of = |reply: Reply| reply.report().get("backend").to_string();
    assert_eq!(
        backend_of(send1(proxy, get("a.test", "/api/x")).await),
        "API"
    );
    assert_eq!(backend_of(send1(proxy, get("a.test", "/apix")).await), "A");
    assert_eq!(backend_of(send1(proxy, get("a.test", "/api")).await), "A");
    assert_eq!(backend_of(send1(proxy, get("a.test", "/")).await), "A");
    let v2 = send1(proxy, get("a.test", "/api/v2/users")).await;
    assert_eq!(v2.status, StatusCode::OK);
    assert_eq!(v2.text(), "v2");
}

#[tokio::test]
async fn unknown_host_is_421_and_no_route_is_404() {
    let toml = r#"
[[site]]
hosts = ["a.test"]
[[site.route]]
path = "/api/"
respond = { status = 200, body = "api" }
"#;
    let (proxy, _) = start_proxy(toml).await;
    let r = send1(proxy, get("other.test", "/api/")).await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(r.text(), "no site for this host\n");
    let r = send2(proxy, get2("other.test", "/api/")).await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
    let r = send1(proxy, get("a.test", "/web/")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.text(), "no route for this path\n");
    assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");
    // No Host at all (HTTP/1.1 requires one).
    let no_host = Request::get("/api/").body(empty()).unwrap();
    let r = send1(proxy, no_host).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn host_outside_the_connection_certificate_is_421() {
    let toml = r#"
[[site]]
hosts = ["a.test", "www.a.test"]
[[site.route]]
path = "/"
respond = { body = "a" }

[[site]]
hosts = ["b.test"]
[[site.route]]
path = "/"
respond = { body = "b" }
"#;
    let cert = vec![
        HostPattern::Exact("a.test".into()),
        HostPattern::Exact("www.a.test".into()),
    ];
    let (proxy, _) = start_proxy_with(toml, Some(cert)).await;

    let r = send1(proxy, get("b.test", "/")).await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(
        r.text(),
        "this connection's certificate does not cover this host\n"
    );

    // One HTTP/2 connection reused for every name its certificate covers.
    let mut conn = h2(proxy).await;
    for (authority, want) in [
        ("a.test", StatusCode::OK),
        ("www.a.test", StatusCode::OK),
        ("b.test", StatusCode::MISDIRECTED_REQUEST),
        ("WWW.A.TEST:443", StatusCode::OK),
    ] {
        let r = read(conn.send_request(get2(authority, "/")).await.unwrap()).await;
        assert_eq!(r.status, want, "{authority}");
    }
}

#[tokio::test]
async fn respond_route_answers_fixed_status_and_body() {
    let toml = r#"
[[site]]
hosts = ["a.test"]
[[site.route]]
path = "/down"
respond = { status = 503, body = "maintenance" }
"#;
    let (proxy, _) = start_proxy(toml).await;
    let r = send2(proxy, get2("a.test", "/down/now")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.text(), "maintenance");
    assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");
}

#[tokio::test]
async fn hop_by_hop_dropped_both_ways_and_forwarded_headers_added() {
    let a = backend("A", Proto::Http1).await;
    let (proxy, _) = start_proxy(&site("a.test", &[a])).await;
    let req = Request::post("/path/x?q=1&r=%20two")
        .header("host", "a.test:8443")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("te", "trailers")
        .header("upgrade", "h2c")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", "spoofed.test")
        .header("x-hop-response", "1")
        .header("x-end-to-end", "kept")
        .body(full("abc"))
        .unwrap();
    let reply = send1(proxy, req).await;

    // Response: the backend's hop-by-hop headers are gone, the rest is kept.
    for name in ["x-resp-hop", "keep-alive", "proxy-authenticate"] {
        assert!(!reply.headers.contains_key(name), "response kept {name}");
    }
    assert_eq!(reply.headers["x-end-to-end"], "kept");
    assert_eq!(reply.headers["x-backend"], "A");

    let r = reply.report();
    assert_eq!(r.get("method"), "POST");
    assert_eq!(r.get("uri"), "/path/x?q=1&r=%20two");
    assert_eq!(r.get("version"), "HTTP/1.1");
    assert_eq!(r.get("len"), "3");
    for name in [
        "x-private",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "upgrade",
    ] {
        assert_eq!(r.header(name), None, "request kept {name}");
    }
    // hyper's client adds `connection: keep-alive` only for HTTP/1.0; nothing else may.
    assert_eq!(r.header("connection"), None);
    assert_eq!(r.header("te"), Some("trailers"));
    assert_eq!(r.header("x-end-to-end"), Some("kept"));
    assert_eq!(r.header("host"), Some("a.test:8443"));
    // The client's own X-Forwarded-For is not believed: it is not a trusted proxy.
    assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(r.header("x-forwarded-proto"), Some("https"));
    assert_eq!(r.header("x-forwarded-host"), Some("a.test:8443"));
    assert_eq!(r.header("via"), Some("1.1 portico"));
    assert_eq!(r.header_count("x-forwarded-for"), 1);

    // From an HTTP/2 client: Via says 2, the upstream still gets HTTP/1.1 and a Host.
    let r = send2(proxy, get2("a.test", "/h2?x=y")).await.report();
    assert_eq!(r.header("via"), Some("2 portico"));
    assert_eq!(r.get("version"), "HTTP/1.1");
    assert_eq!(r.get("uri"), "/h2?x=y");
    assert_eq!(r.header("host"), Some("a.test"));
    assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test]
async fn five_megabyte_post_over_http2_arrives_whole() {
    let a = backend("A", Proto::Http1).await;
    let (proxy, _) = start_proxy(&site("a.test", &[a])).await;
    let data = random_bytes(5 * 1024 * 1024, 42);
    let req = Request::post("http://a.test/upload")
        .body(full(data.clone()))
        .unwrap();
    let r = send2(proxy, req).await.report();
    assert_eq!(r.get("len"), data.len().to_string());
    assert_eq!(r.get("sum"), Fnv::of(&data));
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let a = backend("A", Proto::Http1).await;
    let (proxy, _) = start_proxy(&site("a.test", &[a])).await;

    // 256 MiB up, generated as it is sent, counted as it arrives.
    const UP: usize = 256 * 1024 * 1024;
    let req = Request::post("/upload")
        .header("host", "a.test")
        .body(pattern_body(UP, 64 * 1024))
        .unwrap();
    let r = send1(proxy, req).await.report();
    assert_eq!(r.get("len"), UP.to_string());
    let mut want = Fnv::new();
    pattern_chunks(UP, 64 * 1024).for_each(|c| want.update(&c));
    assert_eq!(r.get("sum"), format!("{:016x}", want.0));

    // 64 MiB down over HTTP/2, counted frame by frame.
    const DOWN: usize = 64 * 1024 * 1024;
    let mut conn = h2(proxy).await;
    let response = conn
        .send_request(get2("a.test", &format!("/download/{DOWN}")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut got = 0usize;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            got += data.len();
        }
    }
    assert_eq!(got, DOWN);
}

#[tokio::test]
async fn round_robin_alternates() {
    let a = backend("A", Proto::Http1).await;
    let b = backend("B", Proto::Http1).await;
    let (proxy, _) = start_proxy(&site("a.test", &[a, b])).await;
    let mut seen = Vec::new();
    let mut conn = h1(proxy).await;
    for _ in 0..6 {
        let r = read(conn.send_request(get("a.test", "/")).await.unwrap()).await;
        seen.push(r.report().get("backend").to_string());
    }
    let first = seen[0].clone();
    let second = if first == "A" { "B" } else { "A" };
    for (i, name) in seen.iter().enumerate() {
        let want = if i % 2 == 0 { first.as_str() } else { second };
        assert_eq!(name, want, "{seen:?}");
    }
}

#[tokio::test]
async fn a_down_upstream_is_skipped_and_retried_around() {
    let down = refused_addr().await;
    let a = backend("A", Proto::Http1).await;
    let (proxy, _) = start_proxy(&site("a.test", &[down, a])).await;
    // The first request goes to the down upstream first (round robin starts there): it
    // is retried on the healthy one, body included, since nothing of it was sent.
    let data = random_bytes(100_000, 3);
    let req = Request::post("/first")
        .header("host", "a.test")
        .body(full(data.clone()))
        .unwrap();
    let r = send1(proxy, req).await.report();
    assert_eq!(r.get("backend"), "A");
    assert_eq!(r.get("sum"), Fnv::of(&data));
    // Then the down one is cooling down: everything goes to A.
    for i in 0..6 {
        let r = if i % 2 == 0 {
            send1(proxy, get("a.test", "/")).await
        } else {
            send2(proxy, get2("a.test", "/")).await
        };
        assert_eq!(r.report().get("backend"), "A");
    }
}

#[tokio::test]
async fn all_upstreams_down_is_502() {
    let d1 = refused_addr().await;
    let d2 = refused_addr().await;
    let (proxy, _) = start_proxy(&site("a.test", &[d1, d2])).await;
    for _ in 0..3 {
        let r = send1(proxy, get("a.test", "/")).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert_eq!(r.text(), "upstream unreachable\n");
    }
    let r = send2(proxy, get2("a.test", "/")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let a = backend("A", Proto::Http1).await;
    let toml = format!(
        "[limits]\nupstream_timeout = \"300ms\"\n{}",
        site("a.test", &[a])
    );
    let (proxy, _) = start_proxy(&toml).await;
    let r = send1(proxy, get("a.test", "/slow")).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.text(), "upstream timed out\n");
    // The upstream is slow, not down: the next request is served.
    let r = send1(proxy, get("a.test", "/fast")).await;
    assert_eq!(r.report().get("backend"), "A");
}

#[tokio::test]
async fn h2c_upstream() {
    let g = backend("G", Proto::H2c).await;
    let toml = format!(
        "[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"{g}\"]\nupstream_protocol = \"h2c\"\n"
    );
    let (proxy, _) = start_proxy(&toml).await;

    // From HTTP/1.1: the upstream gets HTTP/2 with the client's host as :authority.
    let req = Request::post("/pkg.Service/Call?x=1")
        .header("host", "A.test:8443")
        .header("te", "trailers")
        .body(full("grpc-ish"))
        .unwrap();
    let r = send1(proxy, req).await.report();
    assert_eq!(r.get("backend"), "G");
    assert_eq!(r.get("version"), "HTTP/2.0");
    assert_eq!(r.get("authority"), "A.test:8443");
    assert_eq!(r.get("uri"), "/pkg.Service/Call?x=1");
    assert_eq!(r.get("len"), "8");
    assert_eq!(r.header("host"), None);
    assert_eq!(r.header("te"), Some("trailers"));
    assert_eq!(r.header("x-forwarded-host"), Some("A.test:8443"));

    // From HTTP/2, several requests on one connection.
    let mut conn = h2(proxy).await;
    for i in 0..3 {
        let data = random_bytes(70_000 + i, i as u64);
        let req = Request::post("http://a.test/up")
            .body(full(data.clone()))
            .unwrap();
        let r = read(conn.send_request(req).await.unwrap()).await.report();
        assert_eq!(r.get("authority"), "a.test");
        assert_eq!(r.get("sum"), Fnv::of(&data));
    }

    // Trailers (gRPC's status) come back through.
    let response = conn
        .send_request(get2("a.test", "/trailers"))
        .await
        .unwrap();
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "payload");
}

#[tokio::test]
async fn upgrade_passes_bytes_both_ways() {
    let a = backend("A", Proto::Http1).await;
    let (proxy, _) = start_proxy(&site("a.test", &[a])).await;
    let mut conn = h1(proxy).await;
    let req = Request::get("/ws")
        .header("host", "a.test")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(empty())
        .unwrap();
    let response = conn.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()["upgrade"], "websocket");
    assert_eq!(response.headers()["x-backend"], "A");
    let upgraded = hyper::upgrade::on(response).await.expect("upgraded");
    let mut io = hyper_util::rt::TokioIo::new(upgraded);
    for message in [&b"hello"[..], &b"second message"[..], &[0u8, 255, 7][..]] {
        io.write_all(message).await.unwrap();
        let mut got = vec![0u8; message.len()];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(got, message);
    }
    // A bigger burst, to see both directions keep flowing.
    let burst = random_bytes(1024 * 1024, 9);
    let (mut rd, mut wr) = tokio::io::split(io);
    let to_send = burst.clone();
    let writer = tokio::spawn(async move { wr.write_all(&to_send).await.unwrap() });
    let mut got = vec![0u8; burst.len()];
    rd.read_exact(&mut got).await.unwrap();
    writer.await.unwrap();
    assert_eq!(Bytes::from(got), Bytes::from(burst));
}

#[tokio::test]
async fn update_switches_routes_for_the_next_request() {
    let a = backend("A", Proto::Http1).await;
    let b = backend("B", Proto::Http1).await;
    let one = "[[site]]\nhosts = [\"a.test\"]\n[[site.route]]\npath = \"/\"\nrespond = { body = \"one\" }\n";
    let (proxy, handle) = start_proxy(one).await;
    assert_eq!(send1(proxy, get("a.test", "/")).await.text(), "one");

    handle.update(&config(&site("a.test", &[a])));
    let mut conn = h1(proxy).await;
    let r = read(conn.send_request(get("a.test", "/")).await.unwrap()).await;
    assert_eq!(r.report().get("backend"), "A");

    // Same connection, new config: new upstream, and a site that appeared.
    let two = format!("{}{}", site("a.test", &[b]), site("new.test", &[a]));
    handle.update(&config(&two));
    let r = read(conn.send_request(get("a.test", "/")).await.unwrap()).await;
    assert_eq!(r.report().get("backend"), "B");
    let r = read(conn.send_request(get("new.test", "/")).await.unwrap()).await;
    assert_eq!(r.report().get("backend"), "A");

    handle.update(&config(&site("new.test", &[a])));
    let r = read(conn.send_request(get("a.test", "/")).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let (a, accepted) = backend_counted("A", Proto::Http1).await;
    let (proxy, handle) = start_proxy(&site("a.test", &[a])).await;
    // Each request on its own client connection: only the proxy's pool can reuse.
    for _ in 0..10 {
        assert_eq!(
            send1(proxy, get("a.test", "/"))
                .await
                .report()
                .get("backend"),
            "A"
        );
    }
    let after_first = accepted.load(std::sync::atomic::Ordering::SeqCst);
    // Whether a connection is back in the pool before the next request checks out is
    // a race between tasks, so only "fewer connections than requests" is certain.
    assert!(
        after_first < 10,
        "{after_first} connections for 10 requests"
    );

    // A reload that keeps the upstream keeps its pool (and a reload with more sites).
    handle.update(&config(&format!(
        "{}{}",
        site("a.test", &[a]),
        site("b.test", &[a])
    )));
    for host in ["a.test", "b.test"].iter().cycle().take(10) {
        assert_eq!(
            send1(proxy, get(host, "/")).await.report().get("backend"),
            "A"
        );
    }
    let total = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(total < 20, "{total} connections for 20 requests");
}
