//! A real ACME CA for the tests: Pebble and pebble-challtestsrv (v2.10, built from Go
//! modules by `scripts/peers`), started as child processes on ports the OS picks. This
//! Pebble offers ACME Renewal Information (`renewalInfo`), and its management API can
//! set the window it gives for a certificate ([`Pebble::set_renewal_window`]).
//!
//! ```ignore
//! let pebble = Pebble::start(PebbleConfig::new(portico.http.port(), portico.https.port())).await;
//! // acme.directory = pebble.directory_url(), acme.ca_root = pebble.ca_root_path()
//! ```
//!
//! - Pebble's own HTTPS (ACME and management) is served with a throwaway CA made here:
//!   [`Pebble::ca_root_path`]. The CA that signs *issued* certificates is another one,
//!   new at every Pebble start: [`Pebble::issuing_roots`].
//! - Every name resolves, through pebble-challtestsrv, to [`PebbleConfig::default_ipv4`]
//!   (127.0.0.1 unless set), or to what [`Pebble::set_a`] said for it. No AAAA answers.
//!   Pebble's VA then connects to that address on `http_port` (HTTP-01) or `tls_port`
//!   (TLS-ALPN-01).
//! - Pebble's stdout and stderr go to `pebble.log` in the temporary folder
//!   ([`Pebble::log`]); pebble-challtestsrv's to `challtestsrv.log`.
//! - Both processes are killed when the [`Pebble`] is dropped, also when a test panics
//!   (not when the test process itself is killed).
//! - [`Pebble::stop`] / [`Pebble::restart`] kill and restart Pebble only, on the same
//!   ports: the directory URL and `ca_root_path` stay, Pebble's state (accounts, orders,
//!   issuing CA) is new. pebble-challtestsrv keeps running, with its `set_a` answers.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, StatusCode};
use hyper_util::rt::TokioIo;
use portico::config::HostPattern;
use portico::tls::LocalCa;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// How long Pebble may take to answer `GET /dir` (it takes under a second here).
const START_DEADLINE: Duration = Duration::from_secs(20);
/// Bound on any single request the harness makes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PebbleConfig {
    /// Port Pebble's VA connects back to for HTTP-01 (portico's plain HTTP listener).
    pub http_port: u16,
    /// Port Pebble's VA connects back to for TLS-ALPN-01 (portico's HTTPS listener).
    pub tls_port: u16,
    /// The address pebble-challtestsrv answers every A query with (per name:
    /// [`Pebble::set_a`]).
    pub default_ipv4: Ipv4Addr,
    /// Extra environment for Pebble, such as `PEBBLE_VA_ALWAYS_VALID=1` or
    /// `PEBBLE_AUTHZREUSE=0`. `PEBBLE_VA_NOSLEEP=1` and `PEBBLE_WFE_NONCEREJECT=0` are
    /// always set first (so they can be overridden here); `PEBBLE_*` variables of the
    /// test process are not passed on.
    pub env: Vec<(String, String)>,
    /// External Account Binding required, with this (key id, base64url HMAC key).
    pub eab: Option<(String, String)>,
    /// ACME profiles (name, validity in seconds), listed in the directory's
    /// `meta.profiles`. None: Pebble's own `default` (90 days). An order that names no
    /// profile gets a random one of these.
    pub profiles: Vec<(String, u64)>,
}

impl PebbleConfig {
    pub fn new(http_port: u16, tls_port: u16) -> PebbleConfig {
        PebbleConfig {
            http_port,
            tls_port,
            default_ipv4: Ipv4Addr::LOCALHOST,
            env: Vec::new(),
            eab: None,
            profiles: Vec::new(),
        }
    }

    /// Offers the profile `name`, whose certificates are valid for `validity`.
    pub fn with_profile(mut self, name: &str, validity: Duration) -> PebbleConfig {
        self.profiles.push((name.to_string(), validity.as_secs()));
        self
    }

    /// Requires External Account Binding, accepting only `kid` with `hmac_key`.
    pub fn with_eab(mut self, kid: &str, hmac_key: &str) -> PebbleConfig {
        self.eab = Some((kid.to_string(), hmac_key.to_string()));
        self
    }
}

