//! The file backend: the local binary's data folder (`storage.path`).
//!
//! ```text
//! <path>/                      0700
//!   account/<name>             0600  one object per file
//!   certificate/<name>         0600
//!   http01/<name>              0600
//!   ca/local-ca                0600  the local CA: tls.crt + tls.key
//!   ca/root.pem                0644  copy of local-ca's tls.crt, for `curl --cacert`
//!   locks/<name>.lock          0600  holder, ttl, last renewal
//!   <kind>/.guard, locks/.guard      empty; flock'ed around every check-then-write
//!   <kind>/.tmp-<random>             a write in progress (or a crash's leftover)
//! ```
//!
//! Each object is one small TOML file (format 1): `version`, `[annotations]`, `[data]`
//! for values that are plain text (PEM, JSON: readable when debugging) and `[binary]`
//! for any other value, hex-encoded. One file per object is what makes a write atomic:
//! it is written to a temporary file in the same folder, fsynced, and renamed over the
//! old one, so a reader sees the old object or the new one, never a mix.
//!
//! Compare-and-swap: the version is a counter plus 64 random bits, stored in the file.
//! A writer takes an exclusive `flock` on the folder's `.guard` file, compares, writes,
//! and lets go. `flock` excludes other processes and other open files of this one (two
//! `FileStore`s on one folder), and the kernel drops it when a process dies, so a crash
//! can never leave a stale write lock behind. Readers take no lock: rename is atomic.
//! The guard files are never deleted: deleting a file that others may have open and be
//! waiting to lock would split them across two files.
//!
//! Locks ([`Locker`]) are files `locks/<name>.lock`, read and rewritten under
//! `locks/.guard`, so taking over a stale lock is atomic: of two processes racing, the
//! second one finds the lock fresh. Their timestamps are wall-clock milliseconds: every
//! holder runs on this machine, so they share a clock.
//!
//! A watch ([`Store::watch`]) lists its kind's folder every [`WATCH_POLL`] and reports
//! the versions that changed: several processes may share the folder, and a listing
//! sees their writes as well as this one's, at the cost of a small delay.
//!
//! Needs a local Unix file system (`flock` on NFS is not reliable between two open files
//! of one process).

use crate::report::Chain;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{
    BoxFuture, Change, Kind, LOCAL_CA, Lease, LockError, Locker, Object, ROOT_PEM, Store,
    StoreError, Stored, Version, WATCH_BUFFER, check, check_lock, check_object, conflict,
    new_holder_id, random_u64, stale, validate_name,
};

const FORMAT: u32 = 1;
const LOCKS: &str = "locks";
const GUARD: &str = ".guard";
const TMP_PREFIX: &str = ".tmp-";
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
const PUBLIC_MODE: u32 = 0o644;
/// How often a watch lists its folder.
pub(super) const WATCH_POLL: Duration = Duration::from_secs(2);
/// Temporary files older than this are a crash's leftovers and removed by `open`; no
/// write takes anywhere near as long.
const STALE_TMP: Duration = Duration::from_secs(600);

