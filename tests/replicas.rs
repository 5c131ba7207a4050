//! Several replicas behind one load balancer: portico instances on 127.0.0.2, .3 and .4
//! (same ports, as pods behind a Service), sharing one real Kubernetes API server (each
//! replica its own identity, bound to nothing but the shipped Role, in a namespace of the
//! test's own), reached through a front that can take it away, and one Pebble. Pebble's
//! DNS answer is a replica that does not hold the issuance Lease, so the CA's validation
//! reaches a replica that must find the token in the shared store.
//!
//! Then what goes wrong in a cluster: the holder of the issuance Lease SIGKILLed before
//! its order finishes (real processes: the `portico` binary), the API server gone for
//! 30 s, replicas whose clocks are hours off, another writer (the admin) changing the
//! certificate Secret between a replica's read and its write, and an API server that
//! refuses the certificate Secret for a while, or for good. What the replicas did is
//! read off the API server: objects as the admin reads them, every state of the Lease as
//! a watch saw it, every request in the audit log.
//!
//! Nothing here asserts how long anything takes: effects are waited for, with deadlines
//! that only keep a broken build from hanging. Where a scenario needs an order to stay in
//! flight, the CA sits behind a [`CaFront`] that holds new orders until the test lets
//! them through, instead of racing the CA; where it needs a write to meet another
//! writer's change, the API front holds that write until the change is made.

use portico_test_support as common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::api_front::Front;
use common::base64_decode;
use common::ca_front::CaFront;
use common::control_plane::{Namespace, Recorder, control_plane};
use common::edge::{self, Portico, client_config, install_provider, start_with, tls_connect};
use common::pebble::{Pebble, PebbleConfig};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use portico::acme::Tuning;
use portico::config::Config;
use portico::objects::short_hash;
use portico::store::KubeStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

use tokio::time::Instant;

const HOST: &str = "shared.example.test";
/// The Lease duration (docs/kubernetes.md): what the ACME manager's issuance Leases last unrenewed.
const LEASE: Duration = Duration::from_secs(15);
/// Bound on waiting for something that should happen; never a measure of speed.
const PATIENCE: Duration = Duration::from_secs(60);

fn quick() -> Tuning {
    Tuning {
        backoff: vec![Duration::from_millis(300), Duration::from_secs(1)],
        ..Tuning::default()
    }
}

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// The issuance Lease of a one-host site (docs/kubernetes.md: `portico-acme-<h(sorted names)>`).
fn lease_name(host: &str) -> String {
    format!("portico-acme-{}", short_hash(host))
}

/// The certificate Secret of a one-host site.
fn secret_name(host: &str) -> String {
    format!("portico-tls-{host}-{}", short_hash(host))
}

fn holder_of(lease: &Value) -> &str {
    lease["spec"]["holderIdentity"].as_str().unwrap_or("")
}

/// The leaf (DER) of the chain in a certificate Secret, if it holds one.
fn secret_leaf(secret: &Value) -> Option<Vec<u8>> {
    let pem = base64_decode(secret["data"]["tls.crt"].as_str()?)?;
    let leaf = CertificateDer::pem_slice_iter(&pem).next()?.ok()?;
    Some(leaf.to_vec())
}

/// The shared world: the API server, the CA, and the ports every replica uses.
struct World {
    ns: Namespace,
    /// In front of the API server: every replica reaches it through this.
    api: Front,
    /// Every state of the Leases here.
    leases: Recorder,
    pebble: Pebble,
    /// In front of Pebble, for tests that hold orders in flight.
    front: Option<CaFront>,
    http: u16,
    https: u16,
    /// `http` and `https` held on 127.0.0.1 while the world lives (see [`reserved_port`]).
    _reserved: [tokio::net::TcpSocket; 2],
    dir: tempfile::TempDir,
}

/// A loopback port that stays this world's while it lives: bound on 127.0.0.1 but not
/// listening (a connection there is refused, as where nobody listens), so that neither
/// another world of this test binary nor another process is handed it, while the
/// replicas bind it on 127.0.0.2 and up. A port picked and released at once
/// (`free_port`) could be picked again by a world running beside this one, and its
/// replica-2 then failed to bind (`AddrInUse`, seen once in `.ci/run`).
fn reserved_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

/// portico's log lines (info and up: orders, installs, lease warnings) go to the test's
/// captured output, which the harness prints only for a test that fails: a failure
/// that does not reproduce alone can then be read afterwards. Threads inherit the
/// capture of the test that started them, so each test gets its own replicas' lines.
fn log_to_test_output() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::new("portico=info"))
            .with_ansi(false)
            .try_init();
    });
}

impl World {
    async fn start() -> World {
        World::start_inner(false, None).await
    }

    /// [`World::start`] with the replicas ordering through an [`CaFront`].
    async fn start_with_front() -> World {
        World::start_inner(true, None).await
    }

    /// [`World::start`] with a CA whose certificates live `validity`, and that proves
    /// control of a name anew for every order.
    async fn start_issuing_for(validity: Duration) -> World {
        World::start_inner(false, Some(validity)).await
    }

