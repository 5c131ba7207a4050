//! The contract every [`Store`] and [`Locker`] backend meets, run against each of them,
//! then the file backend's own promises (permissions, `ca/root.pem`, several instances
//! and processes on one folder, crash leftovers).
//!
//! Adding a backend takes an `async fn backend(test: &str) -> Backend` that starts what
//! it needs and keeps it alive in `Backend::keep`, and one line: `contract!(name,
//! backend);`. The Kubernetes backend runs against a real kube-apiserver and etcd
//! (`common::control_plane`, one per test binary), one namespace per test, signed in as
//! a replica bound to nothing but the shipped Role.
//!
//! Lock tests use short ttls and sleep *longer* than needed; they never assert that
//! something was fast, only what happened, so a slow machine cannot make them fail.

use portico_test_support as common;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use common::control_plane::{Namespace, control_plane};

use portico::store::{
    self, Change, FileStore, Kind, KubeStore, LOCAL_CA, Lease, LockError, Locker, MemoryStore,
    NameError, Object, Store, StoreError, Version,
};
use tokio::sync::mpsc;

/// Takes lock `name`, which must be free; the lease.
async fn acquire(locker: &dyn Locker, name: &str, ttl: Duration) -> Lease {
    match locker.try_acquire(name, ttl).await {
        Ok(Some(lease)) => lease,
        other => panic!("lock {name} was not acquired: {other:?}"),
    }
}

/// Lock `name` is held by someone else: not acquired, and no error.
async fn refused(locker: &dyn Locker, name: &str, ttl: Duration) {
    match locker.try_acquire(name, ttl).await {
        Ok(None) => {}
        other => panic!("lock {name} was not refused: {other:?}"),
    }
}

/// A backend under test.
pub struct Backend {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Its locker.
    pub locker: Arc<dyn Locker>,
    /// Whatever must live as long as the backend: a temporary folder, a namespace.
    pub keep: Box<dyn Any + Send>,
}

async fn memory_backend(_test: &str) -> Backend {
    let memory = Arc::new(MemoryStore::new());
    Backend {
        store: memory.clone(),
        locker: memory,
        keep: Box::new(()),
    }
}

async fn file_backend(_test: &str) -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let file = Arc::new(FileStore::open(dir.path().join("data")).unwrap());
    Backend {
        store: file.clone(),
        locker: file,
        keep: Box::new(dir),
    }
}

/// A Kubernetes backend in a fresh namespace of the real API server, with the namespace
/// and the folder of its kubeconfig kept alive.
async fn kube_backend(test: &str) -> Backend {
    let ns = control_plane().namespace(test);
    let dir = tempfile::tempdir().unwrap();
    let kube = Arc::new(replica(&ns, dir.path(), "portico", None).await);
    Backend {
        store: kube.clone(),
        locker: kube,
        keep: Box::new((ns, dir)),
    }
}

/// One replica: its own identity and its own kubeconfig, whose context names the test's
/// namespace; straight to the API server, or through `server` (a front).
async fn replica(
    ns: &Namespace,
    dir: &std::path::Path,
    who: &str,
    server: Option<&str>,
) -> KubeStore {
    let kubeconfig = ns.kubeconfig_via(dir, who, server.unwrap_or(ns.plane().url()));
    let store = KubeStore::from_kubeconfig(&kubeconfig, None).await.unwrap();
    assert_eq!(store.namespace(), ns.name);
    store
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
                    let backend = $make(stringify!($test)).await;
                    contract::$test(&backend).await;
                }
            )*
        }
    };
}

