//! The watch of one kind's Secrets: list, then watch from the list's resourceVersion;
//! on 410 Gone list again and report the differences; on any other end reconnect after
//! a capped, jittered back-off.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::io::AsyncBufReadExt;
use serde_json::Value;
use tokio::sync::mpsc;

use super::api::{ApiClient, KubeError, Resource, WATCH_SECONDS, object_name, resource_version};
use super::secrets::{list_secrets, readable, secret_prefix, selector};
use crate::report::Chain;
use crate::store::{Change, Kind, Stored, diff, random_u64};

/// A watch stream that says nothing for this long is taken as a dead connection.
pub(super) const WATCH_IDLE: Duration = Duration::from_secs(WATCH_SECONDS as u64 + 30);

pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(250);

pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// Capped exponential back-off with jitter, for reconnecting a watch.
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    pub(crate) async fn wait(&mut self) {
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

    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// How one watch request ended.
pub(super) enum WatchEnd {
    /// The server closed it (its timeout): watch again from the last version.
    Closed,
    /// 410 Gone: the version is too old; list again.
    Gone,
    Failed(KubeError),
    /// The receiver is gone.
    Stopped,
}

/// The task behind [`Store::watch`](crate::store::Store::watch).
pub(super) struct Watcher {
    pub(super) api: Arc<ApiClient>,
    pub(super) kind: Kind,
    /// What the receiver was told, by name.
    pub(super) known: BTreeMap<String, Stored>,
    pub(super) backoff: Backoff,
}

impl Watcher {
    pub(super) async fn run(mut self, tx: &mpsc::Sender<Change>) {
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
                    tracing::warn!(%kind, error = %Chain(&e), "watch: cannot list; retrying");
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
                        tracing::warn!(%kind, error = %Chain(&e), "watch: reconnecting");
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
