//! The request path through the whole server over TLS: connection reuse and 421, bodies
//! over HTTP/2, errors, upgrades, limits and graceful shutdown.

use portico_test_support as common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::edge::{self, client_config, install_provider, tls_connect};
use common::{Proto, backend, backend_counted, refused_addr};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn sites(upstream: std::net::SocketAddr, limits: &str) -> String {
    format!(
        "{limits}\n[[site]]\nhosts = [\"a.internal\", \"b.internal\"]\nupstreams = [\"{upstream}\"]\n\n[[site]]\nhosts = [\"c.internal\"]\n[[site.route]]\npath = \"/\"\nrespond = {{ status = 200, body = \"c\" }}\n"
    )
}

async fn h2_tls(
    p: &edge::Portico,
    name: &str,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    edge::h2(p.https, name, &p.root_pem()).await
}

#[tokio::test]
async fn one_h2_connection_serves_every_name_its_certificate_covers_and_421_otherwise() {
    install_provider();
    let up = backend("up", Proto::Http1).await;
    let p = edge::start(&sites(up, "")).await;
    let mut send = h2_tls(&p, "a.internal").await;
    let (status, body) = edge::get_h2(&mut send, "a.internal", "/x?y=1").await;
    assert_eq!(status, 200);
    assert!(body.contains("backend: up"), "{body}");
    assert!(body.contains("uri: /x?y=1"), "{body}");
    assert!(body.contains("header x-forwarded-proto: https"), "{body}");
    assert!(body.contains("header x-forwarded-for: 127.0.0.1"), "{body}");
    assert!(
        body.contains("header x-forwarded-host: a.internal"),
        "{body}"
    );
    // Same certificate, other name: the connection is reused.
    assert_eq!(edge::get_h2(&mut send, "b.internal", "/").await.0, 200);
    // Another site's name on this connection is misdirected, as is an unknown one.
    assert_eq!(edge::get_h2(&mut send, "c.internal", "/").await.0, 421);
    assert_eq!(edge::get_h2(&mut send, "nobody.internal", "/").await.0, 421);
    // The other site on its own connection answers.
    let mut c = h2_tls(&p, "c.internal").await;
    assert_eq!(
        edge::get_h2(&mut c, "c.internal", "/").await,
        (200, "c".into())
    );
}

#[tokio::test]
async fn a_5_mb_post_over_h2_arrives_whole() {
    install_provider();
    let up = backend("up", Proto::Http1).await;
    let p = edge::start(&sites(up, "")).await;
    let mut send = h2_tls(&p, "a.internal").await;
    let body = common::random_bytes(5 * 1024 * 1024, 7);
    let mut sum = common::Fnv::new();
    sum.update(&body);
    let req = hyper::Request::post("https://a.internal/upload")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains(&format!("len: {}\n", 5 * 1024 * 1024)),
        "{text}"
    );
    assert!(text.contains(&format!("sum: {:016x}\n", sum.0)), "{text}");
}

/// One stream of an h2 connection waiting on its upstream holds back neither the other
/// streams, nor a large upload beside it, nor the connection's reads.
#[tokio::test]
async fn one_h2_stream_waiting_holds_back_none_of_the_others() {
    install_provider();
    let (up, accepted) = backend_counted("up", Proto::Http1).await;
    let p = edge::start(&sites(up, "")).await;
    let send = h2_tls(&p, "a.internal").await;
    let mut slow_send = send.clone();
    // The upstream answers it in a minute, long after this test is over.
    let slow =
        tokio::spawn(async move { edge::get_h2(&mut slow_send, "a.internal", "/slow").await });
    while accepted.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut others = Vec::new();
    for n in 0..20 {
        let mut send = send.clone();
        others.push(tokio::spawn(async move {
            edge::get_h2(&mut send, "a.internal", &format!("/n/{n}")).await
        }));
    }
    let body = common::random_bytes(1024 * 1024, 3);
    let upload = hyper::Request::post("https://a.internal/upload")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(30), async {
        let resp = send.clone().send_request(upload).await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&text).contains("len: 1048576\n"),
            "{text:?}"
        );
        for (n, other) in others.into_iter().enumerate() {
            let (status, body) = other.await.unwrap();
            assert_eq!(status, 200, "{body}");
            assert!(body.contains(&format!("uri: /n/{n}")), "{body}");
        }
    })
    .await;
    assert!(answered.is_ok(), "a stream waited for the slow one");
    assert!(!slow.is_finished(), "the slow stream is still waiting");
    slow.abort();
}

