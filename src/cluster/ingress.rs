//! Ingresses as sites: the translation from what the cluster holds (IngressClasses,
//! Ingresses, Services, EndpointSlices) to [`Site`]s the reload path merges with the
//! TOML sites. Pure: it reads a [`View`] and returns the sites and what it refused, so
//! every rule here is tested without a cluster (the API server tests are in
//! `tests/ingress.rs`).
//!
//! Rules (docs/kubernetes.md states them for users):
//! - an Ingress is ours when `spec.ingressClassName` (or the older
//!   `kubernetes.io/ingress.class` annotation) names `ingress_class`, or when it names no
//!   class and our IngressClass is annotated the cluster's default;
//! - each rule host is a site; paths match as the Ingress spec says (`Exact`, `Prefix` by
//!   path element, `ImplementationSpecific` as `Prefix`); rules for one host from several
//!   Ingresses merge, and on the same path the oldest Ingress (creationTimestamp, then
//!   namespace/name) wins; `defaultBackend` answers that Ingress's hosts when no path
//!   matches;
//! - a backend is a Service's ready endpoints from its EndpointSlices (the port by
//!   number or name), an ExternalName Service's name, and no ready endpoint answers 503;
//!   `h2c` by the Service annotation `portico.dev/upstream-protocol` or the port's
//!   `appProtocol: kubernetes.io/h2c`;
//! - certificates: the `kubernetes.io/tls` Secret that `spec.tls` names for the host
//!   (the oldest Ingress's), else ACME for public names and the local CA for
//!   cluster-local ones; a wildcard host is served only from a Secret.

use std::collections::{BTreeMap, BTreeSet};

use http::StatusCode;
use k8s_openapi::api::core::v1::{Secret, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use kube::ResourceExt;

use crate::config::{
    HostPattern, PathMatch, Route, RouteAction, SecretPem, Site, TlsSource, Upstream,
    UpstreamProtocol,
};

/// `spec.controller` of an IngressClass whose Ingresses portico serves.
pub(crate) const CONTROLLER: &str = "portico.dev/ingress-controller";
/// The annotation that makes an IngressClass the cluster's default.
const DEFAULT_CLASS: &str = "ingressclass.kubernetes.io/is-default-class";
/// The annotation older Ingresses name their class with.
const LEGACY_CLASS: &str = "kubernetes.io/ingress.class";
/// A Service annotation: `h2c` to speak HTTP/2 without TLS to its endpoints.
const UPSTREAM_PROTOCOL: &str = "portico.dev/upstream-protocol";
/// The EndpointSlice label that names its Service.
const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The body of a route whose Service has no ready endpoint.
const NO_ENDPOINT: &str = "503 service unavailable: no ready endpoint\n";

/// What the builder reads: every object of every watched kind.
#[derive(Debug, Default)]
pub(crate) struct View {
    pub(crate) classes: Vec<IngressClass>,
    pub(crate) ingresses: Vec<Ingress>,
    pub(crate) services: Vec<Service>,
    pub(crate) slices: Vec<EndpointSlice>,
    /// `kubernetes.io/tls` Secrets only.
    pub(crate) secrets: Vec<Secret>,
}

/// Something of an object that is not served, and why: logged, later an Event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Refusal {
    /// `namespace/name` of the Ingress.
    pub(crate) object: String,
    pub(crate) reason: String,
}

