//! What the cluster is told back: Ingress and Gateway API status and Warning Events, written by one
//! replica only, the holder of the lock `status` (Lease `portico-status` with the
//! Kubernetes backend), so that N replicas neither fight over `status` nor repeat every
//! Event N times.
//!
//! - `status.loadBalancer.ingress` of every Ingress served is the `status.loadBalancer`
//!   of the `publish_service` Service (nothing is written without one);
//! - a Warning Event on the Ingress for what of it is not served (reason
//!   [`REASON_NOT_SERVED`]) and for a host whose ACME order failed (reason
//!   [`REASON_CERTIFICATE_FAILED`], with the CA's problem detail); one on an HTTPRoute
//!   for its hosts the config file or an Ingress serves ([`REASON_NOT_SERVED`]);
//! - the status of the GatewayClass, Gateways and HTTPRoute parents the Gateway builder
//!   judged, written only where it differs from what the object holds, a condition's
//!   `lastTransitionTime` kept while its status holds, other controllers' HTTPRoute
//!   parents kept; a Gateway's `addresses` are the `publish_service` Service's; a
//!   `CertificateFailed` Event on the Gateway whose listener asked for a failed name;
//! - the certificate of a host whose `spec.tls` (or `certificateRefs`) Secret did not
//!   exist is written into that Secret (created labelled `app.kubernetes.io/managed-by: portico`, and kept up
//!   to date after renewals); a Secret portico did not create is never written;
//! - Events are rate-limited: one per object and message until the message changes or
//!   an hour has passed, and at most [`EVENTS_PER_MINUTE`] in all, so an object that
//!   keeps failing cannot flood the API server.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Secret, Service};
use k8s_openapi::api::networking::v1::{
    Ingress, IngressLoadBalancerIngress, IngressLoadBalancerStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::watch;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::gateway::{self, Statuses};
use super::gateway_api::gatewayclasses::GatewayClass;
use super::gateway_api::gateways::{Gateway, GatewayStatusAddresses};
use super::gateway_api::httproutes::{HttpRoute, HttpRouteStatus, HttpRouteStatusParents};
use super::ingress::{Fill, LABEL_MANAGED_BY, MANAGED_BY, Notice};
use super::watch::key;
use crate::certs::CertManager;
use crate::report::Chain;
use crate::shutdown::Phase;
use crate::store::{Lease, Locker};

/// The Event reason for a part of an Ingress or HTTPRoute that is not served as written.
pub(crate) const REASON_NOT_SERVED: &str = "NotServed";
/// The Event reason for a host whose certificate could not be obtained.
pub(crate) const REASON_CERTIFICATE_FAILED: &str = "CertificateFailed";
/// The most Events written in one minute, over every object.
const EVENTS_PER_MINUTE: usize = 20;
/// An unchanged message is repeated at most this often.
const REPEAT_AFTER: Duration = Duration::from_secs(3600);
const LOCK: &str = "status";
const LOCK_TTL: Duration = Duration::from_secs(15);
/// How often the holder renews and looks at the publish Service and the ACME errors.
const TICK: Duration = Duration::from_secs(5);

/// What the builder last made of the Ingresses, for the status writer.
#[derive(Debug, Default)]
pub(crate) struct Published {
    /// The Ingresses served (of our class).
    pub(crate) ingresses: Vec<Ingress>,
    pub(crate) notices: Vec<Notice>,
    /// Site id (the host) → `namespace/name` of the Ingress that asked for it first.
    pub(crate) owners: Vec<(String, String)>,
    /// `spec.tls` and `certificateRefs` Secrets to fill with the sites' certificates.
    pub(crate) fills: Vec<Fill>,
    /// Site id (the host) → `namespace/name` of the Gateway whose listener asked for it.
    pub(crate) gateway_owners: Vec<(String, String)>,
    /// What of the HTTPRoutes (`namespace/name`) is not served.
    pub(crate) gateway_notices: Vec<Notice>,
    /// The Gateway API objects' status as it should be.
    pub(crate) gateway: super::gateway::Statuses,
}

pub(super) struct StatusWriter {
    pub(super) client: kube::Client,
    pub(super) locker: Arc<dyn Locker>,
    pub(super) certs: Arc<CertManager>,
    pub(super) publish: Option<(String, String)>,
    pub(super) published: watch::Receiver<Arc<Published>>,
    pub(super) identity: String,
}

/// What the holder remembers from one round to the next.
#[derive(Default)]
struct Memory {
    said: Said,
    /// Per filled Secret (`namespace`, `name`): the notAfter of the certificate served
    /// for its site and the Secret's resourceVersion when it last held that
    /// certificate. The store is read only when one of them changes (a renewal, the
    /// Secret edited or deleted), not for every Secret every round.
    filled: Filled,
}

/// (namespace, name) of a filled Secret → (notAfter served, the Secret's version).
type Filled = HashMap<(String, String), (SystemTime, Option<String>)>;

/// Rate limit of Events: what was said of each object, and when.
#[derive(Default)]
struct Said {
    /// (object, reason, message) → when.
    last: HashMap<(String, String, String), Instant>,
    /// Times of the Events of the last minute.
    recent: Vec<Instant>,
}

impl Said {
    /// Whether an Event may be written now, and if so, counts it.
    fn allow(&mut self, key: (String, String, String), now: Instant) -> bool {
        if self
            .last
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < REPEAT_AFTER)
        {
            return false;
        }
        self.recent
            .retain(|at| now.duration_since(*at) < Duration::from_secs(60));
        if self.recent.len() >= EVENTS_PER_MINUTE {
            return false;
        }
        self.recent.push(now);
        self.last.insert(key, now);
        true
    }
}

