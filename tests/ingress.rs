//! Ingresses configure portico, against the real API server: the `portico` binary signs
//! in as a replica identity with only the rights the Ingress controller needs, watches
//! IngressClasses, Ingresses, Services and EndpointSlices, and serves the Ingress rules
//! over real TLS and HTTP/2 to upstreams on loopback (there is no kubelet: the tests
//! write the EndpointSlices a kubelet's endpoints controller would).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portico_test_support as common;

use common::cluster::{
    Replica, backend_of, leaf, published_service, readyz, replace, service, slice, tls_secret,
};
use common::control_plane::{Namespace, control_plane};
use common::edge::get_h2;
use common::{Proto, backend_at, host_ip};
use serde_json::{Value, json};

/// The shipped ClusterRole's rights for `who` (one identity), and the test's class.
fn grant(ns: &Namespace, who: &str) {
    ns.grant_ingress_controller(&[who]);
}

/// An Ingress of the test's class: host `<name>.internal`, every path to Service `web`
/// port 80.
fn web_ingress(ns: &Namespace, name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"ingressClassName": class(ns), "rules": [{"host": format!("{name}.internal"), "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
        ]}}]},
    })
}

/// The IngressClass of the test's namespace (IngressClasses are cluster-wide).
fn class(ns: &Namespace) -> String {
    ns.ingress_class()
}

