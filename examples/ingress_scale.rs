//! Ingresses at scale, against the real API server (`scripts/bench --ingress-only` runs
//! it; not a test: it measures and reports, it asserts only that things work).
//!
//! INGRESSES Ingresses (default 1,000), each a host routed to one Service whose
//! EndpointSlices hold ENDPOINTS endpoints (default 5,000, in slices of 100), in one
//! namespace; then the release `portico` binary with `[kubernetes]` for them. Reported:
//! - time from the process start to `/readyz` 200 (every kind listed, the sites applied);
//! - the process's RSS once ready and its certificates issued (the local CA: the hosts
//!   are `.internal`), and per site;
//! - the time from an Ingress change (`kubectl patch` returned) to the first request
//!   served by the new route, over CHANGES rounds (default 100), median and worst;
//! - the RSS after those rounds, against the RSS before them.
//!
//! Needs PORTICO_PEERS (scripts/peers) and `cargo build --release --bin portico
//! --example ingress_scale`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portico_test_support as common;

use common::pebble::free_port;
use serde_json::json;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn readyz(admin: SocketAddr) -> bool {
    if tokio::net::TcpStream::connect(admin).await.is_err() {
        return false;
    }
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        common::edge::plain_get(admin, "localhost", "/readyz"),
    )
    .await;
    matches!(answer, Ok((200, _, _)))
}

fn main() {
    let ingresses = env("INGRESSES", 1000);
    let endpoints = env("ENDPOINTS", 5000);
    let changes = env("CHANGES", 100);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(run(ingresses, endpoints, changes));
}

async fn run(ingresses: usize, endpoints: usize, changes: usize) {
    common::edge::install_provider();
    let plane = common::control_plane::control_plane();
    let ns = plane.namespace("scale");
    let class = format!("portico-{}", ns.name);
    let ip = common::host_ip();
    let (web, _) = common::backend_at(ip, "web", common::Proto::Http1).await;
    let (live, _) = common::backend_at(ip, "live", common::Proto::Http1).await;
    let (live2, _) = common::backend_at(ip, "live2", common::Proto::Http1).await;

    let started = Instant::now();
    let mut objects = vec![
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": class},
               "spec": {"controller": "portico.dev/ingress-controller"}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns.name},
               "spec": {"ports": [{"port": 80}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "live", "namespace": ns.name},
               "spec": {"ports": [{"port": 80}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "live-1", "namespace": ns.name, "labels": {"kubernetes.io/service-name": "live"}},
               "addressType": "IPv4", "ports": [{"name": "", "port": live.port()}],
               "endpoints": [{"addresses": [ip.to_string()]}]}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "live2", "namespace": ns.name},
               "spec": {"ports": [{"port": 80}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "live2-1", "namespace": ns.name, "labels": {"kubernetes.io/service-name": "live2"}},
               "addressType": "IPv4", "ports": [{"name": "", "port": live2.port()}],
               "endpoints": [{"addresses": [ip.to_string()]}]}),
    ];
    // `web`'s endpoints are made-up addresses in 10.0.0.0/8: they are the size of the
    // cluster's data, never connected to (the measured requests go to `live` and
    // `live2`, one real upstream each).
    for slice in 0..endpoints.div_ceil(100) {
        let addresses: Vec<_> = (0..100.min(endpoints - slice * 100))
            .map(|i| {
                let n = slice * 100 + i;
                json!({"addresses": [format!("10.{}.{}.{}", n / 62500 % 250 + 1, n / 250 % 250 + 1, n % 250 + 1)],
                       "conditions": {"ready": true}})
            })
            .collect();
        objects.push(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("web-{slice}"), "namespace": ns.name, "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "", "port": web.port()}], "endpoints": addresses}));
    }
    for i in 0..ingresses {
        objects.push(json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": format!("app-{i}"), "namespace": ns.name},
            "spec": {"ingressClassName": class, "rules": [{"host": format!("app-{i}.scale.internal"), "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}));
    }
    for chunk in objects.chunks(500) {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": chunk});
        plane.kubectl(&["create", "-f", "-"], list.to_string().as_bytes());
    }
    println!(
        "created {ingresses} Ingresses and {endpoints} endpoints in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir().unwrap();
    let (http, https, admin) = (free_port(), free_port(), free_port());
    let config = dir.path().join("portico.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = \"127.0.0.1:{http}\"\nhttps = \"127.0.0.1:{https}\"\nadmin = \"127.0.0.1:{admin}\"\n[storage]\npath = \"data\"\n[kubernetes]\ningress_class = \"{class}\"\nnamespaces = [\"{}\"]\n",
            ns.name
        ),
    )
    .unwrap();
    let start = Instant::now();
    let mut child = common::portico()
        .args(["run", "--config", config.to_str().unwrap()])
        .current_dir(dir.path())
        .env("KUBECONFIG", plane.admin_kubeconfig())
        .env("RUST_LOG", "warn")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let https: SocketAddr = format!("127.0.0.1:{https}").parse().unwrap();
    while !readyz(admin).await {
        assert!(start.elapsed() < Duration::from_secs(300), "not ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready = start.elapsed();
    println!(
        "ready (every kind listed, {ingresses} sites applied): {:.2} s",
        ready.as_secs_f64()
    );

    // Every host's certificate from the local CA: the last host answers.
    let root_path = dir.path().join("data/ca/root.pem");
    let last = format!("app-{}.scale.internal", ingresses - 1);
    let issued = loop {
        if let Ok(root) = std::fs::read(&root_path)
            && let Ok(tls) = common::edge::tls_connect(
                https,
                &last,
                common::edge::client_config(&[&root], &[b"h2"]),
            )
            .await
        {
            drop(tls);
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "no certificate for {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let root = std::fs::read(&root_path).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_synced = rss_kib(child.id());
    println!(
        "every certificate issued: {:.2} s; RSS {:.1} MiB ({:.1} KiB per site)",
        issued.as_secs_f64(),
        rss_synced as f64 / 1024.0,
        rss_synced as f64 / ingresses as f64
    );

    // Route changes: app-0 between live and live2; time to the first answer from the new
    // backend, on a fresh connection per try (a client that keeps one would do as well).
    let mut latencies = Vec::with_capacity(changes);
    let mut rss_first = 0;
    for round in 0..changes {
        let to = if round % 2 == 0 { "live" } else { "live2" };
        let patch = json!({"spec": {"rules": [{"host": "app-0.scale.internal", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": to, "port": {"number": 80}}}}]}}]}});
        plane.kubectl(
            &[
                "patch",
                "ingress",
                "app-0",
                "-n",
                &ns.name,
                "--type=merge",
                "-p",
                &patch.to_string(),
            ],
            b"",
        );
        let changed = Instant::now();
        let mut send = common::edge::h2(https, "app-0.scale.internal", &root).await;
        loop {
            let (status, body) = common::edge::get_h2(&mut send, "app-0.scale.internal", "/").await;
            let from = body.lines().find_map(|l| l.strip_prefix("backend: "));
            if status == 200 && from == Some(to) {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(30),
                "round {round}: still {status}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(changed.elapsed());
        if round == 0 {
            rss_first = rss_kib(child.id());
        }
    }
    latencies.sort();
    let rss_after = rss_kib(child.id());
    println!(
        "Ingress change to first request on the new route, {changes} rounds: median {:.0} ms, worst {:.0} ms",
        latencies[latencies.len() / 2].as_secs_f64() * 1000.0,
        latencies[latencies.len() - 1].as_secs_f64() * 1000.0
    );
    println!(
        "RSS after the first change {:.1} MiB, after {changes}: {:.1} MiB",
        rss_first as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
