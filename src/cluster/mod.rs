//! The cluster's objects as config: the source of sites beside the TOML file when
//! `[kubernetes]` is set. Reflectors ([`watch`]) keep in memory (list, then watch) the
//! IngressClasses and Ingresses (with `ingress_class`), the GatewayClasses, Gateways,
//! HTTPRoutes and ReferenceGrants (with `gateway_class`, in the versions the cluster
//! serves, asked once at start), and the Services, EndpointSlices and
//! `kubernetes.io/tls` Secrets both route to. Every change wakes one builder, which turns
//! them into sites ([`ingress`], then [`gateway`], whose hosts an Ingress or the file
//! has not taken) and hands those to the reload path ([`Reloader::apply_cluster`]),
//! where they are merged with the TOML sites and swapped in like a reload: routes for
//! the next request, certificates through the scheduler, nothing closed. What to tell
//! the cluster back goes to the status writer ([`status`]).
//!
//! Readiness waits for the first list of every kind and the first sites applied, so a
//! replica that starts takes traffic only with the cluster's routes in place.

mod gateway;
mod gateway_api;
mod ingress;
mod status;
mod watch;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::{Api, ResourceExt};
use tokio::sync::{Notify, watch as channel};

use self::gateway_api::gatewayclasses::GatewayClass;
use self::gateway_api::gateways::Gateway;
use self::gateway_api::httproutes::HttpRoute;
use self::gateway_api::referencegrants::ReferenceGrant;
use self::gateway_api::referencegrants_v1beta1::ReferenceGrant as ReferenceGrantV1beta1;
use self::ingress::{Notice, View};
use self::status::{Published, StatusWriter};
use self::watch::{Objects, Reflector, snapshot};
use crate::certs::CertManager;
use crate::config::Kubernetes;
use crate::reload::Reloader;
use crate::shutdown::Phase;
use crate::store::Locker;
use crate::store::StoreError;

/// Changes that come together (a Deployment rolling, a `kubectl apply` of many objects)
/// are built once: the builder waits this long after the first change it sees.
const SETTLE: Duration = Duration::from_millis(100);

/// Why the cluster's objects cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No usable in-cluster service account or kubeconfig.
    #[error("cannot load the cluster's credentials")]
    Credentials(#[source] StoreError),
    /// The client could not be built from them.
    #[error("cannot build the Kubernetes client")]
    Client(#[source] kube::Error),
}

/// A connection to the cluster, not yet watching.
pub(crate) struct Cluster {
    client: kube::Client,
    settings: Kubernetes,
}

/// One kind's reflectors (one per watched namespace, or one for all).
struct Kind<K> {
    parts: Vec<Objects<K>>,
}

impl<K> Kind<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    fn start(
        cluster: &Cluster,
        what: &'static str,
        fields: Option<&'static str>,
        changed: &Arc<Notify>,
        synced: &mut Vec<channel::Receiver<bool>>,
        shutdown: &channel::Receiver<Phase>,
    ) -> Kind<K> {
        let apis: Vec<Api<K>> = if cluster.settings.namespaces.is_empty() {
            vec![Api::all(cluster.client.clone())]
        } else {
            cluster
                .settings
                .namespaces
                .iter()
                .map(|ns| Api::namespaced(cluster.client.clone(), ns))
                .collect()
        };
        let parts = apis
            .into_iter()
            .map(|api| spawn(api, what, fields, changed, synced, shutdown))
            .collect();
        Kind { parts }
    }
}

fn spawn<K>(
    api: Api<K>,
    what: &'static str,
    fields: Option<&'static str>,
    changed: &Arc<Notify>,
    synced: &mut Vec<channel::Receiver<bool>>,
    shutdown: &channel::Receiver<Phase>,
) -> Objects<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let (tx, rx) = channel::channel(false);
    synced.push(rx);
    let objects = Objects::default();
    let reflector = Reflector {
        api,
        what,
        fields,
        objects: Arc::clone(&objects),
        changed: changed.clone(),
        synced: tx,
    };
    tokio::spawn(reflector.run(shutdown.clone()));
    objects
}

