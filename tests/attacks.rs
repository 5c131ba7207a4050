//! Hostile input against the whole server over real sockets, one case per defect an
//! independent attack run found: route bypass through path spellings, IP sites without
//! SNI, forwarding headers a client writes, PROXY protocol, RFC 9112 framing, the
//! port-80 redirect as an open redirector, slow and idle request heads, and floods of
//! HTTP/2 resets. Each case failed before the fix it stands for.

use portico_test_support as common;

use std::net::SocketAddr;
use std::time::Duration;

use common::attack;
use common::edge::{self, client_config, install_provider, tls_connect};
use common::{Proto, Report, backend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A site whose `/respond` route answers 403 (a route meant to block a path), in front
/// of `upstream` for everything else.
fn blocking_site(upstream: SocketAddr) -> String {
    format!(
        "[[site]]\nhosts = [\"a.internal\"]\nupstreams = [\"{upstream}\"]\n[[site.route]]\npath = \"/respond\"\nrespond = {{ status = 403, body = \"blocked\" }}\n"
    )
}

/// Sends `request` (raw HTTP/1.1 bytes) over TLS to `name` and reads until the server
/// closes or 5 s pass; the whole answer as text.
async fn raw_tls(p: &edge::Portico, name: &str, request: &[u8]) -> String {
    let root = p.root_pem();
    let mut tls = tls_connect(p.https, name, client_config(&[&root], &[b"http/1.1"]))
        .await
        .unwrap();
    tls.write_all(request).await.unwrap();
    read_all(&mut tls).await
}

async fn read_all<S: AsyncReadExt + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits (up to 10 s) until the metrics show `series value`: a connection's error is
/// counted when its task ends, which may be just after the client saw it close.
async fn wait_for_metric(p: &edge::Portico, series: &str, value: u64) {
    let line = format!("{series} {value}\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = p.metrics.render();
        if metrics.contains(&line) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {line:?} in\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The requests-by-site series of `echo_site`'s site for 400.
const BAD_REQUESTS: &str = "portico_requests_total{site=\"a.internal\",code=\"400\"}";

/// An upstream that reads each connection to its end and never answers. For each
/// connection it sends what it read, and whether the peer closed it (false: still open
/// after 5 s).
async fn silent_upstream() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(Vec<u8>, bool)>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                let closed = loop {
                    match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break true,
                        Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
                        Err(_) => break false,
                    }
                };
                let _ = tx.send((seen, closed));
            });
        }
    });
    (addr, rx)
}

/// portico's log lines (debug and up) of every test in this binary, from the first call
/// on. The server logs on its own worker threads, so a thread's default subscriber
/// would see nothing: this one is global.
fn captured_logs() -> &'static Logs {
    static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_env_filter(tracing_subscriber::EnvFilter::new("portico=debug"))
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    })
}

#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

