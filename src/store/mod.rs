//! Persistence and locks: the bottom of the certificate path.
//!
//! Everything portico must remember across restarts, and share between replicas, goes
//! through the [`Store`] trait:
//!
//! | [`Kind`] | written by | holds |
//! |---|---|---|
//! | [`Kind::Account`] | `acme` | the ACME account key and `account.json`, one per (directory, email), so restarts reuse the account instead of burning the CA's rate limits |
//! | [`Kind::Certificate`] | `acme`, `tls::internal` | `tls.crt` (leaf + chain), `tls.key`, annotations such as `portico.dev/not-after` |
//! | [`Kind::Http01`] | `acme` | `token`, `key-authorization`: an HTTP-01 challenge in flight, so that any replica behind the load balancer can answer it |
//! | [`Kind::Ca`] | `tls::internal` | the local CA ([`LOCAL_CA`]) that issues for `tls = "internal"` sites |
//!
//! and the [`Locker`] trait makes sure only one process at a time orders a given
//! certificate or registers a given account: the ACME manager takes a [`Lease`], keeps
//! it alive with [`hold`], and stops its order when the returned [`LeaseGuard`] reports
//! the lease lost.
//!
//! An [`Object`] is shaped like a Kubernetes Secret (byte values under string keys, plus
//! string annotations) so that every backend can store it without translation. Writes are
//! compare-and-swap on an opaque [`Version`]: nobody ever overwrites what another replica
//! wrote without having read it first.
//!
//! [`Store::watch`] streams a kind's objects and then their changes, so that every
//! replica hot-swaps certificates that another one issued.
//!
//! Backends: [`FileStore`] (the local binary's data folder), [`KubeStore`] (Secrets and
//! Leases of a cluster ingress), [`MemoryStore`] (tests of other modules). Every backend
//! runs the one contract suite in `tests/store_contract.rs`; a new backend is added there
//! with one macro line.
//!
//! What one backend refuses, all refuse, so that code tested on one runs on all:
//!
//! - names of objects and locks ([`validate_name`], [`validate_lock_name`]): lowercase
//!   DNS-subdomain characters only, so a name can never climb out of the file backend's
//!   folder, and short enough ([`max_name_len`], [`MAX_LOCK_NAME_LEN`]) that the
//!   Kubernetes backend's prefixed name (`portico-tls-<name>`, `portico-<lock>`) is still
//!   a valid object name of at most 253 characters;
//! - objects ([`validate_object`]): data keys are Secret data keys (`[-._a-zA-Z0-9]`),
//!   and annotation keys are portico's own (`portico.dev/...`) or cert-manager's
//!   (`cert-manager.io/...`): the Kubernetes backend keeps every other annotation of a
//!   Secret (kubectl's, a GitOps tool's) out of the object and untouched, so such a key
//!   would not come back.

mod file;
mod kube;
mod memory;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::report::Chain;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use file::FileStore;
pub use kube::KubeStore;
pub(crate) use kube::{Backoff, credentials};
pub use memory::MemoryStore;

/// A boxed, sendable future: what the object-safe async traits of this module return.
pub use futures_util::future::BoxFuture;

/// A backend's own error, kept as the cause of [`StoreError::Unavailable`] and
/// [`LockError::Unavailable`]: the crate's one boxed error type, defined in
/// [`crate::body`], named here too so a backend written outside the crate finds it
/// beside the traits it implements.
pub use crate::body::BoxError;

/// The longest Kubernetes object name (a DNS subdomain).
const KUBE_NAME_MAX: usize = 253;

/// The longest object name of a kind: what still makes a Kubernetes object name after
/// the kind's Secret prefix (`portico-tls-` for certificates, the longest is
/// `portico-acme-account-`). Every backend accepts the same names.
pub const fn max_name_len(kind: Kind) -> usize {
    KUBE_NAME_MAX - kind.secret_prefix().len()
}

/// What the Kubernetes backend puts before a lock's name to make its Lease's name.
pub(crate) const LEASE_PREFIX: &str = "portico-";

