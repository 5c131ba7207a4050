//! The harness of portico's integration tests. This crate: the proxy layer alone served over plain TCP, backends
//! written with hyper, and small HTTP/1.1 and HTTP/2 clients. [`edge`]: the whole server
//! over TLS. [`pebble`]: a real ACME CA; [`ca_front`]: a front for it that does what Pebble
//! cannot (hold new orders, answer 429 with Retry-After). [`control_plane`]: a real
//! etcd and kube-apiserver; [`api_front`]: faults in front of it. [`deploy`]: the
//! Kubernetes manifests as kubectl builds them. Everything binds 127.0.0.1:0.

/// Base64 as Kubernetes writes a Secret's `data` (the standard alphabet, padded).
pub fn base64_encode(bytes: impl AsRef<[u8]>) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The reverse of [`base64_encode`].
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// Base64url without padding, as JWS (RFC 7515) and ACME's ARI certificate ids write it.
pub fn base64url_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The reverse of [`base64url_encode`]; padding is accepted as well, since the fronts
/// read what clients send.
pub fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(text).ok()
}

/// A command for the `portico` binary cargo built beside the test binary running this
/// (`target/<profile>/portico`; tests run from `target/<profile>/deps/`).
pub fn portico() -> Command {
    let test = std::env::current_exe().expect("the test binary's path");
    let dir = test
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    Command::new(dir.join(format!("portico{}", std::env::consts::EXE_SUFFIX)))
}

/// The portico repository: `config/`, `scripts/` and the rest the tests read.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub mod api_front;
pub mod attack;
pub mod ca_front;
pub mod cluster;
pub mod control_plane;
pub mod deploy;
pub mod edge;
pub mod pebble;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico::config::{Config, HostPattern};
use portico::proxy::{ConnInfo, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The folder `scripts/peers` built the real peers into (etcd, kube-apiserver, kubectl,
/// Pebble, pebble-challtestsrv, the Gateway API CRDs): `PORTICO_PEERS`, which
/// `scripts/test` sets, else what `scripts/peers` prints (it builds them if they are
/// missing: a missing peer is built, never skipped).
pub fn peers() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PORTICO_PEERS") {
            return PathBuf::from(dir);
        }
        let out = Command::new(crate::repo_root().join("scripts/peers"))
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/peers runs");
        assert!(out.status.success(), "scripts/peers failed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// The peer program `name` (`etcd`, `kube-apiserver`, `kubectl`, `pebble`, ...).
pub fn peer(name: &str) -> PathBuf {
    let path = peers().join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/peers",
        path.display()
    );
    path
}

pub use portico::body::BoxError;
pub type TestBody = BoxBody<Bytes, BoxError>;

pub fn config(toml: &str) -> Config {
    Config::parse(Path::new("test.toml"), toml).expect("test config is valid")
}

/// Serves a proxy for `toml` on 127.0.0.1:0 with no certificate check.
pub async fn start_proxy(toml: &str) -> (SocketAddr, Arc<Proxy>) {
    start_proxy_with(toml, None).await
}

/// Serves a proxy for `toml` on 127.0.0.1:0 as the listener will: HTTP/1.1 with upgrades
/// or HTTP/2 (prior knowledge here, ALPN later), `proto = "https"`, and the certificate
/// host patterns of the "connection" (`None`: no check).
pub async fn start_proxy_with(
    toml: &str,
    cert_hosts: Option<Vec<HostPattern>>,
) -> (SocketAddr, Arc<Proxy>) {
    let proxy = Arc::new(Proxy::new(&config(toml)));
    let addr = serve_proxy(proxy.clone(), "https", cert_hosts.map(Into::into)).await;
    (addr, proxy)
}

/// Serves `proxy` on 127.0.0.1:0 as a listener of protocol `proto` would (`"https"`,
/// without TLS, or `"http"`, port 80): HTTP/1.1 with upgrades or HTTP/2 by prior
/// knowledge, with the connection's certificate host patterns (`None`: no check).
pub async fn serve_proxy(
    proxy: Arc<Proxy>,
    proto: &'static str,
    cert_hosts: Option<Arc<[HostPattern]>>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let conn = Arc::new(ConnInfo {
                peer,
                proto,
                cert_hosts: cert_hosts.clone(),
                tls_version: None,
                sni: None,
                log_text: Default::default(),
            });
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let proxy = proxy.clone();
                    let conn = conn.clone();
                    async move { Ok::<_, Infallible>(proxy.serve(req, &conn).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// An address that refuses connections: a socket bound but never listening, kept for
/// the life of the test process so no other test's listener can take the port.
pub async fn refused_addr() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    // Leaked on purpose: the port stays taken until the process exits.
    Box::leak(Box::new(socket));
    addr
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    H2c,
}

/// An IPv4 address of this machine that is not loopback: the API server refuses
/// loopback addresses in EndpointSlices, so upstreams the tests list there listen on it.
pub fn host_ip() -> std::net::IpAddr {
    let out = std::process::Command::new("hostname").arg("-I").output();
    let listed = out
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let from_route = || {
        // No packet is sent: connecting a UDP socket only picks the source address.
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        socket.connect("192.0.2.1:9").ok()?;
        Some(socket.local_addr().ok()?.ip())
    };
    listed
        .split_whitespace()
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        .or_else(from_route)
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .expect("this machine has no IPv4 address besides loopback; the Ingress tests need one (the API server refuses loopback endpoints)")
}

/// Starts the test backend `name`. For any request it answers with a [`Report`] of
/// what it received, except:
/// - `/slow...`: waits a minute first;
/// - `/delay/MS`: waits MS milliseconds first;
/// - `/download/N`: streams N bytes of pattern;
/// - `/trailers`: a body followed by trailers (`grpc-status: 0`);
/// - `Connection: upgrade` + `Upgrade`: answers 101 and echoes bytes (HTTP/1.1);
/// - header `x-hop-response`: adds hop-by-hop headers to its response.
pub async fn backend(name: &'static str, proto: Proto) -> SocketAddr {
    backend_counted(name, proto).await.0
}

/// [`backend`], with the number of connections it accepted.
pub async fn backend_counted(name: &'static str, proto: Proto) -> (SocketAddr, Arc<AtomicUsize>) {
    backend_at([127, 0, 0, 1].into(), name, proto).await
}

/// [`backend_counted`] on a port of `ip` (an address of this machine).
pub async fn backend_at(
    ip: std::net::IpAddr,
    name: &'static str,
    proto: Proto,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service =
                    service_fn(
                        move |req| async move { Ok::<_, Infallible>(answer(name, req).await) },
                    );
                let io = TokioIo::new(stream);
                let _ = match proto {
                    Proto::Http1 => {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .with_upgrades()
                            .await
                    }
                    Proto::H2c => {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await
                    }
                };
            });
        }
    });
    (addr, accepted)
}

