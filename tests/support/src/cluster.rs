//! A `portico run` replica against the test control plane, signed in as one identity,
//! with `[kubernetes]` for the test's namespace, and the objects the cluster tests write
//! (Services, EndpointSlices). Shared by the Ingress and Gateway API tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Bound;
use crate::control_plane::Namespace;
use crate::edge::{H2, get_h2};

pub fn service(name: &str, ports: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"ports": ports},
    })
}

/// An EndpointSlice of Service `service` with one named port and these upstreams
/// (ready or not).
pub fn slice(
    name: &str,
    service: &str,
    port_name: &str,
    endpoints: &[(SocketAddr, bool)],
) -> Value {
    let port = endpoints.first().map_or(1, |(a, _)| a.port());
    assert!(
        endpoints.iter().all(|(a, _)| a.port() == port),
        "one port per slice"
    );
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|(a, ready)| json!({
            "addresses": [a.ip().to_string()],
            "conditions": {"ready": ready},
        })).collect::<Vec<_>>(),
    })
}

/// Replaces an object as the admin (`kubectl replace`).
pub fn replace(ns: &Namespace, object: Value) {
    ns.plane().kubectl(
        &["replace", "-n", &ns.name, "-f", "-"],
        object.to_string().as_bytes(),
    );
}

pub struct Replica {
    pub child: Child,
    pub dir: PathBuf,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

impl Replica {
    /// `portico run` with `[kubernetes]` for the test's class and namespace, the file
    /// backend in a temp folder, and `toml` (sites) after it.
    pub async fn start(ns: &Namespace, dir: &Path, who: &str, toml: &str) -> Replica {
        Replica::start_with(ns, dir, who, "", toml).await
    }

    /// A replica that serves the Gateways of GatewayClass [`Namespace::gateway_class`]
    /// (and no Ingresses), with more `[kubernetes]` keys and `toml` after them.
    pub async fn gateway(
        ns: &Namespace,
        dir: &Path,
        who: &str,
        kubernetes: &str,
        toml: &str,
    ) -> Replica {
        let kubeconfig = ns.kubeconfig(dir, who);
        let keys = format!("gateway_class = \"{}\"\n{kubernetes}", ns.gateway_class());
        Replica::start_full(ns, dir, who, &kubeconfig, &keys, toml).await
    }

    /// [`Replica::start`] with more `[kubernetes]` keys.
    pub async fn start_with(
        ns: &Namespace,
        dir: &Path,
        who: &str,
        kubernetes: &str,
        toml: &str,
    ) -> Replica {
        let kubeconfig = ns.kubeconfig(dir, who);
        Replica::start_ingress(ns, dir, who, &kubeconfig, kubernetes, toml).await
    }

    /// [`Replica::start_with`] signed in with `kubeconfig`.
    pub async fn start_ingress(
        ns: &Namespace,
        dir: &Path,
        who: &str,
        kubeconfig: &Path,
        kubernetes: &str,
        toml: &str,
    ) -> Replica {
        let keys = format!("ingress_class = \"{}\"\n{kubernetes}", ns.ingress_class());
        Replica::start_full(ns, dir, who, kubeconfig, &keys, toml).await
    }

    /// `portico run` with `[kubernetes]` keys `kubernetes` (and `namespaces`, the
    /// test's, unless they name it) and `toml` after them, signed in with `kubeconfig`.
    pub async fn start_full(
        ns: &Namespace,
        dir: &Path,
        who: &str,
        kubeconfig: &Path,
        kubernetes: &str,
        toml: &str,
    ) -> Replica {
        // One file per replica: replicas of one test may share the folder (and with it
        // the file store and its locks).
        let config = dir.join(format!("portico-{who}.toml"));
        // The test's namespace, unless the keys name others.
        let namespaces = if kubernetes.contains("namespaces =") {
            String::new()
        } else {
            format!("namespaces = [\"{}\"]\n", ns.name)
        };
        std::fs::write(
            &config,
            format!(
                "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[storage]\npath = \"data\"\n[kubernetes]\n{namespaces}{kubernetes}{toml}",
            ),
        )
        .unwrap();
        let mut child = crate::portico()
            .args(["run", "--config", config.to_str().unwrap()])
            .current_dir(dir)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = crate::collect_stderr(&mut child);
        let bound = Bound::wait_async(&mut child, || log.lock().unwrap().clone()).await;
        Replica {
            child,
            dir: dir.to_path_buf(),
            http: bound.http,
            https: bound.https,
            admin: bound.admin.expect("the config sets listen.admin"),
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if readyz(self.admin).await == Some(200) {
                return;
            }
            assert!(Instant::now() < deadline, "not ready; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn root(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("data/ca/root.pem")).unwrap()
    }

    pub async fn h2(&self, host: &str) -> H2 {
        crate::edge::h2(self.https, host, &self.root()).await
    }

    /// Asks `host` for `path` on a new connection until `want` holds of the answer.
    pub async fn until(
        &self,
        host: &str,
        path: &str,
        want: impl Fn(u16, &str) -> bool,
    ) -> (u16, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The local CA may not exist yet either.
            let root = std::fs::read(self.dir.join("data/ca/root.pem")).unwrap_or_default();
            let config = crate::edge::client_config(&[&root], &[b"h2"]);
            let (status, body) = match crate::edge::tls_connect(self.https, host, config).await {
                Ok(tls) => {
                    let mut send = crate::edge::h2_over(tls).await;
                    get_h2(&mut send, host, path).await
                }
                // No certificate for the name yet.
                Err(e) => (0, e.to_string()),
            };
            if want(status, &body) {
                return (status, body);
            }
            assert!(
                Instant::now() < deadline,
                "{host}{path}: still {status} {body}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

pub async fn readyz(admin: SocketAddr) -> Option<u16> {
    // Not listening yet (the process is starting).
    tokio::net::TcpStream::connect(admin).await.ok()?;
    let (status, _, _) = tokio::time::timeout(
        Duration::from_secs(2),
        crate::edge::plain_get(admin, "localhost", "/readyz"),
    )
    .await
    .ok()?;
    Some(status)
}

pub fn backend_of(body: &str) -> &str {
    body.lines()
        .find_map(|l| l.strip_prefix("backend: "))
        .unwrap_or("")
}

/// A `kubernetes.io/tls` Secret `name` with a new self-signed certificate for `names`,
/// and that certificate's PEM (its own root).
pub fn tls_secret(name: &str, names: &[&str]) -> (Value, String) {
    let (cert, key) = crate::self_signed(names);
    let object = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": crate::base64_encode(&cert), "tls.key": crate::base64_encode(&key)},
    });
    (object, cert)
}

/// The leaf a handshake for `host` presents, trusting `root` (PEM), or the error.
pub async fn leaf(replica: &Replica, host: &str, root: &str) -> Result<Vec<u8>, String> {
    let config = crate::edge::client_config(&[root.as_bytes()], &[b"h2"]);
    crate::edge::tls_connect(replica.https, host, config)
        .await
        .map(|tls| crate::edge::leaf(&tls))
        .map_err(|e| e.to_string())
}

/// A LoadBalancer Service `name` (port 443) whose status gives it the address `ip`, as
/// a cloud's controller would: what `publish_service` names.
pub fn published_service(ns: &Namespace, name: &str, ip: &str) {
    let mut published = service(name, json!([{"port": 443}]));
    published["spec"]["type"] = json!("LoadBalancer");
    ns.create(published);
    ns.plane().kubectl(
        &[
            "patch",
            "service",
            name,
            "-n",
            &ns.name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}).to_string(),
        ],
        b"",
    );
}
