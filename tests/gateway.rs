//! Gateway API configures portico, against the real API server with the standard CRDs
//! installed: the `portico` binary signs in as a replica identity with the shipped
//! ClusterRole's rights, watches GatewayClasses, Gateways, HTTPRoutes and
//! ReferenceGrants, serves the routes over real sockets to upstreams on this machine,
//! and writes status as the spec says. Each test names the conformance tests
//! (`sigs.k8s.io/gateway-api` `conformance/tests`) it mirrors.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use portico_test_support as common;

use common::cluster::{Replica, backend_of, leaf, service, slice, tls_secret};
use common::control_plane::{Namespace, control_plane};
use common::{Proto, backend_at, host_ip};
use serde_json::{Value, json};

const CONTROLLER: &str = "portico.dev/gateway-controller";

/// The CRDs, the test's GatewayClass, and the shipped rights for `who` in each of
/// `namespaces`.
fn setup(ns: &Namespace, others: &[&Namespace], who: &str) {
    ns.plane().gateway_crds();
    for n in std::iter::once(ns).chain(others.iter().copied()) {
        n.grant_ingress_controller(&[who]);
    }
    ns.plane().kubectl(
        &["apply", "-f", "-"],
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": ns.gateway_class()},
            "spec": {"controllerName": CONTROLLER},
        })
        .to_string()
        .as_bytes(),
    );
}

fn gateway(name: &str, listeners: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"gatewayClassName": "", "listeners": listeners},
    })
}

