//! The cluster-ingress manifests (`config/kubernetes/`, as `kubectl apply -k` builds
//! them) are valid Kubernetes objects and agree with the code, the Dockerfile and
//! docs/kubernetes.md: the ConfigMap is a config portico accepts, the pod's ports and probes are
//! the ones that config serves, the config folder is mounted the way reloads need, the
//! Role and the ClusterRole grant exactly the documented rights, which are enough for a
//! replica to turn ready and serve an Ingress (and each ClusterRole rule is needed),
//! and the pod runs as the image's user with nothing more than it needs.
//!
//! Facts about the Dockerfile alone live in `tests/packaging.rs`.

use portico_test_support as common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Bound;
use common::control_plane::control_plane;
use common::deploy::{manifests, object, role_rules};
use portico::config::{Config, Storage, TlsSource};
use serde_json::Value;

/// docs/kubernetes.md, "RBAC", the ClusterRole: cluster-wide reads of the objects
/// portico serves, and writes of their status, of Events about them and of the Secrets
/// portico fills.
const DOCUMENTED_CLUSTER_RULES: [(&str, &str, &[&str]); 14] = [
    (
        "networking.k8s.io",
        "ingressclasses",
        &["get", "list", "watch"],
    ),
    ("networking.k8s.io", "ingresses", &["get", "list", "watch"]),
    ("", "services", &["get", "list", "watch"]),
    (
        "discovery.k8s.io",
        "endpointslices",
        &["get", "list", "watch"],
    ),
    (
        "gateway.networking.k8s.io",
        "gatewayclasses",
        &["get", "list", "watch"],
    ),
    (
        "gateway.networking.k8s.io",
        "gateways",
        &["get", "list", "watch"],
    ),
    (
        "gateway.networking.k8s.io",
        "httproutes",
        &["get", "list", "watch"],
    ),
    (
        "gateway.networking.k8s.io",
        "referencegrants",
        &["get", "list", "watch"],
    ),
    ("", "secrets", &["get", "list", "watch", "create", "update"]),
    (
        "networking.k8s.io",
        "ingresses/status",
        &["update", "patch"],
    ),
    (
        "gateway.networking.k8s.io",
        "gatewayclasses/status",
        &["update", "patch"],
    ),
    (
        "gateway.networking.k8s.io",
        "gateways/status",
        &["update", "patch"],
    ),
    (
        "gateway.networking.k8s.io",
        "httproutes/status",
        &["update", "patch"],
    ),
    ("", "events", &["create", "patch"]),
];

/// The rules of a Role or ClusterRole as (group, resource, verbs), one group and one
/// resource per rule, no `resourceNames`.
fn rules_of(role: &Value) -> Vec<(&str, &str, Vec<&str>)> {
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let groups = strings(&r["apiGroups"]);
            let resources = strings(&r["resources"]);
            assert_eq!((groups.len(), resources.len()), (1, 1), "{r}");
            assert!(
                r.get("resourceNames").is_none(),
                "portico names its objects as it goes"
            );
            (groups[0], resources[0], strings(&r["verbs"]))
        })
        .collect()
}

fn documented(
    rules: &[(&'static str, &'static str, &'static [&'static str])],
) -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    rules.iter().map(|(g, r, v)| (*g, *r, v.to_vec())).collect()
}

/// docs/kubernetes.md, "RBAC": in portico's own namespace, secrets
/// get, list, watch, create, update, delete; leases get, create, update.
const DOCUMENTED_RULES: [(&str, &str, &[&str]); 2] = [
    (
        "",
        "secrets",
        &["get", "list", "watch", "create", "update", "delete"],
    ),
    (
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update"],
    ),
];

fn repo(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The arguments of the last Dockerfile instruction `name` (`USER`, `EXPOSE`, ...).
fn dockerfile(name: &str) -> String {
    let prefix = format!("{name} ");
    repo("Dockerfile")
        .lines()
        .rfind(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {name} in the Dockerfile"))[prefix.len()..]
        .to_string()
}

fn deployment() -> &'static Value {
    object("Deployment")
}

fn pod_spec() -> &'static Value {
    &deployment()["spec"]["template"]["spec"]
}

fn container() -> &'static Value {
    let containers = pod_spec()["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "one container: portico");
    &containers[0]
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

/// The container's `--config` argument.
fn config_path() -> &'static str {
    let args = strings(&container()["args"]);
    assert_eq!(args.len(), 3, "{args:?}");
    assert_eq!(args[..2], ["run", "--config"], "{args:?}");
    args[2]
}

