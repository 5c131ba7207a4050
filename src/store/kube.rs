//! The Kubernetes backend: the bottom of the certificate path for a cluster ingress.
//! Objects are Secrets and locks are Leases (see `store::lease`) in one namespace,
//! shared by every replica, as docs/kubernetes.md lays out for users:
//!
//! | [`Kind`] | Secret | type |
//! |---|---|---|
//! | [`Kind::Certificate`] | `portico-tls-<name>` | `kubernetes.io/tls` |
//! | [`Kind::Account`] | `portico-acme-account-<name>` | `Opaque` |
//! | [`Kind::Http01`] | `portico-http01-<name>` | `Opaque` |
//! | [`Kind::Ca`] | `portico-<name>` (`portico-local-ca`) | `Opaque` |
//!
//! Every Secret is labelled `app.kubernetes.io/managed-by=portico` and
//! `portico.dev/kind=<kind>`; `list` and `watch` select on both labels. An object's data
//! is the Secret's data and its [`Version`] the Secret's `metadata.resourceVersion`:
//! create is a POST (409 AlreadyExists → [`StoreError::Conflict`]), replace a PUT that
//! carries the version read (409 or 404 → `Conflict`), delete names the version in its
//! preconditions. Nothing is ever written blindly.
//!
//! Decisions:
//!
//! - **Foreign metadata.** Only the labels above and annotations under
//!   [`ANNOTATION_PREFIXES`] are portico's. Every other label
//!   and annotation (kubectl's `last-applied-configuration`, a GitOps tool's, a
//!   replicator's), owner references and finalizers stay out of the [`Object`] and are
//!   kept as they are when portico replaces the Secret: the replace starts from the
//!   Secret as it is on the server, which is why it reads before it writes (writes are
//!   rare: a certificate every couple of months, a token per order).
//! - **Certificates without a certificate.** A `kubernetes.io/tls` Secret must hold
//!   `tls.crt` and `tls.key` (the API server refuses it otherwise, and the type cannot be
//!   changed later), but portico stores ACME status annotations before a certificate
//!   exists. Such Secrets get both keys empty, and empty `tls.crt` / `tls.key` are left
//!   out when reading, so the object comes back exactly as written.
//! - **What cannot be read is skipped, not fatal.** A Secret with portico's labels whose
//!   name lacks its kind's prefix, whose type is not its kind's, or that does not parse,
//!   is logged (name and reason, never data) and left out of `list` and `watch`; `get` of
//!   such a Secret is [`StoreError::Corrupt`].
//! - **No retries inside the store.** kube's default retry policy (up to 15 retries on
//!   429/503/504) is turned off: it could hold a lease renew far past its deadline. The
//!   callers retry at their own pace (the ACME manager's back-off, the lease guard's
//!   deadline, the watch loop). Every request has a [`REQUEST_TIMEOUT`]. The one
//!   exception is 401: see below.
//! - **Credentials.** [`KubeStore::connect`] uses the in-cluster service account when
//!   there is one (docs/kubernetes.md), else `KUBECONFIG` / `~/.kube/config`. kube
//!   re-reads a token file (the service account's, or a kubeconfig's `tokenFile`) every
//!   minute; on a 401 the client is rebuilt, which reads the file again at once, and the
//!   request is sent once more, so a rotated bound token never fails more than that one
//!   attempt.
//! - **Names.** Object names are limited ([`super::max_name_len`]) so that the prefixed
//!   Secret name is a valid object name; nothing is hashed or shortened here.
//! - **Watch.** List, then watch from the list's resourceVersion with the same label
//!   selector; on 410 Gone list again and report the differences; on any other error
//!   reconnect after a capped, jittered back-off. A watch request asks the server to
//!   end it after [`WATCH_SECONDS`], and a stream silent for longer than that plus a
//!   margin is taken as a dead connection.
//! - **Lists are not paginated**: portico's Secrets in one namespace are a few per site.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::core::Request;
use ::kube::core::params::{DeleteParams, GetParams, ListParams, PostParams, Preconditions};
use futures_util::io::AsyncBufReadExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;
use tokio::sync::mpsc;

use super::lease::{Clock, Leases};
use super::{
    ANNOTATION_PREFIXES, BoxFuture, Change, Kind, Lease, LockError, Locker, Object, Store,
    StoreError, Stored, Version, WATCH_BUFFER, check, check_object, conflict, diff, random_u64,
    validate_name,
};

/// Label every portico object carries, with value [`MANAGED_BY`].
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "portico";
/// Label with the object's [`Kind`] (`account`, `certificate`, `http01`, `ca`).
pub const LABEL_KIND: &str = "portico.dev/kind";
/// The prefix of every Lease: lock `acme-<h>` is Lease `portico-acme-<h>`.
pub const LEASE_PREFIX: &str = "portico-";
/// The longest a request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server keeps one watch request open.
pub const WATCH_SECONDS: u32 = 60;

