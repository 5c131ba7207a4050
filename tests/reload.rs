//! Live config reload through the whole server: under continuous load, a reload adds a
//! site, moves another to a new upstream and removes a third, and not one request of the
//! site that stays fails. Refused configs keep the running one; a ConfigMap-style
//! `..data` symlink swap is picked up without a signal; a request in flight finishes on
//! the upstream it started with.

use portico_test_support as common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::edge::{self, Portico, client_config, install_provider, tls_connect};
use common::{Proto, backend, backend_counted};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// How long any expected effect may take before the test fails; effects are awaited,
/// never timed.
const GUARD: Duration = Duration::from_secs(30);

fn proxied(host: &str, upstream: SocketAddr) -> String {
    format!("[[site]]\nhosts = [\"{host}\"]\nupstreams = [\"{upstream}\"]\n\n")
}

fn responding(host: &str, body: &str) -> String {
    format!(
        "[[site]]\nhosts = [\"{host}\"]\n[[site.route]]\npath = \"/\"\nrespond = {{ status = 200, body = \"{body}\" }}\n\n"
    )
}

/// Replaces the config file of `p` with the standard header and `sites`, atomically
/// (temporary file + rename), as editors and deploy tools do.
fn rewrite(p: &Portico, sites: &str) -> String {
    let text = format!("{}{sites}", edge::header(p.dir.path()));
    let tmp = p.dir.path().join(".portico.toml.tmp");
    std::fs::write(&tmp, &text).unwrap();
    std::fs::rename(&tmp, p.dir.path().join("portico.toml")).unwrap();
    text
}

