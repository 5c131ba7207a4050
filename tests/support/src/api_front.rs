//! Faults around the real API server: a small HTTPS proxy in front of it, on 127.0.0.1:0,
//! that passes every request and answer through untouched (streams, watches and the
//! caller's token included) until a test tells it to
//! - go down: refuse new connections and cut the open ones ([`Front::set_down`]);
//! - cut every open connection, watches included ([`Front::cut`]);
//! - lose the answer to the next write: the API server applies it, the client's
//!   connection is cut before the answer reaches it ([`Front::lose_next_write_response`]);
//! - answer the next requests with an error status itself, as a load balancer in front
//!   of a sick API server does ([`Front::fail_next`]);
//! - refuse every write of some objects, by what its body holds, as an admission webhook
//!   or a full etcd does ([`Front::fail_writes_containing`]);
//! - hold the next update (PUT) of one object until the test lets it go, so that another
//!   writer can change the object between a client's read and its write
//!   ([`Front::hold_next_update`]).
//!
//! It serves the API server's own certificate, so kubeconfigs pointed at it verify it
//! against the same CA. It also logs what went through it (method, path, token).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use super::control_plane::ControlPlane;

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
type Upstream = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// (method, path and query, bearer token) of a request that went through.
pub type Logged = (String, String, Option<String>);

pub struct Front {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    down: AtomicBool,
    /// (how many more, status, writes only)
    fail: Mutex<(usize, u16, bool)>,
    lose_write: AtomicUsize,
    /// Writes whose body holds these bytes are answered with this status.
    fail_body: Mutex<Option<(Vec<u8>, u16)>>,
    /// How many writes `fail_body` answered.
    failed_bodies: AtomicUsize,
    /// Bumped to cut every open connection.
    epoch: tokio::sync::watch::Sender<u64>,
    log: Mutex<Vec<Logged>>,
    /// The path of the next PUT to hold, while armed.
    hold: Mutex<Option<String>>,
    /// True while a held PUT waits.
    held: tokio::sync::watch::Sender<bool>,
    /// Turned true to let the held PUT go.
    release: tokio::sync::watch::Sender<bool>,
    open_watches: Mutex<Vec<Option<String>>>,
    upstream: Upstream,
    target: String,
}

impl Front {
    /// A front for the API server of `plane`, in the current runtime.
    pub async fn start(plane: &ControlPlane) -> Front {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let (cert, key) = plane.serving_pem();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));

        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(plane.ca_pem().as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let shared = Arc::new(Shared {
            down: AtomicBool::new(false),
            fail: Mutex::new((0, 0, false)),
            lose_write: AtomicUsize::new(0),
            fail_body: Mutex::new(None),
            failed_bodies: AtomicUsize::new(0),
            epoch: tokio::sync::watch::channel(0).0,
            log: Mutex::new(Vec::new()),
            hold: Mutex::new(None),
            held: tokio::sync::watch::channel(false).0,
            release: tokio::sync::watch::channel(false).0,
            open_watches: Mutex::new(Vec::new()),
            upstream: Client::builder(TokioExecutor::new()).build(connector),
            target: plane.url().to_string(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                if serving.down.load(Ordering::SeqCst) {
                    drop(tcp);
                    continue;
                }
                let shared = serving.clone();
                let acceptor = acceptor.clone();
                let mut epoch = shared.epoch.subscribe();
                tokio::spawn(async move {
                    let serve = async {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = service_fn(move |req| {
                            let shared = shared.clone();
                            async move { shared.handle(req).await }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    };
                    // A new epoch drops the connection, and the streams on it, mid-flight.
                    tokio::select! {
                        _ = serve => {}
                        _ = epoch.changed() => {}
                    }
                });
            }
        });
        Front { addr, shared, task }
    }

    /// `https://127.0.0.1:PORT`, for a kubeconfig.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            self.cut();
        }
    }

    /// Cuts every open connection (and so every watch) now.
    pub fn cut(&self) {
        self.shared.epoch.send_modify(|e| *e += 1);
    }

    /// The next `n` requests are answered `status` by the front.
    pub fn fail_next(&self, n: usize, status: u16) {
        *self.shared.fail.lock().unwrap() = (n, status, false);
    }

    /// The next `n` writes (POST, PUT, PATCH, DELETE) are answered `status` by the front.
    pub fn fail_next_writes(&self, n: usize, status: u16) {
        *self.shared.fail.lock().unwrap() = (n, status, true);
    }

    /// Until called again with `None`, every write (POST, PUT, PATCH, DELETE) whose body holds
    /// `needle` is answered `status` by the front; other requests pass.
    pub fn fail_writes_containing(&self, fault: Option<(&str, u16)>) {
        *self.shared.fail_body.lock().unwrap() =
            fault.map(|(needle, status)| (needle.as_bytes().to_vec(), status));
    }

    /// How many writes [`Front::fail_writes_containing`] has answered so far.
    pub fn failed_writes_containing(&self) -> usize {
        self.shared.failed_bodies.load(Ordering::SeqCst)
    }

    /// The next write reaches the API server; its answer never reaches the client.
    pub fn lose_next_write_response(&self) {
        self.shared.lose_write.fetch_add(1, Ordering::SeqCst);
    }

    /// The next PUT to `path` (`/api/v1/namespaces/NS/secrets/NAME`) waits at the front
    /// until [`Front::release`].
    pub fn hold_next_update(&self, path: &str) {
        self.shared.release.send_replace(false);
        *self.shared.hold.lock().unwrap() = Some(path.to_string());
    }

    /// Waits until the PUT armed by [`Front::hold_next_update`] is held.
    pub async fn update_held(&self) {
        let mut held = self.shared.held.subscribe();
        let _ = held.wait_for(|held| *held).await;
    }

    /// Lets the held PUT go on to the API server.
    pub fn release(&self) {
        self.shared.release.send_replace(true);
    }

    /// Every request that went through, oldest first.
    pub fn requests(&self) -> Vec<Logged> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Watches open through this front now, of requests bearing `token` (any: None).
    pub fn open_watches(&self, token: Option<&str>) -> usize {
        self.shared
            .open_watches
            .lock()
            .unwrap()
            .iter()
            .filter(|t| token.is_none() || t.as_deref() == token)
            .count()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

fn status_body(status: u16, message: &str) -> Body {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "code": status,
    });
    Full::new(Bytes::from(body.to_string()))
        .map_err(|e| match e {})
        .boxed()
}

