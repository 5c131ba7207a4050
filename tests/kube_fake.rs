//! The fake Kubernetes API server (tests/common/kube_api.rs) checked against the real
//! `kubectl` (each command a child process, with a timeout) and against a raw HTTP/1.1
//! client for what kubectl cannot show (watch resumption, 410, faults).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::kube_api::{FakeApi, Resource};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

/// A failure guard only: kubectl answers the fake in well under a second.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);
/// Failure guard for the raw client.
const TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// kubectl
// ---------------------------------------------------------------------------------------

struct Kubectl {
    kubeconfig: PathBuf,
    /// kubectl's HOME: its discovery cache stays per test.
    home: PathBuf,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    fn new(api: &FakeApi, dir: &Path, namespace: &str, token: &str) -> Kubectl {
        Kubectl {
            kubeconfig: api.kubeconfig(dir, namespace, token),
            home: dir.to_path_buf(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", &self.home)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, "")
    }

    /// Runs kubectl with `stdin`; kills it after [`KUBECTL_TIMEOUT`].
    fn run_with(&self, args: &[&str], stdin: &str) -> Out {
        let mut child = self
            .command(args)
            .spawn()
            .expect("kubectl is installed (scripts/test installs it)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
            s
        });
        let deadline = Instant::now() + KUBECTL_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("kubectl {args:?} did not finish in {KUBECTL_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Out {
            ok: status.success(),
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, "")
    }

    fn ok_with(&self, args: &[&str], stdin: &str) -> String {
        let out = self.run_with(args, stdin);
        assert!(
            out.ok,
            "kubectl {args:?} failed:\n{}{}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    /// Runs a command that must fail; returns its stderr.
    fn fails_with(&self, args: &[&str], stdin: &str) -> String {
        let out = self.run_with(args, stdin);
        assert!(
            !out.ok,
            "kubectl {args:?} succeeded:\n{}{}",
            out.stdout, out.stderr
        );
        out.stderr
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }
}

/// Kills a long-running kubectl (a watch) also when the test fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn setup() -> (FakeApi, tempfile::TempDir, Kubectl) {
    let api = FakeApi::start_in_thread();
    api.add_token("kubectl-token");
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::new(&api, dir.path(), "portico", "kubectl-token");
    (api, dir, kubectl)
}

#[test]
fn kubectl_creates_and_reads_a_secret() {
    let (api, _dir, kubectl) = setup();
    assert_eq!(
        kubectl.ok(&["create", "secret", "generic", "x", "--from-literal=a=b"]),
        "secret/x created\n"
    );
    kubectl.ok(&["label", "secret", "x", "portico.dev/kind=certificate"]);

    let list = kubectl.json(&["get", "secrets"]);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    let secret = &items[0];
    assert_eq!(secret["data"]["a"], "Yg==");
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(
        secret["metadata"]["labels"]["portico.dev/kind"],
        "certificate"
    );
    assert_eq!(secret["metadata"]["namespace"], "portico");
    let rv: u64 = secret["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(rv, api.resource_version());
    assert!(secret["metadata"]["uid"].as_str().unwrap().len() == 36);

    let yaml = kubectl.ok(&["get", "secret", "x", "-o", "yaml"]);
    assert!(yaml.contains("  a: Yg==\n"), "{yaml}");
    assert!(yaml.contains("portico.dev/kind: certificate"), "{yaml}");
    assert!(
        yaml.contains(&format!("resourceVersion: \"{rv}\"")),
        "{yaml}"
    );

    // kubectl 1.32 asks /api and /apis for aggregated discovery first; answered in the
    // legacy format, it falls back to reading each group version, as kubectl 1.20 always
    // does.
    let paths: Vec<String> = api.requests().into_iter().map(|r| r.1).collect();
    let fetched = |p: &str| {
        paths
            .iter()
            .any(|x| x == p || x.starts_with(&format!("{p}?")))
    };
    assert!(fetched("/api") && fetched("/apis"), "{paths:?}");
    assert!(fetched("/api/v1"), "{paths:?}");

    // kubectl (Go) takes HTTP/2 when offered, as from a real API server.
    assert!(api.counters().http2_connections > 0);

    // kubectl's typed client sent protobuf; the fake stored the same thing.
    let stored = api.get(Resource::Secrets, "portico", "x").unwrap();
    assert_eq!(stored["data"]["a"], "Yg==");
}

#[test]
fn kubectl_replace_with_a_stale_resource_version_conflicts() {
    let (api, dir, kubectl) = setup();
    kubectl.ok(&["create", "secret", "generic", "x", "--from-literal=a=b"]);
    let stale = kubectl.json(&["get", "secret", "x"]);
    kubectl.ok(&["label", "secret", "x", "moved=on"]);

    let mut edited = stale.clone();
    edited["data"]["a"] = json!("Yw==");
    let file = dir.path().join("stale.json");
    std::fs::write(&file, edited.to_string()).unwrap();
    let stderr = kubectl.fails_with(&["replace", "-f", file.to_str().unwrap()], "");
    assert!(
        stderr.contains(
            "Operation cannot be fulfilled on secrets \"x\": the object has been modified; please apply your changes to the latest version and try again"
        ),
        "{stderr}"
    );
    assert_eq!(api.counters().conflicts, 1);

    let mut current = kubectl.json(&["get", "secret", "x"]);
    current["data"]["a"] = json!("Yw==");
    std::fs::write(&file, current.to_string()).unwrap();
    assert_eq!(
        kubectl.ok(&["replace", "-f", file.to_str().unwrap()]),
        "secret/x replaced\n"
    );
    assert_eq!(
        api.get(Resource::Secrets, "portico", "x").unwrap()["data"]["a"],
        "Yw=="
    );
}

#[test]
fn kubectl_sees_already_exists_not_found_and_delete() {
    let (_api, _dir, kubectl) = setup();
    kubectl.ok(&["create", "secret", "generic", "x", "--from-literal=a=b"]);
    let stderr = kubectl.fails_with(
        &["create", "secret", "generic", "x", "--from-literal=a=b"],
        "",
    );
    assert!(stderr.contains("secrets \"x\" already exists"), "{stderr}");
    let manifest = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: x\nstringData:\n  a: b\n";
    let stderr = kubectl.fails_with(&["create", "-f", "-"], manifest);
    assert!(
        stderr.contains("Error from server (AlreadyExists): error when creating \"STDIN\": secrets \"x\" already exists"),
        "{stderr}"
    );

    let stderr = kubectl.fails_with(&["get", "secret", "nope"], "");
    assert_eq!(
        stderr.trim(),
        "Error from server (NotFound): secrets \"nope\" not found"
    );

    assert_eq!(
        kubectl.ok(&["delete", "secret", "x"]),
        "secret \"x\" deleted\n"
    );
    let stderr = kubectl.fails_with(&["get", "secret", "x"], "");
    assert!(stderr.contains("secrets \"x\" not found"), "{stderr}");
}

#[test]
fn kubectl_creates_and_reads_a_lease() {
    let (api, dir, kubectl) = setup();
    let lease = "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: portico-acme-0123456789abcdef\nspec:\n  holderIdentity: pod-a-x1\n  leaseDurationSeconds: 15\n  acquireTime: \"2025-01-02T03:04:05.123456Z\"\n  renewTime: \"2025-01-02T03:04:06.000001+01:00\"\n  leaseTransitions: 0\n";
    assert_eq!(
        kubectl.ok_with(&["create", "-f", "-"], lease),
        "lease.coordination.k8s.io/portico-acme-0123456789abcdef created\n"
    );
    let list = kubectl.json(&["get", "leases"]);
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    let spec = &list["items"][0]["spec"];
    assert_eq!(spec["holderIdentity"], "pod-a-x1");
    assert_eq!(spec["leaseDurationSeconds"], 15);
    assert_eq!(spec["leaseTransitions"], 0);
    assert_eq!(spec["acquireTime"], "2025-01-02T03:04:05.123456Z");
    // MicroTime is stored in UTC.
    assert_eq!(spec["renewTime"], "2025-01-02T02:04:06.000001Z");
    let table = kubectl.ok(&["get", "lease", "portico-acme-0123456789abcdef"]);
    assert!(table.contains("portico-acme-0123456789abcdef"), "{table}");

    // kubectl's replace reads the resourceVersion first when the manifest has none (a
    // lease takes no unconditional update); nothing changed, so the revision stays.
    let rv = api.resource_version();
    assert_eq!(
        kubectl.ok_with(&["replace", "-f", "-"], lease),
        "lease.coordination.k8s.io/portico-acme-0123456789abcdef replaced\n"
    );
    assert_eq!(api.resource_version(), rv);
    let put = api
        .requests()
        .into_iter()
        .filter(|(method, _, _)| method == "PUT")
        .count();
    assert_eq!(put, 1);

    // A MicroTime without exactly 6 fractional digits is refused when decoding.
    let bad = lease
        .replace("portico-acme-0123456789abcdef", "other")
        .replace("05.123456Z", "05.123Z");
    let stderr = kubectl.fails_with(&["create", "-f", "-"], &bad);
    assert!(
        stderr.contains("Lease in version \"v1\" cannot be handled as a Lease"),
        "{stderr}"
    );
    assert!(api.get(Resource::Leases, "portico", "other").is_none());
    drop(dir);
}

#[test]
fn kubectl_filters_by_label_selector() {
    let (_api, _dir, kubectl) = setup();
    for (name, kind) in [("cert", "certificate"), ("acct", "account"), ("ca", "ca")] {
        let manifest = format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  labels:\n    app.kubernetes.io/managed-by: portico\n    portico.dev/kind: {kind}\nstringData:\n  k: v\n"
        );
        kubectl.ok_with(&["create", "-f", "-"], &manifest);
    }
    kubectl.ok(&[
        "create",
        "secret",
        "generic",
        "unlabelled",
        "--from-literal=a=b",
    ]);

    let names = |selector: &str| kubectl.ok(&["get", "secrets", "-l", selector, "-o", "name"]);
    assert_eq!(names("portico.dev/kind=certificate"), "secret/cert\n");
    assert_eq!(
        names("portico.dev/kind in (account,ca)"),
        "secret/acct\nsecret/ca\n"
    );
    assert_eq!(names("!portico.dev/kind"), "secret/unlabelled\n");
    assert_eq!(
        names("app.kubernetes.io/managed-by=portico,portico.dev/kind!=ca"),
        "secret/acct\nsecret/cert\n"
    );
    let by_field = kubectl.ok(&[
        "get",
        "secrets",
        "--field-selector",
        "metadata.name=ca",
        "-o",
        "name",
    ]);
    assert_eq!(by_field, "secret/ca\n");
}

#[test]
fn kubectl_watch_sees_a_later_object() {
    let (api, _dir, kubectl) = setup();
    kubectl.ok(&["create", "secret", "generic", "early", "--from-literal=a=b"]);
    let mut child = KillOnDrop(
        kubectl
            .command(&["get", "secrets", "--watch", "-o", "name"])
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    assert_eq!(rx.recv_timeout(KUBECTL_TIMEOUT).unwrap(), "secret/early");
    let deadline = Instant::now() + KUBECTL_TIMEOUT;
    while api.open_watches(Some("kubectl-token")) == 0 {
        assert!(Instant::now() < deadline, "kubectl never opened its watch");
        std::thread::sleep(Duration::from_millis(20));
    }
    api.insert(
        Resource::Secrets,
        "portico",
        json!({"metadata": {"name": "late"}, "stringData": {"a": "b"}}),
    );
    assert_eq!(rx.recv_timeout(KUBECTL_TIMEOUT).unwrap(), "secret/late");
    drop(child);
    let watch = api
        .requests()
        .into_iter()
        .find(|(_, path, _)| path.contains("watch=true"))
        .unwrap();
    assert!(watch.1.contains("resourceVersion="), "{watch:?}");
}

#[test]
fn kubectl_sees_invalid_objects_refused() {
    let (api, _dir, kubectl) = setup();
    let bad_name =
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: Not_Valid\nstringData:\n  a: b\n";
    let stderr = kubectl.fails_with(&["create", "-f", "-"], bad_name);
    assert!(
        stderr.contains("The Secret \"Not_Valid\" is invalid: metadata.name: Invalid value: \"Not_Valid\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
        "{stderr}"
    );

    let tls_without_key = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: t\ntype: kubernetes.io/tls\ndata:\n  tls.crt: \"\"\n";
    let stderr = kubectl.fails_with(&["create", "-f", "-"], tls_without_key);
    assert!(
        stderr.contains("The Secret \"t\" is invalid: data[tls.key]: Required value"),
        "{stderr}"
    );
    // Both keys present, even empty, is enough.
    let tls_empty = format!("{tls_without_key}  tls.key: \"\"\n");
    kubectl.ok_with(&["create", "-f", "-"], &tls_empty);

    // The type is immutable.
    let mut secret = kubectl.json(&["get", "secret", "t"]);
    secret["type"] = json!("Opaque");
    let stderr = kubectl.fails_with(&["replace", "-f", "-"], &secret.to_string());
    assert!(
        stderr.contains(
            "The Secret \"t\" is invalid: type: Invalid value: \"Opaque\": field is immutable"
        ),
        "{stderr}"
    );
    assert_eq!(api.objects(Resource::Secrets, "portico").len(), 1);
}

#[test]
fn kubectl_with_a_wrong_token_is_unauthorized() {
    let (api, dir, _kubectl) = setup();
    let wrong = Kubectl::new(&api, dir.path(), "portico", "not-a-token");
    let out = wrong.run(&["get", "secrets"]);
    assert!(!out.ok);
    // kubectl words a 401 met during discovery "the server has asked for the client to
    // provide credentials", and one met on the request itself "Unauthorized", as it does
    // with a real API server.
    assert!(
        out.stderr
            .contains("error: You must be logged in to the server"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn kubectl_reads_a_rotated_token_file() {
    let api = FakeApi::start_in_thread();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "first").unwrap();
    api.add_token("first");
    let kubectl = Kubectl {
        kubeconfig: api.kubeconfig_with_token_file(dir.path(), "portico", &token_file),
        home: dir.path().to_path_buf(),
    };
    kubectl.ok(&["get", "secrets"]);

    api.revoke_token("first");
    let stderr = kubectl.fails_with(&["get", "secrets"], "");
    assert!(
        stderr.contains("You must be logged in to the server"),
        "{stderr}"
    );

    api.add_token("second");
    std::fs::write(&token_file, "second").unwrap();
    kubectl.ok(&["get", "secrets"]);
    let tokens: Vec<Option<String>> = api.requests().into_iter().map(|r| r.2).collect();
    assert!(tokens.contains(&Some("second".into())));
}

// ---------------------------------------------------------------------------------------
// A raw client
// ---------------------------------------------------------------------------------------

struct Client {
    tls: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    token: String,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Client {
    fn new(api: &FakeApi, token: &str) -> Client {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(api.ca_pem().as_bytes()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Client {
            tls: Arc::new(config),
            addr: api.addr(),
            token: token.to_string(),
        }
    }

    async fn connect(&self) -> std::io::Result<Sender> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(send)
    }

    async fn try_send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Box<dyn std::error::Error + Sync + Send>>
    {
        let mut send = self.connect().await?;
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))?;
        Ok(send.send_request(req).await?)
    }

    /// One request; the status and the body as text.
    async fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), Box<dyn std::error::Error + Sync + Send>> {
        let resp = tokio::time::timeout(TIMEOUT, self.try_send(method, path, body))
            .await
            .map_err(|_| "timed out")??;
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| "timed out")??
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    async fn json(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (status, text) = self.call(method, path, body).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn watch(&self, path: &str) -> Watch {
        let resp = tokio::time::timeout(TIMEOUT, self.try_send("GET", path, None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        Watch {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }
}

struct Watch {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

enum Next {
    Event(Value),
    End,
    Cut,
}

impl Watch {
    async fn next_raw(&mut self) -> Next {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Next::Event(serde_json::from_slice(&line).unwrap());
            }
            match tokio::time::timeout(TIMEOUT, self.body.frame()).await {
                Err(_) => panic!("no watch event in {TIMEOUT:?}"),
                Ok(None) => return Next::End,
                Ok(Some(Err(_))) => return Next::Cut,
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    async fn next(&mut self) -> Value {
        match self.next_raw().await {
            Next::Event(e) => e,
            Next::End => panic!("the watch ended"),
            Next::Cut => panic!("the watch was cut"),
        }
    }
}

const SECRETS: &str = "/api/v1/namespaces/ns/secrets";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases";

fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn secret(name: &str, value: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": {"k": value}})
}

fn start() -> (FakeApi, Client) {
    let api = FakeApi::start_in_thread();
    api.add_token("t");
    let client = Client::new(&api, "t");
    (api, client)
}

#[tokio::test]
async fn status_bodies_are_the_real_ones() {
    let (_api, client) = start();
    let (status, body) = client.call("GET", &format!("{SECRETS}/foo"), None).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"secrets \"foo\" not found","reason":"NotFound","details":{"name":"foo","kind":"secrets"},"code":404}"#
    );
    let (status, body) = client.call("GET", &format!("{LEASES}/foo"), None).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"leases.coordination.k8s.io \"foo\" not found","reason":"NotFound","details":{"name":"foo","group":"coordination.k8s.io","kind":"leases"},"code":404}"#
    );

    let (status, created) = client
        .json("POST", SECRETS, Some(&secret("foo", "YQ==")))
        .await;
    assert_eq!(status, 201);
    let (status, body) = client
        .call("POST", SECRETS, Some(&secret("foo", "YQ==")))
        .await;
    assert_eq!(status, 409);
    assert_eq!(
        body,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"secrets \"foo\" already exists","reason":"AlreadyExists","details":{"name":"foo","kind":"secrets"},"code":409}"#
    );

    let mut stale = created.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    let (status, body) = client
        .call("PUT", &format!("{SECRETS}/foo"), Some(&stale))
        .await;
    assert_eq!(status, 409);
    assert_eq!(
        body,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Operation cannot be fulfilled on secrets \"foo\": the object has been modified; please apply your changes to the latest version and try again","reason":"Conflict","details":{"name":"foo","kind":"secrets"},"code":409}"#
    );

    let (status, body) = client
        .call("POST", SECRETS, Some(&secret("Foo", "YQ==")))
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        body,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Secret \"Foo\" is invalid: metadata.name: Invalid value: \"Foo\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')","reason":"Invalid","details":{"name":"Foo","kind":"Secret","causes":[{"reason":"FieldValueInvalid","message":"Invalid value: \"Foo\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')","field":"metadata.name"}]},"code":422}"#
    );

    let (status, body) = client
        .call("PUT", &format!("{SECRETS}/other"), Some(&created))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the name of the object (foo) does not match the name on the URL (other)","reason":"BadRequest","code":400}"#
    );

    let unauthorized = Client::new(&_api, "nobody");
    let (status, body) = unauthorized.call("GET", SECRETS, None).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#
    );