    async fn start_inner(front: bool, validity: Option<Duration>) -> World {
        install_provider();
        log_to_test_output();
        let test = std::thread::current()
            .name()
            .unwrap_or("replicas")
            .rsplit("::")
            .next()
            .unwrap()
            .to_string();
        let ns = control_plane().namespace(&test);
        let api = Front::start(ns.plane()).await;
        let leases = ns.record("leases");
        // One port pair for every replica address, as pods share the Service's ports.
        let ((http_socket, http), (https_socket, https)) = (reserved_port(), reserved_port());
        let mut config = PebbleConfig::new(http, https);
        if let Some(validity) = validity {
            config = config.with_profile("short", validity);
            // Every renewal validates anew, so whether it succeeds is the test's to say
            // (by where the name resolves), not Pebble's reuse of an earlier proof.
            config
                .env
                .push(("PEBBLE_AUTHZREUSE".to_string(), "0".to_string()));
        }
        let pebble = Pebble::start(config).await;
        let front = match front {
            true => Some(CaFront::start(&pebble).await),
            false => None,
        };
        World {
            ns,
            api,
            leases,
            pebble,
            front,
            http,
            https,
            _reserved: [http_socket, https_socket],
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn front(&self) -> &CaFront {
        self.front.as_ref().expect("a world started with a front")
    }

    /// Writes the config file of the replica on `ip` (the file its reloads read).
    fn write_config(&self, ip: Ipv4Addr, sites: &str) -> PathBuf {
        let directory = match &self.front {
            Some(front) => front.directory_url(),
            None => self.pebble.directory_url(),
        };
        let text = format!(
            "[listen]\nhttp = \"{ip}:{http}\"\nhttps = \"{ip}:{https}\"\nadmin = \"127.0.0.1:0\"\n\
             [storage]\nbackend = \"kubernetes\"\nnamespace = \"{ns}\"\n\
             [acme]\nemail = \"ops@example.test\"\ndirectory = \"{directory}\"\nca_root = \"{root}\"\nchallenge = \"http-01\"\n{sites}",
            http = self.http,
            https = self.https,
            ns = self.ns.name,
            root = self.pebble.ca_root_path().display(),
        );
        let path = self.dir.path().join(format!("portico-{ip}.toml"));
        std::fs::write(&path, &text).unwrap();
        path
    }

    fn config(&self, ip: Ipv4Addr, sites: &str) -> Config {
        Config::load(&self.write_config(ip, sites)).unwrap()
    }

    fn https_of(&self, n: u8) -> SocketAddr {
        SocketAddr::from((ip(n), self.https))
    }

    /// Replica `n` on 127.0.0.`n`, with its own token and pod name.
    async fn replica(&self, n: u8, sites: &str) -> Portico {
        self.replica_with(n, sites, |store| store).await
    }

    /// [`World::replica`] with its store adjusted by `adjust` (a skewed clock, say).
    async fn replica_with(
        &self,
        n: u8,
        sites: &str,
        adjust: impl FnOnce(KubeStore) -> KubeStore,
    ) -> Portico {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = self.kubeconfig(dir.path(), n);
        let store = KubeStore::from_kubeconfig(&kubeconfig, Some(self.ns.name.clone()))
            .await
            .unwrap()
            .with_pod_name(format!("replica-{n}"));
        let store = Arc::new(adjust(store));
        start_with(
            dir,
            self.config(ip(n), sites),
            store.clone(),
            store,
            quick(),
        )
        .await
    }

    /// Replica `n` as a pod runs it: the `portico` binary in a process of its own, with
    /// credentials from a kubeconfig and its pod name from `POD_NAME`.
    fn spawn(&self, n: u8, sites: &str) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = self.kubeconfig(dir.path(), n);
        let config = self.write_config(ip(n), sites);
        let log = dir.path().join("portico.log");
        let child = common::portico()
            .arg("run")
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAME", format!("replica-{n}"))
            // A test run inside a pod must not make the child pick the pod's own
            // service account over the test's kubeconfig.
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Process {
            n,
            child,
            log,
            _dir: dir,
        }
    }

    /// Replica `n`'s kubeconfig (its own identity), through the front.
    fn kubeconfig(&self, dir: &std::path::Path, n: u8) -> PathBuf {
        self.ns
            .kubeconfig_via(dir, &format!("replica-{n}"), &self.api.url())
    }

    /// The newest state of the issuance Lease of `host`, as the watch saw it.
    fn lease(&self, host: &str) -> Option<Value> {
        self.lease_states(host).pop()
    }

    /// The issuance Lease's holder identity ("" when free or absent).
    fn holder(&self, host: &str) -> String {
        self.lease(host)
            .map(|l| holder_of(&l).to_string())
            .unwrap_or_default()
    }

    /// The issuance Lease's holder identity, once someone holds it.
    fn lease_holder(&self) -> Option<String> {
        Some(self.holder(HOST)).filter(|h| !h.is_empty())
    }

    /// Every state the issuance Lease of `host` went through, oldest first.
    fn lease_states(&self, host: &str) -> Vec<Value> {
        let name = lease_name(host);
        self.leases
            .states()
            .into_iter()
            .filter(|l| l["metadata"]["name"] == name.as_str())
            .collect()
    }

    fn certificate_secret(&self, host: &str) -> Option<Value> {
        self.ns.get("secrets", &secret_name(host))
    }
}

/// A replica running as its own process; killed when dropped.
struct Process {
    n: u8,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// SIGKILL: no release of the Lease, no cleanup of any kind.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("--- replica-{} ---\n{text}", self.n)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn logs(processes: &[Process]) -> String {
    processes.iter().map(Process::log).collect()
}

fn site(body: &str) -> String {
    site_for(HOST, body)
}

fn site_for(host: &str, body: &str) -> String {
    format!(
        "[[site]]\nhosts = [\"{host}\"]\ntls = \"acme\"\n[[site.route]]\npath = \"/\"\nrespond = {{ status = 200, body = \"{body}\" }}\n"
    )
}

/// What each replica last heard from the CA or the store about `host`, for a failure.
fn last_errors(replicas: &[Portico], host: &str) -> String {
    replicas
        .iter()
        .map(|p| format!("{:?}", p.certs.acme_last_error(host)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The leaf `addr` serves for `host`, once it serves one that verifies against `roots`;
/// panics with `context()` if none does within [`PATIENCE`].
async fn served_leaf_at(
    addr: SocketAddr,
    host: &str,
    roots: &[u8],
    context: impl Fn() -> String,
) -> Vec<u8> {
    let config = client_config(&[roots], &[b"h2"]);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let connect = tls_connect(addr, host, config.clone());
        if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), connect).await {
            return edge::leaf(&tls);
        }
        assert!(
            Instant::now() < deadline,
            "{addr} serves no certificate for {host}: {}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leaf `p` serves for `HOST`, once it serves one that verifies against `roots`.
async fn served_leaf(p: &Portico, roots: &[u8]) -> Vec<u8> {
    served_leaf_at(p.https, HOST, roots, || {
        format!("last error: {:?}", p.certs.acme_last_error(HOST))
    })
    .await
}

/// Waits until `probe` gives something, looking every `every`; panics with `what` and
/// `context()` after [`PATIENCE`].
async fn eventually<T>(
    what: &str,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}\n{}", context());
        tokio::time::sleep(every).await;
    }
}

/// A Lease's MicroTime as a point in time.
fn micro_time(value: &Value) -> SystemTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a MicroTime: {value}"));
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text}: {e}"));
    SystemTime::from(at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_orders_all_serve_and_restarts_order_nothing() {
    let world = World::start_with_front().await;
    // Two replicas race for the Lease; the CA is sent to the third, which starts once
    // the Lease is taken and so cannot hold it. The holder's order waits at the CA's
    // front until that third replica listens.
    world.front().hold_new_orders(true);
    world.pebble.set_a(HOST, Ipv4Addr::new(127, 0, 0, 2)).await;
    let b = world.replica(3, &site("b")).await;
    let c = world.replica(4, &site("c")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let holder = loop {
        if let Some(holder) = world.lease_holder() {
            break holder;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody took the Lease"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let a = world.replica(2, &site("a")).await;
    assert!(!holder.starts_with("replica-2-"), "{holder}");
    world.front().hold_new_orders(false);

    let roots = world.pebble.issuing_roots().await;
    let leaf = served_leaf(&a, &roots).await;
    for p in [&b, &c] {
        assert_eq!(
            served_leaf(p, &roots).await,
            leaf,
            "{} serves another",
            p.https
        );
    }
    let mut send = edge::h2(a.https, HOST, &roots).await;
    assert_eq!(edge::get_h2(&mut send, HOST, "/").await, (200, "a".into()));
    assert_eq!(world.pebble.orders(), 1, "exactly one order");

    // The documented objects: the certificate Secret, no token left behind.
    let secrets = world.ns.list("secrets");
    let names: Vec<&str> = secrets
        .iter()
        .filter_map(|s| s["metadata"]["name"].as_str())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("portico-tls-shared.example.test-")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("portico-acme-account-")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("portico-http01-")),
        "{names:?}"
    );

    // All three restarted: served from the Secret, no new order.
    for p in [a, b, c] {
        p.stop().await;
    }
    let mut again = Vec::new();
    for n in [2, 3, 4] {
        again.push(world.replica(n, &site("x")).await);
    }
    for p in &again {
        assert_eq!(served_leaf(p, &roots).await, leaf);
    }
    assert_eq!(world.pebble.orders(), 1, "a restart orders nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_mid_issuance_is_replaced_after_its_lease_expires() {
    let world = World::start_with_front().await;
    // Orders wait at the CA's front until the holder is dead, so the kill is never too
    // late: the holder cannot finish first, whatever the scheduling (the guard below
    // would say so if it ever did).
    world.front().hold_new_orders(true);
    world.pebble.set_a(HOST, ip(2)).await;
    let mut replicas: Vec<Process> = [2, 3, 4]
        .into_iter()
        .map(|n| world.spawn(n, &site(&format!("p{n}"))))
        .collect();

    // Kill the holder the moment the issuance Lease names it.
    let deadline = Instant::now() + PATIENCE;
    let dead = loop {
        let holder = world.holder(HOST);
        if !holder.is_empty() {
            break holder;
        }
        for p in &mut replicas {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("replica-{} exited: {status}\n{}", p.n, p.log());
            }
        }
        assert!(
            Instant::now() < deadline,
            "nobody took the Lease\n{}",
            logs(&replicas)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let victim = replicas
        .iter()
        .position(|p| dead.starts_with(&format!("replica-{}-", p.n)))
        .unwrap_or_else(|| panic!("holder {dead:?} is none of the replicas"));
    let mut killed = replicas.remove(victim);
    killed.kill();
    let survivors = replicas;
    assert!(
        world
            .certificate_secret(HOST)
            .and_then(|s| secret_leaf(&s))
            .is_none(),
        "the holder stored a certificate before it was killed: the scenario did not happen\n{}",
        killed.log()
    );

    // The CA validates through a survivor (any replica answers from the store).
    world.pebble.set_a(HOST, ip(survivors[0].n)).await;
    assert_eq!(world.pebble.query_a(HOST).await, vec![ip(survivors[0].n)]);
    world.front().hold_new_orders(false);

    // Nobody may take over before the dead holder's record has sat unchanged for a
    // lease duration (client-go's rule, docs/kubernetes.md); then a survivor must.
    let takeover = eventually(
        "no survivor took the Lease over",
        Duration::from_millis(20),
        || {
            world
                .lease_states(HOST)
                .into_iter()
                .find(|l| !holder_of(l).is_empty() && holder_of(l) != dead)
        },
        || logs(&survivors),
    )
    .await;
    let next = holder_of(&takeover);
    assert!(
        survivors
            .iter()
            .any(|p| next.starts_with(&format!("replica-{}-", p.n))),
        "{next}"
    );
    assert!(
        takeover["spec"]["leaseTransitions"].as_i64() >= Some(1),
        "{takeover}"
    );
    // A lower bound, not a measure of speed: one clock (this machine's) wrote both
    // times, and a survivor may only take over a lease duration after it first saw the
    // dead holder's last record, which is after that record was written.
    let last_of_dead = world
        .lease_states(HOST)
        .into_iter()
        .rfind(|l| holder_of(l) == dead)
        .expect("the dead holder's record");
    let written = micro_time(&last_of_dead["spec"]["renewTime"]);
    let taken = micro_time(&takeover["spec"]["acquireTime"]);
    assert!(
        taken >= written + LEASE,
        "taken over at {taken:?}, the dead holder's record was written at {written:?}"
    );

    let roots = world.pebble.issuing_roots().await;
    let mut leaves = Vec::new();
    for p in &survivors {
        leaves.push(served_leaf_at(world.https_of(p.n), HOST, &roots, || logs(&survivors)).await);
    }
    assert_eq!(
        leaves[0], leaves[1],
        "the survivors serve different certificates"
    );
    let stored = world
        .certificate_secret(HOST)
        .as_ref()
        .and_then(secret_leaf);
    assert_eq!(
        stored.as_ref(),
        Some(&leaves[0]),
        "the Secret holds another"
    );
    // The dead holder may have got an order in before it died; nobody else ordered twice.
    let orders = world.pebble.orders();
    assert!((1..=2).contains(&orders), "{orders} orders");
}

/// What one replica answered while it was asked without pause.
#[derive(Default)]
struct Answers {
    ok: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Answers {
    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }
}

/// Asks `p` until `stop`: `GET /` for `host` on a new TLS connection each time (so every
/// request needs a handshake, and so the resolver), expecting 200 and `body`, then the
/// admin listener's `/readyz`, expecting 200.
fn keep_asking(
    p: &Portico,
    host: &str,
    body: &str,
    roots: &[u8],
    stop: Arc<AtomicBool>,
) -> (Arc<Answers>, tokio::task::JoinHandle<()>) {
    let answers = Arc::new(Answers::default());
    let (https, admin) = (p.https, p.admin);
    let config = client_config(&[roots], &[b"http/1.1"]);
    let (host, body) = (host.to_string(), body.to_string());
    let recording = answers.clone();
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            let ask = async {
                let got = get_over_tls(https, &host, config.clone()).await?;
                if got != (200, body.clone()) {
                    return Err(format!("{https}: {got:?}"));
                }
                match get_plain(admin, "/readyz").await? {
                    200 => Ok(()),
                    status => Err(format!("{admin}/readyz: {status}")),
                }
            };
            let result = tokio::time::timeout(Duration::from_secs(10), ask)
                .await
                .unwrap_or_else(|_| Err(format!("{https}: no answer within 10 s")));
            match result {
                Ok(()) => _ = recording.ok.fetch_add(1, Ordering::SeqCst),
                Err(e) => recording.failures.lock().unwrap().push(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (answers, task)
}

/// `GET /` for `host` over a new TLS connection (HTTP/1.1): status and body.
async fn get_over_tls(
    addr: SocketAddr,
    host: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<(u16, String), String> {
    let fail = |e: &dyn std::fmt::Display| format!("{addr} {host}: {e}");
    let tls = tls_connect(addr, host, config)
        .await
        .map_err(|e| fail(&e))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| fail(&e))?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/")
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| fail(&e))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(&e))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The status of a plain HTTP/1.1 `GET path` to `addr`.
async fn get_plain(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{addr}{path}: {e}");
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| fail(&e))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| fail(&e))?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| fail(&e))?;
    Ok(resp.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_seconds_without_the_api_server_cost_no_request_and_delay_a_new_site_only() {
    const NEW: &str = "added.example.test";
    const OUTAGE: Duration = Duration::from_secs(30);
    let world = World::start().await;
    world.pebble.set_a(HOST, ip(2)).await;
    world.pebble.set_a(NEW, ip(3)).await;
    let ns = [2u8, 3, 4];
    let mut replicas = Vec::new();
    for n in ns {
        replicas.push(world.replica(n, &site(&format!("r{n}"))).await);
    }
    let roots = world.pebble.issuing_roots().await;
    let leaf = served_leaf(&replicas[0], &roots).await;
    for p in &replicas[1..] {
        assert_eq!(served_leaf(p, &roots).await, leaf);
    }
    assert_eq!(world.pebble.orders(), 1);

    let stop = Arc::new(AtomicBool::new(false));
    let asking: Vec<_> = replicas
        .iter()
        .zip(ns)
        .map(|(p, n)| keep_asking(p, HOST, &format!("r{n}"), &roots, stop.clone()))
        .collect();
    let answered = || asking.iter().map(|(a, _)| a.ok()).collect::<Vec<_>>();

    world.api.set_down(true);
    let down_at = Instant::now();
    let before = answered();
    // A site added while the API server is away: the reload applies at once, the
    // issuance (which needs the lock) waits for the API.
    for (p, n) in replicas.iter().zip(ns) {
        let sites = format!(
            "{}{}",
            site(&format!("r{n}")),
            site_for(NEW, &format!("new{n}"))
        );
        world.write_config(ip(n), &sites);
        p.reloader.reload_now().await.unwrap();
    }
    for p in &replicas {
        eventually(
            "the new site's issuance never met the missing API server",
            Duration::from_millis(100),
            || p.certs.acme_last_error(NEW),
            String::new,
        )
        .await;
    }
    tokio::time::sleep_until(down_at + OUTAGE).await;
    assert_eq!(world.pebble.orders(), 1, "ordered without the lock");
    let during = answered();
    world.api.set_down(false);
    // Each replica follows the certificate Secrets again (how it learns of what others
    // issue), not only its own orders.
    for n in ns {
        let token = world.ns.token(&format!("replica-{n}"));
        eventually(
            "a replica never watched the Secrets again",
            Duration::from_millis(100),
            || (world.api.open_watches(Some(token)) > 0).then_some(()),
            || format!("replica-{n}"),
        )
        .await;
    }

    let mut new_leaves = Vec::new();
    for (p, n) in replicas.iter().zip(ns) {
        let context = || format!("last error: {:?}", p.certs.acme_last_error(NEW));
        new_leaves.push(served_leaf_at(p.https, NEW, &roots, context).await);
        let config = client_config(&[&roots], &[b"http/1.1"]);
        assert_eq!(
            get_over_tls(p.https, NEW, config).await,
            Ok((200, format!("new{n}")))
        );
    }
    // What each replica last heard from the CA or the store, for a failure here.
    let errors = || last_errors(&replicas, NEW);
    assert!(
        new_leaves.iter().all(|l| *l == new_leaves[0]),
        "the replicas serve different certificates for {NEW} ({} orders; last errors: {})",
        world.pebble.orders(),
        errors()
    );

    stop.store(true, Ordering::SeqCst);
    for (i, ((answers, task), n)) in asking.into_iter().zip(ns).enumerate() {
        task.await.unwrap();
        assert_eq!(answers.failures(), Vec::<String>::new(), "replica-{n}");
        assert!(
            during[i] > before[i],
            "replica-{n} was not asked during the outage"
        );
    }
    assert_eq!(
        world.pebble.orders(),
        2,
        "exactly one new order; last errors: {}",
        errors()
    );
    // The first site still has its one certificate.
    assert_eq!(served_leaf(&replicas[1], &roots).await, leaf);
}

/// The store refuses the new certificate's Secret for a while after the CA issued it (an
/// admission webhook, an etcd out of space): the replica that ordered serves it from
/// memory, keeps the Lease and writes it once the store takes it; the other replica
/// orders nothing meanwhile and serves the same certificate once it is stored. Given up
/// at the first refusal, the Lease went free with nothing stored, and the next holder
/// ordered the same certificate again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_the_store_refuses_for_a_while_is_stored_later_not_ordered_again() {
    let world = World::start().await;
    world.pebble.set_a(HOST, ip(3)).await;
    // Certificate Secrets are the only ones of this type: the HTTP-01 tokens, the account
    // and the Leases still get through.
    world
        .api
        .fail_writes_containing(Some(("kubernetes.io/tls", 503)));
    let replicas = [
        world.replica(2, &site("a")).await,
        world.replica(3, &site("b")).await,
    ];
    let errors = || last_errors(&replicas, HOST);
    eventually(
        "the certificate Secret was not refused four times",
        Duration::from_millis(50),
        || (world.api.failed_writes_containing() >= 4).then_some(()),
        || {
            format!(
                "{} refused; last errors: {}",
                world.api.failed_writes_containing(),
                errors()
            )
        },
    )
    .await;
    assert_eq!(
        world.pebble.orders(),
        1,
        "ordered again while the certificate waited for the store; last errors: {}",
        errors()
    );
    assert!(world.certificate_secret(HOST).is_none());
    let holder = world
        .lease_holder()
        .expect("the Lease is kept while the write waits");
    let ordering = replicas
        .iter()
        .find(|p| p.certs.acme_last_error(HOST).is_some())
        .expect("the replica that ordered says why its certificate is not stored");
    assert!(
        ordering
            .certs
            .acme_last_error(HOST)
            .is_some_and(|e| e.contains("storing the new certificate") && e.contains("503")),
        "{}",
        errors()
    );
    let roots = world.pebble.issuing_roots().await;
    let served = served_leaf(ordering, &roots).await;

    world.api.fail_writes_containing(None);
    let stored = eventually(
        "the certificate was never stored once the store took it",
        Duration::from_millis(100),
        || world.certificate_secret(HOST).and_then(|s| secret_leaf(&s)),
        errors,
    )
    .await;
    assert_eq!(
        stored, served,
        "the stored certificate is the one served meanwhile"
    );
    for p in &replicas {
        assert_eq!(served_leaf(p, &roots).await, stored);
        eventually(
            "the last error outlived the write",
            Duration::from_millis(100),
            || p.certs.acme_last_error(HOST).is_none().then_some(()),
            errors,
        )
        .await;
    }
    assert_eq!(
        world.pebble.orders(),
        1,
        "exactly one order; holder was {holder}"
    );
}

/// A store that never takes the certificate (no RBAC for Secrets, say) does not keep
/// the replica writing it forever: once the certificate it serves from memory is due
/// for renewal, the write is given up and the site renewed, so it never expires
/// waiting for the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_never_takes_the_certificate_does_not_hold_up_its_renewal() {
    // Due when a third is left: 20 seconds after issuance.
    let world = World::start_issuing_for(Duration::from_secs(30)).await;
    world.pebble.set_a(HOST, ip(2)).await;
    world
        .api
        .fail_writes_containing(Some(("kubernetes.io/tls", 403)));
    let p = world.replica(2, &site("a")).await;
    let roots = world.pebble.issuing_roots().await;
    let first = served_leaf(&p, &roots).await;
    let context = || {
        format!(
            "{} orders, {} refused writes; last error: {:?}",
            world.pebble.orders(),
            world.api.failed_writes_containing(),
            p.certs.acme_last_error(HOST)
        )
    };
    eventually(
        "the certificate was never renewed while the store refused it",
        Duration::from_millis(200),
        || (world.pebble.orders() >= 2).then_some(()),
        context,
    )
    .await;
    // Ordered is not yet issued: wait for the new certificate itself.
    let deadline = Instant::now() + PATIENCE;
    while served_leaf(&p, &roots).await == first {
        assert!(
            Instant::now() < deadline,
            "never served the renewed certificate: {}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(world.certificate_secret(HOST).is_none());
    assert!(
        p.certs
            .acme_last_error(HOST)
            .is_some_and(|e| e.contains("403")),
        "{}",
        context()
    );
}

/// Certificates the store refuses keep retrying their writes, but not the order slots
/// they were ordered in: with as many sites waiting for the store as a replica orders
/// at once (four), a site added after them is still ordered, served and stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_waiting_for_the_store_do_not_hold_up_other_orders() {
    let world = World::start().await;
    // As many as `CONCURRENT_ORDERS` (src/acme/manager.rs).
    const WAITING: [&str; 4] = [
        "waiting-1.example.test",
        "waiting-2.example.test",
        "waiting-3.example.test",
        "waiting-4.example.test",
    ];
    for host in WAITING.into_iter().chain([HOST]) {
        world.pebble.set_a(host, ip(2)).await;
    }
    // Only their certificate Secrets name them as their common name.
    world
        .api
        .fail_writes_containing(Some((r#"common-name":"waiting-"#, 503)));
    let waiting: String = WAITING.iter().map(|h| site_for(h, "waiting")).collect();
    let p = world.replica(2, &waiting).await;
    let context = || {
        format!(
            "{} orders, {} refused writes; last errors: {}; {}",
            world.pebble.orders(),
            world.api.failed_writes_containing(),
            last_errors(std::slice::from_ref(&p), HOST),
            WAITING
                .iter()
                .map(|h| format!("{h}: {:?}", p.certs.acme_last_error(h)))
                .collect::<Vec<_>>()
                .join("; ")
        )
    };
    eventually(
        "the four certificates were not all issued and waiting for the store",
        Duration::from_millis(200),
        || {
            WAITING
                .iter()
                .all(|h| {
                    p.certs
                        .acme_last_error(h)
                        .is_some_and(|e| e.contains("storing the new certificate"))
                })
                .then_some(())
        },
        context,
    )
    .await;

    world.write_config(ip(2), &format!("{waiting}{}", site("new")));
    p.reloader.reload_now().await.unwrap();
    eventually(
        "the new site's certificate was never stored while four others waited for the store",
        Duration::from_millis(200),
        || world.certificate_secret(HOST),
        context,
    )
    .await;
    let roots = world.pebble.issuing_roots().await;
    assert_eq!(
        secret_leaf(&world.certificate_secret(HOST).unwrap()),
        Some(served_leaf(&p, &roots).await),
        "the new site serves what it stored"
    );
    for host in WAITING {
        assert!(
            world.certificate_secret(host).is_none(),
            "{host}: {}",
            context()
        );
    }
    assert_eq!(world.pebble.orders(), 5, "{}", context());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_clocks_hours_off_never_become_a_second_holder() {
    let world = World::start_with_front().await;
    // The holder's order waits at the CA's front for as long as the scenario needs.
    world.front().hold_new_orders(true);
    world.pebble.set_a(HOST, ip(3)).await;
    let a = world.replica(2, &site("a")).await;
    let holder = eventually(
        "replica-2 took no Lease",
        Duration::from_millis(5),
        || world.lease_holder(),
        String::new,
    )
    .await;
    assert!(holder.starts_with("replica-2-"), "{holder}");
    world
        .front()
        .wait_for(
            "the holder's new order",
            |front| !front.new_orders.is_empty(),
            || format!("last error: {:?}", a.certs.acme_last_error(HOST)),
        )
        .await;

    // What they write into a Lease would say "three hours from now" and "three hours
    // ago"; a replica that judged expiry by `renewTime` against its own clock would take
    // the Lease at its first look.
    let hours = Duration::from_secs(3 * 3600);
    let ahead: Arc<dyn Fn() -> SystemTime + Send + Sync> =
        Arc::new(move || SystemTime::now() + hours);
    let behind: Arc<dyn Fn() -> SystemTime + Send + Sync> =
        Arc::new(move || SystemTime::now() - hours);
    let b = world
        .replica_with(3, &site("b"), |store| store.with_clock(ahead))
        .await;
    let c = world
        .replica_with(4, &site("c"), |store| store.with_clock(behind))
        .await;

    // client-go's rule (docs/kubernetes.md) forbids any takeover within a lease duration of a replica's first
    // look, whatever the clocks, so only looks after that prove anything: the order is
    // held until each skewed replica has looked at the Lease again a lease duration
    // after its first look. Until then the Lease must stay the first holder's.
    // A look is a GET of the Lease, as the API server's audit log records it.
    let lease = lease_name(HOST);
    let looks = |who: &str| {
        world
            .ns
            .audit(Some(who))
            .iter()
            .filter(|a| {
                a.stage == "ResponseComplete"
                    && a.verb == "get"
                    && a.resource == "leases"
                    && a.name == lease
            })
            .count()
    };
    let skewed = ["replica-3", "replica-4"];
    // Per skewed replica: when its first look was seen, and its count of looks a lease
    // duration later.
    let mut first_seen: [Option<Instant>; 2] = [None; 2];
    let mut counted: [Option<usize>; 2] = [None; 2];
    let deadline = Instant::now() + LEASE + PATIENCE;
    loop {
        assert_eq!(
            world.holder(HOST),
            holder,
            "the Lease changed hands while its holder's order was in flight\n{:#?}",
            world.lease_states(HOST)
        );
        let mut done = 0;
        for i in 0..2 {
            let n = looks(skewed[i]);
            if n == 0 {
                continue;
            }
            let first = *first_seen[i].get_or_insert_with(Instant::now);
            if first.elapsed() > LEASE {
                let at_expiry = *counted[i].get_or_insert(n);
                if n > at_expiry {
                    done += 1;
                }
            }
        }
        if done == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the skewed replicas stopped looking at the Lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    world.front().hold_new_orders(false);

    let roots = world.pebble.issuing_roots().await;
    let leaf = served_leaf(&a, &roots).await;
    for p in [&b, &c] {
        assert_eq!(
            served_leaf(p, &roots).await,
            leaf,
            "{} serves another",
            p.https
        );
    }
    assert_eq!(world.pebble.orders(), 1, "exactly one order");
    // Over the whole run: the Lease went to another holder only after a release.
    let states = world.lease_states(HOST);
    for pair in states.windows(2) {
        let (before, after) = (holder_of(&pair[0]), holder_of(&pair[1]));
        assert!(
            after == before || after.is_empty() || before.is_empty(),
            "{before:?} → {after:?} without a release\n{states:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_write_on_a_stale_resource_version_is_retried_not_forced() {
    let world = World::start_with_front().await;
    // No order before every replica listens: the CA validates through the last one.
    world.front().hold_new_orders(true);
    world.pebble.set_a(HOST, ip(4)).await;
    let secret = secret_name(HOST);
    // The Secret exists before the order, as an earlier failed attempt leaves it, so the
    // holder's certificate write is an update that names the version it read.
    world.ns.create(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret,
            "labels": {
                "app.kubernetes.io/managed-by": "portico",
                "portico.dev/kind": "certificate",
            },
            "annotations": {"portico.dev/last-error": "an earlier attempt failed"},
        },
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": "", "tls.key": ""},
    }));
    // The holder's certificate write (a PUT naming the version it read) waits at the
    // front to the API server...
    let path = format!("/api/v1/namespaces/{}/secrets/{secret}", world.ns.name);
    world.api.hold_next_update(&path);
    let conflicts = world.ns.conflicts();
    let mut replicas = Vec::new();
    for n in [2, 3, 4] {
        replicas.push(world.replica(n, &site(&format!("r{n}"))).await);
    }
    world.front().hold_new_orders(false);
    tokio::time::timeout(PATIENCE, world.api.update_held())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no certificate write: {:?}",
                replicas[0].certs.acme_last_error(HOST)
            )
        });
    // ...while another writer (ops, a GitOps tool) annotates the Secret.
    world.ns.patch(
        "secrets",
        &secret,
        json!({"metadata": {"annotations": {"example.com/owner": "ops"}}}),
    );
    world.api.release();

    let roots = world.pebble.issuing_roots().await;
    let leaf = served_leaf(&replicas[0], &roots).await;
    for p in &replicas[1..] {
        assert_eq!(
            served_leaf(p, &roots).await,
            leaf,
            "{} serves another",
            p.https
        );
    }
    let stored = eventually(
        "the Secret never got the certificate",
        Duration::from_millis(20),
        || {
            world
                .certificate_secret(HOST)
                .filter(|s| secret_leaf(s).is_some())
        },
        || format!("{:#?}", world.certificate_secret(HOST)),
    )
    .await;
    // The replicas' writes to the Secret, as the API server answered them: the first,
    // on the version read before the other writer's change, met a conflict.
    let writes: Vec<u16> = world
        .ns
        .audit(None)
        .iter()
        .filter(|a| {
            a.stage == "ResponseComplete"
                && a.verb == "update"
                && a.resource == "secrets"
                && a.name == secret
                && a.user.starts_with("replica-")
        })
        .map(|a| a.code)
        .collect();
    assert_eq!(
        writes.first(),
        Some(&409),
        "the write after the other writer's change did not meet a conflict: {writes:?}"
    );
    assert!(world.ns.conflicts() > conflicts);
    assert_eq!(secret_leaf(&stored).as_ref(), Some(&leaf));
    let annotations = &stored["metadata"]["annotations"];
    assert_eq!(annotations["example.com/owner"], "ops", "{stored:#}");
    assert!(
        annotations["portico.dev/not-after"].is_string(),
        "{stored:#}"
    );
    assert!(
        annotations.get("portico.dev/last-error").is_none(),
        "{stored:#}"
    );
    assert_eq!(world.pebble.orders(), 1, "exactly one order");
}

/// An Ingress whose `spec.tls` Secret does not exist, served by two replicas (the
/// binary, each its own identity with the shipped Role and the shipped ClusterRole's
/// rules): the CA (Pebble) validates HTTP-01 against 127.0.0.2, both
/// replicas serve the certificate, and the one that writes status fills the Secret
/// with it, labelled as portico's. Another Ingress's host points where nobody listens:
/// its failed order is a `CertificateFailed` Event on it with the CA's problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_secret_is_filled_over_acme_and_served_by_every_replica() {
    let world = World::start().await;
    let ns = &world.ns;
    world.pebble.set_a(HOST, ip(2)).await;
    ns.grant_ingress_controller(&["replica-2", "replica-3"]);
    app_service(ns).await;
    ingress_to_app(ns, "shared", HOST, Some("shared-tls"));
    // Resolves to Pebble's default answer, 127.0.0.1, where nobody listens.
    const NOWHERE: &str = "nowhere.example.test";
    ingress_to_app(ns, "nowhere", NOWHERE, None);
    let kubernetes = ingress_config(ns);
    let replicas = [world.spawn(2, &kubernetes), world.spawn(3, &kubernetes)];
    filled_and_served_by_both(
        &world,
        &replicas,
        "shared-tls",
        "the Secret spec.tls names is filled",
    )
    .await;

    let failed = certificate_failed(ns, &replicas, "Ingress", "nowhere", NOWHERE).await;
    assert_eq!(failed["type"], "Warning");

    // Stopped as a rolling update stops pods (SIGTERM): the status writer lets its Lease
    // go, so the next replica need not wait out the Lease.
    let status = ns
        .get("leases", "portico-status")
        .expect("the status Lease");
    assert_ne!(status["spec"]["holderIdentity"], "", "{status}");
    for mut p in replicas {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &p.child.id().to_string()])
            .status();
        let exit = p.child.wait().unwrap();
        assert!(exit.success(), "{exit:?}\n{}", p.log());
    }
    let status = ns.get("leases", "portico-status").unwrap();
    assert_eq!(status["spec"]["holderIdentity"], "", "released: {status}");
}

/// An Ingress host whose renewal fails while its first certificate still serves: the
/// `CertificateFailed` Event says that the certificate served stays in use and until
/// when (that certificate's notAfter), not "no certificate yet", and it is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_renewal_is_reported_with_the_certificate_that_stays_in_use() {
    // Due when a third is left: 20 seconds after issuance.
    let world = World::start_issuing_for(Duration::from_secs(30)).await;
    let ns = &world.ns;
    world.pebble.set_a(HOST, ip(2)).await;
    ns.grant_ingress_controller(&["replica-2"]);
    app_service(ns).await;
    ingress_to_app(ns, "renewed", HOST, Some("renewed-tls"));
    let kubernetes = ingress_config(ns);
    let replicas = [world.spawn(2, &kubernetes)];
    let roots = world.pebble.issuing_roots().await;
    let leaf = served_leaf_at(world.https_of(2), HOST, &roots, || logs(&replicas)).await;
    // From now on the CA's validation dials Pebble's default answer, 127.0.0.1, where
    // nobody listens: the renewal fails.
    world.pebble.clear_a(HOST).await;

    let failed = certificate_failed(ns, &replicas, "Ingress", "renewed", HOST).await;
    let message = failed["message"].as_str().unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let not_after = SystemTime::from(cert.validity().not_after.to_datetime());
    let stays = format!(
        "the certificate served stays in use, valid until {}",
        portico::objects::rfc3339(not_after)
    );
    assert!(message.contains(&stays), "{message}\nwanted: {stays}");
    assert!(!message.contains("no certificate yet"), "{message}");
    assert_eq!(
        served_leaf_at(world.https_of(2), HOST, &roots, || logs(&replicas)).await,
        leaf,
        "the first certificate keeps serving"
    );
}

/// A Gateway annotated `portico.dev/acme: "true"` whose HTTPS listener names a Secret
/// that does not exist, served by two replicas with the shipped rights: the CA (Pebble)
/// validates HTTP-01, both replicas serve the one certificate, and the status writer
/// fills the Secret with it, labelled as portico's. A listener whose host nobody
/// answers for gets a `CertificateFailed` Event on the Gateway with the CA's problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_certificate_ref_is_filled_over_acme_and_served_by_every_replica() {
    let world = World::start().await;
    let ns = &world.ns;
    world.pebble.set_a(HOST, ip(2)).await;
    ns.plane().gateway_crds();
    ns.grant_ingress_controller(&["replica-2", "replica-3"]);
    ns.plane().kubectl(
        &["apply", "-f", "-"],
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": ns.gateway_class()},
            "spec": {"controllerName": "portico.dev/gateway-controller"}})
        .to_string()
        .as_bytes(),
    );
    app_service(ns).await;
    // Resolves to Pebble's default answer, 127.0.0.1, where nobody listens.
    const NOWHERE: &str = "nowhere.example.test";
    ns.create(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "public", "annotations": {"portico.dev/acme": "true"}},
        "spec": {"gatewayClassName": ns.gateway_class(), "listeners": [
            {"name": "shared", "port": 443, "protocol": "HTTPS", "hostname": HOST,
             "tls": {"certificateRefs": [{"name": "shared-tls"}]}},
            {"name": "nowhere", "port": 443, "protocol": "HTTPS", "hostname": NOWHERE,
             "tls": {"certificateRefs": [{"name": "nowhere-tls"}]}},
        ]}}),
    );
    ns.create(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "app"},
        "spec": {"parentRefs": [{"name": "public"}],
            "rules": [{"backendRefs": [{"name": "app", "port": 80}]}]}}),
    );
    let kubernetes = format!(
        "[kubernetes]\ngateway_class = \"{}\"\nnamespaces = [\"{}\"]\n",
        ns.gateway_class(),
        ns.name
    );
    let replicas = [world.spawn(2, &kubernetes), world.spawn(3, &kubernetes)];
    filled_and_served_by_both(
        &world,
        &replicas,
        "shared-tls",
        "the Secret the listener names is filled",
    )
    .await;

    certificate_failed(ns, &replicas, "Gateway", "public", NOWHERE).await;
    let gateway = eventually(
        "the listener's status",
        Duration::from_millis(100),
        || {
            ns.get("gateways", "public").filter(|g| {
                g["status"]["listeners"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|l| l["attachedRoutes"] == 1))
            })
        },
        || logs(&replicas),
    )
    .await;
    assert_eq!(gateway["status"]["listeners"][0]["name"], "shared");
}

