//! ACME against a real CA: Pebble validates HTTP-01 and TLS-ALPN-01 against portico's own
//! listeners on loopback, names resolved by pebble-challtestsrv.

use portico_test_support as common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use common::ca_front::CaFront;
use common::edge::{self, Portico, client_config, install_provider, start_text, tls_connect};
use common::pebble::{HeldPorts, Pebble, PebbleConfig};
use portico::acme::Tuning;
use portico::objects::{ANNOTATION_LAST_ERROR, ANNOTATION_NEXT_ATTEMPT};
use portico::store::{Kind, Store};

fn quick() -> Tuning {
    Tuning {
        backoff: vec![
            Duration::from_millis(300),
            Duration::from_millis(600),
            Duration::from_secs(1),
        ],
        ari_interval: Duration::from_millis(50),
    }
}

/// The config header for a portico on `http`/`https` using `pebble`.
fn header(http: u16, https: u16, pebble: &Pebble, challenge: &str) -> String {
    header_for(http, https, &pebble.directory_url(), pebble, challenge)
}

/// The config header for a portico on `http`/`https` using the ACME `directory` (Pebble's
/// or a front's), whose HTTPS chains to `pebble`'s throwaway CA.
fn header_for(http: u16, https: u16, directory: &str, pebble: &Pebble, challenge: &str) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:{http}\"\nhttps = \"127.0.0.1:{https}\"\nadmin = \"127.0.0.1:0\"\n[storage]\npath = \"{{dir}}/data\"\n[acme]\nemail = \"ops@example.test\"\ndirectory = \"{directory}\"\nca_root = \"{}\"\nchallenge = \"{challenge}\"\n",
        pebble.ca_root_path().display()
    )
}

fn acme_site(hosts: &str, body: &str) -> String {
    format!(
        "[[site]]\nhosts = [{hosts}]\ntls = \"acme\"\n[[site.route]]\npath = \"/\"\nrespond = {{ status = 200, body = \"{body}\" }}\n"
    )
}

