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
//! - `portico.dev/tls: "off"` on the Ingress that first names a host: plain HTTP on
//!   port 80 for it, no certificate, no redirect;
//! - certificates: the `kubernetes.io/tls` Secret that `spec.tls` names for the host
//!   (the oldest Ingress's), else ACME for public names and the local CA for
//!   cluster-local ones; a wildcard host is served only from a Secret.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use k8s_openapi::api::core::v1::{Secret, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use kube::ResourceExt;

use super::watch::key;
use crate::config::{
    HostPattern, PathMatch, Route, RouteAction, RouteLimits, SecretPem, Site, TlsSource, Upstream,
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
/// An Ingress annotation: `"off"` serves its hosts over plain HTTP on port 80, with no
/// certificate and no redirect.
const TLS_ANNOTATION: &str = "portico.dev/tls";
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
    /// Gateway API objects (empty without `gateway_class`).
    pub(crate) gateway_classes: Vec<super::gateway_api::gatewayclasses::GatewayClass>,
    pub(crate) gateways: Vec<super::gateway_api::gateways::Gateway>,
    pub(crate) http_routes: Vec<super::gateway_api::httproutes::HttpRoute>,
    /// Read as `v1` whichever version the cluster serves.
    pub(crate) reference_grants: Vec<super::gateway_api::referencegrants::ReferenceGrant>,
}

/// Something of an Ingress (or an HTTPRoute) that is not served as written, and why:
/// logged once, later an Event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Notice {
    /// `namespace/name` of the Ingress (or HTTPRoute).
    pub(crate) object: String,
    pub(crate) reason: String,
}

/// What the Ingresses of one class make.
#[derive(Debug, Default)]
pub(crate) struct Built {
    /// Sorted by host.
    pub(crate) sites: Vec<Site>,
    /// What is not served as written, sorted.
    pub(crate) notices: Vec<Notice>,
    /// The Ingresses of the class.
    pub(crate) ingresses: Vec<Ingress>,
    /// Host → `namespace/name` of the oldest Ingress naming it.
    pub(crate) owners: Vec<(String, String)>,
    /// Secrets named by `spec.tls` that portico fills with the site's certificate.
    pub(crate) fills: Vec<Fill>,
}

/// A `spec.tls` Secret portico fills: it did not exist (and no cert-manager annotation
/// says another controller will make it), or portico made it.
#[derive(Debug, Clone)]
pub(crate) struct Fill {
    /// The site whose certificate goes into the Secret.
    pub(crate) site: Site,
    pub(crate) namespace: String,
    pub(crate) name: String,
    /// The Secret as last seen (portico's own), `None` when it does not exist.
    pub(crate) existing: Option<Secret>,
}

/// The label portico's own objects carry, with value [`MANAGED_BY`].
pub(crate) const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub(crate) const MANAGED_BY: &str = "portico";
/// cert-manager's annotations: an Ingress with one has its Secret made by cert-manager.
const CERT_MANAGER: [&str; 2] = ["cert-manager.io/issuer", "cert-manager.io/cluster-issuer"];

