//! What Pebble cannot do, in front of it: an HTTPS reverse proxy before a running
//! [`Pebble`] that can hold new orders in flight and answer them 429 with a Retry-After.
//! Everything else (ACME Renewal Information, `replaces`) is Pebble's own.
//!
//! ```ignore
//! let front = CaFront::start(&pebble).await;
//! // acme.directory = front.directory_url(), acme.ca_root = pebble.ca_root_path()
//! ```
//!
//! Every request is forwarded to Pebble's ACME listener with its `Host` header unchanged.
//! Pebble builds every URL it returns from the request's `Host` (directory, `Location`,
//! `Link`, order and certificate URLs, `renewalInfo`) and checks a JWS's `url` against
//! that same `Host`, so all URLs portico sees point at the front and its signed requests
//! verify. On top:
//!
//! - each `newOrder` POST has its JWS payload decoded (not verified) and recorded
//!   ([`CaFront::new_orders`]);
//! - [`CaFront::hold_new_orders`]: while on, `newOrder` POSTs are recorded and then
//!   wait at the front until it is turned off (an order a test can hold in flight, with
//!   its lock held, as long as the scenario needs: no sleeps, no race with the CA);
//! - [`CaFront::fail_new_orders`]: the next N `newOrder` POSTs get `429` with an
//!   `urn:ietf:params:acme:error:rateLimited` problem and a `Retry-After`, and never reach
//!   Pebble (they are still recorded).
//!
//! The front serves Pebble's own certificate (the harness's throwaway CA, `localhost` and
//! `127.0.0.1`), so `acme.ca_root` stays [`Pebble::ca_root_path`]. It stops when dropped.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, TRANSFER_ENCODING};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::BoxError;
use super::pebble::Pebble;

/// Bound on any wait for something the front should see.
const WAIT: Duration = Duration::from_secs(60);

pub struct CaFront {
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
    /// Decoded JWS payloads of `newOrder` POSTs, in order (failed ones too).
    pub new_orders: Vec<serde_json::Value>,
    /// Remaining injected failures: count, `Retry-After` value.
    failures: (usize, String),
    /// Path of Pebble's newOrder URL, learnt from the directory.
    new_order_path: Option<String>,
}

impl CaFront {
    /// Starts the front on 127.0.0.1:0 before `pebble`'s ACME listener.
    pub async fn start(pebble: &Pebble) -> CaFront {
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

        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                new_orders: Vec::new(),
                failures: (0, String::new()),
                new_order_path: None,
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
        CaFront { addr, shared, task }
    }

    /// `https://localhost:PORT/dir`: portico's `acme.directory`.
    pub fn directory_url(&self) -> String {
        format!("https://localhost:{}/dir", self.addr.port())
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
                    "CA front: no {what} within {WAIT:?}; new orders {:?}\n{}",
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

impl Drop for CaFront {
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
        let is_new_order = parts.method == Method::POST
            && self.state().new_order_path.as_deref() == Some(path.as_str());
        if is_new_order {
            let payload = jws_payload(&body);
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
                    "detail": "too many new orders recently (CA front)",
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
        if is_directory && status == StatusCode::OK {
            self.learn_new_order_path(&body);
        }
        let mut resp = Response::builder().status(status);
        for (name, value) in &headers {
            // Full sets the length of the (possibly rewritten) body.
            if name != CONTENT_LENGTH && name != TRANSFER_ENCODING {
                resp = resp.header(name, value);
            }
        }
        resp.body(Full::new(body)).unwrap()
    }

    /// Learns the newOrder path from Pebble's directory.
    fn learn_new_order_path(&self, body: &Bytes) {
        let directory: serde_json::Value =
            serde_json::from_slice(body).expect("Pebble's directory is JSON");
        let new_order = directory["newOrder"]
            .as_str()
            .and_then(|url| url.parse::<hyper::Uri>().ok())
            .map(|uri| uri.path().to_string());
        self.state().new_order_path = new_order;
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
        .and_then(super::base64url_decode)
        .and_then(|payload| serde_json::from_slice(&payload).ok())
        .unwrap_or_default()
}
