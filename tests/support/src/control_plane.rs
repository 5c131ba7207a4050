//! A real Kubernetes control plane: etcd and kube-apiserver as `scripts/peers` builds
//! them, started once per test binary on ports the OS picked (bound to :0 and let go; a
//! start that loses a port to another program is tried again), with RBAC on, a CA made
//! here, and static tokens: `admin` (system:masters) sets things up, and each replica
//! signs in as a user of its own that is bound to nothing but the Role the manifests
//! ship (`config/kubernetes/role.yaml`), in the namespace of its test. Every test takes
//! a fresh [`Namespace`]; kube-rs (and the `portico` binary) reach the server through a
//! kubeconfig file written here, exactly as in a cluster.
//!
//! What the tests observe, they observe on the real server: objects through `kubectl`
//! as the admin, every request a replica made through the API server's audit log (user,
//! verb, object, response code), every state an object went through through a watch.
//! Faults are made around it by [`Front`](super::api_front::Front), never by imitating it.
//!
//! The server runs without its watch cache, so a watch resumed from a compacted revision
//! meets 410 Gone at once (etcd's compaction, [`ControlPlane::compact`]); with the cache,
//! the same happens only once the cache's window has moved on.
//!
//! The processes die with the test binary: each runs under a small `sh` watchdog that
//! reads a pipe this process holds open and never writes; when the test process ends,
//! however it ends, the pipe closes, and the watchdog kills its server and removes the
//! server's folder.

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::base64_encode;
use super::peer;

/// Replica identities per namespace (users `replica-0` ...).
const REPLICA_USERS: usize = 16;
/// A failure guard for start-up: the API server turns ready in seconds here.
const START_DEADLINE: Duration = Duration::from_secs(180);

pub struct ControlPlane {
    url: String,
    etcd_port: u16,
    ca_pem: String,
    /// The API server's serving certificate and key: fronts serve the same one.
    serving: (String, String),
    dir: PathBuf,
    admin_kubeconfig: PathBuf,
    tokens: Vec<String>,
    audit_log: PathBuf,
    namespaces: AtomicUsize,
    /// Held open, never written: the watchdogs' pipes.
    _watchdogs: Mutex<Vec<ChildStdin>>,
}

