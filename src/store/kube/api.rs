//! The Kubernetes API as the backend uses it: one client per backend instance (rebuilt
//! on 401 so a rotated token is read again), requests with a timeout and no hidden
//! retries, and the errors they end with. The Secret mapping, the watch and the Lease
//! lock are built on it.

use std::sync::RwLock;
use std::time::Duration;

use crate::report::Chain;
use ::kube::core::Request;
use ::kube::core::params::{DeleteParams, GetParams, ListParams, PostParams, Preconditions};
use serde_json::Value;

/// Label every portico object carries, with value [`MANAGED_BY`].
pub(super) const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

pub(super) const MANAGED_BY: &str = "portico";

/// How long the server keeps one watch request open.
pub(super) const WATCH_SECONDS: u32 = 60;
/// The longest a request may take before it counts as failed.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the Kubernetes API could not be used. Messages never quote Secret data or tokens.
#[derive(Debug, thiserror::Error)]
pub(super) enum KubeError {
    /// No usable credentials or API address.
    #[error("{what}")]
    Config {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server answered with an error status. The status is the whole story, so it
    /// is written out here rather than kept as a cause (kube's own Display of it repeats
    /// the status in Debug form).
    #[error("{code} {reason}: {message}")]
    Api {
        code: u16,
        reason: String,
        message: String,
    },
    /// The request failed without an answer: no connection, TLS, a broken body.
    #[error("the request failed")]
    Request(#[source] ::kube::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A success status with a body that is not what the API sends.
    #[error("unexpected response: {0}")]
    Response(String),
    /// A watch stream broke off.
    #[error("watch stream broke off")]
    Watch(#[source] std::io::Error),
}

impl KubeError {
    /// The HTTP status the server answered with, if it answered with an error.
    pub(super) fn status(&self) -> Option<u16> {
        match self {
            KubeError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<::kube::Error> for KubeError {
    fn from(e: ::kube::Error) -> Self {
        match e {
            ::kube::Error::Api(s) => KubeError::Api {
                code: s.code,
                reason: s.reason,
                message: s.message,
            },
            e => KubeError::Request(e),
        }
    }
}

/// The API client of one backend instance, shared by the store, the locker and the
/// watch tasks. Rebuilt on 401 so that a rotated token file is read again.
pub(crate) struct ApiClient {
    pub(super) config: ::kube::Config,
    pub(super) namespace: String,
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
    pub(super) fn new(
        mut config: ::kube::Config,
        namespace: String,
    ) -> Result<ApiClient, KubeError> {
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
            Err(e) => tracing::warn!(error = %Chain(&e), "cannot rebuild the Kubernetes client"),
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
            Ok(result) => result.map_err(KubeError::from),
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

    pub(super) async fn delete(
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

    pub(super) async fn list(
        &self,
        resource: Resource,
        selector: &str,
    ) -> Result<Value, KubeError> {
        let request = Request::new(self.path(resource))
            .list(&ListParams::default().labels(selector))
            .map_err(build_error)?;
        self.send_json(request).await
    }

    /// Opens a watch from `version`: the response body, one JSON event per line.
    pub(super) async fn watch(
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
                Ok(result) => result.map(Box::pin).map_err(KubeError::from),
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

pub(super) fn build_error(e: ::kube::core::request::Error) -> KubeError {
    KubeError::Request(::kube::Error::BuildRequest(e))
}

/// A second copy of a request, for the one retry after a 401.
pub(super) fn copy(request: &http::Request<Vec<u8>>) -> http::Request<Vec<u8>> {
    let mut copy = http::Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// `metadata.resourceVersion` of an object or a list.
pub(crate) fn resource_version(value: &Value) -> Option<&str> {
    value.get("metadata")?.get("resourceVersion")?.as_str()
}

/// `metadata.name` of an object.
pub(super) fn object_name(value: &Value) -> Option<&str> {
    value.get("metadata")?.get("name")?.as_str()
}
