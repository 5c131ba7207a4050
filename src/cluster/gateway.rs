//! Gateway API as sites: the translation from GatewayClasses, Gateways, HTTPRoutes and
//! ReferenceGrants (with the Services, EndpointSlices and `kubernetes.io/tls` Secrets
//! the Ingress side reads too) to [`Site`]s the reload path merges with the TOML sites
//! and the Ingresses', and to the status the holder of the status lock writes back.
//! Pure, like [`super::ingress`]: every rule here is tested without a cluster, and
//! `tests/gateway.rs` runs them against the real API server.
//!
//! Rules (docs/kubernetes.md states them for users):
//! - a Gateway is ours when its `gatewayClassName` is `gateway_class` and that
//!   GatewayClass names [`CONTROLLER`];
//! - a listener of protocol HTTP on port 80 is served by portico's port-80 listener, one
//!   of protocol HTTPS on port 443 (TLS terminated) by its HTTPS listener; any other is
//!   not accepted (`UnsupportedProtocol`, `PortUnavailable`); two listeners on one port
//!   with one hostname conflict, and the later one (the newer Gateway's, or later in the
//!   list) is not served;
//! - an HTTPS listener's certificate is its first `certificateRef`, a Secret, from
//!   another namespace only with a ReferenceGrant; a Secret that does not exist, on a
//!   Gateway annotated `portico.dev/acme: "true"`, is obtained over ACME (or the local
//!   CA for cluster-local names) and written into that Secret; a wildcard hostname needs
//!   a Secret (no DNS-01); a Secret that does not load, or does not cover a host the
//!   listener serves, is `InvalidCertificateRef` and is still handed on, so the
//!   certificate path refuses it and the certificate served before keeps serving;
//! - an HTTPRoute attaches to the listeners its `parentRefs` name (`sectionName`, `port`)
//!   that allow it (`allowedRoutes`), for the hostnames its own and the listener's
//!   intersect; each rule match is a route with the spec's precedence (oldest HTTPRoute
//!   first on a tie), served on the listener it attached to; a host the config file or
//!   an Ingress serves is theirs: the route stays `Accepted` and is told in a notice
//!   (a `NotServed` Warning Event);
//! - a `backendRef` is a Service, in another namespace only with a ReferenceGrant; one
//!   that is not (`InvalidKind`), not permitted (`RefNotPermitted`) or missing
//!   (`BackendNotFound`) gets its share of requests answered 500, as the spec says;
//! - hostnames are the spec's: `*.example.com` covers any number of labels, and a
//!   listener and route that both leave the hostname out serve every host the config
//!   file, the Ingresses and the other routes do not (an HTTPS one with its Secret).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use http::StatusCode;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{IngressBackend, IngressServiceBackend, ServiceBackendPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use super::gateway_api::gatewayclasses::{
    GatewayClass, GatewayClassStatus, GatewayClassStatusSupportedFeatures,
};
use super::gateway_api::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom,
    GatewayListenersTlsMode, GatewayStatus, GatewayStatusListeners,
    GatewayStatusListenersSupportedKinds,
};
use super::gateway_api::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesFilters,
    HttpRouteRulesFiltersRequestRedirectPathType, HttpRouteRulesFiltersRequestRedirectScheme,
    HttpRouteRulesFiltersType, HttpRouteRulesFiltersUrlRewritePathType,
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType, HttpRouteStatusParents, HttpRouteStatusParentsParentRef,
};
use super::gateway_api::referencegrants::ReferenceGrant;
use super::ingress::{Backends, Fill, LABEL_MANAGED_BY, MANAGED_BY, Notice, View, is_local, pem};
use super::watch::key;
use crate::config::{
    HeaderEdits, HostPattern, ListenerScope, PathMatch, PathRewrite, Redirect, Rewrite, Route,
    RouteAction, RouteLimits, RouteRule, SecretPem, Site, TlsSource, Weighted,
};

/// `spec.controllerName` of a GatewayClass whose Gateways portico serves.
pub(crate) const CONTROLLER: &str = "portico.dev/gateway-controller";
/// The API group of Gateway API objects.
const GROUP: &str = "gateway.networking.k8s.io";
/// A Gateway annotation: `"true"` obtains missing `certificateRefs` Secrets over ACME.
const ACME_ANNOTATION: &str = "portico.dev/acme";
/// The features portico serves, by the spec's names, sorted (GatewayClass status).
pub(crate) const SUPPORTED_FEATURES: [&str; 11] = [
    "Gateway",
    "HTTPRoute",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteSchemeRedirect",
    "ReferenceGrant",
];

/// What the Gateways of one class make.
#[derive(Debug, Default)]
pub(crate) struct Built {
    /// By host, sorted.
    pub(crate) sites: Vec<Site>,
    /// `certificateRefs` Secrets portico fills (Gateways annotated for ACME).
    pub(crate) fills: Vec<Fill>,
    /// Host → `namespace/name` of the Gateway whose listener asked for its certificate.
    pub(crate) owners: Vec<(String, String)>,
    /// Hosts of HTTPRoutes (`namespace/name`) not served because the config file or an
    /// Ingress serves them: logged once, and a Warning Event on the route.
    pub(crate) notices: Vec<Notice>,
    /// The status each object should have (conditions' times are the build's; the
    /// writer keeps an unchanged condition's own time).
    pub(crate) status: Statuses,
}

/// The status of every object of ours, as it should be.
#[derive(Debug, Default)]
pub(crate) struct Statuses {
    pub(crate) classes: Vec<(GatewayClass, GatewayClassStatus)>,
    pub(crate) gateways: Vec<(Gateway, GatewayStatus)>,
    /// The route and its `status.parents` entries for our Gateways (other controllers'
    /// entries are kept by the writer).
    pub(crate) routes: Vec<(HttpRoute, Vec<HttpRouteStatusParents>)>,
}

/// One listener of one of our Gateways, as judged.
struct Listener<'v> {
    gateway: &'v Gateway,
    spec: &'v GatewayListeners,
    scope: ListenerScope,
    /// Why it is not accepted (reason, message); `None`: accepted.
    refused: Option<Failure>,
    /// An older listener has its port and hostname.
    conflicted: bool,
    /// `ResolvedRefs`: the certificateRef and the allowed route kinds.
    refs: Result<(), Failure>,
    /// The certificate, for an HTTPS listener whose refs resolved.
    certificate: Option<Certificate>,
    /// Routes attached (`attachedRoutes`).
    attached: i32,
}

impl Listener<'_> {
    fn accepted(&self) -> bool {
        self.refused.is_none()
    }

    /// Accepted, without conflict: routes may attach.
    fn open(&self) -> bool {
        self.accepted() && !self.conflicted
    }
}

/// Where an HTTPS listener's certificate comes from.
enum Certificate {
    /// A Secret that exists (someone else's, or portico's own). Its hosts are served
    /// from it even when it does not load or cover them: the certificate path then
    /// refuses it and keeps what it served before, so a bad edit of the Secret does not
    /// take a host off HTTPS; the listener's `ResolvedRefs` says what is wrong.
    Secret {
        pem: SecretPem,
        /// Its certificate, or why it does not load.
        loaded: Result<Arc<crate::tls::Loaded>, String>,
    },
    /// A Secret to fill over ACME: missing, or portico's own.
    Fill {
        namespace: String,
        name: String,
        existing: Option<Box<Secret>>,
    },
}