/// An Ingress of the test's class routing `host` to Service `app`, with a `spec.tls`
/// naming `secret` when there is one.
fn ingress_to_app(ns: &Namespace, name: &str, host: &str, secret: Option<&str>) {
    let mut ingress = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name},
        "spec": {"ingressClassName": ns.ingress_class(),
            "rules": [{"host": host, "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "app", "port": {"number": 80}}}}]}}]}});
    if let Some(secret) = secret {
        ingress["spec"]["tls"] = json!([{"hosts": [host], "secretName": secret}]);
    }
    ns.create(ingress);
}

/// The `[kubernetes]` table serving the test's IngressClass in its namespace.
fn ingress_config(ns: &Namespace) -> String {
    format!(
        "[kubernetes]\ningress_class = \"{}\"\nnamespaces = [\"{}\"]\n",
        ns.ingress_class(),
        ns.name
    )
}

/// Service `app` on port 80, its one ready endpoint a new echo backend of that name on
/// this machine's address (the API server refuses loopback endpoints).
async fn app_service(ns: &Namespace) {
    let upstream = common::backend_at(common::host_ip(), "app", common::Proto::Http1)
        .await
        .0;
    ns.create(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app"},
        "spec": {"ports": [{"port": 80}]}}),
    );
    ns.create(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "app-1", "labels": {"kubernetes.io/service-name": "app"}},
        "addressType": "IPv4", "ports": [{"name": "", "port": upstream.port()}],
        "endpoints": [{"addresses": [upstream.ip().to_string()]}]}),
    );
}