/// The sites the Ingresses of class `class` make, and what was refused. Hosts in
/// `taken` are the config file's, which wins over any Ingress.
pub(crate) fn build(class: &str, view: &View, taken: &HashSet<HostPattern>) -> Built {
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
    let served: Vec<Ingress> = ours.iter().map(|i| (*i).clone()).collect();
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    // Hosts whose first Ingress says `portico.dev/tls: "off"`.
    let mut plain: BTreeSet<String> = BTreeSet::new();
    let mut refused = Vec::new();
    let mut hosts: BTreeMap<String, Vec<Route>> = BTreeMap::new();
    // Host → the Secret the oldest Ingress names for it in spec.tls.
    let mut secret_of: BTreeMap<String, SecretRef> = BTreeMap::new();
    for ingress in ours {
        let object = key(ingress);
        let namespace = ingress.namespace().unwrap_or_default();
        let mut refuse = |reason: String| {
            refused.push(Notice {
                object: object.clone(),
                reason,
            })
        };
        let Some(spec) = &ingress.spec else { continue };
        let (protocol, limits) = match nginx_annotations(ingress) {
            Ok(Annotated {
                protocol,
                limits,
                ignored,
            }) => {
                for why in ignored {
                    refuse(why);
                }
                (protocol, limits)
            }
            Err(why) => {
                refuse(format!("the Ingress is not served: {why}"));
                continue;
            }
        };
        let cert_manager = CERT_MANAGER
            .iter()
            .any(|a| ingress.annotations().contains_key(*a));
        let tls_off = ingress
            .annotations()
            .get(TLS_ANNOTATION)
            .map(String::as_str)
            == Some("off");
        for tls in spec.tls.iter().flatten() {
            let Some(secret) = &tls.secret_name else {
                continue;
            };
            for host in tls.hosts.iter().flatten() {
                secret_of
                    .entry(host.to_ascii_lowercase())
                    .or_insert_with(|| SecretRef {
                        ingress: object.clone(),
                        namespace: namespace.clone(),
                        name: secret.clone(),
                        cert_manager,
                    });
            }
        }
        let mut own_hosts = BTreeSet::new();
        for rule in spec.rules.iter().flatten() {
            let Some(host) = rule.host.as_deref().map(str::to_ascii_lowercase) else {
                refuse("a rule without a host is not served: name the host".into());
                continue;
            };
            if taken.contains(&host_pattern(&host)) {
                refuse(format!(
                    "{host}: not served from this Ingress: portico's config file has a site for it, which wins"
                ));
                continue;
            }
            if host.starts_with("*.") && !secret_of.contains_key(&host) {
                refuse(format!(
                    "{host}: not served: a wildcard host needs a certificate from a Secret named in spec.tls (no CA issues one over HTTP-01)"
                ));
                continue;
            }
            own_hosts.insert(host.clone());
            if !owners.contains_key(&host) {
                owners.insert(host.clone(), object.clone());
                if tls_off {
                    plain.insert(host.clone());
                }
            }
            let routes = hosts.entry(host.clone()).or_default();
            for path in rule.http.iter().flat_map(|h| &h.paths) {
                let written = path.path.as_deref().unwrap_or("/");
                let matching = match path.path_type.as_str() {
                    "Exact" => PathMatch::Exact,
                    "Prefix" | "ImplementationSpecific" => PathMatch::Elements,
                    other => {
                        refuse(format!(
                            "{host}{written}: not served: pathType {other:?} is unknown"
                        ));
                        continue;
                    }
                };
                match crate::uri::path::normalize(written) {
                    Ok(normal) if normal == written => {}
                    _ => {
                        refuse(format!(
                            "{host}{written}: not served: the path is not in normal form (requests are matched on their normalised path)"
                        ));
                        continue;
                    }
                }
                if routes
                    .iter()
                    .any(|r| r.path == written && r.matching == matching)
                {
                    refuse(format!(
                        "{host}{written}: not served: an older Ingress already routes this host and path"
                    ));
                    continue;
                }
                let action = match backends.action(&namespace, &path.backend, protocol) {
                    Ok(action) => action,
                    Err(why) => {
                        refuse(format!("{host}{written}: not served: {why}"));
                        continue;
                    }
                };
                routes.push(Route {
                    path: written.to_string(),
                    matching,
                    action,
                    limits,
                    rule: Default::default(),
                });
            }
        }
        if let Some(backend) = &spec.default_backend {
            match backends.action(&namespace, backend, protocol) {
                Ok(action) => {
                    for host in &own_hosts {
                        let routes = hosts.entry(host.clone()).or_default();
                        if !routes.iter().any(|r| r.matching == PathMatch::Fallback) {
                            routes.push(Route {
                                path: "/".into(),
                                matching: PathMatch::Fallback,
                                action: action.clone(),
                                limits,
                                rule: Default::default(),
                            });
                        }
                    }
                }
                Err(why) => refuse(format!("defaultBackend not served: {why}")),
            }
        }
    }
    let secrets: BTreeMap<String, &Secret> = view.secrets.iter().map(|s| (key(s), s)).collect();
    let mut fills = Vec::new();
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
            let pattern = host_pattern(&host);
            let mut fill = None;
            let tls = match secret_of.get(&host) {
                _ if plain.contains(&host) => TlsSource::Off,
                None => automatic,
                Some(secret) => {
                    let name = format!("{}/{}", secret.namespace, secret.name);
                    let object = &secret.ingress;
                    let found = secrets.get(&name).copied();
                    let ours = found.is_some_and(|s| {
                        s.labels().get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
                    });
                    match found.and_then(|s| pem(&name, s)) {
                        // A Secret of someone else's (cert-manager's, a team's): served.
                        Some(pem) if !ours => {
                            // Served through the certificate path, which refuses it if
                            // it does not load or cover the host and keeps what served
                            // before; checked here too, so the owner hears of it.
                            if let Err(why) = check_secret(&pem, &pattern) {
                                refused.push(Notice {
                                    object: object.clone(),
                                    reason: format!(
                                        "{host}: Secret {name} is not served ({why}); the certificate served before, if any, keeps serving"
                                    ),
                                });
                            }
                            TlsSource::Secret(pem)
                        }
                        _ if pattern.is_wildcard() => {
                            refused.push(Notice {
                                object: object.clone(),
                                reason: format!(
                                    "{host}: not served: Secret {name} does not exist or holds no tls.crt and tls.key, and a wildcard certificate cannot be obtained over HTTP-01"
                                ),
                            });
                            return None;
                        }
                        // portico's own, or none yet: the site's automatic certificate,
                        // written into it (unless cert-manager is to make it).
                        _ => {
                            if secret.cert_manager && !ours {
                                refused.push(Notice {
                                    object: object.clone(),
                                    reason: format!(
                                        "{host}: Secret {name} does not exist yet; cert-manager is to make it (annotation), and until then the host gets an automatic certificate"
                                    ),
                                });
                            } else if found.is_some() && !ours {
                                // Someone else's, without a certificate in it (a
                                // placeholder, another tool's work in progress):
                                // never written.
                                refused.push(Notice {
                                    object: object.clone(),
                                    reason: format!(
                                        "{host}: Secret {name} holds no tls.crt and tls.key, and portico did not make it, so portico does not write it; until it holds a certificate the host gets an automatic one"
                                    ),
                                });
                            } else {
                                fill = Some(found.cloned());
                            }
                            automatic
                        }
                    }
                }
            };
            let site = Site {
                hosts: vec![pattern],
                tls,
                routes,
            };
            if let (Some(existing), Some(secret)) = (fill, secret_of.get(&host)) {
                fills.push(Fill {
                    site: site.clone(),
                    namespace: secret.namespace.clone(),
                    name: secret.name.clone(),
                    existing,
                });
            }
            Some(site)
        })
        .collect();
    refused.sort();
    refused.dedup();
    Built {
        sites,
        notices: refused,
        ingresses: served,
        owners: owners.into_iter().collect(),
        fills,
    }
}