/// The sites the Gateways of class `class` make, and their status. Hosts in `taken`
/// (the config file's and the Ingresses') win over any route.
pub(crate) fn build(class: &str, view: &View, taken: &HashSet<HostPattern>) -> Built {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut status = Statuses::default();
    let ours_class = view
        .gateway_classes
        .iter()
        .find(|c| c.name_any() == class && c.spec.controller_name == CONTROLLER);
    let Some(gateway_class) = ours_class else {
        return Built::default();
    };
    status.classes.push((
        gateway_class.clone(),
        GatewayClassStatus {
            conditions: Some(vec![
                Stamp {
                    generation: gateway_class.metadata.generation,
                    now: &now,
                }
                .condition(
                    "Accepted",
                    true,
                    "Accepted",
                    "portico serves this class",
                ),
            ]),
            supported_features: Some(
                SUPPORTED_FEATURES
                    .iter()
                    .map(|f| GatewayClassStatusSupportedFeatures {
                        name: (*f).to_string(),
                    })
                    .collect(),
            ),
        },
    ));
    let mut gateways: Vec<&Gateway> = view
        .gateways
        .iter()
        .filter(|g| g.spec.gateway_class_name == class)
        .collect();
    gateways.sort_by(|a, b| oldest_first(*a, *b));
    let secrets: BTreeMap<String, &Secret> = view.secrets.iter().map(|s| (key(s), s)).collect();
    let grants = Grants::new(&view.reference_grants);

    // Listeners, in Gateway age order, then as listed: the first on a port and
    // hostname keeps it.
    let mut listeners: Vec<Listener> = Vec::new();
    let mut claimed: BTreeSet<(i32, String)> = BTreeSet::new();
    for gateway in &gateways {
        let namespace = gateway.namespace().unwrap_or_default();
        let acme = gateway
            .annotations()
            .get(ACME_ANNOTATION)
            .map(String::as_str)
            == Some("true");
        for spec in &gateway.spec.listeners {
            let mut l = Listener {
                gateway,
                spec,
                scope: ListenerScope::Any,
                refused: None,
                conflicted: false,
                refs: Ok(()),
                certificate: None,
                attached: 0,
            };
            match (spec.protocol.as_str(), spec.port) {
                ("HTTP", 80) => l.scope = ListenerScope::Http,
                ("HTTPS", 443) => l.scope = ListenerScope::Https,
                ("HTTP" | "HTTPS", port) => {
                    l.refused = Some((
                        "PortUnavailable",
                        format!(
                            "portico serves HTTP on port 80 and HTTPS on port 443, not {} on {port}",
                            spec.protocol
                        ),
                    ))
                }
                (protocol, _) => {
                    l.refused = Some((
                        "UnsupportedProtocol",
                        format!("portico serves HTTP and HTTPS listeners, not {protocol}"),
                    ))
                }
            }
            if l.scope == ListenerScope::Https
                && spec.tls.as_ref().and_then(|t| t.mode.as_ref())
                    == Some(&GatewayListenersTlsMode::Passthrough)
            {
                l.refused = Some((
                    "UnsupportedProtocol",
                    "portico terminates TLS; tls.mode Passthrough is not served".into(),
                ));
            }
            if l.accepted() {
                let host = spec
                    .hostname
                    .clone()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                if !claimed.insert((spec.port, host)) {
                    l.conflicted = true;
                }
            }
            if let Some(kinds) = spec.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref())
                && !kinds
                    .iter()
                    .any(|k| k.kind == "HTTPRoute" && k.group.as_deref().unwrap_or(GROUP) == GROUP)
            {
                l.refs = Err(("InvalidRouteKinds", "portico serves HTTPRoutes only".into()));
            }
            if l.open() && l.scope == ListenerScope::Https {
                match listener_certificate(gateway, spec, &namespace, acme, &secrets, &grants) {
                    Ok(c) => {
                        // Checked here too, not only for the hosts routes bring: a
                        // listener with no route yet says its Secret is bad. A wildcard
                        // hostname is checked per host (a certificate per name serves).
                        let named = spec.hostname.as_deref().filter(|h| !h.starts_with('*'));
                        if let (Ok(()), Some(why)) = (&l.refs, c.fault(named)) {
                            l.refs = Err(why);
                        }
                        l.certificate = Some(c);
                    }
                    Err(why) => l.refs = Err(why),
                }
            }
            listeners.push(l);
        }
    }

    let backends = Backends::new(view);
    let mut routes: Vec<&HttpRoute> = view.http_routes.iter().collect();
    routes.sort_by(|a, b| oldest_first(*a, *b));
    // Host → (routes in order, the HTTPS listener that gives its certificate).
    let mut hosts: BTreeMap<String, HostPlan> = BTreeMap::new();
    let mut notices = Vec::new();
    for route in routes {
        let namespace = route.namespace().unwrap_or_default();
        let (rules, resolved, unsupported) = route_rules(route, &namespace, &backends, &grants);
        let mut parents = Vec::new();
        // Hosts the file or an Ingress has, and whether any other is served.
        let mut lost: BTreeSet<String> = BTreeSet::new();
        let mut kept = false;
        for parent in route.spec.parent_refs.iter().flatten() {
            if parent.group.as_deref().unwrap_or(GROUP) != GROUP
                || parent.kind.as_deref().unwrap_or("Gateway") != "Gateway"
            {
                continue;
            }
            let parent_ns = parent
                .namespace
                .clone()
                .unwrap_or_else(|| namespace.clone());
            let Some(gateway) = gateways.iter().find(|g| {
                g.namespace().as_deref() == Some(&parent_ns) && g.name_any() == parent.name
            }) else {
                // Not ours (or not there): another controller's to judge.
                continue;
            };
            let stamp = Stamp {
                generation: route.metadata.generation,
                now: &now,
            };
            let mut accepted: Result<(), Failure> = Ok(());
            let mut attached_to = Vec::new();
            let named: Vec<usize> = listeners
                .iter()
                .enumerate()
                .filter(|(_, l)| std::ptr::eq(l.gateway, *gateway))
                .filter(|(_, l)| {
                    parent
                        .section_name
                        .as_deref()
                        .is_none_or(|s| s == l.spec.name)
                        && parent.port.is_none_or(|p| p == l.spec.port)
                })
                .map(|(i, _)| i)
                .collect();
            if named.is_empty() {
                accepted = Err((
                    "NoMatchingParent",
                    "no listener of the Gateway has this sectionName and port".into(),
                ));
            } else {
                let allowed: Vec<usize> = named
                    .iter()
                    .copied()
                    .filter(|&i| {
                        let l = &listeners[i];
                        l.open()
                            && l.refs
                                .as_ref()
                                .err()
                                .is_none_or(|(r, _)| *r != "InvalidRouteKinds")
                            && allows(l, &namespace)
                    })
                    .collect();
                if allowed.is_empty() {
                    accepted = Err((
                        "NotAllowedByListeners",
                        "no listener it names allows routes from this namespace or of this kind"
                            .into(),
                    ));
                } else {
                    let route_hosts: Vec<String> = route
                        .spec
                        .hostnames
                        .iter()
                        .flatten()
                        .map(|h| h.to_ascii_lowercase())
                        .collect();
                    for &i in &allowed {
                        let listener_host = listeners[i]
                            .spec
                            .hostname
                            .as_deref()
                            .map(str::to_ascii_lowercase);
                        let names = intersect(listener_host.as_deref(), &route_hosts);
                        if !names.is_empty() {
                            attached_to.push((i, names));
                        }
                    }
                    if attached_to.is_empty() {
                        accepted = Err((
                            "NoMatchingListenerHostname",
                            "no hostname of the route matches a listener's".into(),
                        ));
                    }
                }
            }
            // Rules portico cannot serve are dropped (the spec's PartiallyInvalid); a
            // route left with none is not accepted.
            if accepted.is_ok()
                && rules.is_empty()
                && let Some(why) = &unsupported
            {
                accepted = Err(("UnsupportedValue", why.clone()));
            }
            if accepted.is_ok() {
                for (i, names) in &attached_to {
                    listeners[*i].attached += 1;
                    let scope = listeners[*i].scope;
                    for name in names {
                        if is_taken(taken, &gateway_pattern(name)) {
                            lost.insert(name.clone());
                            continue;
                        }
                        kept = true;
                        let plan = hosts.entry(name.clone()).or_default();
                        if scope == ListenerScope::Https && plan.https.is_none() {
                            plan.https = Some(*i);
                        }
                        for rule in &rules {
                            let mut r = rule.clone();
                            r.rule.listener = scope;
                            plan.routes.push(r);
                        }
                    }
                }
            }
            let mut conditions = vec![
                stamp.judged("Accepted", accepted.as_ref().map(|_| ()), "attached"),
                stamp.judged(
                    "ResolvedRefs",
                    resolved.as_ref().map(|_| ()),
                    "every backendRef resolved",
                ),
            ];
            if let (Ok(()), Some(why)) = (&accepted, &unsupported) {
                conditions.push(stamp.condition(
                    "PartiallyInvalid",
                    true,
                    "UnsupportedValue",
                    &format!("Dropped Rule: {why}"),
                ));
            }
            parents.push(HttpRouteStatusParents {
                conditions,
                controller_name: CONTROLLER.to_string(),
                parent_ref: parent_ref(parent),
            });
        }
        // A route detached from every Gateway of ours still loses the entries portico
        // wrote: the writer keeps only other controllers' then.
        let stale = route
            .status
            .as_ref()
            .is_some_and(|s| s.parents.iter().any(|p| p.controller_name == CONTROLLER));
        if !parents.is_empty() || stale {
            status.routes.push((route.clone(), parents));
        }
        // Still Accepted: the spec has no condition for a host another source serves,
        // and the route's other hosts are served.
        if !lost.is_empty() {
            let it = if lost.len() == 1 { "it" } else { "them" };
            let hosts = lost.into_iter().collect::<Vec<_>>().join(", ");
            let rest = if kept {
                "its other hosts are served"
            } else {
                "the route is attached but serves no host"
            };
            notices.push(Notice {
                object: key(route),
                reason: format!(
                    "{hosts}: not served from this HTTPRoute: portico's config file or an Ingress serves {it} (they win over routes); {rest}"
                ),
            });
        }
    }

    // Sites: one per host, its routes in the spec's order (stable: oldest route first).
    let mut sites = Vec::new();
    let mut fills = Vec::new();
    let mut owners = Vec::new();
    let mut filled: BTreeSet<(String, String)> = BTreeSet::new();
    for (host, mut plan) in hosts {
        let pattern = gateway_pattern(&host);
        let mut tls = TlsSource::Off;
        let mut fill = None;
        if let Some(i) = plan.https {
            let listener = &mut listeners[i];
            match &listener.certificate {
                Some(c @ Certificate::Secret { pem, .. }) => {
                    // The first failure of the listener's hosts is the one it shows.
                    if let (Ok(()), Some(why)) = (&listener.refs, c.fault(Some(&host))) {
                        listener.refs = Err(why);
                    }
                    tls = TlsSource::Secret(pem.clone());
                }
                Some(Certificate::Fill {
                    namespace,
                    name,
                    existing,
                }) => {
                    if pattern.is_wildcard() {
                        listener.refs = Err((
                            "InvalidCertificateRef",
                            format!(
                                "{host}: Secret {namespace}/{name} does not exist, and a wildcard certificate cannot be obtained over HTTP-01 (portico does not do DNS-01)"
                            ),
                        ));
                    } else {
                        tls = if is_local(&host) {
                            TlsSource::Internal
                        } else {
                            TlsSource::Acme
                        };
                        if filled.insert((namespace.clone(), name.clone())) {
                            fill = Some((
                                namespace.clone(),
                                name.clone(),
                                existing.as_deref().cloned(),
                            ));
                        }
                        owners.push((host.clone(), key(listener.gateway)));
                    }
                }
                None => {}
            }
        }
        if tls == TlsSource::Off {
            // No certificate: only what port 80 serves.
            plan.routes
                .retain(|r| r.rule.listener == ListenerScope::Http);
        }
        if plan.routes.is_empty() {
            continue;
        }
        plan.routes.sort_by_key(Route::precedence);
        let site = Site {
            hosts: vec![pattern],
            tls,
            routes: plan.routes,
        };
        if let Some((namespace, name, existing)) = fill {
            fills.push(Fill {
                site: site.clone(),
                namespace,
                name,
                existing,
            });
        }
        sites.push(site);
    }

    for gateway in &gateways {
        let stamp = Stamp {
            generation: gateway.metadata.generation,
            now: &now,
        };
        let mine: Vec<&Listener> = listeners
            .iter()
            .filter(|l| std::ptr::eq(l.gateway, *gateway))
            .collect();
        let any = mine.iter().any(|l| l.open());
        let listener_status = mine
            .iter()
            .map(|l| {
                let mut conditions = Vec::new();
                conditions.push(stamp.judged(
                    "Accepted",
                    l.refused.as_ref().map_or(Ok(()), Err),
                    "served by portico",
                ));
                conditions.push(if l.conflicted {
                    stamp.condition(
                        "Conflicted",
                        true,
                        "HostnameConflict",
                        "an older listener on this port has this hostname",
                    )
                } else {
                    stamp.condition("Conflicted", false, "NoConflicts", "no conflict")
                });
                conditions.push(stamp.judged(
                    "ResolvedRefs",
                    l.refs.as_ref().map(|_| ()),
                    "references resolved",
                ));
                let programmed = l.open() && l.refs.is_ok();
                conditions.push(stamp.condition(
                    "Programmed",
                    programmed,
                    if programmed { "Programmed" } else { "Invalid" },
                    if programmed {
                        "serving"
                    } else {
                        "not served; see the other conditions"
                    },
                ));
                GatewayStatusListeners {
                    attached_routes: l.attached,
                    conditions,
                    name: l.spec.name.clone(),
                    supported_kinds: Some(if matches!(&l.refs, Err(("InvalidRouteKinds", _))) {
                        Vec::new()
                    } else {
                        vec![GatewayStatusListenersSupportedKinds {
                            group: Some(GROUP.to_string()),
                            kind: "HTTPRoute".to_string(),
                        }]
                    }),
                }
            })
            .collect();
        let conditions = vec![
            if any {
                stamp.condition("Accepted", true, "Accepted", "served by portico")
            } else {
                stamp.condition(
                    "Accepted",
                    false,
                    "ListenersNotValid",
                    "no listener can be served",
                )
            },
            stamp.condition(
                "Programmed",
                any,
                if any { "Programmed" } else { "Invalid" },
                if any {
                    "serving"
                } else {
                    "no listener is served"
                },
            ),
        ];
        status.gateways.push((
            (*gateway).clone(),
            GatewayStatus {
                // The writer fills them from publish_service.
                addresses: None,
                attached_listener_sets: None,
                conditions: Some(conditions),
                listeners: Some(listener_status),
            },
        ));
    }
    Built {
        sites,
        fills,
        owners,
        notices,
        status,
    }
}