fn get(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

// 1. Routes match the normalised path.

#[tokio::test]
async fn spellings_of_a_blocked_path_never_reach_the_upstream() {
    install_provider();
    let up = backend("up", Proto::Http1).await;
    let p = edge::start(&blocking_site(up)).await;
    for path in [
        "/respond",
        "//respond",
        "/./respond",
        "/x/../respond",
        "/%72espond",
        "/%2e/respond",
        "/respond/../respond",
    ] {
        let answer = raw_tls(&p, "a.internal", &get(path, "a.internal")).await;
        assert_eq!(status_of(&answer), 403, "{path}: {answer}");
        assert!(answer.ends_with("blocked"), "{path}: {answer}");
    }
    // Paths with no safe normal form are refused outright.
    for path in [
        "/../etc/passwd",
        "/%2e%2e/x",
        "/a%2Frespond",
        "/a%00",
        "/a%zz",
    ] {
        let answer = raw_tls(&p, "a.internal", &get(path, "a.internal")).await;
        assert_eq!(status_of(&answer), 400, "{path}: {answer}");
        assert!(!answer.contains("backend: up"), "{path}: {answer}");
    }
    // Everything else goes upstream with the path as the client wrote it.
    let answer = raw_tls(&p, "a.internal", &get("/x//y/./z%7e", "a.internal")).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(answer.contains("uri: /x//y/./z%7e\n"), "{answer}");
}

#[tokio::test]
async fn h2_paths_are_normalised_too() {
    install_provider();
    let up = backend("up", Proto::Http1).await;
    let p = edge::start(&blocking_site(up)).await;
    let mut send = edge::h2(p.https, "a.internal", &p.root_pem()).await;
    assert_eq!(
        edge::get_h2(&mut send, "a.internal", "//respond").await,
        (403, "blocked".into())
    );
    assert_eq!(
        edge::get_h2(&mut send, "a.internal", "/%2e%2e/").await.0,
        400
    );
}

// 2. IP hosts without SNI.

#[tokio::test]
async fn a_client_without_sni_gets_the_site_of_the_address_it_connected_to() {
    install_provider();
    // Two sites: before, a client without SNI (any client of an IP address) got an
    // alert as soon as there were two.
    let p = edge::start(
        "[[site]]\nhosts = [\"localhost\"]\n[[site.route]]\npath = \"/\"\nrespond = { status = 200, body = \"by name\" }\n[[site]]\nhosts = [\"127.0.0.1\"]\n[[site.route]]\npath = \"/\"\nrespond = { status = 200, body = \"by address\" }\n",
    )
    .await;
    let root = p.root_pem();
    // rustls sends no SNI when the server name is an IP address.
    let tls = tls_connect(p.https, "127.0.0.1", client_config(&[&root], &[b"h2"]))
        .await
        .expect("the 127.0.0.1 site answers a client without SNI");
    let names = portico::metrics::certificate_names(&edge::leaf(&tls)).unwrap();
    assert_eq!(names, ["127.0.0.1"]);
    let mut send = edge::h2_over(tls).await;
    assert_eq!(
        edge::get_h2(&mut send, "127.0.0.1", "/").await,
        (200, "by address".into())
    );
    // The certificate chosen by address covers only that site: another Host is 421.
    assert_eq!(edge::get_h2(&mut send, "localhost", "/").await.0, 421);
    // SNI keeps working for the other site.
    let mut by_name = edge::h2(p.https, "localhost", &root).await;
    assert_eq!(
        edge::get_h2(&mut by_name, "localhost", "/").await,
        (200, "by name".into())
    );
}

// 3. Limits are range-checked: see tests/cli.rs (exit 64 with file, line and key) and
//    the reload case here.

#[tokio::test]
async fn a_reload_with_an_absurd_limit_keeps_the_old_config_serving() {
    install_provider();
    let up = backend("up", Proto::Http1).await;
    let p = edge::start(&blocking_site(up)).await;
    let path = p.dir.path().join("portico.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    for bad in [
        "idle_timeout = \"5000000000000000h\"",
        "idle_timeout = \"1152921504606846976h\"",
        "handshake_timeout = \"0s\"",
        "max_header_bytes = 0",
    ] {
        std::fs::write(&path, format!("[limits]\n{bad}\n{good}")).unwrap();
        let err = p.reloader.reload_now().await.unwrap_err().to_string();
        assert!(err.contains("portico.toml:2: limits."), "{bad}: {err}");
        let answer = raw_tls(&p, "a.internal", &get("/x", "a.internal")).await;
        assert_eq!(status_of(&answer), 200, "{bad}: still serving: {answer}");
    }
}

// 4. Forwarding headers an edge can trust.

fn echo_site(upstream: SocketAddr, listen: &str) -> String {
    format!("{listen}[[site]]\nhosts = [\"a.internal\"]\nupstreams = [\"{upstream}\"]\n")
}

fn with_listen(dir: &std::path::Path, extra: &str) -> String {
    edge::header(dir).replacen("[listen]\n", &format!("[listen]\n{extra}\n"), 1)
}

const SPOOFED: &str = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n";

fn spoofing_get() -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: a.internal\r\n{SPOOFED}Connection: close\r\n\r\n").into_bytes()
}

fn report(answer: &str) -> Report {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Report::parse(body)
}

