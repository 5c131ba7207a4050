//! A CA that offers ACME Renewal Information (RFC 9773): an HTTPS reverse proxy in front
//! of a running [`Pebble`] (Pebble 2.4 has no `renewalInfo`).
//!
//! ```ignore
//! let front = AriFront::start(&pebble).await;
//! // acme.directory = front.directory_url(), acme.ca_root = pebble.ca_root_path()
//! ```
//!
//! Every request is forwarded to Pebble's ACME listener with its `Host` header unchanged.
//! Pebble builds every URL it returns from the request's `Host` (directory, `Location`,
//! `Link`, order and certificate URLs) and checks a JWS's `url` against that same `Host`,
//! so all URLs portico sees point at the front and its signed requests verify. On top:
//!
//! - the directory gains `"renewalInfo": "https://<host>/renewal-info"`;
//! - `GET /renewal-info/<certID>` answers `{"suggestedWindow":{"start","end"}}` with a
//!   `Retry-After` ([`AriFront::set_ari_retry_after`], 1 s unless set): the window set
//!   for that certID ([`AriFront::set_window`]), else the default one, 30 to 31 days
//!   ahead ([`AriFront::set_default_window`]). Each certID asked is recorded
//!   ([`AriFront::asked`]); the front does not check it is one Pebble issued;
//! - each `newOrder` POST has its JWS payload decoded (not verified) and recorded
//!   ([`AriFront::new_orders`]), then goes to Pebble unchanged. Pebble 2.4 decodes the
//!   order with Go's `encoding/json`, which ignores unknown fields, so an order carrying
//!   `replaces` is issued like any other; but it does not echo `replaces` back, which
//!   RFC 9773 requires of a CA that takes it (and instant-acme checks: "replaces field
//!   mismatch"). So the front adds `replaces` to the order object in the newOrder answer
//!   and in every later answer for that order (its URL and its finalize URL), as an ARI
//!   CA does;
//! - [`AriFront::hold_new_orders`]: while on, `newOrder` POSTs are recorded and then
//!   wait at the front until it is turned off (an order a test can hold in flight, with
//!   its lock held, as long as the scenario needs: no sleeps, no race with the CA);
//! - [`AriFront::fail_new_orders`]: the next N `newOrder` POSTs get `429` with an
//!   `urn:ietf:params:acme:error:rateLimited` problem and a `Retry-After`, and never reach
//!   Pebble (they are still recorded).
//!
//! The front serves Pebble's own certificate (the harness's throwaway CA, `localhost` and
//! `127.0.0.1`), so `acme.ca_root` stays [`Pebble::ca_root_path`]. It stops when dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, RETRY_AFTER, TRANSFER_ENCODING};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use portico::certs::rfc3339;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::BoxError;
use super::pebble::Pebble;

/// Bound on any wait for something the front should see.
const WAIT: Duration = Duration::from_secs(60);

pub struct AriFront {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped whenever something is recorded, so tests wait for events, not time.
    events: watch::Sender<u64>,
    /// True while newOrder POSTs wait at the front.
    hold_new_orders: watch::Sender<bool>,
    pebble: SocketAddr,
    /// Trusts the throwaway CA of Pebble's own HTTPS.
    pebble_tls: Arc<rustls::ClientConfig>,
}

/// What the front was asked, and what it will answer.
pub struct State {
    default_window: (SystemTime, SystemTime),
    windows: HashMap<String, (SystemTime, SystemTime)>,
    ari_retry_after: u64,
    /// certIDs of `GET /renewal-info/<certID>`, in order.
    pub asked: Vec<String>,
    /// Decoded JWS payloads of `newOrder` POSTs, in order (failed ones too).
    pub new_orders: Vec<serde_json::Value>,
    /// Remaining injected failures: count, `Retry-After` value.
    failures: (usize, String),
    /// Path of Pebble's newOrder URL, learnt from the directory.
    new_order_path: Option<String>,
    /// Order and finalize paths of orders that replace a certificate → the certID.
    replacing: HashMap<String, serde_json::Value>,
}