    let uid = created["metadata"]["uid"].as_str().unwrap();
    let options = json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": "1"}});
    let (status, body) = client
        .call("DELETE", &format!("{SECRETS}/foo"), Some(&options))
        .await;
    assert_eq!(status, 409);
    let rv = rv_of(&created);
    assert_eq!(
        body,
        format!(
            r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"Operation cannot be fulfilled on secrets \"foo\": StorageError: invalid object, Code: 4, Key: /registry/secrets/ns/foo, ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: ResourceVersion in precondition: 1, ResourceVersion in object meta: {rv}","reason":"Conflict","details":{{"name":"foo","kind":"secrets"}},"code":409}}"#
        )
    );
    let options = json!({"preconditions": {"resourceVersion": rv.to_string()}});
    let (status, body) = client
        .call("DELETE", &format!("{SECRETS}/foo"), Some(&options))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        format!(
            r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Success","details":{{"name":"foo","kind":"secrets","uid":"{uid}"}}}}"#
        )
    );
}

#[tokio::test]
async fn resource_versions_are_one_counter_and_a_noop_put_keeps_its_own() {
    let (api, client) = start();
    let (_, a) = client
        .json("POST", SECRETS, Some(&secret("a", "YQ==")))
        .await;
    let lease = json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "x", "leaseDurationSeconds": 15, "renewTime": "2025-01-01T00:00:00.000000Z"}});
    let (status, l) = client.json("POST", LEASES, Some(&lease)).await;
    assert_eq!(status, 201, "{l}");
    assert_eq!(rv_of(&l), rv_of(&a) + 1);
    assert_eq!(l["kind"], "Lease");
    assert_eq!(l["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(l["metadata"]["namespace"], "ns");
    assert!(l["metadata"]["creationTimestamp"].is_string());

    let changes = api.counters().changes;
    let (status, same) = client.json("PUT", &format!("{SECRETS}/a"), Some(&a)).await;
    assert_eq!(status, 200);
    assert_eq!(rv_of(&same), rv_of(&a));
    let (_, same) = client.json("PUT", &format!("{LEASES}/l"), Some(&l)).await;
    assert_eq!(rv_of(&same), rv_of(&l));
    assert_eq!(api.counters().changes, changes);

    // A renew writes a new renewTime, which is a change.
    let mut renewed = l.clone();
    renewed["spec"]["renewTime"] = json!("2025-01-01T00:00:02.000000Z");
    let (status, renewed) = client
        .json("PUT", &format!("{LEASES}/l"), Some(&renewed))
        .await;
    assert_eq!(status, 200);
    assert_eq!(rv_of(&renewed), rv_of(&l) + 1);

    // Secrets take an update without resourceVersion; leases do not.
    let mut blind = a.clone();
    blind["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    blind["data"]["k"] = json!("Yg==");
    let (status, updated) = client
        .json("PUT", &format!("{SECRETS}/a"), Some(&blind))
        .await;
    assert_eq!(status, 200);
    assert_eq!(rv_of(&updated), api.resource_version());
    let mut blind = renewed.clone();
    blind["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let (status, body) = client
        .call("PUT", &format!("{LEASES}/l"), Some(&blind))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("Invalid value: 0x0: must be specified for an update"),
        "{body}"
    );

    // stringData is merged into data and not returned; unknown fields are dropped.
    let body = json!({"metadata": {"name": "s"}, "data": {"a": "YQ=="}, "stringData": {"b": "b"}, "bogus": 1});
    let (status, s) = client.json("POST", SECRETS, Some(&body)).await;
    assert_eq!(status, 201);
    assert_eq!(s["data"], json!({"a": "YQ==", "b": "Yg=="}));
    assert!(
        s.get("stringData").is_none() && s.get("bogus").is_none(),
        "{s}"
    );

    let (_, list) = client.json("GET", SECRETS, None).await;
    assert_eq!(list["kind"], "SecretList");
    assert_eq!(
        list["metadata"]["resourceVersion"],
        api.resource_version().to_string()
    );
    assert!(list["items"][0].get("kind").is_none());
}

#[tokio::test]
async fn watch_sees_added_modified_deleted_in_order() {
    let (_api, client) = start();
    let (_, before) = client.json("GET", SECRETS, None).await;
    let from = before["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut live = client
        .watch(&format!("{SECRETS}?watch=true&resourceVersion={from}"))
        .await;

    let (_, created) = client
        .json("POST", SECRETS, Some(&secret("w", "YQ==")))
        .await;
    let mut changed = created.clone();
    changed["data"]["k"] = json!("Yg==");
    client
        .json("PUT", &format!("{SECRETS}/w"), Some(&changed))
        .await;
    client.call("DELETE", &format!("{SECRETS}/w"), None).await;

    // The same three events, live and replayed from history.
    let mut replay = client
        .watch(&format!("{SECRETS}?watch=1&resourceVersion={from}"))
        .await;
    for watch in [&mut live, &mut replay] {
        let mut last = 0;
        for (kind, data) in [("ADDED", "YQ=="), ("MODIFIED", "Yg=="), ("DELETED", "Yg==")] {
            let event = watch.next().await;
            assert_eq!(event["type"], kind, "{event}");
            assert_eq!(event["object"]["kind"], "Secret");
            assert_eq!(event["object"]["data"]["k"], data);
            let rv = rv_of(&event["object"]);
            assert!(rv > last);
            last = rv;
        }
    }

    // resourceVersion=0: the current state as ADDED events.
    client
        .json("POST", SECRETS, Some(&secret("x", "YQ==")))
        .await;
    let mut fresh = client
        .watch(&format!("{SECRETS}?watch=true&resourceVersion=0"))
        .await;
    let event = fresh.next().await;
    assert_eq!(
        (
            event["type"].as_str(),
            event["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("x"))
    );
}

#[tokio::test]
async fn watch_filters_by_labels_as_the_cacher_does() {
    let (_api, client) = start();
    let mut w = client
        .watch(&format!(
            "{SECRETS}?watch=true&labelSelector=portico.dev%2Fkind%3Dcertificate"
        ))
        .await;
    let mut s = secret("c", "YQ==");
    client.json("POST", SECRETS, Some(&s)).await;
    s["metadata"]["labels"] = json!({"portico.dev/kind": "certificate"});
    let (_, labelled) = client.json("PUT", &format!("{SECRETS}/c"), Some(&s)).await;
    let event = w.next().await;
    assert_eq!(event["type"], "ADDED", "{event}");
    let mut unlabelled = labelled.clone();
    unlabelled["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("labels");
    let (_, after) = client
        .json("PUT", &format!("{SECRETS}/c"), Some(&unlabelled))
        .await;
    let event = w.next().await;
    assert_eq!(event["type"], "DELETED", "{event}");
    assert_eq!(rv_of(&event["object"]), rv_of(&after));
    assert_eq!(
        event["object"]["metadata"]["labels"]["portico.dev/kind"],
        "certificate"
    );
}

#[tokio::test]
async fn watch_from_before_compaction_gets_410_expired() {
    let (api, client) = start();
    let (_, a) = client
        .json("POST", SECRETS, Some(&secret("a", "YQ==")))
        .await;
    let old = rv_of(&a);
    let mut open = client
        .watch(&format!("{SECRETS}?watch=true&resourceVersion={old}"))
        .await;
    client
        .json("POST", SECRETS, Some(&secret("b", "YQ==")))
        .await;
    assert_eq!(open.next().await["type"], "ADDED");

    api.compact();
    assert!(matches!(open.next_raw().await, Next::End));
    let floor = api.resource_version();
    let mut expired = client
        .watch(&format!("{SECRETS}?watch=true&resourceVersion={old}"))
        .await;
    let event = expired.next().await;
    assert_eq!(
        event,
        json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("too old resource version: {old} ({floor})"), "reason": "Expired", "code": 410}})
    );
    assert!(matches!(expired.next_raw().await, Next::End));

    // From the current revision all is well.
    let mut current = client
        .watch(&format!("{SECRETS}?watch=true&resourceVersion={floor}"))
        .await;
    client
        .json("POST", SECRETS, Some(&secret("c", "YQ==")))
        .await;
    assert_eq!(current.next().await["object"]["metadata"]["name"], "c");

    // timeoutSeconds ends the stream.
    let mut short = client
        .watch(&format!(
            "{SECRETS}?watch=true&resourceVersion={floor}&timeoutSeconds=1"
        ))
        .await;
    assert_eq!(short.next().await["object"]["metadata"]["name"], "c");
    assert!(matches!(short.next_raw().await, Next::End));
}

#[test]
fn the_fake_can_be_shared_between_threads_and_tasks() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<FakeApi>();
}

#[tokio::test]
async fn writes_from_the_test_look_like_another_writer() {
    let (api, client) = start();
    let (_, created) = client
        .json("POST", SECRETS, Some(&secret("s", "YQ==")))
        .await;
    let mut w = client
        .watch(&format!(
            "{SECRETS}?watch=true&resourceVersion={}",
            rv_of(&created)
        ))
        .await;
    let mut changed = created.clone();
    changed["data"]["k"] = json!("Yg==");
    let updated = api
        .update(Resource::Secrets, "ns", changed.clone())
        .unwrap();
    assert_eq!(w.next().await["type"], "MODIFIED");
    // The same stale write again is a Conflict, as for any client.
    let refused = api.update(Resource::Secrets, "ns", changed).unwrap_err();
    assert!(refused.contains(r#""reason":"Conflict""#), "{refused}");
    assert!(api.delete(Resource::Secrets, "ns", "s"));
    assert_eq!(w.next().await["type"], "DELETED");
    assert!(!api.delete(Resource::Secrets, "ns", "s"));
    assert_eq!(rv_of(&updated) + 1, api.resource_version());
}

#[tokio::test]
async fn a_lost_write_response_still_writes() {
    let (api, client) = start();
    api.lose_next_write_response();
    let result = client
        .try_call("POST", SECRETS, Some(&secret("lost", "YQ==")))
        .await;
    assert!(result.is_err(), "{result:?}");
    assert!(api.get(Resource::Secrets, "ns", "lost").is_some());
    let (status, _) = client
        .call("POST", SECRETS, Some(&secret("lost", "YQ==")))
        .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn injected_failures_latency_and_cut_off() {
    let (api, client) = start();
    api.fail_next(2, 503);
    for _ in 0..2 {
        let (status, body) = client.json("GET", SECRETS, None).await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (503, Some("ServiceUnavailable"))
        );
    }
    assert_eq!(client.call("GET", SECRETS, None).await.0, 200);

    api.fail_next_writes(1, 500);
    assert_eq!(client.call("GET", SECRETS, None).await.0, 200);
    let (status, body) = client
        .json("POST", SECRETS, Some(&secret("a", "YQ==")))
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (500, Some("InternalError"))
    );
    assert!(api.get(Resource::Secrets, "ns", "a").is_none());

    api.set_latency(Duration::from_millis(50));
    assert_eq!(client.call("GET", SECRETS, None).await.0, 200);
    api.set_latency(Duration::ZERO);

    api.add_token("other");
    let other = Client::new(&api, "other");
    let mut watch = client.watch(&format!("{SECRETS}?watch=true")).await;
    let mut other_watch = other.watch(&format!("{SECRETS}?watch=true")).await;
    api.cut_off("t", true);
    assert!(matches!(watch.next_raw().await, Next::Cut));
    assert!(client.try_call("GET", SECRETS, None).await.is_err());
    other
        .call("POST", SECRETS, Some(&secret("b", "YQ==")))
        .await;
    assert_eq!(other_watch.next().await["object"]["metadata"]["name"], "b");
    api.cut_off("t", false);
    assert_eq!(client.call("GET", SECRETS, None).await.0, 200);
}

#[tokio::test]
async fn down_then_up_again_keeps_the_state() {
    let (api, client) = start();
    client
        .json("POST", SECRETS, Some(&secret("kept", "YQ==")))
        .await;
    let mut watch = client.watch(&format!("{SECRETS}?watch=true")).await;
    assert_eq!(watch.next().await["type"], "ADDED");

    api.set_down(true);
    assert!(matches!(watch.next_raw().await, Next::Cut | Next::End));
    assert!(client.try_call("GET", SECRETS, None).await.is_err());

    api.set_down(false);
    let (status, obj) = client.json("GET", &format!("{SECRETS}/kept"), None).await;
    assert_eq!(status, 200);
    assert_eq!(obj["data"]["k"], "YQ==");
}

#[tokio::test]
async fn patch_merges_and_checks_the_resource_version() {
    let (_api, client) = start();
    let (_, created) = client
        .json("POST", SECRETS, Some(&secret("p", "YQ==")))
        .await;
    let patch = json!({"metadata": {"labels": {"a": "b"}}});
    let send = async |p: &Value| {
        let mut send = client.connect().await.unwrap();
        let req = hyper::Request::builder()
            .method("PATCH")
            .uri(format!("{SECRETS}/p"))
            .header("host", "x")
            .header("authorization", "Bearer t")
            .header("content-type", "application/merge-patch+json")
            .body(Full::new(Bytes::from(p.to_string())))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice::<Value>(&body).unwrap())
    };
    let (status, patched) = send(&patch).await;
    assert_eq!(status, 200);
    assert_eq!(patched["metadata"]["labels"]["a"], "b");
    assert_eq!(patched["data"]["k"], "YQ==");
    let stale = json!({"metadata": {"resourceVersion": created["metadata"]["resourceVersion"], "labels": {"a": "c"}}});
    let (status, body) = send(&stale).await;
    assert_eq!((status, body["reason"].as_str()), (409, Some("Conflict")));
}

#[tokio::test]
async fn rbac_refuses_what_the_rules_leave_out() {
    let api = FakeApi::start().await;
    api.add_token("t");
    // portico's Role (config/kubernetes/role.yaml).
    api.set_rbac(
        "t",
        "system:serviceaccount:ns:portico",
        "ns",
        &[
            (
                Resource::Secrets,
                &["get", "list", "watch", "create", "update", "delete"],
            ),
            (Resource::Leases, &["get", "create", "update"]),
        ],
    );
    let client = Client::new(&api, "t");
    assert_eq!(
        client
            .call("POST", SECRETS, Some(&secret("a", "YQ==")))
            .await
            .0,
        201
    );
    let (status, body) = client.call("GET", LEASES, None).await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"leases.coordination.k8s.io is forbidden: User \"system:serviceaccount:ns:portico\" cannot list resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"ns\"","reason":"Forbidden","details":{"group":"coordination.k8s.io","kind":"leases"},"code":403}"#
    );
    let (status, body) = client.call("DELETE", &format!("{LEASES}/l"), None).await;
    assert_eq!(status, 403);
    assert!(
        body.contains(r#""message":"leases.coordination.k8s.io \"l\" is forbidden: User \"system:serviceaccount:ns:portico\" cannot delete resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"ns\"""#),
        "{body}"
    );
    let (status, _) = client
        .call("GET", "/api/v1/secrets?watch=true&timeoutSeconds=1", None)
        .await;
    assert_eq!(status, 403, "cluster-wide watch");
    let (status, _) = client
        .call("GET", "/api/v1/namespaces/other/secrets", None)
        .await;
    assert_eq!(status, 403, "another namespace");
}

#[tokio::test]
async fn leases_are_created_by_put_and_paged_lists_continue() {
    let (_api, client) = start();
    let lease = json!({"metadata": {"name": "new", "resourceVersion": "12345"}, "spec": {"holderIdentity": ""}});
    let (status, created) = client
        .json("PUT", &format!("{LEASES}/new"), Some(&lease))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["spec"]["holderIdentity"], "");
    let (status, _) = client
        .call(
            "PUT",
            &format!("{SECRETS}/new"),
            Some(&secret("new", "YQ==")),
        )
        .await;
    assert_eq!(status, 404);

    for name in ["a", "b", "c"] {
        client
            .json("POST", SECRETS, Some(&secret(name, "YQ==")))
            .await;
    }
    let (_, page) = client
        .json("GET", &format!("{SECRETS}?limit=2"), None)
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["metadata"]["remainingItemCount"], 1);
    let token = page["metadata"]["continue"].as_str().unwrap();
    let (_, rest) = client
        .json("GET", &format!("{SECRETS}?limit=2&continue={token}"), None)
        .await;
    assert_eq!(rest["items"][0]["metadata"]["name"], "c");
    assert!(rest["metadata"].get("continue").is_none());

    let generated = json!({"metadata": {"generateName": "portico-"}, "data": {}});
    let (status, obj) = client.json("POST", SECRETS, Some(&generated)).await;
    assert_eq!(status, 201);
    let name = obj["metadata"]["name"].as_str().unwrap();
    assert!(
        name.starts_with("portico-") && name.len() == "portico-".len() + 5,
        "{name}"
    );
}