/// A [`Store`] and [`Locker`] on a local folder. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    /// Opens the data folder, creating it and its subfolders (0700) if missing.
    ///
    /// An existing folder that others can read is tightened to 0700 (it holds private
    /// keys). Leftover temporary files of a crashed write are removed, and `ca/root.pem`
    /// is brought back in line with the stored local CA. This is blocking file work,
    /// meant for start-up.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let store = FileStore {
            root: path.as_ref().to_owned(),
        };
        ensure_dir(&store.root)?;
        for dir in Kind::ALL
            .iter()
            .map(|k| store.kind_dir(*k))
            .chain([store.locks_dir()])
        {
            ensure_dir(&dir)?;
            remove_stale_tmp(&dir);
        }
        store.repair_root_pem()?;
        Ok(store)
    }

    /// The data folder.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Where the file backend publishes the local CA's certificate for a data folder,
    /// without opening (or creating) it: what `portico check` prints.
    pub fn root_pem_path(data_dir: &Path) -> PathBuf {
        data_dir.join(Kind::Ca.as_str()).join(ROOT_PEM)
    }

    fn kind_dir(&self, kind: Kind) -> PathBuf {
        self.root.join(kind.as_str())
    }

    fn locks_dir(&self) -> PathBuf {
        self.root.join(LOCKS)
    }

    /// A crash between writing `ca/local-ca` and `ca/root.pem` leaves them apart.
    fn repair_root_pem(&self) -> Result<(), StoreError> {
        let dir = self.kind_dir(Kind::Ca);
        let _guard = Guard::lock(&dir)?;
        let path = dir.join(LOCAL_CA);
        let Some(bytes) = read_optional(&path)? else {
            return Ok(sync_root_pem(&dir, None)?);
        };
        // A corrupt CA object is reported by `get`, to the code that can act on it.
        if let Ok(stored) = decode(Kind::Ca, LOCAL_CA, &path, &bytes) {
            sync_root_pem(&dir, stored.object.get("tls.crt"))?;
        }
        Ok(())
    }

    fn get_blocking(&self, kind: Kind, name: &str) -> Result<Option<Stored>, StoreError> {
        let path = self.kind_dir(kind).join(name);
        match read_optional(&path)? {
            None => Ok(None),
            Some(bytes) => decode(kind, name, &path, &bytes).map(Some),
        }
    }

    fn put_blocking(
        &self,
        kind: Kind,
        name: &str,
        object: &Object,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        let dir = self.kind_dir(kind);
        let _guard = Guard::lock(&dir)?;
        let path = dir.join(name);
        let counter = match (read_optional(&path)?, expected) {
            (None, None) => 0,
            (Some(bytes), Some(expected)) => {
                let current = decode(kind, name, &path, &bytes)?.version;
                if &current != expected {
                    return Err(conflict(kind, name));
                }
                counter_of(&current)
            }
            (None, Some(_)) | (Some(_), None) => return Err(conflict(kind, name)),
        };
        let version = Version::new(format!("{}-{:016x}", counter + 1, random_u64()));
        write_atomic(&dir, name, &encode(object, &version), FILE_MODE)?;
        if kind == Kind::Ca && name == LOCAL_CA {
            sync_root_pem(&dir, object.get("tls.crt"))?;
        }
        tracing::debug!(%kind, name, %version, "stored");
        Ok(version)
    }

    fn delete_blocking(
        &self,
        kind: Kind,
        name: &str,
        expected: Option<&Version>,
    ) -> Result<(), StoreError> {
        let dir = self.kind_dir(kind);
        let _guard = Guard::lock(&dir)?;
        let path = dir.join(name);
        let Some(bytes) = read_optional(&path)? else {
            return Ok(());
        };
        if let Some(expected) = expected
            && &decode(kind, name, &path, &bytes)?.version != expected
        {
            return Err(conflict(kind, name));
        }
        remove_optional(&path)?;
        if kind == Kind::Ca && name == LOCAL_CA {
            remove_optional(&dir.join(ROOT_PEM))?;
        }
        sync_dir(&dir)?;
        tracing::debug!(%kind, name, "deleted");
        Ok(())
    }

    /// The object files of `kind`, by name. Temporary and guard files start with a dot,
    /// which no valid name does; anything else that is not an object (root.pem, a stray
    /// file) is skipped.
    fn object_files(&self, kind: Kind) -> Result<Vec<(String, PathBuf)>, StoreError> {
        let dir = self.kind_dir(kind);
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(at(&dir))? {
            let entry = entry.map_err(at(&dir))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if validate_name(kind, &name).is_ok()
                && entry.file_type().map_err(at(&entry.path()))?.is_file()
            {
                out.push((name, entry.path()));
            }
        }
        Ok(out)
    }

    fn list_blocking(&self, kind: Kind) -> Result<Vec<(String, Stored)>, StoreError> {
        let mut out = Vec::new();
        for (name, path) in self.object_files(kind)? {
            // Deleted between read_dir and here: it is simply not in the list.
            if let Some(bytes) = read_optional(&path)? {
                out.push((name.clone(), decode(kind, &name, &path, &bytes)?));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn lock_path(&self, name: &str) -> PathBuf {
        self.locks_dir().join(format!("{name}.lock"))
    }

    fn try_acquire_blocking(&self, name: &str, ttl: Duration) -> Result<Option<Lease>, LockError> {
        let dir = self.locks_dir();
        let _guard = Guard::lock(&dir)?;
        let path = self.lock_path(name);
        let now = unix_millis();
        if let Some(held) = read_lock(&path, ttl)? {
            let age = Duration::from_millis(now.saturating_sub(held.renewed_unix_ms));
            if !stale(name, &held.holder, age, Duration::from_millis(held.ttl_ms)) {
                return Ok(None);
            }
        }
        let lease = Lease::new(name, new_holder_id(), ttl);
        write_lock(&dir, &lease, now)?;
        Ok(Some(lease))
    }

    fn renew_blocking(&self, lease: &Lease) -> Result<(), LockError> {
        let dir = self.locks_dir();
        let _guard = Guard::lock(&dir)?;
        match read_lock(&self.lock_path(lease.name()), lease.ttl())? {
            Some(held) if held.holder == lease.holder() => write_lock(&dir, lease, unix_millis()),
            _ => Err(LockError::Lost {
                name: lease.name().to_owned(),
            }),
        }
    }

    fn release_blocking(&self, lease: &Lease) -> Result<(), LockError> {
        let dir = self.locks_dir();
        let _guard = Guard::lock(&dir)?;
        let path = self.lock_path(lease.name());
        if read_lock(&path, lease.ttl())?.is_some_and(|held| held.holder == lease.holder()) {
            remove_optional(&path)?;
            sync_dir(&dir)?;
        }
        Ok(())
    }
}

impl Store for FileStore {
    fn get<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
        Box::pin(async move {
            check(kind, name)?;
            let (this, name) = (self.clone(), name.to_owned());
            blocking(&self.root, move || this.get_blocking(kind, &name)).await
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
            let (this, name) = (self.clone(), name.to_owned());
            let (object, expected) = (object.clone(), expected.cloned());
            blocking(&self.root, move || {
                this.put_blocking(kind, &name, &object, expected.as_ref())
            })
            .await
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
            let (this, name, expected) = (self.clone(), name.to_owned(), expected.cloned());
            blocking(&self.root, move || {
                this.delete_blocking(kind, &name, expected.as_ref())
            })
            .await
        })
    }

    fn list<'a>(&'a self, kind: Kind) -> BoxFuture<'a, Result<Vec<(String, Stored)>, StoreError>> {
        Box::pin(async move {
            let this = self.clone();
            blocking(&self.root, move || this.list_blocking(kind)).await
        })
    }

    fn watch(&self, kind: Kind) -> mpsc::Receiver<Change> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tx.closed() => {}
                _ = this.poll(kind, &tx) => {}
            }
        });
        rx
    }
}