/// The `ingress` fuzz target's property ([`crate::fuzzing::ingress`]): JSON of the shape
/// `{"classes": [..], "ingresses": [..], "services": [..], "slices": [..], "secrets":
/// [..], "gateway_classes": [..], "gateways": [..], "http_routes": [..],
/// "reference_grants": [..]}`, each object read as its type when it is one and skipped
/// when not; both builders run.
#[cfg(fuzzing)]
pub(crate) fn fuzz_build(data: &[u8]) {
    use crate::config::{RouteAction, TlsSource};
    fn list<K: serde::de::DeserializeOwned>(v: &serde_json::Value, key: &str) -> Vec<K> {
        v.get(key)
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
            .filter_map(|o| serde_json::from_value(o.clone()).ok())
            .collect()
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let view = View {
        classes: list(&value, "classes"),
        ingresses: list(&value, "ingresses"),
        services: list(&value, "services"),
        slices: list(&value, "slices"),
        secrets: list(&value, "secrets"),
        gateway_classes: list(&value, "gateway_classes"),
        gateways: list(&value, "gateways"),
        http_routes: list(&value, "http_routes"),
        reference_grants: list(&value, "reference_grants"),
    };
    let taken = std::collections::HashSet::new();
    let built = ingress::build("portico", &view, &taken);
    let gateway = gateway::build("portico", &view, &taken);
    for route in gateway.sites.iter().flat_map(|s| &s.routes) {
        if let RouteAction::Split(backends) = &route.action {
            assert!(backends.iter().all(|b| b.weight > 0));
            assert!(backends.len() >= 2);
        }
    }
    for (_, parents) in &gateway.status.routes {
        assert!(parents.iter().all(|p| {
            p.conditions.iter().any(|c| c.type_ == "Accepted")
                && p.conditions.iter().any(|c| c.type_ == "ResolvedRefs")
        }));
    }
    for site in built.sites.iter().chain(&gateway.sites) {
        assert!(!site.hosts.is_empty());
        assert!(!site.routes.is_empty());
        for route in &site.routes {
            assert!(route.path.starts_with('/'), "{}", route.path);
            if let RouteAction::Proxy { upstreams, .. } = &route.action {
                assert!(!upstreams.is_empty());
            }
            for path in ["/", "/a", "/a/b", route.path.as_str()] {
                let _ = route.matches(path);
            }
        }
    }
    // The Ingress builder serves only a Secret with both parts; the Gateway builder
    // hands on a certificateRef Secret as it is (refused by the certificate path, which
    // keeps what served before), and says so in the listener's status.
    for site in &built.sites {
        if let TlsSource::Secret(pem) = &site.tls {
            assert!(!pem.chain.is_empty() && !pem.key.is_empty());
        }
    }
    for fill in built.fills.iter().chain(&gateway.fills) {
        assert!(!fill.name.is_empty() || fill.existing.is_none());
    }
}

/// Calls `log` for each notice that was not among the last build's (`seen`), then
/// keeps this build's: a refusal is logged when it appears, not at every build.
fn once_each(seen: &mut BTreeSet<Notice>, notices: &[Notice], log: impl Fn(&Notice)) {
    let now: BTreeSet<Notice> = notices.iter().cloned().collect();
    now.difference(seen).for_each(log);
    *seen = now;
}

/// Who this replica is, in Events: the pod's name when Kubernetes gives it, else the
/// host's name.
fn identity() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "portico".into())
}

impl Cluster {
    /// Loads the credentials (in-cluster service account, else `KUBECONFIG` /
    /// `~/.kube/config`); nothing is sent to the API server yet.
    pub(crate) async fn connect(settings: &Kubernetes) -> Result<Cluster, ClusterError> {
        let mut config = crate::store::credentials()
            .await
            .map_err(ClusterError::Credentials)?;
        // The reflectors retry at their own pace; kube's hidden retries would only hide
        // an outage from the log.
        config.default_retry = false;
        let client = kube::Client::try_from(config).map_err(ClusterError::Client)?;
        Ok(Cluster {
            client,
            settings: settings.clone(),
        })
    }

