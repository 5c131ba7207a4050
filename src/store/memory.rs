//! In-memory [`Store`] and [`Locker`], for tests of the modules above the store (ACME
//! manager, challenges, resolver loading). Same semantics as the real backends, checked
//! by the same contract suite: compare-and-swap versions that never repeat, conflicts,
//! and lock expiry measured with tokio's clock (so a test that pauses time with tokio's
//! `test-util` feature controls expiry too).
//!
//! A watch is told of every write under the store's mutex, so it sees every version in
//! order; a small task per watch forwards into the bounded channel the trait hands out.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{
    BoxFuture, Change, Kind, Lease, LockError, Locker, Object, Store, StoreError, Stored, Version,
    WATCH_BUFFER, check, check_lock, check_object, conflict, new_holder_id, stale,
};

/// A [`Store`] and [`Locker`] that keeps everything in the process. Part of the
/// embedding API: a program embedding portico with nothing to share between
/// processes (one replica, certificates from the local CA or issued again at each
/// start) gives it to [`Server::bind_with`](crate::server::Server::bind_with); it is
/// also the backend the crate's own tests and the store contract suite run on.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Per kind, sorted by name so `list` needs no sort.
    objects: HashMap<Kind, BTreeMap<String, Stored>>,
    /// One counter for the whole store, like Kubernetes' resourceVersion: a re-created
    /// object never gets back a version it had before its delete.
    last_version: u64,
    locks: HashMap<String, Held>,
    /// Open watches; a closed one (its reader gone) is dropped at the next write.
    watchers: Vec<(Kind, mpsc::UnboundedSender<Change>)>,
}

impl Inner {
    fn notify(&mut self, kind: Kind, change: &Change) {
        self.watchers
            .retain(|(k, tx)| *k != kind || tx.send(change.clone()).is_ok());
    }
}

#[derive(Debug)]
struct Held {
    holder: String,
    ttl: Duration,
    renewed: Instant,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the mutex cannot leave `Inner` half-updated (every
        // mutation is a single insert or remove), so a poisoned mutex is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn get<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
        Box::pin(async move {
            check(kind, name)?;
            let inner = self.lock();
            Ok(inner.objects.get(&kind).and_then(|m| m.get(name)).cloned())
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
            let mut inner = self.lock();
            let current = inner.objects.get(&kind).and_then(|m| m.get(name));
            if current.map(|s| &s.version) != expected {
                return Err(conflict(kind, name));
            }
            inner.last_version += 1;
            let version = Version::new(inner.last_version.to_string());
            let stored = Stored {
                object: object.clone(),
                version: version.clone(),
            };
            inner
                .objects
                .entry(kind)
                .or_default()
                .insert(name.to_owned(), stored.clone());
            inner.notify(kind, &Change::Upsert(name.to_owned(), stored));
            Ok(version)
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
            let mut inner = self.lock();
            let Some(objects) = inner.objects.get_mut(&kind) else {
                return Ok(());
            };
            match (objects.get(name), expected) {
                (None, _) => Ok(()),
                (Some(s), Some(v)) if &s.version != v => Err(conflict(kind, name)),
                (Some(_), _) => {
                    objects.remove(name);
                    inner.notify(kind, &Change::Removed(name.to_owned()));
                    Ok(())
                }
            }
        })
    }

    fn list<'a>(&'a self, kind: Kind) -> BoxFuture<'a, Result<Vec<(String, Stored)>, StoreError>> {
        Box::pin(async move {
            let inner = self.lock();
            Ok(inner
                .objects
                .get(&kind)
                .map(|m| m.iter().map(|(n, s)| (n.clone(), s.clone())).collect())
                .unwrap_or_default())
        })
    }

    fn watch(&self, kind: Kind) -> mpsc::Receiver<Change> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let (changes_tx, mut changes) = mpsc::unbounded_channel();
        {
            // The snapshot and the registration happen under one lock: no write falls
            // between them.
            let mut inner = self.lock();
            for (name, stored) in inner.objects.get(&kind).into_iter().flatten() {
                let _ = changes_tx.send(Change::Upsert(name.clone(), stored.clone()));
            }
            inner.watchers.push((kind, changes_tx));
        }
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                if tx.send(change).await.is_err() {
                    return;
                }
            }
        });
        rx
    }
}

impl Locker for MemoryStore {
    fn try_acquire<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, LockError>> {
        Box::pin(async move {
            check_lock(name)?;
            let mut inner = self.lock();
            let now = Instant::now();
            if let Some(held) = inner.locks.get(name)
                && !stale(
                    name,
                    &held.holder,
                    now.saturating_duration_since(held.renewed),
                    held.ttl,
                )
            {
                return Ok(None);
            }
            let lease = Lease::new(name, new_holder_id(), ttl);
            inner.locks.insert(
                name.to_owned(),
                Held {
                    holder: lease.holder().to_owned(),
                    ttl,
                    renewed: now,
                },
            );
            Ok(Some(lease))
        })
    }

    fn renew<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), LockError>> {
        Box::pin(async move {
            check_lock(lease.name())?;
            let mut inner = self.lock();
            match inner.locks.get_mut(lease.name()) {
                Some(held) if held.holder == lease.holder() => {
                    held.renewed = Instant::now();
                    held.ttl = lease.ttl();
                    Ok(())
                }
                _ => Err(LockError::Lost {
                    name: lease.name().to_owned(),
                }),
            }
        })
    }

    fn release<'a>(&'a self, lease: Lease) -> BoxFuture<'a, Result<(), LockError>> {
        Box::pin(async move {
            check_lock(lease.name())?;
            let mut inner = self.lock();
            if inner
                .locks
                .get(lease.name())
                .is_some_and(|held| held.holder == lease.holder())
            {
                inner.locks.remove(lease.name());
            }
            Ok(())
        })
    }
}