const TLS_TYPE: &str = "kubernetes.io/tls";
const OPAQUE_TYPE: &str = "Opaque";
const TLS_KEYS: [&str; 2] = ["tls.crt", "tls.key"];
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
/// A watch stream that says nothing for this long is taken as a dead connection.
const WATCH_IDLE: Duration = Duration::from_secs(WATCH_SECONDS as u64 + 30);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// The Secret name prefix of a kind.
pub const fn secret_prefix(kind: Kind) -> &'static str {
    match kind {
        Kind::Account => "portico-acme-account-",
        Kind::Certificate => "portico-tls-",
        Kind::Http01 => "portico-http01-",
        Kind::Ca => "portico-",
    }
}

/// The Secret that holds object `name` of `kind`.
pub fn secret_name(kind: Kind, name: &str) -> String {
    format!("{}{name}", secret_prefix(kind))
}

/// The Secret type of a kind.
pub const fn secret_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Certificate => TLS_TYPE,
        _ => OPAQUE_TYPE,
    }
}

/// The label selector of a kind's Secrets.
pub fn selector(kind: Kind) -> String {
    format!("{LABEL_KIND}={kind},{LABEL_MANAGED_BY}={MANAGED_BY}")
}

/// Why the Kubernetes API could not be used. Messages never quote Secret data or tokens.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No usable credentials or API address.
    #[error("{what}: {source}")]
    Config {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The request failed: no connection, or an error status from the server.
    #[error("{}", describe(.0))]
    Request(#[source] ::kube::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A success status with a body that is not what the API sends.
    #[error("unexpected response: {0}")]
    Response(String),
    /// A watch stream broke off.
    #[error("watch stream: {0}")]
    Watch(#[source] std::io::Error),
}

impl KubeError {
    /// The HTTP status the server answered with, if it answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            KubeError::Request(::kube::Error::Api(status)) => Some(status.code),
            _ => None,
        }
    }
}

/// kube's own Display of an API error repeats the status in Debug form.
fn describe(e: &::kube::Error) -> String {
    match e {
        ::kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        e => e.to_string(),
    }
}

/// The API client of one backend instance, shared by the store, the locker and the
/// watch tasks. Rebuilt on 401 so that a rotated token file is read again.
pub(crate) struct ApiClient {
    config: ::kube::Config,
    namespace: String,
    /// The client and its generation, so that of many requests failing with 401 at
    /// once only the first rebuilds it.
    client: RwLock<(u64, ::kube::Client)>,
}

/// Where a resource's objects live.
#[derive(Clone, Copy)]
pub(crate) enum Resource {
    Secrets,
    Leases,
}

impl ApiClient {
    fn new(mut config: ::kube::Config, namespace: String) -> Result<ApiClient, KubeError> {
        config.default_retry = false;
        let client = ::kube::Client::try_from(config.clone()).map_err(|e| KubeError::Config {
            what: "cannot build the Kubernetes client".into(),
            source: Box::new(e),
        })?;
        Ok(ApiClient {
            config,
            namespace,
            client: RwLock::new((0, client)),
        })
    }

    fn current(&self) -> (u64, ::kube::Client) {
        let guard = self.client.read().unwrap_or_else(|p| p.into_inner());
        (guard.0, guard.1.clone())
    }

    /// A 401 on a client of generation `used`: build a new one (which reads the token
    /// file again) unless another request already did.
    fn reauthenticate(&self, used: u64) {
        let mut guard = self.client.write().unwrap_or_else(|p| p.into_inner());
        if guard.0 != used {
            return;
        }
        match ::kube::Client::try_from(self.config.clone()) {
            Ok(client) => {
                tracing::info!("Kubernetes API answered 401: reloading credentials");
                *guard = (used + 1, client);
            }
            Err(e) => tracing::warn!(error = %e, "cannot rebuild the Kubernetes client"),
        }
    }

    fn path(&self, resource: Resource) -> String {
        match resource {
            Resource::Secrets => format!("/api/v1/namespaces/{}/secrets", self.namespace),
            Resource::Leases => format!(
                "/apis/coordination.k8s.io/v1/namespaces/{}/leases",
                self.namespace
            ),
        }
    }

    /// Sends a request and returns the body of a success. A 401 rebuilds the client and
    /// sends the request once more.
    async fn send(&self, request: http::Request<Vec<u8>>) -> Result<String, KubeError> {
        let (used, client) = self.current();
        match self.attempt(&client, copy(&request)).await {
            Err(e) if e.status() == Some(401) => {
                self.reauthenticate(used);
                let (_, client) = self.current();
                self.attempt(&client, request).await
            }
            result => result,
        }
    }

    async fn attempt(
        &self,
        client: &::kube::Client,
        request: http::Request<Vec<u8>>,
    ) -> Result<String, KubeError> {
        // `request_text`, not `request::<T>`: kube logs the whole body when it does not
        // deserialize, and a body may hold a Secret.
        match tokio::time::timeout(REQUEST_TIMEOUT, client.request_text(request)).await {
            Err(_) => Err(KubeError::Timeout(REQUEST_TIMEOUT)),
            Ok(result) => result.map_err(KubeError::Request),
        }
    }

