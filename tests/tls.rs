//! The TLS edge over real sockets: SNI rules, protocol versions, ALPN, the local CA, the
//! files source and hot swapping under load.

use portico_test_support as common;

use std::time::{Duration, SystemTime};

use common::edge::*;
use portico::config::HostPattern;
use portico::tls::LocalCa;

const RESPOND: &str =
    "[[site.route]]\npath = \"/\"\nrespond = { status = 200, body = \"hello\" }\n";

fn site(hosts: &str, body: &str) -> String {
    format!(
        "[[site]]\nhosts = [{hosts}]\ntls = \"internal\"\n[[site.route]]\npath = \"/\"\nrespond = {{ status = 200, body = \"{body}\" }}\n"
    )
}

#[tokio::test]
async fn internal_ca_serves_h2_and_h1_with_an_ecdsa_p256_leaf() {
    install_provider();
    let p = start(&site("\"localhost\", \"*.example.internal\"", "hello")).await;
    let root = p.root_pem();

    let mut h2 = h2(p.https, "localhost", &root).await;
    assert_eq!(
        get_h2(&mut h2, "localhost", "/").await,
        (200, "hello".into())
    );
    let mut h1 = h1(p.https, "a.example.internal", &root).await;
    assert_eq!(
        get_h1(&mut h1, "a.example.internal", "/").await,
        (200, "hello".into())
    );

    let tls = tls_connect(p.https, "localhost", client_config(&[&root], &[b"h2"]))
        .await
        .unwrap();
    let der = leaf(&tls);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let spki = cert.public_key();
    assert_eq!(spki.algorithm.algorithm.to_id_string(), "1.2.840.10045.2.1"); // id-ecPublicKey
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .unwrap()
        .as_oid()
        .unwrap();
    assert_eq!(curve.to_id_string(), "1.2.840.10045.3.1.7"); // prime256v1
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!(
        lifetime < 30 * 86_400,
        "internal leaves are short-lived: {lifetime}s"
    );
}

#[tokio::test]
async fn wildcards_match_one_label_and_unknown_names_fail_the_handshake() {
    install_provider();
    let p = start(&site("\"*.example.internal\"", "w")).await;
    let roots = [&p.root_pem()[..]];
    let config = client_config(&roots, &[b"h2"]);
    tls_connect(p.https, "a.example.internal", config.clone())
        .await
        .expect("one label under the wildcard");
    for name in ["example.internal", "a.b.example.internal", "other.internal"] {
        let err = tls_connect(p.https, name, config.clone()).await;
        assert!(err.is_err(), "{name} must fail the handshake");
    }
}

#[tokio::test]
async fn no_sni_gets_the_only_site_and_fails_with_two_that_lack_the_address() {
    install_provider();
    // An IP address as the server name makes rustls send no SNI.
    let one = start(&site("\"127.0.0.1\"", "one")).await;
    let root = one.root_pem();
    let mut send = h2(one.https, "127.0.0.1", &root).await;
    assert_eq!(
        get_h2(&mut send, "127.0.0.1", "/").await,
        (200, "one".into())
    );

    // With two sites, neither of which has the address the client connected to, there
    // is nothing to choose by (tests/attacks.rs has the site that has the address).
    let two = start(&format!(
        "{}{}",
        site("\"a.internal\"", "a"),
        site("\"localhost\"", "b")
    ))
    .await;
    let roots = [&two.root_pem()[..]];
    let result = tls_connect(two.https, "127.0.0.1", client_config(&roots, &[b"h2"])).await;
    assert!(result.is_err(), "with two sites, no SNI is refused");
    tls_connect(two.https, "localhost", client_config(&roots, &[b"h2"]))
        .await
        .expect("SNI still works");
}