impl StatusWriter {
    pub(super) async fn run(mut self, mut shutdown: watch::Receiver<Phase>) {
        let mut memory = Memory::default();
        loop {
            let lease = tokio::select! {
                lease = self.locker.try_acquire(LOCK, LOCK_TTL) => lease,
                _ = shutdown.changed() => return,
            };
            match lease {
                Ok(Some(lease)) => {
                    tracing::info!("cluster: this replica writes Ingress status and Events");
                    let ended = self.hold(&lease, &mut memory, &mut shutdown).await;
                    if ended {
                        let _ = self.locker.release(lease).await;
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "cluster: cannot take the status lock")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Writes while the lease holds; returns true at shutdown, false when it was lost.
    async fn hold(
        &mut self,
        lease: &Lease,
        memory: &mut Memory,
        shutdown: &mut watch::Receiver<Phase>,
    ) -> bool {
        loop {
            let published = self.published.borrow_and_update().clone();
            self.write(&published, memory).await;
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = self.published.changed() => {}
                _ = shutdown.changed() => return true,
            }
            if let Err(e) = self.locker.renew(lease).await {
                tracing::info!(error = %Chain(&e), "cluster: status lock lost; another replica writes status");
                return false;
            }
        }
    }

    async fn write(&self, published: &Published, memory: &mut Memory) {
        for fill in &published.fills {
            self.fill(fill, &mut memory.filled).await;
        }
        // Read once a round, for the Ingresses and the Gateways.
        let balancer = self.load_balancer().await;
        if let Some(wanted) = &balancer {
            for ingress in &published.ingresses {
                let current = ingress
                    .status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.clone())
                    .unwrap_or_default();
                if &current == wanted {
                    continue;
                }
                let namespace = ingress.namespace().unwrap_or_default();
                let api: Api<Ingress> = Api::namespaced(self.client.clone(), &namespace);
                let patch = serde_json::json!({
                    "status": {"loadBalancer": IngressLoadBalancerStatus { ingress: Some(wanted.clone()) }},
                });
                if let Err(e) = api
                    .patch_status(
                        &ingress.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    tracing::warn!(ingress = %key(ingress), error = %Chain(&e), "cluster: cannot write Ingress status");
                }
            }
        }
        let now = Instant::now();
        let by_key: HashMap<String, &Ingress> =
            published.ingresses.iter().map(|i| (key(i), i)).collect();
        let mut events: Vec<(&String, &Ingress, &str, String)> = Vec::new();
        for notice in &published.notices {
            if let Some((object, ingress)) = by_key.get_key_value(&notice.object) {
                events.push((object, ingress, REASON_NOT_SERVED, notice.reason.clone()));
            }
        }
        for (site, owner) in &published.owners {
            if let (Some(failure), Some((object, ingress))) =
                (self.certs.acme_failure(site), by_key.get_key_value(owner))
            {
                events.push((
                    object,
                    ingress,
                    REASON_CERTIFICATE_FAILED,
                    certificate_failed(site, failure),
                ));
            }
        }
        for (object, ingress, reason, message) in events {
            if memory
                .said
                .allow((object.clone(), reason.to_string(), message.clone()), now)
            {
                self.event(reference(ingress), reason, message).await;
            }
        }
        let addresses = balancer.map(|lb| {
            lb.into_iter()
                .filter_map(|i| match (i.ip, i.hostname) {
                    (Some(ip), _) => Some(GatewayStatusAddresses {
                        r#type: Some("IPAddress".into()),
                        value: ip,
                    }),
                    (None, Some(name)) => Some(GatewayStatusAddresses {
                        r#type: Some("Hostname".into()),
                        value: name,
                    }),
                    (None, None) => None,
                })
                .collect::<Vec<_>>()
        });
        self.write_gateway(&published.gateway, addresses.as_deref())
            .await;
        let gateways: HashMap<String, &Gateway> = published
            .gateway
            .gateways
            .iter()
            .map(|(g, _)| (key(g), g))
            .collect();
        let routes: HashMap<String, &HttpRoute> = published
            .gateway
            .routes
            .iter()
            .map(|(r, _)| (key(r), r))
            .collect();
        for notice in &published.gateway_notices {
            if let Some(route) = routes.get(&notice.object)
                && memory.said.allow(
                    (
                        format!("HTTPRoute {}", notice.object),
                        REASON_NOT_SERVED.into(),
                        notice.reason.clone(),
                    ),
                    now,
                )
            {
                self.event(reference(*route), REASON_NOT_SERVED, notice.reason.clone())
                    .await;
            }
        }
        for (site, owner) in &published.gateway_owners {
            if let (Some(failure), Some(gateway)) =
                (self.certs.acme_failure(site), gateways.get(owner))
            {
                let message = certificate_failed(site, failure);
                if memory.said.allow(
                    (
                        format!("Gateway {owner}"),
                        REASON_CERTIFICATE_FAILED.into(),
                        message.clone(),
                    ),
                    now,
                ) {
                    self.event(reference(*gateway), REASON_CERTIFICATE_FAILED, message)
                        .await;
                }
            }
        }
    }

    /// Writes the site's stored certificate into the Secret `spec.tls` names: creates
    /// it when it does not exist, replaces it (at the version seen) when it is
    /// portico's and holds another certificate. A Secret portico did not make is never
    /// written: the builder only asks for those that are absent or labelled as ours.
    async fn fill(&self, fill: &Fill, filled: &mut Filled) {
        // Nothing served yet: the scheduler is on it; a later round writes it.
        let Some(served) = self.certs.served_not_after(&fill.site) else {
            return;
        };
        let seen = (
            served,
            fill.existing.as_ref().and_then(|s| s.resource_version()),
        );
        let id = (fill.namespace.clone(), fill.name.clone());
        if filled.get(&id) == Some(&seen) {
            return;
        }
        let Some((chain, key)) = self.certs.stored_pem(&fill.site).await else {
            return;
        };
        let mut data = BTreeMap::new();
        data.insert("tls.crt".to_string(), ByteString(chain));
        data.insert("tls.key".to_string(), ByteString(key));
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &fill.namespace);
        let what = format!("{}/{}", fill.namespace, fill.name);
        let result = match &fill.existing {
            Some(existing) if existing.data.as_ref() == Some(&data) => {
                filled.insert(id, seen);
                return;
            }
            Some(existing) => {
                let mut secret = existing.clone();
                secret.data = Some(data);
                api.replace(&fill.name, &PostParams::default(), &secret)
                    .await
                    .map(drop)
            }
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(fill.name.clone()),
                        namespace: Some(fill.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            LABEL_MANAGED_BY.to_string(),
                            MANAGED_BY.to_string(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(data),
                    ..Secret::default()
                };
                api.create(&PostParams::default(), &secret).await.map(drop)
            }
        };
        match result {
            Ok(()) => {
                tracing::info!(secret = %what, site = %crate::tls::resolver::site_id(&fill.site), "cluster: wrote the certificate into the Secret spec.tls names")
            }
            // Someone wrote first (another writer, or the Secret appeared): the next
            // build sees it as it is now.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                tracing::warn!(secret = %what, error = %Chain(&e), "cluster: cannot write the Secret spec.tls names")
            }
        }
    }