impl FileStore {
    /// The loop behind [`Store::watch`]; returns when the receiver is gone.
    async fn poll(&self, kind: Kind, tx: &mpsc::Sender<Change>) {
        let mut known = HashMap::new();
        // A corrupt file fails every listing until someone fixes it: say so once, not
        // every couple of seconds.
        let mut last_error = None;
        loop {
            let this = self.clone();
            let before = std::mem::take(&mut known);
            let scanned =
                tokio::task::spawn_blocking(move || this.scan_blocking(kind, before)).await;
            match scanned {
                Ok((now, Ok(changes))) => {
                    known = now;
                    last_error = None;
                    for change in changes {
                        if tx.send(change).await.is_err() {
                            return;
                        }
                    }
                }
                Ok((now, Err(e))) => {
                    known = now;
                    let text = Chain(&e).to_string();
                    if last_error.as_ref() != Some(&text) {
                        tracing::warn!(%kind, error = %text, "watch: cannot list the data folder; retrying");
                        last_error = Some(text);
                    }
                }
                // The scan panicked: start over, every object is reported again.
                Err(_) => known = HashMap::new(),
            }
            tokio::time::sleep(WATCH_POLL).await;
        }
    }

    /// One pass of a watch: the changes since `known` (what the watch reported last),
    /// and what it knows now (`known` itself when the pass fails). Only files whose
    /// stamp changed are read: with thousands of certificates, reading and parsing every
    /// object each pass cost a steady share of a core, and keeping every object to
    /// compare against held megabytes.
    fn scan_blocking(
        &self,
        kind: Kind,
        known: HashMap<String, Seen>,
    ) -> (HashMap<String, Seen>, Result<Vec<Change>, StoreError>) {
        let mut next = HashMap::with_capacity(known.len());
        let mut upserts = Vec::new();
        let scan = (|| -> Result<(), StoreError> {
            for (name, path) in self.object_files(kind)? {
                let meta = match fs::metadata(&path) {
                    Ok(meta) => meta,
                    // Deleted between read_dir and here: it is simply not in the list.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(at(&path)(e).into()),
                };
                let stamp = Stamp::of(&meta);
                let before = known.get(&name);
                if let Some(seen) = before.filter(|seen| seen.stamp == stamp) {
                    next.insert(name, seen.clone());
                    continue;
                }
                let Some(bytes) = read_optional(&path)? else {
                    continue;
                };
                let stored = decode(kind, &name, &path, &bytes)?;
                let seen = Seen {
                    stamp,
                    version: stored.version.clone(),
                };
                if before.map(|b| &b.version) != Some(&stored.version) {
                    upserts.push(Change::Upsert(name.clone(), stored));
                }
                next.insert(name, seen);
            }
            Ok(())
        })();
        if let Err(e) = scan {
            return (known, Err(e));
        }
        // Removals first, then upserts in name order, as `diff` reports a listing.
        let mut removed: Vec<String> = known
            .into_keys()
            .filter(|name| !next.contains_key(name))
            .collect();
        removed.sort();
        upserts.sort_by(|a, b| change_name(a).cmp(change_name(b)));
        let changes = removed
            .into_iter()
            .map(Change::Removed)
            .chain(upserts)
            .collect();
        (next, Ok(changes))
    }
}