/// A host's routes and the first HTTPS listener (index) attached for it.
#[derive(Default)]
struct HostPlan {
    routes: Vec<Route>,
    https: Option<usize>,
}

/// Older first, then by namespace and name: the spec's tie-break between routes, and
/// who keeps a listener's port and hostname.
fn oldest_first<K: kube::Resource>(a: &K, b: &K) -> std::cmp::Ordering {
    let at = |o: &K| o.meta().creation_timestamp.clone().map(|t| t.0);
    at(a)
        .cmp(&at(b))
        .then_with(|| a.meta().namespace.cmp(&b.meta().namespace))
        .then_with(|| a.meta().name.cmp(&b.meta().name))
}

/// What every condition of one object carries: its generation and the build's time.
struct Stamp<'a> {
    generation: Option<i64>,
    now: &'a Time,
}

impl Stamp<'_> {
    fn condition(&self, type_: &str, ok: bool, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.to_string(),
            status: if ok { "True" } else { "False" }.to_string(),
            reason: reason.to_string(),
            // The API server refuses messages over 32 KiB; ours are short.
            message: message.chars().take(1000).collect(),
            observed_generation: self.generation,
            last_transition_time: self.now.clone(),
        }
    }

    /// `type_` True (the reason named as the type) with `ok_message`, or False with
    /// the failure's reason and message.
    fn judged(&self, type_: &str, result: Result<(), &Failure>, ok_message: &str) -> Condition {
        match result {
            Ok(()) => self.condition(type_, true, type_, ok_message),
            Err((reason, message)) => self.condition(type_, false, reason, message),
        }
    }
}

fn parent_ref(parent: &HttpRouteParentRefs) -> HttpRouteStatusParentsParentRef {
    HttpRouteStatusParentsParentRef {
        group: parent.group.clone(),
        kind: parent.kind.clone(),
        name: parent.name.clone(),
        namespace: parent.namespace.clone(),
        port: parent.port,
        section_name: parent.section_name.clone(),
    }
}

/// Whether a listener takes routes from `namespace` (`allowedRoutes.namespaces`;
/// `Selector` needs Namespace labels, which portico does not read: only its own
/// namespace passes).
fn allows(listener: &Listener, namespace: &str) -> bool {
    let from = listener
        .spec
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
        .and_then(|n| n.from.as_ref());
    match from {
        Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => true,
        _ => listener.gateway.namespace().as_deref() == Some(namespace),
    }
}

