//! The whole server: a real portico on OS-chosen loopback ports (TLS listener, port 80,
//! certificates), and real TLS / HTTP clients for it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico::acme::Tuning;
use portico::config::Config;
use portico::server::Server;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::client::TlsStream;

pub struct Portico {
    pub https: SocketAddr,
    pub http: SocketAddr,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin: SocketAddr,
    pub metrics: Arc<portico::metrics::Metrics>,
    pub dir: tempfile::TempDir,
    pub resolver: Arc<portico::tls::CertResolver>,
    pub challenges: Arc<portico::acme::Challenges>,
    pub certs: Arc<portico::certs::CertManager>,
    /// Reloads the config file as SIGHUP does.
    pub reloader: portico::reload::Reloader,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Writes `sites` (TOML with `[[site]]` tables and anything else but `[listen]` and
/// `[storage]`) under a header that binds 127.0.0.1:0 (http, https and admin) and keeps
/// the store in a fresh temporary folder, then starts portico on it. `{dir}` in `sites`
/// is that folder.
pub async fn start(sites: &str) -> Portico {
    let dir = tempfile::tempdir().unwrap();
    start_in(dir, sites).await
}

pub fn header(dir: &Path) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[storage]\npath = \"{}\"\n\n",
        dir.join("data").display()
    )
}

pub async fn start_in(dir: tempfile::TempDir, sites: &str) -> Portico {
    let text = format!("{}{sites}", header(dir.path()));
    start_text(dir, &text, Tuning::default()).await
}

/// Starts portico on the whole config `text` (`{dir}` = the folder), with `tuning`.
pub async fn start_text(dir: tempfile::TempDir, text: &str, tuning: Tuning) -> Portico {
    let text = text.replace("{dir}", &dir.path().display().to_string());
    let path = dir.path().join("portico.toml");
    std::fs::write(&path, &text).unwrap();
    start_file(dir, &path, tuning).await
}

/// Starts portico on the config file at `path` (a file or symlink the test made, usually
/// under `dir`), with `tuning`.
pub async fn start_file(dir: tempfile::TempDir, path: &Path, tuning: Tuning) -> Portico {
    let config = Config::load(path).unwrap();
    let (store, locker) = portico::server::open_store(&config).await.unwrap();
    start_with(dir, config, store, locker, tuning).await
}

/// Starts portico on `config` with the given store and locker (several replicas of one
/// test process, each with its own Kubernetes client).
pub async fn start_with(
    dir: tempfile::TempDir,
    config: Config,
    store: Arc<dyn portico::store::Store>,
    locker: Arc<dyn portico::store::Locker>,
    tuning: Tuning,
) -> Portico {
    let server = Server::bind_with(config.clone(), store, locker, tuning)
        .await
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let portico = Portico {
        https: server.https_addr(),
        http: server.http_addr(),
        admin: server.admin_addr().expect("the header sets listen.admin"),
        metrics: server.metrics(),
        resolver: server.resolver(),
        challenges: server.challenges(),
        certs: server.certs(),
        reloader: server.reloader(),
        config,
        dir,
        stop: Some(stop),
        task: None,
    };
    let task = tokio::spawn(async move {
        server
            .run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Portico {
        task: Some(task),
        ..portico
    }
}

impl Portico {
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn root_pem(&self) -> Vec<u8> {
        std::fs::read(self.data().join("ca").join("root.pem")).unwrap()
    }

    /// Stops accepting, drains, and hands the folder back for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        self.dir
    }
}

pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A client configuration trusting `roots` (PEM), offering `alpn`.
pub fn client_config(roots: &[&[u8]], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        for cert in CertificateDer::pem_slice_iter(pem) {
            store.add(cert.unwrap()).unwrap();
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(portico::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string()).map_err(std::io::Error::other)?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

pub type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;
pub type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

pub async fn h2(addr: SocketAddr, name: &str, root: &[u8]) -> H2 {
    let tls = tls_connect(addr, name, client_config(&[root], &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    h2_over(tls).await
}

/// An HTTP/2 client on a TLS connection already made.
pub async fn h2_over(tls: TlsStream<TcpStream>) -> H2 {
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

pub async fn h1(addr: SocketAddr, name: &str, root: &[u8]) -> H1 {
    let tls = tls_connect(addr, name, client_config(&[root], &[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    send
}

/// GET `https://{authority}{path}`; returns status and body text.
pub async fn get_h2(send: &mut H2, authority: &str, path: &str) -> (u16, String) {
    let req = hyper::Request::get(format!("https://{authority}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub async fn get_h1(send: &mut H1, host: &str, path: &str) -> (u16, String) {
    let req = hyper::Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Plain HTTP/1.1 request to the port-80 listener; returns status, Location, body.
pub async fn plain_get(addr: SocketAddr, host: &str, path: &str) -> (u16, Option<String>, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        location,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// The DER leaf the server presented on `tls`.
pub fn leaf(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}
