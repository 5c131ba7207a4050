//! Port 80: HTTP-01 answers from the challenge registry, 404 for anything else under the
//! challenge path, 308 to https for the rest.

use portico_test_support as common;

use common::edge::*;

const SITES: &str = "[[site]]\nhosts = [\"a.internal\", \"*.w.internal\", \"::1\"]\ntls = \"internal\"\n[[site.route]]\npath = \"/\"\nrespond = { status = 200, body = \"a\" }\n";

#[tokio::test]
async fn challenge_tokens_are_answered_for_configured_names_only() {
    install_provider();
    let p = start(SITES).await;
    p.challenges.insert("tok-1", "tok-1.thumbprint");

    let (status, _, body) =
        plain_get(p.http, "a.internal", "/.well-known/acme-challenge/tok-1").await;
    assert_eq!((status, body.as_str()), (200, "tok-1.thumbprint"));
    // CAs validating on a non-default port send the port in Host; case is ignored.
    let (status, _, body) = plain_get(
        p.http,
        "A.Internal:5002",
        "/.well-known/acme-challenge/tok-1",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "tok-1.thumbprint"));

    let (status, location, _) =
        plain_get(p.http, "a.internal", "/.well-known/acme-challenge/unknown").await;
    assert_eq!((status, location), (404, None), "unknown token");
    let (status, _, _) =
        plain_get(p.http, "other.example", "/.well-known/acme-challenge/tok-1").await;
    assert_eq!(status, 404, "a name no site has");

    p.challenges.remove("tok-1");
    let (status, _, _) = plain_get(p.http, "a.internal", "/.well-known/acme-challenge/tok-1").await;
    assert_eq!(status, 404, "a finished challenge is gone");
}

#[tokio::test]
async fn everything_else_redirects_to_https_keeping_path_query_and_port() {
    install_provider();
    let p = start(SITES).await;
    let port = p.https.port();
    assert_ne!(port, 443);
    // The client typed a port: it reaches portico directly, so the https listener's.
    let (status, location, _) = plain_get(p.http, "a.internal:8080", "/x/y?q=1&r=%20").await;
    assert_eq!(status, 308);
    assert_eq!(
        location.unwrap(),
        format!("https://a.internal:{port}/x/y?q=1&r=%20")
    );
    let (status, location, _) = plain_get(p.http, "[::1]:8080", "/").await;
    assert_eq!(status, 308);
    assert_eq!(location.unwrap(), format!("https://[::1]:{port}/"));
    // The default port (a load balancer's 80 in front of a pod's 8080): the default
    // https port, whatever the pod listens on.
    for host in ["B.w.internal", "B.w.internal:80"] {
        let (status, location, _) = plain_get(p.http, host, "/p").await;
        assert_eq!(status, 308);
        assert_eq!(location.unwrap(), "https://b.w.internal/p", "{host}");
    }
}

/// Two portico instances on one data folder stand in for replicas behind a load
/// balancer: the CA's request may reach the one that did not publish the token.
#[tokio::test]
async fn a_token_published_by_another_instance_is_answered_from_the_store() {
    install_provider();
    let first = start(SITES).await;
    // The second one's header names the first one's data folder.
    let text = format!("{}{SITES}", header(first.dir.path()));
    let second_dir = tempfile::tempdir().unwrap();
    let second = start_text(second_dir, &text, Default::default()).await;

    first
        .challenges
        .publish("tok_2", "tok_2.thumbprint")
        .await
        .unwrap();
    assert!(
        second.challenges.get("tok_2").is_none(),
        "not in the other's memory"
    );
    let (status, _, body) = plain_get(
        second.http,
        "a.internal",
        "/.well-known/acme-challenge/tok_2",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "tok_2.thumbprint"));
    let (status, _, _) = plain_get(
        second.http,
        "other.example",
        "/.well-known/acme-challenge/tok_2",
    )
    .await;
    assert_eq!(status, 404, "only for configured names");

    first.challenges.withdraw("tok_2").await;
    let (status, _, _) = plain_get(
        second.http,
        "a.internal",
        "/.well-known/acme-challenge/tok_2",
    )
    .await;
    assert_eq!(status, 404, "withdrawn everywhere");
}
