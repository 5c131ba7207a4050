//! The Pebble harness itself (tests/support/src/pebble.rs), against the real Pebble and
//! pebble-challtestsrv.

use portico_test_support as common;

use std::net::Ipv4Addr;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use common::base64url_encode;
use common::pebble::{Fetched, Pebble, PebbleConfig, free_port};
use hyper::StatusCode;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Ports nobody listens on: the harness tests never get as far as validation.
fn config() -> PebbleConfig {
    PebbleConfig::new(free_port(), free_port())
}

/// The string value of `"key"` in a JSON object (enough for Pebble's directory).
fn json_str(text: &str, key: &str) -> Option<String> {
    let after = &text[text.find(&format!("\"{key}\""))? + key.len() + 2..];
    let after = after.trim_start().strip_prefix(':')?.trim_start();
    let value = after.strip_prefix('"')?;
    Some(value[..value.find('"')?].to_string())
}

async fn directory(pebble: &Pebble) -> String {
    let fetched = pebble.fetch("GET", &pebble.directory_url(), None).await;
    assert_eq!(fetched.status, StatusCode::OK, "{}", fetched.text());
    fetched.text()
}

fn certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

#[tokio::test]
async fn directory_answers_over_https_with_the_acme_resources() {
    let pebble = Pebble::start(config()).await;
    let url = pebble.directory_url();
    let port = pebble.acme_addr().port();
    assert_eq!(url, format!("https://localhost:{port}/dir"));

    let dir = directory(&pebble).await;
    for key in ["newOrder", "newAccount", "newNonce"] {
        let value = json_str(&dir, key).unwrap_or_else(|| panic!("no {key} in {dir}"));
        assert!(
            value.starts_with(&format!("https://localhost:{port}/")),
            "{key}: {value}"
        );
    }
    // The throwaway CA on disk is what the harness's client just trusted.
    let ca = std::fs::read(pebble.ca_root_path()).unwrap();
    assert_eq!(certs(&ca).len(), 1);
    assert_eq!(pebble.orders(), 0);
    assert!(
        pebble.log().contains("Listening on: 127.0.0.1:"),
        "{}",
        pebble.log()
    );
    assert!(pebble.log().contains("Disabling random VA sleeps"));
}

#[tokio::test]
async fn issuing_roots_is_the_ca_above_the_intermediate() {
    let pebble = Pebble::start(config()).await;
    let roots = certs(&pebble.issuing_roots().await);
    assert_eq!(roots.len(), 1);
    let (_, root) = x509_parser::parse_x509_certificate(&roots[0]).unwrap();
    assert!(root.is_ca());
    assert_eq!(root.subject(), root.issuer());
    assert!(
        root.subject().to_string().contains("Pebble Root CA"),
        "{}",
        root.subject()
    );

    let intermediates = certs(&pebble.issuing_intermediates().await);
    let (_, intermediate) = x509_parser::parse_x509_certificate(&intermediates[0]).unwrap();
    assert_eq!(intermediate.issuer(), root.subject());
    intermediate
        .verify_signature(Some(root.public_key()))
        .unwrap();
    // Not the throwaway CA of Pebble's own HTTPS.
    let own = std::fs::read(pebble.ca_root_path()).unwrap();
    assert_ne!(certs(&own)[0], roots[0]);
}

#[tokio::test]
async fn set_a_changes_what_challtestsrv_answers() {
    let pebble = Pebble::start(config()).await;
    let local = Ipv4Addr::LOCALHOST;
    assert_eq!(pebble.query_a("a.example.test").await, [local]);

    pebble
        .set_a("a.example.test", Ipv4Addr::new(127, 0, 0, 3))
        .await;
    assert_eq!(
        pebble.query_a("a.example.test").await,
        [Ipv4Addr::new(127, 0, 0, 3)]
    );
    assert_eq!(pebble.query_a("b.example.test").await, [local]);
    // A second answer replaces the first (challtestsrv's `/add-a` alone would add it).
    pebble
        .set_a("a.example.test", Ipv4Addr::new(127, 0, 0, 4))
        .await;
    assert_eq!(
        pebble.query_a("a.example.test").await,
        [Ipv4Addr::new(127, 0, 0, 4)]
    );

    pebble.clear_a("a.example.test").await;
    assert_eq!(pebble.query_a("a.example.test").await, [local]);
}

#[tokio::test]
async fn default_ipv4_answers_every_name() {
    let mut config = config();
    config.default_ipv4 = Ipv4Addr::new(127, 0, 0, 2);
    let pebble = Pebble::start(config).await;
    assert_eq!(
        pebble.query_a("anything.example.test").await,
        [Ipv4Addr::new(127, 0, 0, 2)]
    );
}

#[tokio::test]
async fn two_pebbles_run_side_by_side() {
    let (a, b) = tokio::join!(Pebble::start(config()), Pebble::start(config()));
    assert_ne!(a.directory_url(), b.directory_url());
    assert_ne!(a.dns_addr(), b.dns_addr());
    assert_ne!(a.ca_root_path(), b.ca_root_path());
    directory(&a).await;
    directory(&b).await;
    // Each its own CA, its own DNS.
    assert_ne!(a.issuing_roots().await, b.issuing_roots().await);
    a.set_a("x.example.test", Ipv4Addr::new(127, 0, 0, 9)).await;
    assert_eq!(
        a.query_a("x.example.test").await,
        [Ipv4Addr::new(127, 0, 0, 9)]
    );
    assert_eq!(b.query_a("x.example.test").await, [Ipv4Addr::LOCALHOST]);
}