#[tokio::test]
async fn a_client_cannot_write_forwarding_headers() {
    install_provider();
    let up = backend("up", Proto::Http1).await;
    let p = edge::start(&echo_site(up, "")).await;
    let seen = report(&raw_tls(&p, "a.internal", &spoofing_get()).await);
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header_count("x-forwarded-for"), 1);
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("forwarded"), None);
}

#[tokio::test]
async fn a_trusted_proxy_s_chain_is_kept_and_names_the_client() {
    install_provider();
    let up = backend("up", Proto::Http1).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}{}",
        with_listen(
            dir.path(),
            "trusted_proxies = [\"127.0.0.0/8\", \"7.7.7.0/24\"]"
        ),
        echo_site(up, "")
    );
    let p = edge::start_text(dir, &text, Default::default()).await;
    let seen = report(&raw_tls(&p, "a.internal", &spoofing_get()).await);
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("6.6.6.6, 7.7.7.7, 127.0.0.1")
    );
    // 127.0.0.1 and 7.7.7.7 are trusted: the client is the next one left.
    assert_eq!(seen.header("x-real-ip"), Some("6.6.6.6"));
    assert_eq!(seen.header("forwarded"), Some("for=6.6.6.6"));
}

fn proxy_v1(source: &str) -> Vec<u8> {
    format!("PROXY TCP4 {source} 127.0.0.1 40000 443\r\n").into_bytes()
}

fn proxy_v2_ipv4(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&source);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h
}

/// TLS over a TCP connection that first sent `preamble`.
async fn tls_after(
    p: &edge::Portico,
    preamble: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut tcp = TcpStream::connect(p.https).await?;
    tcp.write_all(preamble).await?;
    let root = p.root_pem();
    let name = rustls::pki_types::ServerName::try_from("a.internal").unwrap();
    tokio_rustls::TlsConnector::from(client_config(&[&root], &[b"http/1.1"]))
        .connect(name, tcp)
        .await
}

#[tokio::test]
async fn proxy_protocol_from_a_trusted_balancer_gives_the_client_address() {
    install_provider();
    let up = backend("up", Proto::Http1).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}{}",
        with_listen(
            dir.path(),
            "trusted_proxies = [\"127.0.0.1\"]\nproxy_protocol = true"
        ),
        echo_site(up, "")
    );
    let p = edge::start_text(dir, &text, Default::default()).await;

    // v1 before TLS: the upstream hears of the client, whatever headers it sends.
    let mut tls = tls_after(&p, &proxy_v1("203.0.113.9")).await.unwrap();
    tls.write_all(&spoofing_get()).await.unwrap();
    let seen = report(&read_all(&mut tls).await);
    assert_eq!(seen.header("x-forwarded-for"), Some("203.0.113.9"));
    assert_eq!(seen.header("x-real-ip"), Some("203.0.113.9"));

    // v2 on port 80, in the same write as the request: the redirect still answers.
    let mut tcp = TcpStream::connect(p.http).await.unwrap();
    let mut bytes = proxy_v2_ipv4([198, 51, 100, 4], 5555);
    bytes.extend_from_slice(&get("/x", "a.internal"));
    tcp.write_all(&bytes).await.unwrap();
    let answer = read_all(&mut tcp).await;
    assert_eq!(status_of(&answer), 308, "{answer}");

    // A trusted peer may also connect without a header (in-cluster clients).
    let answer = raw_tls(&p, "a.internal", &get("/", "a.internal")).await;
    assert_eq!(status_of(&answer), 200, "{answer}");

    // A malformed header ends the connection and is counted.
    assert!(
        tls_after(&p, b"PROXY TCP4 1.2.3.4 nonsense\r\n")
            .await
            .is_err()
    );
    wait_for_metric(
        &p,
        "portico_connection_errors_total{reason=\"proxy_protocol\"}",
        1,
    )
    .await;
}