/// The longest lock name: a Lease `portico-<name>` is still a valid object name (and
/// the file backend's `<name>.lock` fits in the 255 bytes a file name may have).
pub const MAX_LOCK_NAME_LEN: usize = KUBE_NAME_MAX - LEASE_PREFIX.len();

/// Annotation keys an [`Object`] may carry: portico's own, and cert-manager's, which
/// tools that know cert-manager's Secrets read.
pub const ANNOTATION_PREFIXES: [&str; 2] = ["portico.dev/", "cert-manager.io/"];

/// How many [`Change`]s a [`Store::watch`] channel buffers before the backend waits for
/// the reader.
pub const WATCH_BUFFER: usize = 64;

/// The name of the local CA object ([`Kind::Ca`]), with data keys `tls.crt` and `tls.key`.
pub const LOCAL_CA: &str = "local-ca";

/// The file name, in the file backend's `ca/` folder, of the local CA's certificate.
const ROOT_PEM: &str = "root.pem";

/// What an object is; each kind is its own namespace of names.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum Kind {
    /// An ACME account per (directory, email): its key and credentials.
    Account,
    /// A site's certificate and key, with its ACME status annotations.
    Certificate,
    /// An HTTP-01 token in flight, so any replica can answer the CA.
    Http01,
    /// The local CA.
    Ca,
}

impl Kind {
    /// The prefix of this kind's Secret names in the Kubernetes backend
    /// (docs/kubernetes.md). Here, with the name limits it decides, because every
    /// backend must accept the same names.
    pub(crate) const fn secret_prefix(self) -> &'static str {
        match self {
            Kind::Account => "portico-acme-account-",
            Kind::Certificate => "portico-tls-",
            Kind::Http01 => "portico-http01-",
            Kind::Ca => "portico-",
        }
    }

    /// Every kind, in a stable order.
    pub const ALL: [Kind; 4] = [Kind::Account, Kind::Certificate, Kind::Http01, Kind::Ca];

    /// The kind's label: `portico.dev/kind` in Kubernetes, the folder in the file backend.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Account => "account",
            Kind::Certificate => "certificate",
            Kind::Http01 => "http01",
            Kind::Ca => "ca",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored object: what Kubernetes would keep in a Secret.
///
/// `Debug` prints data keys and sizes, never the bytes: values are private keys.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Object {
    /// Values by key, e.g. `tls.crt`, `tls.key`, `account.json`, `token`,
    /// `key-authorization`.
    pub data: BTreeMap<String, Vec<u8>>,
    /// Small non-secret facts, e.g. `portico.dev/not-after`, `portico.dev/expires`.
    pub annotations: BTreeMap<String, String>,
}

impl Object {
    /// No data, no annotations.
    pub fn new() -> Self {
        Self::default()
    }

    /// With `key` set to `value` in the data.
    pub fn with_data(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.data.insert(key.into(), value.into());
        self
    }

    /// With annotation `key` set to `value`.
    pub fn with_annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.data.get(key).map(Vec::as_slice)
    }
}

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Sizes<'a>(&'a BTreeMap<String, Vec<u8>>);
        impl fmt::Debug for Sizes<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map()
                    .entries(
                        self.0
                            .iter()
                            .map(|(k, v)| (k, format!("<{} bytes>", v.len()))),
                    )
                    .finish()
            }
        }
        f.debug_struct("Object")
            .field("data", &Sizes(&self.data))
            .field("annotations", &self.annotations)
            .finish()
    }
}

/// The opaque version of a stored object, as returned by [`Store::get`] and
/// [`Store::put`]; compare-and-swap writes name the version they read.
///
/// Backends never hand out the same version twice for one (kind, name), even across a
/// delete and a re-create, so a stale version can never match by accident. The one
/// exception: a replace that changes nothing may return the version it replaced
/// (Kubernetes keeps the resourceVersion of such an update), which is still the
/// current version.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Version(String);