#[tokio::test]
async fn stop_makes_the_directory_unreachable_and_restart_brings_it_back() {
    let mut pebble = Pebble::start(config()).await;
    let url = pebble.directory_url();
    let before = pebble.issuing_roots().await;
    pebble
        .set_a("kept.example.test", Ipv4Addr::new(127, 0, 0, 4))
        .await;

    pebble.stop();
    let refused = tokio::net::TcpStream::connect(pebble.acme_addr()).await;
    assert!(refused.is_err(), "Pebble still listening after stop()");
    pebble.stop(); // twice is fine

    pebble.restart().await;
    assert_eq!(pebble.directory_url(), url);
    directory(&pebble).await;
    // New state: a new issuing CA. challtestsrv kept running with its answers.
    assert_ne!(pebble.issuing_roots().await, before);
    assert_eq!(
        pebble.query_a("kept.example.test").await,
        [Ipv4Addr::new(127, 0, 0, 4)]
    );
    assert!(pebble.log().contains("pebble harness: restarting Pebble"));
}

/// A minimal ACME account (RFC 8555 JWS with ES256), just enough to place orders.
struct Account {
    key: EcdsaKeyPair,
    kid: Option<String>,
}

impl Account {
    async fn post(&self, pebble: &Pebble, dir: &str, key: &str, payload: &str) -> Fetched {
        let nonce_url = json_str(dir, "newNonce").unwrap();
        let url = json_str(dir, key).unwrap();
        let nonce = pebble.fetch("HEAD", &nonce_url, None).await;
        let nonce = nonce.headers["replay-nonce"].to_str().unwrap();
        let who = match &self.kid {
            Some(kid) => format!("\"kid\":\"{kid}\""),
            None => {
                let point = self.key.public_key().as_ref();
                format!(
                    "\"jwk\":{{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"{}\",\"y\":\"{}\"}}",
                    base64url_encode(&point[1..33]),
                    base64url_encode(&point[33..65])
                )
            }
        };
        let protected = base64url_encode(
            format!("{{\"alg\":\"ES256\",{who},\"nonce\":\"{nonce}\",\"url\":\"{url}\"}}")
                .as_bytes(),
        );
        let payload = base64url_encode(payload.as_bytes());
        let signature = self
            .key
            .sign(
                &SystemRandom::new(),
                format!("{protected}.{payload}").as_bytes(),
            )
            .unwrap();
        let body = format!(
            "{{\"protected\":\"{protected}\",\"payload\":\"{payload}\",\"signature\":\"{}\"}}",
            base64url_encode(signature.as_ref())
        );
        pebble
            .fetch(
                "POST",
                &url,
                Some(("application/jose+json", body.into_bytes())),
            )
            .await
    }

    async fn register(pebble: &Pebble) -> Account {
        let mut account = Account {
            key: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
            kid: None,
        };
        let dir = directory(pebble).await;
        let created = account
            .post(
                pebble,
                &dir,
                "newAccount",
                "{\"termsOfServiceAgreed\":true}",
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
        account.kid = Some(created.headers["location"].to_str().unwrap().to_string());
        account
    }

    async fn order(&self, pebble: &Pebble, name: &str) {
        let dir = directory(pebble).await;
        let payload = format!("{{\"identifiers\":[{{\"type\":\"dns\",\"value\":\"{name}\"}}]}}");
        let created = self.post(pebble, &dir, "newOrder", &payload).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    }
}

#[test]
fn b64_is_base64url_without_padding() {
    assert_eq!(base64url_encode(b""), "");
    assert_eq!(base64url_encode(b"f"), "Zg");
    assert_eq!(base64url_encode(b"fo"), "Zm8");
    assert_eq!(base64url_encode(b"foo"), "Zm9v");
    assert_eq!(base64url_encode(b"foob"), "Zm9vYg");
    assert_eq!(base64url_encode(&[0xfb, 0xff]), "-_8");
}

#[tokio::test]
async fn orders_counts_new_orders_across_restarts() {
    let mut pebble = Pebble::start(config()).await;
    assert_eq!(pebble.orders(), 0);
    let account = Account::register(&pebble).await;
    assert_eq!(pebble.orders(), 0, "an account is not an order");
    account.order(&pebble, "a.example.test").await;
    assert_eq!(pebble.orders(), 1, "{}", pebble.log());
    account.order(&pebble, "b.example.test").await;
    assert_eq!(pebble.orders(), 2, "{}", pebble.log());

    // A rejected new-order request (unknown account after a restart) is no order.
    pebble.restart().await;
    let dir = directory(&pebble).await;
    let rejected = account
        .post(
            &pebble,
            &dir,
            "newOrder",
            "{\"identifiers\":[{\"type\":\"dns\",\"value\":\"c.example.test\"}]}",
        )
        .await;
    assert!(rejected.status.is_client_error(), "{}", rejected.text());
    assert_eq!(pebble.orders(), 2, "{}", pebble.log());

    Account::register(&pebble)
        .await
        .order(&pebble, "c.example.test")
        .await;
    assert_eq!(pebble.orders(), 3, "{}", pebble.log());
}