/// The portico.toml of the ConfigMap the pod mounts.
fn config_text() -> &'static str {
    let name = Path::new(config_path())
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    object("ConfigMap")["data"][name]
        .as_str()
        .unwrap_or_else(|| panic!("the ConfigMap has no key {name}"))
}

fn config() -> Config {
    Config::parse(Path::new(config_path()), config_text()).unwrap()
}

/// The container port called `name`.
fn container_port(name: &str) -> u16 {
    container()["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
        .as_u64()
        .unwrap() as u16
}

/// A probe's port, named or numbered, as a container port number.
fn resolve_port(port: &Value) -> u16 {
    match port {
        Value::String(name) => container_port(name),
        n => n.as_u64().unwrap() as u16,
    }
}

fn labels(v: &Value) -> Vec<(String, String)> {
    v.as_object()
        .unwrap_or_else(|| panic!("no labels: {v}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

/// `value` read as the Kubernetes type `T` and written back: a field the API does not
/// know (a typo, a field of a newer version) is dropped on the way, and shows.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(value: &Value) -> Value {
    let typed: T =
        serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{}: {e}", value["kind"]));
    serde_json::to_value(typed).unwrap()
}

#[test]
fn every_object_is_valid_for_the_kubernetes_api() {
    use k8s_openapi::api::{apps, core, networking, policy, rbac};
    let mut kinds = Vec::new();
    for object in manifests() {
        let kind = object["kind"].as_str().unwrap();
        let back = match kind {
            "Namespace" => round_trip::<core::v1::Namespace>(object),
            "ServiceAccount" => round_trip::<core::v1::ServiceAccount>(object),
            "ConfigMap" => round_trip::<core::v1::ConfigMap>(object),
            "Service" => round_trip::<core::v1::Service>(object),
            "Role" => round_trip::<rbac::v1::Role>(object),
            "RoleBinding" => round_trip::<rbac::v1::RoleBinding>(object),
            "ClusterRole" => round_trip::<rbac::v1::ClusterRole>(object),
            "ClusterRoleBinding" => round_trip::<rbac::v1::ClusterRoleBinding>(object),
            "IngressClass" => round_trip::<networking::v1::IngressClass>(object),
            "Deployment" => round_trip::<apps::v1::Deployment>(object),
            "PodDisruptionBudget" => round_trip::<policy::v1::PodDisruptionBudget>(object),
            other => panic!("unexpected kind {other}"),
        };
        assert_eq!(&back, object, "{kind}: fields the API does not know");
        kinds.push(kind);
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "IngressClass",
            "Namespace",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
}

#[test]
fn the_configmap_is_the_checked_portico_toml_with_the_staging_ca() {
    // What `portico check --config config/kubernetes/portico.toml` validates is what
    // reaches the pods.
    assert_eq!(config_text(), repo("config/kubernetes/portico.toml"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.toml");
    std::fs::write(&path, config_text()).unwrap();
    let out = common::portico()
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("acme from https://acme-staging-v02.api.letsencrypt.org/directory"),
        "{stdout}"
    );
    // The production line the comment offers is the real one.
    assert!(
        config_text().contains(&format!(
            "# directory = \"{}\"",
            portico::config::LETS_ENCRYPT
        )),
        "{}",
        config_text()
    );

    let config = config();
    // The pod's own namespace: the one the Role is in.
    assert_eq!(config.storage, Storage::Kubernetes { namespace: None });
    assert!(
        config.sites.iter().any(|s| s.tls == TlsSource::Acme),
        "an example ACME site"
    );
    // Nothing read from or written to disk but the mounted config: the root filesystem
    // is read-only and the image's WORKDIR goes unused.
    assert!(config.acme.ca_root.is_none());
    assert!(
        config
            .sites
            .iter()
            .all(|s| !matches!(s.tls, TlsSource::Files { .. }))
    );
    assert_eq!(
        container()["securityContext"]["readOnlyRootFilesystem"],
        true
    );
}

#[test]
fn pod_ports_are_the_listen_ports_and_the_service_maps_80_and_443_to_them() {
    let listen = config().listen;
    let admin = listen.admin.expect("listen.admin: the kubelet probes it");
    for (name, addr) in [
        ("http", listen.http),
        ("https", listen.https),
        ("admin", admin),
    ] {
        // 0.0.0.0: the Service and the kubelet come from outside the pod.
        assert!(addr.ip().is_unspecified(), "listen.{name} = {addr}");
        assert_eq!(container_port(name), addr.port(), "{name}");
    }
    let pod_ports: BTreeSet<u16> = container()["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap() as u16)
        .collect();
    let exposed: BTreeSet<u16> = dockerfile("EXPOSE")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pod_ports, exposed, "the Dockerfile's EXPOSE");
    // Unprivileged: no capability needed to bind them.
    assert!(pod_ports.iter().all(|p| *p >= 1024), "{pod_ports:?}");

    let service = object("Service");
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(service["spec"]["externalTrafficPolicy"], "Local");
    let mapped: Vec<(u64, &str)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_u64().unwrap(),
                p["targetPort"].as_str().unwrap(),
            )
        })
        .collect();
    // By name, so a changed container port cannot leave the Service behind; the admin
    // port stays inside the cluster.
    assert_eq!(mapped, [(80, "http"), (443, "https")]);

    let annotations = &deployment()["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], admin.port().to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
}

#[test]
fn probes_ask_the_admin_listener_for_health_and_readiness() {
    let admin = config().listen.admin.unwrap().port();
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &container()[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(resolve_port(&get["port"]), admin, "{probe}");
    }
}

#[test]
fn the_config_folder_is_mounted_whole_where_the_args_point() {
    // Kubernetes would take the image's ENTRYPOINT (tests/packaging.rs: the binary) and
    // these arguments, the same as the image's own CMD.
    assert!(container().get("command").is_none());
    let cmd = dockerfile("CMD");
    let cmd: Vec<&str> = cmd
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(", ")
        .map(|a| a.trim_matches('"'))
        .collect();
    assert_eq!(strings(&container()["args"]), cmd);

    let path = Path::new(config_path());
    let mounts: Vec<&Value> = container()["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
        .collect();
    assert_eq!(mounts.len(), 1, "one mount holds {}", path.display());
    let mount = mounts[0];
    // The folder itself: kubelet swaps its `..data` symlink on a ConfigMap update, which
    // a subPath mount (a bind of one file) never shows.
    assert_eq!(
        Path::new(mount["mountPath"].as_str().unwrap()),
        path.parent().unwrap()
    );
    assert!(mount.get("subPath").is_none() && mount.get("subPathExpr").is_none());
    let volume = pod_spec()["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(
        volume["configMap"]["name"],
        object("ConfigMap")["metadata"]["name"]
    );
    assert!(
        volume["configMap"].get("items").is_none(),
        "every key under its own name"
    );

    // The Lease holder identity (docs/kubernetes.md: POD_NAME, else HOSTNAME).
    let env = container()["env"].as_array().unwrap();
    let pod_name = env.iter().find(|e| e["name"] == "POD_NAME").unwrap();
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
}

#[test]
fn the_role_has_the_documented_rules_and_is_bound_to_the_pods_service_account() {
    let namespace = object("Namespace")["metadata"]["name"].as_str().unwrap();
    // Cluster-wide: the namespace, the IngressClass, and the read-only ClusterRole.
    const CLUSTER_SCOPED: [&str; 4] = [
        "Namespace",
        "IngressClass",
        "ClusterRole",
        "ClusterRoleBinding",
    ];
    for o in manifests() {
        if CLUSTER_SCOPED.contains(&o["kind"].as_str().unwrap()) {
            assert!(o["metadata"].get("namespace").is_none(), "{}", o["kind"]);
        } else {
            assert_eq!(o["metadata"]["namespace"], namespace, "{}", o["kind"]);
        }
    }
    let role = object("Role");
    assert_eq!(rules_of(role), documented(&DOCUMENTED_RULES));
    let documented_role: Vec<(String, Vec<String>)> = DOCUMENTED_RULES
        .iter()
        .map(|(_, r, v)| (r.to_string(), v.iter().map(|s| s.to_string()).collect()))
        .collect();
    assert_eq!(role_rules(), documented_role);
    let cluster_role = object("ClusterRole");
    let rules = rules_of(cluster_role);
    assert_eq!(rules, documented(&DOCUMENTED_CLUSTER_RULES));
    // Cluster-wide, portico writes nothing but status, Events and the Secrets it fills.
    for (_, resource, verbs) in &rules {
        assert!(
            *verbs == ["get", "list", "watch"]
                || resource.ends_with("/status")
                || ["events", "secrets"].contains(resource),
            "{resource}: {verbs:?}"
        );
    }

    let account = pod_spec()["serviceAccountName"].as_str().unwrap();
    let service_account = object("ServiceAccount");
    assert_eq!(service_account["metadata"]["name"], account);
    // The Kubernetes backend signs in with the mounted token.
    assert_ne!(service_account["automountServiceAccountToken"], false);
    assert_ne!(pod_spec()["automountServiceAccountToken"], false);
    for (binding, role) in [
        (object("RoleBinding"), role),
        (object("ClusterRoleBinding"), cluster_role),
    ] {
        assert_eq!(binding["roleRef"]["kind"], role["kind"]);
        assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
        assert_eq!(binding["roleRef"]["apiGroup"], "rbac.authorization.k8s.io");
        let subjects = binding["subjects"].as_array().unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0]["kind"], "ServiceAccount");
        assert_eq!(subjects[0]["name"], account);
        assert_eq!(subjects[0]["namespace"], namespace);
    }
    // The class the config serves is the one shipped, and it is portico's.
    let class = object("IngressClass");
    let kubernetes = config()
        .kubernetes
        .expect("the shipped config serves Ingresses");
    assert_eq!(
        kubernetes.ingress_class.as_deref(),
        class["metadata"]["name"].as_str()
    );
    assert_eq!(
        class["spec"]["controller"],
        "portico.dev/ingress-controller"
    );
}

#[test]
fn the_pod_runs_as_the_images_user_with_no_privilege() {
    let pod = &pod_spec()["securityContext"];
    let own = &container()["securityContext"];
    // The container's setting wins over the pod's, as in Kubernetes.
    let effective = |key: &str| -> &Value {
        own.get(key)
            .or_else(|| pod.get(key))
            .unwrap_or_else(|| panic!("securityContext.{key} is not set"))
    };
    let user = dockerfile("USER");
    let (uid, gid) = user.split_once(':').unwrap();
    assert_eq!(effective("runAsUser").to_string(), uid);
    assert_eq!(effective("runAsGroup").to_string(), gid);
    assert_eq!(effective("runAsNonRoot"), true);
    assert_eq!(effective("seccompProfile")["type"], "RuntimeDefault");
    assert_eq!(own["allowPrivilegeEscalation"], false);
    assert_eq!(own["readOnlyRootFilesystem"], true);
    // 8080/8443 need no capability at all (so no NET_BIND_SERVICE either).
    assert_eq!(strings(&own["capabilities"]["drop"]), ["ALL"]);
    assert!(own["capabilities"].get("add").is_none());
    assert!(own.get("privileged").is_none_or(|p| p == false));
    assert!(pod_spec().get("hostNetwork").is_none_or(|h| h == false));
    let ports = container()["ports"].as_array().unwrap();
    assert!(ports.iter().all(|p| p.get("hostPort").is_none()));

    // The namespace enforces the "restricted" Pod Security Standard, which the above
    // meets; its volume types include configMap.
    let namespace = object("Namespace");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    for volume in pod_spec()["volumes"].as_array().unwrap() {
        assert!(volume.get("configMap").is_some(), "{volume}");
    }
}

#[test]
fn selectors_match_the_pod_labels() {
    let template = labels(&deployment()["spec"]["template"]["metadata"]["labels"]);
    let selects = |selector: &Value, what: &str| {
        let wanted = labels(selector);
        assert!(!wanted.is_empty(), "{what}");
        for pair in &wanted {
            assert!(template.contains(pair), "{what}: {pair:?} not on the pods");
        }
    };
    selects(
        &deployment()["spec"]["selector"]["matchLabels"],
        "Deployment",
    );
    selects(&object("Service")["spec"]["selector"], "Service");
    let pdb = object("PodDisruptionBudget");
    selects(
        &pdb["spec"]["selector"]["matchLabels"],
        "PodDisruptionBudget",
    );
    for spread in pod_spec()["topologySpreadConstraints"].as_array().unwrap() {
        selects(&spread["labelSelector"]["matchLabels"], "topology spread");
    }
    let spread = &pod_spec()["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");

    // A drain can always evict one replica and still keep one serving.
    let replicas = deployment()["spec"]["replicas"].as_u64().unwrap();
    let min_available = pdb["spec"]["minAvailable"].as_u64().unwrap();
    assert!(replicas >= 2 && (1..replicas).contains(&min_available));

    for o in manifests() {
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/name"], "portico",
            "{}",
            o["kind"]
        );
    }
}

#[test]
fn the_grace_period_covers_the_prestop_pause_and_the_drain() {
    let grace = pod_spec()["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let pause = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let drain = config().limits.shutdown_timeout;
    assert!(
        Duration::from_secs(grace) > Duration::from_secs(pause) + drain,
        "terminationGracePeriodSeconds {grace} <= preStop {pause} s + shutdown_timeout {drain:?}"
    );
    // The image the kustomization names is this version.
    let image = container()["image"].as_str().unwrap();
    let tag = image.rsplit_once(':').map(|(_, t)| t);
    assert_eq!(tag, Some(env!("CARGO_PKG_VERSION")), "{image}");
}

/// GET on the admin listener; the status code, or None while it does not answer.
async fn admin_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(tcp))
    .await
    .ok()?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "portico")
        .body(http_body_util::Empty::new())
        .unwrap();
    Some(send.send_request(req).await.ok()?.status().as_u16())
}