impl Version {
    /// Wraps a backend's version string (Kubernetes: `metadata.resourceVersion`).
    pub fn new(version: impl Into<String>) -> Self {
        Version(version.into())
    }

    /// The backend's version string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An object together with the version it was read at.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Stored {
    /// What is stored.
    pub object: Object,
    /// The version to name in a compare-and-swap write.
    pub version: Version,
}

/// Why a name was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("the name is empty")]
    Empty,
    /// The name is longer than the kind allows.
    #[error("the name is longer than {max} characters")]
    TooLong {
        /// The longest name of the kind.
        max: usize,
    },
    /// A character outside `[a-z0-9.-]`.
    #[error("the name may only contain a-z, 0-9, '.' and '-'")]
    InvalidChar,
    /// The name starts or ends with `.` or `-`.
    #[error("the name must start and end with a letter or a digit")]
    InvalidEdge,
    /// `root.pem`, the file backend's copy of the local CA's root.
    #[error("the name is reserved by the store")]
    Reserved,
}

/// Checks an object name: `[a-z0-9.-]`, at most [`max_name_len`] characters, starting
/// and ending with a letter or digit (so never `.`, `..` or a hidden file). One name is
/// reserved in every backend, so that code tested on one backend runs on all: `root.pem`
/// of [`Kind::Ca`], where the file backend publishes the local CA's certificate.
pub fn validate_name(kind: Kind, name: &str) -> Result<(), NameError> {
    check_name(name, max_name_len(kind))?;
    if kind == Kind::Ca && name == ROOT_PEM {
        return Err(NameError::Reserved);
    }
    Ok(())
}

/// Checks a lock name: as [`validate_name`], at most [`MAX_LOCK_NAME_LEN`] characters.
pub fn validate_lock_name(name: &str) -> Result<(), NameError> {
    check_name(name, MAX_LOCK_NAME_LEN)
}

