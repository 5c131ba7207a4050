//! The contract every [`Store`] and [`Locker`] backend meets, run against each of them,
//! then the file backend's own promises (permissions, `ca/root.pem`, several instances
//! and processes on one folder, crash leftovers).
//!
//! Adding a backend (Kubernetes against the fake API server, say) takes an
//! `async fn kube_backend() -> Backend` that starts what it needs and keeps it alive in
//! `Backend::keep`, and one line: `contract!(kube, kube_backend());`.
//!
//! Lock tests use short ttls and sleep *longer* than needed; they never assert that
//! something was fast, only what happened, so a slow machine cannot make them fail.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use portico::store::{
    self, Change, FileStore, Kind, LOCAL_CA, LockError, Locker, MemoryStore, NameError, Object,
    Store, StoreError, Version,
};
use tokio::sync::mpsc;

/// A backend under test.
pub struct Backend {
    pub store: Arc<dyn Store>,
    pub locker: Arc<dyn Locker>,
    /// Whatever must live as long as the backend: a temporary folder, a fake server.
    pub keep: Box<dyn Any + Send>,
}

async fn memory_backend() -> Backend {
    let memory = Arc::new(MemoryStore::new());
    Backend {
        store: memory.clone(),
        locker: memory,
        keep: Box::new(()),
    }
}

async fn file_backend() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let file = Arc::new(FileStore::open(dir.path().join("data")).unwrap());
    Backend {
        store: file.clone(),
        locker: file,
        keep: Box::new(dir),
    }
}

/// One `#[tokio::test]` per contract function, in a module named after the backend.
macro_rules! contract {
    ($backend:ident, $make:expr) => {
        contract!(@tests $backend, $make;
            get_missing_is_none,
            create_then_get_round_trips,
            create_twice_conflicts,
            put_with_stale_version_conflicts_and_keeps_data,
            put_with_current_version_replaces,
            put_with_a_version_on_a_missing_object_conflicts,
            versions_never_come_back_after_a_delete,
            delete_with_stale_version_conflicts,
            delete_with_current_version_removes,
            delete_missing_is_ok,
            list_returns_only_that_kind_sorted,
            concurrent_cas_has_one_winner_per_round,
            concurrent_increments_lose_nothing,
            invalid_names_are_refused,
            longest_names_work,
            lock_is_exclusive,
            locks_are_independent_by_name,
            release_then_acquire_again,
            stale_lock_is_taken_over,
            racing_for_a_stale_lock_has_one_winner,
            renew_keeps_the_lock_past_its_ttl,
            hold_keeps_the_lease_and_release_frees_it,
            hold_reports_a_lost_lease,
            dropping_the_guard_stops_renewing,
            objects_kubernetes_cannot_hold_are_refused,
            watch_lists_then_follows_changes,
            watch_of_an_empty_kind_sees_the_first_object,
            several_watchers_see_the_same_changes,
        );
    };
    (@tests $backend:ident, $make:expr; $($test:ident),* $(,)?) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let backend = $make.await;
                    contract::$test(&backend).await;
                }
            )*
        }
    };
}

contract!(memory, memory_backend());
contract!(file, file_backend());

fn cert(text: &str) -> Object {
    Object::new()
        .with_data("tls.crt", text.as_bytes().to_vec())
        .with_data("tls.key", b"\x00\x01binary key\xff".to_vec())
        .with_annotation("portico.dev/not-after", "2030-01-01T00:00:00Z")
}

fn counter(value: u64) -> Object {
    Object::new().with_data("n", value.to_string().into_bytes())
}

fn counter_value(object: &Object) -> u64 {
    std::str::from_utf8(object.get("n").unwrap())
        .unwrap()
        .parse()
        .unwrap()
}

fn is_conflict<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict { .. }))
}

/// Adds 1 to the counter `name` `times` times, re-reading after every conflict, and
/// returns how many writes it won.
pub async fn increment(store: &dyn Store, name: &str, times: u64) -> u64 {
    let mut won = 0;
    while won < times {
        let current = store.get(Kind::Certificate, name).await.unwrap().unwrap();
        let next = counter(counter_value(&current.object) + 1);
        match store
            .put(Kind::Certificate, name, &next, Some(&current.version))
            .await
        {
            Ok(_) => won += 1,
            Err(StoreError::Conflict { .. }) => tokio::task::yield_now().await,
            Err(e) => panic!("{e}"),
        }
    }
    won
}

/// Two stores on the same data (two instances, two replicas) must not lose an update
/// between them; with one store this checks its own tasks.
pub async fn increments_from(stores: &[Arc<dyn Store>]) {
    const TASKS: u64 = 8;
    const EACH: u64 = 10;
    stores[0]
        .put(Kind::Certificate, "counter", &counter(0), None)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let store = stores[i as usize % stores.len()].clone();
            tokio::spawn(async move { increment(&*store, "counter", EACH).await })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        won += task.await.unwrap();
    }
    assert_eq!(won, TASKS * EACH);
    for store in stores {
        let end = store
            .get(Kind::Certificate, "counter")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(counter_value(&end.object), TASKS * EACH);
    }
}