    /// Starts watching and building; the receiver turns `true` once every kind has been
    /// listed and the sites built from them applied. The task ends at shutdown once the
    /// status lock is released, so another replica takes over status at once: awaited
    /// by the server.
    pub(crate) fn start(
        self,
        reloader: Reloader,
        locker: Arc<dyn Locker>,
        certs: Arc<CertManager>,
        shutdown: channel::Receiver<Phase>,
    ) -> (channel::Receiver<bool>, Option<tokio::task::JoinHandle<()>>) {
        let (ready_tx, ready) = channel::channel(false);
        if self.settings.ingress_class.is_none() && self.settings.gateway_class.is_none() {
            ready_tx.send_replace(true);
            return (ready, None);
        }
        let changed = Arc::new(Notify::new());
        let mut synced = Vec::new();
        let ingress = self
            .settings
            .ingress_class
            .clone()
            .map(|class| IngressKinds {
                class,
                classes: spawn(
                    Api::<IngressClass>::all(self.client.clone()),
                    "IngressClass",
                    None,
                    &changed,
                    &mut synced,
                    &shutdown,
                ),
                ingresses: Kind::start(&self, "Ingress", None, &changed, &mut synced, &shutdown),
            });
        let services =
            Kind::<Service>::start(&self, "Service", None, &changed, &mut synced, &shutdown);
        let slices = Kind::<EndpointSlice>::start(
            &self,
            "EndpointSlice",
            None,
            &changed,
            &mut synced,
            &shutdown,
        );
        // Only certificates: the Secrets `spec.tls` and `certificateRefs` can name.
        let secrets = Kind::<Secret>::start(
            &self,
            "Secret",
            Some("type=kubernetes.io/tls"),
            &changed,
            &mut synced,
            &shutdown,
        );
        let (published, published_rx) = channel::channel(Arc::new(Published::default()));
        let writer = StatusWriter {
            client: self.client.clone(),
            locker,
            certs,
            publish: self.settings.publish_service.clone(),
            published: published_rx,
            identity: identity(),
        };
        let writing = tokio::spawn(writer.run(shutdown.clone()));
        let gateway_class = self.settings.gateway_class.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            // Which Gateway API versions the cluster serves is asked once: the kinds
            // are watched from then on.
            let gateway = match gateway_class {
                Some(class) => {
                    GatewayKinds::start(&self, class, &changed, &mut synced, &shutdown).await
                }
                None => None,
            };
            let builder = Builder {
                published,
                ingress,
                gateway,
                services,
                slices,
                secrets,
                synced,
                changed,
                reloader,
                ready: ready_tx,
                refused: BTreeSet::new(),
                refused_routes: BTreeSet::new(),
            };
            tokio::select! {
                _ = builder.run() => {}
                _ = stop.changed() => {}
            }
        });
        (ready, Some(writing))
    }
}

/// The Ingress kinds, watched with `ingress_class`.
struct IngressKinds {
    /// `ingress_class`.
    class: String,
    classes: Objects<IngressClass>,
    ingresses: Kind<Ingress>,
}

/// The Gateway API kinds, watched with `gateway_class`.
struct GatewayKinds {
    /// `gateway_class`.
    class: String,
    classes: Objects<GatewayClass>,
    gateways: Kind<Gateway>,
    routes: Kind<HttpRoute>,
    grants: Grants,
}

/// ReferenceGrant is `v1` from Gateway API v1.5 on and `v1beta1` before: whichever the
/// cluster serves.
enum Grants {
    V1(Kind<ReferenceGrant>),
    V1beta1(Kind<ReferenceGrantV1beta1>),
}

impl GatewayKinds {
    /// Starts the reflectors of the kinds the cluster serves; `None` (logged) when it
    /// does not serve Gateway API v1 at all (no CRDs installed).
    async fn start(
        cluster: &Cluster,
        class: String,
        changed: &Arc<Notify>,
        synced: &mut Vec<channel::Receiver<bool>>,
        shutdown: &channel::Receiver<Phase>,
    ) -> Option<GatewayKinds> {
        let served = |version: &'static str| {
            let client = cluster.client.clone();
            async move {
                let mut backoff = crate::store::Backoff::default();
                loop {
                    match client.list_api_group_resources(version).await {
                        Ok(list) => {
                            return list
                                .resources
                                .into_iter()
                                .map(|r| r.name)
                                .collect::<BTreeSet<String>>();
                        }
                        Err(kube::Error::Api(e)) if e.code == 404 => return BTreeSet::new(),
                        Err(e) => {
                            tracing::warn!(error = %crate::report::Chain(&e), "cluster: cannot ask which Gateway API versions are served; retrying");
                            backoff.wait().await;
                        }
                    }
                }
            }
        };
        let v1 = served("gateway.networking.k8s.io/v1").await;
        if !["gatewayclasses", "gateways", "httproutes"]
            .iter()
            .all(|k| v1.contains(*k))
        {
            tracing::warn!(
                "kubernetes.gateway_class is set, but the cluster does not serve Gateway API v1 (GatewayClass, Gateway, HTTPRoute): install the standard CRDs and restart to serve Gateways"
            );
            return None;
        }
        let grants = if v1.contains("referencegrants") {
            Grants::V1(Kind::start(
                cluster,
                "ReferenceGrant",
                None,
                changed,
                synced,
                shutdown,
            ))
        } else {
            Grants::V1beta1(Kind::start(
                cluster,
                "ReferenceGrant",
                None,
                changed,
                synced,
                shutdown,
            ))
        };
        Some(GatewayKinds {
            class,
            classes: spawn(
                Api::<GatewayClass>::all(cluster.client.clone()),
                "GatewayClass",
                None,
                changed,
                synced,
                shutdown,
            ),
            gateways: Kind::start(cluster, "Gateway", None, changed, synced, shutdown),
            routes: Kind::start(cluster, "HTTPRoute", None, changed, synced, shutdown),
            grants,
        })
    }

    /// ReferenceGrants as `v1`, whichever version was read.
    fn grants(&self) -> Vec<ReferenceGrant> {
        match &self.grants {
            Grants::V1(kind) => snapshot(&kind.parts),
            Grants::V1beta1(kind) => snapshot(&kind.parts)
                .into_iter()
                .filter_map(|g| {
                    let spec = serde_json::to_value(&g.spec)
                        .ok()
                        .and_then(|v| serde_json::from_value(v).ok())?;
                    let mut grant = ReferenceGrant::new(&g.name_any(), spec);
                    grant.metadata = g.metadata;
                    Some(grant)
                })
                .collect(),
        }
    }
}