/// A Secret an Ingress's `spec.tls` names for a host.
struct SecretRef {
    /// `namespace/name` of the (oldest) Ingress that names it.
    ingress: String,
    namespace: String,
    name: String,
    /// The Ingress asks cert-manager to make it.
    cert_manager: bool,
}

/// A host as an Ingress writes it: a name, or `*.suffix`.
pub(super) fn host_pattern(host: &str) -> HostPattern {
    match host.strip_prefix("*.") {
        Some(suffix) => HostPattern::Wildcard(suffix.to_string()),
        None => HostPattern::Exact(host.to_string()),
    }
}

/// [`build`]'s sites and notices (the unit tests' view).
#[cfg(test)]
fn sites(class: &str, view: &View) -> (Vec<Site>, Vec<Notice>) {
    let built = build(class, view, &HashSet::new());
    (built.sites, built.notices)
}

/// ingress-nginx's annotation prefix: Ingresses moved from it keep their annotations.
const NGINX: &str = "nginx.ingress.kubernetes.io/";

/// What an Ingress's ingress-nginx annotations set.
#[derive(Debug, Default)]
struct Annotated {
    /// `backend-protocol`.
    protocol: Option<UpstreamProtocol>,
    /// `proxy-body-size`, `proxy-read-timeout`.
    limits: RouteLimits,
    /// Notes for those not honoured.
    ignored: Vec<String>,
}