contract!(memory, memory_backend);
contract!(file, file_backend);
contract!(kube, kube_backend);

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

    pub(crate) async fn get_missing_is_none(b: &Backend) {
        for kind in Kind::ALL {
            assert_eq!(b.store.get(kind, "missing").await.unwrap(), None);
        }
    }

    pub(crate) async fn create_then_get_round_trips(b: &Backend) {
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

    pub(crate) async fn create_twice_conflicts(b: &Backend) {
        b.store
            .put(Kind::Account, "acct", &cert("one"), None)
            .await
            .unwrap();
        let second = b.store.put(Kind::Account, "acct", &cert("two"), None).await;
        assert!(is_conflict(&second), "{second:?}");
        let stored = b.store.get(Kind::Account, "acct").await.unwrap().unwrap();
        assert_eq!(stored.object, cert("one"));
    }

    pub(crate) async fn put_with_stale_version_conflicts_and_keeps_data(b: &Backend) {
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

    pub(crate) async fn put_with_current_version_replaces(b: &Backend) {
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
        // Writing the same content again may keep the version (Kubernetes keeps the
        // resourceVersion of an update that changes nothing), but never brings back an
        // older one, and the version returned is the current one.
        let v3 = b
            .store
            .put(Kind::Certificate, "c", &cert("two"), Some(&v2))
            .await
            .unwrap();
        assert_ne!(v1, v3);
        let stored = b.store.get(Kind::Certificate, "c").await.unwrap().unwrap();
        assert_eq!(stored.object, cert("two"));
        assert_eq!(stored.version, v3);
        let stale = b
            .store
            .put(Kind::Certificate, "c", &cert("three"), Some(&v1))
            .await;
        assert!(is_conflict(&stale), "{stale:?}");
        b.store
            .put(Kind::Certificate, "c", &cert("three"), Some(&v3))
            .await
            .unwrap();
    }

    pub(crate) async fn put_with_a_version_on_a_missing_object_conflicts(b: &Backend) {
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

    pub(crate) async fn versions_never_come_back_after_a_delete(b: &Backend) {
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

    pub(crate) async fn delete_with_stale_version_conflicts(b: &Backend) {
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

    pub(crate) async fn delete_with_current_version_removes(b: &Backend) {
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

    pub(crate) async fn delete_missing_is_ok(b: &Backend) {
        b.store.delete(Kind::Http01, "missing", None).await.unwrap();
        let any = Version::new("1");
        b.store
            .delete(Kind::Http01, "missing", Some(&any))
            .await
            .unwrap();
    }

    pub(crate) async fn list_returns_only_that_kind_sorted(b: &Backend) {
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

    pub(crate) async fn concurrent_cas_has_one_winner_per_round(b: &Backend) {
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

    pub(crate) async fn concurrent_increments_lose_nothing(b: &Backend) {
        increments_from(std::slice::from_ref(&b.store)).await;
    }

    pub(crate) async fn invalid_names_are_refused(b: &Backend) {
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

    pub(crate) async fn longest_names_work(b: &Backend) {
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
        let lease = acquire(&*b.locker, &lock, TTL).await;
        b.locker.renew(&lease).await.unwrap();
        b.locker.release(lease).await.unwrap();
        let too_long = "b".repeat(store::MAX_LOCK_NAME_LEN + 1);
        let e = b.locker.try_acquire(&too_long, TTL).await.unwrap_err();
        assert!(matches!(e, LockError::InvalidName { .. }), "{e}");
    }

    pub(crate) async fn lock_is_exclusive(b: &Backend) {
        let ttl = Duration::from_secs(60);
        let lease = acquire(&*b.locker, "portico-acme-1", ttl).await;
        assert_eq!(lease.name(), "portico-acme-1");
        assert_eq!(lease.ttl(), ttl);
        // Not re-entrant: the same process asking again is another holder.
        refused(&*b.locker, "portico-acme-1", ttl).await;
        b.locker.renew(&lease).await.unwrap();
        refused(&*b.locker, "portico-acme-1", ttl).await;
    }

    pub(crate) async fn locks_are_independent_by_name(b: &Backend) {
        let ttl = Duration::from_secs(60);
        let one = acquire(&*b.locker, "one", ttl).await;
        let two = acquire(&*b.locker, "two", ttl).await;
        assert_ne!(one.holder(), two.holder());
        b.locker.release(one).await.unwrap();
        refused(&*b.locker, "two", ttl).await;
        b.locker.renew(&two).await.unwrap();
    }

    pub(crate) async fn release_then_acquire_again(b: &Backend) {
        let ttl = Duration::from_secs(60);
        let first = acquire(&*b.locker, "l", ttl).await;
        b.locker.release(first.clone()).await.unwrap();
        let second = acquire(&*b.locker, "l", ttl).await;
        assert_ne!(first.holder(), second.holder());
        // The first holder's lease is gone: renewing it must not revive it.
        let e = b.locker.renew(&first).await.unwrap_err();
        assert!(matches!(e, LockError::Lost { .. }), "{e}");
        // Releasing twice is harmless and leaves the second holder alone.
        b.locker.release(first).await.unwrap();
        refused(&*b.locker, "l", ttl).await;
        b.locker.renew(&second).await.unwrap();
    }

    pub(crate) async fn stale_lock_is_taken_over(b: &Backend) {
        let old = acquire(&*b.locker, "l", TTL).await;
        tokio::time::sleep(TTL + TTL / 2).await;
        // A lock not renewed within its ttl is taken over.
        let new = acquire(&*b.locker, "l", Duration::from_secs(60)).await;
        assert_ne!(old.holder(), new.holder());
        let e = b.locker.renew(&old).await.unwrap_err();
        assert!(
            matches!(e, LockError::Lost { ref name } if name == "l"),
            "{e}"
        );
        // The old holder letting go must not free the new holder's lock.
        b.locker.release(old).await.unwrap();
        refused(&*b.locker, "l", Duration::from_secs(60)).await;
        b.locker.renew(&new).await.unwrap();
    }

    pub(crate) async fn racing_for_a_stale_lock_has_one_winner(b: &Backend) {
        let stale = acquire(&*b.locker, "l", Duration::from_millis(1)).await;
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

    pub(crate) async fn renew_keeps_the_lock_past_its_ttl(b: &Backend) {
        // Not shorter: a lock's time is taken before its write, so a slow fsync eats
        // into it.
        let ttl = Duration::from_secs(1);
        let lease = acquire(&*b.locker, "l", ttl).await;
        // Four renews a third of a ttl apart: more than a ttl in all. Each check comes
        // right after a renew, so a slow machine only makes the gaps longer, never the
        // test wrong (a lock that went stale unobserved is still renewed by its holder).
        for _ in 0..4 {
            tokio::time::sleep(ttl / 3).await;
            b.locker.renew(&lease).await.unwrap();
            refused(&*b.locker, "l", ttl).await;
        }
    }

    pub(crate) async fn hold_keeps_the_lease_and_release_frees_it(b: &Backend) {
        // The guard counts a lease as lost when a renew takes longer than 2/3 of the
        // ttl; a busy disk can fsync that slowly, so this ttl is not short.
        let ttl = Duration::from_secs(2);
        let lease = acquire(&*b.locker, "held", ttl).await;
        let guard = store::hold(b.locker.clone(), lease.clone());
        assert_eq!(guard.lease(), &lease);
        tokio::time::sleep(ttl * 3 / 2).await;
        assert!(!guard.is_lost());
        refused(&*b.locker, "held", ttl).await;
        guard.release().await.unwrap();
        acquire(&*b.locker, "held", ttl).await;
    }

    pub(crate) async fn hold_reports_a_lost_lease(b: &Backend) {
        let lease = acquire(&*b.locker, "held", TTL).await;
        let guard = store::hold(b.locker.clone(), lease.clone());
        let mut lost = guard.lost();
        // Someone else ends up with the lock (here: it is released behind the guard's
        // back and taken), so the guard's next renew fails.
        b.locker.release(lease).await.unwrap();
        let thief = acquire(&*b.locker, "held", Duration::from_secs(60)).await;
        tokio::time::timeout(Duration::from_secs(30), lost.wait_for(|l| *l))
            .await
            .expect("the loss is reported")
            .unwrap();
        assert!(guard.is_lost());
        guard.release().await.unwrap();
        refused(&*b.locker, "held", Duration::from_secs(60)).await;
        b.locker.renew(&thief).await.unwrap();
    }

    pub(crate) async fn objects_kubernetes_cannot_hold_are_refused(b: &Backend) {
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

    pub(crate) async fn watch_lists_then_follows_changes(b: &Backend) {
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

    pub(crate) async fn watch_of_an_empty_kind_sees_the_first_object(b: &Backend) {
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

    pub(crate) async fn several_watchers_see_the_same_changes(b: &Backend) {
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

    pub(crate) async fn dropping_the_guard_stops_renewing(b: &Backend) {
        let lease = acquire(&*b.locker, "held", TTL).await;
        drop(store::hold(b.locker.clone(), lease));
        tokio::time::sleep(TTL * 4).await;
        acquire(&*b.locker, "held", TTL).await;
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
        let lease = acquire(&store, "l", Duration::from_secs(60)).await;
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

        let lease = acquire(&*a, "l", Duration::from_secs(60)).await;
        refused(&*b, "l", Duration::from_secs(60)).await;
        b.release(lease.clone()).await.unwrap(); // b may release a's lease: same lock
        acquire(&*b, "l", Duration::from_secs(60)).await;
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
        acquire(&store, "race", Duration::from_millis(1)).await;
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
        refused(&store, "l", ttl).await;
        let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        acquire(&store, "l", ttl).await;
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

/// What only the Kubernetes backend promises, checked on the real API server (faults made
/// by a front in front of it).
mod kube_only {
    use super::*;
    use common::api_front::Front;
    use common::base64_encode;
    use serde_json::{Value, json};
    use std::sync::Mutex;
    use std::time::SystemTime;

    struct Fixture {
        ns: Namespace,
        dir: tempfile::TempDir,
    }

    fn fixture(test: &str) -> Fixture {
        Fixture {
            ns: control_plane().namespace(test),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    impl Fixture {
        /// Replica `who`, straight to the API server.
        async fn replica(&self, who: &str) -> KubeStore {
            replica(&self.ns, self.dir.path(), who, None).await
        }

        /// Replica `who`, through `front`.
        async fn replica_via(&self, front: &Front, who: &str) -> KubeStore {
            replica(&self.ns, self.dir.path(), who, Some(&front.url())).await
        }

        async fn front(&self) -> Front {
            Front::start(self.ns.plane()).await
        }

        fn secret(&self, name: &str) -> Value {
            self.ns
                .get("secrets", name)
                .unwrap_or_else(|| panic!("no Secret {name}"))
        }

        fn lease(&self, name: &str) -> Value {
            self.ns
                .get("leases", name)
                .unwrap_or_else(|| panic!("no Lease {name}"))
        }
    }

    fn b64(bytes: &[u8]) -> String {
        base64_encode(bytes)
    }

    fn is_api_error<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
        matches!(r, Err(StoreError::Unavailable { .. }))
    }

    /// Log lines written while `f` runs on this thread (a current-thread runtime keeps
    /// every task on it).
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn capture(&self) -> tracing::subscriber::DefaultGuard {
            let logs = self.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || logs.clone())
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_default(subscriber)
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    #[tokio::test]
    async fn secrets_are_named_labelled_and_typed_as_documented() {
        let f = fixture("secrets_are_named_labelled_and_typed_as_documented");
        let store = f.replica("portico").await;
        let name = "example.com-0123456789abcdef";
        store
            .put(Kind::Certificate, name, &cert("CERT"), None)
            .await
            .unwrap();
        store
            .put(Kind::Account, "0123456789abcdef", &cert("acct"), None)
            .await
            .unwrap();
        let token = Object::new()
            .with_data("token", b"tok".to_vec())
            .with_data("key-authorization", b"tok.thumb".to_vec())
            .with_annotation("portico.dev/expires", "2030-01-01T00:00:00Z");
        store
            .put(Kind::Http01, "fedcba9876543210", &token, None)
            .await
            .unwrap();
        store
            .put(Kind::Ca, LOCAL_CA, &cert("ca"), None)
            .await
            .unwrap();

        let names = f.ns.names("secrets");
        assert_eq!(
            names,
            [
                "portico-acme-account-0123456789abcdef",
                "portico-http01-fedcba9876543210",
                "portico-local-ca",
                "portico-tls-example.com-0123456789abcdef",
            ]
        );
        for (secret, kind, ty) in [
            (
                "portico-tls-example.com-0123456789abcdef",
                "certificate",
                "kubernetes.io/tls",
            ),
            ("portico-acme-account-0123456789abcdef", "account", "Opaque"),
            ("portico-http01-fedcba9876543210", "http01", "Opaque"),
            ("portico-local-ca", "ca", "Opaque"),
        ] {
            let s = f.secret(secret);
            assert_eq!(s["type"], ty, "{secret}");
            assert_eq!(
                s["metadata"]["labels"],
                json!({"app.kubernetes.io/managed-by": "portico", "portico.dev/kind": kind}),
                "{secret}"
            );
        }
        let tls = f.secret("portico-tls-example.com-0123456789abcdef");
        assert_eq!(tls["data"]["tls.crt"], b64(b"CERT"));
        assert_eq!(tls["data"]["tls.key"], b64(b"\x00\x01binary key\xff"));
        assert_eq!(
            tls["metadata"]["annotations"]["portico.dev/not-after"],
            "2030-01-01T00:00:00Z"
        );
        let http01 = f.secret("portico-http01-fedcba9876543210");
        assert_eq!(http01["data"]["key-authorization"], b64(b"tok.thumb"));
        assert_eq!(
            http01["metadata"]["annotations"]["portico.dev/expires"],
            "2030-01-01T00:00:00Z"
        );
        // The version is the resourceVersion.
        let stored = store.get(Kind::Ca, LOCAL_CA).await.unwrap().unwrap();
        assert_eq!(
            stored.version.as_str(),
            f.secret("portico-local-ca")["metadata"]["resourceVersion"]
        );
    }

    #[tokio::test]
    async fn a_certificate_object_without_a_certificate_round_trips() {
        let f = fixture("a_certificate_object_without_a_certificate_round_trips");
        let store = f.replica("portico").await;
        // What the ACME manager stores after a failed first order.
        let status = Object::new()
            .with_annotation("portico.dev/last-error", "rate limited")
            .with_annotation("portico.dev/next-attempt", "2030-01-01T00:00:00Z");
        let v = store
            .put(Kind::Certificate, "new.test-0123", &status, None)
            .await
            .unwrap();
        let secret = f.secret("portico-tls-new.test-0123");
        assert_eq!(secret["type"], "kubernetes.io/tls");
        assert_eq!(secret["data"], json!({"tls.crt": "", "tls.key": ""}));
        let got = store
            .get(Kind::Certificate, "new.test-0123")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.object, status);
        // Then the certificate arrives.
        store
            .put(Kind::Certificate, "new.test-0123", &cert("CERT"), Some(&v))
            .await
            .unwrap();
        let got = store
            .get(Kind::Certificate, "new.test-0123")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.object, cert("CERT"));
    }

    #[tokio::test]
    async fn a_stale_version_from_another_replica_conflicts_and_overwrites_nothing() {
        let f = fixture("a_stale_version_from_another_replica_conflicts_and_overwrites_nothing");
        let a = f.replica("replica-a").await;
        let b = f.replica("replica-b").await;
        let v1 = a
            .put(Kind::Certificate, "c", &cert("one"), None)
            .await
            .unwrap();
        let seen_by_b = b.get(Kind::Certificate, "c").await.unwrap().unwrap();
        assert_eq!(seen_by_b.version, v1);
        let v2 = a
            .put(Kind::Certificate, "c", &cert("two"), Some(&v1))
            .await
            .unwrap();
        let conflicts = f.ns.conflicts();
        let r = b
            .put(
                Kind::Certificate,
                "c",
                &cert("three"),
                Some(&seen_by_b.version),
            )
            .await;
        assert!(is_conflict(&r), "{r:?}");
        let r = b
            .delete(Kind::Certificate, "c", Some(&seen_by_b.version))
            .await;
        assert!(is_conflict(&r), "{r:?}");
        // The delete's precondition was the server's to check.
        assert!(f.ns.conflicts() > conflicts);
        let now = b.get(Kind::Certificate, "c").await.unwrap().unwrap();
        assert_eq!((now.object, now.version), (cert("two"), v2));
        // A second create from B is AlreadyExists, i.e. a conflict too.
        let r = b.put(Kind::Certificate, "c", &cert("four"), None).await;
        assert!(is_conflict(&r), "{r:?}");
    }

    #[tokio::test]
    async fn a_lost_write_response_is_an_error_and_rereading_sorts_it_out() {
        let f = fixture("a_lost_write_response_is_an_error_and_rereading_sorts_it_out");
        let front = f.front().await;
        let store = f.replica_via(&front, "portico").await;

        // The create is applied, but the client never hears so.
        front.lose_next_write_response();
        let r = store.put(Kind::Account, "acct", &cert("one"), None).await;
        assert!(is_api_error(&r), "{r:?}");
        // Retrying the create says the object exists; the caller reads it.
        let r = store.put(Kind::Account, "acct", &cert("one"), None).await;
        assert!(is_conflict(&r), "{r:?}");
        let v1 = store.get(Kind::Account, "acct").await.unwrap().unwrap();
        assert_eq!(v1.object, cert("one"));

        // Same for a replace: the retry with the old version conflicts.
        front.lose_next_write_response();
        let r = store
            .put(Kind::Account, "acct", &cert("two"), Some(&v1.version))
            .await;
        assert!(is_api_error(&r), "{r:?}");
        let r = store
            .put(Kind::Account, "acct", &cert("two"), Some(&v1.version))
            .await;
        assert!(is_conflict(&r), "{r:?}");
        let v2 = store.get(Kind::Account, "acct").await.unwrap().unwrap();
        assert_eq!(v2.object, cert("two"));

        // And a delete: it is gone, and deleting again is fine.
        front.lose_next_write_response();
        let r = store.delete(Kind::Account, "acct", Some(&v2.version)).await;
        assert!(is_api_error(&r), "{r:?}");
        store.delete(Kind::Account, "acct", None).await.unwrap();
        assert_eq!(store.get(Kind::Account, "acct").await.unwrap(), None);
    }

    /// The first renew of a held lease is refused (a load balancer's 503 in front of the
    /// API server): the next, a tenth of the ttl later, keeps the lease. A period later,
    /// it came at the renew deadline itself and the lease was lost to one refusal.
    #[tokio::test]
    async fn one_refused_renew_does_not_lose_the_lease() {
        let f = fixture("one_refused_renew_does_not_lose_the_lease");
        let front = f.front().await;
        let store: Arc<KubeStore> = Arc::new(f.replica_via(&front, "holder").await);
        let other = f.replica("other").await;
        let ttl = Duration::from_secs(6);
        let lease = acquire(&*store, "l", ttl).await;
        let renews = || {
            front
                .requests()
                .iter()
                .filter(|(method, path, _)| method == "PUT" && path.contains("/leases/"))
                .count()
        };
        front.fail_next_writes(1, 503);
        let guard = store::hold(store.clone(), lease);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        // The third renew sent: the second, the one after the refusal, has been answered.
        while renews() < 3 && !guard.is_lost() {
            assert!(tokio::time::Instant::now() < deadline, "no third renew");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!guard.is_lost(), "one refused renew lost the lease");
        refused(&other, "l", ttl).await;
        guard.release().await.unwrap();
        acquire(&other, "l", ttl).await;
    }

    /// Current-thread runtime: the log capture only sees this thread.
    #[tokio::test(flavor = "current_thread")]
    async fn unreadable_secrets_with_our_labels_are_skipped_with_a_warning() {
        let f = fixture("unreadable_secrets_with_our_labels_are_skipped_with_a_warning");
        let store = f.replica("portico").await;
        store
            .put(Kind::Certificate, "good", &cert("good"), None)
            .await
            .unwrap();
        let labels =
            json!({"app.kubernetes.io/managed-by": "portico", "portico.dev/kind": "certificate"});
        // Our labels, someone else's name.
        f.ns.create(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "someone-else", "labels": labels},
                   "type": "kubernetes.io/tls",
                   "data": {"tls.crt": b64(b"SECRETDATA"), "tls.key": b64(b"SECRETDATA")}}));
        // Our labels and prefix, the wrong type.
        f.ns.create(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "portico-tls-opaque", "labels": labels},
                   "type": "Opaque",
                   "data": {"tls.key": b64(b"SECRETDATA")}}));
        // Not ours at all: no labels, so not even listed.
        f.ns.create(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "portico-tls-unlabelled"}, "type": "Opaque"}),
        );

        let logs = Logs::default();
        let _guard = logs.capture();
        let listed = store.list(Kind::Certificate).await.unwrap();
        let names: Vec<_> = listed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["good"]);
        let mut rx = store.watch(Kind::Certificate);
        assert_eq!(upserts(&mut rx, 1).await[0].0, "good");

        let e = store.get(Kind::Certificate, "opaque").await.unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert!(!portico::report::chain(&e).contains("SECRETDATA"), "{e}");

        let text = logs.text();
        assert!(text.contains("WARN"), "{text}");
        assert!(text.contains("someone-else"), "{text}");
        assert!(text.contains("portico-tls-opaque"), "{text}");
        assert!(!text.contains("SECRETDATA"), "{text}");
        assert!(!text.contains(&b64(b"SECRETDATA")), "{text}");
    }

    #[tokio::test]
    async fn foreign_labels_and_annotations_are_hidden_and_kept() {
        let f = fixture("foreign_labels_and_annotations_are_hidden_and_kept");
        let store = f.replica("portico").await;
        f.ns.create(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {
                       "name": "portico-acme-account-a",
                       "labels": {"app.kubernetes.io/managed-by": "portico",
                                  "portico.dev/kind": "account", "team": "edge"},
                       "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}",
                                       "portico.dev/directory": "https://acme.test/dir"}},
                   "type": "Opaque",
                   "data": {"account.json": b64(b"{}")}}));
        // kubectl writes its own value into its annotation: keep whatever it wrote.
        let applied = f.secret("portico-acme-account-a")["metadata"]["annotations"]
            ["kubectl.kubernetes.io/last-applied-configuration"]
            .clone();
        assert!(applied.is_string(), "{applied}");
        let got = store.get(Kind::Account, "a").await.unwrap().unwrap();
        let expected = Object::new()
            .with_data("account.json", b"{}".to_vec())
            .with_annotation("portico.dev/directory", "https://acme.test/dir");
        assert_eq!(got.object, expected);

        let next = Object::new().with_data("account.json", b"{\"n\":2}".to_vec());
        store
            .put(Kind::Account, "a", &next, Some(&got.version))
            .await
            .unwrap();
        let secret = f.secret("portico-acme-account-a");
        assert_eq!(secret["metadata"]["labels"]["team"], "edge");
        assert_eq!(
            secret["metadata"]["annotations"],
            json!({"kubectl.kubernetes.io/last-applied-configuration": applied})
        );
        assert_eq!(
            store.get(Kind::Account, "a").await.unwrap().unwrap().object,
            next
        );
    }

    #[tokio::test]
    async fn server_errors_and_an_api_that_is_down_are_errors_not_panics() {
        let f = fixture("server_errors_and_an_api_that_is_down_are_errors_not_panics");
        let front = f.front().await;
        let store = f.replica_via(&front, "portico").await;
        let v = store
            .put(Kind::Certificate, "c", &cert("one"), None)
            .await
            .unwrap();
        // What a load balancer in front of a sick API server answers.
        for status in [500, 503, 429] {
            front.fail_next(1, status);
            let e = store.get(Kind::Certificate, "c").await.unwrap_err();
            assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
            assert!(
                portico::report::chain(&e).contains(&status.to_string()),
                "{e}"
            );
        }
        front.fail_next_writes(1, 500);
        let r = store
            .put(Kind::Certificate, "c", &cert("x"), Some(&v))
            .await;
        assert!(is_api_error(&r), "{r:?}");
        front.fail_next(1, 503);
        let r = store.list(Kind::Certificate).await;
        assert!(is_api_error(&r), "{r:?}");
        front.fail_next(1, 500);
        let e = store
            .try_acquire("l", Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(matches!(e, LockError::Unavailable { .. }), "{e}");

        front.set_down(true);
        assert!(is_api_error(&store.get(Kind::Certificate, "c").await));
        assert!(is_api_error(&store.list(Kind::Certificate).await));
        assert!(is_api_error(
            &store.put(Kind::Certificate, "d", &cert("x"), None).await
        ));
        assert!(is_api_error(
            &store.delete(Kind::Certificate, "c", None).await
        ));
        let e = store
            .try_acquire("l", Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(matches!(e, LockError::Unavailable { .. }), "{e}");
        front.set_down(false);

        let got = store.get(Kind::Certificate, "c").await.unwrap().unwrap();
        assert_eq!((got.object, got.version), (cert("one"), v));
        acquire(&store, "l", Duration::from_secs(60)).await;
    }

    /// Collects changes until `done` says the set is complete.
    async fn changes_until(
        rx: &mut mpsc::Receiver<Change>,
        done: impl Fn(&[Change]) -> bool,
    ) -> Vec<Change> {
        let mut seen = Vec::new();
        while !done(&seen) {
            seen.push(next_change(rx).await);
        }
        seen
    }

    fn upserted(changes: &[Change], name: &str) -> bool {
        changes
            .iter()
            .any(|c| matches!(c, Change::Upsert(n, _) if n == name))
    }

    fn removed(changes: &[Change], name: &str) -> bool {
        changes.contains(&Change::Removed(name.to_owned()))
    }

    fn list_requests(front: &Front) -> usize {
        front
            .requests()
            .iter()
            .filter(|(method, path, _)| {
                method == "GET" && path.contains("/secrets?") && !path.contains("watch=")
            })
            .count()
    }

    #[tokio::test]
    async fn watch_lists_again_after_410_gone_and_reports_what_changed() {
        let f = fixture("watch_lists_again_after_410_gone_and_reports_what_changed");
        let front = f.front().await;
        let store = f.replica_via(&front, "portico").await;
        let writer = f.replica("writer").await;
        let v_a = writer
            .put(Kind::Certificate, "a", &cert("a"), None)
            .await
            .unwrap();
        let mut rx = store.watch(Kind::Certificate);
        assert_eq!(upserts(&mut rx, 1).await, [("a".to_owned(), v_a.clone())]);
        let lists = list_requests(&front);

        // The watcher loses the API server; meanwhile a write it would not see (another
        // kind) moves the server's revision past the watch's, the certificates change,
        // and etcd's history is compacted: the watch's resume meets 410 Gone and has to
        // list again.
        front.set_down(true);
        writer
            .put(Kind::Account, "unwatched", &cert("x"), None)
            .await
            .unwrap();
        writer
            .put(Kind::Certificate, "b", &cert("b"), None)
            .await
            .unwrap();
        writer
            .delete(Kind::Certificate, "a", Some(&v_a))
            .await
            .unwrap();
        f.ns.plane().compact();
        front.set_down(false);
        let seen = changes_until(&mut rx, |c| upserted(c, "b") && removed(c, "a")).await;
        assert!(!upserted(&seen, "a"), "{seen:?}");
        assert!(list_requests(&front) > lists);

        // And it keeps watching afterwards.
        writer
            .put(Kind::Certificate, "c", &cert("c"), None)
            .await
            .unwrap();
        changes_until(&mut rx, |c| upserted(c, "c")).await;
    }

    #[tokio::test]
    async fn watch_reconnects_after_the_api_was_down_or_cut_off() {
        let f = fixture("watch_reconnects_after_the_api_was_down_or_cut_off");
        let front = f.front().await;
        let store = f.replica_via(&front, "watcher").await;
        let writer = f.replica("writer").await;
        let mut rx = store.watch(Kind::Certificate);
        writer
            .put(Kind::Certificate, "before", &cert("x"), None)
            .await
            .unwrap();
        changes_until(&mut rx, |c| upserted(c, "before")).await;

        // The API server unreachable for this replica, then back.
        front.set_down(true);
        tokio::time::sleep(Duration::from_millis(500)).await;
        front.set_down(false);
        writer
            .put(Kind::Certificate, "after-down", &cert("x"), None)
            .await
            .unwrap();
        changes_until(&mut rx, |c| upserted(c, "after-down")).await;

        // A partition of this replica alone: the others go on writing meanwhile.
        front.set_down(true);
        writer
            .put(Kind::Certificate, "during-cut", &cert("x"), None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        front.set_down(false);
        changes_until(&mut rx, |c| upserted(c, "during-cut")).await;
    }

    #[tokio::test]
    async fn a_dropped_watch_stops_watching() {
        let f = fixture("a_dropped_watch_stops_watching");
        let store = f.replica("watcher").await;
        let mut rx = store.watch(Kind::Http01);
        store
            .put(Kind::Http01, "t", &Object::new(), None)
            .await
            .unwrap();
        upserts(&mut rx, 1).await;
        // The API server's audit log: the watch request started and not yet complete
        // (the first change may come from the list, before the watch is opened).
        tokio::time::timeout(Duration::from_secs(30), async {
            while f.ns.open_watches("watcher", "secrets") == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the watch is open");
        assert_eq!(f.ns.open_watches("watcher", "secrets"), 1);
        drop(rx);
        // The stream closes once the task notices; wait for that, with a guard.
        tokio::time::timeout(Duration::from_secs(30), async {
            while f.ns.open_watches("watcher", "secrets") != 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the watch stream is closed");
    }

    /// A bound service-account token (TokenRequest) in a file, as a pod mounts it; it
    /// rotates: new file content, and the old token stops working (its ServiceAccount
    /// was deleted and made again).
    #[tokio::test]
    async fn a_rotated_token_file_keeps_working() {
        let f = fixture("a_rotated_token_file_keeps_working");
        let front = f.front().await;
        let token_file = f.dir.path().join("token");
        let old = f.ns.service_account_token("rotating");
        std::fs::write(&token_file, &old).unwrap();
        let kubeconfig =
            f.ns.kubeconfig_with_token_file(f.dir.path(), &front.url(), &token_file);
        let store = KubeStore::from_kubeconfig(&kubeconfig, None).await.unwrap();
        let writer = f.replica("writer").await;
        store
            .put(Kind::Certificate, "c", &cert("one"), None)
            .await
            .unwrap();
        let mut rx = store.watch(Kind::Certificate);
        upserts(&mut rx, 1).await;

        f.ns.delete_service_account("rotating");
        let new = f.ns.service_account_token("rotating");
        std::fs::write(&token_file, &new).unwrap();
        // The old token is refused by now (the API server's own check).
        let refused = |token: &str| {
            f.ns.plane()
                .kubectl_output(&["--token", token, "get", "secrets", "-n", &f.ns.name], b"")
                .is_err_and(|e| e.contains("Unauthorized"))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !refused(&old) {
            assert!(
                std::time::Instant::now() < deadline,
                "the old token still works"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!refused(&new));

        let got = store.get(Kind::Certificate, "c").await.unwrap().unwrap();
        store
            .put(Kind::Certificate, "c", &cert("two"), Some(&got.version))
            .await
            .unwrap();
        assert_eq!(store.list(Kind::Certificate).await.unwrap().len(), 1);
        acquire(&store, "l", Duration::from_secs(60)).await;
        let tokens: Vec<_> = front
            .requests()
            .into_iter()
            .filter_map(|(_, _, token)| token)
            .collect();
        assert!(tokens.contains(&new), "the new token was never sent");

        // The watch resumes with the new token too.
        front.cut();
        writer
            .put(Kind::Certificate, "d", &cert("d"), None)
            .await
            .unwrap();
        changes_until(&mut rx, |c| upserted(c, "d")).await;
    }

    #[tokio::test]
    async fn leases_are_named_and_filled_in_like_client_go() {
        let f = fixture("leases_are_named_and_filled_in_like_client_go");
        let store = f.replica("portico").await;
        let lease = acquire(
            &store,
            "acme-0123456789abcdef",
            Duration::from_millis(14_500),
        )
        .await;
        let record = f.lease("portico-acme-0123456789abcdef");
        let spec = &record["spec"];
        assert_eq!(spec["holderIdentity"], lease.holder());
        assert_eq!(spec["leaseDurationSeconds"], 15);
        assert_eq!(spec["leaseTransitions"], 0);
        assert_eq!(spec["acquireTime"], spec["renewTime"]);
        assert_eq!(
            record["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "portico"
        );
        let micro = |v: &Value| {
            let t = v.as_str().unwrap();
            // 2024-01-02T03:04:05.123456Z
            t.len() == 27 && t.ends_with('Z') && t.as_bytes()[19] == b'.'
        };
        assert!(micro(&spec["renewTime"]), "{spec}");

        // Every renew writes a new renewTime, so the record visibly changes.
        tokio::time::sleep(Duration::from_millis(5)).await;
        store.renew(&lease).await.unwrap();
        let renewed = f.lease("portico-acme-0123456789abcdef");
        assert_ne!(renewed["spec"]["renewTime"], spec["renewTime"]);
        assert_eq!(renewed["spec"]["acquireTime"], spec["acquireTime"]);
        assert_ne!(
            renewed["metadata"]["resourceVersion"],
            record["metadata"]["resourceVersion"]
        );

        // Release: no holder, one second, so anyone may take it at once.
        store.release(lease).await.unwrap();
        let released = f.lease("portico-acme-0123456789abcdef");
        assert_eq!(released["spec"]["holderIdentity"], "");
        assert_eq!(released["spec"]["leaseDurationSeconds"], 1);
        let other = f.replica("other").await;
        // A released lease is free at once, even for a fresh observer.
        let taken = acquire(&other, "acme-0123456789abcdef", Duration::from_secs(60)).await;
        let record = f.lease("portico-acme-0123456789abcdef");
        assert_eq!(record["spec"]["holderIdentity"], taken.holder());
        assert_eq!(record["spec"]["leaseTransitions"], 1);
    }

    #[tokio::test]
    async fn a_fresh_observer_waits_a_full_lease_duration() {
        let f = fixture("a_fresh_observer_waits_a_full_lease_duration");
        let dead = f.replica("dead").await;
        let ttl = Duration::from_secs(2);
        acquire(&dead, "l", ttl).await;
        // The holder dies; its renewTime is long past by the time the other replica
        // starts.
        tokio::time::sleep(ttl * 2).await;
        let fresh = f.replica("fresh").await;
        refused(&fresh, "l", ttl).await;
        tokio::time::sleep(ttl + ttl / 2).await;
        // Unchanged for a full lease duration since first sight: expired.
        acquire(&fresh, "l", ttl).await;
    }

    /// A clock `offset` away from the real one, in either direction.
    fn skewed(ahead: bool, offset: Duration) -> Arc<dyn Fn() -> SystemTime + Send + Sync> {
        Arc::new(move || {
            if ahead {
                SystemTime::now() + offset
            } else {
                SystemTime::now() - offset
            }
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_holder_with_a_clock_hours_off_keeps_and_loses_its_lease_by_renewals_only() {
        let f =
            fixture("a_holder_with_a_clock_hours_off_keeps_and_loses_its_lease_by_renewals_only");
        let ttl = Duration::from_secs(3);
        let hours = Duration::from_secs(5 * 3600);
        let observer = f.replica("observer").await;
        for ahead in [false, true] {
            let lock = if ahead { "ahead" } else { "behind" };
            let holder = Arc::new(f.replica(lock).await.with_clock(skewed(ahead, hours)));
            let lease = acquire(&*holder, lock, ttl).await;
            let renew = f.lease(&format!("portico-{lock}"))["spec"]["renewTime"].clone();
            let year_now = time_year(SystemTime::now());
            assert_ne!(renew.as_str().unwrap()[..13], year_now[..13], "{renew}");

            // Renewing: never taken, although renewTime is hours off.
            let guard = store::hold(holder.clone(), lease);
            for _ in 0..4 {
                refused(&observer, lock, ttl).await;
                tokio::time::sleep(ttl / 2).await;
            }
            assert!(!guard.is_lost());
            // Stopped: taken once unchanged for a full duration, not before and not
            // never (a renewTime in the future does not keep it).
            drop(guard);
            tokio::time::sleep(ttl / 2).await;
            refused(&observer, lock, ttl).await;
            tokio::time::sleep(ttl + ttl / 2).await;
            acquire(&observer, lock, ttl).await;
        }
    }

    /// `YYYY-MM-DDTHH` of a time, as MicroTime writes it.
    fn time_year(t: SystemTime) -> String {
        let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        let t = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap();
        format!(
            "{:04}-{:02}-{:02}T{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour()
        )
    }

    /// The shipped Role (config/kubernetes/role.yaml, the rights docs/kubernetes.md lists) is all portico
    /// needs: every store and lock operation, and watch, under exactly those verbs, with
    /// the API server's RBAC judging; another namespace is out of reach.
    #[tokio::test]
    async fn the_shipped_role_is_enough_and_nothing_more_is_used() {
        let f = fixture("the_shipped_role_is_enough_and_nothing_more_is_used");
        let store = f.replica("portico").await;
        let mut rx = store.watch(Kind::Certificate);
        let v1 = store
            .put(Kind::Certificate, "c", &cert("one"), None)
            .await
            .unwrap();
        upserts(&mut rx, 1).await;
        let v2 = store
            .put(Kind::Certificate, "c", &cert("two"), Some(&v1))
            .await
            .unwrap();
        store.list(Kind::Certificate).await.unwrap();
        store
            .delete(Kind::Certificate, "c", Some(&v2))
            .await
            .unwrap();
        let lease = acquire(&store, "l", Duration::from_secs(60)).await;
        store.renew(&lease).await.unwrap();
        store.release(lease).await.unwrap();
        acquire(&store, "l", Duration::from_secs(60)).await;

        let elsewhere = KubeStore::from_kubeconfig(
            &f.ns
                .kubeconfig_in(f.dir.path(), "portico", f.ns.plane().url(), "kube-system"),
            None,
        )
        .await
        .unwrap();
        let e = elsewhere.get(Kind::Certificate, "c").await.unwrap_err();
        assert!(portico::report::chain(&e).contains("403"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_racing_for_a_lease_have_one_winner() {
        let f = fixture("replicas_racing_for_a_lease_have_one_winner");
        let mut replicas = Vec::new();
        for i in 0..4 {
            replicas.push(Arc::new(f.replica(&format!("r{i}")).await));
        }
        let tasks: Vec<_> = replicas
            .iter()
            .map(|r| {
                let r = r.clone();
                tokio::spawn(async move {
                    r.try_acquire("race", Duration::from_secs(60))
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
    }
}