    async fn send_json(&self, request: http::Request<Vec<u8>>) -> Result<Value, KubeError> {
        let text = self.send(request).await?;
        serde_json::from_str(&text).map_err(|_| KubeError::Response("the body is not JSON".into()))
    }

    pub(crate) async fn get(
        &self,
        resource: Resource,
        name: &str,
    ) -> Result<Option<Value>, KubeError> {
        let request = Request::new(self.path(resource))
            .get(name, &GetParams::default())
            .map_err(build_error)?;
        match self.send_json(request).await {
            Err(e) if e.status() == Some(404) => Ok(None),
            result => result.map(Some),
        }
    }

    pub(crate) async fn create(
        &self,
        resource: Resource,
        body: Vec<u8>,
    ) -> Result<Value, KubeError> {
        let request = Request::new(self.path(resource))
            .create(&PostParams::default(), body)
            .map_err(build_error)?;
        self.send_json(request).await
    }

    pub(crate) async fn replace(
        &self,
        resource: Resource,
        name: &str,
        body: Vec<u8>,
    ) -> Result<Value, KubeError> {
        let request = Request::new(self.path(resource))
            .replace(name, &PostParams::default(), body)
            .map_err(build_error)?;
        self.send_json(request).await
    }

    async fn delete(
        &self,
        resource: Resource,
        name: &str,
        version: Option<&str>,
    ) -> Result<(), KubeError> {
        let params = DeleteParams {
            preconditions: version.map(|v| Preconditions {
                resource_version: Some(v.to_owned()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        let request = Request::new(self.path(resource))
            .delete(name, &params)
            .map_err(build_error)?;
        self.send(request).await.map(drop)
    }

    async fn list(&self, resource: Resource, selector: &str) -> Result<Value, KubeError> {
        let request = Request::new(self.path(resource))
            .list(&ListParams::default().labels(selector))
            .map_err(build_error)?;
        self.send_json(request).await
    }

    /// Opens a watch from `version`: the response body, one JSON event per line.
    async fn watch(
        &self,
        resource: Resource,
        selector: &str,
        version: &str,
    ) -> Result<impl futures_util::io::AsyncBufRead + Unpin + use<>, KubeError> {
        let params = ::kube::core::params::WatchParams::default()
            .labels(selector)
            .timeout(WATCH_SECONDS);
        let request = Request::new(self.path(resource))
            .watch(&params, version)
            .map_err(build_error)?;
        let open = |client: ::kube::Client, request| async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, client.request_stream(request)).await {
                Err(_) => Err(KubeError::Timeout(REQUEST_TIMEOUT)),
                Ok(result) => result.map(Box::pin).map_err(KubeError::Request),
            }
        };
        let (used, client) = self.current();
        match open(client, copy(&request)).await {
            Err(e) if e.status() == Some(401) => {
                self.reauthenticate(used);
                open(self.current().1, request).await
            }
            result => result,
        }
    }
}

fn build_error(e: ::kube::core::request::Error) -> KubeError {
    KubeError::Request(::kube::Error::BuildRequest(e))
}

/// A second copy of a request, for the one retry after a 401.
fn copy(request: &http::Request<Vec<u8>>) -> http::Request<Vec<u8>> {
    let mut copy = http::Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// A [`Store`] and [`Locker`] on Secrets and Leases of one namespace.
pub struct KubeStore {
    api: Arc<ApiClient>,
    leases: Leases,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("api", &self.api.config.cluster_url)
            .field("namespace", &self.api.namespace)
            .finish_non_exhaustive()
    }
}

impl KubeStore {
    /// Connects with the in-cluster service account if there is one, else with
    /// `KUBECONFIG` / `~/.kube/config`, in `namespace`, else the service account's
    /// namespace, else the kubeconfig context's, else `default`.
    ///
    /// Makes no request: a wrong address or missing permission shows at the first use.
    pub async fn connect(namespace: Option<String>) -> Result<KubeStore, StoreError> {
        let action = || "load credentials".to_owned();
        let config = match ::kube::Config::incluster() {
            Ok(config) => config,
            Err(in_cluster) => ::kube::Config::from_kubeconfig(&KubeConfigOptions::default())
                .await
                .map_err(|kubeconfig| StoreError::Kubernetes {
                    action: action(),
                    source: KubeError::Config {
                        what: format!(
                            "not in a cluster ({in_cluster}), and no usable KUBECONFIG or ~/.kube/config"
                        ),
                        source: Box::new(kubeconfig),
                    },
                })?,
        };
        let namespace = namespace
            .or_else(service_account_namespace)
            .unwrap_or_else(|| config.default_namespace.clone());
        KubeStore::from_config(config, namespace)
    }

    /// Connects with the kubeconfig file at `path` (its current context), in
    /// `namespace`, else the context's namespace, else `default`.
    pub async fn from_kubeconfig(
        path: &Path,
        namespace: Option<String>,
    ) -> Result<KubeStore, StoreError> {
        let error = |source: ::kube::config::KubeconfigError| StoreError::Kubernetes {
            action: "load credentials".into(),
            source: KubeError::Config {
                what: format!("kubeconfig {}", path.display()),
                source: Box::new(source),
            },
        };
        let kubeconfig = Kubeconfig::read_from(path).map_err(error)?;
        let config =
            ::kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(error)?;
        let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
        KubeStore::from_config(config, namespace)
    }

    /// A store on an already loaded kube configuration.
    pub fn from_config(config: ::kube::Config, namespace: String) -> Result<KubeStore, StoreError> {
        let api = ApiClient::new(config, namespace).map_err(|source| StoreError::Kubernetes {
            action: "connect".into(),
            source,
        })?;
        let api = Arc::new(api);
        Ok(KubeStore {
            leases: Leases::new(api.clone()),
            api,
        })
    }

    /// Takes the time written into Leases' `acquireTime` / `renewTime` from `clock`
    /// instead of the system clock (tests of holders whose clocks are off). Expiry never
    /// depends on these times.
    pub fn with_clock(mut self, clock: Arc<dyn Fn() -> SystemTime + Send + Sync>) -> Self {
        self.leases = self.leases.with_clock(Clock::from(clock));
        self
    }

    /// Writes `pod` (instead of `POD_NAME` / the host name) before the random part of
    /// holder identities: several replicas in one test process tell themselves apart.
    pub fn with_pod_name(mut self, pod: impl Into<String>) -> Self {
        self.leases = self.leases.with_pod(pod.into());
        self
    }

    /// The namespace of every object and lock.
    pub fn namespace(&self) -> &str {
        &self.api.namespace
    }

    async fn put_inner(
        &self,
        kind: Kind,
        name: &str,
        object: &Object,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        let secret = secret_name(kind, name);
        let api_error = |action: &str, source| StoreError::Kubernetes {
            action: format!("{action} Secret {secret}"),
            source,
        };
        let body = match expected {
            None => to_secret(kind, &secret, object, None),
            Some(expected) => {
                let current = self
                    .api
                    .get(Resource::Secrets, &secret)
                    .await
                    .map_err(|e| api_error("get", e))?;
                let Some(current) = current else {
                    return Err(conflict(kind, name));
                };
                if resource_version(&current) != Some(expected.as_str()) {
                    return Err(conflict(kind, name));
                }
                let current = read_secret(kind, current).map_err(|reason| StoreError::Corrupt {
                    kind,
                    name: name.to_owned(),
                    reason: format!("Secret {secret}: {reason}"),
                })?;
                to_secret(kind, &secret, object, Some((current, expected)))
            }
        };
        // A Secret and its strings always serialize.
        let body = serde_json::to_vec(&body).expect("a Secret serializes to JSON");
        let written = match expected {
            None => self.api.create(Resource::Secrets, body).await,
            Some(_) => self.api.replace(Resource::Secrets, &secret, body).await,
        };
        let written = match written {
            Ok(written) => written,
            // Create: AlreadyExists. Replace: another version, or deleted meanwhile.
            Err(e) if matches!(e.status(), Some(409)) => return Err(conflict(kind, name)),
            Err(e) if expected.is_some() && e.status() == Some(404) => {
                return Err(conflict(kind, name));
            }
            Err(e) => {
                let action = if expected.is_some() {
                    "replace"
                } else {
                    "create"
                };
                return Err(api_error(action, e));
            }
        };
        let version = resource_version(&written).ok_or_else(|| {
            api_error(
                "write",
                KubeError::Response("the written Secret has no resourceVersion".into()),
            )
        })?;
        tracing::debug!(%kind, name, version, "stored");
        Ok(Version::new(version))
    }
}

/// Every readable object of a kind and the list's resourceVersion (where a watch starts).
async fn list_secrets(
    api: &ApiClient,
    kind: Kind,
) -> Result<(Vec<(String, Stored)>, String), StoreError> {
    let list = api
        .list(Resource::Secrets, &selector(kind))
        .await
        .map_err(|source| StoreError::Kubernetes {
            action: format!("list {kind} Secrets"),
            source,
        })?;
    let version = resource_version(&list).unwrap_or_default().to_owned();
    let items = match list {
        Value::Object(mut map) => map.remove("items"),
        _ => None,
    };
    let items = match items {
        Some(Value::Array(items)) => items,
        Some(Value::Null) | None => Vec::new(),
        Some(_) => {
            return Err(StoreError::Kubernetes {
                action: format!("list {kind} Secrets"),
                source: KubeError::Response("items is not a list".into()),
            });
        }
    };
    let mut objects: Vec<(String, Stored)> = items
        .into_iter()
        .filter_map(|item| readable(kind, item))
        .collect();
    objects.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((objects, version))
}

impl Store for KubeStore {
    fn get<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
        Box::pin(async move {
            check(kind, name)?;
            let secret = secret_name(kind, name);
            let value = self
                .api
                .get(Resource::Secrets, &secret)
                .await
                .map_err(|source| StoreError::Kubernetes {
                    action: format!("get Secret {secret}"),
                    source,
                })?;
            let Some(value) = value else {
                return Ok(None);
            };
            from_secret(kind, value)
                .map(|(_, stored)| Some(stored))
                .map_err(|reason| StoreError::Corrupt {
                    kind,
                    name: name.to_owned(),
                    reason: format!("Secret {secret}: {reason}"),
                })
        })
    }

    fn put<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
        object: &'a Object,
        expected: Option<&'a Version>,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        Box::pin(async move {
            check(kind, name)?;
            check_object(kind, name, object)?;
            self.put_inner(kind, name, object, expected).await
        })
    }

    fn delete<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
        expected: Option<&'a Version>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            check(kind, name)?;
            let secret = secret_name(kind, name);
            match self
                .api
                .delete(Resource::Secrets, &secret, expected.map(Version::as_str))
                .await
            {
                Ok(()) => {
                    tracing::debug!(%kind, name, "deleted");
                    Ok(())
                }
                Err(e) if e.status() == Some(404) => Ok(()),
                Err(e) if e.status() == Some(409) => Err(conflict(kind, name)),
                Err(source) => Err(StoreError::Kubernetes {
                    action: format!("delete Secret {secret}"),
                    source,
                }),
            }
        })
    }

    fn list<'a>(&'a self, kind: Kind) -> BoxFuture<'a, Result<Vec<(String, Stored)>, StoreError>> {
        Box::pin(async move { Ok(list_secrets(&self.api, kind).await?.0) })
    }

    fn watch(&self, kind: Kind) -> mpsc::Receiver<Change> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let watcher = Watcher {
            api: self.api.clone(),
            kind,
            known: BTreeMap::new(),
            backoff: Backoff::default(),
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = tx.closed() => {}
                _ = watcher.run(&tx) => {}
            }
        });
        rx
    }
}