/// The sites the Ingresses of class `class` make, sorted by host, and what was refused.
pub(crate) fn sites(class: &str, view: &View) -> (Vec<Site>, Vec<Refusal>) {
    let default = view.classes.iter().any(|c| {
        c.name_any() == class
            && c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER)
            && c.annotations().get(DEFAULT_CLASS).map(String::as_str) == Some("true")
    });
    let mut ours: Vec<&Ingress> = view
        .ingresses
        .iter()
        .filter(|i| {
            let named = i
                .spec
                .as_ref()
                .and_then(|s| s.ingress_class_name.as_deref())
                .or_else(|| i.annotations().get(LEGACY_CLASS).map(String::as_str));
            match named {
                Some(name) => name == class,
                None => default,
            }
        })
        .collect();
    // The oldest first: on a conflict, the first to claim a host and path keeps it.
    ours.sort_by(|a, b| {
        let at = |i: &Ingress| i.creation_timestamp().map(|t| t.0);
        at(a)
            .cmp(&at(b))
            .then_with(|| a.namespace().cmp(&b.namespace()))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    let backends = Backends::new(view);
    let mut refused = Vec::new();
    let mut hosts: BTreeMap<String, Vec<Route>> = BTreeMap::new();
    // Host → the Secret (`namespace/name`) the oldest Ingress names for it in spec.tls.
    let mut secret_of: BTreeMap<String, (String, String)> = BTreeMap::new();
    for ingress in ours {
        let object = format!(
            "{}/{}",
            ingress.namespace().unwrap_or_default(),
            ingress.name_any()
        );
        let namespace = ingress.namespace().unwrap_or_default();
        let mut refuse = |reason: String| {
            refused.push(Refusal {
                object: object.clone(),
                reason,
            })
        };
        let Some(spec) = &ingress.spec else { continue };
        for tls in spec.tls.iter().flatten() {
            let Some(secret) = &tls.secret_name else {
                continue;
            };
            for host in tls.hosts.iter().flatten() {
                secret_of
                    .entry(host.to_ascii_lowercase())
                    .or_insert_with(|| (object.clone(), format!("{namespace}/{secret}")));
            }
        }
        let mut own_hosts = BTreeSet::new();
        for rule in spec.rules.iter().flatten() {
            let Some(host) = rule.host.as_deref().map(str::to_ascii_lowercase) else {
                refuse("a rule without a host is not served: name the host".into());
                continue;
            };
            if host.starts_with("*.") && !secret_of.contains_key(&host) {
                refuse(format!(
                    "{host}: a wildcard host needs a certificate from a Secret named in spec.tls (no CA issues one over HTTP-01)"
                ));
                continue;
            }
            own_hosts.insert(host.clone());
            let routes = hosts.entry(host.clone()).or_default();
            for path in rule.http.iter().flat_map(|h| &h.paths) {
                let written = path.path.as_deref().unwrap_or("/");
                let matching = match path.path_type.as_str() {
                    "Exact" => PathMatch::Exact,
                    "Prefix" | "ImplementationSpecific" => PathMatch::Elements,
                    other => {
                        refuse(format!("{host}{written}: pathType {other:?} is unknown"));
                        continue;
                    }
                };
                match crate::uri::path::normalize(written) {
                    Ok(normal) if normal == written => {}
                    _ => {
                        refuse(format!(
                            "{host}{written}: the path is not in normal form (requests are matched on their normalised path)"
                        ));
                        continue;
                    }
                }
                if let Some(taken) = routes
                    .iter()
                    .find(|r| r.path == written && r.matching == matching)
                {
                    let _ = taken;
                    refuse(format!(
                        "{host}{written}: an older Ingress already routes this host and path"
                    ));
                    continue;
                }
                let action = match backends.action(&namespace, &path.backend) {
                    Ok(action) => action,
                    Err(why) => {
                        refuse(format!("{host}{written}: {why}"));
                        continue;
                    }
                };
                routes.push(Route {
                    path: written.to_string(),
                    matching,
                    action,
                });
            }
        }
        if let Some(backend) = &spec.default_backend {
            match backends.action(&namespace, backend) {
                Ok(action) => {
                    for host in &own_hosts {
                        let routes = hosts.entry(host.clone()).or_default();
                        if !routes.iter().any(|r| r.matching == PathMatch::Fallback) {
                            routes.push(Route {
                                path: "/".into(),
                                matching: PathMatch::Fallback,
                                action: action.clone(),
                            });
                        }
                    }
                }
                Err(why) => refuse(format!("defaultBackend: {why}")),
            }
        }
    }
    let secrets: BTreeMap<String, &Secret> = view
        .secrets
        .iter()
        .map(|s| {
            (
                format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()),
                s,
            )
        })
        .collect();
    let sites = hosts
        .into_iter()
        .filter(|(_, routes)| !routes.is_empty())
        .filter_map(|(host, mut routes)| {
            routes.sort_by_key(Route::precedence);
            let automatic = if is_local(&host) {
                TlsSource::Internal
            } else {
                TlsSource::Acme
            };
            let wildcard = host.strip_prefix("*.").map(str::to_string);
            let tls = match secret_of.get(&host) {
                None => automatic,
                Some((object, name)) => match secrets.get(name).and_then(|s| pem(name, s)) {
                    Some(pem) => TlsSource::Secret(pem),
                    None => {
                        let instead = if wildcard.is_some() {
                            "the wildcard host is not served until it exists"
                        } else {
                            "the host gets an automatic certificate instead (filling the Secret is not supported yet)"
                        };
                        refused.push(Refusal {
                            object: object.clone(),
                            reason: format!(
                                "{host}: Secret {name} does not exist or holds no tls.crt and tls.key; {instead}"
                            ),
                        });
                        if wildcard.is_some() {
                            return None;
                        }
                        automatic
                    }
                },
            };
            let pattern = match wildcard {
                Some(suffix) => HostPattern::Wildcard(suffix),
                None => HostPattern::Exact(host),
            };
            Some(Site {
                hosts: vec![pattern],
                tls,
                routes,
            })
        })
        .collect();
    refused.sort();
    refused.dedup();
    (sites, refused)
}

