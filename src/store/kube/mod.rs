//! The Kubernetes backend: the bottom of the certificate path for a cluster ingress.
//! Objects are Secrets and locks are Leases (see `lease`) in one namespace,
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
//!   [`ANNOTATION_PREFIXES`](super::ANNOTATION_PREFIXES) are portico's. Every other label
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
//!   deadline, the watch loop). Every request has a [`REQUEST_TIMEOUT`](api::REQUEST_TIMEOUT). The one
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
//!   end it after [`WATCH_SECONDS`](api::WATCH_SECONDS), and a stream silent for longer than that plus a
//!   margin is taken as a dead connection.
//! - **Lists are not paginated**: portico's Secrets in one namespace are a few per site.

mod api;
mod lease;
mod secrets;
mod watch;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ::kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::mpsc;

use self::api::{ApiClient, KubeError, Resource, resource_version};
use self::lease::{Clock, Leases};
use self::secrets::{from_secret, list_secrets, read_secret, secret_name, to_secret};
pub(crate) use self::watch::Backoff;
use self::watch::Watcher;
use crate::store::{
    BoxFuture, Change, Kind, Lease, LockError, Locker, Object, Store, StoreError, Stored, Version,
    WATCH_BUFFER, check, check_object, conflict,
};

/// The cluster's address and credentials: the in-cluster service account when there is
/// one, else `KUBECONFIG` / `~/.kube/config` (the store and the cluster watch share this).
pub(crate) async fn credentials() -> Result<::kube::Config, StoreError> {
    let action = || "load credentials".to_owned();
    match ::kube::Config::incluster() {
        Ok(config) => Ok(config),
        Err(in_cluster) => ::kube::Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .map_err(|kubeconfig| StoreError::Unavailable {
                action: action(),
                source: Box::new(KubeError::Config {
                    what: format!(
                        "not in a cluster ({in_cluster}), and no usable KUBECONFIG or ~/.kube/config"
                    ),
                    source: Box::new(kubeconfig),
                }),
            }),
    }
}

const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

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
        let config = credentials().await?;
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
        let error = |source: ::kube::config::KubeconfigError| StoreError::Unavailable {
            action: "load credentials".into(),
            source: Box::new(KubeError::Config {
                what: format!("kubeconfig {}", path.display()),
                source: Box::new(source),
            }),
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
        let api = ApiClient::new(config, namespace).map_err(|source| StoreError::Unavailable {
            action: "connect".into(),
            source: Box::new(source),
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
    /// holder identities. Part of the embedding API: a program running several portico
    /// servers in one process, or one outside a pod, names each holder so the Leases say
    /// who holds them; portico's tests run several replicas in one process this way.
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
        let api_error = |action: &str, source| StoreError::Unavailable {
            action: format!("{action} Secret {secret}"),
            source: Box::new(source),
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
                .map_err(|source| StoreError::Unavailable {
                    action: format!("get Secret {secret}"),
                    source: Box::new(source),
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
                Err(source) => Err(StoreError::Unavailable {
                    action: format!("delete Secret {secret}"),
                    source: Box::new(source),
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

#[cfg(test)]
mod tests {
    use super::api::*;
    use super::secrets::*;
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use serde_json::Value;

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
    fn names_types_and_labels_follow_the_documented_layout() {
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
        let e = KubeError::from(::kube::Error::Api(status.boxed()));
        assert_eq!(e.status(), Some(409));
        assert_eq!(
            e.to_string(),
            "409 AlreadyExists: secrets \"x\" already exists"
        );
        assert_eq!(KubeError::Timeout(REQUEST_TIMEOUT).status(), None);
    }
}