/// `kubectl apply -k config/kubernetes --dry-run=server`: the real API server, with its
/// own validation and admission, accepts every object as it would on a cluster.
#[test]
fn the_api_server_accepts_the_manifests() {
    let plane = control_plane();
    let namespace = object("Namespace")["metadata"]["name"].as_str().unwrap();
    // A server-side dry run creates nothing, not even the Namespace the other objects
    // go into: the Namespace has to be there for them to be judged.
    let _ = plane.kubectl_output(&["create", "namespace", namespace], b"");
    let out = apply_kustomization(&["--dry-run=server"]).unwrap();
    for o in manifests() {
        let kind = o["kind"].as_str().unwrap().to_lowercase();
        let name = o["metadata"]["name"].as_str().unwrap();
        // `role.rbac.authorization.k8s.io/portico created (server dry run)`
        let accepted = out.lines().any(|l| {
            let Some((resource, rest)) = l.split_once('/') else {
                return false;
            };
            (resource == kind || resource.starts_with(&format!("{kind}.")))
                && rest.starts_with(&format!("{name} "))
                && l.ends_with("(server dry run)")
        });
        assert!(accepted, "{kind}/{name} not accepted:\n{out}");
    }
}

/// The GatewayClass manifest (config/kubernetes/gateway) is accepted by the API server
/// once the CRDs are installed, and names the class and controller the shipped config
/// and the code serve.
#[test]
fn the_gateway_class_manifest_is_accepted_once_the_crds_are_installed() {
    let plane = control_plane();
    plane.gateway_crds();
    let folder = common::repo_root().join("config/kubernetes/gateway");
    let out = plane.kubectl(
        &["apply", "-k", folder.to_str().unwrap(), "--dry-run=server"],
        b"",
    );
    assert!(
        out.contains("gatewayclass.gateway.networking.k8s.io/portico created (server dry run)")
            || out.contains(
                "gatewayclass.gateway.networking.k8s.io/portico configured (server dry run)"
            )
            || out.contains(
                "gatewayclass.gateway.networking.k8s.io/portico unchanged (server dry run)"
            ),
        "{out}"
    );
    let built: Value = serde_json::from_str(&plane.kubectl(
        &[
            "create",
            "--dry-run=client",
            "-o",
            "json",
            "-f",
            folder.join("gatewayclass.yaml").to_str().unwrap(),
        ],
        b"",
    ))
    .unwrap();
    assert_eq!(
        built["spec"]["controllerName"],
        "portico.dev/gateway-controller"
    );
    let config =
        std::fs::read_to_string(common::repo_root().join("config/kubernetes/portico.toml"))
            .unwrap();
    assert!(
        config.contains(&format!("gateway_class = {}", built["metadata"]["name"])),
        "the shipped portico.toml serves the shipped GatewayClass"
    );
}