#[tokio::test]
async fn upstream_failures_map_to_502_and_504_over_tls() {
    install_provider();
    let down = refused_addr().await;
    let slow = backend("slow", Proto::Http1).await;
    let p = edge::start(&format!(
        "[limits]\nupstream_timeout = \"300ms\"\n[[site]]\nhosts = [\"a.internal\"]\nupstreams = [\"{down}\"]\n[[site.route]]\npath = \"/slow\"\nupstreams = [\"{slow}\"]\n"
    ))
    .await;
    let mut send = h2_tls(&p, "a.internal").await;
    let (status, body) = edge::get_h2(&mut send, "a.internal", "/").await;
    assert_eq!(status, 502, "{body}");
    assert!(
        !body.contains("127.0.0.1"),
        "no internals in the body: {body}"
    );
    assert_eq!(edge::get_h2(&mut send, "a.internal", "/slow").await.0, 504);
}

#[tokio::test]
async fn websocket_upgrade_passes_through_over_tls() {
    install_provider();
    let up = backend("ws", Proto::Http1).await;
    let p = edge::start(&sites(up, "")).await;
    let mut send = edge::h1(p.https, "a.internal", &p.root_pem()).await;
    let req = hyper::Request::get("/chat")
        .header("host", "a.internal")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut io = TokioIo::new(upgraded);
    for msg in [&b"hello"[..], &[7u8; 70_000][..]] {
        io.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        io.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(tls: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server never closed the connection: {}",
        String::from_utf8_lossy(&all)
    );
    all
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed_but_busy_ones_are_not() {
    install_provider();
    let up = backend("up", Proto::Http1).await;
    let p = edge::start(&sites(
        up,
        "[limits]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"300ms\"",
    ))
    .await;
    let config = client_config(&[&p.root_pem()], &[b"http/1.1"]);

    // Half a request, then nothing.
    let mut tls = tls_connect(p.https, "a.internal", config.clone())
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.int")
        .await
        .unwrap();
    let got = read_to_close(&mut tls).await;
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"));

    // A request that outlasts the idle timeout completes; then the idle connection closes.
    let mut tls = tls_connect(p.https, "a.internal", config.clone())
        .await
        .unwrap();
    tls.write_all(b"GET /delay/900 HTTP/1.1\r\nHost: a.internal\r\n\r\n")
        .await
        .unwrap();
    let got = String::from_utf8_lossy(&read_to_close(&mut tls).await).into_owned();
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    assert!(got.contains("backend: up"), "{got}");

    // A TLS connection that never sends a request is told so (408) and closed.
    let mut tls = tls_connect(p.https, "a.internal", config).await.unwrap();
    let got = String::from_utf8_lossy(&read_to_close(&mut tls).await).into_owned();
    assert!(got.starts_with("HTTP/1.1 408 Request Timeout"), "{got}");
}

#[tokio::test]
async fn oversized_headers_get_431_and_h2_streams_are_capped() {
    install_provider();
    let up = backend("up", Proto::Http1).await;
    let p = edge::start(&sites(
        up,
        "[limits]\nmax_header_bytes = 16384\nmax_h2_streams = 7",
    ))
    .await;
    let config = client_config(&[&p.root_pem()], &[b"http/1.1"]);
    let mut tls = tls_connect(p.https, "a.internal", config).await.unwrap();
    let big = "x".repeat(40_000);
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: a.internal\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let got = String::from_utf8_lossy(&read_to_close(&mut tls).await).into_owned();
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");

    let tls = tls_connect(
        p.https,
        "a.internal",
        client_config(&[&p.root_pem()], &[b"h2"]),
    )
    .await
    .unwrap();
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get("https://a.internal/").body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    assert_eq!(client.current_max_send_streams(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_drains_requests_in_flight() {
    install_provider();
    let (up, accepted) = backend_counted("up", Proto::Http1).await;
    let p = edge::start(&sites(up, "")).await;
    let addr = p.https;
    let mut send = h2_tls(&p, "a.internal").await;
    let in_flight =
        tokio::spawn(async move { edge::get_h2(&mut send, "a.internal", "/delay/1500").await });
    // Shut down only once the request has reached the upstream.
    while accepted.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopping = tokio::spawn(p.stop());
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("backend: up"));
    stopping.await.unwrap();
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "no longer accepting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_on_requests_past_its_deadline() {
    install_provider();
    let (up, accepted) = backend_counted("up", Proto::Http1).await;
    let p = edge::start(&sites(up, "[limits]\nshutdown_timeout = \"200ms\"")).await;
    let mut send = h2_tls(&p, "a.internal").await;
    let req = hyper::Request::get("https://a.internal/slow")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let in_flight = tokio::spawn(async move { send.send_request(req).await.map(|r| r.status()) });
    while accepted.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The upstream would answer in a minute; stop returns long before that, and the
    // client sees its request cut rather than answered.
    let stopped = tokio::time::timeout(Duration::from_secs(30), p.stop()).await;
    assert!(stopped.is_ok(), "shutdown waited past its deadline");
    let outcome = tokio::time::timeout(Duration::from_secs(30), in_flight).await;
    assert!(!matches!(outcome, Ok(Ok(Ok(s))) if s == 200), "{outcome:?}");
}