#[tokio::test]
async fn an_untrusted_peer_cannot_claim_an_address_with_proxy_protocol() {
    install_provider();
    let up = backend("up", Proto::Http1).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}{}",
        with_listen(
            dir.path(),
            "trusted_proxies = [\"10.0.0.0/8\"]\nproxy_protocol = true"
        ),
        echo_site(up, "")
    );
    let p = edge::start_text(dir, &text, Default::default()).await;
    // Nothing is read as a PROXY header from 127.0.0.1: the bytes are garbage to TLS.
    assert!(tls_after(&p, &proxy_v1("203.0.113.9")).await.is_err());
    let seen = report(&raw_tls(&p, "a.internal", &spoofing_get()).await);
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
}

// 5. HTTP/1.1 framing per RFC 9112.

#[tokio::test]
async fn framing_attacks_are_refused_as_client_errors() {
    install_provider();
    let up = backend("up", Proto::Http1).await;
    // `/body` goes to an upstream that reads and never answers: what it got shows
    // whether portico aborted a request or finished it.
    let logs = captured_logs();
    let (sink, mut got) = silent_upstream().await;
    let p = edge::start(&format!(
        "{}[[site.route]]\npath = \"/body\"\nupstreams = [\"{sink}\"]\n",
        echo_site(up, "")
    ))
    .await;

    let two_hosts =
        b"GET / HTTP/1.1\r\nHost: a.internal\r\nHost: b.internal\r\nConnection: close\r\n\r\n";
    let answer = raw_tls(&p, "a.internal", two_hosts).await;
    assert_eq!(status_of(&answer), 400, "{answer}");

    let codings = b"POST / HTTP/1.1\r\nHost: a.internal\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let answer = raw_tls(&p, "a.internal", codings).await;
    assert_eq!(status_of(&answer), 501, "{answer}");

    // Malformed chunked bodies: a bad size, a size that overflows, data past the size,
    // a bare LF. The client is told 400; the upstream request is aborted and not
    // blamed.
    let bad_requests = || {
        let metrics = p.metrics.render();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(BAD_REQUESTS)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = bad_requests();
    let bodies = [
        "zz\r\nhello\r\n0\r\n\r\n",
        "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        "2\r\nhello\r\n0\r\n\r\n",
        "5\nhello\n0\n\n",
    ];
    for body in bodies {
        let request = format!(
            "POST /body HTTP/1.1\r\nHost: a.internal\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}"
        );
        let answer = raw_tls(&p, "a.internal", request.as_bytes()).await;
        assert_eq!(status_of(&answer), 400, "{body:?}: {answer}");
        // The upstream request is aborted: its connection closes before the body's
        // last chunk (or, with a bad first chunk, before the head was sent at all), so
        // the upstream cannot take a cut body for a whole one.
        let (seen, closed) = tokio::time::timeout(Duration::from_secs(10), got.recv())
            .await
            .unwrap_or_else(|_| panic!("{body:?}: the upstream was not reached"))
            .unwrap();
        let seen = String::from_utf8_lossy(&seen);
        assert!(
            closed,
            "{body:?}: the upstream request was left open: {seen:?}"
        );
        assert!(
            !seen.ends_with("0\r\n\r\n"),
            "{body:?}: the upstream got a whole body: {seen:?}"
        );
    }
    // Counted as the client's errors, not the upstream's.
    wait_for_metric(&p, BAD_REQUESTS, before + bodies.len() as u64).await;
    let metrics = p.metrics.render();
    assert!(
        !metrics.contains("code=\"502\""),
        "a client's bad body counted as an upstream failure: {metrics}"
    );
    // Logged at debug as the client's fault, never a WARN naming the upstream. (The log
    // is the whole binary's; the sink's address is this test's alone.)
    let log = logs.text();
    let sink = sink.to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("upstream request aborted") && l.contains(&sink)),
        "no abort logged for {sink}:\n{log}"
    );
    let blamed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains(&sink))
        .collect();
    assert!(blamed.is_empty(), "the upstream was blamed: {blamed:#?}");

    // An h2c upgrade is served as a plain request: neither the upgrade nor its settings
    // reach the upstream.
    let h2c = b"GET / HTTP/1.1\r\nHost: a.internal\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    let mut root_tls = tls_connect(
        p.https,
        "a.internal",
        client_config(&[&p.root_pem()], &[b"http/1.1"]),
    )
    .await
    .unwrap();
    root_tls.write_all(h2c).await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = root_tls.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = report(&answer);
    assert_eq!(seen.header("upgrade"), None);
    assert_eq!(seen.header("http2-settings"), None);
}