fn change_name(change: &Change) -> &str {
    match change {
        Change::Upsert(name, _) | Change::Removed(name) => name,
    }
}

/// What a watch keeps of an object file between passes.
#[derive(Clone, Debug)]
struct Seen {
    stamp: Stamp,
    /// The version it reported last.
    version: Version,
}

/// Inode, length and modification time: every write renames a new file into place, so
/// a rewritten object always has a new stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp(u64, u64, i64, i64);

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp(meta.ino(), meta.len(), meta.mtime(), meta.mtime_nsec())
    }
}

impl Locker for FileStore {
    fn try_acquire<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, LockError>> {
        Box::pin(async move {
            check_lock(name)?;
            let (this, name) = (self.clone(), name.to_owned());
            blocking(&self.root, move || this.try_acquire_blocking(&name, ttl)).await
        })
    }

    fn renew<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), LockError>> {
        Box::pin(async move {
            check_lock(lease.name())?;
            let (this, lease) = (self.clone(), lease.clone());
            blocking(&self.root, move || this.renew_blocking(&lease)).await
        })
    }

    fn release<'a>(&'a self, lease: Lease) -> BoxFuture<'a, Result<(), LockError>> {
        Box::pin(async move {
            check_lock(lease.name())?;
            let this = self.clone();
            blocking(&self.root, move || this.release_blocking(&lease)).await
        })
    }
}

/// An I/O error and the file it happened on; becomes either module error.
struct IoAt {
    path: PathBuf,
    source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> IoAt + '_ {
    move |source| IoAt {
        path: path.to_owned(),
        source,
    }
}

impl From<IoAt> for StoreError {
    fn from(e: IoAt) -> Self {
        StoreError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

impl From<IoAt> for LockError {
    fn from(e: IoAt) -> Self {
        LockError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// Runs file work off the async threads: a write is several syscalls and fsyncs, and
/// taking a guard may wait for another process.
async fn blocking<T, E>(
    root: &Path,
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<IoAt> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => Err(IoAt {
                path: root.to_owned(),
                source: io::Error::other("the runtime is shutting down"),
            }
            .into()),
        },
    }
}

/// An exclusive `flock` on a folder's guard file, released on drop (or by the kernel
/// when the process dies).
struct Guard(#[allow(dead_code)] File);

impl Guard {
    fn lock(dir: &Path) -> Result<Guard, IoAt> {
        let path = dir.join(GUARD);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(at(&path))?;
        file.lock().map_err(at(&path))?;
        Ok(Guard(file))
    }
}

fn ensure_dir(dir: &Path) -> Result<(), IoAt> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(at(dir))?;
    let mode = fs::metadata(dir).map_err(at(dir))?.permissions().mode() & 0o777;
    if mode != DIR_MODE {
        if mode & 0o077 != 0 {
            tracing::warn!(path = %dir.display(), mode = format!("{mode:o}"), "data folder is open to others; setting 0700");
        }
        fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).map_err(at(dir))?;
    }
    Ok(())
}

fn remove_stale_tmp(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(TMP_PREFIX)
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_TMP));
        if stale {
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(path = %entry.path().display(), "removed a crashed write's temporary file")
                }
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %Chain(&e), "cannot remove a stale temporary file")
                }
            }
        }
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, IoAt> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(at(path)(e)),
    }
}