/// Path types as the Ingress spec defines them, rules of several Ingresses merged,
/// `defaultBackend`, a Service port by name and by number, h2c by `appProtocol`,
/// another class ignored, a TOML site winning over an Ingress for its host, and
/// EndpointSlice changes (a new endpoint, none ready: 503) applied while an HTTP/2
/// client keeps asking, with no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingresses_route_by_the_specs_path_rules_to_the_ready_endpoints() {
    common::edge::install_provider();
    let ns = control_plane().namespace("ingress-routing");
    grant(&ns, "replica");
    // The API server refuses loopback endpoints: the upstreams listen on this
    // machine's own address.
    let ip = host_ip();
    let web = backend_at(ip, "web", Proto::Http1).await.0;
    let web2 = backend_at(ip, "web2", Proto::Http1).await.0;
    // gRPC-style: h2c, said by the Service port's appProtocol.
    let api = backend_at(ip, "api", Proto::H2c).await.0;
    ns.create(service("web", json!([{"name": "http", "port": 80}])));
    ns.create(service(
        "api",
        json!([{"port": 8080, "appProtocol": "kubernetes.io/h2c"}]),
    ));
    ns.create(slice("web-1", "web", "http", &[(web, true)]));
    ns.create(slice("api-1", "api", "", &[(api, true)]));
    let ingress = |name: &str, class: &str, spec: Value| {
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": name},
            "spec": {"ingressClassName": class, "rules": spec["rules"], "defaultBackend": spec["defaultBackend"]},
        })
    };
    let to = |service: &str, port: Value| json!({"service": {"name": service, "port": port}});
    let ours = class(&ns);
    ns.create(ingress(
        "shop",
        &ours,
        json!({
            "defaultBackend": to("web", json!({"number": 80})),
            "rules": [{"host": "shop.internal", "http": {"paths": [
                {"path": "/api", "pathType": "Prefix", "backend": to("api", json!({"number": 8080}))},
                {"path": "/", "pathType": "Exact", "backend": to("web", json!({"name": "http"}))},
            ]}}],
        }),
    ));
    // A second Ingress adds a path to the same host.
    ns.create(ingress(
        "shop-admin",
        &ours,
        json!({"rules": [{"host": "shop.internal", "http": {"paths": [
            {"path": "/admin", "pathType": "Exact", "backend": to("api", json!({"number": 8080}))},
        ]}}]}),
    ));
    ns.create(ingress(
        "elsewhere",
        "nginx",
        json!({"rules": [{"host": "other.internal", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": to("web", json!({"number": 80}))},
        ]}}]}),
    ));
    ns.create(ingress(
        "taken",
        &ours,
        json!({"rules": [{"host": "toml.internal", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": to("web", json!({"number": 80}))},
        ]}}]}),
    ));

    let dir = tempfile::tempdir().unwrap();
    let replica = Replica::start(
        &ns,
        dir.path(),
        "replica",
        "[[site]]\nhosts = [\"toml.internal\"]\n[[site.route]]\npath = \"/\"\nrespond = { status = 200, body = \"from the file\" }\n",
    ).await;
    replica.ready().await;
    // Ready means routed; the local CA's first certificate for a new host may still be
    // on its way.
    replica.until("shop.internal", "/", |s, _| s == 200).await;
    replica.until("toml.internal", "/", |s, _| s == 200).await;

    let mut send = replica.h2("shop.internal").await;
    for (path, want) in [
        ("/api", "api"),
        ("/api/v1/items", "api"),
        ("/admin", "api"),
        ("/", "web"),
        // Prefix is by path element: /apix is not under /api; the default backend.
        ("/apix", "web"),
        ("/admin/x", "web"),
        ("/elsewhere", "web"),
    ] {
        let (status, body) = get_h2(&mut send, "shop.internal", path).await;
        assert_eq!((status, backend_of(&body)), (200, want), "{path}: {body}");
        let version = if want == "api" {
            "HTTP/2.0"
        } else {
            "HTTP/1.1"
        };
        assert!(
            body.contains(&format!("version: {version}")),
            "{path}: {body}"
        );
    }
    let mut file = replica.h2("toml.internal").await;
    assert_eq!(
        get_h2(&mut file, "toml.internal", "/").await,
        (200, "from the file".to_string()),
        "the file's site wins over an Ingress"
    );
    let other = common::edge::tls_connect(
        replica.https,
        "other.internal",
        common::edge::client_config(&[&replica.root()], &[b"h2"]),
    )
    .await;
    assert!(other.is_err(), "an Ingress of another class is not served");

    // Load on one HTTP/2 connection while the endpoints change under it.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let load = {
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        let mut send = replica.h2("shop.internal").await;
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let (status, body) = get_h2(&mut send, "shop.internal", "/").await;
                if status == 200 && ["web", "web2"].contains(&backend_of(&body)) {
                    served.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.lock().unwrap().push((status, body));
                }
            }
        })
    };
    // A second endpoint joins, in a slice of its own (one port per slice): both serve.
    ns.create(slice("web-2", "web", "http", &[(web2, true)]));
    replica
        .until("shop.internal", "/", |s, b| {
            s == 200 && backend_of(b) == "web2"
        })
        .await;
    // The first turns unready: only the second.
    replace(
        &ns,
        slice_with_version(&ns, "web-1", "web", "http", &[(web, false)]),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut send = replica.h2("shop.internal").await;
        let mut only_web2 = true;
        for _ in 0..10 {
            let (_, body) = get_h2(&mut send, "shop.internal", "/").await;
            only_web2 &= backend_of(&body) == "web2";
        }
        if only_web2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "web still served:\n{}",
            replica.log()
        );
    }
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert!(served.load(Ordering::SeqCst) > 0);
    assert_eq!(
        *failed.lock().unwrap(),
        Vec::<(u16, String)>::new(),
        "failed requests under endpoint changes"
    );

    // No ready endpoint: 503, and the route comes back with one.
    replace(
        &ns,
        slice_with_version(&ns, "web-2", "web", "http", &[(web2, false)]),
    );
    let (_, body) = replica.until("shop.internal", "/", |s, _| s == 503).await;
    assert!(body.contains("no ready endpoint"), "{body}");
    replace(
        &ns,
        slice_with_version(&ns, "web-1", "web", "http", &[(web, true)]),
    );
    replica
        .until("shop.internal", "/", |s, b| {
            s == 200 && backend_of(b) == "web"
        })
        .await;

    // A deleted Ingress takes its host away: the handshake fails like any unknown name.
    ns.plane().kubectl(
        &["delete", "ingress", "-n", &ns.name, "shop", "shop-admin"],
        b"",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::edge::tls_connect(
        replica.https,
        "shop.internal",
        common::edge::client_config(&[&replica.root()], &[b"h2"]),
    )
    .await
    .is_ok()
    {
        assert!(Instant::now() < deadline, "shop.internal still served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = replica.log();
    assert!(
        log.contains("toml.internal") && log.contains("config file has a site for it"),
        "the conflict is logged:\n{log}"
    );
    let events = ns.list("events");
    assert!(
        events.iter().any(|e| e["involvedObject"]["name"] == "taken"
            && e["reason"] == "NotServed"
            && e["message"].as_str().unwrap_or("").contains("config file")),
        "the Ingress's owner is told: {events:?}"
    );
}

/// A host listed in `spec.tls` is served the certificate of the Secret named there,
/// swapped when the Secret changes; a replacement that does not cover the host is
/// refused and the previous certificate keeps serving, and that Secret (not portico's)
/// is never written; a host whose Secret does not exist gets an automatic certificate
/// (the local CA here), which portico writes into that Secret, labelled as its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_tls_secret_is_served_and_swapped_when_it_changes() {
    common::edge::install_provider();
    let ns = control_plane().namespace("ingress-tls");
    grant(&ns, "replica");
    let web = backend_at(host_ip(), "web", Proto::Http1).await.0;
    ns.create(service("web", json!([{"port": 80}])));
    ns.create(slice("web-1", "web", "", &[(web, true)]));
    let (secret, first) = tls_secret("secure-tls", &["secure.internal"]);
    ns.create(secret);
    let to_web = json!({"service": {"name": "web", "port": {"number": 80}}});
    ns.create(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "secure"},
        "spec": {
            "ingressClassName": class(&ns),
            "tls": [
                {"hosts": ["secure.internal"], "secretName": "secure-tls"},
                {"hosts": ["pending.internal"], "secretName": "not-there-yet"},
            ],
            "rules": [
                {"host": "secure.internal", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": to_web}]}},
                {"host": "pending.internal", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": to_web}]}},
            ],
        },
    }));
    let dir = tempfile::tempdir().unwrap();
    let replica = Replica::start(&ns, dir.path(), "replica", "").await;
    replica.ready().await;

    let served = leaf(&replica, "secure.internal", &first).await.unwrap();
    let mut send = common::edge::h2_over(
        common::edge::tls_connect(
            replica.https,
            "secure.internal",
            common::edge::client_config(&[first.as_bytes()], &[b"h2"]),
        )
        .await
        .unwrap(),
    )
    .await;
    let (status, body) = get_h2(&mut send, "secure.internal", "/").await;
    assert_eq!((status, backend_of(&body)), (200, "web"), "{body}");

    // The Secret is rotated: the next handshake gets the new certificate.
    let (mut rotated, second) = tls_secret("secure-tls", &["secure.internal"]);
    rotated["metadata"]["resourceVersion"] =
        ns.get("secrets", "secure-tls").unwrap()["metadata"]["resourceVersion"].clone();
    replace(&ns, rotated);
    let deadline = Instant::now() + Duration::from_secs(30);
    let swapped = loop {
        if let Ok(leaf) = leaf(&replica, "secure.internal", &second).await {
            break leaf;
        }
        assert!(
            Instant::now() < deadline,
            "not swapped:
{}",
            replica.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(served, swapped);

    // A certificate for another name: refused, the rotated one keeps serving.
    let (mut wrong, _) = tls_secret("secure-tls", &["other.internal"]);
    wrong["metadata"]["resourceVersion"] =
        ns.get("secrets", "secure-tls").unwrap()["metadata"]["resourceVersion"].clone();
    replace(&ns, wrong);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !replica.log().contains("does not cover secure.internal") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:
{}",
            replica.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        leaf(&replica, "secure.internal", &second).await,
        Ok(swapped)
    );

    // No Secret yet: the local CA's certificate for the name.
    let root = String::from_utf8(replica.root()).unwrap();
    assert!(leaf(&replica, "pending.internal", &root).await.is_ok());
    let log = replica.log();
    assert!(
        log.contains("Secret") && log.contains("not-there-yet"),
        "{log}"
    );
    assert!(!log.contains("PRIVATE KEY"), "{log}");
}

/// Ingress status and Warning Events are written by one replica, the holder of the
/// status lock: two replicas sharing one store, and only one of them ever patches an
/// Ingress's status; the address is the publish Service's; an Ingress that is not
/// served (a snippet annotation) gets one Warning Event that says why, not one per
/// rebuild or per replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_events_are_written_by_the_holder_of_the_status_lock_only() {
    common::edge::install_provider();
    let ns = control_plane().namespace("ingress-status");
    ns.grant_ingress_controller(&["one", "two"]);
    let web = backend_at(host_ip(), "web", Proto::Http1).await.0;
    ns.create(service("web", json!([{"port": 80}])));
    ns.create(slice("web-1", "web", "", &[(web, true)]));
    published_service(&ns, "portico", "203.0.113.10");
    let ingress = |name: &str, host: &str, annotations: Value| {
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"ingressClassName": class(&ns), "rules": [{"host": host, "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
            ]}}]},
        })
    };
    ns.create(ingress("shop", "shop.internal", json!({})));
    ns.create(ingress(
        "snippet",
        "snippet.internal",
        json!({"nginx.ingress.kubernetes.io/configuration-snippet": "more_set_headers \"x: y\";"}),
    ));
    let dir = tempfile::tempdir().unwrap();
    let publish = format!("publish_service = \"{}/portico\"\n", ns.name);
    let one = Replica::start_with(&ns, dir.path(), "one", &publish, "").await;
    let two = Replica::start_with(&ns, dir.path(), "two", &publish, "").await;
    one.ready().await;
    two.ready().await;

    let status_of = |name: &str| {
        ns.get("ingresses", name).unwrap()["status"]["loadBalancer"]["ingress"].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while status_of("shop") != json!([{"ip": "203.0.113.10"}]) {
        assert!(
            Instant::now() < deadline,
            "no status:
{}
{}",
            one.log(),
            two.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warnings = |name: &str| -> Vec<Value> {
        ns.list("events")
            .into_iter()
            .filter(|e| e["involvedObject"]["name"] == name && e["type"] == "Warning")
            .collect()
    };
    while warnings("snippet").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no Event:
{}
{}",
            one.log(),
            two.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let event = &warnings("snippet")[0];
    assert_eq!(event["reason"], "NotServed");
    let message = event["message"].as_str().unwrap();
    assert!(message.contains("configuration-snippet"), "{message}");

    // More changes, more rebuilds: a new Ingress gets its status, and the snippet's
    // Event is not repeated.
    ns.create(ingress("later", "later.internal", json!({})));
    while status_of("later") != json!([{"ip": "203.0.113.10"}]) {
        assert!(Instant::now() < deadline, "no status for the new Ingress");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(warnings("snippet").len(), 1, "{:?}", warnings("snippet"));
    assert!(warnings("shop").is_empty(), "{:?}", warnings("shop"));
    let writers: std::collections::BTreeSet<String> = ns
        .audit(None)
        .into_iter()
        .filter(|a| a.verb == "patch" && a.resource == "ingresses" && a.code < 300)
        .map(|a| a.user)
        .collect();
    assert_eq!(writers.len(), 1, "{writers:?}");
    let writer = writers.into_iter().next().unwrap();
    assert!(
        [ns.user("one"), ns.user("two")].contains(&writer),
        "{writer}"
    );
}

/// `portico.dev/tls: "off"`: the Ingress's host is proxied on port 80 as it came, with
/// no certificate (a handshake for it fails) and no redirect; a host of another Ingress
/// on the same port still redirects to https, request by request on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_off_serves_plain_http_on_port_80_without_a_redirect() {
    common::edge::install_provider();
    let ns = control_plane().namespace("ingress-plain");
    grant(&ns, "replica");
    let web = backend_at(host_ip(), "web", Proto::Http1).await.0;
    ns.create(service("web", json!([{"port": 80}])));
    ns.create(slice("web-1", "web", "", &[(web, true)]));
    let ingress = |name: &str, annotations: Value| web_ingress(&ns, name, annotations);
    ns.create(ingress("plain", json!({"portico.dev/tls": "off"})));
    ns.create(ingress("secure", json!({})));
    let dir = tempfile::tempdir().unwrap();
    let replica = Replica::start(&ns, dir.path(), "replica", "").await;
    replica.ready().await;
    replica.until("secure.internal", "/", |s, _| s == 200).await;

    let (status, location, body) =
        common::edge::plain_get(replica.http, "plain.internal", "/a?b=c").await;
    assert_eq!((status, location), (200, None), "{body}");
    assert_eq!(backend_of(&body), "web", "{body}");
    assert!(body.contains("uri: /a?b=c"), "{body}");
    assert!(body.contains("header x-forwarded-proto: http"), "{body}");
    let (status, location, _) =
        common::edge::plain_get(replica.http, "secure.internal", "/a").await;
    assert_eq!(
        (status, location.as_deref()),
        (308, Some("https://secure.internal/a"))
    );
    let root = replica.root();
    let handshake = common::edge::tls_connect(
        replica.https,
        "plain.internal",
        common::edge::client_config(&[&root], &[b"h2"]),
    )
    .await;
    assert!(handshake.is_err(), "no certificate for a plain host");

    // One connection, two hosts: each request is judged by its own Host.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(replica.http).await.unwrap();
    tcp.write_all(b"GET /1 HTTP/1.1\r\nHost: plain.internal\r\n\r\nGET /2 HTTP/1.1\r\nHost: secure.internal\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answers = String::new();
    tcp.read_to_string(&mut answers).await.unwrap();
    let first = answers.find("HTTP/1.1 200").expect(&answers);
    let second = answers.find("HTTP/1.1 308").expect(&answers);
    assert!(first < second, "{answers}");
    assert!(
        answers.contains("location: https://secure.internal/2"),
        "{answers}"
    );
}

/// ingress-nginx's `proxy-body-size` and `proxy-read-timeout` are the routes' limits:
/// a body declared larger gets 413 before anything reaches the upstream, an upstream
/// slower than the timeout 504; other Ingresses keep `[limits]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_body_size_and_read_timeout_annotations_limit_the_routes() {
    common::edge::install_provider();
    let ns = control_plane().namespace("ingress-limits");
    grant(&ns, "replica");
    let (web, accepted) = backend_at(host_ip(), "web", Proto::Http1).await;
    ns.create(service("web", json!([{"port": 80}])));
    ns.create(slice("web-1", "web", "", &[(web, true)]));
    let ingress = |name: &str, annotations: Value| web_ingress(&ns, name, annotations);
    ns.create(ingress(
        "limited",
        json!({
            "nginx.ingress.kubernetes.io/proxy-body-size": "1k",
            "nginx.ingress.kubernetes.io/proxy-read-timeout": "1",
        }),
    ));
    ns.create(ingress("open", json!({})));
    let dir = tempfile::tempdir().unwrap();
    let replica = Replica::start(&ns, dir.path(), "replica", "").await;
    replica.ready().await;
    replica
        .until("limited.internal", "/", |s, _| s == 200)
        .await;
    replica.until("open.internal", "/", |s, _| s == 200).await;

    let post = |host: &str, len: usize| {
        hyper::Request::post(format!("https://{host}/upload"))
            .header("content-length", len.to_string())
            .body(http_body_util::Full::new(bytes::Bytes::from(vec![
                b'x';
                len
            ])))
            .unwrap()
    };
    let mut limited = replica.h2("limited.internal").await;
    let before = accepted.load(Ordering::SeqCst);
    let response = limited
        .send_request(post("limited.internal", 2048))
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        before,
        "nothing reached the upstream"
    );
    let response = limited
        .send_request(post("limited.internal", 1024))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The bypass: a body sent without a length is counted as it streams and cut at the
    // limit.
    let chunks = (0..8).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(vec![
            b'y';
            512
        ])))
    });
    let streamed = hyper::Request::post("https://limited.internal/upload")
        .body(http_body_util::BodyExt::boxed(
            http_body_util::StreamBody::new(futures_util::stream::iter(chunks)),
        ))
        .unwrap();
    let (mut send_stream, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(
            common::edge::tls_connect(
                replica.https,
                "limited.internal",
                common::edge::client_config(&[&replica.root()], &[b"h2"]),
            )
            .await
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let response = send_stream.send_request(streamed).await.unwrap();
    assert_eq!(response.status(), 413, "a streamed body past the limit");
    let (status, _) = get_h2(&mut limited, "limited.internal", "/delay/3000").await;
    assert_eq!(status, 504, "slower than proxy-read-timeout");

    let mut open = replica.h2("open.internal").await;
    let response = open
        .send_request(post("open.internal", 2048))
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "[limits] for the other Ingress");
    let (status, _) = get_h2(&mut open, "open.internal", "/delay/1500").await;
    assert_eq!(status, 200);
}