// 6. The port-80 redirect goes only to configured hosts, never to a reflected one.

#[tokio::test]
async fn port_80_is_nobody_s_open_redirector() {
    install_provider();
    let up = backend("up", Proto::Http1).await;
    let p = edge::start(&echo_site(up, "")).await;
    for host in [
        "a.internal@evil.example",
        "evil.example/a.internal",
        "a.internal?x=1",
        "a.internal:80:80",
        "a.internal\\evil.example",
    ] {
        let mut tcp = TcpStream::connect(p.http).await.unwrap();
        tcp.write_all(&get("/", host)).await.unwrap();
        let answer = read_all(&mut tcp).await;
        assert_eq!(status_of(&answer), 400, "{host}: {answer}");
        assert!(
            !answer.to_lowercase().contains("location:"),
            "{host}: {answer}"
        );
    }
    let (status, location, _) = edge::plain_get(p.http, "evil.example", "/").await;
    assert_eq!((status, location), (421, None));
    let host = format!("A.internal:{}", p.http.port());
    let (status, location, _) = edge::plain_get(p.http, &host, "/x?y").await;
    assert_eq!(status, 308);
    let port = p.https.port();
    assert_eq!(location.unwrap(), format!("https://a.internal:{port}/x?y"));
    let (status, location, _) = edge::plain_get(p.http, "a.internal", "/").await;
    assert_eq!(
        (status, location.as_deref()),
        (308, Some("https://a.internal/"))
    );
}

// 7. Quiet under attack: 408 for slow heads, counted floods.

#[tokio::test]
async fn a_slow_or_silent_request_head_gets_408() {
    install_provider();
    let up = backend("up", Proto::Http1).await;
    let p = edge::start(&echo_site(
        up,
        "[limits]\nheader_read_timeout = \"300ms\"\n",
    ))
    .await;
    // Slowloris: half a head, then nothing.
    let mut tcp = TcpStream::connect(p.http).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a.inter")
        .await
        .unwrap();
    let answer = read_all(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        answer.to_lowercase().contains("connection: close"),
        "{answer}"
    );
    // A TLS connection that never sends a head.
    let root = p.root_pem();
    let mut tls = tls_connect(
        p.https,
        "a.internal",
        client_config(&[&root], &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let answer = read_all(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    wait_for_metric(
        &p,
        "portico_connection_errors_total{reason=\"header_timeout\"}",
        2,
    )
    .await;
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_by_the_idle_timeout_without_a_408() {
    install_provider();
    let up = backend("up", Proto::Http1).await;
    let p = edge::start(&echo_site(
        up,
        "[limits]\nheader_read_timeout = \"200ms\"\nidle_timeout = \"600ms\"\n",
    ))
    .await;
    let root = p.root_pem();
    let mut tls = tls_connect(
        p.https,
        "a.internal",
        client_config(&[&root], &[b"http/1.1"]),
    )
    .await
    .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.internal\r\n\r\n")
        .await
        .unwrap();
    // Reads the one response, then waits for the close.
    let answer = read_all(&mut tls).await;
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    // The status line, not any "408": the echoed random X-Request-Id has one now and
    // then.
    assert!(!answer.contains("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn a_rapid_reset_flood_is_ended_and_counted() {
    install_provider();
    let up = backend("up", Proto::Http1).await;
    let p = edge::start(&echo_site(up, "")).await;
    let root = p.root_pem();
    for _ in 0..3 {
        // ENHANCE_YOUR_CALM
        assert_eq!(
            attack::rapid_reset(p.https, "a.internal", &root).await,
            Some(0xb)
        );
    }
    wait_for_metric(
        &p,
        "portico_connection_errors_total{reason=\"h2_too_many_resets\"}",
        3,
    )
    .await;
    // The site still answers.
    let mut send = edge::h2(p.https, "a.internal", &root).await;
    assert_eq!(edge::get_h2(&mut send, "a.internal", "/").await.0, 200);
}