/// The next change a watch reports. The timeout is only a failure guard: the file
/// backend polls every couple of seconds.
pub async fn next_change(rx: &mut mpsc::Receiver<Change>) -> Change {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("a change is reported")
        .expect("the watch is still open")
}

/// Names and versions of the first `n` changes, all of which must be upserts.
pub async fn upserts(rx: &mut mpsc::Receiver<Change>, n: usize) -> Vec<(String, Version)> {
    let mut seen = Vec::new();
    for _ in 0..n {
        match next_change(rx).await {
            Change::Upsert(name, stored) => seen.push((name, stored.version)),
            other => panic!("expected an upsert, got {other:?}"),
        }
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    seen
}

mod contract {
    use super::*;

    const TTL: Duration = Duration::from_millis(300);

    pub async fn get_missing_is_none(b: &Backend) {
        for kind in Kind::ALL {
            assert_eq!(b.store.get(kind, "missing").await.unwrap(), None);
        }
    }

    pub async fn create_then_get_round_trips(b: &Backend) {
        let mut object = cert("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
            .with_data("all-bytes", (0..=255).collect::<Vec<u8>>())
            .with_data("crlf", b"a\r\nb".to_vec())
            .with_data("empty", Vec::new())
            .with_data("quotes", "'''\"\"\"\\ é".as_bytes().to_vec());
        object
            .annotations
            .insert("cert-manager.io/alt-names".into(), "a.test,b.test".into());
        for kind in Kind::ALL {
            let version = b
                .store
                .put(kind, "example.com", &object, None)
                .await
                .unwrap();
            let stored = b.store.get(kind, "example.com").await.unwrap().unwrap();
            assert_eq!(stored.object, object, "{kind}");
            assert_eq!(stored.version, version, "{kind}");
        }
        let empty = Object::new();
        b.store
            .put(Kind::Http01, "empty", &empty, None)
            .await
            .unwrap();
        let stored = b.store.get(Kind::Http01, "empty").await.unwrap().unwrap();
        assert_eq!(stored.object, empty);
    }

    pub async fn create_twice_conflicts(b: &Backend) {
        b.store
            .put(Kind::Account, "acct", &cert("one"), None)
            .await
            .unwrap();
        let second = b.store.put(Kind::Account, "acct", &cert("two"), None).await;
        assert!(is_conflict(&second), "{second:?}");
        let stored = b.store.get(Kind::Account, "acct").await.unwrap().unwrap();
        assert_eq!(stored.object, cert("one"));
    }

    pub async fn put_with_stale_version_conflicts_and_keeps_data(b: &Backend) {
        let v1 = b
            .store
            .put(Kind::Certificate, "c", &cert("one"), None)
            .await
            .unwrap();
        let v2 = b
            .store
            .put(Kind::Certificate, "c", &cert("two"), Some(&v1))
            .await
            .unwrap();
        let stale = b
            .store
            .put(Kind::Certificate, "c", &cert("three"), Some(&v1))
            .await;
        assert!(is_conflict(&stale), "{stale:?}");
        let made_up = Version::new("no-such-version");
        let stale = b
            .store
            .put(Kind::Certificate, "c", &cert("three"), Some(&made_up))
            .await;
        assert!(is_conflict(&stale), "{stale:?}");
        let stored = b.store.get(Kind::Certificate, "c").await.unwrap().unwrap();
        assert_eq!(stored.object, cert("two"));
        assert_eq!(stored.version, v2);
    }

    pub async fn put_with_current_version_replaces(b: &Backend) {
        let v1 = b
            .store
            .put(Kind::Certificate, "c", &cert("one"), None)
            .await
            .unwrap();
        let v2 = b
            .store
            .put(Kind::Certificate, "c", &cert("two"), Some(&v1))
            .await
            .unwrap();
        assert_ne!(v1, v2);
        // Writing the same content again is still a new version: it proves a write.
        let v3 = b
            .store
            .put(Kind::Certificate, "c", &cert("two"), Some(&v2))
            .await
            .unwrap();
        assert_ne!(v2, v3);
        assert_ne!(v1, v3);
        let stored = b.store.get(Kind::Certificate, "c").await.unwrap().unwrap();
        assert_eq!(stored.object, cert("two"));
        assert_eq!(stored.version, v3);
    }

    pub async fn put_with_a_version_on_a_missing_object_conflicts(b: &Backend) {
        let v = b
            .store
            .put(Kind::Certificate, "c", &cert("one"), None)
            .await
            .unwrap();
        b.store.delete(Kind::Certificate, "c", None).await.unwrap();
        let r = b
            .store
            .put(Kind::Certificate, "c", &cert("two"), Some(&v))
            .await;
        assert!(is_conflict(&r), "{r:?}");
        assert_eq!(b.store.get(Kind::Certificate, "c").await.unwrap(), None);
    }

    pub async fn versions_never_come_back_after_a_delete(b: &Backend) {
        let old = b
            .store
            .put(Kind::Http01, "t", &cert("one"), None)
            .await
            .unwrap();
        b.store.delete(Kind::Http01, "t", Some(&old)).await.unwrap();
        let new = b
            .store
            .put(Kind::Http01, "t", &cert("one"), None)
            .await
            .unwrap();
        assert_ne!(old, new);
        let r = b
            .store
            .put(Kind::Http01, "t", &cert("two"), Some(&old))
            .await;
        assert!(is_conflict(&r), "{r:?}");
        let r = b.store.delete(Kind::Http01, "t", Some(&old)).await;
        assert!(is_conflict(&r), "{r:?}");
    }

    pub async fn delete_with_stale_version_conflicts(b: &Backend) {
        let v1 = b
            .store
            .put(Kind::Account, "a", &cert("one"), None)
            .await
            .unwrap();
        b.store
            .put(Kind::Account, "a", &cert("two"), Some(&v1))
            .await
            .unwrap();
        let r = b.store.delete(Kind::Account, "a", Some(&v1)).await;
        assert!(is_conflict(&r), "{r:?}");
        let stored = b.store.get(Kind::Account, "a").await.unwrap().unwrap();
        assert_eq!(stored.object, cert("two"));
    }

    pub async fn delete_with_current_version_removes(b: &Backend) {
        let v = b
            .store
            .put(Kind::Account, "a", &cert("one"), None)
            .await
            .unwrap();
        b.store.delete(Kind::Account, "a", Some(&v)).await.unwrap();
        assert_eq!(b.store.get(Kind::Account, "a").await.unwrap(), None);
        b.store
            .put(Kind::Account, "b", &cert("one"), None)
            .await
            .unwrap();
        b.store.delete(Kind::Account, "b", None).await.unwrap();
        assert_eq!(b.store.get(Kind::Account, "b").await.unwrap(), None);
    }

    pub async fn delete_missing_is_ok(b: &Backend) {
        b.store.delete(Kind::Http01, "missing", None).await.unwrap();
        let any = Version::new("1");
        b.store
            .delete(Kind::Http01, "missing", Some(&any))
            .await
            .unwrap();
    }

    pub async fn list_returns_only_that_kind_sorted(b: &Backend) {
        for name in ["zeta.test", "alpha.test", "mid.test"] {
            b.store
                .put(Kind::Certificate, name, &cert(name), None)
                .await
                .unwrap();
        }
        b.store
            .put(Kind::Account, "acct", &cert("acct"), None)
            .await
            .unwrap();
        b.store
            .put(Kind::Ca, LOCAL_CA, &cert("ca"), None)
            .await
            .unwrap();

        let certs = b.store.list(Kind::Certificate).await.unwrap();
        let names: Vec<_> = certs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["alpha.test", "mid.test", "zeta.test"]);
        for (name, stored) in &certs {
            assert_eq!(stored.object, cert(name));
            let got = b.store.get(Kind::Certificate, name).await.unwrap().unwrap();
            assert_eq!(&got, stored);
        }
        let accounts = b.store.list(Kind::Account).await.unwrap();
        assert_eq!(accounts.len(), 1);
        assert_eq!(accounts[0].0, "acct");
        let cas = b.store.list(Kind::Ca).await.unwrap();
        let names: Vec<_> = cas.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [LOCAL_CA]);
        assert!(b.store.list(Kind::Http01).await.unwrap().is_empty());
    }

    pub async fn concurrent_cas_has_one_winner_per_round(b: &Backend) {
        const TASKS: usize = 8;
        b.store
            .put(Kind::Certificate, "race", &counter(0), None)
            .await
            .unwrap();
        for round in 1..=5 {
            let seen = b
                .store
                .get(Kind::Certificate, "race")
                .await
                .unwrap()
                .unwrap();
            let tasks: Vec<_> = (0..TASKS)
                .map(|i| {
                    let (store, version) = (b.store.clone(), seen.version.clone());
                    tokio::spawn(async move {
                        let object = counter((round * 100 + i) as u64);
                        let r = store
                            .put(Kind::Certificate, "race", &object, Some(&version))
                            .await;
                        (object, r)
                    })
                })
                .collect();
            let mut winners = Vec::new();
            for task in tasks {
                match task.await.unwrap() {
                    (object, Ok(version)) => winners.push((object, version)),
                    (_, r) => assert!(is_conflict(&r), "{r:?}"),
                }
            }
            assert_eq!(winners.len(), 1, "round {round}");
            let now = b
                .store
                .get(Kind::Certificate, "race")
                .await
                .unwrap()
                .unwrap();
            assert_eq!((now.object, now.version), winners.pop().unwrap());
        }
    }

    pub async fn concurrent_increments_lose_nothing(b: &Backend) {
        increments_from(std::slice::from_ref(&b.store)).await;
    }

    pub async fn invalid_names_are_refused(b: &Backend) {
        let long = "a".repeat(254);
        let bad = [
            "", ".", "..", "../x", "a/b", "/abs", "UPPER", "a b", "a_b", "-a", "a-", ".hidden",
            "a\0b", "é", &long,
        ];
        let object = cert("x");
        for name in bad {
            let invalid = |e: StoreError| matches!(e, StoreError::InvalidName { .. });
            assert!(
                invalid(b.store.get(Kind::Certificate, name).await.unwrap_err()),
                "{name:?}"
            );
            assert!(
                invalid(
                    b.store
                        .put(Kind::Certificate, name, &object, None)
                        .await
                        .unwrap_err()
                ),
                "{name:?}"
            );
            assert!(
                invalid(
                    b.store
                        .delete(Kind::Certificate, name, None)
                        .await
                        .unwrap_err()
                ),
                "{name:?}"
            );
            let e = b.locker.try_acquire(name, TTL).await.unwrap_err();
            assert!(matches!(e, LockError::InvalidName { .. }), "{name:?}: {e}");
            let forged = store::Lease::new(name, "someone", TTL);
            let e = b.locker.renew(&forged).await.unwrap_err();
            assert!(matches!(e, LockError::InvalidName { .. }), "{name:?}: {e}");
            let e = b.locker.release(forged).await.unwrap_err();
            assert!(matches!(e, LockError::InvalidName { .. }), "{name:?}: {e}");
        }
        // Reserved in every backend: the file backend's public copy of the CA root.
        let e = b
            .store
            .put(Kind::Ca, "root.pem", &object, None)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::InvalidName {
                    reason: NameError::Reserved,
                    ..
                }
            ),
            "{e}"
        );
        // The message names the kind and the name, so the log says what was refused.
        let e = b.store.get(Kind::Account, "Bad/Name").await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("account") && text.contains("Bad/Name"),
            "{text}"
        );
        // Nothing was created along the way.
        for kind in Kind::ALL {
            assert!(b.store.list(kind).await.unwrap().is_empty(), "{kind}");
        }
    }

    pub async fn longest_names_work(b: &Backend) {
        for kind in Kind::ALL {
            let too_long = "a".repeat(store::max_name_len(kind) + 1);
            let e = b.store.get(kind, &too_long).await.unwrap_err();
            assert!(matches!(e, StoreError::InvalidName { .. }), "{e}");
        }
        let name = "a".repeat(store::max_name_len(Kind::Certificate));
        let v = b
            .store
            .put(Kind::Certificate, &name, &cert("x"), None)
            .await
            .unwrap();
        let got = b
            .store
            .get(Kind::Certificate, &name)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.version, v);
        assert_eq!(b.store.list(Kind::Certificate).await.unwrap()[0].0, name);
        b.store
            .delete(Kind::Certificate, &name, Some(&v))
            .await
            .unwrap();

        let lock = "b".repeat(store::MAX_LOCK_NAME_LEN);
        let lease = b.locker.try_acquire(&lock, TTL).await.unwrap().unwrap();
        b.locker.renew(&lease).await.unwrap();
        b.locker.release(lease).await.unwrap();
        let too_long = "b".repeat(store::MAX_LOCK_NAME_LEN + 1);
        let e = b.locker.try_acquire(&too_long, TTL).await.unwrap_err();
        assert!(matches!(e, LockError::InvalidName { .. }), "{e}");
    }

    pub async fn lock_is_exclusive(b: &Backend) {
        let ttl = Duration::from_secs(60);
        let lease = b
            .locker
            .try_acquire("portico-acme-1", ttl)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lease.name(), "portico-acme-1");
        assert_eq!(lease.ttl(), ttl);
        // Not re-entrant: the same process asking again is another holder.
        assert_eq!(
            b.locker.try_acquire("portico-acme-1", ttl).await.unwrap(),
            None
        );
        b.locker.renew(&lease).await.unwrap();
        assert_eq!(
            b.locker.try_acquire("portico-acme-1", ttl).await.unwrap(),
            None
        );
    }

    pub async fn locks_are_independent_by_name(b: &Backend) {
        let ttl = Duration::from_secs(60);
        let one = b.locker.try_acquire("one", ttl).await.unwrap().unwrap();
        let two = b.locker.try_acquire("two", ttl).await.unwrap().unwrap();
        assert_ne!(one.holder(), two.holder());
        b.locker.release(one).await.unwrap();
        assert_eq!(b.locker.try_acquire("two", ttl).await.unwrap(), None);
        b.locker.renew(&two).await.unwrap();
    }

    pub async fn release_then_acquire_again(b: &Backend) {
        let ttl = Duration::from_secs(60);
        let first = b.locker.try_acquire("l", ttl).await.unwrap().unwrap();
        b.locker.release(first.clone()).await.unwrap();
        let second = b.locker.try_acquire("l", ttl).await.unwrap().unwrap();
        assert_ne!(first.holder(), second.holder());
        // The first holder's lease is gone: renewing it must not revive it.
        let e = b.locker.renew(&first).await.unwrap_err();
        assert!(matches!(e, LockError::Lost { .. }), "{e}");
        // Releasing twice is harmless and leaves the second holder alone.
        b.locker.release(first).await.unwrap();
        assert_eq!(b.locker.try_acquire("l", ttl).await.unwrap(), None);
        b.locker.renew(&second).await.unwrap();
    }

    pub async fn stale_lock_is_taken_over(b: &Backend) {
        let old = b.locker.try_acquire("l", TTL).await.unwrap().unwrap();
        tokio::time::sleep(TTL + TTL / 2).await;
        let new = b
            .locker
            .try_acquire("l", Duration::from_secs(60))
            .await
            .unwrap()
            .expect("a lock not renewed within its ttl is taken over");
        assert_ne!(old.holder(), new.holder());
        let e = b.locker.renew(&old).await.unwrap_err();
        assert!(
            matches!(e, LockError::Lost { ref name } if name == "l"),
            "{e}"
        );
        // The old holder letting go must not free the new holder's lock.
        b.locker.release(old).await.unwrap();
        assert_eq!(
            b.locker
                .try_acquire("l", Duration::from_secs(60))
                .await
                .unwrap(),
            None
        );
        b.locker.renew(&new).await.unwrap();
    }

    pub async fn racing_for_a_stale_lock_has_one_winner(b: &Backend) {
        let stale = b
            .locker
            .try_acquire("l", Duration::from_millis(1))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let locker = b.locker.clone();
                tokio::spawn(async move {
                    locker
                        .try_acquire("l", Duration::from_secs(60))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut winners = 0;
        for task in tasks {
            winners += usize::from(task.await.unwrap().is_some());
        }
        assert_eq!(winners, 1);
        assert!(b.locker.renew(&stale).await.is_err());
    }

    pub async fn renew_keeps_the_lock_past_its_ttl(b: &Backend) {
        // Not shorter: a lock's time is taken before its write, so a slow fsync eats
        // into it.
        let ttl = Duration::from_secs(1);
        let lease = b.locker.try_acquire("l", ttl).await.unwrap().unwrap();
        // Four renews a third of a ttl apart: more than a ttl in all. Each check comes
        // right after a renew, so a slow machine only makes the gaps longer, never the
        // test wrong (a lock that went stale unobserved is still renewed by its holder).
        for _ in 0..4 {
            tokio::time::sleep(ttl / 3).await;
            b.locker.renew(&lease).await.unwrap();
            assert_eq!(b.locker.try_acquire("l", ttl).await.unwrap(), None);
        }
    }

    pub async fn hold_keeps_the_lease_and_release_frees_it(b: &Backend) {
        // The guard counts a lease as lost when a renew takes longer than 2/3 of the
        // ttl; a busy disk can fsync that slowly, so this ttl is not short.
        let ttl = Duration::from_secs(2);
        let lease = b.locker.try_acquire("held", ttl).await.unwrap().unwrap();
        let guard = store::hold(b.locker.clone(), lease.clone());
        assert_eq!(guard.lease(), &lease);
        tokio::time::sleep(ttl * 3 / 2).await;
        assert!(!guard.is_lost());
        assert_eq!(b.locker.try_acquire("held", ttl).await.unwrap(), None);
        guard.release().await.unwrap();
        assert!(b.locker.try_acquire("held", ttl).await.unwrap().is_some());
    }

    pub async fn hold_reports_a_lost_lease(b: &Backend) {
        let lease = b.locker.try_acquire("held", TTL).await.unwrap().unwrap();
        let guard = store::hold(b.locker.clone(), lease.clone());
        let mut lost = guard.lost();
        // Someone else ends up with the lock (here: it is released behind the guard's
        // back and taken), so the guard's next renew fails.
        b.locker.release(lease).await.unwrap();
        let thief = b
            .locker
            .try_acquire("held", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), lost.wait_for(|l| *l))
            .await
            .expect("the loss is reported")
            .unwrap();
        assert!(guard.is_lost());
        guard.release().await.unwrap();
        assert_eq!(
            b.locker
                .try_acquire("held", Duration::from_secs(60))
                .await
                .unwrap(),
            None
        );
        b.locker.renew(&thief).await.unwrap();
    }

    pub async fn objects_kubernetes_cannot_hold_are_refused(b: &Backend) {
        let bad = [
            Object::new().with_data("a/b", b"x".to_vec()),
            Object::new().with_data("", b"x".to_vec()),
            Object::new().with_annotation("example.com/owner", "team"),
            Object::new().with_annotation("portico.dev/", "x"),
        ];
        for object in bad {
            let e = b
                .store
                .put(Kind::Certificate, "c", &object, None)
                .await
                .unwrap_err();
            assert!(matches!(e, StoreError::InvalidObject { .. }), "{e}");
        }
        assert_eq!(b.store.get(Kind::Certificate, "c").await.unwrap(), None);
    }

    pub async fn watch_lists_then_follows_changes(b: &Backend) {
        let v_a = b
            .store
            .put(Kind::Certificate, "a.test", &cert("a"), None)
            .await
            .unwrap();
        let v_b = b
            .store
            .put(Kind::Certificate, "b.test", &cert("b"), None)
            .await
            .unwrap();
        b.store
            .put(Kind::Account, "not-a-cert", &cert("x"), None)
            .await
            .unwrap();
        let mut rx = b.store.watch(Kind::Certificate);
        assert_eq!(
            upserts(&mut rx, 2).await,
            [
                ("a.test".to_owned(), v_a.clone()),
                ("b.test".to_owned(), v_b)
            ]
        );

        // Each step waits for its change, so nothing can be coalesced.
        let v_c = b
            .store
            .put(Kind::Certificate, "c.test", &cert("c"), None)
            .await
            .unwrap();
        match next_change(&mut rx).await {
            Change::Upsert(name, stored) => {
                assert_eq!(name, "c.test");
                assert_eq!(stored.object, cert("c"));
                assert_eq!(stored.version, v_c);
            }
            other => panic!("{other:?}"),
        }
        let v_a2 = b
            .store
            .put(Kind::Certificate, "a.test", &cert("a2"), Some(&v_a))
            .await
            .unwrap();
        match next_change(&mut rx).await {
            Change::Upsert(name, stored) => {
                assert_eq!(name, "a.test");
                assert_eq!(stored.object, cert("a2"));
                assert_eq!(stored.version, v_a2);
            }
            other => panic!("{other:?}"),
        }
        b.store
            .delete(Kind::Certificate, "b.test", None)
            .await
            .unwrap();
        assert_eq!(
            next_change(&mut rx).await,
            Change::Removed("b.test".to_owned())
        );
        // Other kinds never show up; the next change is this one.
        b.store
            .put(Kind::Account, "other", &cert("x"), None)
            .await
            .unwrap();
        b.store
            .delete(Kind::Certificate, "c.test", None)
            .await
            .unwrap();
        assert_eq!(
            next_change(&mut rx).await,
            Change::Removed("c.test".to_owned())
        );
    }

    pub async fn watch_of_an_empty_kind_sees_the_first_object(b: &Backend) {
        let mut rx = b.store.watch(Kind::Http01);
        let v = b
            .store
            .put(Kind::Http01, "token", &Object::new(), None)
            .await
            .unwrap();
        // Whether the watch's first listing saw it or not, it is reported once.
        assert_eq!(upserts(&mut rx, 1).await, [("token".to_owned(), v)]);
        b.store.delete(Kind::Http01, "token", None).await.unwrap();
        assert_eq!(
            next_change(&mut rx).await,
            Change::Removed("token".to_owned())
        );
    }

    pub async fn several_watchers_see_the_same_changes(b: &Backend) {
        let v0 = b
            .store
            .put(Kind::Ca, LOCAL_CA, &cert("ca"), None)
            .await
            .unwrap();
        let mut one = b.store.watch(Kind::Ca);
        let mut two = b.store.watch(Kind::Ca);
        let dropped = b.store.watch(Kind::Ca);
        drop(dropped);
        for rx in [&mut one, &mut two] {
            assert_eq!(upserts(rx, 1).await, [(LOCAL_CA.to_owned(), v0.clone())]);
        }
        let v1 = b
            .store
            .put(Kind::Ca, "other-ca", &cert("other"), None)
            .await
            .unwrap();
        for rx in [&mut one, &mut two] {
            assert_eq!(upserts(rx, 1).await, [("other-ca".to_owned(), v1.clone())]);
        }
        // A reader that goes away does not stop the others.
        drop(one);
        b.store
            .delete(Kind::Ca, "other-ca", Some(&v1))
            .await
            .unwrap();
        assert_eq!(
            next_change(&mut two).await,
            Change::Removed("other-ca".to_owned())
        );
    }

    pub async fn dropping_the_guard_stops_renewing(b: &Backend) {
        let lease = b.locker.try_acquire("held", TTL).await.unwrap().unwrap();
        drop(store::hold(b.locker.clone(), lease));
        tokio::time::sleep(TTL * 4).await;
        assert!(b.locker.try_acquire("held", TTL).await.unwrap().is_some());
    }
}

