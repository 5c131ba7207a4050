//! Several replicas behind one load balancer: portico instances on 127.0.0.2, .3 and .4
//! (same ports, as pods behind a Service), sharing one fake Kubernetes API server (each
//! with its own token) and one Pebble. Pebble's DNS answer is a replica that does not hold
//! the issuance Lease, so the CA's validation reaches a replica that must find the token
//! in the shared store.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use common::edge::{self, Portico, client_config, install_provider, start_with, tls_connect};
use common::kube_api::{FakeApi, Resource};
use common::pebble::{Pebble, PebbleConfig, free_port};
use portico::acme::manager::Tuning;
use portico::config::Config;
use portico::store::KubeStore;

const NS: &str = "portico";
const HOST: &str = "shared.example.test";

fn quick() -> Tuning {
    Tuning {
        backoff: vec![Duration::from_millis(300), Duration::from_secs(1)],
        ..Tuning::default()
    }
}

/// The shared world: the API server, the CA, and the ports every replica uses.
struct World {
    api: FakeApi,
    pebble: Pebble,
    http: u16,
    https: u16,
    dir: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        install_provider();
        // One port pair for every replica address, as pods share the Service's ports.
        let (http, https) = (free_port(), free_port());
        let pebble = Pebble::start(PebbleConfig::new(http, https)).await;
        World {
            api: FakeApi::start().await,
            pebble,
            http,
            https,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self, ip: Ipv4Addr, sites: &str) -> Config {
        let text = format!(
            "[listen]\nhttp = \"{ip}:{http}\"\nhttps = \"{ip}:{https}\"\nadmin = \"127.0.0.1:0\"\n\
             [storage]\nbackend = \"kubernetes\"\nnamespace = \"{NS}\"\n\
             [acme]\nemail = \"ops@example.test\"\ndirectory = \"{dir}\"\nca_root = \"{root}\"\nchallenge = \"http-01\"\n{sites}",
            http = self.http,
            https = self.https,
            dir = self.pebble.directory_url(),
            root = self.pebble.ca_root_path().display(),
        );
        let path = self.dir.path().join(format!("portico-{ip}.toml"));
        std::fs::write(&path, &text).unwrap();
        Config::load(&path).unwrap()
    }

    /// Replica `n` on 127.0.0.`n`, with its own token and pod name.
    async fn replica(&self, n: u8, sites: &str) -> Portico {
        let ip = Ipv4Addr::new(127, 0, 0, n);
        let token = format!("token-replica-{n}");
        self.api.add_token(&token);
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = self.api.kubeconfig(dir.path(), NS, &token);
        let store = Arc::new(
            KubeStore::from_kubeconfig(&kubeconfig, Some(NS.into()))
                .await
                .unwrap()
                .with_pod_name(format!("replica-{n}")),
        );
        start_with(dir, self.config(ip, sites), store.clone(), store, quick()).await
    }

    /// The issuance Lease's holder identity, once someone holds it.
    fn lease_holder(&self) -> Option<String> {
        self.api
            .objects(Resource::Leases, NS)
            .into_iter()
            .filter(|l| {
                l["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("portico-acme-") && !n.contains("account"))
            })
            .find_map(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
            .filter(|h| !h.is_empty())
    }
}

fn site(body: &str) -> String {
    format!(
        "[[site]]\nhosts = [\"{HOST}\"]\ntls = \"acme\"\n[[site.route]]\npath = \"/\"\nrespond = {{ status = 200, body = \"{body}\" }}\n"
    )
}

/// The leaf `p` serves for `HOST`, once it serves one that verifies against `roots`.
async fn served_leaf(p: &Portico, roots: &[u8]) -> Vec<u8> {
    let config = client_config(&[roots], &[b"h2"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(tls) = tls_connect(p.https, HOST, config.clone()).await {
            return edge::leaf(&tls);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} serves no certificate for {HOST}; last error: {:?}",
            p.https,
            p.certs.acme_last_error(HOST)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_orders_all_serve_and_restarts_order_nothing() {
    let world = World::start().await;
    // Two replicas race for the Lease; the CA is sent to the third, which starts once
    // the Lease is taken and so cannot hold it.
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

    // DESIGN's objects: the certificate Secret, no token left behind.
    let secrets = world.api.objects(Resource::Secrets, NS);
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