/// What ingress-nginx annotations mean here; an error when the Ingress must not be
/// served without one (it would answer what its owner meant to refuse, or route
/// otherwise), or one has a value that means nothing (a limit left out would be no
/// limit). docs/kubernetes.md, "Moving from ingress-nginx", has the table.
fn nginx_annotations(ingress: &Ingress) -> Result<Annotated, String> {
    let mut protocol = None;
    let mut limits = RouteLimits::default();
    let mut ignored = Vec::new();
    for (key, value) in ingress.annotations() {
        let Some(name) = key.strip_prefix(NGINX) else {
            continue;
        };
        match name {
            "backend-protocol" => {
                protocol = Some(match value.to_ascii_uppercase().as_str() {
                    "HTTP" => UpstreamProtocol::Http1,
                    "GRPC" | "H2C" => UpstreamProtocol::H2c,
                    other => {
                        return Err(format!(
                            "{key}: {other:?} is not supported (HTTP, GRPC and H2C are)"
                        ));
                    }
                });
            }
            "proxy-body-size" => {
                limits.max_body_bytes = match nginx_size(value) {
                    Some(0) => None,
                    Some(bytes) => Some(bytes),
                    None => {
                        return Err(format!(
                            "{key}: {value:?} is not a size (bytes, or a number with k, m or g)"
                        ));
                    }
                };
            }
            "proxy-read-timeout" => {
                let (min, max) = crate::config::Limits::duration_range("limits.upstream_timeout");
                let seconds = value.strip_suffix('s').unwrap_or(value).parse::<u64>().ok();
                limits.upstream_timeout = match seconds.map(Duration::from_secs) {
                    Some(d) if d >= min && d <= max => Some(d),
                    _ => {
                        return Err(format!(
                            "{key}: {value:?} is not a number of seconds from 1 to {}",
                            max.as_secs()
                        ));
                    }
                };
            }
            // portico redirects port 80 to https for every host it has a certificate for.
            "ssl-redirect" | "force-ssl-redirect" if value == "true" => {}
            "ssl-redirect" | "force-ssl-redirect" => ignored.push(format!(
                "{key}: {value:?} is not honoured: port 80 redirects to https for every host served with a certificate"
            )),
            _ if refused_annotation(name) => {
                return Err(format!(
                    "{key} has no equivalent in portico, and serving without it would answer requests its owner meant to change or refuse; remove it to serve this Ingress"
                ));
            }
            _ => ignored.push(format!("{key} is not honoured (no equivalent in portico yet)")),
        }
    }
    Ok(Annotated {
        protocol,
        limits,
        ignored,
    })
}

/// An nginx size: bytes, or a number with `k`, `m` or `g` (either case).
fn nginx_size(value: &str) -> Option<u64> {
    let (digits, unit) = match value.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&value[..i], c.to_ascii_lowercase()),
        _ => (value, 'b'),
    };
    let number: u64 = digits.parse().ok()?;
    let scale: u64 = match unit {
        'b' => 1,
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        _ => return None,
    };
    number.checked_mul(scale)
}

