//! One kind of the cluster's objects kept in memory: list, then watch from the list's
//! resourceVersion; on 410 Gone list again; on any other end reconnect after a capped,
//! jittered back-off. Every change wakes the builder ([`super::Cluster`]), which reads
//! all kinds at once.
//!
//! An outage of the API server changes nothing here: the objects last seen stay, so the
//! routes built from them keep serving until the server answers again.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, ListParams, ResourceExt, WatchEvent, WatchParams};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};

use crate::report::Chain;
use crate::shutdown::Phase;
use crate::store::Backoff;

/// How long the server keeps one watch request open.
const WATCH_SECONDS: u32 = 60;
/// A watch stream silent for this long is taken as a dead connection.
const WATCH_IDLE: Duration = Duration::from_secs(WATCH_SECONDS as u64 + 30);
/// The longest a list may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// The objects of one kind (in one namespace, or in all), by `namespace/name`.
pub(super) type Objects<K> = Arc<Mutex<BTreeMap<String, K>>>;

/// A copy of what a set of reflectors of one kind hold (the builder's view).
pub(super) fn snapshot<K: Clone>(parts: &[Objects<K>]) -> Vec<K> {
    parts
        .iter()
        .flat_map(|p| {
            p.lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Keeps [`Objects`] of kind `K` in step with the API server.
pub(super) struct Reflector<K> {
    pub(super) api: Api<K>,
    pub(super) what: &'static str,
    /// A field selector (Secrets: only `kubernetes.io/tls` ones).
    pub(super) fields: Option<&'static str>,
    pub(super) objects: Objects<K>,
    /// Woken at every change.
    pub(super) changed: Arc<Notify>,
    /// Sent `true` after the first complete list.
    pub(super) synced: watch::Sender<bool>,
}

enum WatchEnd {
    /// The server ended the watch (its timeout): watch again from the last version.
    Closed,
    /// 410 Gone: list again.
    Gone,
    Failed(String),
}

/// `namespace/name`: how every object of the cluster is known here (the reflectors'
/// maps, Notices, Events' rate limit).
pub(super) fn key<K: kube::Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

impl<K> Reflector<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    pub(super) async fn run(self, mut shutdown: watch::Receiver<Phase>) {
        tokio::select! {
            _ = self.reflect() => {}
            _ = shutdown.changed() => {}
        }
    }

    async fn reflect(&self) {
        let mut backoff = Backoff::default();
        loop {
            let mut version = match self.list().await {
                Ok(version) => version,
                Err(e) => {
                    tracing::warn!(kind = self.what, error = %e, "cluster: cannot list; retrying (the objects last seen keep serving)");
                    backoff.wait().await;
                    continue;
                }
            };
            loop {
                let started = tokio::time::Instant::now();
                match self.watch_once(&mut version).await {
                    WatchEnd::Gone => {
                        tracing::info!(
                            kind = self.what,
                            "cluster: resourceVersion too old (410 Gone); listing again"
                        );
                        break;
                    }
                    // A server that ends watches at once would otherwise be polled in a
                    // tight loop.
                    WatchEnd::Closed if started.elapsed() < Duration::from_secs(1) => {
                        backoff.wait().await;
                    }
                    WatchEnd::Closed => backoff.reset(),
                    WatchEnd::Failed(e) => {
                        tracing::warn!(kind = self.what, error = %e, "cluster: watch failed; reconnecting");
                        backoff.wait().await;
                    }
                }
            }
        }
    }

    /// Replaces the objects with a fresh list; returns the list's resourceVersion.
    async fn list(&self) -> Result<String, String> {
        let list =
            match tokio::time::timeout(LIST_TIMEOUT, self.api.list(&ListParams::default())).await {
                Err(_) => return Err(format!("no answer within {LIST_TIMEOUT:?}")),
                Ok(Err(e)) => return Err(Chain(&e).to_string()),
                Ok(Ok(list)) => list,
            };
        let objects: BTreeMap<String, K> = list.items.into_iter().map(|o| (key(&o), o)).collect();
        *self.objects.lock().unwrap_or_else(|e| e.into_inner()) = objects;
        self.changed.notify_one();
        self.synced.send_replace(true);
        Ok(list.metadata.resource_version.unwrap_or_default())
    }

    async fn watch_once(&self, version: &mut String) -> WatchEnd {
        let mut params = WatchParams::default().timeout(WATCH_SECONDS);
        if let Some(fields) = self.fields {
            params = params.fields(fields);
        }
        let stream =
            match tokio::time::timeout(LIST_TIMEOUT, self.api.watch(&params, version)).await {
                Err(_) => return WatchEnd::Failed(format!("no answer within {LIST_TIMEOUT:?}")),
                Ok(Err(kube::Error::Api(s))) if s.code == 410 => return WatchEnd::Gone,
                Ok(Err(e)) => return WatchEnd::Failed(Chain(&e).to_string()),
                Ok(Ok(stream)) => stream,
            };
        let mut stream = std::pin::pin!(stream);
        loop {
            let event = match tokio::time::timeout(WATCH_IDLE, stream.next()).await {
                Err(_) => return WatchEnd::Failed(format!("silent for {WATCH_IDLE:?}")),
                Ok(None) => return WatchEnd::Closed,
                Ok(Some(Err(e))) => return WatchEnd::Failed(Chain(&e).to_string()),
                Ok(Some(Ok(event))) => event,
            };
            let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                    *version = o.resource_version().unwrap_or_default();
                    objects.insert(key(&o), o);
                }
                WatchEvent::Deleted(o) => {
                    *version = o.resource_version().unwrap_or_default();
                    objects.remove(&key(&o));
                }
                WatchEvent::Bookmark(b) => {
                    *version = b.metadata.resource_version;
                    continue;
                }
                WatchEvent::Error(e) if e.code == 410 => return WatchEnd::Gone,
                WatchEvent::Error(e) => {
                    return WatchEnd::Failed(format!("watch error {}: {}", e.code, e.message));
                }
            }
            drop(objects);
            self.changed.notify_one();
        }
    }
}