#[tokio::test]
async fn tls_12_and_13_only() {
    install_provider();
    let p = start(&site("\"localhost\"", "v")).await;
    let root = p.root_pem();
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut store = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        store
            .add(rustls::pki_types::CertificateDer::from_pem_slice(&root).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(portico::tls::provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
        let tls = tls_connect(p.https, "localhost", std::sync::Arc::new(config))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
    }
}

#[tokio::test]
async fn a_restart_reuses_the_local_ca_and_the_stored_leaf() {
    install_provider();
    let p = start(&site("\"localhost\"", "r")).await;
    let root = p.root_pem();
    let config = client_config(&[&root], &[b"h2"]);
    let first = leaf(
        &tls_connect(p.https, "localhost", config.clone())
            .await
            .unwrap(),
    );
    let text = std::fs::read_to_string(p.dir.path().join("portico.toml")).unwrap();
    let dir = p.stop().await;

    let sites = text
        .split_once("[[site]]")
        .map(|(_, s)| format!("[[site]]{s}"))
        .unwrap();
    let again = start_in(dir, &sites).await;
    assert_eq!(again.root_pem(), root, "the root is created once");
    let second = leaf(&tls_connect(again.https, "localhost", config).await.unwrap());
    assert_eq!(first, second, "the stored leaf is served, not a new one");
}

/// A leaf and key for `name` from a throwaway CA, as PEM.
fn issue(ca: &LocalCa, name: &str) -> (String, String) {
    let issued = ca
        .issue(&[HostPattern::Exact(name.into())], SystemTime::now())
        .unwrap();
    (issued.chain_pem, issued.key_pem)
}

#[tokio::test]
async fn files_are_reloaded_when_they_change_and_bad_files_keep_the_old_certificate() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::generate(SystemTime::now()).unwrap();
    let (crt, key) = issue(&ca, "files.test");
    std::fs::write(dir.path().join("crt.pem"), &crt).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    let p = start_in(
        dir,
        &format!("[[site]]\nhosts = [\"files.test\"]\ntls = \"files\"\ncert = \"{{dir}}/crt.pem\"\nkey = \"{{dir}}/key.pem\"\n{RESPOND}"),
    )
    .await;
    let config = client_config(&[ca.root_pem().as_bytes()], &[b"h2"]);
    let served = || async {
        leaf(
            &tls_connect(p.https, "files.test", config.clone())
                .await
                .unwrap(),
        )
    };
    let first = served().await;

    // A broken file: reported, and the old certificate keeps serving.
    std::fs::write(p.dir.path().join("crt.pem"), "not a certificate").unwrap();
    p.certs.sync(&p.config, SystemTime::now()).await;
    assert_eq!(served().await, first);

    // Both files replaced: the next pass serves the new certificate.
    let (crt2, key2) = issue(&ca, "files.test");
    std::fs::write(p.dir.path().join("key.pem"), &key2).unwrap();
    std::fs::write(p.dir.path().join("crt.pem"), &crt2).unwrap();
    p.certs.sync(&p.config, SystemTime::now()).await;
    let second = served().await;
    assert_ne!(second, first, "the new files are served");
    let (_, cert) = x509_parser::parse_x509_certificate(&second).unwrap();
    let expected = portico::tls::load_pem("new", crt2.as_bytes(), key2.as_bytes()).unwrap();
    assert_eq!(
        expected.key.end_entity_cert().unwrap().as_ref(),
        &second[..]
    );
    assert!(cert.validity().is_valid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_never_fails_a_handshake_or_mixes_certificates() {
    install_provider();
    let p = start(&site("\"swap.internal\"", "ok")).await;
    let ca = LocalCa::generate(SystemTime::now()).unwrap();
    let leaves: Vec<(String, String)> = (0..120).map(|_| issue(&ca, "swap.internal")).collect();
    let loaded: Vec<_> = leaves
        .iter()
        .map(|(c, k)| portico::tls::load_pem("test", c.as_bytes(), k.as_bytes()).unwrap())
        .collect();
    let mut known: std::collections::HashSet<Vec<u8>> = loaded
        .iter()
        .map(|l| l.key.end_entity_cert().unwrap().to_vec())
        .collect();
    // The internal leaf served before the first swap is fine too.
    let before = p.resolver.snapshot();
    let original = before
        .lookup(Some("swap.internal"))
        .unwrap()
        .key
        .end_entity_cert()
        .unwrap()
        .to_vec();
    known.insert(original);
    let known = std::sync::Arc::new(known);
    let roots = [&p.root_pem()[..], ca.root_pem().as_bytes()];
    let config = client_config(&roots, &[b"h2", b"http/1.1"]);

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (config, known, done, addr) = (config.clone(), known.clone(), done.clone(), p.https);
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !done.load(std::sync::atomic::Ordering::Acquire)
                || ok as usize + failed.len() == 0
            {
                // A full handshake (fresh config, no resumption) and a request each time.
                match tls_connect(addr, "swap.internal", config.clone()).await {
                    Ok(tls) => {
                        // The handshake verified the chain and the key's signature: a
                        // mismatched pair could not get here. The leaf must be one we know.
                        let served = leaf(&tls);
                        if !known.contains(&served) {
                            failed.push("unknown leaf".to_string());
                        }
                        let mut send = h2_over(tls).await;
                        let (status, body) = get_h2(&mut send, "swap.internal", "/").await;
                        if status == 200 && body == "ok" {
                            ok += 1;
                        } else {
                            failed.push(format!("{status} {body}"));
                        }
                    }
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    let id = "swap.internal".to_string();
    for l in &loaded {
        assert!(p.resolver.install(&id, l.key.clone(), l.not_after));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let mut total = 0;
    for c in clients {
        let (ok, failed) = c.await.unwrap();
        assert!(failed.is_empty(), "failures during swaps: {failed:?}");
        total += ok;
    }
    assert!(total > 0);
    let last = p.resolver.snapshot();
    let served_last = last
        .lookup(Some("swap.internal"))
        .unwrap()
        .key
        .end_entity_cert()
        .unwrap()
        .to_vec();
    assert_eq!(
        served_last,
        loaded
            .last()
            .unwrap()
            .key
            .end_entity_cert()
            .unwrap()
            .to_vec()
    );
}

#[tokio::test]
async fn internal_leaves_are_renewed_when_a_third_of_their_life_is_left() {
    install_provider();
    let p = start(&site("\"renew.internal\"", "r")).await;
    let current = || {
        let snap = p.resolver.snapshot();
        let cert = snap.lookup(Some("renew.internal")).unwrap().clone();
        (cert.key.end_entity_cert().unwrap().to_vec(), cert.not_after)
    };
    let (first, first_not_after) = current();
    let life = portico::tls::LEAF_LIFETIME;

    // Just before the renewal point nothing changes.
    let early = SystemTime::now() + life / 2;
    p.certs.sync(&p.config, early).await;
    assert_eq!(current().0, first);

    // Past it, a new leaf is issued, stored and served.
    let late = first_not_after - life / 3 + Duration::from_secs(60);
    p.certs.sync(&p.config, late).await;
    let (second, second_not_after) = current();
    assert_ne!(second, first);
    assert!(second_not_after > first_not_after);
    // And a restart serves the renewed one from the store.
    let text = std::fs::read_to_string(p.dir.path().join("portico.toml")).unwrap();
    let dir = p.stop().await;
    let sites = text
        .split_once("[[site]]")
        .map(|(_, s)| format!("[[site]]{s}"))
        .unwrap();
    let again = start_in(dir, &sites).await;
    let snap = again.resolver.snapshot();
    let served = snap.lookup(Some("renew.internal")).unwrap();
    assert_eq!(served.key.end_entity_cert().unwrap().to_vec(), second);
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_dropped() {
    install_provider();
    let p = start(&format!(
        "[limits]\nhandshake_timeout = \"300ms\"\n{}",
        site("\"localhost\"", "x")
    ))
    .await;
    let mut tcp = tokio::net::TcpStream::connect(p.https).await.unwrap();
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the server closed the connection: {read:?}"
    );
}

/// The client's session store, counting what the server hands out (tickets, TLS 1.2
/// sessions) before keeping it in rustls' own memory cache.
#[derive(Debug)]
struct Counted {
    cache: rustls::client::ClientSessionMemoryCache,
    tls13_tickets: std::sync::atomic::AtomicUsize,
    tls12_sessions: std::sync::atomic::AtomicUsize,
}

impl Counted {
    fn new() -> Self {
        Self {
            cache: rustls::client::ClientSessionMemoryCache::new(16),
            tls13_tickets: Default::default(),
            tls12_sessions: Default::default(),
        }
    }
}

impl rustls::client::ClientSessionStore for Counted {
    fn set_kx_hint(&self, name: rustls::pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        self.cache.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.cache.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.tls12_sessions
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cache.set_tls12_session(name, value)
    }
    fn tls12_session(
        &self,
        name: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.cache.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &rustls::pki_types::ServerName<'static>) {
        self.cache.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tls13_tickets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cache.insert_tls13_ticket(name, value)
    }
    fn take_tls13_ticket(
        &self,
        name: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.cache.take_tls13_ticket(name)
    }
}

/// A returning client resumes with what its first connection got (a TLS 1.3 ticket, a
/// TLS 1.2 ticket) and is served; TLS 1.3 full handshakes hand out one ticket each. The
/// client is stock aws-lc-rs, so portico's own HKDF glue meets an independent one.
#[tokio::test]
async fn a_returning_client_resumes_on_tls_12_and_13() {
    use rustls::HandshakeKind;
    use std::sync::atomic::Ordering;
    install_provider();
    let p = start(&site("\"localhost\"", "again")).await;
    let root = p.root_pem();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(&root).unwrap())
            .unwrap();
        let store = std::sync::Arc::new(Counted::new());
        let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.resumption = rustls::client::Resumption::store(store.clone());
        let config = std::sync::Arc::new(config);

        let mut kinds = Vec::new();
        for _ in 0..2 {
            let tls = tls_connect(p.https, "localhost", config.clone())
                .await
                .unwrap();
            let session = tls.get_ref().1;
            assert_eq!(session.protocol_version(), Some(version.version));
            kinds.push(session.handshake_kind());
            // A TLS 1.3 ticket comes after the handshake: the response, sent after it,
            // is proof that the client has read it.
            let mut send = h2_over(tls).await;
            assert_eq!(
                get_h2(&mut send, "localhost", "/").await,
                (200, "again".into())
            );
            if kinds.len() == 1 && version == &rustls::version::TLS13 {
                assert_eq!(
                    store.tls13_tickets.load(Ordering::SeqCst),
                    1,
                    "one ticket per full handshake"
                );
            }
        }
        assert_eq!(
            kinds,
            [Some(HandshakeKind::Full), Some(HandshakeKind::Resumed)],
            "{version:?}"
        );
        if version == &rustls::version::TLS12 {
            assert!(store.tls12_sessions.load(Ordering::SeqCst) >= 1);
        }
    }
}