/// Counts an open watch while its answer streams.
struct Watching {
    shared: Arc<Shared>,
    token: Option<String>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut open = self.shared.open_watches.lock().unwrap();
        if let Some(i) = open.iter().position(|t| *t == self.token) {
            open.remove(i);
        }
    }
}

impl Shared {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, LostAnswer> {
        let method = req.method().to_string();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let token = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        self.log
            .lock()
            .unwrap()
            .push((method.clone(), path.clone(), token.clone()));
        let write = matches!(method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE");
        let hold = method == "PUT" && {
            let mut hold = self.hold.lock().unwrap();
            let matched = hold.as_deref() == Some(path.split('?').next().unwrap_or(""));
            if matched {
                *hold = None;
            }
            matched
        };
        if hold {
            let mut release = self.release.subscribe();
            self.held.send_replace(true);
            let _ = release.wait_for(|go| *go).await;
            self.held.send_replace(false);
        }
        let refuse = |status: u16| {
            let mut resp = Response::new(status_body(status, "answered by the test's front"));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
            resp.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            Ok(resp)
        };
        {
            let mut fail = self.fail.lock().unwrap();
            if fail.0 > 0 && (write || !fail.2) {
                fail.0 -= 1;
                return refuse(fail.1);
            }
        }
        let (mut parts, body) = req.into_parts();
        let fail_body = self.fail_body.lock().unwrap().clone();
        let body: Body = match fail_body {
            Some((needle, status)) if write => {
                let bytes = match body.collect().await {
                    Ok(collected) => collected.to_bytes(),
                    Err(_) => return Err(LostAnswer),
                };
                if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
                    self.failed_bodies.fetch_add(1, Ordering::SeqCst);
                    return refuse(status);
                }
                Full::new(bytes).map_err(|e| match e {}).boxed()
            }
            _ => body.map_err(|e| Box::new(e) as _).boxed(),
        };
        parts.uri = format!("{}{path}", self.target).parse().unwrap();
        parts.headers.remove(http::header::HOST);
        parts.version = http::Version::HTTP_11;
        let answer = match self
            .upstream
            .request(Request::from_parts(parts, body))
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                let mut resp = Response::new(status_body(502, &e.to_string()));
                *resp.status_mut() = StatusCode::BAD_GATEWAY;
                return Ok(resp);
            }
        };
        if write
            && self
                .lose_write
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            // Applied by the API server; the error makes hyper drop the connection (or
            // reset the stream) before any of the answer goes out.
            return Err(LostAnswer);
        }
        let (parts, body) = answer.into_parts();
        let body: Body = if path.contains("watch=") {
            self.open_watches.lock().unwrap().push(token.clone());
            let watching = Watching {
                shared: self.clone(),
                token,
            };
            body.map_frame(move |frame| {
                let _ = &watching;
                frame
            })
            .map_err(|e| Box::new(e) as _)
            .boxed()
        } else {
            body.map_err(|e| Box::new(e) as _).boxed()
        };
        Ok(Response::from_parts(parts, body))
    }
}

#[derive(Debug)]
struct LostAnswer;

impl std::fmt::Display for LostAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the test's front lost this answer")
    }
}

impl std::error::Error for LostAnswer {}