fn remove_optional(path: &Path) -> Result<(), IoAt> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(at(path)(e)),
        _ => Ok(()),
    }
}

/// Makes renames and removals in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), IoAt> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

/// Replaces `dir/name` with `bytes`: a temporary file in the same folder (so the rename
/// cannot cross file systems), fsynced before the rename so a crash leaves the old
/// content or the new, and the folder fsynced after it so the rename survives a crash.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), IoAt> {
    let tmp = dir.join(format!("{TMP_PREFIX}{:016x}", random_u64()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have taken bits off `mode`; the result must be exact.
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    let target = dir.join(name);
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, &target)) {
        let _ = fs::remove_file(&tmp);
        return Err(at(&target)(e));
    }
    sync_dir(dir)
}

/// Keeps `ca/root.pem` equal to the local CA's `tls.crt`, or absent without one.
fn sync_root_pem(ca_dir: &Path, cert: Option<&[u8]>) -> Result<(), IoAt> {
    let path = ca_dir.join(ROOT_PEM);
    match cert {
        Some(cert) if read_optional(&path)?.as_deref() != Some(cert) => {
            write_atomic(ca_dir, ROOT_PEM, cert, PUBLIC_MODE)
        }
        Some(_) => Ok(()),
        None if path.exists() => {
            remove_optional(&path)?;
            sync_dir(ca_dir)
        }
        None => Ok(()),
    }
}

/// The on-disk form of an object.
#[derive(Serialize, Deserialize)]
struct Record {
    format: u32,
    version: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
    /// Values that are text without control characters other than newline and tab:
    /// stored as they are, so PEM and JSON stay readable.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    data: BTreeMap<String, String>,
    /// Every other value, in lowercase hex.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    binary: BTreeMap<String, String>,
}

const HEADER: &str = "# portico store object. Written by portico (temporary file + rename); \
                      edit only while no portico uses this folder.\n";

fn encode(object: &Object, version: &Version) -> Vec<u8> {
    let mut record = Record {
        format: FORMAT,
        version: version.as_str().to_owned(),
        annotations: object.annotations.clone(),
        data: BTreeMap::new(),
        binary: BTreeMap::new(),
    };
    for (key, value) in &object.data {
        match plain_text(value) {
            Some(text) => record.data.insert(key.clone(), text.to_owned()),
            None => record.binary.insert(key.clone(), hex(value)),
        };
    }
    // Strings and string maps always serialize; a failure here is a bug in toml.
    let body = toml::to_string(&record).expect("an object record serializes to TOML");
    format!("{HEADER}{body}").into_bytes()
}

/// Carriage returns and other control characters go to `[binary]`: TOML allows parsers
/// to normalize newlines in multi-line strings, and the bytes must come back exactly.
fn plain_text(value: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(value).ok()?;
    text.chars()
        .all(|c| !c.is_control() || c == '\n' || c == '\t')
        .then_some(text)
}

/// Reads an object file. Errors never quote the file: it may hold a private key.
fn decode(kind: Kind, name: &str, path: &Path, bytes: &[u8]) -> Result<Stored, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        kind,
        name: name.to_owned(),
        reason: format!("{}: {reason}", path.display()),
    };
    let text = std::str::from_utf8(bytes).map_err(|_| corrupt("not UTF-8".into()))?;
    let record: Record = toml::from_str(text).map_err(|e| {
        // toml's message can quote a value; the line number is enough to find it.
        let line = e.span().map_or(0, |s| {
            text[..s.start.min(text.len())].matches('\n').count() + 1
        });
        corrupt(format!(
            "not a portico object file (TOML error at line {line})"
        ))
    })?;
    if record.format != FORMAT {
        return Err(corrupt(format!(
            "format {} is not supported (expected {FORMAT})",
            record.format
        )));
    }
    let mut data: BTreeMap<String, Vec<u8>> = record
        .data
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (key, value) in record.binary {
        let value = unhex(&value).ok_or_else(|| corrupt(format!("[binary] {key:?} is not hex")))?;
        if data.insert(key.clone(), value).is_some() {
            return Err(corrupt(format!("{key:?} is in both [data] and [binary]")));
        }
    }
    Ok(Stored {
        object: Object {
            data,
            annotations: record.annotations,
        },
        version: Version::new(record.version),
    })
}