/// Replicas 2 and 3 serve one certificate from the CA for `HOST`, routed to `app`, and
/// the status writer writes it into Secret `secret`, labelled as portico's.
async fn filled_and_served_by_both(world: &World, replicas: &[Process], secret: &str, what: &str) {
    let ns = &world.ns;
    let roots = world.pebble.issuing_roots().await;
    let leaf = served_leaf_at(world.https_of(2), HOST, &roots, || logs(replicas)).await;
    assert_eq!(
        served_leaf_at(world.https_of(3), HOST, &roots, || logs(replicas)).await,
        leaf,
        "both replicas serve the one certificate"
    );
    let mut send = edge::h2(world.https_of(3), HOST, &roots).await;
    let (status, body) = edge::get_h2(&mut send, HOST, "/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("backend: app"), "{body}");
    let filled = eventually(
        what,
        Duration::from_millis(100),
        || ns.get("secrets", secret),
        || logs(replicas),
    )
    .await;
    assert_eq!(filled["type"], "kubernetes.io/tls");
    assert_eq!(
        filled["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "portico"
    );
    assert_eq!(secret_leaf(&filled), Some(leaf));
}

/// The Warning Event `CertificateFailed` on the `kind` named `name`, for `host`, with
/// the CA's problem.
async fn certificate_failed(
    ns: &Namespace,
    replicas: &[Process],
    kind: &str,
    name: &str,
    host: &str,
) -> Value {
    let failed = eventually(
        &format!("a CertificateFailed Event on {kind} {name}"),
        Duration::from_millis(100),
        || {
            ns.list("events").into_iter().find(|e| {
                e["involvedObject"]["kind"] == kind
                    && e["involvedObject"]["name"] == name
                    && e["reason"] == "CertificateFailed"
            })
        },
        || logs(replicas),
    )
    .await;
    let message = failed["message"].as_str().unwrap();
    assert!(message.contains(host), "{message}");
    assert!(
        message.contains("urn:ietf:params:acme:error:"),
        "the CA's problem: {message}"
    );
    failed
}
