//! The cluster's objects as config: the source of sites beside the TOML file when
//! `[kubernetes]` is set. Reflectors ([`watch`]) keep IngressClasses, Ingresses,
//! Services, EndpointSlices and `kubernetes.io/tls` Secrets in memory (list, then watch); every change wakes one
//! builder, which turns them into sites ([`ingress`]) and hands those to the reload path
//! ([`Reloader::apply_cluster`]), where they are merged with the TOML sites and swapped
//! in like a reload: routes for the next request, certificates through the scheduler,
//! nothing closed.
//!
//! Readiness waits for the first list of every kind and the first sites applied, so a
//! replica that starts takes traffic only with the cluster's routes in place.

mod ingress;
mod status;
mod watch;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::Api;
use tokio::sync::{Notify, watch as channel};

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
/// [..]}`, each object read as its type when it is one and skipped when not.
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
    };
    let taken = std::collections::HashSet::new();
    let built = ingress::build("portico", &view, &taken);
    for site in &built.sites {
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
        if let TlsSource::Secret(pem) = &site.tls {
            assert!(!pem.chain.is_empty() && !pem.key.is_empty());
        }
    }
    for fill in &built.fills {
        assert!(!fill.name.is_empty() || fill.existing.is_none());
    }
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
        if settings.gateway_class.is_some() {
            tracing::warn!(
                "kubernetes.gateway_class: Gateway API objects are not served by this version yet; only Ingresses are"
            );
        }
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
        let Some(class) = self.settings.ingress_class.clone() else {
            ready_tx.send_replace(true);
            return (ready, None);
        };
        let changed = Arc::new(Notify::new());
        let mut synced = Vec::new();
        let classes = spawn(
            Api::<IngressClass>::all(self.client.clone()),
            "IngressClass",
            None,
            &changed,
            &mut synced,
            &shutdown,
        );
        let ingresses =
            Kind::<Ingress>::start(&self, "Ingress", None, &changed, &mut synced, &shutdown);
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
        // Only certificates: the Secrets `spec.tls` can name.
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
        let builder = Builder {
            published,
            class,
            classes,
            ingresses,
            services,
            slices,
            secrets,
            synced,
            changed,
            reloader,
            ready: ready_tx,
            refused: BTreeSet::new(),
        };
        let mut stop = shutdown;
        tokio::spawn(async move {
            tokio::select! {
                _ = builder.run() => {}
                _ = stop.changed() => {}
            }
        });
        (ready, Some(writing))
    }
}

struct Builder {
    class: String,
    classes: Objects<IngressClass>,
    ingresses: Kind<Ingress>,
    services: Kind<Service>,
    slices: Kind<EndpointSlice>,
    secrets: Kind<Secret>,
    synced: Vec<channel::Receiver<bool>>,
    changed: Arc<Notify>,
    reloader: Reloader,
    ready: channel::Sender<bool>,
    /// What was refused at the last build, so each refusal is logged once.
    refused: BTreeSet<Notice>,
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
        let view = View {
            classes: snapshot(std::slice::from_ref(&self.classes)),
            ingresses: snapshot(&self.ingresses.parts),
            services: snapshot(&self.services.parts),
            slices: snapshot(&self.slices.parts),
            secrets: snapshot(&self.secrets.parts),
        };
        let taken = self.reloader.file_hosts().await;
        let built = ingress::build(&self.class, &view, &taken);
        let refused: BTreeSet<Notice> = built.notices.iter().cloned().collect();
        for r in refused.difference(&self.refused) {
            tracing::warn!(ingress = %r.object, "cluster: {}", r.reason);
        }
        self.refused = refused;
        self.reloader.apply_cluster(built.sites).await;
        self.published.send_replace(Arc::new(Published {
            ingresses: built.ingresses,
            notices: built.notices,
            owners: built.owners,
            fills: built.fills,
        }));
    }
}