struct Builder {
    ingress: Option<IngressKinds>,
    gateway: Option<GatewayKinds>,
    services: Kind<Service>,
    slices: Kind<EndpointSlice>,
    secrets: Kind<Secret>,
    synced: Vec<channel::Receiver<bool>>,
    changed: Arc<Notify>,
    reloader: Reloader,
    ready: channel::Sender<bool>,
    /// What was refused at the last build, so each refusal is logged once.
    refused: BTreeSet<Notice>,
    /// The same for HTTPRoutes.
    refused_routes: BTreeSet<Notice>,
    /// For the status writer.
    published: channel::Sender<Arc<Published>>,
}

impl Builder {
    async fn run(mut self) {
        for synced in &mut self.synced {
            // Only a dropped reflector ends this, and then shutdown is under way.
            let _ = synced.wait_for(|done| *done).await;
        }
        loop {
            tokio::time::sleep(SETTLE).await;
            self.build().await;
            self.ready.send_replace(true);
            self.changed.notified().await;
        }
    }

    async fn build(&mut self) {
        let mut view = View {
            services: snapshot(&self.services.parts),
            slices: snapshot(&self.slices.parts),
            secrets: snapshot(&self.secrets.parts),
            ..View::default()
        };
        if let Some(kinds) = &self.ingress {
            view.classes = snapshot(std::slice::from_ref(&kinds.classes));
            view.ingresses = snapshot(&kinds.ingresses.parts);
        }
        if let Some(kinds) = &self.gateway {
            view.gateway_classes = snapshot(std::slice::from_ref(&kinds.classes));
            view.gateways = snapshot(&kinds.gateways.parts);
            view.http_routes = snapshot(&kinds.routes.parts);
            view.reference_grants = kinds.grants();
        }
        let mut taken = self.reloader.file_hosts().await;
        let mut built = match &self.ingress {
            Some(kinds) => ingress::build(&kinds.class, &view, &taken),
            None => ingress::Built::default(),
        };
        once_each(
            &mut self.refused,
            &built.notices,
            |r| tracing::warn!(ingress = %r.object, "cluster: {}", r.reason),
        );
        // An Ingress's host wins over a Gateway's: Ingresses were here first.
        taken.extend(built.sites.iter().flat_map(|s| s.hosts.iter().cloned()));
        let gateway = match &self.gateway {
            Some(kinds) => gateway::build(&kinds.class, &view, &taken),
            None => gateway::Built::default(),
        };
        once_each(
            &mut self.refused_routes,
            &gateway.notices,
            |r| tracing::warn!(httproute = %r.object, "cluster: {}", r.reason),
        );
        let mut sites = std::mem::take(&mut built.sites);
        sites.extend(gateway.sites);
        self.reloader.apply_cluster(sites).await;
        built.fills.extend(gateway.fills);
        self.published.send_replace(Arc::new(Published {
            ingresses: built.ingresses,
            notices: built.notices,
            owners: built.owners,
            fills: built.fills,
            gateway_owners: gateway.owners,
            gateway_notices: gateway.notices,
            gateway: gateway.status,
        }));
    }
}