/// The hostnames a route is served for on a listener, lowercased: the catch-all (`""`)
/// when both leave it out; else the intersection: a route name the listener's pattern
/// covers, or the listener's name a route wildcard covers.
fn intersect(listener: Option<&str>, route: &[String]) -> Vec<String> {
    match (listener, route.is_empty()) {
        (None, true) => vec![String::new()],
        (Some(l), true) => vec![l.to_string()],
        (None, false) => route.to_vec(),
        (Some(l), false) => {
            let mut names = BTreeSet::new();
            for r in route {
                if covers(l, r) {
                    names.insert(r.clone());
                } else if covers(r, l) {
                    names.insert(l.to_string());
                }
            }
            names.into_iter().collect()
        }
    }
}

/// A hostname as [`intersect`] gives it, as a host pattern: `*.suffix` covers any
/// number of labels, and `""` every host (the spec's catch-all).
fn gateway_pattern(name: &str) -> HostPattern {
    if name.is_empty() {
        return HostPattern::Any;
    }
    match name.strip_prefix("*.") {
        Some(suffix) => HostPattern::Suffix(suffix.to_string()),
        None => HostPattern::Exact(name.to_string()),
    }
}

/// Whether the config file or an Ingress serves `pattern` already (an Ingress's
/// `*.suffix` is the same name as a Gateway's, though it covers one label only).
fn is_taken(taken: &HashSet<HostPattern>, pattern: &HostPattern) -> bool {
    taken.contains(pattern)
        || matches!(pattern, HostPattern::Suffix(s) if taken.contains(&HostPattern::Wildcard(s.clone())))
}

/// Whether pattern `p` covers name or pattern `n` (Gateway API: `*.a.b` covers any
/// number of labels before `.a.b`, never `a.b` itself).
fn covers(p: &str, n: &str) -> bool {
    if p == n {
        return true;
    }
    match p.strip_prefix('*') {
        Some(suffix) => {
            let n = n.strip_prefix('*').unwrap_or(n);
            n.len() > suffix.len() && n.ends_with(suffix)
        }
        None => false,
    }
}

/// ReferenceGrants by the namespace they grant into.
struct Grants<'v> {
    grants: &'v [ReferenceGrant],
}

impl<'v> Grants<'v> {
    fn new(grants: &'v [ReferenceGrant]) -> Self {
        Grants { grants }
    }

    /// Whether an object of `from_kind` in `from_ns` may refer to the core-group
    /// `to_kind` named `name` in `to_ns`.
    fn allows(
        &self,
        from_kind: &str,
        from_ns: &str,
        to_kind: &str,
        to_ns: &str,
        name: &str,
    ) -> bool {
        from_ns == to_ns
            || self.grants.iter().any(|g| {
                g.namespace().as_deref() == Some(to_ns)
                    && g.spec
                        .from
                        .iter()
                        .any(|f| f.group == GROUP && f.kind == from_kind && f.namespace == from_ns)
                    && g.spec.to.iter().any(|t| {
                        t.group.is_empty()
                            && t.kind == to_kind
                            && t.name.as_deref().is_none_or(|n| n == name)
                    })
            })
    }
}

/// An HTTPS listener's certificate: its first `certificateRef`.
fn listener_certificate(
    gateway: &Gateway,
    spec: &GatewayListeners,
    namespace: &str,
    acme: bool,
    secrets: &BTreeMap<String, &Secret>,
    grants: &Grants,
) -> Result<Certificate, (&'static str, String)> {
    let Some(first) = spec
        .tls
        .as_ref()
        .and_then(|t| t.certificate_refs.as_ref())
        .and_then(|r| r.first())
    else {
        return Err((
            "InvalidCertificateRef",
            "an HTTPS listener needs a certificateRef (a Secret; annotate the Gateway portico.dev/acme: \"true\" to have portico obtain it)".into(),
        ));
    };
    if !first.group.as_deref().unwrap_or("").is_empty()
        || first.kind.as_deref().unwrap_or("Secret") != "Secret"
    {
        return Err((
            "InvalidCertificateRef",
            format!("certificateRef {} is not a Secret", first.name),
        ));
    }
    let ns = first
        .namespace
        .clone()
        .unwrap_or_else(|| namespace.to_string());
    if !grants.allows("Gateway", namespace, "Secret", &ns, &first.name) {
        return Err((
            "RefNotPermitted",
            format!(
                "Secret {ns}/{} is in another namespace and no ReferenceGrant there allows it",
                first.name
            ),
        ));
    }
    let found = secrets.get(&format!("{ns}/{}", first.name)).copied();
    let ours = found
        .is_some_and(|s| s.labels().get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY));
    let named = spec
        .hostname
        .as_deref()
        .is_some_and(|h| !h.starts_with('*'));
    match found {
        Some(secret) if !ours || !acme => {
            Ok(secret_certificate(format!("{ns}/{}", first.name), secret))
        }
        _ if acme && !named => Err((
            "InvalidCertificateRef",
            format!(
                "Secret {ns}/{} does not exist, and portico obtains certificates only for a listener with one hostname that is not a wildcard (a wildcard needs DNS-01, which portico does not do)",
                first.name
            ),
        )),
        _ if acme => Ok(Certificate::Fill {
            namespace: ns,
            name: first.name.clone(),
            existing: found.map(|s| Box::new(s.clone())),
        }),
        _ => Err((
            "InvalidCertificateRef",
            format!(
                "Secret {ns}/{} does not exist (annotate Gateway {} portico.dev/acme: \"true\" to have portico obtain it)",
                first.name,
                key(gateway)
            ),
        )),
    }
}

type Failure = (&'static str, String);

/// A certificateRef Secret that exists, as served: its `tls.crt` and `tls.key` (both
/// empty when it lacks either), and its certificate or why it does not load.
fn secret_certificate(origin: String, secret: &Secret) -> Certificate {
    match pem(&origin, secret) {
        Some(pem) => {
            let loaded = crate::tls::load_pem(&format!("Secret {origin}"), &pem.chain, &pem.key)
                .map(Arc::new)
                .map_err(|e| crate::report::Chain(&e).to_string());
            Certificate::Secret { pem, loaded }
        }
        None => Certificate::Secret {
            loaded: Err(format!("Secret {origin} holds no tls.crt and tls.key")),
            pem: SecretPem {
                origin,
                chain: Arc::from(Vec::new()),
                key: Arc::from(Vec::new()),
            },
        },
    }
}

impl Certificate {
    /// Why a Secret cannot serve `host` (`None`: any host, only whether it loads): its
    /// certificate does not load, or does not cover the host. The spec's reason,
    /// `InvalidCertificateRef`.
    fn fault(&self, host: Option<&str>) -> Option<Failure> {
        let Certificate::Secret { pem, loaded } = self else {
            return None;
        };
        let why = match (loaded, host) {
            (Err(why), _) => why.clone(),
            (Ok(loaded), Some(host))
                if !crate::tls::leaf_covers(loaded, &gateway_pattern(host)) =>
            {
                format!(
                    "Secret {}: its certificate does not cover {host}",
                    pem.origin
                )
            }
            _ => return None,
        };
        Some((
            "InvalidCertificateRef",
            format!("{why}; the certificate served before, if any, keeps serving"),
        ))
    }
}

/// A route's rules as portico routes (listener scope to be set), whether its
/// backendRefs resolved, and why it cannot be served as written (an unsupported match
/// or filter: that rule is left out), if so.
fn route_rules(
    route: &HttpRoute,
    namespace: &str,
    backends: &Backends,
    grants: &Grants,
) -> (Vec<Route>, Result<(), Failure>, Option<String>) {
    let mut out = Vec::new();
    let mut resolved = Ok(());
    let mut unsupported = None;
    for (index, rule) in route.spec.rules.iter().flatten().enumerate() {
        let (action, failure) = rule_action(rule, namespace, backends, grants);
        if let (Some(f), Ok(())) = (failure, &resolved) {
            resolved = Err(f);
        }
        let edits = match rule_filters(rule) {
            Ok(edits) => edits,
            Err(why) => {
                unsupported.get_or_insert(format!("rule {index}: {why}"));
                continue;
            }
        };
        let limits = match rule_timeout(rule) {
            Ok(upstream_timeout) => RouteLimits {
                upstream_timeout,
                ..RouteLimits::default()
            },
            Err(why) => {
                unsupported.get_or_insert(format!("rule {index}: {why}"));
                continue;
            }
        };
        // No match is one on every path.
        let default_match = [super::gateway_api::httproutes::HttpRouteRulesMatches {
            headers: None,
            method: None,
            path: None,
            query_params: None,
        }];
        let matches = rule
            .matches
            .as_deref()
            .filter(|m| !m.is_empty())
            .unwrap_or(&default_match);
        for m in matches {
            match route_for_match(m, &action, &edits) {
                Ok(r) => out.push(Route { limits, ..r }),
                Err(why) => {
                    unsupported.get_or_insert(format!("rule {index}: {why}"));
                }
            }
        }
    }
    (out, resolved, unsupported)
}

/// A rule's `timeouts` as the wait for the upstream's response head: the shorter of
/// `request` and `backendRequest` (a response head late past either gets 504), within
/// the range of `limits.upstream_timeout`. `0s` turns a timeout off, as the spec says
/// (the range's longest); `None`: `limits.upstream_timeout`.
fn rule_timeout(rule: &HttpRouteRules) -> Result<Option<std::time::Duration>, String> {
    let Some(timeouts) = &rule.timeouts else {
        return Ok(None);
    };
    let (min, max) = crate::config::Limits::duration_range("limits.upstream_timeout");
    let mut shortest = None;
    for text in [&timeouts.request, &timeouts.backend_request]
        .into_iter()
        .flatten()
    {
        let d = gateway_duration(text)
            .ok_or_else(|| format!("timeout {text:?} is not a Gateway API duration"))?;
        // 0s turns the timeout off: the longest wait portico knows.
        let d = if d.is_zero() { max } else { d };
        shortest = Some(shortest.map_or(d, |s: std::time::Duration| s.min(d)));
    }
    Ok(shortest.map(|d| d.clamp(min, max)))
}

/// A Gateway API duration: one to four `<number><unit>` parts, units `h`, `m`, `s`, `ms`
/// (`1h30m`, `500ms`, `0s`).
fn gateway_duration(text: &str) -> Option<std::time::Duration> {
    let mut rest = text;
    let mut total = std::time::Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (std::time::Duration::from_millis(n), 2)
        } else {
            let unit = match rest.as_bytes().first()? {
                b'h' => std::time::Duration::from_secs(n * 3600),
                b'm' => std::time::Duration::from_secs(n * 60),
                b's' => std::time::Duration::from_secs(n),
                _ => return None,
            };
            (unit, 1)
        };
        total += unit;
        rest = &rest[len..];
        parts += 1;
    }
    (1..=4).contains(&parts).then_some(total)
}