/// What only the file backend promises.
mod file_only {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn folders_are_0700_and_files_0600() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("nested/data");
        let store = FileStore::open(&root).unwrap();
        for kind in Kind::ALL {
            store.put(kind, LOCAL_CA, &cert("x"), None).await.unwrap();
        }
        let lease = store
            .try_acquire("l", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        store.renew(&lease).await.unwrap();

        let mut seen = 0;
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            assert_eq!(mode(&dir), 0o700, "{}", dir.display());
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path == FileStore::root_pem_path(&root) {
                    assert_eq!(mode(&path), 0o644, "{}", path.display());
                } else {
                    assert_eq!(mode(&path), 0o600, "{}", path.display());
                    seen += 1;
                }
            }
        }
        // Four objects and a lock at least (plus the guard files).
        assert!(seen >= 5, "{seen}");
    }

    #[tokio::test]
    async fn an_open_folder_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        FileStore::open(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
    }

    #[tokio::test]
    async fn the_local_ca_root_is_published_as_pem() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let root_pem = FileStore::root_pem_path(dir.path());
        assert_eq!(root_pem, dir.path().join("ca/root.pem"));
        assert!(!root_pem.exists());

        let pem1 = "-----BEGIN CERTIFICATE-----\nONE\n-----END CERTIFICATE-----\n";
        let v1 = store
            .put(Kind::Ca, LOCAL_CA, &cert(pem1), None)
            .await
            .unwrap();
        assert_eq!(fs::read_to_string(&root_pem).unwrap(), pem1);
        assert_eq!(mode(&root_pem), 0o644);

        let pem2 = "-----BEGIN CERTIFICATE-----\nTWO\n-----END CERTIFICATE-----\n";
        let v2 = store
            .put(Kind::Ca, LOCAL_CA, &cert(pem2), Some(&v1))
            .await
            .unwrap();
        assert_eq!(fs::read_to_string(&root_pem).unwrap(), pem2);
        // The key never leaves the 0600 object file.
        assert!(
            !fs::read_to_string(&root_pem)
                .unwrap()
                .contains("binary key")
        );

        // Another CA object does not touch the published root.
        store
            .put(Kind::Ca, "other-ca", &cert("other"), None)
            .await
            .unwrap();
        assert_eq!(fs::read_to_string(&root_pem).unwrap(), pem2);

        // A crash between the two writes is repaired when the folder is opened.
        fs::remove_file(&root_pem).unwrap();
        FileStore::open(dir.path()).unwrap();
        assert_eq!(fs::read_to_string(&root_pem).unwrap(), pem2);

        store.delete(Kind::Ca, LOCAL_CA, Some(&v2)).await.unwrap();
        assert!(!root_pem.exists());
        let cas = store.list(Kind::Ca).await.unwrap();
        assert_eq!(cas.len(), 1);
        assert_eq!(cas[0].0, "other-ca");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_instances_on_one_folder_share_objects_and_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let a = Arc::new(FileStore::open(dir.path()).unwrap());
        let b = Arc::new(FileStore::open(dir.path()).unwrap());

        let v1 = a
            .put(Kind::Certificate, "c", &cert("one"), None)
            .await
            .unwrap();
        let seen = b.get(Kind::Certificate, "c").await.unwrap().unwrap();
        assert_eq!((&seen.object, &seen.version), (&cert("one"), &v1));
        assert!(is_conflict(
            &b.put(Kind::Certificate, "c", &cert("x"), None).await
        ));

        b.put(Kind::Certificate, "c", &cert("two"), Some(&v1))
            .await
            .unwrap();
        assert!(is_conflict(
            &a.put(Kind::Certificate, "c", &cert("three"), Some(&v1))
                .await
        ));
        assert_eq!(
            a.list(Kind::Certificate).await.unwrap()[0].1.object,
            cert("two")
        );

        let lease = a
            .try_acquire("l", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            b.try_acquire("l", Duration::from_secs(60)).await.unwrap(),
            None
        );
        b.release(lease.clone()).await.unwrap(); // b may release a's lease: same lock
        assert!(
            b.try_acquire("l", Duration::from_secs(60))
                .await
                .unwrap()
                .is_some()
        );
        assert!(a.renew(&lease).await.is_err());

        increments_from(&[a as Arc<dyn Store>, b]).await;
    }

    /// The child half of the cross-process tests: does nothing unless started by them.
    #[test]
    #[ignore = "started as a child process by the cross_process tests"]
    fn child() {
        let Ok(dir) = std::env::var("PORTICO_STORE_TEST_DIR") else {
            return;
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let store = FileStore::open(&dir).unwrap();
            match std::env::var("PORTICO_STORE_TEST_MODE").unwrap().as_str() {
                "increment" => {
                    increment(&store, "counter", 20).await;
                }
                "acquire" => {
                    let lease = store.try_acquire("race", Duration::from_secs(60)).await;
                    if lease.unwrap().is_some() {
                        println!("ACQUIRED");
                    }
                }
                other => panic!("unknown mode {other}"),
            }
        });
    }

    fn run_children(dir: &Path, mode: &str, count: usize) -> Vec<String> {
        let children: Vec<_> = (0..count)
            .map(|_| {
                std::process::Command::new(std::env::current_exe().unwrap())
                    .args(["--ignored", "--exact", "file_only::child", "--nocapture"])
                    .env("PORTICO_STORE_TEST_DIR", dir)
                    .env("PORTICO_STORE_TEST_MODE", mode)
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        children
            .into_iter()
            .map(|child| {
                let out = child.wait_with_output().unwrap();
                assert!(out.status.success(), "child failed: {:?}", out.status);
                String::from_utf8(out.stdout).unwrap()
            })
            .collect()
    }

    #[tokio::test]
    async fn cross_process_cas_loses_no_update() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store
            .put(Kind::Certificate, "counter", &counter(0), None)
            .await
            .unwrap();
        let path = dir.path().to_owned();
        tokio::task::spawn_blocking(move || run_children(&path, "increment", 3))
            .await
            .unwrap();
        let end = store
            .get(Kind::Certificate, "counter")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(counter_value(&end.object), 60);
    }

    #[tokio::test]
    async fn cross_process_race_for_a_stale_lock_has_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store
            .try_acquire("race", Duration::from_millis(1))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let path = dir.path().to_owned();
        let outputs = tokio::task::spawn_blocking(move || run_children(&path, "acquire", 4))
            .await
            .unwrap();
        let winners = outputs.iter().filter(|o| o.contains("ACQUIRED")).count();
        assert_eq!(winners, 1, "{outputs:?}");
    }

    #[tokio::test]
    async fn a_crashed_write_is_ignored_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let v = store
            .put(Kind::Certificate, "c", &cert("one"), None)
            .await
            .unwrap();

        // What a crash between create and rename leaves: a half-written temporary file.
        let certs = dir.path().join("certificate");
        let fresh = certs.join(".tmp-00000000000000aa");
        let old = certs.join(".tmp-00000000000000bb");
        for path in [&fresh, &old] {
            fs::write(path, "# portico store object\nformat = 1\nversion = \"2-").unwrap();
        }
        let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();

        let listed = store.list(Kind::Certificate).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, "c");
        let got = store.get(Kind::Certificate, "c").await.unwrap().unwrap();
        assert_eq!((got.object, got.version), (cert("one"), v.clone()));
        store
            .put(Kind::Certificate, "c", &cert("two"), Some(&v))
            .await
            .unwrap();

        // Opening again removes the old leftover, but not one that may be a write in
        // progress in another process.
        FileStore::open(dir.path()).unwrap();
        assert!(!old.exists());
        assert!(fresh.exists());
    }

    #[tokio::test]
    async fn a_corrupt_object_is_an_error_that_does_not_leak_it_and_can_be_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let path = dir.path().join("account/acct");
        fs::write(&path, "-----BEGIN PRIVATE KEY-----\nSECRETSECRET\n").unwrap();

        let e = store.get(Kind::Account, "acct").await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(!text.contains("SECRET"), "{text}");
        let e = store.list(Kind::Account).await.unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        // A replace needs the version it cannot read; a plain delete clears the way.
        let e = store
            .put(Kind::Account, "acct", &cert("x"), Some(&Version::new("1")))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert!(is_conflict(
            &store.put(Kind::Account, "acct", &cert("x"), None).await
        ));
        store.delete(Kind::Account, "acct", None).await.unwrap();
        store
            .put(Kind::Account, "acct", &cert("x"), None)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn an_unreadable_lock_file_is_judged_by_its_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let path = dir.path().join("locks/l.lock");
        fs::write(&path, "garbage").unwrap();
        let ttl = Duration::from_secs(60);
        assert_eq!(store.try_acquire("l", ttl).await.unwrap(), None);
        let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        assert!(store.try_acquire("l", ttl).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn objects_are_stored_in_one_readable_file_each() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        store
            .put(Kind::Certificate, "example.com", &cert(pem), None)
            .await
            .unwrap();
        let text = fs::read_to_string(dir.path().join("certificate/example.com")).unwrap();
        assert!(
            text.contains("-----BEGIN CERTIFICATE-----\nMIIB\n"),
            "{text}"
        );
        assert!(text.contains("portico.dev/not-after"), "{text}");
        // The binary key is hex, not raw bytes.
        assert!(text.contains("0001"), "{text}");
    }
}