#[tokio::test]
async fn watch_one_object_bookmarks_and_initial_events() {
    let (api, client) = start();
    client
        .json("POST", SECRETS, Some(&secret("one", "YQ==")))
        .await;
    client
        .json("POST", SECRETS, Some(&secret("two", "YQ==")))
        .await;
    let mut one = client
        .watch(&format!(
            "{SECRETS}?watch=true&fieldSelector=metadata.name%3Done&allowWatchBookmarks=true"
        ))
        .await;
    assert_eq!(one.next().await["object"]["metadata"]["name"], "one");
    client.call("DELETE", &format!("{SECRETS}/two"), None).await;
    client.call("DELETE", &format!("{SECRETS}/one"), None).await;
    let event = one.next().await;
    assert_eq!(
        (
            event["type"].as_str(),
            event["object"]["metadata"]["name"].as_str()
        ),
        (Some("DELETED"), Some("one"))
    );
    api.bookmark();
    let event = one.next().await;
    assert_eq!(event["type"], "BOOKMARK");
    assert_eq!(rv_of(&event["object"]), api.resource_version());

    client
        .json("POST", SECRETS, Some(&secret("three", "YQ==")))
        .await;
    let mut streaming = client
        .watch(&format!(
            "{SECRETS}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
        ))
        .await;
    assert_eq!(
        streaming.next().await["object"]["metadata"]["name"],
        "three"
    );
    let end = streaming.next().await;
    assert_eq!(end["type"], "BOOKMARK");
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
}

