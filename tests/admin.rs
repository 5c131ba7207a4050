//! The admin listener over real sockets: health and readiness, and `/metrics` after real
//! HTTPS traffic (certificate not-after, requests by site and status, handshake failures).

use portico_test_support as common;

use std::time::Duration;

use common::edge::{self, Portico, client_config, install_provider, tls_connect};
use common::{Proto, backend, refused_addr};

/// Sites: one with two names (a fixed answer under `/ok/`, a backend under `/up/`, a
/// dead upstream under `/dead/`), and `c.internal`.
async fn sites() -> String {
    let up = backend("up", Proto::Http1).await;
    let dead = refused_addr().await;
    format!(
        "[[site]]\nhosts = [\"b.internal\", \"a.internal\"]\n\
         [[site.route]]\npath = \"/ok/\"\nrespond = {{ status = 200, body = \"ok\" }}\n\
         [[site.route]]\npath = \"/up/\"\nupstreams = [\"{up}\"]\n\
         [[site.route]]\npath = \"/dead/\"\nupstreams = [\"{dead}\"]\n\n\
         [[site]]\nhosts = [\"c.internal\"]\n\
         [[site.route]]\npath = \"/\"\nrespond = {{ status = 200, body = \"c\" }}\n"
    )
}

async fn admin_get(p: &Portico, path: &str) -> (u16, String) {
    let (status, _, body) = edge::plain_get(p.admin, "localhost", path).await;
    (status, body)
}