/// Checks that every backend can store an object as it is: data keys are Kubernetes
/// Secret data keys (`[-._a-zA-Z0-9]`, at most 253), annotation keys start with one of
/// [`ANNOTATION_PREFIXES`] followed by a Kubernetes name segment. The reason names the
/// offending key, never a value.
pub fn validate_object(object: &Object) -> Result<(), String> {
    for key in object.data.keys() {
        let valid = !key.is_empty()
            && key.len() <= KUBE_NAME_MAX
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err(format!(
                "data key {key:?} is not a Secret data key ([-._a-zA-Z0-9], at most 253)"
            ));
        }
    }
    for key in object.annotations.keys() {
        let segment = ANNOTATION_PREFIXES
            .iter()
            .find_map(|prefix| key.strip_prefix(prefix));
        let valid = segment.is_some_and(|s| {
            let alnum = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
            s.len() <= 63
                && alnum(s.as_bytes().first())
                && alnum(s.as_bytes().last())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
        if !valid {
            return Err(format!(
                "annotation key {key:?} is not under {} followed by a name of at most 63 characters",
                ANNOTATION_PREFIXES.join(" or ")
            ));
        }
    }
    Ok(())
}

/// An object check as every backend reports it.
pub(crate) fn check_object(kind: Kind, name: &str, object: &Object) -> Result<(), StoreError> {
    validate_object(object).map_err(|reason| StoreError::InvalidObject {
        kind,
        name: name.to_owned(),
        reason,
    })
}

/// A name check as every backend reports it.
pub(crate) fn check(kind: Kind, name: &str) -> Result<(), StoreError> {
    validate_name(kind, name).map_err(|reason| StoreError::InvalidName {
        kind,
        name: name.to_owned(),
        reason,
    })
}

pub(crate) fn check_lock(name: &str) -> Result<(), LockError> {
    validate_lock_name(name).map_err(|reason| LockError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

pub(crate) fn conflict(kind: Kind, name: &str) -> StoreError {
    StoreError::Conflict {
        kind,
        name: name.to_owned(),
    }
}

fn check_name(name: &str, max: usize) -> Result<(), NameError> {
    let bytes = name.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return Err(NameError::Empty);
    };
    if bytes.len() > max {
        return Err(NameError::TooLong { max });
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
    {
        return Err(NameError::InvalidChar);
    }
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(first) || !alnum(last) {
        return Err(NameError::InvalidEdge);
    }
    Ok(())
}

/// Why a [`Store`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The name is not one every backend accepts.
    #[error("invalid {kind} name {name:?}")]
    InvalidName {
        /// The object's kind.
        kind: Kind,
        /// The name refused.
        name: String,
        /// Why.
        #[source]
        reason: NameError,
    },
    /// The compare-and-swap failed: the object exists (create), is gone or has another
    /// version (replace, delete). Re-read and decide again; never retry blindly.
    #[error("conflict on {kind} {name:?}: it was created, changed or deleted by someone else")]
    Conflict {
        /// The object's kind.
        kind: Kind,
        /// The object's name.
        name: String,
    },
    /// The file backend could not read or write a file.
    #[error("{path}", path = .path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The stored bytes are not an object this version of portico can read. The reason
    /// never quotes the stored content, which may be a private key.
    #[error("stored {kind} {name:?} is corrupt: {reason}")]
    Corrupt {
        /// The object's kind.
        kind: Kind,
        /// The object's name.
        name: String,
        /// What is wrong, never what is there.
        reason: String,
    },
    /// The object has a key no backend may store ([`validate_object`]).
    #[error("{kind} {name:?} cannot be stored: {reason}")]
    InvalidObject {
        /// The object's kind.
        kind: Kind,
        /// The object's name.
        name: String,
        /// Which key, and why.
        reason: String,
    },
    /// The backend's service (the Kubernetes API) could not be reached or answered
    /// with an error: the request may or may not have been applied (re-read before
    /// deciding).
    #[error("{action} failed")]
    Unavailable {
        /// What was attempted, e.g. `replace Secret portico-tls-example.com-0123`.
        action: String,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
}

/// Why a [`Locker`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock name is not one every backend accepts.
    #[error("invalid lock name {name:?}")]
    InvalidName {
        /// The name refused.
        name: String,
        /// Why.
        #[source]
        reason: NameError,
    },
    /// Someone else holds the lock now (it went stale and was taken over, or was
    /// released): whatever the lease protected must stop.
    #[error("lock {name:?} was lost to another holder")]
    Lost {
        /// The lock's name.
        name: String,
    },
    /// The file backend could not read or write a lock file.
    #[error("{path}", path = .path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The backend's service (the Kubernetes API) could not be reached or answered
    /// with an error. Not a loss by itself: [`hold`] counts the lease lost only when no
    /// renew succeeds in time.
    #[error("{action} failed")]
    Unavailable {
        /// What was attempted, e.g. `renew Lease portico-acme-0123`.
        action: String,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
}

/// One change seen by [`Store::watch`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Change {
    /// The object was created or replaced (or is there when the watch starts).
    Upsert(String, Stored),
    /// The object was deleted (or can no longer be read as an object of this kind).
    Removed(String),
}

/// Persistence of objects, by kind and name, with compare-and-swap writes.
pub trait Store: Send + Sync {
    /// The object and its version, or `None` if there is none.
    fn get<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Stored>, StoreError>>;

    /// Compare-and-swap write. `expected = None` creates, and fails with
    /// [`StoreError::Conflict`] if the object exists; `Some(v)` replaces only if the
    /// current version is `v`, else `Conflict` (also when the object is gone).
    /// Returns the new version.
    fn put<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
        object: &'a Object,
        expected: Option<&'a Version>,
    ) -> BoxFuture<'a, Result<Version, StoreError>>;

    /// Deletes; with `expected = Some(v)` only if the object is still at `v`
    /// ([`StoreError::Conflict`] otherwise). Deleting a missing object is `Ok(())`.
    fn delete<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
        expected: Option<&'a Version>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Every object of one kind, sorted by name.
    fn list<'a>(&'a self, kind: Kind) -> BoxFuture<'a, Result<Vec<(String, Stored)>, StoreError>>;

    /// Every object of one kind as [`Change::Upsert`], then every change as it happens,
    /// including changes by other processes (Kubernetes: other replicas; file: other
    /// processes on the same folder, seen by polling every couple of seconds).
    ///
    /// The backend keeps the watch alive across errors (it logs them, retries with
    /// back-off, and reports what changed meanwhile), so the channel never ends while the
    /// receiver lives; dropping the receiver stops the watch. Changes may be coalesced
    /// (two quick replaces can arrive as one `Upsert` of the latter), never reordered,
    /// and a version already reported is not reported again. Must be called inside a
    /// tokio runtime.
    fn watch(&self, kind: Kind) -> mpsc::Receiver<Change>;
}