/// The counter part of a version written by [`FileStore::put`]; 0 for anything else,
/// which only restarts the count (the random part keeps versions apart).
fn counter_of(version: &Version) -> u64 {
    version
        .as_str()
        .split_once('-')
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// The content of `locks/<name>.lock`.
#[derive(Serialize, Deserialize)]
struct LockRecord {
    holder: String,
    ttl_ms: u64,
    renewed_unix_ms: u64,
}

/// The lock's current record, if the file exists. A file that cannot be parsed (edited
/// by hand, say) must not block the lock forever: it is judged by its mtime against
/// the caller's ttl, with a holder nobody has.
fn read_lock(path: &Path, ttl: Duration) -> Result<Option<LockRecord>, IoAt> {
    let Some(bytes) = read_optional(path)? else {
        return Ok(None);
    };
    let parsed = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| toml::from_str::<LockRecord>(text).ok());
    if let Some(record) = parsed {
        return Ok(Some(record));
    }
    tracing::warn!(path = %path.display(), "unreadable lock file; judging it by its mtime");
    let modified = fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(at(path))?;
    Ok(Some(LockRecord {
        holder: String::new(),
        ttl_ms: millis(ttl),
        renewed_unix_ms: modified.duration_since(UNIX_EPOCH).map_or(0, millis),
    }))
}

fn write_lock(dir: &Path, lease: &Lease, now_unix_ms: u64) -> Result<(), LockError> {
    let record = LockRecord {
        holder: lease.holder().to_owned(),
        ttl_ms: millis(lease.ttl()),
        renewed_unix_ms: now_unix_ms,
    };
    let text = toml::to_string(&record).expect("a lock record serializes to TOML");
    let name = format!("{}.lock", lease.name());
    Ok(write_atomic(dir, &name, text.as_bytes(), FILE_MODE)?)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&all)).as_deref(), Some(&all[..]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("+1"), None);
    }

    #[test]
    fn text_and_binary_round_trip() {
        let values: [&[u8]; 13] = [
            b"",
            b"\n",
            b"\t",
            b"ends with a backslash\\\nnext line\\",
            b"trailing spaces  \n  \n",
            b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            b"\nleading newline",
            b"crlf\r\nline",
            b"quotes ' \" ''' \"\"\" \\ end\\",
            b"tab\tand \x7f del",
            b"nul\0",
            "unicode é ✓".as_bytes(),
            b"\xff\xfe not utf-8",
        ];
        let mut object = Object::new().with_annotation("portico.dev/not-after", "x\"y'z\n");
        for (i, v) in values.iter().enumerate() {
            object = object.with_data(format!("k{i}.with/odd key"), v.to_vec());
        }
        let version = Version::new("7-0123456789abcdef");
        let bytes = encode(&object, &version);
        let stored = decode(Kind::Certificate, "x", Path::new("x"), &bytes).unwrap();
        assert_eq!(stored.object, object);
        assert_eq!(stored.version, version);
        assert_eq!(counter_of(&version), 7);
    }

    #[test]
    fn corrupt_errors_do_not_quote_content() {
        let secret = "format = 1\nversion = \"1-0\"\n[data]\n\"tls.key\" = SECRETKEYMATERIAL\n";
        let e = decode(Kind::Account, "a", Path::new("f"), secret.as_bytes()).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{text}");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("line 4"), "{text}");

        let wrong_type = "format = 1\nversion = \"1-0\"\n[binary]\n\"tls.key\" = \"SECRETzz\"\n";
        let e = decode(Kind::Account, "a", Path::new("f"), wrong_type.as_bytes()).unwrap_err();
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }
}