/// An outage of the API server takes nothing down: the routes last seen keep serving
/// (no failed request while it lasts), and the watches resume when it ends; an Ingress
/// created meanwhile, after etcd compacted the history the replica was watching from
/// (410 Gone on resume), is found by listing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_keeps_the_routes_and_a_410_on_resume_lists_again() {
    use common::api_front::Front;
    common::edge::install_provider();
    let ns = control_plane().namespace("ingress-outage");
    grant(&ns, "replica");
    let web = backend_at(host_ip(), "web", Proto::Http1).await.0;
    ns.create(service("web", json!([{"port": 80}])));
    ns.create(slice("web-1", "web", "", &[(web, true)]));
    let ingress = |name: &str| {
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": name},
            "spec": {"ingressClassName": class(&ns), "rules": [{"host": format!("{name}.internal"), "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
            ]}}]},
        })
    };
    ns.create(ingress("before"));
    let front = Front::start(ns.plane()).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = ns.kubeconfig_via(dir.path(), "replica", &front.url());
    let replica = Replica::start_ingress(&ns, dir.path(), "replica", &kubeconfig, "", "").await;
    replica.ready().await;
    replica.until("before.internal", "/", |s, _| s == 200).await;
    let mut send = replica.h2("before.internal").await;
    assert_eq!(get_h2(&mut send, "before.internal", "/").await.0, 200);

    front.set_down(true);
    ns.create(ingress("during"));
    // One more write after it, then compaction up to now: the revision right after the
    // one the replica listed at is gone, so its watch cannot resume (a watch resumes
    // after its version, and etcd keeps the revision compacted to).
    ns.create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bump"}}));
    let compacted = ns.plane().compact();
    for _ in 0..20 {
        let (status, body) = get_h2(&mut send, "before.internal", "/").await;
        assert_eq!(
            (status, backend_of(&body)),
            (200, "web"),
            "during the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    front.set_down(false);
    replica
        .until("during.internal", "/", |s, b| {
            s == 200 && backend_of(b) == "web"
        })
        .await;
    let log = replica.log();
    assert!(
        log.contains("410 Gone"),
        "resumed past revision {compacted} without a 410:\n{log}"
    );
    assert_eq!(get_h2(&mut send, "before.internal", "/").await.0, 200);
}

/// [`slice`] carrying the stored object's resourceVersion, for `kubectl replace`.
fn slice_with_version(
    ns: &Namespace,
    name: &str,
    service: &str,
    port_name: &str,
    endpoints: &[(SocketAddr, bool)],
) -> Value {
    let mut object = slice(name, service, port_name, endpoints);
    let stored = ns.get("endpointslices", name).unwrap();
    object["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"].clone();
    object
}

/// `/readyz` answers 200 only after the first list of every watched kind: a replica
/// that cannot list Ingresses (no right to) stays unready, and turns ready once the
/// right is granted, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_first_list_of_every_kind() {
    common::edge::install_provider();
    let ns = control_plane().namespace("ingress-ready");
    let dir = tempfile::tempdir().unwrap();
    let replica = Replica::start(
        &ns,
        dir.path(),
        "replica",
        "[[site]]\nhosts = [\"file.internal\"]\n[[site.route]]\npath = \"/\"\nrespond = { status = 200, body = \"ok\" }\n",
    ).await;
    // The file's site serves while the cluster cannot be read.
    let root = dir.path().join("data/ca/root.pem");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !root.exists() {
        assert!(Instant::now() < deadline, "no local CA:\n{}", replica.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    replica.until("file.internal", "/", |s, _| s == 200).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !replica.log().contains("cannot list") {
        assert!(
            Instant::now() < deadline,
            "no list refused:\n{}",
            replica.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(
        readyz(replica.admin).await,
        Some(200),
        "ready without the cluster's objects"
    );
    grant(&ns, "replica");
    replica.ready().await;
}