/// Pebble's listeners, all on 127.0.0.1.
#[derive(Clone, Copy, Debug)]
struct Ports {
    acme: u16,
    management: u16,
    /// UDP and TCP.
    dns: u16,
    dns_management: u16,
}

impl Ports {
    /// Four distinct free ports: all held until all are chosen, then released.
    fn pick() -> Ports {
        let acme = TcpListener::bind("127.0.0.1:0").unwrap();
        let management = TcpListener::bind("127.0.0.1:0").unwrap();
        let dns_management = TcpListener::bind("127.0.0.1:0").unwrap();
        let dns = free_dns_sockets();
        let port = |l: &TcpListener| l.local_addr().unwrap().port();
        Ports {
            acme: port(&acme),
            management: port(&management),
            dns: port(&dns.1),
            dns_management: port(&dns_management),
        }
    }
}

/// A free loopback TCP port from the OS (bound to 127.0.0.1:0, then released: another
/// process may take it before it is used). Not for portico's own listeners: they bind
/// port 0 ([`crate::Bound`]) or are held until bound ([`HeldPorts`]).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two loopback ports for portico's http and https listeners, the ones Pebble is told
/// to validate on, kept bound until [`HeldPorts::release`]: while a port is bound no
/// other process's connection takes it as its own port, and Pebble's start takes long
/// enough for that to happen on a busy machine.
pub struct HeldPorts {
    http: TcpListener,
    https: TcpListener,
}

impl HeldPorts {
    pub fn new() -> HeldPorts {
        HeldPorts {
            http: TcpListener::bind("127.0.0.1:0").unwrap(),
            https: TcpListener::bind("127.0.0.1:0").unwrap(),
        }
    }

    pub fn http(&self) -> u16 {
        self.http.local_addr().unwrap().port()
    }

    pub fn https(&self) -> u16 {
        self.https.local_addr().unwrap().port()
    }

    /// Frees both ports, just before portico binds them.
    pub fn release(self) {}
}

impl Default for HeldPorts {
    fn default() -> Self {
        HeldPorts::new()
    }
}