/// The path part of a `URLRewrite` or `RequestRedirect` (two generated types of one
/// shape): the full path or the matched prefix replaced, `/` when the value is left out.
fn path_rewrite(full: bool, full_path: &Option<String>, prefix: &Option<String>) -> PathRewrite {
    let or_root = |v: &Option<String>| v.clone().unwrap_or_else(|| "/".into());
    if full {
        PathRewrite::Full(or_root(full_path))
    } else {
        PathRewrite::Prefix(or_root(prefix))
    }
}

/// A `RequestHeaderModifier` or `ResponseHeaderModifier` as [`HeaderEdits`]: the two
/// are generated as two types of one shape.
macro_rules! header_edits {
    ($m:expr) => {
        edits(
            $m.set
                .iter()
                .flatten()
                .map(|h| (h.name.as_str(), h.value.as_str())),
            $m.add
                .iter()
                .flatten()
                .map(|h| (h.name.as_str(), h.value.as_str())),
            $m.remove.iter().flatten(),
        )
    };
}

/// The filters of a rule that portico serves (the action's part, a redirect, is taken
/// by [`rule_action`]).
fn rule_filters(rule: &HttpRouteRules) -> Result<RouteRule, String> {
    let mut out = RouteRule::default();
    for filter in rule.filters.iter().flatten() {
        match filter.r#type {
            HttpRouteRulesFiltersType::RequestHeaderModifier => {
                if let Some(m) = &filter.request_header_modifier {
                    out.request_headers = header_edits!(m)?;
                }
            }
            HttpRouteRulesFiltersType::ResponseHeaderModifier => {
                if let Some(m) = &filter.response_header_modifier {
                    out.response_headers = header_edits!(m)?;
                }
            }
            HttpRouteRulesFiltersType::UrlRewrite => {
                if let Some(w) = &filter.url_rewrite {
                    let path = w.path.as_ref().map(|p| {
                        path_rewrite(
                            p.r#type == HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath,
                            &p.replace_full_path,
                            &p.replace_prefix_match,
                        )
                    });
                    out.rewrite = Some(Rewrite {
                        hostname: w.hostname.clone(),
                        path,
                    });
                }
            }
            HttpRouteRulesFiltersType::RequestRedirect => {}
            HttpRouteRulesFiltersType::RequestMirror => {
                return Err("the RequestMirror filter is not supported".into());
            }
            HttpRouteRulesFiltersType::ExtensionRef => {
                return Err("ExtensionRef filters are not supported".into());
            }
            HttpRouteRulesFiltersType::Cors => {
                return Err("the CORS filter is not supported".into());
            }
        }
    }
    Ok(out)
}

fn edits<'a>(
    set: impl Iterator<Item = (&'a str, &'a str)>,
    add: impl Iterator<Item = (&'a str, &'a str)>,
    remove: impl Iterator<Item = &'a String>,
) -> Result<HeaderEdits, String> {
    let pair = |(n, v): (&str, &str)| -> Result<(http::HeaderName, http::HeaderValue), String> {
        let name = http::HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| format!("bad header name {n:?}"))?;
        let value =
            http::HeaderValue::from_str(v).map_err(|_| format!("bad value for header {n}"))?;
        Ok((name, value))
    };
    Ok(HeaderEdits {
        set: set.map(pair).collect::<Result<_, _>>()?,
        add: add.map(pair).collect::<Result<_, _>>()?,
        remove: remove
            .map(|n| {
                http::HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| format!("bad header name {n:?}"))
            })
            .collect::<Result<_, _>>()?,
    })
}