/// The certificate and key of a `kubernetes.io/tls` Secret, when it has both.
fn pem(origin: &str, secret: &Secret) -> Option<SecretPem> {
    let data = secret.data.as_ref()?;
    let chain = &data.get("tls.crt")?.0;
    let key = &data.get("tls.key")?.0;
    if chain.is_empty() || key.is_empty() {
        return None;
    }
    Some(SecretPem {
        origin: origin.to_string(),
        chain: chain.as_slice().into(),
        key: key.as_slice().into(),
    })
}

/// Names no public CA issues for: the TOML defaults plus the cluster's own.
fn is_local(host: &str) -> bool {
    HostPattern::Exact(host.to_string()).is_local()
        || [".local", ".svc", ".cluster.local"]
            .iter()
            .any(|s| host.ends_with(s))
}

/// Services and their EndpointSlices, looked up by `namespace/name`.
struct Backends<'v> {
    services: BTreeMap<(String, String), &'v Service>,
    slices: BTreeMap<(String, String), Vec<&'v EndpointSlice>>,
}

impl<'v> Backends<'v> {
    fn new(view: &'v View) -> Self {
        let services = view
            .services
            .iter()
            .map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), s))
            .collect();
        let mut slices: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for slice in &view.slices {
            if let Some(service) = slice.labels().get(SERVICE_NAME) {
                slices
                    .entry((slice.namespace().unwrap_or_default(), service.clone()))
                    .or_default()
                    .push(slice);
            }
        }
        Backends { services, slices }
    }

    /// What a route to `backend` does: forward to the ready endpoints, or 503 when
    /// there are none (the Service or its endpoints may come later).
    fn action(&self, namespace: &str, backend: &IngressBackend) -> Result<RouteAction, String> {
        let Some(service) = &backend.service else {
            return Err("only Service backends are supported (not resource)".into());
        };
        let unavailable = RouteAction::Respond {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: NO_ENDPOINT.into(),
        };
        let Some(found) = self
            .services
            .get(&(namespace.to_string(), service.name.clone()))
        else {
            // Not an error of the Ingress: the Service may be created next.
            return Ok(unavailable);
        };
        let spec = found.spec.as_ref();
        let wanted = service.port.as_ref();
        let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
        let port: Option<&ServicePort> = match wanted {
            Some(p) if p.number.is_some() => ports.iter().find(|sp| Some(sp.port) == p.number),
            Some(p) if p.name.is_some() => ports.iter().find(|sp| sp.name == p.name),
            _ if ports.len() == 1 => ports.first(),
            _ => None,
        };
        let h2c = found
            .annotations()
            .get(UPSTREAM_PROTOCOL)
            .map(String::as_str)
            == Some("h2c")
            || port.and_then(|p| p.app_protocol.as_deref()) == Some("kubernetes.io/h2c");
        let protocol = if h2c {
            UpstreamProtocol::H2c
        } else {
            UpstreamProtocol::Http1
        };
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            let name = spec.and_then(|s| s.external_name.as_deref()).unwrap_or("");
            let number = wanted.and_then(|p| p.number).or(port.map(|p| p.port));
            let upstream = number
                .and_then(|n| format!("{name}:{n}").parse().ok())
                .map(|authority| Upstream { authority });
            return match upstream {
                Some(u) => Ok(RouteAction::Proxy {
                    upstreams: vec![u],
                    protocol,
                }),
                None => Err(format!(
                    "ExternalName Service {}: no usable name and port",
                    service.name
                )),
            };
        }
        let Some(port) = port else {
            return Err(format!(
                "Service {} has no port {}",
                service.name,
                wanted
                    .and_then(|p| p.number.map(|n| n.to_string()).or(p.name.clone()))
                    .unwrap_or_default()
            ));
        };
        let mut upstreams = BTreeMap::new();
        for slice in self
            .slices
            .get(&(namespace.to_string(), service.name.clone()))
            .into_iter()
            .flatten()
        {
            // The slice's port of the same name as the Service's (both unnamed for a
            // Service with one unnamed port).
            let Some(number) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or(""))
                .and_then(|p| p.port)
            else {
                continue;
            };
            let v6 = slice.address_type == "IPv6";
            for endpoint in slice.endpoints.iter().flatten() {
                // An unknown condition counts as ready, as the API says.
                if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for address in &endpoint.addresses {
                    let text = if v6 {
                        format!("[{address}]:{number}")
                    } else {
                        format!("{address}:{number}")
                    };
                    if let Ok(authority) = text.parse() {
                        // Sorted by text, so an unchanged set builds an equal route.
                        upstreams.insert(text, Upstream { authority });
                    }
                }
            }
        }
        if upstreams.is_empty() {
            return Ok(unavailable);
        }
        Ok(RouteAction::Proxy {
            upstreams: upstreams.into_values().collect(),
            protocol,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(value: serde_json::Value) -> Ingress {
        serde_json::from_value(value).unwrap()
    }

    fn service(name: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "ns"}, "spec": {"ports": ports}}),
        )
        .unwrap()
    }

    fn slice(service: &str, port: (&str, i32), ready: &[(&str, Option<bool>)]) -> EndpointSlice {
        let endpoints: Vec<_> = ready
            .iter()
            .map(|(ip, r)| match r {
                Some(r) => json!({"addresses": [ip], "conditions": {"ready": r}}),
                None => json!({"addresses": [ip]}),
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": format!("{service}-x"), "namespace": "ns", "labels": {SERVICE_NAME: service}},
            "addressType": "IPv4",
            "ports": [{"name": port.0, "port": port.1}],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn view() -> View {
        View {
            classes: vec![],
            ingresses: vec![ingress(json!({
                "metadata": {"name": "a", "namespace": "ns", "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {
                    "ingressClassName": "portico",
                    "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}},
                    "rules": [{"host": "App.Example.com", "http": {"paths": [
                        {"path": "/api", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"name": "http"}}}},
                        {"path": "/api", "pathType": "Exact", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
                        {"path": "/gone", "pathType": "Prefix", "backend": {"service": {"name": "missing", "port": {"number": 80}}}},
                    ]}}],
                },
            }))],
            services: vec![
                service("web", json!([{"port": 80}])),
                service(
                    "api",
                    json!([{"name": "http", "port": 8080, "appProtocol": "kubernetes.io/h2c"}]),
                ),
            ],
            slices: vec![
                slice(
                    "web",
                    ("", 3000),
                    &[
                        ("10.0.0.2", Some(true)),
                        ("10.0.0.1", None),
                        ("10.0.0.3", Some(false)),
                    ],
                ),
                slice("api", ("http", 9000), &[("10.0.1.1", Some(true))]),
            ],
            secrets: vec![],
        }
    }

    fn route<'s>(site: &'s Site, path: &str) -> &'s Route {
        site.routes.iter().find(|r| r.matches(path)).unwrap()
    }

    fn upstreams(route: &Route) -> Vec<String> {
        match &route.action {
            RouteAction::Proxy { upstreams, .. } => {
                upstreams.iter().map(|u| u.to_string()).collect()
            }
            RouteAction::Respond { status, .. } => vec![status.to_string()],
        }
    }

    #[test]
    fn paths_match_as_the_ingress_spec_says_with_ready_endpoints_only() {
        let (sites, refused) = sites("portico", &view());
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(sites.len(), 1);
        let site = &sites[0];
        assert_eq!(site.hosts, [HostPattern::Exact("app.example.com".into())]);
        assert_eq!(site.tls, TlsSource::Acme);
        // Exact beats Prefix on the same path; the prefix is by element.
        assert_eq!(
            upstreams(route(site, "/api")),
            ["10.0.0.1:3000", "10.0.0.2:3000"]
        );
        assert_eq!(upstreams(route(site, "/api/v1")), ["10.0.1.1:9000"]);
        assert!(matches!(
            route(site, "/api/v1").action,
            RouteAction::Proxy {
                protocol: UpstreamProtocol::H2c,
                ..
            }
        ));
        // Not /apix: the default backend answers.
        assert_eq!(route(site, "/apix").matching, PathMatch::Fallback);
        // A Service that does not exist (yet): 503.
        assert_eq!(
            upstreams(route(site, "/gone/x")),
            ["503 Service Unavailable"]
        );
    }

    #[test]
    fn other_classes_are_ignored_and_the_default_class_is_honoured() {
        let mut view = view();
        view.ingresses[0].spec.as_mut().unwrap().ingress_class_name = Some("nginx".into());
        assert!(sites("portico", &view).0.is_empty());
        view.ingresses[0].spec.as_mut().unwrap().ingress_class_name = None;
        assert!(sites("portico", &view).0.is_empty(), "no default class");
        view.classes.push(
            serde_json::from_value(json!({
                "metadata": {"name": "portico", "annotations": {DEFAULT_CLASS: "true"}},
                "spec": {"controller": CONTROLLER},
            }))
            .unwrap(),
        );
        assert_eq!(sites("portico", &view).0.len(), 1);
    }

    #[test]
    fn the_oldest_ingress_keeps_a_host_and_path_and_the_newer_is_refused() {
        let mut view = view();
        let mut newer = view.ingresses[0].clone();
        newer.metadata.name = Some("b".into());
        newer.metadata.creation_timestamp =
            Some(serde_json::from_value(json!("2026-02-01T00:00:00Z")).unwrap());
        let spec = newer.spec.as_mut().unwrap();
        spec.default_backend = None;
        let paths = &mut spec.rules.as_mut().unwrap()[0].http.as_mut().unwrap().paths;
        paths[0].backend.service.as_mut().unwrap().name = "web".into();
        paths[0].backend.service.as_mut().unwrap().port = None;
        paths.truncate(1);
        paths.push(serde_json::from_value(json!({"path": "/new", "pathType": "Prefix", "backend": {"service": {"name": "web"}}})).unwrap());
        view.ingresses.insert(0, newer);
        let (sites, refused) = sites("portico", &view);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].object, "ns/b");
        let site = &sites[0];
        assert_eq!(
            upstreams(route(site, "/api/v1")),
            ["10.0.1.1:9000"],
            "the older route stays"
        );
        assert_eq!(
            upstreams(route(site, "/new")),
            ["10.0.0.1:3000", "10.0.0.2:3000"],
            "rules merge"
        );
    }

    #[test]
    fn hostless_and_wildcard_rules_are_refused_and_local_names_use_the_local_ca() {
        let mut view = view();
        let rules = view.ingresses[0]
            .spec
            .as_mut()
            .unwrap()
            .rules
            .as_mut()
            .unwrap();
        let mut local = rules[0].clone();
        local.host = Some("web.ns.svc.cluster.local".into());
        let mut wildcard = rules[0].clone();
        wildcard.host = Some("*.example.com".into());
        let mut hostless = rules[0].clone();
        hostless.host = None;
        rules.extend([local, wildcard, hostless]);
        let (sites, refused) = sites("portico", &view);
        assert_eq!(sites.len(), 2);
        assert_eq!(sites[1].tls, TlsSource::Internal);
        assert_eq!(refused.len(), 2, "{refused:?}");
    }

    #[test]
    fn a_wildcard_host_is_served_from_its_secret_and_a_missing_secret_is_said() {
        let mut view = view();
        let spec = view.ingresses[0].spec.as_mut().unwrap();
        let rules = spec.rules.as_mut().unwrap();
        let mut wildcard = rules[0].clone();
        wildcard.host = Some("*.example.com".into());
        rules.push(wildcard);
        spec.tls = Some(vec![
            serde_json::from_value(json!({"hosts": ["*.example.com"], "secretName": "wild"}))
                .unwrap(),
            serde_json::from_value(json!({"hosts": ["app.example.com"], "secretName": "gone"}))
                .unwrap(),
        ]);
        view.secrets.push(
            serde_json::from_value(json!({
                "metadata": {"name": "wild", "namespace": "ns"},
                "type": "kubernetes.io/tls",
                "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"},
            }))
            .unwrap(),
        );
        let (sites, refused) = sites("portico", &view);
        let wild = sites
            .iter()
            .find(|s| s.hosts == [HostPattern::Wildcard("example.com".into())])
            .unwrap();
        match &wild.tls {
            TlsSource::Secret(pem) => {
                assert_eq!(pem.origin, "ns/wild");
                assert_eq!(&pem.chain[..], b"cert");
                assert!(!format!("{pem:?}").contains("key"), "{pem:?}");
            }
            other => panic!("{other:?}"),
        }
        let app = sites
            .iter()
            .find(|s| s.names() == ["app.example.com"])
            .unwrap();
        assert_eq!(app.tls, TlsSource::Acme);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0].reason.contains("Secret ns/gone does not exist"),
            "{refused:?}"
        );
    }
}