fn route(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// A Service `name` on port 80 whose one endpoint is a new echo backend of that name.
async fn echo_service(ns: &Namespace, name: &'static str) {
    let addr = backend_at(host_ip(), name, Proto::Http1).await.0;
    ns.create(service(name, json!([{"name": "http", "port": 80}])));
    ns.create(slice(&format!("{name}-1"), name, "http", &[(addr, true)]));
}

/// A request over plain HTTP/1.1 on a new connection: status, headers, body.
async fn plain(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = send
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// Waits until `want` holds of the object (as the admin reads it), or fails showing it
/// and the replica's log.
async fn until_object(
    ns: &Namespace,
    resource: &str,
    name: &str,
    replica: &Replica,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let object = ns.get(resource, name).unwrap_or(Value::Null);
        if want(&object) {
            return object;
        }
        assert!(
            Instant::now() < deadline,
            "{resource} {name}: {object:#}\nlog:\n{}",
            replica.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The condition `type_` of a conditions list: (status, reason).
fn condition(conditions: &Value, type_: &str) -> (String, String) {
    conditions
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}

/// The message of the condition `type_` of a conditions list.
fn condition_message(conditions: &Value, type_: &str) -> String {
    conditions
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["message"].as_str())
        .unwrap_or("")
        .to_string()
}

/// The route's status for its first parent of portico's: a condition.
fn route_condition(object: &Value, type_: &str) -> (String, String) {
    let parents = object["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    parents
        .iter()
        .find(|p| p["controllerName"] == CONTROLLER)
        .map(|p| condition(&p["conditions"], type_))
        .unwrap_or_default()
}

/// A listener's status by name.
fn listener(object: &Value, name: &str) -> Value {
    object["status"]["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

fn pair(status: &str, reason: &str) -> (String, String) {
    (status.to_string(), reason.to_string())
}

/// Mirrors GatewayClassObservedGenerationBump, GatewayObservedGenerationBump,
/// GatewayInvalidTLSConfiguration (a listener it cannot serve; a certificateRef Secret
/// that stops loading), HTTPRouteSimpleSameNamespace, HTTPRouteCrossNamespace,
/// HTTPRouteReferenceGrant, HTTPRouteInvalidCrossNamespaceBackendRef,
/// HTTPRouteInvalidBackendRefUnknownKind, HTTPRouteInvalidNonExistentBackendRef,
/// HTTPRouteHostnameIntersection, HTTPRouteInvalidCrossNamespaceParentRef and
/// HTTPRouteListenerHostnameMatching (an HTTPS listener's hostname and certificateRef,
/// served with the Secret's certificate and swapped when the Secret changes). A host of
/// a route that the config file serves stays the file's, and the route's owner is told
/// (a `NotServed` Warning Event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_and_routes_are_served_and_their_status_follows_the_spec() {
    common::edge::install_provider();
    let ns = control_plane().namespace("gateway");
    let other = control_plane().namespace("gateway-other");
    setup(&ns, &[&other], "replica");
    echo_service(&ns, "web").await;
    echo_service(&other, "far").await;
    let (secret, cert) = tls_secret("secure-cert", &["secure.internal"]);
    ns.create(secret);
    let mut gw = gateway(
        "gw",
        json!([
            {"name": "http", "port": 80, "protocol": "HTTP",
             "allowedRoutes": {"namespaces": {"from": "All"}}},
            {"name": "local", "port": 80, "protocol": "HTTP", "hostname": "local.internal"},
            {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "secure.internal",
             "tls": {"certificateRefs": [{"name": "secure-cert"}]}},
            {"name": "elsewhere", "port": 8080, "protocol": "HTTP"},
        ]),
        json!({}),
    );
    gw["spec"]["gatewayClassName"] = json!(ns.gateway_class());
    ns.create(gw);
    let to = |service: &str, namespace: Option<&str>| {
        let mut r = json!({"name": service, "port": 80});
        if let Some(n) = namespace {
            r["namespace"] = json!(n);
        }
        r
    };
    let parent =
        |section: &str| json!({"name": "gw", "namespace": ns.name, "sectionName": section});
    // filed.internal is the config file's: the route keeps its other host.
    ns.create(route(
        "same",
        json!({"parentRefs": [parent("http")], "hostnames": ["same.internal", "filed.internal"],
               "rules": [{"backendRefs": [to("web", None)]}]}),
    ));
    ns.create(route(
        "missing",
        json!({"parentRefs": [parent("http")], "hostnames": ["missing.internal"],
               "rules": [{"backendRefs": [to("nonexistent", None)]}]}),
    ));
    other.create(route(
        "cross",
        json!({"parentRefs": [parent("http")], "hostnames": ["cross.internal"],
               "rules": [{"backendRefs": [to("far", None)]}]}),
    ));
    other.create(route(
        "ungranted",
        json!({"parentRefs": [parent("http")], "hostnames": ["ungranted.internal"],
               "rules": [{"backendRefs": [to("web", Some(&ns.name))]}]}),
    ));
    ns.create(route(
        "badkind",
        json!({"parentRefs": [parent("http")], "hostnames": ["badkind.internal"],
               "rules": [{"backendRefs": [{"group": "example.com", "kind": "Unknown", "name": "web"}]}]}),
    ));
    ns.create(route(
        "nohost",
        json!({"parentRefs": [parent("https")], "hostnames": ["other.internal"],
               "rules": [{"backendRefs": [to("web", None)]}]}),
    ));
    other.create(route(
        "intruder",
        json!({"parentRefs": [parent("local")],
               "rules": [{"backendRefs": [to("far", None)]}]}),
    ));
    ns.create(route(
        "secure",
        json!({"parentRefs": [parent("https")],
               "rules": [{"backendRefs": [to("web", None)]}]}),
    ));

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = ns.kubeconfig(dir.path(), "replica");
    let replica = Replica::start_full(
        &ns,
        dir.path(),
        "replica",
        &kubeconfig,
        &format!(
            "gateway_class = \"{}\"\nnamespaces = [\"{}\", \"{}\"]\n",
            ns.gateway_class(),
            ns.name,
            other.name
        ),
        "[[site]]\nhosts = [\"filed.internal\"]\n[[site.route]]\npath = \"/\"\nrespond = { status = 200, body = \"from the file\" }\n",
    ).await;
    replica.ready().await;

    // Routing: same namespace, another namespace allowed by the listener.
    let (status, _, body) = plain(replica.http, "GET", "same.internal", "/x", &[]).await;
    assert_eq!((status, backend_of(&body)), (200, "web"), "{body}");
    let (status, _, body) = plain(replica.http, "GET", "cross.internal", "/", &[]).await;
    assert_eq!((status, backend_of(&body)), (200, "far"), "{body}");
    // A backendRef into another namespace without a ReferenceGrant, one of a kind
    // portico cannot reach, and one to a Service that does not exist: 500, as the spec
    // says.
    for host in ["ungranted.internal", "badkind.internal", "missing.internal"] {
        let (status, _, body) = plain(replica.http, "GET", host, "/", &[]).await;
        assert_eq!(status, 500, "{host}: {body}");
    }
    // The file's site, not the route: it redirects port 80 to https, where it answers.
    let (status, _, body) = plain(replica.http, "GET", "filed.internal", "/", &[]).await;
    assert_eq!(status, 308, "{body}");
    let (_, body) = replica.until("filed.internal", "/", |s, _| s == 200).await;
    assert_eq!(body, "from the file");
    // Not attached anywhere: no site.
    for host in ["other.internal", "local.internal"] {
        let (status, _, _) = plain(replica.http, "GET", host, "/", &[]).await;
        assert_eq!(status, 421, "{host}");
    }
    // The HTTPS listener: its hostname, the Secret's certificate.
    let served = leaf(&replica, "secure.internal", &cert)
        .await
        .expect("the Secret's certificate");
    let config = common::edge::client_config(&[cert.as_bytes()], &[b"h2"]);
    let tls = common::edge::tls_connect(replica.https, "secure.internal", config)
        .await
        .unwrap();
    let mut send = common::edge::h2_over(tls).await;
    let (status, body) = common::edge::get_h2(&mut send, "secure.internal", "/").await;
    assert_eq!((status, backend_of(&body)), (200, "web"), "{body}");
    // An HTTPS-only host is not served on port 80 (its redirect aside).
    let (status, location, _) =
        common::edge::plain_get(replica.http, "secure.internal", "/a").await;
    assert_eq!(status, 308, "{location:?}");

    // Status.
    let class = until_object(&ns, "gatewayclass", &ns.gateway_class(), &replica, |o| {
        condition(&o["status"]["conditions"], "Accepted").0 == "True"
    })
    .await;
    let features: Vec<&str> = class["status"]["supportedFeatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for f in ["Gateway", "HTTPRoute", "ReferenceGrant"] {
        assert!(features.contains(&f), "{features:?}");
    }
    // A change of the class's spec bumps its generation; Accepted follows it.
    let class_generation = class["metadata"]["generation"].clone();
    assert_eq!(
        class["status"]["conditions"][0]["observedGeneration"],
        class_generation
    );
    let bumped = ns.patch(
        "gatewayclass",
        &ns.gateway_class(),
        json!({"spec": {"description": "bumped by the test"}}),
    );
    let new_generation = bumped["metadata"]["generation"].clone();
    assert_ne!(new_generation, class_generation, "{bumped:#}");
    until_object(&ns, "gatewayclass", &ns.gateway_class(), &replica, |o| {
        o["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| {
                c["type"] == "Accepted"
                    && c["status"] == "True"
                    && c["observedGeneration"] == new_generation
            })
    })
    .await;
    let gw = until_object(&ns, "gateway", "gw", &replica, |o| {
        listener(o, "http")["attachedRoutes"] == 5
    })
    .await;
    let generation = gw["metadata"]["generation"].clone();
    assert_eq!(
        condition(&gw["status"]["conditions"], "Accepted"),
        pair("True", "Accepted")
    );
    assert_eq!(
        condition(&gw["status"]["conditions"], "Programmed"),
        pair("True", "Programmed")
    );
    for c in gw["status"]["conditions"].as_array().unwrap() {
        assert_eq!(c["observedGeneration"], generation, "{c}");
    }
    assert_eq!(listener(&gw, "https")["attachedRoutes"], 1, "{gw:#}");
    assert_eq!(listener(&gw, "local")["attachedRoutes"], 0, "{gw:#}");
    let elsewhere = listener(&gw, "elsewhere");
    assert_eq!(
        condition(&elsewhere["conditions"], "Accepted"),
        pair("False", "PortUnavailable")
    );
    assert_eq!(condition(&elsewhere["conditions"], "Programmed").0, "False");
    let https = listener(&gw, "https");
    assert_eq!(
        condition(&https["conditions"], "ResolvedRefs"),
        pair("True", "ResolvedRefs")
    );
    assert_eq!(
        condition(&https["conditions"], "Conflicted"),
        pair("False", "NoConflicts")
    );
    assert_eq!(https["supportedKinds"][0]["kind"], "HTTPRoute");

    let same = until_object(&ns, "httproute", "same", &replica, |o| {
        route_condition(o, "Accepted").0 == "True"
    })
    .await;
    assert_eq!(
        route_condition(&same, "ResolvedRefs"),
        pair("True", "ResolvedRefs")
    );
    let ungranted = until_object(&other, "httproute", "ungranted", &replica, |o| {
        route_condition(o, "ResolvedRefs").0 == "False"
    })
    .await;
    assert_eq!(
        route_condition(&ungranted, "ResolvedRefs"),
        pair("False", "RefNotPermitted")
    );
    assert_eq!(
        route_condition(&ungranted, "Accepted"),
        pair("True", "Accepted")
    );
    let badkind = until_object(&ns, "httproute", "badkind", &replica, |o| {
        route_condition(o, "ResolvedRefs").0 == "False"
    })
    .await;
    assert_eq!(
        route_condition(&badkind, "ResolvedRefs"),
        pair("False", "InvalidKind")
    );
    let missing = until_object(&ns, "httproute", "missing", &replica, |o| {
        route_condition(o, "ResolvedRefs").0 == "False"
    })
    .await;
    assert_eq!(
        route_condition(&missing, "ResolvedRefs"),
        pair("False", "BackendNotFound")
    );
    assert_eq!(
        route_condition(&missing, "Accepted"),
        pair("True", "Accepted")
    );
    // The host the file serves: a Warning Event on the route that names it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let event = loop {
        let found = ns.list("events").into_iter().find(|e| {
            e["involvedObject"]["kind"] == "HTTPRoute"
                && e["involvedObject"]["name"] == "same"
                && e["reason"] == "NotServed"
        });
        if let Some(e) = found {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no NotServed Event on HTTPRoute same; log:\n{}",
            replica.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(event["type"], "Warning");
    let message = event["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("filed.internal: not served from this HTTPRoute")
            && message.contains("config file")
            && message.contains("its other hosts are served"),
        "{message}"
    );
    let nohost = until_object(&ns, "httproute", "nohost", &replica, |o| {
        route_condition(o, "Accepted").0 == "False"
    })
    .await;
    assert_eq!(
        route_condition(&nohost, "Accepted"),
        pair("False", "NoMatchingListenerHostname")
    );
    let intruder = until_object(&other, "httproute", "intruder", &replica, |o| {
        route_condition(o, "Accepted").0 == "False"
    })
    .await;
    assert_eq!(
        route_condition(&intruder, "Accepted"),
        pair("False", "NotAllowedByListeners")
    );
    let parents = same["status"]["parents"].as_array().unwrap();
    assert_eq!(parents[0]["parentRef"]["name"], "gw");
    assert_eq!(
        parents[0]["conditions"][0]["observedGeneration"],
        same["metadata"]["generation"]
    );

    // A ReferenceGrant in the Service's namespace lets the route through.
    ns.create(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "ReferenceGrant",
        "metadata": {"name": "from-other"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": other.name}],
                 "to": [{"group": "", "kind": "Service", "name": "web"}]},
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = plain(replica.http, "GET", "ungranted.internal", "/", &[]).await;
        if status == 200 {
            assert_eq!(backend_of(&body), "web");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {status}; log:\n{}",
            replica.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until_object(&other, "httproute", "ungranted", &replica, |o| {
        route_condition(o, "ResolvedRefs") == pair("True", "ResolvedRefs")
    })
    .await;

    // A Gateway change bumps its generation; the status follows it.
    ns.patch(
        "gateway",
        "gw",
        json!({"spec": {"listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP",
             "allowedRoutes": {"namespaces": {"from": "All"}}},
            {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "secure.internal",
             "tls": {"certificateRefs": [{"name": "secure-cert"}]}},
        ]}}),
    );
    let gw = until_object(&ns, "gateway", "gw", &replica, |o| {
        o["status"]["conditions"][0]["observedGeneration"] == o["metadata"]["generation"]
            && o["metadata"]["generation"] != generation
    })
    .await;
    assert_eq!(
        gw["status"]["listeners"].as_array().unwrap().len(),
        2,
        "{gw:#}"
    );

    // The Secret changes: the new certificate is served, nothing restarted.
    let (mut rotated, second) = tls_secret("secure-cert", &["secure.internal"]);
    rotated["metadata"]["resourceVersion"] =
        ns.get("secrets", "secure-cert").unwrap()["metadata"]["resourceVersion"].clone();
    common::cluster::replace(&ns, rotated);
    let deadline = Instant::now() + Duration::from_secs(30);
    let swapped = loop {
        if let Ok(leaf) = leaf(&replica, "secure.internal", &second).await {
            break leaf;
        }
        assert!(
            Instant::now() < deadline,
            "not swapped; log:\n{}",
            replica.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(served, swapped);
    // Applied like a reload: the HTTP/2 connection opened before the Gateway and
    // Secret changes still serves.
    let (status, body) = common::edge::get_h2(&mut send, "secure.internal", "/after").await;
    assert_eq!((status, backend_of(&body)), (200, "web"), "{body}");

    // The Secret stops loading (its tls.crt garbage): the listener says so, and the
    // certificate served before keeps serving.
    let (mut broken, _) = tls_secret("secure-cert", &["secure.internal"]);
    broken["data"]["tls.crt"] = json!(common::base64_encode(b"not a certificate"));
    broken["metadata"]["resourceVersion"] =
        ns.get("secrets", "secure-cert").unwrap()["metadata"]["resourceVersion"].clone();
    common::cluster::replace(&ns, broken);
    let gw = until_object(&ns, "gateway", "gw", &replica, |o| {
        condition(&listener(o, "https")["conditions"], "ResolvedRefs").0 == "False"
    })
    .await;
    let https = listener(&gw, "https");
    assert_eq!(
        condition(&https["conditions"], "ResolvedRefs"),
        pair("False", "InvalidCertificateRef")
    );
    let message = condition_message(&https["conditions"], "ResolvedRefs");
    assert!(
        message.contains(&format!("Secret {}/secure-cert", ns.name)),
        "{message}"
    );
    assert_eq!(
        leaf(&replica, "secure.internal", &second).await,
        Ok(swapped),
        "the certificate served before keeps serving"
    );
    let (status, body) = common::edge::get_h2(&mut send, "secure.internal", "/broken").await;
    assert_eq!((status, backend_of(&body)), (200, "web"), "{body}");
    // The file's host, refused at every build since the start, was logged once.
    let log = replica.log();
    assert_eq!(
        log.matches("filed.internal: not served from this HTTPRoute")
            .count(),
        1,
        "{log}"
    );
}

/// An HTTPS listener whose certificateRef does not exist: on a Gateway annotated
/// `portico.dev/acme: "true"` the certificate is obtained (the local CA, for a
/// `.internal` name) and written into that Secret, labelled as portico's; without the
/// annotation, and for a wildcard hostname, the listener says why it has no
/// certificate; a Secret whose certificate is malformed is `InvalidCertificateRef`
/// too, on a listener no route attaches to (mirrors GatewayInvalidTLSConfiguration).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_certificate_ref_is_filled_only_when_asked_and_never_for_a_wildcard() {
    common::edge::install_provider();
    let ns = control_plane().namespace("gateway-fill");
    setup(&ns, &[], "replica");
    echo_service(&ns, "web").await;
    let listeners = |prefix: &str| {
        json!([
            {"name": "named", "port": 443, "protocol": "HTTPS", "hostname": format!("{prefix}.internal"),
             "tls": {"certificateRefs": [{"name": format!("{prefix}-cert")}]}},
            {"name": "wild", "port": 443, "protocol": "HTTPS", "hostname": format!("*.{prefix}.internal"),
             "tls": {"certificateRefs": [{"name": format!("{prefix}-wild-cert")}]}},
        ])
    };
    let mut asked = gateway(
        "asked",
        listeners("asked"),
        json!({"portico.dev/acme": "true"}),
    );
    asked["spec"]["gatewayClassName"] = json!(ns.gateway_class());
    ns.create(asked);
    let mut plain_gw = gateway("plain", listeners("plain"), json!({}));
    plain_gw["spec"]["gatewayClassName"] = json!(ns.gateway_class());
    ns.create(plain_gw);
    // As the conformance test's: a listener with no hostname, no route, and a Secret
    // whose tls.crt is not a certificate.
    let (mut malformed, _) = tls_secret("malformed-certificate", &["malformed.internal"]);
    malformed["data"]["tls.crt"] = json!(common::base64_encode(
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    ));
    ns.create(malformed);
    let mut malformed_gw = gateway(
        "malformed",
        json!([{"name": "https", "port": 443, "protocol": "HTTPS",
                "allowedRoutes": {"namespaces": {"from": "All"}},
                "tls": {"certificateRefs": [{"group": "", "kind": "Secret", "name": "malformed-certificate"}]}}]),
        json!({}),
    );
    malformed_gw["spec"]["gatewayClassName"] = json!(ns.gateway_class());
    ns.create(malformed_gw);
    for gw in ["asked", "plain"] {
        ns.create(route(
            &format!("{gw}-route"),
            json!({"parentRefs": [{"name": gw}],
                   "hostnames": [format!("{gw}.internal"), format!("x.{gw}.internal")],
                   "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}),
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let replica = Replica::gateway(&ns, dir.path(), "replica", "", "").await;
    replica.ready().await;

    // Filled: the Secret appears, labelled, holding what is served.
    let secret = until_object(&ns, "secret", "asked-cert", &replica, |o| !o.is_null()).await;
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "portico"
    );
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let (status, body) = replica.until("asked.internal", "/", |s, _| s == 200).await;
    assert_eq!(backend_of(&body), "web", "{status} {body}");

    let gw = until_object(&ns, "gateway", "plain", &replica, |o| {
        condition(&listener(o, "named")["conditions"], "ResolvedRefs").0 == "False"
    })
    .await;
    assert_eq!(
        condition(&listener(&gw, "named")["conditions"], "ResolvedRefs"),
        pair("False", "InvalidCertificateRef")
    );
    assert!(ns.get("secret", "plain-cert").is_none());
    let gw = until_object(&ns, "gateway", "asked", &replica, |o| {
        condition(&listener(o, "wild")["conditions"], "ResolvedRefs").0 == "False"
    })
    .await;
    let wild = listener(&gw, "wild");
    let message = wild["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ResolvedRefs")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("wildcard"), "{message}");
    assert!(ns.get("secret", "asked-wild-cert").is_none());
    let gw = until_object(&ns, "gateway", "malformed", &replica, |o| {
        condition(&listener(o, "https")["conditions"], "ResolvedRefs").0 == "False"
    })
    .await;
    let https = listener(&gw, "https");
    assert_eq!(
        condition(&https["conditions"], "ResolvedRefs"),
        pair("False", "InvalidCertificateRef"),
        "{gw:#}"
    );
    assert_eq!(condition(&https["conditions"], "Programmed").0, "False");
    assert_eq!(https["attachedRoutes"], 0);
    let message = condition_message(&https["conditions"], "ResolvedRefs");
    assert!(
        message.contains(&format!("Secret {}/malformed-certificate", ns.name)),
        "{message}"
    );
    // Not served over HTTPS without a certificate.
    let (status, _) = replica.until("x.asked.internal", "/", |s, _| s == 0).await;
    assert_eq!(status, 0);
}

/// A header line of the echo backend's report.
fn echoed<'b>(body: &'b str, header: &str) -> Vec<&'b str> {
    let prefix = format!("header {header}: ");
    body.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

fn uri_of(body: &str) -> &str {
    body.lines()
        .find_map(|l| l.strip_prefix("uri: "))
        .unwrap_or("")
}

/// Requests answered as the spec's matching, filters and weights say, on routes the API
/// server holds. Mirrors HTTPRouteMatching, HTTPRouteMatchingAcrossRoutes,
/// HTTPRouteExactPathMatching, HTTPRouteHeaderMatching, HTTPRouteQueryParamMatching,
/// HTTPRouteMethodMatching, HTTPRouteRequestHeaderModifier,
/// HTTPRouteResponseHeaderModifier, HTTPRouteRedirectHostAndStatus,
/// HTTPRouteRedirectScheme, HTTPRouteRedirectPath, HTTPRouteRedirectPort,
/// HTTPRouteRewriteHost, HTTPRouteRewritePath, HTTPRouteWeight and
/// HTTPRouteTimeoutRequest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matches_filters_redirects_rewrites_and_weights_follow_the_spec() {
    common::edge::install_provider();
    let ns = control_plane().namespace("gateway-rules");
    setup(&ns, &[], "replica");
    for name in ["web", "web2", "web3"] {
        echo_service(&ns, name).await;
    }
    let mut gw = gateway(
        "gw",
        json!([{"name": "http", "port": 80, "protocol": "HTTP"}]),
        json!({}),
    );
    gw["spec"]["gatewayClassName"] = json!(ns.gateway_class());
    ns.create(gw);
    let to = |service: &str| json!({"name": service, "port": 80});
    let parent = json!([{"name": "gw"}]);
    // HTTPRouteMatching and HTTPRouteMatchingAcrossRoutes: two routes for one host.
    ns.create(route(
        "match-a",
        json!({"parentRefs": parent, "hostnames": ["match.internal"], "rules": [
            {"matches": [{"path": {"type": "Exact", "value": "/"}}], "backendRefs": [to("web")]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}], "backendRefs": [to("web2")]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"},
                          "headers": [{"name": "version", "value": "three"}]}], "backendRefs": [to("web3")]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/q"},
                          "queryParams": [{"name": "animal", "value": "whale"}]}], "backendRefs": [to("web3")]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/m"}, "method": "POST"}], "backendRefs": [to("web3")]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/m"}}], "backendRefs": [to("web2")]},
        ]}),
    ));
    ns.create(route(
        "match-b",
        json!({"parentRefs": parent, "hostnames": ["match.internal"], "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"},
                          "headers": [{"name": "version", "value": "two"}]}], "backendRefs": [to("web3")]},
        ]}),
    ));
    ns.create(route(
        "filters",
        json!({"parentRefs": parent, "hostnames": ["filters.internal"], "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
             "filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                    "set": [{"name": "X-Header-Set", "value": "set-overwrites-values"}],
                    "add": [{"name": "X-Header-Add", "value": "add-appends-values"}],
                    "remove": ["X-Header-Remove"]}},
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                    "set": [{"name": "X-Header-Set", "value": "set-overwrites-values"}],
                    "remove": ["X-Backend"]}},
             ],
             "backendRefs": [to("web")]},
        ]}),
    ));
    ns.create(route(
        "redirects",
        json!({"parentRefs": parent, "hostnames": ["redirect.internal"], "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/hostname-redirect"}}],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "example.org", "statusCode": 301}}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/scheme-redirect"}}],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/full"}}],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/full-path-replacement"}}}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/prefix"}}],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/replacement-prefix"}}}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/port-redirect"}}],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {"port": 8083}}]},
        ]}),
    ));
    ns.create(route(
        "rewrites",
        json!({"parentRefs": parent, "hostnames": ["rewrite.internal"], "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/prefix/one"}}],
             "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/one"}}}],
             "backendRefs": [to("web")]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/full/one"}}],
             "filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "one.example.org", "path": {"type": "ReplaceFullPath", "replaceFullPath": "/one"}}}],
             "backendRefs": [to("web")]},
        ]}),
    ));
    ns.create(route(
        "timeouts",
        json!({"parentRefs": parent, "hostnames": ["timeouts.internal"], "rules": [
            {"timeouts": {"request": "500ms"}, "backendRefs": [to("web")]},
        ]}),
    ));
    ns.create(route(
        "weights",
        json!({"parentRefs": parent, "hostnames": ["weights.internal"], "rules": [
            {"backendRefs": [
                {"name": "web", "port": 80, "weight": 70},
                {"name": "web2", "port": 80, "weight": 30},
                {"name": "web3", "port": 80, "weight": 0},
            ]},
        ]}),
    ));
    common::cluster::published_service(&ns, "portico", "203.0.113.20");
    let dir = tempfile::tempdir().unwrap();
    let publish = format!("publish_service = \"{}/portico\"\n", ns.name);
    let replica = Replica::gateway(&ns, dir.path(), "replica", &publish, "").await;
    replica.ready().await;
    // The Gateway's address is the publish Service's.
    until_object(&ns, "gateway", "gw", &replica, |o| {
        o["status"]["addresses"] == json!([{"type": "IPAddress", "value": "203.0.113.20"}])
    })
    .await;
    let http = replica.http;
    let ask = |host: &'static str,
               method: &'static str,
               path: &'static str,
               headers: Vec<(&'static str, &'static str)>| async move {
        plain(http, method, host, path, &headers).await
    };

    // Matching: path types, across routes, headers, query, method.
    for (method, path, headers, want) in [
        ("GET", "/", vec![], "web"),
        ("GET", "/v2", vec![], "web2"),
        ("GET", "/v2/example", vec![], "web2"),
        ("GET", "/v2", vec![("version", "two")], "web3"),
        // An Exact path outranks a header match on a prefix.
        ("GET", "/", vec![("version", "three")], "web"),
        ("GET", "/x", vec![("Version", "three")], "web3"),
        ("GET", "/q?animal=whale", vec![], "web3"),
        ("GET", "/q?animal=dolphin", vec![], "404"),
        ("POST", "/m", vec![], "web3"),
        ("GET", "/m", vec![], "web2"),
        // Exact "/" is not a prefix: no other rule of the host takes "/other".
        ("GET", "/other", vec![], "404"),
    ] {
        let (status, _, body) = ask("match.internal", method, path, headers.clone()).await;
        let got = if status == 200 {
            backend_of(&body).to_string()
        } else {
            status.to_string()
        };
        assert_eq!(got, want, "{method} {path} {headers:?}: {status} {body}");
    }

    // Header modifiers, both ways.
    let (status, response, body) = ask(
        "filters.internal",
        "GET",
        "/",
        vec![
            ("X-Header-Set", "some-other-value"),
            ("X-Header-Add", "add-value"),
            ("X-Header-Remove", "gone"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        echoed(&body, "x-header-set"),
        ["set-overwrites-values"],
        "{body}"
    );
    assert_eq!(
        echoed(&body, "x-header-add"),
        ["add-value", "add-appends-values"],
        "{body}"
    );
    assert!(echoed(&body, "x-header-remove").is_empty(), "{body}");
    assert_eq!(response["x-header-set"], "set-overwrites-values");
    assert!(!response.contains_key("x-backend"), "{response:?}");

    // Redirects.
    for (path, status, location) in [
        (
            "/hostname-redirect",
            301,
            "http://example.org/hostname-redirect",
        ),
        (
            "/scheme-redirect",
            302,
            "https://redirect.internal/scheme-redirect",
        ),
        (
            "/full/path?x=1",
            302,
            "http://redirect.internal/full-path-replacement?x=1",
        ),
        (
            "/prefix/rest",
            302,
            "http://redirect.internal/replacement-prefix/rest",
        ),
        (
            "/port-redirect",
            302,
            "http://redirect.internal:8083/port-redirect",
        ),
    ] {
        let (got, headers, body) = ask("redirect.internal", "GET", path, vec![]).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(headers["location"], location, "{path}");
    }

    // Rewrites: the path and Host the upstream sees.
    let (_, _, body) = ask("rewrite.internal", "GET", "/prefix/one/two?q=1", vec![]).await;
    assert_eq!(uri_of(&body), "/one/two?q=1", "{body}");
    let (_, _, body) = ask("rewrite.internal", "GET", "/full/one/two", vec![]).await;
    assert_eq!(uri_of(&body), "/one", "{body}");
    assert_eq!(echoed(&body, "host"), ["one.example.org"], "{body}");

    // Timeouts: a response head later than the rule's timeout is 504; a quicker one
    // is served.
    let (status, _, body) = ask("timeouts.internal", "GET", "/delay/3000", vec![]).await;
    assert_eq!(status, 504, "{body}");
    let (status, _, body) = ask("timeouts.internal", "GET", "/delay/10", vec![]).await;
    assert_eq!(status, 200, "{body}");

    // Weights: 1,000 requests within 5% of 70/30; weight 0 never.
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..1000 {
        let (status, _, body) = ask("weights.internal", "GET", "/", vec![]).await;
        assert_eq!(status, 200, "{body}");
        *counts.entry(backend_of(&body).to_string()).or_insert(0u32) += 1;
    }
    let share = |name: &str| f64::from(counts.get(name).copied().unwrap_or(0)) / 1000.0;
    assert!((share("web") - 0.7).abs() <= 0.05, "{counts:?}");
    assert!((share("web2") - 0.3).abs() <= 0.05, "{counts:?}");
    assert_eq!(counts.get("web3"), None, "{counts:?}");
}

/// Mirrors HTTPRouteListenerHostnameMatching (a `*.` listener covers names any number
/// of labels deep, exact names and the longest wildcard win), then
/// HTTPRouteSimpleSameNamespace's shape: a listener and a route without hostnames serve
/// every host no one else serves, on port 80 and, with the listener's Secret, over
/// HTTPS for any SNI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_go_any_number_of_labels_deep_and_a_route_without_hostnames_serves_the_rest() {
    common::edge::install_provider();
    let ns = control_plane().namespace("gateway-hosts");
    setup(&ns, &[], "replica");
    for name in ["v1", "v2", "v3", "rest"] {
        echo_service(&ns, name).await;
    }
    let mut names = gateway(
        "names",
        json!([
            {"name": "listener-1", "port": 80, "protocol": "HTTP", "hostname": "bar.com"},
            {"name": "listener-2", "port": 80, "protocol": "HTTP", "hostname": "foo.bar.com"},
            {"name": "listener-3", "port": 80, "protocol": "HTTP", "hostname": "*.bar.com"},
            {"name": "listener-4", "port": 80, "protocol": "HTTP", "hostname": "*.foo.com"},
        ]),
        json!({}),
    );
    names["spec"]["gatewayClassName"] = json!(ns.gateway_class());
    ns.create(names);
    let to = |gateway: &str, sections: &[&str], service: &str| {
        let parents: Vec<Value> = sections
            .iter()
            .map(|s| json!({"name": gateway, "sectionName": s}))
            .collect();
        json!({"parentRefs": parents, "rules": [{"backendRefs": [{"name": service, "port": 80}]}]})
    };
    ns.create(route("backend-v1", to("names", &["listener-1"], "v1")));
    ns.create(route("backend-v2", to("names", &["listener-2"], "v2")));
    ns.create(route(
        "backend-v3",
        to("names", &["listener-3", "listener-4"], "v3"),
    ));

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = ns.kubeconfig(dir.path(), "replica");
    let replica = Replica::start_full(
        &ns,
        dir.path(),
        "replica",
        &kubeconfig,
        &format!(
            "gateway_class = \"{}\"\nnamespaces = [\"{}\"]\n",
            ns.gateway_class(),
            ns.name
        ),
        "",
    )
    .await;
    replica.ready().await;
    until_object(&ns, "httproute", "backend-v3", &replica, |o| {
        route_condition(o, "Accepted").0 == "True"
    })
    .await;
    let served = [
        ("bar.com", "v1"),
        ("foo.bar.com", "v2"),
        ("baz.bar.com", "v3"),
        ("boo.bar.com", "v3"),
        ("multiple.prefixes.bar.com", "v3"),
        ("multiple.prefixes.foo.com", "v3"),
    ];
    for (host, backend) in served {
        let (status, _, body) = plain(replica.http, "GET", host, "/", &[]).await;
        assert_eq!(
            (status, backend_of(&body)),
            (200, backend),
            "{host}: {body}"
        );
    }
    // No listener covers these: no site (portico answers 421 where the conformance
    // suite's implementations answer 404).
    for host in ["foo.com", "no.matching.host"] {
        let (status, _, body) = plain(replica.http, "GET", host, "/", &[]).await;
        assert_eq!(status, 421, "{host}: {body}");
    }

    // The catch-all: a Gateway whose listeners name no hostname, a route that names none.
    let (secret, cert) = tls_secret("any-cert", &["whatever.internal", "bar.com"]);
    ns.create(secret);
    let mut all = gateway(
        "all",
        json!([
            {"name": "http", "port": 80, "protocol": "HTTP"},
            {"name": "https", "port": 443, "protocol": "HTTPS",
             "tls": {"certificateRefs": [{"name": "any-cert"}]}},
        ]),
        json!({}),
    );
    all["spec"]["gatewayClassName"] = json!(ns.gateway_class());
    ns.create(all);
    ns.create(route("rest", to("all", &["http", "https"], "rest")));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = plain(replica.http, "GET", "no.matching.host", "/", &[]).await;
        if status == 200 {
            assert_eq!(backend_of(&body), "rest", "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {status}; log:\n{}",
            replica.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Named hosts keep their routes: exact and wildcard names win over the catch-all.
    for (host, backend) in served.into_iter().chain([("foo.com", "rest")]) {
        let (status, _, body) = plain(replica.http, "GET", host, "/", &[]).await;
        assert_eq!(
            (status, backend_of(&body)),
            (200, backend),
            "{host}: {body}"
        );
    }
    // Over HTTPS any SNI gets the listener's Secret, and the request its route.
    assert!(leaf(&replica, "whatever.internal", &cert).await.is_ok());
    let config = common::edge::client_config(&[cert.as_bytes()], &[b"h2"]);
    let tls = common::edge::tls_connect(replica.https, "whatever.internal", config)
        .await
        .unwrap();
    let mut send = common::edge::h2_over(tls).await;
    let (status, body) = common::edge::get_h2(&mut send, "whatever.internal", "/").await;
    assert_eq!((status, backend_of(&body)), (200, "rest"), "{body}");
    let gw = until_object(&ns, "gateway", "all", &replica, |o| {
        listener(o, "https")["attachedRoutes"] == 1
    })
    .await;
    assert_eq!(
        condition(&listener(&gw, "https")["conditions"], "ResolvedRefs"),
        pair("True", "ResolvedRefs")
    );
    let rest = until_object(&ns, "httproute", "rest", &replica, |o| {
        route_condition(o, "Accepted").0 == "True"
    })
    .await;
    assert_eq!(
        route_condition(&rest, "ResolvedRefs"),
        pair("True", "ResolvedRefs")
    );
}