async fn answer(name: &'static str, mut req: Request<Incoming>) -> Response<TestBody> {
    let path = req.uri().path().to_string();
    if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if path == "/trailers" {
        // A gRPC-style answer: data, then the status in trailers.
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames = vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"payload"))),
            Ok(Frame::trailers(trailers)),
        ];
        return Response::builder()
            .header("content-type", "application/grpc")
            .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
            .unwrap();
    }
    if let Some(n) = path.strip_prefix("/download/") {
        let n: usize = n.parse().unwrap_or(0);
        return Response::new(pattern_body(n, 64 * 1024));
    }
    if let Some(protocol) = req.headers().get("upgrade").cloned() {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            let mut buf = vec![0u8; 4096];
            // Echo until the client closes.
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", protocol)
            .header("x-backend", name)
            .body(empty())
            .unwrap();
    }

    let hop_response = req.headers().contains_key("x-hop-response");
    let mut report = format!(
        "backend: {name}\nversion: {:?}\nmethod: {}\nuri: {}\nauthority: {}\n",
        req.version(),
        req.method(),
        req.uri().path_and_query().map_or("", |p| p.as_str()),
        req.uri().authority().map_or("", |a| a.as_str()),
    );
    for (k, v) in req.headers() {
        report.push_str(&format!(
            "header {}: {}\n",
            k.as_str(),
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    // Count and checksum the body as it streams: a huge body is never held whole.
    let mut body = req.into_body();
    let mut len = 0u64;
    let mut sum = Fnv::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            report.push_str("body-error: yes\n");
            break;
        };
        if let Some(data) = frame.data_ref() {
            len += data.len() as u64;
            sum.update(data);
        }
    }
    report.push_str(&format!("len: {len}\nsum: {:016x}\n", sum.0));

    let mut response = Response::builder().header("x-backend", name);
    if hop_response {
        response = response
            .header("connection", "x-resp-hop")
            .header("x-resp-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic realm=\"x\"")
            .header("x-end-to-end", "kept");
    }
    response.body(full(report)).unwrap()
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// `len` bytes of a fixed pseudo-random pattern, produced chunk by chunk as polled.
pub fn pattern_body(len: usize, chunk: usize) -> TestBody {
    let chunks = pattern_chunks(len, chunk);
    let stream = futures_util::stream::iter(chunks.map(|c| Ok::<_, BoxError>(Frame::data(c))));
    StreamBody::new(stream).boxed()
}

/// The chunks of [`pattern_body`]: one shared random block, so generating is free.
pub fn pattern_chunks(len: usize, chunk: usize) -> impl Iterator<Item = Bytes> + Send {
    let block = Bytes::from(random_bytes(chunk, 7));
    let mut left = len;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(block.len());
        left -= n;
        Some(block.slice(..n))
    })
}