/// ingress-nginx annotations without which an Ingress must not be served: snippets
/// (arbitrary nginx configuration: ingress-nginx's remote-code-execution hole, never
/// taken), access control, rate limits, and anything that changes where a request goes.
fn refused_annotation(name: &str) -> bool {
    name.ends_with("snippet")
        || [
            "auth-",
            "limit-",
            "canary",
            "mirror-",
            "rewrite-target",
            "use-regex",
            "app-root",
            "permanent-redirect",
            "temporal-redirect",
            "whitelist-source-range",
            "allowlist-source-range",
            "denylist-source-range",
            "default-backend",
            "custom-http-errors",
            "server-alias",
            "ssl-passthrough",
            "upstream-vhost",
            "x-forwarded-prefix",
            "enable-global-auth",
            "satisfy",
        ]
        .iter()
        .any(|p| name.starts_with(p))
}

/// The certificate and key of a `kubernetes.io/tls` Secret, when it has both.
pub(super) fn pem(origin: &str, secret: &Secret) -> Option<SecretPem> {
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

/// Whether a Secret's certificate loads (chain, key, the key fits) and names `host`.
pub(super) fn check_secret(pem: &SecretPem, host: &HostPattern) -> Result<(), String> {
    let loaded = crate::tls::load_pem("the certificate", &pem.chain, &pem.key)
        .map_err(|e| crate::report::Chain(&e).to_string())?;
    if crate::tls::leaf_covers(&loaded, host) {
        Ok(())
    } else {
        Err(format!("the certificate does not cover {host}"))
    }
}

/// Names no public CA issues for: the TOML defaults plus the cluster's own.
pub(super) fn is_local(host: &str) -> bool {
    HostPattern::Exact(host.to_string()).is_local()
        || [".local", ".svc", ".cluster.local"]
            .iter()
            .any(|s| host.ends_with(s))
}

/// Services and their EndpointSlices, looked up by `namespace/name`.
pub(super) struct Backends<'v> {
    services: BTreeMap<(String, String), &'v Service>,
    slices: BTreeMap<(String, String), Vec<&'v EndpointSlice>>,
    /// (namespace, Service, port name) → its ready endpoints, built once per build and
    /// shared by every route to it: a Service with thousands of endpoints behind
    /// hundreds of Ingresses is one list in memory.
    endpoints: RefCell<HashMap<PortKey, Arc<[Upstream]>>>,
}

/// (namespace, Service, port name).
type PortKey = (String, String, String);

impl<'v> Backends<'v> {
    pub(super) fn new(view: &'v View) -> Self {
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
        Backends {
            services,
            slices,
            endpoints: RefCell::default(),
        }
    }

    /// Whether Service `name` exists in `namespace`.
    pub(super) fn has_service(&self, namespace: &str, name: &str) -> bool {
        self.services
            .contains_key(&(namespace.to_string(), name.to_string()))
    }