/// A UDP port whose TCP twin is free too (pebble-challtestsrv serves DNS on both).
fn free_dns_sockets() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)) {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

/// What a request to Pebble returned.
#[derive(Debug)]
pub struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Fetched {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub struct Pebble {
    config: PebbleConfig,
    ports: Ports,
    dir: tempfile::TempDir,
    /// Trusts the throwaway CA of Pebble's own HTTPS.
    tls: Arc<rustls::ClientConfig>,
    pebble: Option<Child>,
    challtestsrv: Option<Child>,
}

impl Pebble {
    /// Starts pebble-challtestsrv and Pebble; returns once `GET /dir` answers 200 over
    /// HTTPS and the DNS server and both management interfaces accept connections.
    /// Panics, with the logs, if that does not happen within 20 s. If a process could not
    /// bind its port (taken between choosing and binding), starts once more on new ports.
    pub async fn start(config: PebbleConfig) -> Pebble {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();

        // Pebble's own HTTPS certificate: a throwaway CA and a leaf for localhost and
        // 127.0.0.1 (the management interface is reached by IP).
        let now = SystemTime::now();
        let ca = LocalCa::generate(now).unwrap();
        let leaf = ca
            .issue(
                &[
                    HostPattern::Exact("localhost".into()),
                    HostPattern::Exact("127.0.0.1".into()),
                ],
                now,
            )
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.root_pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), &leaf.chain_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &leaf.key_pem).unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.root_pem().as_bytes()).unwrap())
            .unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(portico::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();

        let mut pebble = Pebble {
            config,
            ports: Ports::pick(),
            dir,
            tls: Arc::new(tls),
            pebble: None,
            challtestsrv: None,
        };
        for attempt in 1..=2 {
            if attempt > 1 {
                pebble.kill_all();
                pebble.ports = Ports::pick();
                // The failed attempt's logs only say which port was taken.
                let _ = std::fs::remove_file(pebble.log_path());
                let _ = std::fs::remove_file(pebble.challtestsrv_log_path());
            }
            pebble.write_config();
            pebble.spawn_challtestsrv();
            pebble.spawn_pebble();
            match pebble.wait_ready(true).await {
                Ok(()) => return pebble,
                Err(reason) if attempt == 1 && pebble.port_taken() => {
                    eprintln!("pebble harness: {reason}; starting again on other ports");
                }
                Err(reason) => pebble.fail(&reason),
            }
        }
        unreachable!()
    }

    /// `https://localhost:PORT/dir`. `localhost` is 127.0.0.1 only here (/etc/hosts).
    pub fn directory_url(&self) -> String {
        format!("https://localhost:{}/dir", self.ports.acme)
    }

    /// PEM of the throwaway CA that signed Pebble's own HTTPS certificate (portico's
    /// `acme.ca_root`). Not the CA of the certificates Pebble issues.
    pub fn ca_root_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Pebble's ACME listener (127.0.0.1).
    pub fn acme_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.acme))
    }

    /// pebble-challtestsrv's DNS server (UDP and TCP), the one Pebble resolves names with.
    pub fn dns_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.dns))
    }

    /// The temporary folder: certificates, `pebble.json`, logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// PEM of the root that issued certificates chain to (`/roots/0` of the management
    /// interface), to use as the only trust anchor when checking what portico serves.
    /// Issued chains are leaf + intermediate; the intermediate is deliberately not
    /// included here, so a server that drops it fails verification. New at every
    /// (re)start.
    pub async fn issuing_roots(&self) -> Vec<u8> {
        self.management_pem("/roots/0").await
    }

    /// PEM of the intermediate that signs issued leaves (`/intermediates/0`).
    pub async fn issuing_intermediates(&self) -> Vec<u8> {
        self.management_pem("/intermediates/0").await
    }

    async fn management_pem(&self, path: &str) -> Vec<u8> {
        let url = format!("https://127.0.0.1:{}{path}", self.ports.management);
        let fetched = self.fetch("GET", &url, None).await;
        assert_eq!(
            fetched.status,
            StatusCode::OK,
            "GET {url}: {}\n{}",
            fetched.text(),
            self.log()
        );
        fetched.body.to_vec()
    }

    /// New orders Pebble stored so far, counting every run since `start` (restarts
    /// included): the lines `There are now N orders in the db` (one per successful
    /// new-order request; a rejected `POST /order-plz` logs no such line).
    pub fn orders(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("There are now ") && l.ends_with(" orders in the db"))
            .count()
    }

    /// Pebble's stdout and stderr so far, all runs (a restart is marked by a line
    /// starting with `pebble harness:`).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// pebble-challtestsrv's stdout and stderr so far.
    pub fn challtestsrv_log(&self) -> String {
        read_lossy(&self.challtestsrv_log_path())
    }

    /// From now on pebble-challtestsrv answers A queries for `host` with `ip` (only).
    pub async fn set_a(&self, host: &str, ip: Ipv4Addr) {
        // `/add-a` appends to the host's addresses, and Pebble's VA dials the first:
        // a second call would otherwise change nothing.
        self.clear_a(host).await;
        self.challtestsrv_post(
            "/add-a",
            format!("{{\"host\":\"{host}\",\"addresses\":[\"{ip}\"]}}"),
        )
        .await;
    }

    /// `host` is answered with the default address again.
    pub async fn clear_a(&self, host: &str) {
        self.challtestsrv_post("/clear-a", format!("{{\"host\":\"{host}\"}}"))
            .await;
    }

    /// Asks pebble-challtestsrv's DNS server (over UDP) for the A records of `host`, as
    /// Pebble's VA would.
    pub async fn query_a(&self, host: &str) -> Vec<Ipv4Addr> {
        match self.try_query_a(host, 5).await {
            Ok(found) => found,
            Err(e) => panic!("{e}\n{}", self.challtestsrv_log()),
        }
    }

    /// One A query over UDP, sent up to `tries` times, a second apart.
    async fn try_query_a(&self, host: &str, tries: usize) -> Result<Vec<Ipv4Addr>, String> {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(self.dns_addr()).await.unwrap();
        let id = 0x5eb1;
        let query = dns_a_query(id, host);
        let mut buf = [0u8; 1500];
        for _ in 0..tries {
            // Errors (ICMP port unreachable) count as no answer.
            let _ = socket.send(&query).await;
            let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await
            else {
                continue;
            };
            return dns_a_answers(&buf[..n], id)
                .ok_or_else(|| format!("bad DNS answer for {host}: {:?}", &buf[..n]));
        }
        Err(format!("no DNS answer for {host} from {}", self.dns_addr()))
    }

    /// Through Pebble's management API (`/set-renewal-info/`): from now on Pebble's
    /// `renewalInfo` for the certificate `leaf` (DER) suggests the window `start..end`
    /// instead of its own (a window around two thirds of the lifetime).
    pub async fn set_renewal_window(&self, leaf: &[u8], start: SystemTime, end: SystemTime) {
        let rfc3339 = |t: SystemTime| {
            time::OffsetDateTime::from(t)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            super::base64_encode(leaf)
        );
        let window =
            serde_json::json!({"suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)}});
        let body = serde_json::json!({"Certificate": pem, "ARIResponse": window.to_string()});
        let url = format!(
            "https://127.0.0.1:{}/set-renewal-info/",
            self.ports.management
        );
        let answer = self
            .fetch(
                "POST",
                &url,
                Some(("application/json", body.to_string().into_bytes())),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{url}: {:?}", answer.body);
    }

    /// The renewal window Pebble's `renewalInfo` gives for the certificate `leaf` (DER).
    pub async fn renewal_window(&self, leaf: &[u8]) -> (SystemTime, SystemTime) {
        let url = format!(
            "https://localhost:{}/draft-ietf-acme-ari-03/renewalInfo/{}",
            self.ports.acme,
            cert_id(leaf)
        );
        let answer = self.fetch("GET", &url, None).await;
        assert_eq!(answer.status, StatusCode::OK, "{url}: {:?}", answer.body);
        let info: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        let at = |key: &str| {
            let text = info["suggestedWindow"][key].as_str().unwrap();
            SystemTime::from(
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .unwrap(),
            )
        };
        (at("start"), at("end"))
    }

    /// How many times Pebble was asked for a `renewalInfo` so far (its log names the
    /// handler, not the certificate).
    pub fn ari_checks(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("GET /draft-ietf-acme-ari-03/renewalInfo/"))
            .count()
    }

    /// Pebble's log lines that record an order as the replacement of another (ARI
    /// `replaces`): "ARI: order X is a replacement of Y".
    pub fn replacements(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("is a replacement of"))
            .map(str::to_string)
            .collect()
    }

    /// Kills Pebble (pebble-challtestsrv keeps running): the directory is unreachable
    /// until [`Pebble::restart`]. Does nothing if already stopped.
    pub fn stop(&mut self) {
        if let Some(child) = self.pebble.take() {
            kill(child);
        }
    }

    /// Starts Pebble again on the same ports (same directory URL, same `ca_root_path`),
    /// stopping it first if running. Its state is new: no accounts, no orders, a new
    /// issuing CA. Panics with the log if it does not come up within 20 s.
    pub async fn restart(&mut self) {
        self.stop();
        let mut log = self.open_log(&self.log_path());
        writeln!(log, "pebble harness: restarting Pebble on the same ports").unwrap();
        self.spawn_pebble();
        if let Err(reason) = self.wait_ready(false).await {
            self.fail(&format!("restart: {reason}"));
        }
    }

    /// One request over HTTPS to Pebble (ACME or management interface): `url` is
    /// `https://localhost:PORT/...` or `https://127.0.0.1:PORT/...`, always reached on
    /// 127.0.0.1 and verified against the throwaway CA. `body`: content type and bytes.
    pub async fn fetch(&self, method: &str, url: &str, body: Option<(&str, Vec<u8>)>) -> Fetched {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.try_fetch(method, url, body)).await {
            Ok(Ok(fetched)) => fetched,
            Ok(Err(e)) => panic!("{method} {url}: {e}\n{}", self.log()),
            Err(_) => panic!(
                "{method} {url}: no answer in {REQUEST_TIMEOUT:?}\n{}",
                self.log()
            ),
        }
    }

    async fn try_fetch(
        &self,
        method: &str,
        url: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Fetched, Box<dyn std::error::Error + Send + Sync>> {
        let rest = url.strip_prefix("https://").ok_or("not an https URL")?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = authority.rsplit_once(':').ok_or("no port in URL")?;
        let port: u16 = port.parse()?;
        let tcp = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        let name = ServerName::try_from(host.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(if path.is_empty() { "/" } else { path })
            .header("host", authority)
            // Pebble 2.10 refuses requests without one (RFC 8555 6.1: clients MUST send it).
            .header("user-agent", "portico-tests");
        let body = match body {
            Some((content_type, bytes)) => {
                req = req.header("content-type", content_type);
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        let resp = send.send_request(req.body(Full::new(body))?).await?;
        let (parts, body) = resp.into_parts();
        Ok(Fetched {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await?.to_bytes(),
        })
    }

    async fn challtestsrv_post(&self, path: &str, json: String) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.dns_management));
        let post = async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let req = hyper::Request::post(path)
                .header("host", addr.to_string())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(json.clone())))?;
            let resp = send.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, post).await {
            Ok(Ok((StatusCode::OK, _))) => {}
            Ok(Ok((status, body))) => panic!(
                "pebble-challtestsrv POST {path} {json}: {status} {}\n{}",
                String::from_utf8_lossy(&body),
                self.challtestsrv_log()
            ),
            Ok(Err(e)) => panic!(
                "pebble-challtestsrv POST {path}: {e}\n{}",
                self.challtestsrv_log()
            ),
            Err(_) => panic!("pebble-challtestsrv POST {path}: no answer"),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("pebble.log")
    }

    fn challtestsrv_log_path(&self) -> PathBuf {
        self.dir.path().join("challtestsrv.log")
    }

    fn open_log(&self, path: &Path) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
    }

    fn write_config(&self) {
        let dir = self.dir.path();
        let json = format!(
            r#"{{"pebble":{{"listenAddress":"127.0.0.1:{acme}","managementListenAddress":"127.0.0.1:{mgmt}",
 "certificate":"{cert}","privateKey":"{key}",
 "httpPort":{http},"tlsPort":{tls},
 "ocspResponderURL":"",{profiles}{eab}}}}}