/// The control plane of this test binary, started at the first call.
pub fn control_plane() -> &'static ControlPlane {
    static PLANE: OnceLock<ControlPlane> = OnceLock::new();
    PLANE.get_or_init(|| {
        // A port the OS gave may be taken again before the server binds it: start over.
        let mut last = String::new();
        for _ in 0..3 {
            match ControlPlane::start() {
                Ok(plane) => return plane,
                Err(e) => last = e,
            }
        }
        panic!("the control plane did not start: {last}")
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts `program args` under a watchdog that kills it, and removes `dir`, when this
/// process ends; its output goes to `log`.
fn supervised(program: &Path, args: &[String], log: &Path, dir: &Path) -> (Child, ChildStdin) {
    let log = std::fs::File::create(log).unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        // Background jobs of a non-interactive shell read /dev/null, not the pipe.
        .arg(r#"trap "" INT; dir=$1; shift; "$@" & pid=$!; read -r _; kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir""#)
        .arg("watchdog")
        .arg(dir)
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("sh: {e}"));
    let pipe = child.stdin.take().unwrap();
    (child, pipe)
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The status line and body of a plain `GET path` to 127.0.0.1:`port`.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// A plain `POST path` of a JSON body to etcd's gRPC gateway: the answer's JSON.
fn etcd_post(port: u16, path: &str, body: &Value) -> Value {
    let body = body.to_string();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, json) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

/// A CA and a serving certificate for 127.0.0.1 and localhost: (CA, cert, key) PEM.
fn make_certificates() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "portico tests: Kubernetes CA");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(30);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kube-apiserver");
    leaf.distinguished_name = dn;
    leaf.subject_alt_names = vec![
        SanType::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        SanType::DnsName("localhost".try_into().unwrap()),
        SanType::DnsName("kubernetes.default.svc".try_into().unwrap()),
    ];
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = now - time::Duration::hours(1);
    leaf.not_after = now + time::Duration::days(30);
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// A JSON string is a YAML double-quoted scalar.
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

impl ControlPlane {
    fn start() -> Result<ControlPlane, String> {
        let dir = tempfile::Builder::new()
            .prefix("portico-control-plane-")
            .tempdir()
            .unwrap()
            .keep();
        let (ca_pem, cert_pem, key_pem) = make_certificates();
        std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
        std::fs::write(dir.join("apiserver.pem"), &cert_pem).unwrap();
        std::fs::write(dir.join("apiserver.key"), &key_pem).unwrap();
        // The service-account token signing key (ES256).
        let sa = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.join("sa.key"), sa.serialize_pem()).unwrap();
        std::fs::write(dir.join("sa.pub"), sa.public_key_pem()).unwrap();

        let tokens: Vec<String> = (0..=REPLICA_USERS).map(|_| random_hex(16)).collect();
        let mut csv = format!("{},admin,admin,\"system:masters\"\n", tokens[0]);
        for (i, token) in tokens[1..].iter().enumerate() {
            csv += &format!("{token},replica-{i},replica-{i}\n");
        }
        std::fs::write(dir.join("tokens.csv"), csv).unwrap();
        std::fs::write(
            dir.join("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [\"RequestReceived\"]\nrules:\n- level: Metadata\n",
        )
        .unwrap();

        let mut watchdogs = Vec::new();
        let (etcd_port, peer_port) = (free_port(), free_port());
        let etcd_log = dir.join("etcd.log");
        let args: Vec<String> = [
            "--name=test".into(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=test=http://127.0.0.1:{peer_port}"),
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ]
        .into();
        watchdogs.push(supervised(&peer("etcd"), &args, &etcd_log, &dir).1);
        let deadline = Instant::now() + START_DEADLINE;
        while !http_get(etcd_port, "/health").is_some_and(|t| t.contains("\"health\":\"true\"")) {
            if Instant::now() > deadline {
                return Err(format!("etcd never turned healthy:\n{}", tail(&etcd_log)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }

        let port = free_port();
        let api_log = dir.join("kube-apiserver.log");
        let audit_log = dir.join("audit.log");
        let file = |name: &str| dir.join(name).display().to_string();
        let args: Vec<String> = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", file("certs")),
            format!("--tls-cert-file={}", file("apiserver.pem")),
            format!("--tls-private-key-file={}", file("apiserver.key")),
            format!("--client-ca-file={}", file("ca.pem")),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", file("sa.pub")),
            format!("--service-account-signing-key-file={}", file("sa.key")),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--authorization-mode=RBAC".into(),
            format!("--token-auth-file={}", file("tokens.csv")),
            // No controller manager runs: nothing would create service-account tokens.
            "--disable-admission-plugins=ServiceAccount".into(),
            format!("--audit-policy-file={}", file("audit-policy.yaml")),
            format!("--audit-log-path={}", audit_log.display()),
            // Written before the answer leaves: a test reads it right after.
            "--audit-log-mode=blocking".into(),
            "--audit-log-maxsize=0".into(),
            // Compaction only when a test asks for it.
            "--etcd-compaction-interval=0".into(),
            "--watch-cache=false".into(),
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
        ];
        watchdogs.push(supervised(&peer("kube-apiserver"), &args, &api_log, &dir).1);

        let plane = ControlPlane {
            url: format!("https://127.0.0.1:{port}"),
            etcd_port,
            ca_pem,
            serving: (cert_pem, key_pem),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            tokens,
            audit_log,
            namespaces: AtomicUsize::new(0),
            dir: dir.clone(),
            _watchdogs: Mutex::new(watchdogs),
        };
        plane.write_kubeconfig(
            &plane.admin_kubeconfig,
            &plane.url,
            "default",
            &plane.tokens[0],
        );
        loop {
            let out = plane.kubectl_output(&["get", "--raw", "/readyz"], b"");
            if out.as_ref().is_ok_and(|o| o.trim() == "ok") {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "kube-apiserver never turned ready ({out:?}):\n{}",
                    tail(&api_log)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(plane)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The serving certificate and key (PEM), valid for 127.0.0.1.
    pub fn serving_pem(&self) -> (&str, &str) {
        (&self.serving.0, &self.serving.1)
    }

    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The API server's log (for failure messages).
    pub fn log(&self) -> String {
        tail(&self.dir.join("kube-apiserver.log"))
    }

    /// Writes a kubeconfig to `path`: `server` verified against this CA, the bearer
    /// `token` (or `tokenFile: PATH`), a context that names `namespace`.
    pub fn write_kubeconfig(&self, path: &Path, server: &str, namespace: &str, user_line: &str) {
        let user_line = if user_line.starts_with("tokenFile:") {
            user_line.to_string()
        } else {
            format!("token: {}", quote(user_line))
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: test\n  user:\n    {user_line}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: {}\ncurrent-context: test\n",
            quote(server),
            base64_encode(self.ca_pem.as_bytes()),
            quote(namespace),
        );
        std::fs::write(path, text).unwrap();
    }

    /// kubectl as the admin; stdout, or stderr as the error.
    pub fn kubectl_output(&self, args: &[&str], stdin: &[u8]) -> Result<String, String> {
        let mut child = Command::new(peer("kubectl"))
            .args(args)
            .env("KUBECONFIG", &self.admin_kubeconfig)
            // kubectl's discovery cache: per control plane.
            .env("KUBECACHEDIR", self.dir.join("kubectl-cache"))
            .env("HOME", &self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("kubectl: {e}"));
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Installs the Gateway API standard CRDs `scripts/peers` copied from the pinned
    /// module (once per test binary) and waits until the API server serves their
    /// kinds; returns kubectl's answer to the apply.
    pub fn gateway_crds(&self) -> &str {
        static APPLIED: OnceLock<String> = OnceLock::new();
        APPLIED.get_or_init(|| {
            let crds = crate::peers().join("crds/gateway-api");
            let out = self.kubectl(
                &["apply", "--server-side", "-f", crds.to_str().unwrap()],
                b"",
            );
            // Established: every kind is served (an empty list, no error).
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            for kind in [
                "gatewayclasses",
                "gateways",
                "httproutes",
                "referencegrants",
            ] {
                while let Err(e) = self.kubectl_output(
                    &["get", &format!("{kind}.gateway.networking.k8s.io"), "-A"],
                    b"",
                ) {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{kind} are not served: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            out
        })
    }

    /// kubectl as the admin; panics on failure.
    pub fn kubectl(&self, args: &[&str], stdin: &[u8]) -> String {
        self.kubectl_output(args, stdin)
            .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    }

    /// A fresh namespace named after `hint`, with the shipped Role bound to every
    /// replica identity.
    pub fn namespace(&'static self, hint: &str) -> Namespace {
        let n = self.namespaces.fetch_add(1, Ordering::SeqCst);
        let hint: String = hint
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        let name = format!("{}-{n}", hint.trim_matches('-'));
        self.kubectl(&["create", "namespace", &name], b"");
        self.bind_role(&name);
        Namespace {
            plane: self,
            name,
            identities: Mutex::new(HashMap::new()),
        }
    }

    /// The Role of config/kubernetes/role.yaml in `namespace`, bound to every replica user.
    pub fn bind_role(&self, namespace: &str) {
        let role = crate::repo_root().join("config/kubernetes/role.yaml");
        let subjects: Vec<Value> = (0..REPLICA_USERS)
            .map(|i| json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": format!("replica-{i}")}))
            .collect();
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "portico-test-replicas"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "portico"},
            "subjects": subjects,
        });
        self.kubectl(
            &[
                "apply",
                "-n",
                namespace,
                "-f",
                role.to_str().unwrap(),
                "-f",
                "-",
            ],
            binding.to_string().as_bytes(),
        );
    }

    /// etcd's current revision (the API server's newest resourceVersion).
    pub fn revision(&self) -> u64 {
        let answer = etcd_post(
            self.etcd_port,
            "/v3/kv/range",
            &json!({"key": base64_encode(b"/")}),
        );
        answer["header"]["revision"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Compacts etcd's history up to now: a watch resumed from an older resourceVersion
    /// meets 410 Gone. Returns the revision compacted to.
    pub fn compact(&self) -> u64 {
        let revision = self.revision();
        etcd_post(
            self.etcd_port,
            "/v3/kv/compaction",
            &json!({"revision": revision.to_string(), "physical": true}),
        );
        revision
    }

    /// The object `name` of `resource` in `namespace`, as the admin reads it.
    pub fn get(&self, namespace: &str, resource: &str, name: &str) -> Option<Value> {
        match self.kubectl_output(&["get", resource, "-n", namespace, name, "-o", "json"], b"") {
            Ok(text) => Some(serde_json::from_str(&text).unwrap()),
            Err(e) if e.contains("NotFound") || e.contains("not found") => None,
            Err(e) => panic!("kubectl get {resource} {name}: {e}"),
        }
    }

    /// Every object of `resource` in `namespace`, sorted by name.
    pub fn list(&self, namespace: &str, resource: &str) -> Vec<Value> {
        let text = self.kubectl(&["get", resource, "-n", namespace, "-o", "json"], b"");
        let list: Value = serde_json::from_str(&text).unwrap();
        let mut items = list["items"].as_array().cloned().unwrap_or_default();
        items.sort_by_key(|o| o["metadata"]["name"].as_str().unwrap_or("").to_string());
        items
    }

    /// Watches of `resource` in `namespace` that `user` has open now (started and not
    /// yet complete, by the audit log).
    pub fn open_watches(&self, namespace: &str, user: &str, resource: &str) -> usize {
        let events = self.audit(namespace);
        let watches = events
            .iter()
            .filter(|a| a.user == user && a.verb == "watch" && a.resource == resource);
        let started: Vec<&str> = watches
            .clone()
            .filter(|a| a.stage == "ResponseStarted")
            .map(|a| a.id.as_str())
            .collect();
        let completed: Vec<&str> = watches
            .filter(|a| a.stage == "ResponseComplete")
            .map(|a| a.id.as_str())
            .collect();
        started.iter().filter(|id| !completed.contains(id)).count()
    }

    /// Every audit event (ResponseStarted / ResponseComplete) about objects in `namespace`.
    pub fn audit(&self, namespace: &str) -> Vec<Audit> {
        let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|e| e["objectRef"]["namespace"] == namespace)
            .map(|e| Audit {
                id: e["auditID"].as_str().unwrap_or("").into(),
                stage: e["stage"].as_str().unwrap_or("").into(),
                user: e["user"]["username"].as_str().unwrap_or("").into(),
                verb: e["verb"].as_str().unwrap_or("").into(),
                resource: e["objectRef"]["resource"].as_str().unwrap_or("").into(),
                name: e["objectRef"]["name"].as_str().unwrap_or("").into(),
                code: e["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
            })
            .collect()
    }
}

/// One request as the API server's audit log tells it.
#[derive(Clone, Debug)]
pub struct Audit {
    pub id: String,
    pub stage: String,
    pub user: String,
    pub verb: String,
    pub resource: String,
    pub name: String,
    pub code: u16,
}

/// A namespace of one test.
pub struct Namespace {
    plane: &'static ControlPlane,
    pub name: String,
    /// Who → which replica user.
    identities: Mutex<HashMap<String, usize>>,
}

impl Namespace {
    pub fn plane(&self) -> &'static ControlPlane {
        self.plane
    }

    /// The replica user (`replica-N`) that `who` signs in as in this namespace; the same
    /// `who` is always the same user, different ones different users.
    pub fn user(&self, who: &str) -> String {
        let mut ids = self.identities.lock().unwrap();
        let next = ids.len();
        let i = *ids.entry(who.to_string()).or_insert(next);
        assert!(
            i < REPLICA_USERS,
            "more than {REPLICA_USERS} identities in one test"
        );
        format!("replica-{i}")
    }

    /// The bearer token of `who`'s identity.
    pub fn token(&self, who: &str) -> &'static str {
        let user = self.user(who);
        let i: usize = user["replica-".len()..].parse().unwrap();
        &self.plane.tokens[i + 1]
    }

    /// A new kubeconfig in `dir` for `who`, whose context names this namespace.
    pub fn kubeconfig(&self, dir: &Path, who: &str) -> PathBuf {
        self.kubeconfig_via(dir, who, self.plane.url())
    }

    /// [`Namespace::kubeconfig`] through `server` (a front) instead.
    pub fn kubeconfig_via(&self, dir: &Path, who: &str, server: &str) -> PathBuf {
        self.kubeconfig_in(dir, who, server, &self.name)
    }

    /// A kubeconfig for `who` whose context names another `namespace`.
    pub fn kubeconfig_in(&self, dir: &Path, who: &str, server: &str, namespace: &str) -> PathBuf {
        let path = new_file(dir, "kubeconfig");
        self.plane
            .write_kubeconfig(&path, server, namespace, self.token(who));
        path
    }

    /// A kubeconfig that reads its token from `token_file` (as a pod's does).
    pub fn kubeconfig_with_token_file(
        &self,
        dir: &Path,
        server: &str,
        token_file: &Path,
    ) -> PathBuf {
        let path = new_file(dir, "kubeconfig");
        self.plane.write_kubeconfig(
            &path,
            server,
            &self.name,
            &format!("tokenFile: {}", quote(&token_file.display().to_string())),
        );
        path
    }

    /// A ServiceAccount `name` here, bound to the shipped Role; a token for it from the
    /// TokenRequest API (a bound token, as the kubelet mounts).
    pub fn service_account_token(&self, name: &str) -> String {
        let ns = self.name.as_str();
        self.plane
            .kubectl(&["create", "serviceaccount", "-n", ns, name], b"");
        let binding = format!("{name}-portico");
        let subject = format!("{ns}:{name}");
        if self
            .plane
            .kubectl_output(&["get", "rolebinding", "-n", ns, &binding], b"")
            .is_err()
        {
            self.plane.kubectl(
                &[
                    "create",
                    "rolebinding",
                    "-n",
                    ns,
                    &binding,
                    "--role=portico",
                    "--serviceaccount",
                    &subject,
                ],
                b"",
            );
        }
        self.plane
            .kubectl(&["create", "token", "-n", ns, name, "--duration=1h"], b"")
            .trim()
            .to_string()
    }

    /// Deletes the ServiceAccount `name`: its tokens stop working.
    pub fn delete_service_account(&self, name: &str) {
        self.plane.kubectl(
            &["delete", "serviceaccount", "-n", &self.name, name, "--wait"],
            b"",
        );
    }

    /// The IngressClass of this namespace's tests (IngressClasses are cluster-wide, so
    /// each namespace has its own): `portico-<namespace>`, controller portico's.
    pub fn ingress_class(&self) -> String {
        format!("portico-{}", self.name)
    }

    /// The GatewayClass of this namespace's tests (cluster-wide, like IngressClasses):
    /// `portico-gw-<namespace>`. [`ControlPlane::gateway_crds`] installs the kinds; the
    /// test creates the class.
    pub fn gateway_class(&self) -> String {
        format!("portico-gw-{}", self.name)
    }

    /// The rights of the shipped ClusterRole (config/kubernetes/clusterrole.yaml) for
    /// the identities `who`: its namespaced rules as a Role of this namespace (bound
    /// cluster-wide they would reach every other test), its rules on cluster-scoped
    /// kinds (IngressClasses, GatewayClasses and their status) through a ClusterRole of
    /// this namespace's own; and the IngressClass [`Namespace::ingress_class`].
    pub fn grant_ingress_controller(&self, who: &[&str]) {
        let path = crate::repo_root().join("config/kubernetes/clusterrole.yaml");
        let shipped: Value = serde_json::from_str(&self.plane.kubectl(
            &[
                "create",
                "--dry-run=client",
                "-o",
                "json",
                "-f",
                path.to_str().unwrap(),
            ],
            b"",
        ))
        .unwrap();
        let rules = shipped["rules"].as_array().unwrap();
        let (classes, namespaced): (Vec<Value>, Vec<Value>) =
            rules.iter().cloned().partition(|r| {
                [
                    json!(["ingressclasses"]),
                    json!(["gatewayclasses"]),
                    json!(["gatewayclasses/status"]),
                ]
                .contains(&r["resources"])
            });
        assert_eq!(
            classes.len(),
            3,
            "the shipped ClusterRole reads IngressClasses and GatewayClasses and writes the latter's status"
        );
        let subjects: Vec<Value> = who
            .iter()
            .map(|w| json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": self.user(w)}))
            .collect();
        let cluster_name = format!("portico-classes-{}", self.name);
        let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": "portico-ingress", "namespace": self.name}, "rules": namespaced},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "portico-ingress", "namespace": self.name},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "portico-ingress"},
             "subjects": subjects},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": cluster_name}, "rules": classes},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": cluster_name},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name},
             "subjects": subjects},
            {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
             "metadata": {"name": self.ingress_class()},
             "spec": {"controller": "portico.dev/ingress-controller"}},
        ]});
        self.plane
            .kubectl(&["create", "-f", "-"], objects.to_string().as_bytes());
    }

    /// The object `name` of `resource` (`secrets`, `leases`), as the admin reads it.
    pub fn get(&self, resource: &str, name: &str) -> Option<Value> {
        self.plane.get(&self.name, resource, name)
    }

    /// Every object of `resource` here, sorted by name.
    pub fn list(&self, resource: &str) -> Vec<Value> {
        self.plane.list(&self.name, resource)
    }

    /// The names of every object of `resource` here, sorted.
    pub fn names(&self, resource: &str) -> Vec<String> {
        self.list(resource)
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    }

    /// Creates `object` here as the admin (another writer); returns what the server
    /// stored.
    pub fn create(&self, object: Value) -> Value {
        let text = self.plane.kubectl(
            &["create", "-n", &self.name, "-f", "-", "-o", "json"],
            object.to_string().as_bytes(),
        );
        serde_json::from_str(&text).unwrap()
    }

    /// A JSON merge patch to `name` of `resource` as the admin (another writer).
    pub fn patch(&self, resource: &str, name: &str, patch: Value) -> Value {
        let text = self.plane.kubectl(
            &[
                "patch",
                resource,
                "-n",
                &self.name,
                name,
                "--type",
                "merge",
                "-p",
                &patch.to_string(),
                "-o",
                "json",
            ],
            b"",
        );
        serde_json::from_str(&text).unwrap()
    }

    /// The audit events of this namespace, by user `who`'s identity when given.
    pub fn audit(&self, who: Option<&str>) -> Vec<Audit> {
        let user = who.map(|w| self.user(w));
        self.plane
            .audit(&self.name)
            .into_iter()
            .filter(|a| user.as_ref().is_none_or(|u| a.user == *u))
            .collect()
    }

    /// Requests answered with 409 Conflict in this namespace.
    pub fn conflicts(&self) -> usize {
        self.audit(None)
            .iter()
            .filter(|a| a.stage == "ResponseComplete" && a.code == 409)
            .count()
    }

    /// Watches of `resource` that `who` has open now (started, not yet complete).
    pub fn open_watches(&self, who: &str, resource: &str) -> usize {
        self.plane
            .open_watches(&self.name, &self.user(who), resource)
    }

    /// Records every state of the `resource` objects here from now on, as a watch sees
    /// them (the admin's `kubectl get --watch`).
    pub fn record(&self, resource: &str) -> Recorder {
        let mut child = Command::new(peer("kubectl"))
            .args([
                "get",
                resource,
                "-n",
                &self.name,
                "--watch",
                "--output-watch-events",
                "-o",
                "json",
            ])
            .env("KUBECONFIG", &self.plane.admin_kubeconfig)
            .env("KUBECACHEDIR", self.plane.dir.join("kubectl-cache"))
            .env("HOME", &self.plane.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let states = Arc::new(Mutex::new(Vec::new()));
        let into = states.clone();
        std::thread::spawn(move || {
            for event in
                serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>()
            {
                let Ok(event) = event else { break };
                into.lock().unwrap().push(event["object"].clone());
            }
        });
        // The watch is open once kubectl printed the objects there are (maybe none):
        // wait for its request in the audit log.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .plane
            .audit(&self.name)
            .iter()
            .any(|a| a.user == "admin" && a.verb == "watch" && a.resource == resource)
        {
            assert!(
                Instant::now() < deadline,
                "kubectl get --watch never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Recorder { child, states }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Leaves the API server lighter for the tests still running; nobody waits.
        let _ = Command::new(peer("kubectl"))
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .env("KUBECONFIG", &self.plane.admin_kubeconfig)
            .env("KUBECACHEDIR", self.plane.dir.join("kubectl-cache"))
            .env("HOME", &self.plane.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Every state a watch saw, oldest first.
pub struct Recorder {
    child: Child,
    states: Arc<Mutex<Vec<Value>>>,
}

impl Recorder {
    pub fn states(&self) -> Vec<Value> {
        self.states.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn new_file(dir: &Path, stem: &str) -> PathBuf {
    (1..)
        .map(|n| match n {
            1 => dir.join(stem),
            n => dir.join(format!("{stem}-{n}")),
        })
        .find(|p| !p.exists())
        .unwrap()
}