async fn scrape(p: &Portico) -> String {
    let (status, body) = admin_get(p, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample `series` (name and labels exactly as rendered), if present.
fn value(text: &str, series: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{series}: {v}")))
}

/// Scrapes until `series` reaches `want`: the server counts a failed handshake after the
/// client has already seen it fail. Gives up (and fails) after a generous bound.
async fn wait_for(p: &Portico, series: &str, want: i64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(p).await;
        if value(&text, series) == Some(want) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_and_readiness_and_nothing_else() {
    install_provider();
    let p = edge::start(&sites().await).await;
    assert_eq!(admin_get(&p, "/healthz").await, (200, "ok\n".into()));
    // `start` returns once the server is running, which is when it turns ready.
    assert_eq!(admin_get(&p, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(admin_get(&p, "/").await.0, 404);
    assert_eq!(admin_get(&p, "/metricsx").await.0, 404);

    let tcp = tokio::net::TcpStream::connect(p.admin).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(tcp))
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post("/healthz")
        .header("host", "localhost")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    let req = hyper::Request::get("/metrics")
        .header("host", "localhost")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );

    // After shutdown the admin port is closed like the others.
    let admin = p.admin;
    p.stop().await;
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
}

#[tokio::test]
async fn not_after_gauge_matches_the_served_leaf() {
    install_provider();
    let p = edge::start(&sites().await).await;
    let tls = tls_connect(
        p.https,
        "a.internal",
        client_config(&[&p.root_pem()], &[b"h2"]),
    )
    .await
    .unwrap();
    let der = edge::leaf(&tls);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let not_after = cert.validity().not_after.timestamp();
    let names = portico::metrics::certificate_names(&der).unwrap();
    assert_eq!(names.len(), 2);

    let text = scrape(&p).await;
    assert!(text.contains("# TYPE portico_certificate_not_after_seconds gauge\n"));
    let series = format!(
        "portico_certificate_not_after_seconds{{site=\"a.internal,b.internal\",names=\"{}\"}}",
        names.join(",")
    );
    assert_eq!(value(&text, &series), Some(not_after), "{text}");
    // Every site with a certificate has its gauge.
    assert!(
        text.contains(
            "portico_certificate_not_after_seconds{site=\"c.internal\",names=\"c.internal\"} "
        ),
        "{text}"
    );
    let build = format!(
        "portico_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&text, &build), Some(1), "{text}");
    assert_eq!(value(&text, "portico_ready"), Some(1));
}

#[tokio::test]
async fn requests_are_counted_by_site_and_status() {
    install_provider();
    let p = edge::start(&sites().await).await;
    let root = p.root_pem();
    let ab = "portico_requests_total{site=\"a.internal,b.internal\",code=";

    let mut a = edge::h2(p.https, "a.internal", &root).await;
    for _ in 0..3 {
        assert_eq!(edge::get_h2(&mut a, "a.internal", "/ok/").await.0, 200);
    }
    // Forwarded: the upstream's status, and the proxy's own error status.
    assert_eq!(edge::get_h2(&mut a, "b.internal", "/up/x").await.0, 200);
    assert_eq!(edge::get_h2(&mut a, "a.internal", "/dead/").await.0, 502);
    // No route on a known site: counted for the site.
    assert_eq!(edge::get_h2(&mut a, "a.internal", "/nothing").await.0, 404);
    // Another site's name on this connection: counted for the site the Host names.
    assert_eq!(edge::get_h2(&mut a, "c.internal", "/").await.0, 421);
    // A name no site has: counted with site="".
    assert_eq!(edge::get_h2(&mut a, "nobody.internal", "/").await.0, 421);
    // HTTP/1.1 counts the same way.
    let mut c = edge::h1(p.https, "c.internal", &root).await;
    assert_eq!(edge::get_h1(&mut c, "c.internal", "/").await.0, 200);

    let text = scrape(&p).await;
    assert!(text.contains("# TYPE portico_requests_total counter\n"));
    assert_eq!(value(&text, &format!("{ab}\"200\"}}")), Some(4), "{text}");
    assert_eq!(value(&text, &format!("{ab}\"502\"}}")), Some(1), "{text}");
    assert_eq!(value(&text, &format!("{ab}\"404\"}}")), Some(1), "{text}");
    assert_eq!(value(&text, &format!("{ab}\"421\"}}")), None, "{text}");
    let c_site = "portico_requests_total{site=\"c.internal\",code=";
    assert_eq!(
        value(&text, &format!("{c_site}\"421\"}}")),
        Some(1),
        "{text}"
    );
    assert_eq!(
        value(&text, &format!("{c_site}\"200\"}}")),
        Some(1),
        "{text}"
    );
    assert_eq!(
        value(&text, "portico_requests_total{site=\"\",code=\"421\"}"),
        Some(1),
        "{text}"
    );

    // More requests move the same counter.
    assert_eq!(edge::get_h2(&mut a, "a.internal", "/ok/").await.0, 200);
    let text = scrape(&p).await;
    assert_eq!(value(&text, &format!("{ab}\"200\"}}")), Some(5), "{text}");
}

#[tokio::test]
async fn failed_handshakes_are_counted_by_reason() {
    install_provider();
    let p = edge::start(&sites().await).await;
    let text = scrape(&p).await;
    for reason in ["no_certificate", "error", "timeout"] {
        let series = format!("portico_tls_handshake_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(value(&text, &series), Some(0), "{text}");
    }

    // An SNI name no site covers: the server refuses with an alert.
    let config = client_config(&[&p.root_pem()], &[b"h2"]);
    for _ in 0..2 {
        let refused = tls_connect(p.https, "unknown.internal", config.clone()).await;
        assert!(refused.is_err());
    }
    wait_for(
        &p,
        "portico_tls_handshake_failures_total{reason=\"no_certificate\"}",
        2,
    )
    .await;

    // Not TLS at all: some other error.
    {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(p.https).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: a.internal\r\n\r\n")
            .await
            .unwrap();
        let _ = tcp.shutdown().await;
    }
    let text = wait_for(
        &p,
        "portico_tls_handshake_failures_total{reason=\"error\"}",
        1,
    )
    .await;
    assert_eq!(
        value(
            &text,
            "portico_tls_handshake_failures_total{reason=\"no_certificate\"}"
        ),
        Some(2)
    );

    // A good handshake counts nothing.
    let ok = tls_connect(p.https, "c.internal", config).await;
    assert!(ok.is_ok());
    let text = scrape(&p).await;
    assert_eq!(
        value(
            &text,
            "portico_tls_handshake_failures_total{reason=\"error\"}"
        ),
        Some(1),
        "{text}"
    );
}

#[tokio::test]
async fn a_handshake_that_never_finishes_counts_as_a_timeout() {
    install_provider();
    let p = edge::start(&format!(
        "[limits]\nhandshake_timeout = \"300ms\"\n{}",
        sites().await
    ))
    .await;
    let mut tcp = tokio::net::TcpStream::connect(p.https).await.unwrap();
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    // The server closes the silent connection at the timeout.
    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    wait_for(
        &p,
        "portico_tls_handshake_failures_total{reason=\"timeout\"}",
        1,
    )
    .await;
}

/// `portico_worker_connections{worker="N"}` samples, by worker.
fn worker_connections(text: &str) -> Vec<i64> {
    (0..)
        .map_while(|w| {
            value(
                text,
                &format!("portico_worker_connections{{worker=\"{w}\"}}"),
            )
        })
        .collect()
}

/// A burst of connections (every TCP connection made before the first handshake, so the
/// kernel queues them together and one worker wakes to a full backlog) ends spread over
/// the workers: the one that accepts the burst hands sockets to the others, and each
/// handed-over connection is served there. Closing them brings every gauge back to 0.
#[tokio::test]
async fn a_burst_of_connections_is_spread_over_the_workers() {
    install_provider();
    let p = edge::start(&sites().await).await;
    let root = p.root_pem();
    let workers = worker_connections(&scrape(&p).await);
    assert!(!workers.is_empty(), "no worker gauge");
    assert!(workers.iter().all(|&n| n == 0), "{workers:?}");
    let n = 20 * workers.len();

    let tcps =
        futures_util::future::join_all((0..n).map(|_| tokio::net::TcpStream::connect(p.https)))
            .await;
    let config = edge::client_config(&[&root], &[b"h2"]);
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = rustls::pki_types::ServerName::try_from("a.internal").unwrap();
    let tls = futures_util::future::join_all(
        tcps.into_iter()
            .map(|tcp| connector.connect(name.clone(), tcp.unwrap())),
    )
    .await;
    let mut clients = Vec::new();
    for tls in tls {
        let mut h2 = edge::h2_over(tls.unwrap()).await;
        assert_eq!(edge::get_h2(&mut h2, "a.internal", "/ok/").await.0, 200);
        clients.push(h2);
    }

    let counts = worker_connections(&scrape(&p).await);
    assert_eq!(counts.iter().sum::<i64>(), n as i64, "{counts:?}");
    // Two workers accepting at the same moment may each place one before seeing the
    // other's: a worker or two more than the rule's bound of 2.
    let spread = counts.iter().max().unwrap() - counts.iter().min().unwrap();
    assert!(
        spread <= 2 + counts.len() as i64,
        "{n} connections over {} workers: {counts:?}",
        counts.len()
    );

    drop(clients);
    for w in 0..counts.len() {
        wait_for(
            &p,
            &format!("portico_worker_connections{{worker=\"{w}\"}}"),
            0,
        )
        .await;
    }
}
