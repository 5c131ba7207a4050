//! HTTP-01 tokens in flight, between the ACME order that publishes them and the port-80
//! listener that answers the CA.
//!
//! A token lives in two places: this process's memory, so the CA's first validation
//! request is answered without I/O, and the store ([`Kind::Http01`], named `h(token)`),
//! so that whichever replica the load balancer hands the CA's request to can answer it.
//! [`Challenges::find`] reads memory first, then the store. Token objects carry
//! `portico.dev/expires`; the order deletes its tokens when it ends, and
//! [`Challenges::collect_garbage`] removes those a crashed replica left behind.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::objects::{ANNOTATION_EXPIRES, rfc3339, short_hash};
use crate::report::Chain;
use crate::store::{Kind, Object, Store, StoreError};

/// How long a token object may stay in the store before it counts as garbage: far longer
/// than any order, far shorter than the CA's authorization lifetime.
pub(super) const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The store name of an HTTP-01 token: `h(token)`.
pub(super) fn token_object_name(token: &str) -> String {
    short_hash(token)
}

/// token → key authorization, plus the store shared with other replicas.
pub struct Challenges {
    tokens: RwLock<HashMap<String, Arc<str>>>,
    store: Option<Arc<dyn Store>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges")
            .field("in_memory", &self.read().len())
            .field("shared", &self.store.is_some())
            .finish()
    }
}

impl Default for Challenges {
    fn default() -> Self {
        Self::new()
    }
}

impl Challenges {
    /// Memory only: tests of the listener, and processes that share no store.
    pub fn new() -> Self {
        Challenges {
            tokens: RwLock::new(HashMap::new()),
            store: None,
        }
    }

    /// Memory, backed by `store` so every process sharing it can answer every token.
    pub fn with_store(store: Arc<dyn Store>) -> Self {
        Challenges {
            tokens: RwLock::new(HashMap::new()),
            store: Some(store),
        }
    }

    /// Puts a token up: in memory at once, then in the store. The CA must not be told
    /// the challenge is ready before this returns.
    pub async fn publish(&self, token: &str, key_authorization: &str) -> Result<(), StoreError> {
        self.insert(token, key_authorization);
        let Some(store) = &self.store else {
            return Ok(());
        };
        let object = Object::new()
            .with_data("token", token.as_bytes().to_vec())
            .with_data("key-authorization", key_authorization.as_bytes().to_vec())
            .with_annotation(ANNOTATION_EXPIRES, rfc3339(SystemTime::now() + TOKEN_TTL));
        let name = token_object_name(token);
        match store.put(Kind::Http01, &name, &object, None).await {
            // A retried order for the same token: the stored answer is the same.
            Err(StoreError::Conflict { .. }) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Takes a token down from memory and the store.
    pub async fn withdraw(&self, token: &str) {
        self.remove(token);
        if let Some(store) = &self.store
            && let Err(e) = store
                .delete(Kind::Http01, &token_object_name(token), None)
                .await
        {
            tracing::warn!(error = %Chain(&e), "could not delete a challenge token from the store; it expires on its own");
        }
    }

    /// The key authorization for `token`: from memory, else from the store (a token
    /// another replica published). `None` for unknown, malformed or expired tokens.
    pub async fn find(&self, token: &str) -> Option<Arc<str>> {
        if let Some(found) = self.get(token) {
            return Some(found);
        }
        let store = self.store.as_ref()?;
        // RFC 8555 tokens are base64url; anything else never reaches the store, so junk
        // requests to port 80 cost no API call.
        if token.is_empty()
            || token.len() > 256
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        let stored = match store.get(Kind::Http01, &token_object_name(token)).await {
            Ok(stored) => stored?,
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "cannot look up a challenge token in the store");
                return None;
            }
        };
        let object = &stored.object;
        // The name is a hash: make sure it is this token, and still live.
        if object.get("token") != Some(token.as_bytes()) || expired(object, SystemTime::now()) {
            return None;
        }
        let key_authorization = std::str::from_utf8(object.get("key-authorization")?).ok()?;
        Some(Arc::from(key_authorization))
    }