/// Waits until `name` is served with a chain that verifies against `roots`.
async fn wait_for_certificate(p: &Portico, name: &str, roots: &[u8], pebble: &Pebble) -> Vec<u8> {
    let config = client_config(&[roots], &[b"h2"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(tls) = tls_connect(p.https, name, config.clone()).await {
            return edge::leaf(&tls);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate for {name}; last error: {:?}; pebble log:\n{}",
            p.certs.acme_last_error(name),
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn setup(challenge: &str, sites: &str) -> (Pebble, Portico) {
    install_provider();
    let held = HeldPorts::new();
    let (http, https) = (held.http(), held.https());
    let pebble = Pebble::start(PebbleConfig::new(http, https)).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{}{sites}", header(http, https, &pebble, challenge));
    held.release();
    let p = start_text(dir, &text, quick()).await;
    (pebble, p)
}

async fn h2_get(p: &Portico, name: &str, roots: &[u8]) -> (u16, String) {
    let mut send = edge::h2(p.https, name, roots).await;
    edge::get_h2(&mut send, name, "/").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_issues_one_certificate_for_every_host_of_the_site() {
    let (pebble, p) = setup(
        "http-01",
        &acme_site("\"a.example.test\", \"www.a.example.test\"", "a"),
    )
    .await;
    let roots = pebble.issuing_roots().await;
    for name in ["a.example.test", "www.a.example.test"] {
        wait_for_certificate(&p, name, &roots, &pebble).await;
        assert_eq!(h2_get(&p, name, &roots).await, (200, "a".into()));
    }
    assert_eq!(pebble.orders(), 1, "one order covers both names");
    // The leaf is ECDSA P-256 and names both hosts.
    let leaf = wait_for_certificate(&p, "a.example.test", &roots, &pebble).await;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let curve = cert
        .public_key()
        .algorithm
        .parameters
        .as_ref()
        .unwrap()
        .as_oid()
        .unwrap();
    assert_eq!(curve.to_id_string(), "1.2.840.10045.3.1.7");
    let sans = portico::metrics::certificate_names(&leaf).unwrap();
    assert!(
        sans.iter().any(|n| n.contains("www.a.example.test")),
        "{sans:?}"
    );
    // The chain and key reach the store (just after the swap), the file private.
    let store = portico::store::FileStore::open(p.data()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let all = store.list(Kind::Certificate).await.unwrap();
        if let Some((name, stored)) = all
            .into_iter()
            .find(|(_, s)| s.object.get("tls.crt").is_some())
        {
            break (name, stored);
        }
        assert!(tokio::time::Instant::now() < deadline, "never stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(stored.1.object.get("tls.key").is_some());
    use std::os::unix::fs::PermissionsExt;
    let file = std::fs::read_dir(p.data().join("certificate"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|path| path.to_string_lossy().contains(&stored.0))
        .expect("the object's file");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issues_through_the_https_listener() {
    let (pebble, p) = setup("tls-alpn-01", &acme_site("\"alpn.example.test\"", "alpn")).await;
    let roots = pebble.issuing_roots().await;
    wait_for_certificate(&p, "alpn.example.test", &roots, &pebble).await;
    assert_eq!(
        h2_get(&p, "alpn.example.test", &roots).await,
        (200, "alpn".into())
    );
    assert!(p.challenges.get("anything").is_none());
    // A client offering acme-tls/1 outside a validation gets no certificate at all.
    let probe = client_config(&[&roots], &[b"acme-tls/1"]);
    assert!(
        tls_connect(p.https, "alpn.example.test", probe)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sites_are_issued_in_parallel_and_a_restart_orders_nothing_new() {
    let sites = format!(
        "{}{}",
        acme_site("\"one.example.test\"", "1"),
        acme_site("\"two.example.test\"", "2")
    );
    let (pebble, p) = setup("http-01", &sites).await;
    let roots = pebble.issuing_roots().await;
    let first = wait_for_certificate(&p, "one.example.test", &roots, &pebble).await;
    wait_for_certificate(&p, "two.example.test", &roots, &pebble).await;
    assert_eq!(pebble.orders(), 2);
    let accounts = pebble.log().matches("/sign-me-up").count();

    let text = std::fs::read_to_string(p.dir.path().join("portico.toml")).unwrap();
    let dir = p.stop().await;
    let again = start_text(dir, &text, quick()).await;
    let served = wait_for_certificate(&again, "one.example.test", &roots, &pebble).await;
    assert_eq!(served, first, "the stored certificate is served again");
    // Give the scheduler passes to (wrongly) order: it must not.
    again.certs.sync(&again.config, SystemTime::now()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pebble.orders(), 2, "no new order after a restart");
    assert_eq!(
        pebble.log().matches("/sign-me-up").count(),
        accounts,
        "the account is reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_ca_is_retried_while_other_sites_keep_serving() {
    install_provider();
    let held = HeldPorts::new();
    let (http, https) = (held.http(), held.https());
    let mut pebble = Pebble::start(PebbleConfig::new(http, https)).await;
    pebble.stop();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}{}[[site]]\nhosts = [\"local.internal\"]\ntls = \"internal\"\n[[site.route]]\npath = \"/\"\nrespond = {{ status = 200, body = \"local\" }}\n",
        header(http, https, &pebble, "http-01"),
        acme_site("\"late.example.test\"", "late")
    );
    held.release();
    let p = start_text(dir, &text, quick()).await;
    let local_root = p.root_pem();
    // The CA is down: the ACME site fails and backs off, the internal one serves.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while p.certs.acme_last_error("late.example.test").is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed attempt recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        h2_get(&p, "local.internal", &local_root).await,
        (200, "local".into())
    );
    // `portico certs` shows the failure and when the next attempt comes.
    let store = portico::store::FileStore::open(p.data()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let table = loop {
        let table = portico::certs::table(&store, &p.config, SystemTime::now())
            .await
            .unwrap();
        if table.contains("last error:") || tokio::time::Instant::now() > deadline {
            break table;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(table.contains("late.example.test"), "{table}");
    assert!(table.contains("last error:"), "{table}");
    assert!(table.contains("next attempt:"), "{table}");

    pebble.restart().await;
    let roots = pebble.issuing_roots().await;
    wait_for_certificate(&p, "late.example.test", &roots, &pebble).await;
    assert_eq!(
        h2_get(&p, "late.example.test", &roots).await,
        (200, "late".into())
    );
    // The error is cleared when the order's bookkeeping ends, just after the install.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Some(e) = p.certs.acme_last_error("late.example.test") {
        assert!(tokio::time::Instant::now() < deadline, "error kept: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_renewal_swaps_the_certificate_under_continuous_requests() {
    let (pebble, p) = setup("http-01", &acme_site("\"renew.example.test\"", "r")).await;
    let roots = pebble.issuing_roots().await;
    let first = wait_for_certificate(&p, "renew.example.test", &roots, &pebble).await;

    let done = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (done, roots, addr) = (done.clone(), roots.clone(), p.https);
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !done.load(Ordering::Acquire) {
                let config = client_config(&[&roots], &[b"h2"]);
                match tls_connect(addr, "renew.example.test", config).await {
                    Ok(tls) => {
                        let mut send = edge::h2_over(tls).await;
                        match edge::get_h2(&mut send, "renew.example.test", "/").await {
                            (200, body) if body == "r" => ok += 1,
                            other => failed.push(format!("{other:?}")),
                        }
                    }
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    // Four years on, a five-year certificate has less than a third of its life left.
    let later = SystemTime::now() + Duration::from_secs(4 * 365 * 86_400);
    // Passes at the later time until the resolver holds another certificate: one pass
    // while the first order is still finishing (writing to the store on a loaded
    // machine) starts nothing, and a pass after the renewal would order again (the new
    // certificate is due at that time too).
    let id = "renew.example.test".to_string();
    let leaf_now = || {
        p.resolver
            .snapshot()
            .lookup(Some(&id))
            .cloned()
            .and_then(|c| c.key.end_entity_cert().ok().map(|d| d.to_vec()))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while leaf_now().as_ref() == Some(&first) {
        p.certs.sync(&p.config, later).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "not renewed; log:\n{}",
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let served = wait_for_certificate(&p, "renew.example.test", &roots, &pebble).await;
    assert_ne!(served, first, "the renewed certificate is served");
    done.store(true, Ordering::Release);
    for c in clients {
        let (ok, failed) = c.await.unwrap();
        assert!(failed.is_empty(), "failures during renewal: {failed:?}");
        assert!(ok > 0);
    }
    assert_eq!(pebble.orders(), 2);
}

/// A site switched by a reload from the local CA to ACME gets a certificate from the CA:
/// the local CA's, stored under the same name and still valid, is not taken for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_switched_from_internal_to_acme_gets_a_certificate_from_the_ca() {
    install_provider();
    let held = HeldPorts::new();
    let (http, https) = (held.http(), held.https());
    let pebble = Pebble::start(PebbleConfig::new(http, https)).await;
    let head = header(http, https, &pebble, "http-01");
    let site = acme_site("\"switch.example.test\"", "s");
    let internal = site.replace("tls = \"acme\"", "tls = \"internal\"");
    held.release();
    let p = start_text(
        tempfile::tempdir().unwrap(),
        &format!("{head}{internal}"),
        quick(),
    )
    .await;
    let local_root = p.root_pem();
    let first = wait_for_certificate(&p, "switch.example.test", &local_root, &pebble).await;

    let path = p.dir.path().join("portico.toml");
    let text = format!("{head}{site}").replace("{dir}", &p.dir.path().display().to_string());
    std::fs::write(&path, text).unwrap();
    p.reloader.reload_now().await.unwrap();
    let roots = pebble.issuing_roots().await;
    let leaf = wait_for_certificate(&p, "switch.example.test", &roots, &pebble).await;
    assert_ne!(leaf, first);
    assert_eq!(pebble.orders(), 1);
}

/// A CA that requires External Account Binding: the configured key id and HMAC key
/// get an account (and a certificate); a wrong key gets the CA's refusal, reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_binding_is_sent_when_the_ca_requires_it() {
    install_provider();
    // base64url of 32 bytes, as CAs hand out HMAC keys.
    let key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let held = HeldPorts::new();
    let (http, https) = (held.http(), held.https());
    let pebble = Pebble::start(PebbleConfig::new(http, https).with_eab("kid-1", key)).await;
    let roots = pebble.issuing_roots().await;

    let with_key = |kid: &str, key: &str| {
        format!(
            "{}eab_kid = \"{kid}\"\neab_hmac_key = \"{key}\"\n{}",
            header(http, https, &pebble, "http-01"),
            acme_site("\"eab.example.test\"", "eab")
        )
    };
    held.release();
    let wrong = start_text(
        tempfile::tempdir().unwrap(),
        &with_key("kid-1", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        quick(),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let error = loop {
        if let Some(e) = wrong.certs.acme_last_error("eab.example.test") {
            break e;
        }
        assert!(tokio::time::Instant::now() < deadline, "no error recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(error.contains("urn:ietf:params:acme:error"), "{error}");
    assert_eq!(pebble.orders(), 0, "no account, no order");
    wrong.stop().await;

    let right = start_text(
        tempfile::tempdir().unwrap(),
        &with_key("kid-1", key),
        quick(),
    )
    .await;
    wait_for_certificate(&right, "eab.example.test", &roots, &pebble).await;
    assert_eq!(
        h2_get(&right, "eab.example.test", &roots).await,
        (200, "eab".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_paths_answer_404_for_unknown_tokens_and_names() {
    let (pebble, p) = setup("http-01", &acme_site("\"c.example.test\"", "c")).await;
    let roots = pebble.issuing_roots().await;
    wait_for_certificate(&p, "c.example.test", &roots, &pebble).await;
    let (status, _, _) =
        edge::plain_get(p.http, "c.example.test", "/.well-known/acme-challenge/nope").await;
    assert_eq!(status, 404);
    p.challenges.insert("tok", "tok.key");
    let (status, _, _) = edge::plain_get(
        p.http,
        "other.example.test",
        "/.well-known/acme-challenge/tok",
    )
    .await;
    assert_eq!(status, 404, "a name no site has");
    let (status, _, body) =
        edge::plain_get(p.http, "c.example.test", "/.well-known/acme-challenge/tok").await;
    assert_eq!((status, body.as_str()), (200, "tok.key"));
}

/// Pebble behind a [`CaFront`], and portico using the front as its directory; `prepare`
/// runs on the front before portico starts.
async fn setup_front(sites: &str, prepare: impl FnOnce(&CaFront)) -> (Pebble, CaFront, Portico) {
    install_provider();
    let held = HeldPorts::new();
    let (http, https) = (held.http(), held.https());
    let pebble = Pebble::start(PebbleConfig::new(http, https)).await;
    let front = CaFront::start(&pebble).await;
    prepare(&front);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}{sites}",
        header_for(http, https, &front.directory_url(), &pebble, "http-01")
    );
    held.release();
    let p = start_text(dir, &text, quick()).await;
    (pebble, front, p)
}

/// Waits until `name` is served with a leaf other than `old`; returns it.
async fn wait_for_new_leaf(
    p: &Portico,
    name: &str,
    roots: &[u8],
    pebble: &Pebble,
    old: &[u8],
) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let served = wait_for_certificate(p, name, roots, pebble).await;
        if served != old {
            return served;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} still serves the old certificate; last error: {:?}; pebble log:\n{}",
            p.certs.acme_last_error(name),
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The store annotations of the (first) site's certificate object.
async fn annotations(p: &Portico) -> std::collections::BTreeMap<String, String> {
    let store = portico::store::FileStore::open(p.data()).unwrap();
    let name = portico::objects::cert_object_name(&p.config.sites[0]);
    store
        .get(Kind::Certificate, &name)
        .await
        .unwrap()
        .map(|s| s.object.annotations)
        .unwrap_or_default()
}

/// Pebble itself, no front: its directory offers `renewalInfo`. Returns the config text
/// too, for a restart on the same data.
async fn setup_pebble(sites: &str) -> (Pebble, Portico, String) {
    install_provider();
    let held = HeldPorts::new();
    let (http, https) = (held.http(), held.https());
    let pebble = Pebble::start(PebbleConfig::new(http, https)).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{}{sites}", header(http, https, &pebble, "http-01"));
    held.release();
    let p = start_text(dir, &text, quick()).await;
    (pebble, p, text)
}

/// Waits until Pebble was asked for renewal information `n` times in all.
async fn wait_for_ari_checks(pebble: &Pebble, n: usize) {
    wait_for_log(pebble, &format!("{n} ARI checks"), |_| {
        pebble.ari_checks() >= n
    })
    .await;
}

/// Waits until Pebble's log satisfies `done`.
async fn wait_for_log(pebble: &Pebble, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done(&pebble.log()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what}\n{}",
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ids of the orders Pebble added, in order (its log: `Added order "ID" to the db`).
fn pebble_order_ids(pebble: &Pebble) -> Vec<String> {
    pebble
        .log()
        .lines()
        .filter_map(|l| l.split("Added order \"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

/// Pebble answers `renewalInfo` with a Retry-After of six hours, which portico honours,
/// so a window changed after portico's first check is seen by a replica that starts: the
/// test restarts portico on the same data, as a new pod would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_ari_window_renews_with_replaces_and_serves_the_new_certificate() {
    let name = "ari.example.test";
    let (pebble, p, text) = setup_pebble(&acme_site("\"ari.example.test\"", "ari")).await;
    let roots = pebble.issuing_roots().await;
    let first = wait_for_certificate(&p, name, &roots, &pebble).await;
    assert_eq!(pebble.orders(), 1);
    assert_eq!(
        pebble.replacements(),
        Vec::<String>::new(),
        "a first certificate replaces nothing"
    );
    // Pebble's own window (around two thirds of the lifetime) is asked for first.
    wait_for_ari_checks(&pebble, 1).await;

    // The CA says: renew this certificate now (a window that opened an hour ago).
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    pebble
        .set_renewal_window(&first, now - hour, now + hour)
        .await;
    let checks = pebble.ari_checks();
    let dir = p.stop().await;
    let p = start_text(dir, &text, quick()).await;
    assert_eq!(
        wait_for_certificate(&p, name, &roots, &pebble).await,
        first,
        "the stored certificate serves after the restart"
    );

    let renewed = wait_for_new_leaf(&p, name, &roots, &pebble, &first).await;
    assert!(pebble.ari_checks() > checks);
    assert_eq!(
        h2_get(&p, name, &roots).await,
        (200, "ari".into()),
        "the new certificate serves"
    );
    // Pebble took the order with `replaces` as the replacement of the first order's
    // certificate, and marked that one replaced once the new one was issued.
    let ids = pebble_order_ids(&pebble);
    assert_eq!(ids.len(), 2, "{}", pebble.log());
    let replacements = pebble.replacements();
    assert_eq!(replacements.len(), 1, "{}", pebble.log());
    assert!(
        replacements[0].contains(&format!(
            "order \"{}\" is a replacement of \"{}\"",
            ids[1], ids[0]
        )),
        "{replacements:?}"
    );
    wait_for_log(&pebble, "replaced mark", |log| {
        log.contains(&format!(
            "Order {} has been marked as replaced in the DB",
            ids[1]
        ))
    })
    .await;
    assert_ne!(renewed, first);
    assert_eq!(pebble.orders(), 2);
}

/// Pebble's own window for a 90-day certificate opens around two thirds of the
/// lifetime: a scheduler pass at a time before it orders nothing, a pass inside it
/// renews with `replaces`, earlier than the third-of-the-lifetime rule would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_pebble_gives_is_honoured() {
    let name = "later.example.test";
    let (pebble, p, _) = setup_pebble(&acme_site("\"later.example.test\"", "later")).await;
    let roots = pebble.issuing_roots().await;
    let first = wait_for_certificate(&p, name, &roots, &pebble).await;
    let (start, end) = pebble.renewal_window(&first).await;
    let (_, leaf) = x509_parser::parse_x509_certificate(&first).unwrap();
    let not_before = SystemTime::from(leaf.validity().not_before.to_datetime());
    let not_after = SystemTime::from(leaf.validity().not_after.to_datetime());
    let third = not_after - (not_after.duration_since(not_before).unwrap() / 3);
    let hour = Duration::from_secs(3600);
    assert!(start > SystemTime::now() + 24 * hour, "{start:?}");
    assert!(
        start + hour < third && third < end,
        "{start:?} {third:?} {end:?}"
    );
    // portico asked for it too, and keeps the answer (Pebble says: again in six hours).
    wait_for_ari_checks(&pebble, 1).await;

    // Days before the window: nothing, pass after pass.
    for _ in 0..10 {
        p.certs.sync(&p.config, start - 24 * hour).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pebble.orders(), 1);
    assert_eq!(
        wait_for_certificate(&p, name, &roots, &pebble).await,
        first,
        "the first certificate keeps serving"
    );

    // An hour into the window, a day before a third of the lifetime is left: renewed,
    // naming the certificate it replaces.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while pebble.orders() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no renewal inside the window\n{}",
            pebble.log()
        );
        p.certs.sync(&p.config, start + hour).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let renewed = wait_for_new_leaf(&p, name, &roots, &pebble, &first).await;
    assert_ne!(renewed, first);
    assert_eq!(pebble.replacements().len(), 1, "{}", pebble.log());
    assert_eq!(pebble.orders(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_order_waits_for_the_retry_after_of_the_ca() {
    let name = "limited.example.test";
    let before = SystemTime::now();
    let (pebble, front, p) = setup_front(&acme_site("\"limited.example.test\"", "l"), |front| {
        front.fail_new_orders(1, "7200")
    })
    .await;
    front
        .wait_for(
            "the rate-limited newOrder",
            |s| !s.new_orders.is_empty(),
            || pebble.log(),
        )
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let annotations = loop {
        let annotations = annotations(&p).await;
        if annotations.contains_key(ANNOTATION_NEXT_ATTEMPT) {
            break annotations;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no next attempt recorded: {annotations:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Not the first back-off step (300 ms here; a minute by default): two hours, as the
    // CA asked. Annotations are whole seconds.
    let next = &annotations[ANNOTATION_NEXT_ATTEMPT];
    let at = SystemTime::from(
        time::OffsetDateTime::parse(next, &time::format_description::well_known::Rfc3339).unwrap(),
    );
    let asked = Duration::from_secs(7200);
    assert!(
        at + Duration::from_secs(1) >= before + asked,
        "next attempt {next} is sooner than two hours"
    );
    assert!(
        at <= SystemTime::now() + asked + Duration::from_secs(60),
        "next attempt {next} is later than asked"
    );
    let error = &annotations[ANNOTATION_LAST_ERROR];
    assert!(
        error.contains("urn:ietf:params:acme:error:rateLimited")
            && error.contains("too many new orders recently"),
        "{error}"
    );
    assert!(
        p.certs
            .acme_last_error(name)
            .is_some_and(|e| e.contains("rateLimited")),
        "{:?}",
        p.certs.acme_last_error(name)
    );

    // `portico certs` shows both.
    let store = portico::store::FileStore::open(p.data()).unwrap();
    let table = portico::certs::table(&store, &p.config, SystemTime::now())
        .await
        .unwrap();
    assert!(table.contains(next.as_str()), "{table}");
    assert!(table.contains("rateLimited"), "{table}");

    // A scheduler pass now starts nothing: the site waits.
    p.certs.sync(&p.config, SystemTime::now()).await;
    assert_eq!(front.new_orders().len(), 1);
    assert_eq!(pebble.orders(), 0);
}

/// Six hours: a short-lived profile, as Let's Encrypt's `shortlived` (about 6.7 days)
/// but short enough that the tests move the clock by hours, not days.
const SHORT: Duration = Duration::from_secs(6 * 3600);
/// Pebble's usual 90 days.
const NINETY_DAYS: Duration = Duration::from_secs(90 * 86_400);

/// Pebble offering the profiles `default` (90 days) and `shortlived` (six hours),
/// behind a [`CaFront`] that records what each new order asked for; portico uses the
/// front as its directory with `acme_extra` added to `[acme]`. Returns the config text
/// too (for reloads and restarts on the same data).
async fn setup_profiles(
    challenge: &str,
    acme_extra: &str,
    sites: &str,
    tuning: Tuning,
) -> (Pebble, CaFront, Portico, String) {
    install_provider();
    let held = HeldPorts::new();
    let (http, https) = (held.http(), held.https());
    let pebble = Pebble::start(
        PebbleConfig::new(http, https)
            .with_profile("default", NINETY_DAYS)
            .with_profile("shortlived", SHORT),
    )
    .await;
    let front = CaFront::start(&pebble).await;
    let text = format!(
        "{}{acme_extra}{sites}",
        header_for(http, https, &front.directory_url(), &pebble, challenge)
    );
    held.release();
    let p = start_text(tempfile::tempdir().unwrap(), &text, tuning).await;
    (pebble, front, p, text)
}

/// The leaf's lifetime (notAfter minus notBefore).
fn lifetime(leaf: &[u8]) -> Duration {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    let v = cert.validity();
    Duration::from_secs((v.not_after.timestamp() - v.not_before.timestamp()) as u64)
}

/// The leaf's subject alternative names, as x509-parser shows them. Not
/// `portico::metrics::certificate_names`, which writes a DNS name and an IP address
/// alike: these assertions check that an address became an IP SAN, not a DNS name.
fn sans(leaf: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Clients that keep opening a TLS connection to `name` (an IP address: no SNI) and
/// asking for `/` over HTTP/2 until `done`; each returns its successes and failures.
fn keep_asking(
    p: &Portico,
    name: &'static str,
    body: &'static str,
    roots: &[u8],
    done: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u32, Vec<String>)>> {
    (0..3)
        .map(|_| {
            let (done, roots, addr) = (done.clone(), roots.to_vec(), p.https);
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !done.load(Ordering::Acquire) {
                    let config = client_config(&[&roots], &[b"h2"]);
                    match tls_connect(addr, name, config).await {
                        Ok(tls) => {
                            let mut send = edge::h2_over(tls).await;
                            match edge::get_h2(&mut send, name, "/").await {
                                (200, got) if got == body => ok += 1,
                                other => failed.push(format!("{other:?}")),
                            }
                        }
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

/// Scheduler passes at `at` until the resolver serves a leaf other than `old` for the
/// site `id`; returns it.
async fn renew_at(p: &Portico, id: &str, old: &[u8], at: SystemTime, pebble: &Pebble) -> Vec<u8> {
    let id = id.to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        // A site id is its names joined by ","; the first one finds its certificate.
        let served = p
            .resolver
            .snapshot()
            .lookup(id.split(',').next())
            .and_then(|c| c.key.end_entity_cert().ok().map(|d| d.to_vec()));
        if let Some(leaf) = served
            && leaf != old
        {
            return leaf;
        }
        p.certs.sync(&p.config, at).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "not renewed; last error {:?}; log:\n{}",
            p.certs.acme_last_error(&id),
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `acme.profile = "shortlived"`: every order asks for it (Pebble would pick a random
/// profile for an order that names none, so the order payload is checked, not only
/// the leaf), the certificate has the profile's six hours, and it is renewed when a
/// third of its life is left while clients keep connecting: none fails. Pebble's ARI
/// window for so short a certificate spans its whole life, which must not renew it
/// again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_profile_is_ordered_and_renewed_by_a_third_of_its_life_under_load() {
    let name = "short.example.test";
    let (pebble, front, p, _) = setup_profiles(
        "http-01",
        "profile = \"shortlived\"\n",
        &acme_site("\"short.example.test\"", "short"),
        quick(),
    )
    .await;
    let roots = pebble.issuing_roots().await;
    let first = wait_for_certificate(&p, name, &roots, &pebble).await;
    let orders = front.new_orders();
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!(orders[0]["profile"], "shortlived", "{}", orders[0]);
    assert_eq!(
        orders[0]["identifiers"],
        serde_json::json!([{"type": "dns", "value": name}])
    );
    // Pebble's notAfter is notBefore + validity - 1 s.
    assert_eq!(lifetime(&first), SHORT - Duration::from_secs(1));
    // portico asks for the certificate's ARI window; Pebble's spans the whole life:
    // nothing is ordered for it.
    wait_for_ari_checks(&pebble, 1).await;
    for _ in 0..5 {
        p.certs.sync(&p.config, SystemTime::now()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pebble.orders(), 1, "{}", pebble.log());

    let done = Arc::new(AtomicBool::new(false));
    let clients = keep_asking(&p, name, "short", &roots, &done);
    // Let them get going on the first certificate.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Four hours and a half on, less than a third of six hours is left.
    let later = SystemTime::now() + Duration::from_secs(4 * 3600 + 1800);
    let renewed = renew_at(&p, name, &first, later, &pebble).await;
    assert_eq!(
        wait_for_new_leaf(&p, name, &roots, &pebble, &first).await,
        renewed
    );
    // Some requests on the new certificate too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    done.store(true, Ordering::Release);
    for c in clients {
        let (ok, failed) = c.await.unwrap();
        assert!(failed.is_empty(), "failures during renewal: {failed:?}");
        assert!(ok > 0);
    }
    assert_eq!(lifetime(&renewed), SHORT - Duration::from_secs(1));
    let orders = front.new_orders();
    assert_eq!(orders.len(), 2, "{orders:?}");
    assert_eq!(orders[1]["profile"], "shortlived", "{}", orders[1]);
    // The renewal names what it replaces (Pebble offers ARI), and Pebble took it so.
    assert!(orders[1]["replaces"].is_string(), "{}", orders[1]);
    assert_eq!(pebble.replacements().len(), 1, "{}", pebble.log());

    // The new certificate is asked about too, and again not renewed at once.
    let checks = pebble.ari_checks();
    wait_for_ari_checks(&pebble, checks + 1).await;
    for _ in 0..5 {
        p.certs.sync(&p.config, SystemTime::now()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pebble.orders(), 2, "{}", pebble.log());
}

/// A profile the directory does not list: no order is placed, the error names the
/// profiles the CA offers (in the log, in the site's status, in `portico certs`), other
/// sites serve; a reload to an offered profile orders at once, without waiting out the
/// back-off. A restart with the bad profile on a stored certificate reports it at start
/// (through the ARI check) while the certificate keeps serving, and a reload clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_the_directory_does_not_offer_is_an_error_that_names_the_offered_ones() {
    let name = "profile.example.test";
    let sites = format!(
        "{}[[site]]\nhosts = [\"other.internal\"]\n[[site.route]]\npath = \"/\"\nrespond = {{ status = 200, body = \"other\" }}\n",
        acme_site("\"profile.example.test\"", "p")
    );
    // A back-off long enough that only the reload can explain a prompt order.
    let patient = || Tuning {
        backoff: vec![Duration::from_secs(3600)],
        ari_interval: Duration::from_millis(50),
    };
    let (pebble, front, p, text) =
        setup_profiles("http-01", "profile = \"tlsserver\"\n", &sites, patient()).await;
    let error = wait_for_error(&p, name).await;
    for part in ["\"tlsserver\"", "\"default\"", "\"shortlived\""] {
        assert!(error.contains(part), "{part} in {error}");
    }
    assert!(front.new_orders().is_empty(), "no order is placed");
    assert_eq!(
        h2_get(&p, "other.internal", &p.root_pem()).await,
        (200, "other".into()),
        "other sites serve"
    );
    let table = wait_for_table(&p, |t| t.contains("last error:")).await;
    assert!(
        table.contains("last error: acme.profile \"tlsserver\" is not offered by")
            && table.contains("\"default\", \"shortlived\""),
        "{table}"
    );

    // Fixed by a reload: ordered now, on the profile asked for.
    let path = p.dir.path().join("portico.toml");
    let good = text.replace("\"tlsserver\"", "\"shortlived\"");
    std::fs::write(&path, &good).unwrap();
    p.reloader.reload_now().await.unwrap();
    let roots = pebble.issuing_roots().await;
    let leaf = wait_for_certificate(&p, name, &roots, &pebble).await;
    assert_eq!(lifetime(&leaf), SHORT - Duration::from_secs(1));
    assert_eq!(front.new_orders()[0]["profile"], "shortlived");
    wait_for_no_error(&p, name).await;

    // Restarted with the bad profile: the stored certificate serves, and the profile is
    // reported without waiting for the renewal.
    std::fs::write(&path, &text).unwrap();
    let dir = p.stop().await;
    let p = start_text(dir, &text, patient()).await;
    assert_eq!(wait_for_certificate(&p, name, &roots, &pebble).await, leaf);
    let error = wait_for_error(&p, name).await;
    assert!(error.contains("\"shortlived\""), "{error}");
    wait_for_table(&p, |t| t.contains("last error: acme.profile")).await;
    std::fs::write(&path, &good).unwrap();
    p.reloader.reload_now().await.unwrap();
    wait_for_no_error(&p, name).await;
    wait_for_table(&p, |t| !t.contains("last error:")).await;
    assert_eq!(pebble.orders(), 1, "nothing more was ordered");
    assert_eq!(wait_for_certificate(&p, name, &roots, &pebble).await, leaf);
}

/// An IP address as a site's host, over HTTP-01: ordered as an RFC 8738 `ip`
/// identifier (Pebble, like Let's Encrypt, refuses an address as a `dns` one) on the
/// short-lived profile, validated by Pebble connecting to the address on port "80",
/// issued with the address as an iPAddress name, and served to clients that connect to
/// that address and send no SNI (rustls sends none for an address), although another
/// site exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_address_gets_a_certificate_over_http_01_for_clients_without_sni() {
    let sites = format!(
        "{}[[site]]\nhosts = [\"other.internal\"]\n[[site.route]]\npath = \"/\"\nrespond = {{ status = 200, body = \"other\" }}\n",
        acme_site("\"127.0.0.1\"", "by address")
    );
    let (pebble, front, p, _) =
        setup_profiles("http-01", "profile = \"shortlived\"\n", &sites, quick()).await;
    let roots = pebble.issuing_roots().await;
    let leaf = wait_for_certificate(&p, "127.0.0.1", &roots, &pebble).await;
    assert_eq!(sans(&leaf), ["IPAddress([127, 0, 0, 1])"]);
    assert_eq!(lifetime(&leaf), SHORT - Duration::from_secs(1));
    let orders = front.new_orders();
    assert_eq!(
        orders[0]["identifiers"],
        serde_json::json!([{"type": "ip", "value": "127.0.0.1"}])
    );
    assert_eq!(orders[0]["profile"], "shortlived");
    assert!(
        pebble
            .log()
            .contains("Attempting to validate w/ HTTP: http://127.0.0.1:"),
        "{}",
        pebble.log()
    );
    assert_eq!(
        h2_get(&p, "127.0.0.1", &roots).await,
        (200, "by address".into())
    );
    assert_eq!(
        h2_get(&p, "other.internal", &p.root_pem()).await,
        (200, "other".into())
    );

    // Renewed like any short-lived certificate, under load from clients without SNI.
    let done = Arc::new(AtomicBool::new(false));
    let clients = keep_asking(&p, "127.0.0.1", "by address", &roots, &done);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = SystemTime::now() + Duration::from_secs(5 * 3600);
    let renewed = renew_at(&p, "127.0.0.1", &leaf, later, &pebble).await;
    assert_eq!(
        wait_for_new_leaf(&p, "127.0.0.1", &roots, &pebble, &leaf).await,
        renewed
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    done.store(true, Ordering::Release);
    for c in clients {
        let (ok, failed) = c.await.unwrap();
        assert!(failed.is_empty(), "failures during renewal: {failed:?}");
        assert!(ok > 0);
    }
    assert_eq!(sans(&renewed), ["IPAddress([127, 0, 0, 1])"]);
}

/// A site with a name and an IP address, over TLS-ALPN-01: one order with a `dns` and
/// an `ip` identifier; Pebble's validator asks for the address with the reverse-DNS
/// name `1.0.0.127.in-addr.arpa` as SNI and gets a validation certificate naming the
/// address (RFC 8738 section 6). The certificate then serves both: by SNI for the name,
/// by the address connected to for a client without SNI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_and_an_ip_address_are_validated_over_tls_alpn_01() {
    let sites = format!(
        "{}[[site]]\nhosts = [\"other.internal\"]\n[[site.route]]\npath = \"/\"\nrespond = {{ status = 200, body = \"other\" }}\n",
        acme_site("\"mixed.example.test\", \"127.0.0.1\"", "mixed")
    );
    let (pebble, front, p, _) =
        setup_profiles("tls-alpn-01", "profile = \"default\"\n", &sites, quick()).await;
    let roots = pebble.issuing_roots().await;
    let by_address = wait_for_certificate(&p, "127.0.0.1", &roots, &pebble).await;
    let by_name = wait_for_certificate(&p, "mixed.example.test", &roots, &pebble).await;
    assert_eq!(by_address, by_name, "one certificate for the site");
    assert_eq!(
        sans(&by_name),
        [
            "DNSName(\"mixed.example.test\")",
            "IPAddress([127, 0, 0, 1])"
        ]
    );
    assert_eq!(lifetime(&by_name), NINETY_DAYS - Duration::from_secs(1));
    let orders = front.new_orders();
    assert_eq!(orders.len(), 1, "{orders:?}");
    let mut identifiers: Vec<String> = orders[0]["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}:{}",
                i["type"].as_str().unwrap(),
                i["value"].as_str().unwrap()
            )
        })
        .collect();
    identifiers.sort();
    assert_eq!(identifiers, ["dns:mixed.example.test", "ip:127.0.0.1"]);
    assert_eq!(orders[0]["profile"], "default");
    for name in ["127.0.0.1", "mixed.example.test"] {
        assert_eq!(
            h2_get(&p, name, &roots).await,
            (200, "mixed".into()),
            "{name}"
        );
    }
}

/// Waits until the site's last ACME attempt failed; returns the error.
async fn wait_for_error(p: &Portico, id: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(e) = p.certs.acme_last_error(id) {
            return e;
        }
        assert!(tokio::time::Instant::now() < deadline, "no error recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the site has no ACME error any more.
async fn wait_for_no_error(p: &Portico, id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Some(e) = p.certs.acme_last_error(id) {
        assert!(tokio::time::Instant::now() < deadline, "error kept: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `portico certs`' table once `ready` holds for it. The table reads the store, which
/// hears of an ACME error after the manager records it (`acme_last_error`).
async fn wait_for_table(p: &Portico, ready: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let table = certs_table(p).await;
        if ready(&table) {
            return table;
        }
        assert!(tokio::time::Instant::now() < deadline, "{table}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What `portico certs` prints for `p`'s config and store.
async fn certs_table(p: &Portico) -> String {
    let store = portico::store::FileStore::open(p.data()).unwrap();
    portico::certs::table(&store, &p.config, SystemTime::now())
        .await
        .unwrap()
}