impl Locker for KubeStore {
    fn try_acquire<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, LockError>> {
        Box::pin(self.leases.try_acquire(name, ttl))
    }

    fn renew<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), LockError>> {
        Box::pin(self.leases.renew(lease))
    }

    fn release<'a>(&'a self, lease: Lease) -> BoxFuture<'a, Result<(), LockError>> {
        Box::pin(async move { self.leases.release(&lease).await })
    }
}

/// `namespace` of the service account, if this runs in a pod.
fn service_account_namespace() -> Option<String> {
    let text = std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok()?;
    let namespace = text.trim();
    (!namespace.is_empty()).then(|| namespace.to_owned())
}

/// `metadata.resourceVersion` of an object or a list.
pub(crate) fn resource_version(value: &Value) -> Option<&str> {
    value.get("metadata")?.get("resourceVersion")?.as_str()
}

/// `metadata.name` of an object.
fn object_name(value: &Value) -> Option<&str> {
    value.get("metadata")?.get("name")?.as_str()
}

fn is_ours(annotation: &str) -> bool {
    ANNOTATION_PREFIXES
        .iter()
        .any(|p| annotation.starts_with(p))
}

/// The Secret to write for `object`: new, or `current` at `expected` with portico's
/// parts replaced and everything else kept.
fn to_secret(
    kind: Kind,
    secret: &str,
    object: &Object,
    current: Option<(Secret, &Version)>,
) -> Secret {
    let mut metadata = match current {
        Some((current, expected)) => ObjectMeta {
            resource_version: Some(expected.as_str().to_owned()),
            // The server keeps its own bookkeeping when a replace leaves it out.
            managed_fields: None,
            ..current.metadata
        },
        None => ObjectMeta {
            name: Some(secret.to_owned()),
            ..ObjectMeta::default()
        },
    };
    let labels = metadata.labels.get_or_insert_default();
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    labels.insert(LABEL_KIND.into(), kind.as_str().into());
    let mut annotations = metadata.annotations.take().unwrap_or_default();
    annotations.retain(|key, _| !is_ours(key));
    annotations.extend(object.annotations.clone());
    metadata.annotations = (!annotations.is_empty()).then_some(annotations);

    let mut data: BTreeMap<String, ByteString> = object
        .data
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone())))
        .collect();
    if kind == Kind::Certificate {
        for key in TLS_KEYS {
            data.entry(key.to_owned()).or_insert(ByteString(Vec::new()));
        }
    }
    Secret {
        metadata,
        type_: Some(secret_type(kind).to_owned()),
        data: (!data.is_empty()).then_some(data),
        ..Secret::default()
    }
}