impl AriFront {
    /// Starts the front on 127.0.0.1:0 before `pebble`'s ACME listener.
    pub async fn start(pebble: &Pebble) -> AriFront {
        let dir = pebble.dir();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("cert.pem"))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(portico::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));

        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(pebble.ca_root_path()).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let pebble_tls = rustls::ClientConfig::builder_with_provider(portico::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();

        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                default_window: (now + 30 * day, now + 31 * day),
                windows: HashMap::new(),
                ari_retry_after: 1,
                asked: Vec::new(),
                new_orders: Vec::new(),
                failures: (0, String::new()),
                new_order_path: None,
                replacing: HashMap::new(),
            }),
            events: watch::channel(0).0,
            hold_new_orders: watch::channel(false).0,
            pebble: pebble.acme_addr(),
            pebble_tls: Arc::new(pebble_tls),
        });

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, shared) = (acceptor.clone(), serving.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(shared.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        AriFront { addr, shared, task }
    }

    /// `https://localhost:PORT/dir`: portico's `acme.directory`.
    pub fn directory_url(&self) -> String {
        format!("https://localhost:{}/dir", self.addr.port())
    }

    /// From now on `GET /renewal-info/<cert_id>` answers this window.
    pub fn set_window(&self, cert_id: &str, start: SystemTime, end: SystemTime) {
        self.state()
            .windows
            .insert(cert_id.to_string(), (start, end));
    }

    /// The window for certIDs without their own.
    pub fn set_default_window(&self, start: SystemTime, end: SystemTime) {
        self.state().default_window = (start, end);
    }

    /// The `Retry-After` (seconds) of renewal-info answers.
    pub fn set_ari_retry_after(&self, seconds: u64) {
        self.state().ari_retry_after = seconds;
    }

    /// The next `n` newOrder POSTs get 429 rateLimited with `Retry-After: retry_after`.
    pub fn fail_new_orders(&self, n: usize, retry_after: &str) {
        self.state().failures = (n, retry_after.to_string());
    }

    /// While `held`, newOrder POSTs (recorded first) wait at the front; turning it off
    /// sends the waiting ones on to Pebble.
    pub fn hold_new_orders(&self, held: bool) {
        self.shared.hold_new_orders.send_replace(held);
    }

    /// certIDs asked at `/renewal-info/`, in order.
    pub fn asked(&self) -> Vec<String> {
        self.state().asked.clone()
    }

    /// Decoded payloads of the newOrder POSTs so far, in order.
    pub fn new_orders(&self) -> Vec<serde_json::Value> {
        self.state().new_orders.clone()
    }

    /// Waits until `done` holds for what the front has recorded; panics after a minute
    /// with `what` and `context()` (a log, say).
    pub async fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&State) -> bool,
        context: impl Fn() -> String,
    ) {
        let mut events = self.shared.events.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if done(&self.state()) {
                return;
            }
            let changed = tokio::time::timeout_at(deadline, events.changed()).await;
            if changed.is_err() {
                let state = self.state();
                panic!(
                    "ARI front: no {what} within {WAIT:?}; asked {:?}, new orders {:?}\n{}",
                    state.asked,
                    state.new_orders,
                    context()
                );
            }
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }
}