#[tokio::test]
async fn bodies_are_decoded_as_the_real_serializer_does() {
    use common::kube_api::{base64_decode, base64_encode};
    for bytes in [&b""[..], b"a", b"ab", b"abc", b"\x00\xff\xfe\x80"] {
        assert_eq!(base64_decode(&base64_encode(bytes)).unwrap(), bytes);
    }
    assert!(base64_decode("YQ=x").is_err() && base64_decode("Y!==").is_err());

    let (_api, client) = start();
    let (status, body) = client
        .json("POST", SECRETS, Some(&secret("b", "not base64!")))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["reason"], "BadRequest");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at input byte"),
        "{body}"
    );
    let lease = json!({"metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": "15"}});
    let (status, body) = client.json("POST", LEASES, Some(&lease)).await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().starts_with("Lease in version \"v1\" cannot be handled as a Lease: json: cannot unmarshal string into Go struct field LeaseSpec.spec.leaseDurationSeconds of type int32"),
        "{body}"
    );
    let strict = json!({"metadata": {"name": "l"}, "spec": {"holder": "x"}});
    let (status, body) = client
        .json(
            "POST",
            &format!("{LEASES}?fieldValidation=Strict"),
            Some(&strict),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .ends_with("strict decoding error: unknown field \"spec.holder\""),
        "{body}"
    );
}