/// The Gateway API standard CRDs that `scripts/peers` copies from the pinned module
/// install on the real API server, and their kinds are then served.
#[test]
fn the_gateway_api_crds_install_on_the_api_server() {
    let out = control_plane().gateway_crds();
    for kind in [
        "gatewayclasses",
        "gateways",
        "httproutes",
        "referencegrants",
    ] {
        assert!(
            out.contains(&format!(
                "customresourcedefinition.apiextensions.k8s.io/{kind}.gateway.networking.k8s.io"
            )),
            "{out}"
        );
    }
}

/// The ConfigMap's portico.toml with only its addresses changed: loopback port 0 for
/// http, https and admin (the replica says which ports it got), and an ACME directory
/// on a local port that refuses connections.
fn adapted_config(refused: SocketAddr) -> String {
    let mut text = config_text().to_string();
    let config = config();
    for from in [
        config.listen.http,
        config.listen.https,
        config.listen.admin.unwrap(),
    ] {
        let from = format!("\"{from}\"");
        assert!(text.contains(&from), "{from} in the shipped config");
        text = text.replacen(&from, "\"127.0.0.1:0\"", 1);
    }
    let directory = format!("directory = \"{}\"", config.acme.directory);
    assert!(text.contains(&directory));
    text.replacen(
        &directory,
        &format!("directory = \"https://{refused}/directory\""),
        1,
    )
}