/// Named mutual exclusion between processes, with a time to live.
///
/// Locks are not re-entrant: every successful [`Locker::try_acquire`] is a new holder,
/// and a second `try_acquire` of a held lock returns `None` even in the same process.
pub trait Locker: Send + Sync {
    /// `Some(lease)` if acquired: the lock was free, or its holder did not renew it
    /// within the holder's ttl (stale, taken over). `None` if someone else holds it.
    fn try_acquire<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, LockError>>;

    /// Refreshes the lease for another ttl. [`LockError::Lost`] if another holder took
    /// the lock over or it was released; a lease that went stale but was not taken over
    /// is simply refreshed.
    fn renew<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), LockError>>;

    /// Frees the lock so another holder need not wait for the ttl. A lease that was
    /// already lost is not an error: the lock is then left to its new holder.
    fn release<'a>(&'a self, lease: Lease) -> BoxFuture<'a, Result<(), LockError>>;
}

/// A held lock: its name, who holds it, and how long it lives without a renew.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Lease {
    name: String,
    holder: String,
    ttl: Duration,
}

impl Lease {
    /// For backends: a lease on `name` held by `holder` (unique per acquisition).
    pub fn new(name: impl Into<String>, holder: impl Into<String>, ttl: Duration) -> Self {
        Lease {
            name: name.into(),
            holder: holder.into(),
            ttl,
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The holder identity recorded in the lock (Kubernetes: `holderIdentity`).
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// How long the lease lives without a renew.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// Brings `known` (name → what a watch reported last) up to `current` (a full listing)
/// and returns the changes that takes: an `Upsert` for every new or changed version, a
/// `Removed` for every name that is gone.
pub(crate) fn diff(
    known: &mut BTreeMap<String, Stored>,
    current: Vec<(String, Stored)>,
) -> Vec<Change> {
    let mut changes = Vec::new();
    let current: BTreeMap<String, Stored> = current.into_iter().collect();
    known.retain(|name, _| {
        let keep = current.contains_key(name);
        if !keep {
            changes.push(Change::Removed(name.clone()));
        }
        keep
    });
    for (name, stored) in current {
        if known.get(&name).map(|k| &k.version) != Some(&stored.version) {
            changes.push(Change::Upsert(name.clone(), stored.clone()));
            known.insert(name, stored);
        }
    }
    changes
}

/// A fresh holder identity: the process id and 64 random bits, unique per acquisition.
pub(crate) fn new_holder_id() -> String {
    format!("{}-{:016x}", std::process::id(), random_u64())
}

/// Whether a lock last renewed `age` ago, with `ttl`, may be taken over: the rule of
/// the file and memory lockers (the Lease locker judges by what it has seen change).
/// A takeover is logged with the holder it replaces.
pub(crate) fn stale(name: &str, holder: &str, age: Duration, ttl: Duration) -> bool {
    if age <= ttl {
        return false;
    }
    tracing::info!(
        lock = name,
        stale_holder = holder,
        "taking over a stale lock"
    );
    true
}

/// 64 random bits, for holder ids, versions and temporary file names: from the
/// system's generator through aws-lc, the binary's one crypto library.
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // The system generator does not fail on Linux; if it ever did, a zero only makes a
    // name less unique, never a secret weaker (nothing secret is made from this).
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// Keeps a lease alive in the background: a task renews it every ttl/3 (ttl/10 after a
/// failed renew) and reports through [`LeaseGuard::lost`] when it is lost.
///
/// The lease counts as lost when a renew says [`LockError::Lost`], or when no renew has
/// succeeded for 2/3 of the ttl (errors, a slow backend): by then another process may
/// be about to take the lock over, so the holder must stop before that can happen.
/// This is the ratio of Kubernetes' leader election (renew deadline 10 s, lease 15 s).
///
/// The ACME manager uses it like this:
///
/// ```ignore
/// let Some(lease) = locker.try_acquire(&lock_name, ttl).await? else { return Ok(()) };
/// let guard = store::hold(locker.clone(), lease);
/// let mut lost = guard.lost();
/// tokio::select! {
///     result = order_certificate(..) => { guard.release().await?; result }
///     _ = lost.wait_for(|lost| *lost) => Err(..), // someone else has the lock now
/// }
/// ```
///
/// Call it right after acquiring: the first renew is due a third of the ttl later.
/// Must be called inside a tokio runtime.
pub fn hold(locker: Arc<dyn Locker>, lease: Lease) -> LeaseGuard {
    let (lost_tx, lost_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(renew_loop(locker.clone(), lease.clone(), lost_tx, stop_rx));
    LeaseGuard {
        locker,
        lease,
        lost: lost_rx,
        stop: Some(stop_tx),
        task: Some(task),
    }
}

async fn renew_loop(
    locker: Arc<dyn Locker>,
    lease: Lease,
    lost: watch::Sender<bool>,
    mut stop: oneshot::Receiver<()>,
) {
    use tokio::time::{Instant, sleep, timeout};

    let period = (lease.ttl / 3).max(Duration::from_millis(1));
    // After a failed renew the next comes this soon (client-go's retry period is a fifth
    // of its renew deadline): a period later, it came at the deadline itself, so one
    // refused or cut request lost the lease.
    let retry = (lease.ttl / 10).max(Duration::from_millis(1));
    let deadline = lease.ttl * 2 / 3;
    let mut last_renewed = Instant::now();
    let mut wait = period;
    loop {
        // A stop cancels only the wait, never a renew in flight, so that `release` runs
        // after the last renew and the two never race on the backend.
        tokio::select! {
            _ = &mut stop => return,
            _ = sleep(wait) => {}
        }
        let started = Instant::now();
        let left = (last_renewed + deadline).saturating_duration_since(started);
        wait = retry;
        match timeout(left, locker.renew(&lease)).await {
            Ok(Ok(())) => {
                last_renewed = started;
                wait = period;
            }
            Ok(Err(LockError::Lost { .. })) => {
                tracing::warn!(lock = lease.name, "lease lost to another holder");
                lost.send_replace(true);
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(lock = lease.name, error = %Chain(&e), retry_in = ?retry, "cannot renew lease")
            }
            Err(_) => {
                tracing::warn!(lock = lease.name, retry_in = ?retry, "renewing the lease timed out")
            }
        }
        if last_renewed.elapsed() >= deadline {
            tracing::warn!(
                lock = lease.name,
                "lease not renewed within its deadline: lost"
            );
            lost.send_replace(true);
            return;
        }
    }
}

/// A lease kept alive by [`hold`]. Dropping it stops renewing (the lock then goes stale
/// after its ttl); [`LeaseGuard::release`] frees it at once.
pub struct LeaseGuard {
    locker: Arc<dyn Locker>,
    lease: Lease,
    lost: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("lease", &self.lease)
            .field("lost", &self.is_lost())
            .finish_non_exhaustive()
    }
}

impl LeaseGuard {
    /// The lease kept alive.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Becomes `true` once the lease is lost; wait with `lost().wait_for(|l| *l)`, and
    /// treat an `Err` from it (the renew task is gone) as lost too.
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// `true` once the lease is lost, or if the renew task ended without saying so (it
    /// panicked): either way nothing renews the lease any more.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow() || self.lost.has_changed().is_err()
    }

    /// Stops renewing, waits for a renew in flight, and releases the lock.
    pub async fn release(mut self) -> Result<(), LockError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // A panic in the renew task only means the renewals stopped; the release
            // below is still right.
            let _ = task.await;
        }
        self.locker.release(self.lease.clone()).await
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        // Dropping the sender wakes the task, which then exits without renewing.
        self.stop.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let ok = |n: &str| validate_name(Kind::Certificate, n);
        assert_eq!(ok("portico-tls-example.com-0123"), Ok(()));
        assert_eq!(ok("a"), Ok(()));
        // "portico-tls-" + name is at most 253 characters: a Kubernetes object name.
        assert_eq!(ok(&"a".repeat(241)), Ok(()));
        assert_eq!(ok(""), Err(NameError::Empty));
        assert_eq!(ok("root.pem"), Ok(()));
        assert_eq!(
            validate_name(Kind::Ca, "root.pem"),
            Err(NameError::Reserved)
        );
        assert_eq!(ok(&"a".repeat(242)), Err(NameError::TooLong { max: 241 }));
        for kind in Kind::ALL {
            assert_eq!(max_name_len(kind) + kind.secret_prefix().len(), 253);
        }
        assert_eq!(
            max_name_len(Kind::Account),
            253 - "portico-acme-account-".len()
        );
        assert_eq!(
            validate_lock_name(&"a".repeat(246)),
            Err(NameError::TooLong { max: 245 })
        );
        for bad in ["A", "a/b", "a b", "a_b", "a\0", "é"] {
            assert_eq!(ok(bad), Err(NameError::InvalidChar), "{bad:?}");
        }
        for bad in [".", "..", ".a", "a.", "-a", "a-"] {
            assert_eq!(ok(bad), Err(NameError::InvalidEdge), "{bad:?}");
        }
    }