/// One GET over an established connection, never panicking.
async fn try_get_h2(
    send: &mut edge::H2,
    authority: &str,
    path: &str,
) -> Result<(u16, String), String> {
    let req = hyper::Request::get(format!("https://{authority}{path}"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One GET of `path` on a new TLS connection for `name` (h2), never panicking.
async fn fresh_get(
    addr: SocketAddr,
    name: &str,
    root: &[u8],
    path: &str,
) -> Result<(u16, String), String> {
    let tls = tls_connect(addr, name, client_config(&[root], &[b"h2"]))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    try_get_h2(&mut send, name, path).await
}

/// Waits until `probe` returns `Some`, failing the test after [`GUARD`].
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + GUARD;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(Instant::now() < deadline, "{what}: still {last}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the load clients saw of site A.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    ok: AtomicU64,
    /// Answers from the backend A moved to.
    moved: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Load {
    fn record(&self, result: Result<(u16, String), String>) {
        match result {
            Ok((200, body)) if body.contains("backend: one") => {
                self.ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok((200, body)) if body.contains("backend: two") => {
                self.ok.fetch_add(1, Ordering::SeqCst);
                self.moved.fetch_add(1, Ordering::SeqCst);
            }
            other => self.failures.lock().unwrap().push(format!("{other:?}")),
        }
    }

    async fn until(&self, what: &str, done: impl Fn(&Load) -> bool) {
        eventually(what, || async {
            if done(self) {
                Ok(())
            } else {
                Err(format!(
                    "{} ok, {} failed",
                    self.ok.load(Ordering::SeqCst),
                    self.failures.lock().unwrap().len()
                ))
            }
        })
        .await
    }
}

/// Requests to a.internal in a loop: `fresh` opens a new TLS connection (a handshake
/// through the resolver) for every request, else one HTTP/2 connection carries them all.
fn spawn_client(p: &Portico, load: Arc<Load>, fresh: bool) -> tokio::task::JoinHandle<()> {
    let (addr, root) = (p.https, p.root_pem());
    tokio::spawn(async move {
        let mut conn = None;
        while !load.stop.load(Ordering::SeqCst) {
            let result = if fresh {
                fresh_get(addr, "a.internal", &root, "/").await
            } else {
                if conn.is_none() {
                    conn = Some(edge::h2(addr, "a.internal", &root).await);
                }
                try_get_h2(conn.as_mut().unwrap(), "a.internal", "/").await
            };
            load.record(result);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_a_reload_adds_moves_and_removes_sites_and_no_request_of_a_fails() {
    install_provider();
    let one = backend("one", Proto::Http1).await;
    let two = backend("two", Proto::Http1).await;
    let p = edge::start(&format!(
        "{}{}",
        proxied("a.internal", one),
        responding("c.internal", "c")
    ))
    .await;
    let root = p.root_pem();
    // An open connection to the site about to go.
    let mut c_conn = edge::h2(p.https, "c.internal", &root).await;
    assert_eq!(
        edge::get_h2(&mut c_conn, "c.internal", "/").await,
        (200, "c".into())
    );

    let load = Arc::new(Load::default());
    let clients: Vec<_> = [false, false, true, true]
        .into_iter()
        .map(|fresh| spawn_client(&p, load.clone(), fresh))
        .collect();
    load.until("load before the reload", |l| {
        l.ok.load(Ordering::SeqCst) >= 100
    })
    .await;

    rewrite(
        &p,
        &format!(
            "{}{}",
            proxied("a.internal", two),
            proxied("b.internal", one)
        ),
    );
    let outcome = p
        .reloader
        .reload_now()
        .await
        .expect("the new config is valid");
    assert_eq!(outcome.added, ["b.internal"]);
    assert_eq!(outcome.removed, ["c.internal"]);
    assert_eq!(outcome.changed, ["a.internal"]);
    assert!(outcome.needs_restart.is_empty() && outcome.applied);

    // (c) The removed site's name fails the handshake like an unknown one, and its open
    // connection is told to go elsewhere.
    let refused = tls_connect(p.https, "c.internal", client_config(&[&root], &[b"h2"])).await;
    assert!(refused.is_err(), "c.internal still handshakes");
    assert_eq!(edge::get_h2(&mut c_conn, "c.internal", "/").await.0, 421);

    // (a) The new site gets a certificate the local CA's root verifies, and is served.
    let (status, body) = eventually("b.internal served", || {
        fresh_get(p.https, "b.internal", &root, "/")
    })
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("backend: one"), "{body}");

    // (b) A's next requests reach its new upstream.
    load.until("a.internal on its new upstream", |l| {
        l.moved.load(Ordering::SeqCst) >= 20
    })
    .await;
    let (status, body) = fresh_get(p.https, "a.internal", &root, "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("backend: two"), "{body}");

    // More reloads in a row under the same load, each moving A and adding or removing
    // B, with some of A's requests answered between any two.
    let mut slowest = Duration::ZERO;
    for round in 0..10 {
        let sites = if round % 2 == 0 {
            proxied("a.internal", one)
        } else {
            format!(
                "{}{}",
                proxied("a.internal", two),
                proxied("b.internal", one)
            )
        };
        rewrite(&p, &sites);
        let started = Instant::now();
        let outcome = p.reloader.reload_now().await.unwrap();
        slowest = slowest.max(started.elapsed());
        assert_eq!(outcome.changed, ["a.internal"]);
        let before = load.ok.load(Ordering::SeqCst);
        load.until("load between reloads", |l| {
            l.ok.load(Ordering::SeqCst) >= before + 20
        })
        .await;
    }
    load.stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    let failures = load.failures.lock().unwrap();
    eprintln!(
        "a.internal under 11 reloads: {} requests ok, {} failed; slowest reload_now {slowest:?}",
        load.ok.load(Ordering::SeqCst),
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(p.metrics.config_reloads(true), 11);
    assert_eq!(p.metrics.config_reloads(false), 0);
}

/// The 1-based line of the first line of `text` starting with `start`.
fn line_of(text: &str, start: &str) -> usize {
    text.lines().position(|l| l.starts_with(start)).unwrap() + 1
}

#[tokio::test]
async fn a_refused_config_keeps_the_running_one_and_names_file_line_and_key() {
    install_provider();
    let one = backend("one", Proto::Http1).await;
    let two = backend("two", Proto::Http1).await;
    let p = edge::start(&proxied("a.internal", one)).await;
    let file = p.dir.path().join("portico.toml");

    let text = rewrite(
        &p,
        &format!("{}\nbogus = 1\n", proxied("a.internal", two).trim_end()),
    );
    let err = p.reloader.reload_now().await.unwrap_err();
    let expected = format!(
        "{}:{}: site[0].bogus",
        file.display(),
        line_of(&text, "bogus")
    );
    assert!(err.to_string().starts_with(&expected), "{err}");
    assert!(err.to_string().contains("unknown field"), "{err}");

    let text = rewrite(
        &p,
        "[[site]]\nhosts = [\"a.internal\"]\nupstreams = [\"nowhere\"]\n",
    );
    let err = p.reloader.reload_now().await.unwrap_err();
    let expected = format!(
        "{}:{}: site[0].upstreams[0]: \"nowhere\": write host:port",
        file.display(),
        line_of(&text, "upstreams")
    );
    assert!(err.to_string().starts_with(&expected), "{err}");

    // The first config still serves, and the refusals are counted.
    let mut send = edge::h2(p.https, "a.internal", &p.root_pem()).await;
    let (status, body) = edge::get_h2(&mut send, "a.internal", "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("backend: one"), "{body}");
    assert_eq!(p.metrics.config_reloads(false), 2);
    assert_eq!(p.metrics.config_reloads(true), 0);
    assert!(
        p.metrics
            .render()
            .contains("portico_config_reloads_total{result=\"error\"} 2\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_finishes_on_its_upstream_while_a_reload_moves_the_site() {
    install_provider();
    let (one, accepted) = backend_counted("one", Proto::Http1).await;
    let two = backend("two", Proto::Http1).await;
    let p = edge::start(&proxied("a.internal", one)).await;
    let mut send = edge::h2(p.https, "a.internal", &p.root_pem()).await;
    let mut in_flight_conn = send.clone();
    let in_flight = tokio::spawn(async move {
        edge::get_h2(&mut in_flight_conn, "a.internal", "/delay/1500").await
    });
    // Reload only once the request has reached the upstream.
    eventually("the request reaches its upstream", || async {
        match accepted.load(Ordering::SeqCst) {
            0 => Err("not yet".to_string()),
            _ => Ok(()),
        }
    })
    .await;
    rewrite(&p, &proxied("a.internal", two));
    let outcome = p.reloader.reload_now().await.unwrap();
    assert_eq!(outcome.changed, ["a.internal"]);

    let (status, body) = edge::get_h2(&mut send, "a.internal", "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("backend: two"), "{body}");
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("backend: one"), "{body}");
    assert!(body.contains("uri: /delay/1500"), "{body}");
}

/// Lays out `folder` as kubelet mounts a ConfigMap: the file inside a timestamped
/// folder, `..data` pointing at that folder, and `portico.toml -> ..data/portico.toml`.
/// Called again, it publishes a new version the way kubelet's atomic writer does: a
/// new timestamped folder, a `..data_tmp` symlink to it renamed over `..data`, then the
/// old folder removed.
fn publish_configmap(folder: &Path, version: u32, text: &str) {
    let stamp = format!("..2026_01_01_00_00_{version:02}.000000001");
    std::fs::create_dir_all(folder.join(&stamp)).unwrap();
    std::fs::write(folder.join(&stamp).join("portico.toml"), text).unwrap();
    let data = folder.join("..data");
    let previous = std::fs::read_link(&data).ok();
    let tmp = folder.join("..data_tmp");
    std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
    std::fs::rename(&tmp, &data).unwrap();
    let file = folder.join("portico.toml");
    if std::fs::symlink_metadata(&file).is_err() {
        std::os::unix::fs::symlink("..data/portico.toml", &file).unwrap();
    }
    if let Some(previous) = previous {
        std::fs::remove_dir_all(folder.join(previous)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_update_through_the_data_symlink_is_picked_up_without_a_signal() {
    install_provider();
    let one = backend("one", Proto::Http1).await;
    let two = backend("two", Proto::Http1).await;
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("config");
    let header = edge::header(dir.path());
    publish_configmap(
        &folder,
        1,
        &format!("{header}{}", proxied("a.internal", one)),
    );
    let p = edge::start_file(dir, &folder.join("portico.toml"), Default::default()).await;
    let root = p.root_pem();
    let (status, body) = fresh_get(p.https, "a.internal", &root, "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("backend: one"), "{body}");

    publish_configmap(
        &folder,
        2,
        &format!("{header}{}", proxied("a.internal", two)),
    );
    eventually("the new ConfigMap version served", || async {
        match fresh_get(p.https, "a.internal", &root, "/").await? {
            (200, body) if body.contains("backend: two") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(p.metrics.config_reloads(true), 1);

    // A broken version is refused, once, and the running config stays.
    publish_configmap(
        &folder,
        3,
        &format!("{header}{}bogus = 1\n", proxied("a.internal", one)),
    );
    eventually("the broken version refused", || async {
        match p.metrics.config_reloads(false) {
            0 => Err("not yet".to_string()),
            n => Ok(n),
        }
    })
    .await;
    let (status, body) = fresh_get(p.https, "a.internal", &root, "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("backend: two"), "{body}");
    // Looking again at the same broken file does not count it again.
    tokio::time::sleep(portico::reload::POLL_INTERVAL * 3).await;
    assert_eq!(p.metrics.config_reloads(false), 1);
    assert_eq!(p.metrics.config_reloads(true), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_changes_its_tls_source_keeps_serving_until_the_new_one_delivers() {
    use portico::config::HostPattern;
    use portico::tls::LocalCa;
    use std::time::SystemTime;

    install_provider();
    // The operator's own CA for `tls = "files"`.
    let operator = LocalCa::generate(SystemTime::now()).unwrap();
    let issued = operator
        .issue(
            &[HostPattern::Exact("a.internal".into())],
            SystemTime::now(),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("crt.pem"), dir.path().join("key.pem"));
    std::fs::write(&crt, &issued.chain_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    let a = |tls: &str| {
        format!(
            "[[site]]\nhosts = [\"a.internal\"]\n{tls}\n[[site.route]]\npath = \"/\"\nrespond = {{ status = 200, body = \"a\" }}\n\n"
        )
    };
    let files = a(&format!(
        "tls = \"files\"\ncert = \"{}\"\nkey = \"{}\"",
        crt.display(),
        key.display()
    ));
    // x.internal makes portico create its local CA at start, so clients can trust both.
    let x = responding("x.internal", "x");
    let p = edge::start_in(dir, &format!("{files}{x}")).await;
    let (operator_root, local_root) = (operator.root_pem().as_bytes().to_vec(), p.root_pem());

    // Fresh connections to a.internal, trusting either CA, all through the changes.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, ok) = (stop.clone(), ok.clone());
        let (addr, roots) = (p.https, [operator_root.clone(), local_root.clone()]);
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let config = client_config(&[&roots[0], &roots[1]], &[b"h2"]);
                let result = match tls_connect(addr, "a.internal", config).await {
                    Ok(tls) => try_get_h2(&mut edge::h2_over(tls).await, "a.internal", "/").await,
                    Err(e) => Err(format!("handshake: {e}")),
                };
                match result {
                    Ok((200, body)) if body == "a" => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    other => failures.push(format!("{other:?}")),
                }
            }
            failures
        })
    };
    // Whether a.internal's certificate is one `root` signed.
    let signed_by = |root: Vec<u8>| {
        let addr = p.https;
        async move {
            tls_connect(addr, "a.internal", client_config(&[&root], &[b"h2"]))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    signed_by(operator_root.clone()).await.unwrap();

    // files → internal: nothing stored for the site yet, so the scheduler issues one;
    // the operator's certificate serves until then.
    rewrite(&p, &format!("{}{x}", a("tls = \"internal\"")));
    let outcome = p.reloader.reload_now().await.unwrap();
    assert_eq!(outcome.changed, ["a.internal"]);
    eventually("a.internal served by the local CA", || {
        signed_by(local_root.clone())
    })
    .await;

    // internal → files: the files are read during the reload itself.
    rewrite(&p, &format!("{files}{x}"));
    p.reloader.reload_now().await.unwrap();
    signed_by(operator_root.clone()).await.unwrap();

    let before = ok.load(Ordering::SeqCst);
    eventually("more requests", || async {
        match ok.load(Ordering::SeqCst) >= before + 20 {
            true => Ok(()),
            false => Err("not yet".to_string()),
        }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let failures = client.await.unwrap();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
}