/// `portico run` on `config` signed in with `kubeconfig`, once it says where it
/// serves; stderr collected.
async fn run_replica(
    config: &Path,
    kubeconfig: &Path,
) -> (std::process::Child, Arc<std::sync::Mutex<String>>, Bound) {
    let mut child = common::portico()
        .args(["run", "--config", config.to_str().unwrap()])
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("POD_NAME", "portico-deploy-test")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = common::collect_stderr(&mut child);
    let bound = Bound::wait_async(&mut child, || log.lock().unwrap().clone()).await;
    (child, log, bound)
}

fn stop(mut child: std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// The address a cloud's load balancer controller would give the shipped Service.
const PUBLISHED_IP: &str = "203.0.113.10";

/// Writes [`PUBLISHED_IP`] into the shipped Service's status, as a cloud's load
/// balancer controller would.
fn publish_an_address() {
    let namespace = object("Namespace")["metadata"]["name"].as_str().unwrap();
    let service = object("Service")["metadata"]["name"].as_str().unwrap();
    let patch =
        serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": PUBLISHED_IP}]}}});
    control_plane().kubectl(
        &[
            "patch",
            "service",
            service,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ],
        b"",
    );
}

/// `kubectl apply -k config/kubernetes` with `extra` arguments, one at a time in this
/// binary: kubectl reads each object then creates it, so two applies at once (or a
/// server dry run beside a real apply) race to an AlreadyExists the user never meets.
fn apply_kustomization(extra: &[&str]) -> Result<String, String> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let folder = common::deploy::folder();
    let mut args = vec!["apply", "-k", folder.to_str().unwrap()];
    args.extend_from_slice(extra);
    control_plane().kubectl_output(&args, b"")
}