    #[test]
    fn objects_every_backend_can_store() {
        let ok = Object::new()
            .with_data("tls.crt", b"x".to_vec())
            .with_data("account.json", b"{}".to_vec())
            .with_data("key-authorization", b"".to_vec())
            .with_data("Under_score", b"".to_vec())
            .with_annotation("portico.dev/not-after", "2030-01-01T00:00:00Z")
            .with_annotation("cert-manager.io/alt-names", "a,b");
        assert_eq!(validate_object(&ok), Ok(()));
        for key in ["", "a/b", "a b", "é", &"k".repeat(254)] {
            let bad = Object::new().with_data(key, b"SECRET".to_vec());
            let reason = validate_object(&bad).unwrap_err();
            assert!(reason.contains("data key"), "{reason}");
            assert!(!reason.contains("SECRET"), "{reason}");
        }
        for key in [
            "other.io/x",
            "portico.dev/",
            "portico.dev/-x",
            "portico.dev/a/b",
            "note",
            &format!("portico.dev/{}", "a".repeat(64)),
        ] {
            let bad = Object::new().with_annotation(key, "v");
            let reason = validate_object(&bad).unwrap_err();
            assert!(reason.contains("annotation key"), "{key}: {reason}");
        }
    }

    #[test]
    fn object_debug_hides_bytes() {
        let o = Object::new()
            .with_data("tls.key", b"PRIVATE KEY".to_vec())
            .with_annotation("portico.dev/not-after", "2030-01-01T00:00:00Z");
        let s = format!("{o:?}");
        assert!(!s.contains("PRIVATE"), "{s}");
        assert!(
            s.contains("tls.key") && s.contains("11 bytes") && s.contains("2030"),
            "{s}"
        );
    }

    #[test]
    fn random_ids_differ() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| new_holder_id()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