/// A Secret as the API sent it, checked to be of `kind`'s type. The reason never quotes
/// the Secret.
fn read_secret(kind: Kind, value: Value) -> Result<Secret, String> {
    let secret: Secret = serde_json::from_value(value).map_err(|e| {
        // serde_json's message can quote a value; its category cannot.
        format!("not a Secret ({:?} error in its JSON)", e.classify())
    })?;
    let found = secret.type_.as_deref().unwrap_or(OPAQUE_TYPE);
    if found != secret_type(kind) {
        return Err(format!(
            "type {found:?}, but {kind} Secrets are {:?}",
            secret_type(kind)
        ));
    }
    Ok(secret)
}

/// The object a Secret holds, and its name in the store.
fn from_secret(kind: Kind, value: Value) -> Result<(String, Stored), String> {
    let secret = read_secret(kind, value)?;
    let full = secret.metadata.name.as_deref().unwrap_or_default();
    let prefix = secret_prefix(kind);
    let name = full
        .strip_prefix(prefix)
        .ok_or_else(|| format!("the name does not start with {prefix:?}"))?;
    validate_name(kind, name).map_err(|e| format!("{name:?} is not a store name: {e}"))?;
    let version = secret
        .metadata
        .resource_version
        .clone()
        .ok_or("no resourceVersion")?;
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    if kind == Kind::Certificate {
        for key in TLS_KEYS {
            if data.get(key).is_some_and(Vec::is_empty) {
                data.remove(key);
            }
        }
    }
    let annotations = secret
        .metadata
        .annotations
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| is_ours(k))
        .collect();
    Ok((
        name.to_owned(),
        Stored {
            object: Object { data, annotations },
            version: Version::new(version),
        },
    ))
}