/// What a rule does: its redirect, else its backends by weight; and the first
/// backendRef that did not resolve.
fn rule_action(
    rule: &HttpRouteRules,
    namespace: &str,
    backends: &Backends,
    grants: &Grants,
) -> (RouteAction, Option<Failure>) {
    let mut failure = None;
    if let Some(redirect) = rule
        .filters
        .iter()
        .flatten()
        .find(|f| f.r#type == HttpRouteRulesFiltersType::RequestRedirect)
        .and_then(|f: &HttpRouteRulesFilters| f.request_redirect.as_ref())
    {
        let status = match redirect.status_code {
            Some(301) => StatusCode::MOVED_PERMANENTLY,
            _ => StatusCode::FOUND,
        };
        let path = redirect.path.as_ref().map(|p| {
            path_rewrite(
                p.r#type == HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath,
                &p.replace_full_path,
                &p.replace_prefix_match,
            )
        });
        let action = RouteAction::Redirect(Redirect {
            scheme: redirect.scheme.as_ref().map(|s| match s {
                HttpRouteRulesFiltersRequestRedirectScheme::Http => "http".to_string(),
                HttpRouteRulesFiltersRequestRedirectScheme::Https => "https".to_string(),
            }),
            hostname: redirect.hostname.clone(),
            port: redirect.port.and_then(|p| u16::try_from(p).ok()),
            path,
            status,
        });
        return (action, None);
    }
    let invalid = |body: &str| RouteAction::Respond {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        body: format!("500 {body}\n"),
    };
    let mut weighted = Vec::new();
    for backend in rule.backend_refs.iter().flatten() {
        let weight = u32::try_from(backend.weight.unwrap_or(1)).unwrap_or(0);
        let ns = backend
            .namespace
            .clone()
            .unwrap_or_else(|| namespace.to_string());
        let action = if !backend.group.as_deref().unwrap_or("").is_empty()
            || backend.kind.as_deref().unwrap_or("Service") != "Service"
        {
            failure.get_or_insert((
                "InvalidKind",
                format!(
                    "backendRef {}: only core Services are supported",
                    backend.name
                ),
            ));
            invalid("invalid backend")
        } else if !grants.allows("HTTPRoute", namespace, "Service", &ns, &backend.name) {
            failure.get_or_insert((
                "RefNotPermitted",
                format!(
                    "backendRef {ns}/{}: another namespace, and no ReferenceGrant there allows it",
                    backend.name
                ),
            ));
            invalid("backend not permitted")
        } else if !backends.has_service(&ns, &backend.name) {
            failure.get_or_insert((
                "BackendNotFound",
                format!("Service {ns}/{} does not exist", backend.name),
            ));
            invalid("backend not found")
        } else {
            let reference = IngressBackend {
                service: Some(IngressServiceBackend {
                    name: backend.name.clone(),
                    port: backend.port.map(|n| ServiceBackendPort {
                        number: Some(n),
                        name: None,
                    }),
                }),
                resource: None,
            };
            match backends.action(&ns, &reference, None) {
                Ok(action) => action,
                Err(why) => {
                    failure.get_or_insert(("BackendNotFound", why));
                    invalid("backend not found")
                }
            }
        };
        weighted.push(Weighted { weight, action });
    }
    let live: Vec<&Weighted> = weighted.iter().filter(|w| w.weight > 0).collect();
    let action = match live.as_slice() {
        [] => invalid("no backend"),
        [only] => only.action.clone(),
        _ => RouteAction::Split(
            weighted
                .into_iter()
                .filter(|w| w.weight > 0)
                .collect::<Vec<_>>()
                .into(),
        ),
    };
    (action, failure)
}

/// One match of a rule as a route (listener scope left to the caller).
fn route_for_match(
    m: &super::gateway_api::httproutes::HttpRouteRulesMatches,
    action: &RouteAction,
    edits: &RouteRule,
) -> Result<Route, String> {
    let (matching, written) = match &m.path {
        None => (PathMatch::Elements, "/".to_string()),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            let matching = match p.r#type {
                None | Some(HttpRouteRulesMatchesPathType::PathPrefix) => PathMatch::Elements,
                Some(HttpRouteRulesMatchesPathType::Exact) => PathMatch::Exact,
                Some(HttpRouteRulesMatchesPathType::RegularExpression) => {
                    return Err("RegularExpression path matches are not supported".into());
                }
            };
            (matching, value)
        }
    };
    let path = crate::uri::path::normalize(&written)
        .map_err(|_| format!("path {written:?} has no normal form"))?
        .into_owned();
    let mut rule = edits.clone();
    rule.method = m
        .method
        .as_ref()
        .map(|method| {
            let text = serde_json::to_value(method)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            http::Method::from_bytes(text.as_bytes()).map_err(|_| format!("bad method {text}"))
        })
        .transpose()?;
    for h in m.headers.iter().flatten() {
        if h.r#type == Some(HttpRouteRulesMatchesHeadersType::RegularExpression) {
            return Err("RegularExpression header matches are not supported".into());
        }
        let name = http::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("bad header name {:?}", h.name))?;
        // The spec: of several matches on one name, the first counts.
        if rule.headers.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let value = http::HeaderValue::from_str(&h.value)
            .map_err(|_| format!("bad value for header {}", h.name))?;
        rule.headers.push((name, value));
    }
    for q in m.query_params.iter().flatten() {
        if q.r#type == Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression) {
            return Err("RegularExpression query matches are not supported".into());
        }
        if rule.query.iter().any(|(n, _)| *n == q.name) {
            continue;
        }
        rule.query.push((q.name.clone(), q.value.clone()));
    }
    Ok(Route {
        path,
        matching,
        action: action.clone(),
        limits: RouteLimits::default(),
        rule,
    })
}

#[cfg(test)]
mod tests {
    use super::super::ingress::host_pattern;
    use super::*;
    use serde_json::json;