"#,
            acme = self.ports.acme,
            mgmt = self.ports.management,
            cert = dir.join("cert.pem").display(),
            key = dir.join("key.pem").display(),
            http = self.config.http_port,
            tls = self.config.tls_port,
            profiles = if self.config.profiles.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = self
                    .config
                    .profiles
                    .iter()
                    .map(|(name, secs)| {
                        format!(
                            r#""{name}":{{"description":"{name} (test)","validityPeriod":{secs}}}"#
                        )
                    })
                    .collect();
                format!(r#""profiles":{{{}}},"#, list.join(","))
            },
            eab = match &self.config.eab {
                Some((kid, key)) => format!(
                    r#""externalAccountBindingRequired":true,"externalAccountMACKeys":{{"{kid}":"{key}"}}"#
                ),
                None => r#""externalAccountBindingRequired":false"#.to_string(),
            },
        );
        std::fs::write(dir.join("pebble.json"), json).unwrap();
    }

    fn spawn_challtestsrv(&mut self) {
        let log = self.open_log(&self.challtestsrv_log_path());
        let child = Command::new(super::peer("pebble-challtestsrv"))
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{}", self.ports.dns))
            .args([
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-doh",
                "",
                "-defaultIPv6",
                "",
            ])
            .arg("-defaultIPv4")
            .arg(self.config.default_ipv4.to_string())
            .arg("-management")
            .arg(format!("127.0.0.1:{}", self.ports.dns_management))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("pebble-challtestsrv: {e} (scripts/peers builds it)"));
        self.challtestsrv = Some(child);
    }

    fn spawn_pebble(&mut self) {
        let log = self.open_log(&self.log_path());
        let mut command = Command::new(super::peer("pebble"));
        command
            .arg("-config")
            .arg(self.dir.path().join("pebble.json"))
            .arg("-dnsserver")
            .arg(self.dns_addr().to_string())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PEBBLE_") {
                command.env_remove(key);
            }
        }
        command
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0");
        for (key, value) in &self.config.env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("pebble: {e} (scripts/peers builds it)"));
        self.pebble = Some(child);
    }

    /// Polls until Pebble's directory answers 200 and its management port, and (with
    /// `challtestsrv`) the DNS and DNS management ports, accept connections, and the DNS
    /// server answers a query over UDP; fails as soon as a process exits or logs that a
    /// port was taken.
    async fn wait_ready(&mut self, challtestsrv: bool) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            for (name, child) in [
                ("pebble", &mut self.pebble),
                ("pebble-challtestsrv", &mut self.challtestsrv),
            ] {
                if let Some(c) = child
                    && let Ok(Some(status)) = c.try_wait()
                {
                    *child = None;
                    return Err(format!("{name} exited: {status}"));
                }
            }
            // pebble-challtestsrv does not exit when it cannot bind: it logs and goes on.
            if self.port_taken() {
                return Err("a port was taken (bind: address already in use)".into());
            }
            let Err(last) = self.ready_once(challtestsrv).await else {
                return Ok(());
            };
            if Instant::now() > deadline {
                return Err(format!("not ready after {START_DEADLINE:?}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn ready_once(&self, challtestsrv: bool) -> Result<(), String> {
        let mut ports = vec![self.ports.management];
        if challtestsrv {
            ports.extend([self.ports.dns, self.ports.dns_management]);
        }
        for port in ports {
            tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .await
                .map_err(|e| format!("port {port}: {e}"))?;
        }
        if challtestsrv {
            // Its UDP side too (the TCP connect above may not say).
            self.try_query_a("ready.example.test", 1).await?;
        }
        let url = self.directory_url();
        match tokio::time::timeout(Duration::from_secs(2), self.try_fetch("GET", &url, None)).await
        {
            Ok(Ok(f)) if f.status == StatusCode::OK => Ok(()),
            Ok(Ok(f)) => Err(format!(
                "GET {url}: {} {}",
                f.status,
                String::from_utf8_lossy(&f.body)
            )),
            Ok(Err(e)) => Err(format!("GET {url}: {e}")),
            Err(_) => Err(format!("GET {url}: timed out")),
        }
    }

    fn port_taken(&self) -> bool {
        let taken = |log: String| log.contains("address already in use");
        taken(self.log()) || taken(self.challtestsrv_log())
    }

    fn fail(&mut self, reason: &str) -> ! {
        self.kill_all();
        panic!(
            "Pebble did not start ({:?}): {reason}\n--- pebble.log ---\n{}\n--- challtestsrv.log ---\n{}",
            self.ports,
            self.log(),
            self.challtestsrv_log()
        );
    }

    fn kill_all(&mut self) {
        self.stop();
        if let Some(child) = self.challtestsrv.take() {
            kill(child);
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// A DNS query (RFC 1035 4.1) for the A records of `host`, recursion desired.
fn dns_a_query(id: u16, host: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + host.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; 1 question
    for label in host.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root; type A; class IN
    q
}

/// The addresses in the A records of the answer section of `msg`, if it answers `id`.
fn dns_a_answers(msg: &[u8], id: u16) -> Option<Vec<Ipv4Addr>> {
    let u16_at = |i: usize| Some(u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]));
    if u16_at(0)? != id || msg[2] & 0x80 == 0 {
        return None;
    }
    let (questions, answers) = (u16_at(4)?, u16_at(6)?);
    // Skips a name: labels up to the root, or up to a compression pointer.
    let skip_name = |mut i: usize| loop {
        let len = *msg.get(i)?;
        match len {
            0 => return Some(i + 1),
            l if l & 0xc0 == 0xc0 => return Some(i + 2),
            l => i += 1 + l as usize,
        }
    };
    let mut i = 12;
    for _ in 0..questions {
        i = skip_name(i)? + 4;
    }
    let mut found = Vec::new();
    for _ in 0..answers {
        i = skip_name(i)?;
        let (rtype, rdlen) = (u16_at(i)?, u16_at(i + 8)? as usize);
        let data = msg.get(i + 10..i + 10 + rdlen)?;
        if rtype == 1 && rdlen == 4 {
            found.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += 10 + rdlen;
    }
    Some(found)
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
        super::base64url_encode(&aki),
        super::base64url_encode(cert.raw_serial())
    )
}