/// A listed or watched Secret, or `None` (logged) if it cannot be read.
fn readable(kind: Kind, value: Value) -> Option<(String, Stored)> {
    let secret = object_name(&value).unwrap_or("<no name>").to_owned();
    match from_secret(kind, value) {
        Ok(object) => Some(object),
        Err(reason) => {
            tracing::warn!(%kind, secret, reason, "skipping a Secret labelled as portico's that it cannot read");
            None
        }
    }
}

/// Capped exponential back-off with jitter, for reconnecting a watch.
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    async fn wait(&mut self) {
        tokio::time::sleep(self.step()).await;
    }

    /// The next wait: between half and all of the current step, so that replicas that
    /// lost the API server together do not come back in one burst.
    fn step(&mut self) -> Duration {
        let step = self.next.as_millis() as u64;
        let jittered = step / 2 + random_u64() % (step / 2 + 1);
        self.next = (self.next * 2).min(BACKOFF_MAX);
        Duration::from_millis(jittered)
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// How one watch request ended.
enum WatchEnd {
    /// The server closed it (its timeout): watch again from the last version.
    Closed,
    /// 410 Gone: the version is too old; list again.
    Gone,
    Failed(KubeError),
    /// The receiver is gone.
    Stopped,
}

/// The task behind [`Store::watch`].
struct Watcher {
    api: Arc<ApiClient>,
    kind: Kind,
    /// What the receiver was told, by name.
    known: BTreeMap<String, Stored>,
    backoff: Backoff,
}

impl Watcher {
    async fn run(mut self, tx: &mpsc::Sender<Change>) {
        let kind = self.kind;
        loop {
            let version = match list_secrets(&self.api, kind).await {
                Ok((objects, version)) => {
                    for change in diff(&mut self.known, objects) {
                        if tx.send(change).await.is_err() {
                            return;
                        }
                    }
                    version
                }
                Err(e) => {
                    tracing::warn!(%kind, error = %e, "watch: cannot list; retrying");
                    self.backoff.wait().await;
                    continue;
                }
            };
            let mut version = version;
            loop {
                let started = tokio::time::Instant::now();
                match self.watch_once(&mut version, tx).await {
                    WatchEnd::Stopped => return,
                    WatchEnd::Gone => {
                        tracing::info!(%kind, "watch: resourceVersion too old (410 Gone); listing again");
                        break;
                    }
                    // A server that ends watches at once would otherwise be polled
                    // in a tight loop.
                    WatchEnd::Closed if started.elapsed() < Duration::from_secs(1) => {
                        self.backoff.wait().await;
                    }
                    WatchEnd::Closed => self.backoff.reset(),
                    WatchEnd::Failed(e) => {
                        tracing::warn!(%kind, error = %e, "watch: reconnecting");
                        self.backoff.wait().await;
                    }
                }
            }
        }
    }

    async fn watch_once(&mut self, version: &mut String, tx: &mpsc::Sender<Change>) -> WatchEnd {
        let kind = self.kind;
        let mut stream = match self
            .api
            .watch(Resource::Secrets, &selector(kind), version)
            .await
        {
            Ok(stream) => stream,
            Err(e) if e.status() == Some(410) => return WatchEnd::Gone,
            Err(e) => return WatchEnd::Failed(e),
        };
        let mut line = String::new();
        loop {
            line.clear();
            match tokio::time::timeout(WATCH_IDLE, stream.read_line(&mut line)).await {
                Err(_) => return WatchEnd::Failed(KubeError::Timeout(WATCH_IDLE)),
                Ok(Err(e)) => return WatchEnd::Failed(KubeError::Watch(e)),
                Ok(Ok(0)) => return WatchEnd::Closed,
                Ok(Ok(_)) => {}
            }
            if line.trim().is_empty() {
                continue;
            }
            let Ok(Value::Object(mut event)) = serde_json::from_str::<Value>(&line) else {
                return WatchEnd::Failed(KubeError::Response(
                    "a watch event is not a JSON object".into(),
                ));
            };
            let object = event.remove("object").unwrap_or_default();
            let kind_of_event = event
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if kind_of_event == "ERROR" {
                let code = object.get("code").and_then(Value::as_u64);
                if code == Some(410) {
                    return WatchEnd::Gone;
                }
                let message = object.get("message").and_then(Value::as_str).unwrap_or("");
                return WatchEnd::Failed(KubeError::Response(format!(
                    "watch error {}: {message}",
                    code.unwrap_or(0)
                )));
            }
            if let Some(v) = resource_version(&object) {
                *version = v.to_owned();
            }
            let change = match kind_of_event {
                "ADDED" | "MODIFIED" => {
                    let secret = object_name(&object).unwrap_or_default().to_owned();
                    match readable(kind, object) {
                        Some((name, stored)) => {
                            if self.known.get(&name).map(|s| &s.version) == Some(&stored.version) {
                                None
                            } else {
                                self.known.insert(name.clone(), stored.clone());
                                Some(Change::Upsert(name, stored))
                            }
                        }
                        // Was readable, is not any more: gone as far as portico can tell.
                        None => secret
                            .strip_prefix(secret_prefix(kind))
                            .and_then(|name| self.known.remove_entry(name))
                            .map(|(name, _)| Change::Removed(name)),
                    }
                }
                "DELETED" => object_name(&object)
                    .and_then(|s| s.strip_prefix(secret_prefix(kind)))
                    .and_then(|name| self.known.remove_entry(name))
                    .map(|(name, _)| Change::Removed(name)),
                "BOOKMARK" => None,
                other => {
                    tracing::debug!(%kind, event = other, "watch: ignoring an unknown event type");
                    None
                }
            };
            if let Some(change) = change {
                self.backoff.reset();
                if tx.send(change).await.is_err() {
                    return WatchEnd::Stopped;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_object() -> Object {
        Object::new()
            .with_data("tls.crt", b"CERT".to_vec())
            .with_data("tls.key", b"KEY".to_vec())
            .with_annotation("portico.dev/not-after", "2030-01-01T00:00:00Z")
    }

    /// What the API server returns for a written Secret: the Secret plus a version.
    fn as_served(secret: &Secret, version: &str) -> Value {
        let mut value = serde_json::to_value(secret).unwrap();
        value["metadata"]["resourceVersion"] = version.into();
        value
    }

    #[test]
    fn names_types_and_labels_follow_design() {
        assert_eq!(
            secret_name(Kind::Certificate, "example.com-0123456789abcdef"),
            "portico-tls-example.com-0123456789abcdef"
        );
        assert_eq!(secret_name(Kind::Account, "ab"), "portico-acme-account-ab");
        assert_eq!(secret_name(Kind::Http01, "ab"), "portico-http01-ab");
        assert_eq!(secret_name(Kind::Ca, "local-ca"), "portico-local-ca");
        assert_eq!(
            selector(Kind::Http01),
            "portico.dev/kind=http01,app.kubernetes.io/managed-by=portico"
        );
        let secret = to_secret(Kind::Certificate, "portico-tls-x", &cert_object(), None);
        let value = serde_json::to_value(&secret).unwrap();
        assert_eq!(value["apiVersion"], "v1");
        assert_eq!(value["kind"], "Secret");
        assert_eq!(value["type"], "kubernetes.io/tls");
        assert_eq!(value["metadata"]["name"], "portico-tls-x");
        assert_eq!(
            value["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "portico"
        );
        assert_eq!(
            value["metadata"]["labels"]["portico.dev/kind"],
            "certificate"
        );
        // Base64, as the API wants data.
        assert_eq!(value["data"]["tls.crt"], "Q0VSVA==");
        for kind in [Kind::Account, Kind::Http01, Kind::Ca] {
            let value = serde_json::to_value(to_secret(kind, "n", &Object::new(), None)).unwrap();
            assert_eq!(value["type"], "Opaque");
            assert_eq!(
                value["metadata"]["labels"]["portico.dev/kind"],
                kind.as_str()
            );
        }
    }

    #[test]
    fn objects_round_trip_through_secrets() {
        let all_bytes: Vec<u8> = (0..=255).collect();
        let object = cert_object()
            .with_data("all", all_bytes)
            .with_data("empty", Vec::new())
            .with_annotation("cert-manager.io/alt-names", "a,b");
        for kind in Kind::ALL {
            let secret = to_secret(kind, &secret_name(kind, "n"), &object, None);
            let (name, stored) = from_secret(kind, as_served(&secret, "7")).unwrap();
            assert_eq!(name, "n");
            assert_eq!(stored.object, object, "{kind}");
            assert_eq!(stored.version, Version::new("7"));
        }
    }

    #[test]
    fn certificate_secrets_always_hold_tls_keys_but_objects_need_not() {
        let status_only = Object::new().with_annotation("portico.dev/last-error", "rate limited");
        let secret = to_secret(Kind::Certificate, "portico-tls-x", &status_only, None);
        let data = secret.data.as_ref().unwrap();
        assert_eq!(data.get("tls.crt"), Some(&ByteString(Vec::new())));
        assert_eq!(data.get("tls.key"), Some(&ByteString(Vec::new())));
        let (_, stored) = from_secret(Kind::Certificate, as_served(&secret, "1")).unwrap();
        assert_eq!(stored.object, status_only);
        // Other kinds are left as they are.
        let secret = to_secret(
            Kind::Account,
            "portico-acme-account-x",
            &Object::new(),
            None,
        );
        assert_eq!(secret.data, None);
    }

    #[test]
    fn foreign_metadata_stays_out_of_objects_and_survives_a_replace() {
        let mut served = as_served(
            &to_secret(Kind::Certificate, "portico-tls-x", &cert_object(), None),
            "5",
        );
        served["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
            "{}".into();
        served["metadata"]["labels"]["team"] = "edge".into();
        served["metadata"]["ownerReferences"] =
            serde_json::json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u"}]);
        served["metadata"]["managedFields"] = serde_json::json!([{"manager": "kubectl"}]);
        let (_, stored) = from_secret(Kind::Certificate, served.clone()).unwrap();
        assert_eq!(stored.object, cert_object());

        let next = Object::new()
            .with_data("tls.crt", b"NEW".to_vec())
            .with_data("tls.key", b"NEWKEY".to_vec())
            .with_annotation("portico.dev/next-attempt", "later");
        let current = read_secret(Kind::Certificate, served).unwrap();
        let version = Version::new("5");
        let replaced = to_secret(
            Kind::Certificate,
            "portico-tls-x",
            &next,
            Some((current, &version)),
        );
        let value = serde_json::to_value(&replaced).unwrap();
        let annotations = &value["metadata"]["annotations"];
        assert_eq!(
            annotations["kubectl.kubernetes.io/last-applied-configuration"],
            "{}"
        );
        // portico's annotations are the new object's, the old one is gone.
        assert_eq!(annotations["portico.dev/next-attempt"], "later");
        assert!(annotations.get("portico.dev/not-after").is_none());
        assert_eq!(value["metadata"]["labels"]["team"], "edge");
        assert_eq!(
            value["metadata"]["labels"]["portico.dev/kind"],
            "certificate"
        );
        assert_eq!(value["metadata"]["ownerReferences"][0]["name"], "o");
        assert_eq!(value["metadata"]["resourceVersion"], "5");
        assert!(value["metadata"].get("managedFields").is_none());
        let (_, stored) = from_secret(Kind::Certificate, as_served(&replaced, "6")).unwrap();
        assert_eq!(stored.object, next);
    }

    #[test]
    fn unreadable_secrets_say_why_without_quoting_data() {
        let good = as_served(
            &to_secret(
                Kind::Account,
                "portico-acme-account-a",
                &cert_object(),
                None,
            ),
            "1",
        );

        let mut wrong_prefix = good.clone();
        wrong_prefix["metadata"]["name"] = "someone-else".into();
        let reason = from_secret(Kind::Account, wrong_prefix).unwrap_err();
        assert!(reason.contains("portico-acme-account-"), "{reason}");

        let mut bad_name = good.clone();
        bad_name["metadata"]["name"] = "portico-acme-account-".into();
        assert!(from_secret(Kind::Account, bad_name).is_err());

        let reason = from_secret(Kind::Certificate, good.clone()).unwrap_err();
        assert!(reason.contains("type"), "{reason}");

        let mut not_base64 = good.clone();
        not_base64["data"]["tls.key"] = "SECRET!!KEY".into();
        let reason = from_secret(Kind::Account, not_base64).unwrap_err();
        assert!(!reason.contains("SECRET"), "{reason}");

        let mut data_not_a_map = good.clone();
        data_not_a_map["data"] = "SECRETSTRING".into();
        let reason = from_secret(Kind::Account, data_not_a_map).unwrap_err();
        assert!(!reason.contains("SECRET"), "{reason}");

        let mut no_version = good;
        no_version["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        assert!(from_secret(Kind::Account, no_version).is_err());
    }

    #[test]
    fn a_secret_without_a_type_is_opaque() {
        let mut value = as_served(
            &to_secret(Kind::Http01, "portico-http01-t", &Object::new(), None),
            "3",
        );
        value.as_object_mut().unwrap().remove("type");
        assert!(from_secret(Kind::Http01, value.clone()).is_ok());
        assert!(from_secret(Kind::Certificate, value).is_err());
    }

    #[test]
    fn api_errors_show_the_status_once() {
        let status = ::kube::core::Status::failure("secrets \"x\" already exists", "AlreadyExists")
            .with_code(409);
        let e = KubeError::Request(::kube::Error::Api(status.boxed()));
        assert_eq!(e.status(), Some(409));
        assert_eq!(
            e.to_string(),
            "409 AlreadyExists: secrets \"x\" already exists"
        );
        assert_eq!(KubeError::Timeout(REQUEST_TIMEOUT).status(), None);
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let mut backoff = Backoff::default();
        let waits: Vec<Duration> = (0..10).map(|_| backoff.step()).collect();
        assert!(
            waits[0] >= BACKOFF_MIN / 2 && waits[0] <= BACKOFF_MIN,
            "{waits:?}"
        );
        assert!(waits.iter().all(|w| *w <= BACKOFF_MAX), "{waits:?}");
        assert!(waits[9] >= BACKOFF_MAX / 2, "{waits:?}");
        backoff.reset();
        assert_eq!(backoff.next, BACKOFF_MIN);
    }
}