impl Drop for AriFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn recorded(&self) {
        self.events.send_modify(|n| *n += 1);
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("body: {e}")),
        };
        let path = parts.uri.path().to_string();
        let host = parts
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string();

        if parts.method == Method::GET
            && let Some(cert_id) = path.strip_prefix("/renewal-info/")
        {
            return self.renewal_info(cert_id);
        }
        let is_new_order = parts.method == Method::POST
            && self.state().new_order_path.as_deref() == Some(path.as_str());
        let mut replaces = None;
        if is_new_order {
            let payload = jws_payload(&body);
            replaces = payload.get("replaces").cloned();
            let failure = {
                let mut state = self.state();
                state.new_orders.push(payload);
                let (left, retry_after) = &mut state.failures;
                (*left > 0).then(|| {
                    *left -= 1;
                    retry_after.clone()
                })
            };
            self.recorded();
            if let Some(retry_after) = failure {
                let problem = serde_json::json!({
                    "type": "urn:ietf:params:acme:error:rateLimited",
                    "detail": "too many new orders recently (ARI front)",
                    "status": 429,
                });
                return Response::builder()
                    .status(StatusCode::TOO_MANY_REQUESTS)
                    .header(CONTENT_TYPE, "application/problem+json")
                    .header(RETRY_AFTER, retry_after)
                    .body(Full::new(Bytes::from(problem.to_string())))
                    .unwrap();
            }
            let mut held = self.hold_new_orders.subscribe();
            let _ = held.wait_for(|held| !held).await;
        }

        let is_directory = parts.method == Method::GET && path == "/dir";
        let (status, headers, body) = match self.forward(&parts, body).await {
            Ok(forwarded) => forwarded,
            Err(e) => return text(StatusCode::BAD_GATEWAY, &format!("to Pebble: {e}")),
        };
        let body = if is_directory && status == StatusCode::OK {
            self.add_renewal_info(&body, &host)
        } else if let Some(replaces) = replaces.filter(|_| status.is_success()) {
            self.reflect_new_order(&headers, &body, replaces)
        } else {
            self.reflect_order(&path, body)
        };
        let mut resp = Response::builder().status(status);
        for (name, value) in &headers {
            // Full sets the length of the (possibly rewritten) body.
            if name != CONTENT_LENGTH && name != TRANSFER_ENCODING {
                resp = resp.header(name, value);
            }
        }
        resp.body(Full::new(body)).unwrap()
    }

    fn renewal_info(&self, cert_id: &str) -> Response<Full<Bytes>> {
        let (window, retry_after) = {
            let mut state = self.state();
            state.asked.push(cert_id.to_string());
            let window = state
                .windows
                .get(cert_id)
                .copied()
                .unwrap_or(state.default_window);
            (window, state.ari_retry_after)
        };
        self.recorded();
        let json = serde_json::json!({
            "suggestedWindow": { "start": rfc3339(window.0), "end": rfc3339(window.1) }
        });
        Response::builder()
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, "application/json")
            .header(RETRY_AFTER, retry_after.to_string())
            .body(Full::new(Bytes::from(json.to_string())))
            .unwrap()
    }

    /// The directory with `renewalInfo` added; learns the newOrder path on the way.
    fn add_renewal_info(&self, body: &Bytes, host: &str) -> Bytes {
        let mut directory: serde_json::Value =
            serde_json::from_slice(body).expect("Pebble's directory is JSON");
        let new_order = directory["newOrder"]
            .as_str()
            .and_then(|url| url.parse::<hyper::Uri>().ok())
            .map(|uri| uri.path().to_string());
        self.state().new_order_path = new_order;
        directory["renewalInfo"] = format!("https://{host}/renewal-info").into();
        Bytes::from(directory.to_string())
    }

    /// The newOrder answer with `replaces`; remembers the order's URLs for later answers.
    fn reflect_new_order(
        &self,
        headers: &hyper::HeaderMap,
        body: &Bytes,
        replaces: serde_json::Value,
    ) -> Bytes {
        let mut order: serde_json::Value =
            serde_json::from_slice(body).expect("Pebble's order is JSON");
        let path = |url: Option<&str>| {
            url.and_then(|u| u.parse::<hyper::Uri>().ok())
                .map(|u| u.path().to_string())
        };
        let location = path(headers.get(LOCATION).and_then(|v| v.to_str().ok()));
        let finalize = path(order["finalize"].as_str());
        {
            let mut state = self.state();
            for p in [location, finalize].into_iter().flatten() {
                state.replacing.insert(p, replaces.clone());
            }
        }
        order["replaces"] = replaces;
        Bytes::from(order.to_string())
    }

    /// An answer for an order that replaces a certificate, with `replaces` added.
    fn reflect_order(&self, path: &str, body: Bytes) -> Bytes {
        let Some(replaces) = self.state().replacing.get(path).cloned() else {
            return body;
        };
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(mut order @ serde_json::Value::Object(_)) if order.get("status").is_some() => {
                order["replaces"] = replaces;
                Bytes::from(order.to_string())
            }
            _ => body,
        }
    }

    /// One request to Pebble, on a new connection, with every header (Host included)
    /// as it came.
    async fn forward(
        &self,
        parts: &hyper::http::request::Parts,
        body: Bytes,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), BoxError> {
        let tcp = TcpStream::connect(self.pebble).await?;
        let tls = tokio_rustls::TlsConnector::from(self.pebble_tls.clone())
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let uri = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut req = Request::builder().method(parts.method.clone()).uri(uri);
        for (name, value) in &parts.headers {
            req = req.header(name, value);
        }
        let resp = send.send_request(req.body(Full::new(body))?).await?;
        let (parts, body) = resp.into_parts();
        Ok((
            parts.status,
            parts.headers,
            body.collect().await?.to_bytes(),
        ))
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The payload of a flattened JWS, decoded but not verified; `Null` if there is none.
fn jws_payload(body: &[u8]) -> serde_json::Value {
    let jws: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    jws["payload"]
        .as_str()
        .and_then(base64url_decode)
        .and_then(|payload| serde_json::from_slice(&payload).ok())
        .unwrap_or_default()
}

/// The ARI certificate identifier of a DER certificate (RFC 9773 4.1):
/// base64url(AKI keyIdentifier) "." base64url(serial), the serial as its DER INTEGER
/// content bytes (a leading zero byte kept), no padding.
pub fn cert_id(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("a certificate");
    let aki = cert
        .extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("an Authority Key Identifier");
    format!(
        "{}.{}",
        base64url_encode(&aki),
        base64url_encode(cert.raw_serial())
    )
}

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() * 4 / 3 + 3);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(BASE64URL[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

fn base64url_decode(input: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in input.trim_end_matches('=').bytes() {
        let v = BASE64URL.iter().position(|b| *b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}