    /// Deletes token objects whose expiry has passed (left by a process that died
    /// mid-order); returns how many went.
    pub async fn collect_garbage(&self, now: SystemTime) -> Result<usize, StoreError> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let mut removed = 0;
        for (name, stored) in store.list(Kind::Http01).await? {
            if !expired(&stored.object, now) {
                continue;
            }
            match store
                .delete(Kind::Http01, &name, Some(&stored.version))
                .await
            {
                Ok(()) => removed += 1,
                // Someone rewrote or removed it meanwhile: theirs to handle.
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// Memory only (tests, and [`Challenges::publish`]).
    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.write()
            .insert(token.to_string(), Arc::from(key_authorization));
    }

    /// Memory only.
    pub fn remove(&self, token: &str) {
        self.write().remove(token);
    }

    /// Memory only.
    pub fn get(&self, token: &str) -> Option<Arc<str>> {
        self.read().get(token).cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<str>>> {
        self.tokens.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<str>>> {
        // Every edit is a single insert or remove, so a poisoned map is still whole.
        self.tokens.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// A token object with no readable expiry counts as expired: nothing valid writes one.
fn expired(object: &Object, now: SystemTime) -> bool {
    let expires = object
        .annotations
        .get(ANNOTATION_EXPIRES)
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(SystemTime::from);
    expires.is_none_or(|at| at <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_token_published_by_one_process_is_found_by_another() {
        runtime().block_on(async {
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let publisher = Challenges::with_store(store.clone());
            let other = Challenges::with_store(store.clone());
            publisher
                .publish("tok_en-1", "tok_en-1.thumb")
                .await
                .unwrap();
            assert_eq!(other.get("tok_en-1"), None, "not in the other's memory");
            assert_eq!(
                other.find("tok_en-1").await.as_deref(),
                Some("tok_en-1.thumb")
            );
            assert_eq!(other.find("tok_en-2").await, None);
            assert_eq!(other.find("../etc").await, None);
            publisher.withdraw("tok_en-1").await;
            assert_eq!(other.find("tok_en-1").await, None);
            assert!(store.list(Kind::Http01).await.unwrap().is_empty());
        });
    }

    #[test]
    fn expired_and_foreign_token_objects_are_not_answered_and_are_collected() {
        runtime().block_on(async {
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let challenges = Challenges::with_store(store.clone());
            let past = rfc3339(SystemTime::now() - Duration::from_secs(60));
            let old = Object::new()
                .with_data("token", b"old".to_vec())
                .with_data("key-authorization", b"old.k".to_vec())
                .with_annotation(ANNOTATION_EXPIRES, past);
            store
                .put(Kind::Http01, &token_object_name("old"), &old, None)
                .await
                .unwrap();
            // Stored under another token's name: a hash collision must not answer.
            let wrong = Object::new()
                .with_data("token", b"other".to_vec())
                .with_data("key-authorization", b"other.k".to_vec())
                .with_annotation(ANNOTATION_EXPIRES, rfc3339(SystemTime::now() + TOKEN_TTL));
            store
                .put(Kind::Http01, &token_object_name("mine"), &wrong, None)
                .await
                .unwrap();
            challenges.publish("live", "live.k").await.unwrap();

            assert_eq!(challenges.find("old").await, None);
            assert_eq!(challenges.find("mine").await, None);
            assert_eq!(
                challenges.collect_garbage(SystemTime::now()).await.unwrap(),
                1
            );
            let left: Vec<String> = store
                .list(Kind::Http01)
                .await
                .unwrap()
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            let mut expect = vec![token_object_name("mine"), token_object_name("live")];
            expect.sort();
            assert_eq!(left, expect);
        });
    }
}