    /// The publish Service's load balancer addresses, as Ingress status takes them.
    async fn load_balancer(&self) -> Option<Vec<IngressLoadBalancerIngress>> {
        let (namespace, name) = self.publish.as_ref()?;
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let service = match api.get(name).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(service = %format!("{namespace}/{name}"), error = %Chain(&e), "cluster: cannot read publish_service");
                return None;
            }
        };
        let ingress = service
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .unwrap_or_default();
        Some(
            ingress
                .into_iter()
                .map(|i| IngressLoadBalancerIngress {
                    ip: i.ip,
                    hostname: i.hostname,
                    ports: None,
                })
                .collect(),
        )
    }

    async fn event(&self, involved: ObjectReference, reason: &str, message: String) {
        let namespace = involved.namespace.clone().unwrap_or_default();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", involved.name.clone().unwrap_or_default())),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: involved,
            reason: Some(reason.into()),
            // The API server refuses messages over 1 KiB.
            message: Some(message.chars().take(1000).collect()),
            type_: Some("Warning".into()),
            source: Some(EventSource {
                component: Some("portico".into()),
                host: None,
            }),
            reporting_component: Some(super::ingress::CONTROLLER.into()),
            reporting_instance: Some(self.identity.clone()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(error = %Chain(&e), "cluster: cannot write an Event");
        }
    }

    /// Writes the status of the Gateway API objects that differs from what they hold.
    /// A condition that keeps its status keeps its `lastTransitionTime`; an HTTPRoute's
    /// `status.parents` entries of other controllers are kept, and the write names the
    /// version read, so a route another controller just wrote is written next round.
    async fn write_gateway(
        &self,
        statuses: &Statuses,
        addresses: Option<&[GatewayStatusAddresses]>,
    ) {
        for (class, wanted) in &statuses.classes {
            let mut wanted = wanted.clone();
            let current = class.status.clone().unwrap_or_default();
            keep_times(wanted.conditions.as_mut(), current.conditions.as_deref());
            if current == wanted {
                continue;
            }
            let api: Api<GatewayClass> = Api::all(self.client.clone());
            self.patch_status(&api, class, serde_json::to_value(&wanted))
                .await;
        }
        for (gateway, wanted) in &statuses.gateways {
            let mut wanted = wanted.clone();
            let current = gateway.status.clone().unwrap_or_default();
            wanted.addresses = match addresses {
                Some(a) => (!a.is_empty()).then(|| a.to_vec()),
                None => current.addresses.clone(),
            };
            keep_times(wanted.conditions.as_mut(), current.conditions.as_deref());
            for listener in wanted.listeners.iter_mut().flatten() {
                let before = current
                    .listeners
                    .iter()
                    .flatten()
                    .find(|l| l.name == listener.name)
                    .map(|l| l.conditions.as_slice());
                keep_times(Some(&mut listener.conditions), before);
            }
            if current == wanted {
                continue;
            }
            let api: Api<Gateway> = Api::namespaced(
                self.client.clone(),
                &gateway.namespace().unwrap_or_default(),
            );
            self.patch_status(&api, gateway, serde_json::to_value(&wanted))
                .await;
        }
        for (route, ours) in &statuses.routes {
            let current = route.status.clone().map(|s| s.parents).unwrap_or_default();
            let mut parents: Vec<HttpRouteStatusParents> = current
                .iter()
                .filter(|p| p.controller_name != gateway::CONTROLLER)
                .cloned()
                .collect();
            for parent in ours {
                let mut parent = parent.clone();
                let before = current
                    .iter()
                    .find(|p| {
                        p.controller_name == gateway::CONTROLLER
                            && p.parent_ref == parent.parent_ref
                    })
                    .map(|p| p.conditions.as_slice());
                keep_times(Some(&mut parent.conditions), before);
                parents.push(parent);
            }
            if parents == current {
                continue;
            }
            let api: Api<HttpRoute> =
                Api::namespaced(self.client.clone(), &route.namespace().unwrap_or_default());
            self.patch_status(
                &api,
                route,
                serde_json::to_value(HttpRouteStatus { parents }),
            )
            .await;
        }
    }

    /// A merge patch of `status`, at the version read (409 when it moved on: the next
    /// round writes again from the newer object).
    async fn patch_status<K>(
        &self,
        api: &Api<K>,
        object: &K,
        status: serde_json::Result<serde_json::Value>,
    ) where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let what = format!("{} {}", K::kind(&()), key(object));
        let Ok(status) = status else { return };
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": object.resource_version()},
            "status": status,
        });
        match api
            .patch_status(
                &object.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => tracing::debug!(object = %what, "cluster: status written"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                tracing::warn!(object = %what, error = %Chain(&e), "cluster: cannot write status")
            }
        }
    }
}

/// `lastTransitionTime` changes only when a condition's status does.
fn keep_times(wanted: Option<&mut Vec<Condition>>, current: Option<&[Condition]>) {
    let (Some(wanted), Some(current)) = (wanted, current) else {
        return;
    };
    for c in wanted.iter_mut() {
        if let Some(old) = current
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
}

/// How an Event names an object.
fn reference<K: kube::Resource<DynamicType = ()>>(object: &K) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: Some(object.name_any()),
        namespace: object.namespace(),
        uid: object.uid(),
        resource_version: object.resource_version(),
        field_path: None,
    }
}

/// The message of a `CertificateFailed` Event. A site that serves a certificate
/// meanwhile (a renewal failed, or its new certificate could not be stored) says so and
/// until when it is valid: an operator reading "no certificate yet" there would look
/// for an outage that is not happening, or miss the date that matters.
fn certificate_failed(site: &str, (error, served_until): (String, Option<SystemTime>)) -> String {
    match served_until {
        Some(until) => format!(
            "{site}: the last attempt failed; the certificate served stays in use, valid until {}: {error}",
            crate::objects::rfc3339(until)
        ),
        None => format!("{site}: no certificate yet: {error}"),
    }
}