    fn class() -> GatewayClass {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "portico", "generation": 1},
            "spec": {"controllerName": CONTROLLER},
        }))
        .unwrap()
    }

    fn gateway(name: &str, listeners: serde_json::Value) -> Gateway {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": "infra", "generation": 2,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"gatewayClassName": "portico", "listeners": listeners},
        }))
        .unwrap()
    }

    fn route(ns: &str, name: &str, spec: serde_json::Value) -> HttpRoute {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": ns, "generation": 3,
                         "creationTimestamp": "2026-01-02T00:00:00Z"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn service(ns: &str, name: &str) -> k8s_openapi::api::core::v1::Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": [{"port": 80}]},
        }))
        .unwrap()
    }

    fn http_listener(extra: serde_json::Value) -> serde_json::Value {
        let mut l = json!({"name": "web", "port": 80, "protocol": "HTTP"});
        if let (Some(l), Some(e)) = (l.as_object_mut(), extra.as_object()) {
            l.extend(e.clone());
        }
        l
    }

    fn built(view: &View) -> Built {
        build("portico", view, &HashSet::new())
    }

    /// A `kubernetes.io/tls` Secret holding `tls.crt` and `tls.key` as given.
    fn secret_of(ns: &str, name: &str, crt: &[u8], key: &[u8]) -> Secret {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": b64(crt), "tls.key": b64(key)},
        }))
        .unwrap()
    }

    /// A Secret holding a self-signed certificate for `hosts`.
    fn tls_secret(ns: &str, name: &str, hosts: &[&str]) -> Secret {
        let (chain, key) = crate::tls::self_signed_pem(hosts);
        secret_of(ns, name, chain.as_bytes(), key.as_bytes())
    }

    /// A listener's condition: (status, reason, message).
    fn listener_condition(b: &Built, name: &str, type_: &str) -> (String, String, String) {
        let listeners = b.status.gateways[0].1.listeners.as_ref().unwrap();
        let l = listeners.iter().find(|l| l.name == name).unwrap();
        let c = l.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    fn parent_condition(b: &Built, route: &str, type_: &str) -> (String, String) {
        let (_, parents) = b
            .status
            .routes
            .iter()
            .find(|(r, _)| r.name_any() == route)
            .expect("route status");
        let c = parents[0]
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition");
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn a_route_in_the_gateway_namespace_attaches_to_an_http_listener() {
        let view = View {
            gateway_classes: vec![class()],
            gateways: vec![gateway("gw", json!([http_listener(json!({}))]))],
            http_routes: vec![route(
                "infra",
                "web",
                json!({"parentRefs": [{"name": "gw"}], "hostnames": ["a.example"],
                       "rules": [{"backendRefs": [{"name": "app", "port": 80}]}]}),
            )],
            services: vec![service("infra", "app")],
            ..View::default()
        };
        let b = built(&view);
        assert_eq!(b.sites.len(), 1);
        assert_eq!(b.sites[0].tls, TlsSource::Off);
        assert_eq!(b.sites[0].routes[0].rule.listener, ListenerScope::Http);
        assert_eq!(
            parent_condition(&b, "web", "Accepted"),
            ("True".into(), "Accepted".into())
        );
        let (_, gw) = &b.status.gateways[0];
        assert_eq!(gw.listeners.as_ref().unwrap()[0].attached_routes, 1);
        let (_, class) = &b.status.classes[0];
        assert_eq!(
            class.supported_features.as_ref().unwrap().len(),
            SUPPORTED_FEATURES.len()
        );
    }

    #[test]
    fn another_namespace_needs_the_listener_to_allow_it_and_a_grant_for_backends() {
        let mut view = View {
            gateway_classes: vec![class()],
            gateways: vec![gateway("gw", json!([http_listener(json!({}))]))],
            http_routes: vec![route(
                "apps",
                "web",
                json!({"parentRefs": [{"name": "gw", "namespace": "infra"}], "hostnames": ["a.example"],
                       "rules": [{"backendRefs": [{"name": "app", "namespace": "other", "port": 80}]}]}),
            )],
            services: vec![service("other", "app")],
            ..View::default()
        };
        let b = built(&view);
        assert_eq!(
            parent_condition(&b, "web", "Accepted"),
            ("False".into(), "NotAllowedByListeners".into())
        );
        assert!(b.sites.is_empty());
        view.gateways = vec![gateway(
            "gw",
            json!([http_listener(
                json!({"allowedRoutes": {"namespaces": {"from": "All"}}})
            )]),
        )];
        let b = built(&view);
        assert_eq!(parent_condition(&b, "web", "Accepted").0, "True");
        assert_eq!(
            parent_condition(&b, "web", "ResolvedRefs"),
            ("False".into(), "RefNotPermitted".into())
        );
        match &b.sites[0].routes[0].action {
            RouteAction::Respond { status, .. } => {
                assert_eq!(*status, StatusCode::INTERNAL_SERVER_ERROR)
            }
            other => panic!("{other:?}"),
        }
        view.reference_grants = vec![
            serde_json::from_value(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
                "metadata": {"name": "g", "namespace": "other"},
                "spec": {"from": [{"group": GROUP, "kind": "HTTPRoute", "namespace": "apps"}],
                         "to": [{"group": "", "kind": "Service"}]},
            }))
            .unwrap(),
        ];
        let b = built(&view);
        assert_eq!(parent_condition(&b, "web", "ResolvedRefs").0, "True");
    }

    #[test]
    fn a_certificate_ref_in_another_namespace_needs_a_grant_there() {
        let secret = tls_secret("certs", "c", &["a.example"]);
        let mut view = View {
            gateway_classes: vec![class()],
            gateways: vec![gateway(
                "gw",
                json!([{"name": "s", "port": 443, "protocol": "HTTPS", "hostname": "a.example",
                        "tls": {"certificateRefs": [{"name": "c", "namespace": "certs"}]}}]),
            )],
            http_routes: vec![route(
                "infra",
                "web",
                json!({"parentRefs": [{"name": "gw"}],
                       "rules": [{"backendRefs": [{"name": "app", "port": 80}]}]}),
            )],
            services: vec![service("infra", "app")],
            secrets: vec![secret],
            ..View::default()
        };
        let refs = |b: &Built| {
            let l = &b.status.gateways[0].1.listeners.as_ref().unwrap()[0];
            let c = l
                .conditions
                .iter()
                .find(|c| c.type_ == "ResolvedRefs")
                .unwrap();
            (c.status.clone(), c.reason.clone())
        };
        let b = built(&view);
        assert_eq!(refs(&b), ("False".into(), "RefNotPermitted".into()));
        assert!(b.sites.is_empty(), "no certificate, no HTTPS site");
        view.reference_grants = vec![
            serde_json::from_value(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
                "metadata": {"name": "g", "namespace": "certs"},
                "spec": {"from": [{"group": GROUP, "kind": "Gateway", "namespace": "infra"}],
                         "to": [{"group": "", "kind": "Secret", "name": "c"}]},
            }))
            .unwrap(),
        ];
        let b = built(&view);
        assert_eq!(refs(&b), ("True".into(), "ResolvedRefs".into()));
        match &b.sites[0].tls {
            TlsSource::Secret(pem) => assert_eq!(pem.origin, "certs/c"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_route_detached_from_our_gateways_loses_our_status_entries() {
        let mut detached = route(
            "infra",
            "web",
            json!({"parentRefs": [{"name": "elsewhere"}], "hostnames": ["a.example"]}),
        );
        detached.status = serde_json::from_value(json!({"parents": [
            {"controllerName": CONTROLLER, "parentRef": {"name": "gw"}, "conditions": []},
            {"controllerName": "example.com/other", "parentRef": {"name": "elsewhere"}, "conditions": []},
        ]}))
        .unwrap();
        let view = View {
            gateway_classes: vec![class()],
            gateways: vec![gateway("gw", json!([http_listener(json!({}))]))],
            http_routes: vec![detached],
            ..View::default()
        };
        let b = built(&view);
        assert_eq!(b.status.routes.len(), 1);
        assert!(
            b.status.routes[0].1.is_empty(),
            "no entry of ours is wanted"
        );
    }

    #[test]
    fn gateway_durations_and_rule_timeouts() {
        use std::time::Duration;
        assert_eq!(gateway_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(gateway_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(gateway_duration("0s"), Some(Duration::ZERO));
        for bad in ["", "1", "s", "1d", "123456s", "1s1s1s1s1s", "-1s", "1.5s"] {
            assert_eq!(gateway_duration(bad), None, "{bad}");
        }
        let rule = |timeouts: serde_json::Value| -> HttpRouteRules {
            serde_json::from_value(json!({"timeouts": timeouts})).unwrap()
        };
        assert_eq!(
            rule_timeout(&rule(json!({"request": "10s", "backendRequest": "2s"}))),
            Ok(Some(Duration::from_secs(2)))
        );
        assert_eq!(
            rule_timeout(&rule(json!({"request": "0s"}))),
            Ok(Some(Duration::from_secs(24 * 3600)))
        );
        assert_eq!(rule_timeout(&rule(json!({}))), Ok(None));
        assert!(rule_timeout(&rule(json!({"request": "soon"}))).is_err());
    }

    #[test]
    fn a_rule_portico_cannot_serve_is_dropped_and_the_rest_served() {
        let rules = |rules: serde_json::Value| View {
            gateway_classes: vec![class()],
            gateways: vec![gateway("gw", json!([http_listener(json!({}))]))],
            http_routes: vec![route(
                "infra",
                "web",
                json!({"parentRefs": [{"name": "gw"}], "hostnames": ["a.example"], "rules": rules}),
            )],
            services: vec![service("infra", "app")],
            ..View::default()
        };
        let regex = json!({"matches": [{"path": {"type": "RegularExpression", "value": "/x.*"}}],
                           "backendRefs": [{"name": "app", "port": 80}]});
        let plain = json!({"matches": [{"path": {"type": "PathPrefix", "value": "/ok"}}],
                           "backendRefs": [{"name": "app", "port": 80}]});
        let b = built(&rules(json!([regex, plain])));
        assert_eq!(parent_condition(&b, "web", "Accepted").0, "True");
        assert_eq!(
            parent_condition(&b, "web", "PartiallyInvalid"),
            ("True".into(), "UnsupportedValue".into())
        );
        assert_eq!(b.sites[0].routes.len(), 1);
        assert_eq!(b.sites[0].routes[0].path, "/ok");
        let b = built(&rules(json!([regex])));
        assert_eq!(
            parent_condition(&b, "web", "Accepted"),
            ("False".into(), "UnsupportedValue".into())
        );
        assert!(b.sites.is_empty());
    }

    #[test]
    fn hostnames_intersect_as_the_spec_says() {
        assert_eq!(intersect(None, &[]), vec![String::new()]);
        assert_eq!(intersect(Some("a.b"), &[]), vec!["a.b".to_string()]);
        assert_eq!(
            intersect(Some("*.b"), &["x.b".into(), "y.c".into(), "z.y.b".into()]),
            vec!["x.b".to_string(), "z.y.b".into()]
        );
        assert_eq!(
            intersect(Some("x.b"), &["*.b".into()]),
            vec!["x.b".to_string()]
        );
        assert!(intersect(Some("*.b"), &["b".into()]).is_empty());
        assert_eq!(
            intersect(Some("*.b"), &["*.x.b".into()]),
            vec!["*.x.b".to_string()]
        );
        assert_eq!(gateway_pattern(""), HostPattern::Any);
        assert_eq!(gateway_pattern("*.b.c"), HostPattern::Suffix("b.c".into()));
        assert_eq!(gateway_pattern("a.b"), HostPattern::Exact("a.b".into()));
    }

    #[test]
    fn a_listener_and_route_without_hostnames_serve_every_other_host() {
        // HTTPRouteSimpleSameNamespace's shape: neither names a hostname.
        let view = View {
            gateway_classes: vec![class()],
            gateways: vec![gateway("gw", json!([http_listener(json!({}))]))],
            http_routes: vec![
                route(
                    "infra",
                    "all",
                    json!({"parentRefs": [{"name": "gw"}],
                           "rules": [{"backendRefs": [{"name": "app", "port": 80}]}]}),
                ),
                route(
                    "infra",
                    "wild",
                    json!({"parentRefs": [{"name": "gw"}], "hostnames": ["*.wild.example"],
                           "rules": [{"backendRefs": [{"name": "app", "port": 80}]}]}),
                ),
            ],
            services: vec![service("infra", "app")],
            ..View::default()
        };
        let b = built(&view);
        assert_eq!(parent_condition(&b, "all", "Accepted").0, "True");
        let hosts: Vec<&HostPattern> = b.sites.iter().flat_map(|s| &s.hosts).collect();
        assert!(hosts.contains(&&HostPattern::Any), "{hosts:?}");
        assert!(
            hosts.contains(&&HostPattern::Suffix("wild.example".into())),
            "{hosts:?}"
        );
        // A file's or an Ingress's wildcard keeps its name from a Gateway's.
        let taken: HashSet<HostPattern> = [HostPattern::Wildcard("wild.example".into())].into();
        let b = build("portico", &view, &taken);
        assert!(
            b.sites
                .iter()
                .all(|s| s.hosts != [HostPattern::Suffix("wild.example".into())])
        );
    }

    #[test]
    fn a_certificate_ref_that_does_not_load_or_cover_the_host_is_invalid_and_still_handed_on() {
        let https = |name: &str, hostname: Option<&str>, secret: &str| {
            let mut l = json!({"name": name, "port": 443, "protocol": "HTTPS",
                               "tls": {"certificateRefs": [{"name": secret}]}});
            if let Some(h) = hostname {
                l["hostname"] = json!(h);
            }
            l
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let view = View {
            gateway_classes: vec![class()],
            gateways: vec![gateway(
                "gw",
                json!([
                    https("garbage", Some("garbage.example"), "garbage"),
                    https("empty", Some("empty.example"), "empty"),
                    https("unused", Some("unused.example"), "garbage"),
                    https("elsewhere", Some("elsewhere.example"), "good"),
                    https("shared", None, "good"),
                    https("fine", Some("good.example"), "good"),
                ]),
            )],
            http_routes: vec![
                route(
                    "infra",
                    "web",
                    json!({"parentRefs": [{"name": "gw", "sectionName": "garbage"},
                                          {"name": "gw", "sectionName": "empty"},
                                          {"name": "gw", "sectionName": "elsewhere"},
                                          {"name": "gw", "sectionName": "fine"}],
                           "rules": [{"backendRefs": [{"name": "app", "port": 80}]}]}),
                ),
                // Two hosts the certificate does not cover, one it does: the first
                // failure is the one the listener shows.
                route(
                    "infra",
                    "many",
                    json!({"parentRefs": [{"name": "gw", "sectionName": "shared"}],
                           "hostnames": ["c.example", "good.example", "b.example"],
                           "rules": [{"backendRefs": [{"name": "app", "port": 80}]}]}),
                ),
            ],
            services: vec![service("infra", "app")],
            secrets: vec![
                secret_of(
                    "infra",
                    "garbage",
                    b"not a certificate",
                    key.serialize_pem().as_bytes(),
                ),
                secret_of("infra", "empty", b"", b""),
                tls_secret("infra", "good", &["good.example"]),
            ],
            ..View::default()
        };
        let b = built(&view);
        let invalid = |listener: &str, says: &[&str]| {
            let (status, reason, message) = listener_condition(&b, listener, "ResolvedRefs");
            assert_eq!(
                (status.as_str(), reason.as_str()),
                ("False", "InvalidCertificateRef"),
                "{listener}: {message}"
            );
            for s in says {
                assert!(message.contains(s), "{listener}: {message}");
            }
            assert_eq!(listener_condition(&b, listener, "Programmed").0, "False");
        };
        invalid("garbage", &["Secret infra/garbage", "no PEM certificate"]);
        invalid(
            "empty",
            &["Secret infra/empty holds no tls.crt and tls.key"],
        );
        // No route brings it a host: it says so all the same.
        invalid("unused", &["Secret infra/garbage"]);
        invalid("elsewhere", &["does not cover elsewhere.example"]);
        invalid("shared", &["does not cover b.example"]);
        assert_eq!(
            listener_condition(&b, "fine", "ResolvedRefs").0,
            "True",
            "{:?}",
            listener_condition(&b, "fine", "ResolvedRefs")
        );
        // Every host is handed on with its Secret as it is: the certificate path
        // refuses what does not load or cover it and keeps what it served before.
        let tls = |host: &str| {
            let site = b
                .sites
                .iter()
                .find(|s| s.hosts == [HostPattern::Exact(host.into())])
                .unwrap_or_else(|| panic!("{host}: {:?}", b.sites));
            match &site.tls {
                TlsSource::Secret(pem) => pem.clone(),
                other => panic!("{host}: {other:?}"),
            }
        };
        assert_eq!(tls("garbage.example").origin, "infra/garbage");
        assert!(tls("empty.example").chain.is_empty());
        for host in [
            "elsewhere.example",
            "good.example",
            "b.example",
            "c.example",
        ] {
            assert_eq!(tls(host).origin, "infra/good", "{host}");
        }
        assert_eq!(
            parent_condition(&b, "many", "Accepted"),
            ("True".into(), "Accepted".into())
        );
    }

    #[test]
    fn a_host_the_file_or_an_ingress_serves_is_theirs_and_the_route_is_told() {
        let view = View {
            gateway_classes: vec![class()],
            gateways: vec![gateway("gw", json!([http_listener(json!({}))]))],
            http_routes: vec![route(
                "infra",
                "web",
                json!({"parentRefs": [{"name": "gw"}], "hostnames": ["a.example", "b.example"],
                       "rules": [{"backendRefs": [{"name": "app", "port": 80}]}]}),
            )],
            services: vec![service("infra", "app")],
            ..View::default()
        };
        let taken = |hosts: &[&str]| -> HashSet<HostPattern> {
            hosts.iter().map(|h| host_pattern(h)).collect()
        };
        let b = build("portico", &view, &taken(&[]));
        assert!(b.notices.is_empty(), "{:?}", b.notices);
        assert_eq!(b.sites.len(), 2);

        let b = build("portico", &view, &taken(&["a.example"]));
        let hosts: Vec<_> = b.sites.iter().map(|s| s.hosts.clone()).collect();
        assert_eq!(hosts, [[HostPattern::Exact("b.example".into())]]);
        assert_eq!(
            parent_condition(&b, "web", "Accepted"),
            ("True".into(), "Accepted".into())
        );
        assert_eq!(b.notices.len(), 1, "{:?}", b.notices);
        assert_eq!(b.notices[0].object, "infra/web");
        let reason = &b.notices[0].reason;
        assert!(reason.starts_with("a.example: not served"), "{reason}");
        assert!(reason.contains("its other hosts are served"), "{reason}");
        assert!(!reason.contains("b.example"), "{reason}");

        // Every host taken: still attached, and the notice says it serves none.
        let b = build("portico", &view, &taken(&["a.example", "b.example"]));
        assert!(b.sites.is_empty());
        assert_eq!(parent_condition(&b, "web", "Accepted").0, "True");
        assert_eq!(
            b.status.gateways[0].1.listeners.as_ref().unwrap()[0].attached_routes,
            1
        );
        let reason = &b.notices[0].reason;
        assert!(reason.starts_with("a.example, b.example: "), "{reason}");
        assert!(reason.contains("serves no host"), "{reason}");
    }

    #[test]
    fn other_ports_and_protocols_are_not_accepted() {
        let view = View {
            gateway_classes: vec![class()],
            gateways: vec![gateway(
                "gw",
                json!([
                    {"name": "a", "port": 8080, "protocol": "HTTP"},
                    {"name": "b", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
                    {"name": "c", "port": 80, "protocol": "HTTP", "hostname": "x.example"},
                    {"name": "d", "port": 80, "protocol": "HTTP", "hostname": "x.example"},
                ]),
            )],
            ..View::default()
        };
        let b = built(&view);
        let listeners = b.status.gateways[0].1.listeners.clone().unwrap();
        let get = |name: &str, type_: &str| {
            let l = listeners.iter().find(|l| l.name == name).unwrap();
            let c = l.conditions.iter().find(|c| c.type_ == type_).unwrap();
            (c.status.clone(), c.reason.clone())
        };
        assert_eq!(
            get("a", "Accepted"),
            ("False".into(), "PortUnavailable".into())
        );
        assert_eq!(
            get("b", "Accepted"),
            ("False".into(), "UnsupportedProtocol".into())
        );
        assert_eq!(get("c", "Conflicted").0, "False");
        assert_eq!(
            get("d", "Conflicted"),
            ("True".into(), "HostnameConflict".into())
        );
        assert_eq!(get("d", "Programmed").0, "False");
        assert!(
            b.status.gateways[0]
                .1
                .conditions
                .as_ref()
                .unwrap()
                .iter()
                .all(|c| c.status == "True")
        );
    }
}