/// Deterministic bytes (xorshift), so a reordered or damaged body changes the checksum.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// FNV-1a 64.
pub struct Fnv(pub u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn of(data: &[u8]) -> String {
        let mut f = Fnv::new();
        f.update(data);
        format!("{:016x}", f.0)
    }
}

/// What the echo backend saw.
#[derive(Debug)]
pub struct Report {
    pub fields: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
}

impl Report {
    pub fn parse(text: &str) -> Report {
        let mut fields = Vec::new();
        let mut headers = Vec::new();
        for line in text.lines() {
            if let Some(h) = line.strip_prefix("header ") {
                let (k, v) = h.split_once(": ").unwrap_or((h, ""));
                headers.push((k.to_string(), v.to_string()));
            } else if let Some((k, v)) = line.split_once(": ") {
                fields.push((k.to_string(), v.to_string()));
            }
        }
        Report { fields, headers }
    }

    pub fn get(&self, key: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("report has no {key}: {self:?}"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(k, _)| k == name).count()
    }
}

/// A response read whole (small bodies only).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn report(&self) -> Report {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.text());
        Report::parse(&self.text())
    }
}

pub async fn read(response: Response<Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// An HTTP/1.1 client connection (upgrades enabled).
pub async fn h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

/// An HTTP/2 client connection with prior knowledge.
pub async fn h2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn send1(addr: SocketAddr, req: Request<TestBody>) -> Reply {
    let mut sender = h1(addr).await;
    read(sender.send_request(req).await.expect("response")).await
}

/// One HTTP/2 request on a fresh connection.
pub async fn send2(addr: SocketAddr, req: Request<TestBody>) -> Reply {
    let mut sender = h2(addr).await;
    read(sender.send_request(req).await.expect("response")).await
}

/// `GET path` with `Host: host` (HTTP/1.1).
pub fn get(host: &str, path: &str) -> Request<TestBody> {
    Request::get(path)
        .header("host", host)
        .body(empty())
        .unwrap()
}

/// `GET http://authority/path` (HTTP/2: the authority is `:authority`).
pub fn get2(authority: &str, path: &str) -> Request<TestBody> {
    Request::get(format!("http://{authority}{path}"))
        .body(empty())
        .unwrap()
}

/// A self-signed certificate for `names` (PEM chain, PEM key): a user's own
/// certificate, as a Secret or files hold it; a client trusts it as its own root.
pub fn self_signed(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The stderr of `child`, collected line by line as it comes (a thread reads it), for
/// waiting on a log line and for failure messages.
pub fn collect_stderr(child: &mut std::process::Child) -> Arc<std::sync::Mutex<String>> {
    use std::io::BufRead;
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let Some(stderr) = child.stderr.take() else {
        return log;
    };
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    log
}

/// The addresses a `portico run`, `proxy` or `respond` child bound. Tests give it port 0
/// and read the ports back from its log: a port chosen first and bound later can be
/// taken in between by any process on the machine (CI saw `Address already in use`).
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: Option<SocketAddr>,
}

impl Bound {
    /// The addresses in the "portico is serving" line of `log`, text or JSON, if it has
    /// one yet.
    pub fn from_log(log: &str) -> Option<Bound> {
        let line = log.lines().find(|l| l.contains("portico is serving"))?;
        let field = |key: &str| -> Option<String> {
            if line.trim_start().starts_with('{') {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                return v[key].as_str().map(str::to_string);
            }
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
        };
        Some(Bound {
            http: field("http")?.parse().ok()?,
            https: field("https")?.parse().ok()?,
            admin: field("admin")?.parse().ok(),
        })
    }

    /// Waits (up to a minute) for `child` to log its addresses; panics with the log if
    /// it exits first or never does. Blocks the thread: for tests without a runtime to
    /// keep running meanwhile.
    pub fn wait(child: &mut std::process::Child, log: impl Fn() -> String) -> Bound {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(bound) = Bound::poll(child, &log, deadline) {
                return bound;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Bound::wait`] for async tests: sleeps on the runtime, which may have to serve
    /// portico meanwhile (an API front, an upstream).
    pub async fn wait_async(child: &mut std::process::Child, log: impl Fn() -> String) -> Bound {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(bound) = Bound::poll(child, &log, deadline) {
                return bound;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn poll(
        child: &mut std::process::Child,
        log: &impl Fn() -> String,
        deadline: std::time::Instant,
    ) -> Option<Bound> {
        let text = log();
        if let Some(bound) = Bound::from_log(&text) {
            return Some(bound);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("portico exited ({status}) before serving:\n{text}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "portico never said where it serves:\n{text}"
        );
        None
    }
}