    /// What a route to `backend` does: forward to the ready endpoints, or 503 when
    /// there are none (the Service or its endpoints may come later).
    /// `protocol`, when given (an annotation of the Ingress), wins over the Service's.
    pub(super) fn action(
        &self,
        namespace: &str,
        backend: &IngressBackend,
        protocol: Option<UpstreamProtocol>,
    ) -> Result<RouteAction, String> {
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
        let protocol = protocol.unwrap_or(if h2c {
            UpstreamProtocol::H2c
        } else {
            UpstreamProtocol::Http1
        });
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            let name = spec.and_then(|s| s.external_name.as_deref()).unwrap_or("");
            let number = wanted.and_then(|p| p.number).or(port.map(|p| p.port));
            let upstream = number
                .and_then(|n| format!("{name}:{n}").parse().ok())
                .map(|authority| Upstream { authority });
            return match upstream {
                Some(u) => Ok(RouteAction::Proxy {
                    upstreams: vec![u].into(),
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
        let key = (
            namespace.to_string(),
            service.name.clone(),
            port.name.clone().unwrap_or_default(),
        );
        let upstreams = self
            .endpoints
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| self.ready_endpoints(namespace, &service.name, port))
            .clone();
        if upstreams.is_empty() {
            return Ok(unavailable);
        }
        Ok(RouteAction::Proxy {
            upstreams,
            protocol,
        })
    }

    /// The ready endpoints of a Service's port, sorted, so an unchanged set builds an
    /// equal route.
    fn ready_endpoints(
        &self,
        namespace: &str,
        service: &str,
        port: &ServicePort,
    ) -> Arc<[Upstream]> {
        let mut upstreams = BTreeMap::new();
        for slice in self
            .slices
            .get(&(namespace.to_string(), service.to_string()))
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
        upstreams.into_values().collect()
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

    /// A `kubernetes.io/tls` Secret `ns/name` holding a self-signed certificate for
    /// `hosts`.
    fn tls_secret(name: &str, labels: serde_json::Value, hosts: &[&str]) -> Secret {
        use base64::Engine;
        let (chain, key) = crate::tls::self_signed_pem(hosts);
        let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": labels},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": b64(chain), "tls.key": b64(key)},
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
            ..View::default()
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
            other => panic!("an Ingress makes no {other:?}"),
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
    fn a_wildcard_host_is_served_from_its_secret_and_a_missing_secret_is_filled() {
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
        view.secrets
            .push(tls_secret("wild", json!({}), &["*.example.com"]));
        let built = build("portico", &view, &HashSet::new());
        let (sites, refused) = (built.sites, built.notices);
        let wild = sites
            .iter()
            .find(|s| s.hosts == [HostPattern::Wildcard("example.com".into())])
            .unwrap();
        match &wild.tls {
            TlsSource::Secret(pem) => {
                assert_eq!(pem.origin, "ns/wild");
                assert!(pem.chain.starts_with(b"-----BEGIN CERTIFICATE"));
                assert!(!format!("{pem:?}").contains("key"), "{pem:?}");
            }
            other => panic!("{other:?}"),
        }
        let app = sites
            .iter()
            .find(|s| s.names() == ["app.example.com"])
            .unwrap();
        assert_eq!(app.tls, TlsSource::Acme);
        // A missing Secret is filled with the automatic certificate.
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(built.fills.len(), 1);
        let fill = &built.fills[0];
        assert_eq!(
            (fill.namespace.as_str(), fill.name.as_str()),
            ("ns", "gone")
        );
        assert_eq!(fill.site.names(), ["app.example.com"]);
        assert!(fill.existing.is_none());
    }

    #[test]
    fn nginx_annotations_map_to_equivalents_or_refuse_the_ingress() {
        let annotated = |pairs: &[(&str, &str)]| {
            let mut view = view();
            let annotations = pairs
                .iter()
                .map(|(k, v)| (format!("{NGINX}{k}"), v.to_string()))
                .collect();
            view.ingresses[0].metadata.annotations = Some(annotations);
            sites("portico", &view)
        };
        let (sites, notices) = annotated(&[("backend-protocol", "GRPC"), ("ssl-redirect", "true")]);
        assert!(notices.is_empty(), "{notices:?}");
        assert!(matches!(
            route(&sites[0], "/").action,
            RouteAction::Proxy {
                protocol: UpstreamProtocol::H2c,
                ..
            }
        ));
        for refused in [
            ("configuration-snippet", "more_set_headers x;"),
            ("server-snippet", "location / {}"),
            ("auth-url", "http://auth"),
            ("whitelist-source-range", "10.0.0.0/8"),
            ("rewrite-target", "/$2"),
            ("backend-protocol", "HTTPS"),
            ("proxy-body-size", "8 megabytes"),
            ("proxy-read-timeout", "0"),
        ] {
            let (sites, notices) = annotated(&[refused]);
            assert!(sites.is_empty(), "{refused:?}");
            assert_eq!(notices.len(), 1, "{notices:?}");
            assert!(notices[0].reason.contains("not served"), "{notices:?}");
        }
        let (sites, notices) = annotated(&[("proxy-buffer-size", "8k"), ("ssl-redirect", "false")]);
        assert_eq!(sites.len(), 1);
        assert_eq!(notices.len(), 2, "{notices:?}");
        assert!(
            notices.iter().all(|n| n.reason.contains("not honoured")),
            "{notices:?}"
        );
    }

    #[test]
    fn a_secret_portico_filled_stays_automatic_and_cert_manager_s_is_left_to_it() {
        let mut view = view();
        let ingress = &mut view.ingresses[0];
        ingress.spec.as_mut().unwrap().tls = Some(vec![
            serde_json::from_value(json!({"hosts": ["app.example.com"], "secretName": "ours"}))
                .unwrap(),
        ]);
        let secret = |labels| tls_secret("ours", labels, &["app.example.com"]);
        // Filled by portico before: renewed through the site's own source, and kept.
        view.secrets = vec![secret(json!({LABEL_MANAGED_BY: MANAGED_BY}))];
        let built = build("portico", &view, &HashSet::new());
        assert_eq!(built.sites[0].tls, TlsSource::Acme);
        assert!(built.fills[0].existing.is_some());
        // Missing, but cert-manager is to make it: not filled, said.
        view.secrets.clear();
        view.ingresses[0].metadata.annotations = Some(
            [(
                "cert-manager.io/cluster-issuer".to_string(),
                "le".to_string(),
            )]
            .into(),
        );
        let built = build("portico", &view, &HashSet::new());
        assert!(built.fills.is_empty());
        assert!(
            built.notices[0].reason.contains("cert-manager"),
            "{:?}",
            built.notices
        );
        // Made by cert-manager: served as it is.
        view.secrets = vec![secret(json!({}))];
        let built = build("portico", &view, &HashSet::new());
        assert!(matches!(built.sites[0].tls, TlsSource::Secret(_)));
        assert!(built.fills.is_empty() && built.notices.is_empty());
        // Someone else's Secret without a certificate, and no cert-manager annotation:
        // the host gets an automatic certificate, and the Secret is never written.
        view.ingresses[0].metadata.annotations = None;
        let mut empty = secret(json!({}));
        empty.data = Some(Default::default());
        view.secrets = vec![empty];
        let built = build("portico", &view, &HashSet::new());
        assert_eq!(built.sites[0].tls, TlsSource::Acme);
        assert!(built.fills.is_empty(), "{:?}", built.fills.len());
        assert!(
            built.notices[0].reason.contains("does not write it"),
            "{:?}",
            built.notices
        );
    }

    #[test]
    fn tls_off_serves_the_ingress_s_hosts_without_a_certificate() {
        let mut view = view();
        view.ingresses[0].metadata.annotations =
            Some([(TLS_ANNOTATION.to_string(), "off".to_string())].into());
        view.ingresses[0].spec.as_mut().unwrap().tls = Some(vec![
            serde_json::from_value(json!({"hosts": ["app.example.com"], "secretName": "x"}))
                .unwrap(),
        ]);
        let built = build("portico", &view, &HashSet::new());
        assert_eq!(built.sites[0].tls, TlsSource::Off);
        assert!(
            built.fills.is_empty(),
            "no Secret is filled for a plain host"
        );
    }

    #[test]
    fn body_size_and_read_timeout_annotations_are_the_routes_limits() {
        let mut view = view();
        view.ingresses[0].metadata.annotations = Some(
            [
                (format!("{NGINX}proxy-body-size"), "8m".to_string()),
                (format!("{NGINX}proxy-read-timeout"), "120".to_string()),
            ]
            .into(),
        );
        let (sites, notices) = sites("portico", &view);
        assert!(notices.is_empty(), "{notices:?}");
        for route in &sites[0].routes {
            assert_eq!(route.limits.max_body_bytes, Some(8 << 20), "{}", route.path);
            assert_eq!(
                route.limits.upstream_timeout,
                Some(Duration::from_secs(120))
            );
        }
        assert_eq!(nginx_size("0"), Some(0));
        assert_eq!(nginx_size("1024"), Some(1024));
        assert_eq!(nginx_size("10K"), Some(10 << 10));
        assert_eq!(nginx_size("2g"), Some(2 << 30));
        assert_eq!(nginx_size("m"), None);
        assert_eq!(nginx_size("99999999999999999999g"), None);
    }
}