/// `kubectl apply -k config/kubernetes` (the other tests of this binary may apply it
/// too).
fn apply_manifests() {
    apply_kustomization(&[]).unwrap();
}

/// A token of the Deployment's service account (from the TokenRequest API, as the
/// kubelet mounts it), in a kubeconfig in `dir`; and the user it signs in as.
fn service_account_kubeconfig(dir: &Path) -> (std::path::PathBuf, String) {
    let plane = control_plane();
    let namespace = object("Namespace")["metadata"]["name"].as_str().unwrap();
    let account = pod_spec()["serviceAccountName"].as_str().unwrap();
    let token = plane.kubectl(&["create", "token", "-n", namespace, account], b"");
    let kubeconfig = dir.join("kubeconfig");
    plane.write_kubeconfig(&kubeconfig, plane.url(), namespace, token.trim());
    (
        kubeconfig,
        format!("system:serviceaccount:{namespace}:{account}"),
    )
}

/// A replica started from the ConfigMap's config with the Kubernetes backend, against
/// the real API server after `kubectl apply -k config/kubernetes`, signed in as the
/// Deployment's service account, so with exactly the rights of the shipped Role,
/// ClusterRole and their bindings: it looks for its stored certificate, turns ready on
/// the probed paths, watches the certificate Secrets, takes and releases its issuance
/// Lease, records the failed attempt on the certificate Secret, and serves an Ingress
/// of the shipped IngressClass from another namespace (port 80 redirects its host to
/// https, as for every served host), writes its status (the published Service's
/// address) and fills the missing Secret its `spec.tls` names. Only the addresses change (`adapted_config`).
/// Removing any verb the start-up path uses from the Role makes this fail; the
/// ClusterRole's rules are each tried in the next test. `portico certs` then reads the
/// same store with the same rights.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_only_the_shipped_rights_turns_ready_and_serves_an_ingress() {
    common::edge::install_provider();
    let plane = control_plane();
    let namespace = object("Namespace")["metadata"]["name"].as_str().unwrap();
    apply_manifests();
    let dir = tempfile::tempdir().unwrap();
    let (kubeconfig, user) = service_account_kubeconfig(dir.path());

    // An app team's Ingress, in its own namespace.
    let app = plane.namespace("deploy-app");
    let upstream = common::backend_at(common::host_ip(), "app", common::Proto::Http1)
        .await
        .0;
    app.create(serde_json::json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "app"},
        "spec": {"ports": [{"port": 80}]},
    }));
    app.create(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "app-1", "labels": {"kubernetes.io/service-name": "app"}},
        "addressType": "IPv4",
        "ports": [{"name": "", "port": upstream.port()}],
        "endpoints": [{"addresses": [upstream.ip().to_string()]}],
    }));
    let class = object("IngressClass")["metadata"]["name"].as_str().unwrap();
    app.create(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "app"},
        "spec": {"ingressClassName": class,
            "tls": [{"hosts": ["app.deploy.internal"], "secretName": "app-tls"}],
            "rules": [{"host": "app.deploy.internal", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "app", "port": {"number": 80}}}},
        ]}}]},
    }));

    publish_an_address();
    let refused = common::refused_addr().await;
    let text = adapted_config(refused);
    let path = dir.path().join("portico.toml");
    std::fs::write(&path, &text).unwrap();
    let (child, log, bound) = run_replica(&path, &kubeconfig).await;
    let (http, admin) = (
        bound.http,
        bound.admin.expect("the shipped config sets admin"),
    );
    let app_status =
        || app.get("ingresses", "app").unwrap()["status"]["loadBalancer"]["ingress"].clone();
    // The Secret its spec.tls names, missing: filled with the host's certificate.
    let filled = || {
        app.get("secrets", "app-tls").is_some_and(|s| {
            s["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "portico"
                && s["data"]["tls.crt"].as_str().is_some_and(|c| !c.is_empty())
        })
    };

    let deadline = Instant::now() + Duration::from_secs(60);
    let released_issuance_lease = || {
        plane.list(namespace, "leases").iter().any(|lease| {
            let name = lease["metadata"]["name"].as_str().unwrap_or("");
            let holder = &lease["spec"]["holderIdentity"];
            name.starts_with("portico-acme-")
                && !name.starts_with("portico-acme-account-")
                && holder == ""
        })
    };
    // The failed attempt's status (for `portico certs`) is kept on the site's
    // certificate Secret, read first and then created.
    let recorded_the_failure = || {
        plane.list(namespace, "secrets").iter().any(|secret| {
            let name = secret["metadata"]["name"].as_str().unwrap_or("");
            name.starts_with("portico-tls-")
        })
    };
    loop {
        let health = admin_status(admin, "/healthz").await;
        let ready = admin_status(admin, "/readyz").await;
        // Following what other replicas issue: list, then watch, the certificate Secrets.
        let watching = plane.open_watches(namespace, &user, "secrets") >= 1;
        let (status, location, _) = if ready == Some(200) {
            common::edge::plain_get(http, "app.deploy.internal", "/x").await
        } else {
            (0, None, String::new())
        };
        if health == Some(200)
            && ready == Some(200)
            && watching
            && released_issuance_lease()
            && recorded_the_failure()
            && status == 308
            && app_status() == serde_json::json!([{"ip": PUBLISHED_IP}])
            && filled()
        {
            assert_eq!(location.as_deref(), Some("https://app.deploy.internal/x"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "healthz {health:?}, readyz {ready:?}, watching {watching}, ingress {status} {}, leases {:?}, secrets {:?}\n{}",
            app_status(),
            plane.list(namespace, "leases"),
            plane.list(namespace, "secrets"),
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Before turning ready it looked for the stored certificate, in its namespace.
    let requests = plane.audit(namespace);
    assert!(
        requests
            .iter()
            .any(|a| a.user == user && a.verb == "get" && a.resource == "secrets"),
        "{requests:?}"
    );

    // docs/kubernetes.md's `kubectl exec deploy/portico -- portico certs --config ...`: the same
    // binary, config file and rights, signed in through a kubeconfig instead.
    let out = common::portico()
        .args(["certs", "--config", path.to_str().unwrap()])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = config().sites[0].names().join(",");
    assert!(table.contains(&names), "{table}");
    assert!(table.contains("last error: "), "{table}");
    // The Ingress's host, whose certificate is in the same store.
    let ingress_row = table
        .lines()
        .find(|l| l.starts_with("app.deploy.internal"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        ingress_row.contains("(not in the file: an Ingress's?)"),
        "{table}"
    );
    stop(child);
}

/// Each rule of the shipped ClusterRole is needed: a replica bound to the ClusterRole
/// without a read rule is refused the list of that kind (403) and does not turn ready;
/// without a write rule it is refused the status patch or the Event (403).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_rule_of_the_cluster_role_a_replica_does_not_turn_ready() {
    common::edge::install_provider();
    let plane = control_plane();
    apply_manifests();
    let ns = plane.namespace("deploy-rights");
    let refused = common::refused_addr().await;
    // A Service of this test's own to publish, with another address than the shipped
    // one's: the replica of the other test (which watches every namespace) writes that
    // one into these Ingresses, so this one always has a status to write.
    ns.create(
        serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "published"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 443}]}}),
    );
    plane.kubectl(
        &[
            "patch",
            "service",
            "published",
            "-n",
            &ns.name,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"loadBalancer":{"ingress":[{"ip":"203.0.113.20"}]}}}"#,
        ],
        b"",
    );
    // An Ingress of the shipped class to write status for, and one to warn about.
    let class = object("IngressClass")["metadata"]["name"].as_str().unwrap();
    let ingress = |name: &str, annotations: Value| {
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"ingressClassName": class, "rules": [{"host": format!("{name}.rights.internal"), "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "none", "port": {"number": 80}}}},
            ]}}]},
        })
    };
    ns.create(ingress("plain", serde_json::json!({})));
    ns.create(ingress(
        "snippet",
        serde_json::json!({"nginx.ingress.kubernetes.io/server-snippet": "return 200;"}),
    ));
    for (i, missing) in DOCUMENTED_CLUSTER_RULES.iter().enumerate() {
        // This replica serves Ingresses only, so it needs no Gateway API rule
        // (tests/gateway.rs runs with them); the write rules' second verbs (status
        // update, event patch) are not used either.
        if missing.0 == "gateway.networking.k8s.io" {
            continue;
        }
        // The shipped ClusterRole without one rule, bound to a replica identity of
        // this test (which also has the shipped namespaced Role in its namespace).
        let mut role = object("ClusterRole").clone();
        let name = format!(
            "portico-without-{}-{}",
            missing.1.replace('/', "-"),
            ns.name
        );
        role["metadata"] = serde_json::json!({"name": name});
        role["rules"].as_array_mut().unwrap().remove(i);
        let who = format!("replica-{i}");
        let binding = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": ns.user(&who)}],
        });
        let list =
            serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [role, binding]});
        plane.kubectl(&["create", "-f", "-"], list.to_string().as_bytes());

        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = ns.kubeconfig(dir.path(), &who);
        let mut text = adapted_config(refused);
        // The store in the test's namespace, where this identity has the shipped Role;
        // its own Service published.
        text = text.replacen(
            "backend = \"kubernetes\"",
            &format!("backend = \"kubernetes\"\nnamespace = \"{}\"", ns.name),
            1,
        );
        // A replica missing a write rule reads everything and so writes status: only
        // this namespace's Ingresses then, so it never writes into the other test's. (One
        // missing a read rule never gets as far, and must list cluster-wide to be
        // refused.)
        let shipped = "publish_service = \"portico/portico\"";
        assert!(text.contains(shipped));
        let namespaces = if ["ingresses/status", "events"].contains(&missing.1) {
            format!("\nnamespaces = [\"{}\"]", ns.name)
        } else {
            String::new()
        };
        text = text.replacen(
            shipped,
            &format!("publish_service = \"{}/published\"{namespaces}", ns.name),
            1,
        );
        let path = dir.path().join("portico.toml");
        std::fs::write(&path, &text).unwrap();
        let (child, log, bound) = run_replica(&path, &kubeconfig).await;
        let admin = bound.admin.expect("the shipped config sets admin");
        // What the log says when the rule is missing.
        let (says, kind) = match missing.1 {
            "ingressclasses" => ("cannot list", "\"IngressClass\""),
            "ingresses" => ("cannot list", "\"Ingress\""),
            "services" => ("cannot list", "\"Service\""),
            "endpointslices" => ("cannot list", "\"EndpointSlice\""),
            "secrets" => ("cannot list", "\"Secret\""),
            "ingresses/status" => ("cannot write Ingress status", ""),
            "events" => ("cannot write an Event", ""),
            other => panic!("{other}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let refused_list = log.lock().unwrap().lines().any(|l| {
                l.contains(says)
                    && l.contains(kind)
                    && (l.contains("403") || l.to_lowercase().contains("forbidden"))
            });
            if refused_list {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "without {}: the log never says {says:?} {kind}\n{}",
                missing.1,
                log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if says == "cannot list" {
            assert_ne!(
                admin_status(admin, "/readyz").await,
                Some(200),
                "ready without {}",
                missing.1
            );
        }
        stop(child);
    }
}
