//! A fake Kubernetes API server for the tests: real HTTPS (a throwaway CA made here,
//! HTTP/1.1 and HTTP/2 by ALPN, like kube-apiserver), bearer tokens, and the real REST
//! wire format for the two resources portico stores things in: core/v1 Secrets and
//! coordination.k8s.io/v1 Leases, namespaced.
//!
//! ```ignore
//! let api = FakeApi::start().await;          // or FakeApi::start_in_thread() in a sync test
//! api.add_token("replica-a");
//! let kubeconfig = api.kubeconfig(dir.path(), "ingress", "replica-a");
//! ```
//!
//! The server always runs on a std thread of its own with its own tokio runtime, whichever
//! constructor is used: it serves as long as the [`FakeApi`] lives (drop = shutdown), from
//! sync tests and async tests alike, does not die with a `#[tokio::test]` runtime, and
//! keeps answering while the test's own runtime is blocked (a test waiting on a child
//! process). Every method is `&self`, synchronous and thread-safe. Portico replicas run in
//! other processes reach it through [`FakeApi::kubeconfig`] or
//! [`FakeApi::service_account_dir`]; give each replica its own token so that
//! [`FakeApi::cut_off`] and the request log can tell them apart.
//!
//! `FAKE_KUBE_DEBUG=1` prints every request's headers to stderr.
//!
//! # Faithful to (kube-apiserver 1.32: `k8s.io/apiserver` registry, handlers, watch cache)
//!
//! - One monotonic resourceVersion for the whole server (etcd's revision), a string of an
//!   integer, set on every create, update and delete; `uid`, `creationTimestamp` and
//!   `namespace` filled in on create; `creationTimestamp` and `uid` kept on update; no
//!   `generation` (Secrets and Leases have none).
//! - Create: 201; a resourceVersion in the body → 500 "resourceVersion should not be set
//!   on objects to be created" (no reason, as the real one); name taken → 409
//!   AlreadyExists; `generateName` (5 random characters from the real alphabet).
//! - Update (PUT): body name ≠ URL name → 400 BadRequest "the name of the object (a) does
//!   not match the name on the URL (b)" (the handler's `checkName` runs before any
//!   validation, so this is not a 422); a stale resourceVersion → 409 Conflict. Secrets
//!   (`AllowUnconditionalUpdate`, no `AllowCreateOnUpdate`): no resourceVersion → an
//!   unconditional update; a missing Secret → 404. Leases (the other way round): no
//!   resourceVersion → 422 `leases.coordination.k8s.io "x" is invalid:
//!   metadata.resourceVersion: Invalid value: 0x0: must be specified for an update`; PUT
//!   to a missing Lease creates it (201) whatever resourceVersion the body carries. A PUT
//!   that changes nothing keeps the old resourceVersion and sends no watch event (etcd3
//!   `GuaranteedUpdate` skips identical bytes).
//! - Delete: 200 with a `Success` Status carrying name, group, kind (the resource) and uid
//!   (`ReturnDeletedObject` is off for both); `preconditions.resourceVersion` /
//!   `preconditions.uid` in DeleteOptions → 409 Conflict with the storage layer's text
//!   ("StorageError: invalid object, Code: 4, Key: /registry/secrets/ns/x, ...
//!   Precondition failed: ResourceVersion in precondition: 5, ResourceVersion in object
//!   meta: 7"). The DELETED watch event carries the deletion's resourceVersion.
//! - PATCH with `application/merge-patch+json` or `application/strategic-merge-patch+json`
//!   (the same thing for these two types, which have no merge-keyed lists one patches);
//!   a resourceVersion in the patch is a precondition.
//! - Status bodies as `k8s.io/apimachinery/pkg/api/errors` builds them, fields in Go's
//!   order: NotFound, AlreadyExists, Conflict, Invalid (with `causes`), BadRequest,
//!   Forbidden, Unauthorized, Expired, InternalError, ServiceUnavailable, TooManyRequests
//!   (with `Retry-After`), Timeout, MethodNotAllowed.
//! - Decoding like the real serializer: unknown fields are dropped and named in a
//!   `Warning: 299` header (fieldValidation Warn, the default) or refused with 400 under
//!   `fieldValidation=Strict` (kubectl sends it); a wrong JSON type, bad base64 in `data`,
//!   a MicroTime (`acquireTime`, `renewTime`) without exactly 6 fractional digits → 400
//!   `Lease in version "v1" cannot be handled as a Lease: ...`. MicroTimes are stored in
//!   UTC. `null`s and empty `omitempty` fields vanish as Go's encoder drops them;
//!   `*string` fields such as `holderIdentity` keep `""`. Protobuf request bodies
//!   (kubectl's typed commands send them) are read too.
//! - Validation (422 `Secret "x" is invalid: ...`, several errors as `[a, b]`): object
//!   names (lowercase RFC 1123 subdomain, ≤ 253), label keys and values, annotation keys,
//!   Secret data keys, `kubernetes.io/tls` without the key `tls.crt` or `tls.key` (empty
//!   values pass), Secret `type` immutable, `immutable: true` Secrets, `uid` immutable,
//!   Lease `leaseDurationSeconds > 0`, `leaseTransitions >= 0`.
//! - `stringData` merged into `data` on write and never returned; `type` defaults to
//!   `Opaque`; a Lease always has `spec`.
//! - List: `kind: SecretList`/`LeaseList`, list `metadata.resourceVersion` = the current
//!   revision, items without `kind`/`apiVersion`; `limit`, `continue`,
//!   `remainingItemCount`; across namespaces at `/api/v1/secrets`.
//! - Label selectors (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`, comma-joined) and field
//!   selectors (`metadata.name`, `metadata.namespace`; Secrets also `type`) on list and
//!   watch.
//! - Watch: JSON lines `{"type":...,"object":...}`, chunked; `resourceVersion` ""/"0" →
//!   synthetic ADDED for what exists, then live; `N` → every event after N from a bounded
//!   history; N older than the history → HTTP 200, one `ERROR` event carrying a 410
//!   `Expired` Status "too old resource version: N (M)" (M: the oldest revision one may
//!   still resume from), then the end of the stream, as the watch cache does. An object
//!   that stops matching a label selector is seen as DELETED (its old state, the new
//!   resourceVersion), one that starts matching as ADDED (the cacher's filtering).
//!   `timeoutSeconds` ends the stream; BOOKMARKs with `allowWatchBookmarks`
//!   ([`FakeApi::bookmark`]); `sendInitialEvents=true` ends the initial ADDED events with
//!   a BOOKMARK annotated `k8s.io/initial-events-end`; the old single-object watch path.
//! - Discovery in the legacy format with `Content-Type: application/json`, which makes
//!   kubectl 1.32 fall back from aggregated discovery; namespaces readable (kubectl looks
//!   one up after a NotFound); an OpenAPI v3 index saying PATCH takes `fieldValidation`
//!   (kubectl then leaves validation to the server) and an empty OpenAPI v2 document
//!   (kubectl 1.20 then skips its own validation).
//! - Optional RBAC per token ([`FakeApi::set_rbac`]), refusals worded as the RBAC
//!   authorizer words them.
//!
//! # Left out
//!
//! - No other resources, no Namespace objects one can create (every namespace exists),
//!   no anonymous user (a missing token is 401, like `--anonymous-auth=false`), no
//!   protobuf or Table answers (always JSON, which every client accepts; kubectl prints its
//!   own columns), no server-side apply or JSON patch (415), no `deletecollection`, no
//!   managedFields, no finalizers or graceful deletion, no admission.
//! - `continue` pages through the current state, not a snapshot at the first page's
//!   revision; list `resourceVersion`/`resourceVersionMatch` are ignored (always the
//!   latest). A watch from a revision in the future waits for it (the real server answers
//!   504 after 3 s). Watches end only when asked (`timeoutSeconds`, [`FakeApi::compact`],
//!   [`FakeApi::close_watches`]), never on the server's own schedule, and never send
//!   bookmarks unprompted.
//! - Go's wording of JSON type errors and time parse errors is approximated after the
//!   exact prefix; the text of the 1 MiB Secret size limit is unverified.
//! - Faults are crude on purpose: a cut-off client sees its connection closed at once,
//!   not a silent timeout.
//!
//! # Checked against the real kubectl (tests/kube_fake.rs; kubectl 1.32 and 1.20)
//!
//! - discovery (1.32 falls back from aggregated discovery to the legacy documents);
//! - `create secret generic x --from-literal=a=b` (a protobuf body), `label`, then `get
//!   -o json` / `-o yaml`: base64 data, labels, namespace, uid, resourceVersion;
//! - `replace -f` with a stale resourceVersion: kubectl prints the Conflict message and
//!   fails; with the current one it succeeds; `replace` of an unchanged Lease keeps the
//!   revision;
//! - `create` of an existing name (AlreadyExists), `get` of a missing one (`Error from
//!   server (NotFound): secrets "nope" not found`), `delete`;
//! - `create -f` of a Lease (MicroTimes, stored in UTC), `get leases -o json`, `get lease
//!   NAME`; a MicroTime with 3 fractional digits refused;
//! - `get secrets -l ...` with `=`, `!=`, `in`, `!key` and `--field-selector`;
//! - `get secrets --watch -o name` sees an object created after it started;
//! - `create -f` with an invalid name, a `kubernetes.io/tls` Secret without `tls.key`
//!   (refused) and with both keys empty (accepted); `replace` changing a Secret's type;
//! - a wrong token (`You must be logged in to the server`), a revoked one, and a rotated
//!   `tokenFile`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

/// How many events the watch history keeps unless [`FakeApiOptions::history`] says
/// otherwise (the real watch cache keeps at least 100 per resource).
const DEFAULT_HISTORY: usize = 1000;
/// kube-apiserver's limit on a request body (3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;
/// core.MaxSecretSize.
const MAX_SECRET_SIZE: usize = 1024 * 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The two resources the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Secrets,
    Leases,
}

impl Resource {
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Secrets => "secrets",
            Resource::Leases => "leases",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Resource::Secrets => "",
            Resource::Leases => "coordination.k8s.io",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Resource::Secrets => "Secret",
            Resource::Leases => "Lease",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::Secrets => "v1",
            Resource::Leases => "coordination.k8s.io/v1",
        }
    }

    /// `schema.GroupResource.String()`: what NotFound, AlreadyExists and Conflict name.
    fn qualified(self) -> &'static str {
        match self {
            Resource::Secrets => "secrets",
            Resource::Leases => "leases.coordination.k8s.io",
        }
    }

    /// `schema.GroupKind.String()`: what Invalid names.
    fn qualified_kind(self) -> &'static str {
        match self {
            Resource::Secrets => "Secret",
            Resource::Leases => "Lease.coordination.k8s.io",
        }
    }

    fn schema(self) -> &'static [(&'static str, Ty)] {
        match self {
            Resource::Secrets => SECRET,
            Resource::Leases => LEASE,
        }
    }

    fn go_struct(self) -> &'static str {
        self.kind()
    }

    /// Secrets: `AllowUnconditionalUpdate` true, `AllowCreateOnUpdate` false; Leases the
    /// other way round (pkg/registry/{core/secret,coordination/lease}/strategy.go).
    fn unconditional_update(self) -> bool {
        self == Resource::Secrets
    }

    fn create_on_update(self) -> bool {
        self == Resource::Leases
    }
}

// ---------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct FakeApiOptions {
    /// Watch events kept for resuming watches; older resourceVersions get 410.
    pub history: usize,
    /// Offer `h2` by ALPN (kube-apiserver does). Off: HTTP/1.1 only.
    pub http2: bool,
}

impl Default for FakeApiOptions {
    fn default() -> Self {
        FakeApiOptions {
            history: DEFAULT_HISTORY,
            http2: true,
        }
    }
}

/// What the server has been asked, counted since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Every request that reached the HTTP layer (refused ones too).
    pub requests: usize,
    /// Create, update, patch and delete requests that got past authentication and
    /// injected faults, whatever their answer.
    pub writes: usize,
    /// Writes that changed the store (each one took a new resourceVersion).
    pub changes: usize,
    /// 409 Conflict answers (stale resourceVersion or failed delete precondition).
    pub conflicts: usize,
    /// Watch streams opened.
    pub watches: usize,
    /// TLS connections established, and how many of them chose HTTP/2 by ALPN.
    pub connections: usize,
    pub http2_connections: usize,
}

/// One request as the server saw it: method, path and query (as sent), bearer token.
pub type LoggedRequest = (String, String, Option<String>);

pub struct FakeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeApi {
    /// Starts the server (on its own thread; see the module doc). `async` so that it
    /// reads naturally in `#[tokio::test]`s; it does not depend on the caller's runtime.
    pub async fn start() -> FakeApi {
        FakeApi::start_in_thread()
    }

    /// [`FakeApi::start`] for sync code.
    pub fn start_in_thread() -> FakeApi {
        FakeApi::start_with(FakeApiOptions::default())
    }

    pub fn start_with(options: FakeApiOptions) -> FakeApi {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let (ca_pem, server_config) = tls_config(options.http2);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (epoch, _) = tokio::sync::watch::channel(0u64);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(options.history)),
            down: AtomicBool::new(false),
            epoch,
            latency_ms: AtomicU64::new(0),
            addr,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fake-kube-api".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
                    tokio::select! {
                        _ = accept_loop(serving, listener, acceptor) => {}
                        _ = stopped => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .unwrap();
        FakeApi {
            shared,
            addr,
            ca_pem,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT` (the leaf also names `localhost`).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The throwaway CA that signed the server's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn add_token(&self, token: &str) {
        self.state().tokens.insert(token.to_string());
    }

    /// Later requests with `token` get 401; open watches are not closed (the real server
    /// checks the token once per request).
    pub fn revoke_token(&self, token: &str) {
        self.state().tokens.remove(token);
    }

    /// Gives `token` (user `user`) a Role in `namespace` with `rules` (resource, verbs:
    /// "get", "list", "watch", "create", "update", "patch", "delete") and nothing else:
    /// other verbs, namespaces and cluster-wide requests get 403 Forbidden as the RBAC
    /// authorizer words it. Without a call, a token may do everything.
    pub fn set_rbac(
        &self,
        token: &str,
        user: &str,
        namespace: &str,
        rules: &[(Resource, &[&str])],
    ) {
        let rules = rules
            .iter()
            .flat_map(|(r, verbs)| verbs.iter().map(move |v| (*r, v.to_string())))
            .collect();
        self.state().rbac.insert(
            token.to_string(),
            Role {
                user: user.to_string(),
                namespace: namespace.to_string(),
                rules,
            },
        );
    }

    /// Added before every answer (before the request is processed, so a client that
    /// gives up first leaves no trace in the store).
    pub fn set_latency(&self, latency: Duration) {
        self.shared
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// The next `n` authenticated API requests (reads, watches and writes; not discovery)
    /// get `status` (429, 500, 503 or 504) as the real server would send it.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.state().fail = Some(Fail {
            left: n,
            status,
            writes_only: false,
        });
    }

    /// [`FakeApi::fail_next`] for create, update, patch and delete requests only.
    pub fn fail_next_writes(&self, n: usize, status: u16) {
        self.state().fail = Some(Fail {
            left: n,
            status,
            writes_only: true,
        });
    }

    /// The next write request (create, update, patch, delete) is carried out, whatever
    /// its outcome, then its connection is closed without an answer (HTTP/2: its stream
    /// is reset).
    pub fn lose_next_write_response(&self) {
        self.state().lose_next_write = true;
    }

    /// Another writer, at the worst moment: when the next update, patch or delete request
    /// for the object `name` arrives (after authentication and injected faults), `touch`
    /// is applied to the object as stored and the result saved as an update of its own
    /// (a new resourceVersion and a MODIFIED event, as if another client's PUT had landed
    /// first); then the request is carried out, so one that carries the resourceVersion
    /// it read meets a 409 Conflict. Fires once; stays armed while the object does not
    /// exist. [`FakeApi::touched_write_status`] says how the request fared.
    pub fn touch_before_next_write(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        touch: impl FnOnce(&mut Value) + Send + 'static,
    ) {
        let mut state = self.state();
        state.touch = Some(Touch {
            key: (resource, namespace.to_string(), name.to_string()),
            touch: Box::new(touch),
        });
        state.touched_status = None;
    }

    /// The status code answered to the write that met the last
    /// [`FakeApi::touch_before_next_write`], once there was one.
    pub fn touched_write_status(&self) -> Option<u16> {
        self.state().touched_status
    }

    /// While on, every request with `token` is dropped without an answer (HTTP/1.1: the
    /// connection is closed; HTTP/2: the stream is reset), and its open watches are cut
    /// the same way when this is turned on.
    pub fn cut_off(&self, token: &str, cut: bool) {
        let mut state = self.state();
        if cut {
            state.cut.insert(token.to_string());
            state.watchers.retain(|w| {
                if w.token.as_deref() == Some(token) {
                    let _ = w.tx.send(WatchMsg::Abort);
                    false
                } else {
                    true
                }
            });
        } else {
            state.cut.remove(token);
        }
    }

    /// Down: every open connection (watches included) is dropped, and new connections
    /// are accepted and closed at once. Up again: same port, same state.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            self.state().watchers.clear();
            self.shared.epoch.send_modify(|e| *e += 1);
        }
    }

    /// Forgets the whole watch history: a watch resuming from any earlier
    /// resourceVersion gets 410 Expired. Open watches are ended (cleanly), so clients
    /// must resume, and meet the 410.
    pub fn compact(&self) {
        let mut state = self.state();
        state.floor = state.rv;
        state.history.clear();
        state.watchers.clear();
    }

    /// Ends every open watch cleanly, as the real server does when a watch's own timeout
    /// runs out; clients resume from their last resourceVersion.
    pub fn close_watches(&self) {
        self.state().watchers.clear();
    }

    /// Sends a BOOKMARK with the current resourceVersion to every watch that allowed
    /// bookmarks.
    pub fn bookmark(&self) {
        let state = self.state();
        for w in &state.watchers {
            if w.bookmarks {
                let _ =
                    w.tx.send(WatchMsg::Line(bookmark_line(w.resource, state.rv, false)));
            }
        }
    }

    /// The objects of `resource` in `namespace`, as a GET would return them, by name.
    pub fn objects(&self, resource: Resource, namespace: &str) -> Vec<Value> {
        let state = self.state();
        state
            .objects
            .range((resource, namespace.to_string(), String::new())..)
            .take_while(|((r, ns, _), _)| *r == resource && ns == namespace)
            .map(|(_, o)| with_type(resource, o))
            .collect()
    }

    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        self.state()
            .objects
            .get(&(resource, namespace.to_string(), name.to_string()))
            .map(|o| with_type(resource, o))
    }

    /// Stores `object` as a create would (validation included), without a request:
    /// seeds a test. Panics with the Status if the server would refuse it.
    pub fn insert(&self, resource: Resource, namespace: &str, object: Value) -> Value {
        let body = serde_json::to_vec(&object).unwrap();
        let mut state = self.state();
        match state.create(resource, namespace, &body, &Query::default()) {
            Ok(created) => with_type(resource, &created),
            Err(status) => panic!("insert refused: {}", status.to_json()),
        }
    }

    /// Stores `object` as a PUT would (its resourceVersion, if any, is checked), without
    /// a request: another writer, as far as clients can tell. Returns the Status of a
    /// refusal as `Err`.
    pub fn update(
        &self,
        resource: Resource,
        namespace: &str,
        object: Value,
    ) -> Result<Value, String> {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let body = serde_json::to_vec(&object).unwrap();
        self.state()
            .update(resource, namespace, &name, &body, &Query::default())
            .map(|(o, _)| with_type(resource, &o))
            .map_err(|s| s.to_json())
    }

    /// Deletes an object without a request; false if there was none.
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> bool {
        self.state()
            .delete(resource, namespace, name, b"", &Query::default())
            .is_ok()
    }

    /// The changes to objects of `resource` in `namespace` that the watch history still
    /// holds (see [`FakeApiOptions::history`]), oldest first: the event type (`ADDED`,
    /// `MODIFIED`, `DELETED`) and the object after the change.
    pub fn history(&self, resource: Resource, namespace: &str) -> Vec<(&'static str, Value)> {
        self.state()
            .history
            .iter()
            .filter(|e| e.resource == resource && e.namespace == namespace)
            .map(|e| (e.kind.as_str(), e.object.clone()))
            .collect()
    }

    /// The current resourceVersion (etcd revision) of the whole server.
    pub fn resource_version(&self) -> u64 {
        self.state().rv
    }

    /// Every request so far: method, path and query, bearer token.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.state().requests.clone()
    }

    pub fn counters(&self) -> Counters {
        self.state().counters
    }

    /// Open watch streams, for `token` or all (`None`).
    pub fn open_watches(&self, token: Option<&str>) -> usize {
        let mut state = self.state();
        state.watchers.retain(|w| !w.tx.is_closed());
        state
            .watchers
            .iter()
            .filter(|w| token.is_none() || w.token.as_deref() == token)
            .count()
    }

    /// Writes a kubeconfig into `dir` (a new file each call) for this server: the CA as
    /// `certificate-authority-data`, `token`, and a context with `namespace`.
    pub fn kubeconfig(&self, dir: &Path, namespace: &str, token: &str) -> PathBuf {
        self.write_kubeconfig(dir, namespace, &format!("token: {}", quote(token)))
    }

    /// [`FakeApi::kubeconfig`] with `tokenFile: <token_file>` instead of the token: for
    /// tests that rotate the token.
    pub fn kubeconfig_with_token_file(
        &self,
        dir: &Path,
        namespace: &str,
        token_file: &Path,
    ) -> PathBuf {
        let line = format!("tokenFile: {}", quote(&token_file.display().to_string()));
        self.write_kubeconfig(dir, namespace, &line)
    }

    /// Writes what a pod's service account mount holds (`token`, `ca.crt`, `namespace`)
    /// into `dir`; returns `dir`.
    pub fn service_account_dir(&self, dir: &Path, namespace: &str, token: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("token"), token).unwrap();
        std::fs::write(dir.join("ca.crt"), &self.ca_pem).unwrap();
        std::fs::write(dir.join("namespace"), namespace).unwrap();
        dir.to_path_buf()
    }

    fn write_kubeconfig(&self, dir: &Path, namespace: &str, user_line: &str) -> PathBuf {
        let path = (1..)
            .map(|n| match n {
                1 => dir.join("kubeconfig"),
                n => dir.join(format!("kubeconfig-{n}")),
            })
            .find(|p| !p.exists())
            .unwrap();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: fake\n  user:\n    {user_line}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {}\ncurrent-context: fake\n",
            quote(&self.url()),
            base64_encode(self.ca_pem.as_bytes()),
            quote(namespace),
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A JSON string is a YAML double-quoted scalar.
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

// ---------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------

struct Shared {
    state: Mutex<State>,
    down: AtomicBool,
    /// Bumped to drop every open connection.
    epoch: tokio::sync::watch::Sender<u64>,
    latency_ms: AtomicU64,
    addr: SocketAddr,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not take the server down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone, Copy)]
struct Fail {
    left: usize,
    status: u16,
    writes_only: bool,
}

type Key = (Resource, String, String);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

struct Event {
    rv: u64,
    resource: Resource,
    namespace: String,
    kind: EventType,
    /// The object after the change (for DELETED: its last state, with the deletion's
    /// resourceVersion).
    object: Value,
    /// The object before (MODIFIED only).
    prev: Option<Value>,
}

enum WatchMsg {
    Line(Bytes),
    /// Cut the stream without ending it properly.
    Abort,
}

struct Watcher {
    token: Option<String>,
    resource: Resource,
    namespace: Option<String>,
    labels: Selector,
    fields: FieldSelector,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Event>,
    history_limit: usize,
    /// The oldest resourceVersion a watch may resume from.
    floor: u64,
    watchers: Vec<Watcher>,
    tokens: HashSet<String>,
    cut: HashSet<String>,
    requests: Vec<LoggedRequest>,
    counters: Counters,
    fail: Option<Fail>,
    lose_next_write: bool,
    touch: Option<Touch>,
    touched_status: Option<u16>,
    /// Namespaces as kubectl sees them; every namespace exists (made on first sight).
    namespaces: BTreeMap<String, Value>,
    rbac: HashMap<String, Role>,
}

/// See [`FakeApi::touch_before_next_write`].
struct Touch {
    key: Key,
    touch: Box<dyn FnOnce(&mut Value) + Send>,
}

struct Role {
    user: String,
    namespace: String,
    rules: HashSet<(Resource, String)>,
}

impl State {
    fn namespace(&mut self, name: &str) -> Value {
        self.namespaces
            .entry(name.to_string())
            .or_insert_with(|| {
                json!({
                    "kind": "Namespace",
                    "apiVersion": "v1",
                    "metadata": {
                        "name": name,
                        "uid": uuid(),
                        "resourceVersion": "1",
                        "creationTimestamp": now_rfc3339(),
                        "labels": {"kubernetes.io/metadata.name": name},
                    },
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                })
            })
            .clone()
    }

    fn new(history_limit: usize) -> State {
        State {
            // A fresh etcd starts at revision 1; the first write is 2.
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            floor: 1,
            watchers: Vec::new(),
            tokens: HashSet::new(),
            cut: HashSet::new(),
            requests: Vec::new(),
            counters: Counters::default(),
            fail: None,
            lose_next_write: false,
            touch: None,
            touched_status: None,
            namespaces: BTreeMap::new(),
            rbac: HashMap::new(),
        }
    }

    /// The RBAC authorizer's refusal, if `token` has rules that do not allow this.
    fn forbidden(
        &self,
        route: &Route,
        method: &str,
        query: &Query,
        token: &Option<String>,
    ) -> Option<Status> {
        let role = self.rbac.get(token.as_deref()?)?;
        let (resource, namespace, name) = match route {
            Route::Collection(r, ns) => (*r, ns.as_deref(), None),
            Route::Object(r, ns, name) => (*r, Some(ns.as_str()), Some(name.as_str())),
            _ => return None,
        };
        let verb = match (method, name.is_some(), query.flag("watch")) {
            ("GET", _, true) => "watch",
            ("GET", true, false) => "get",
            ("GET", false, false) => "list",
            ("POST", ..) => "create",
            ("PUT", ..) => "update",
            ("PATCH", ..) => "patch",
            ("DELETE", ..) => "delete",
            _ => return None,
        };
        if namespace == Some(role.namespace.as_str())
            && role.rules.contains(&(resource, verb.to_string()))
        {
            return None;
        }
        let subject = match name {
            Some(n) => format!("{} {}", resource.qualified(), quote(n)),
            None => resource.qualified().to_string(),
        };
        let scope = match namespace {
            Some(ns) => format!("in the namespace {}", quote(ns)),
            None => "at the cluster scope".to_string(),
        };
        let message = format!(
            "{subject} is forbidden: User {} cannot {verb} resource {} in API group {} {scope}",
            quote(&role.user),
            quote(resource.plural()),
            quote(resource.group()),
        );
        let mut details = Status::resource_details(resource, name.unwrap_or(""));
        if name.is_none() {
            details.name = None;
        }
        Some(Status::new(403, "Forbidden", &message).with_details(details))
    }

    /// Runs the armed touch if this write is to its object and the object exists;
    /// returns whether it ran.
    fn touch_before_write(&mut self, resource: Resource, namespace: &str, name: &str) -> bool {
        let key = (resource, namespace.to_string(), name.to_string());
        let armed = self.touch.as_ref().is_some_and(|t| t.key == key);
        let Some(current) = self.objects.get(&key).filter(|_| armed) else {
            return false;
        };
        let mut object = with_type(resource, current);
        let touch = self.touch.take().expect("armed");
        (touch.touch)(&mut object);
        let body = serde_json::to_vec(&object).unwrap();
        if let Err(status) = self.update(resource, namespace, name, &body, &Query::default()) {
            panic!("the touch was refused: {}", status.to_json());
        }
        true
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.counters.changes += 1;
        self.rv
    }

    fn record(&mut self, event: Event) {
        self.watchers.retain(|w| match convert(w, &event) {
            Some(line) => w.tx.send(WatchMsg::Line(line)).is_ok(),
            None => !w.tx.is_closed(),
        });
        self.history.push_back(event);
        while self.history.len() > self.history_limit {
            let dropped = self.history.pop_front().unwrap();
            self.floor = dropped.rv;
        }
    }

    // --- verbs ----------------------------------------------------------------------

    fn create(
        &mut self,
        resource: Resource,
        namespace: &str,
        body: &[u8],
        query: &Query,
    ) -> Result<Value, Status> {
        let (mut obj, _) = decode(resource, body, query.strict())?;
        check_namespace(&mut obj, namespace)?;
        let meta = meta_mut(&mut obj);
        if mstr(meta, "name").is_empty() {
            let prefix = mstr(meta, "generateName").to_string();
            if !prefix.is_empty() {
                meta.insert("name".into(), Value::String(generate_name(&prefix)));
            }
        }
        let name = mstr(meta_mut(&mut obj), "name").to_string();
        prepare(resource, &mut obj);
        let errs = validate(resource, &obj);
        if !errs.is_empty() {
            return Err(Status::invalid(resource, &name, errs));
        }
        let meta = meta_mut(&mut obj);
        if mstr(meta, "resourceVersion")
            .parse::<u64>()
            .is_ok_and(|v| v != 0)
        {
            return Err(Status::new(
                500,
                "",
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let key = (resource, namespace.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(Status::already_exists(resource, &name));
        }
        let meta = meta_mut(&mut obj);
        meta.insert("uid".into(), Value::String(uuid()));
        meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
        for field in SYSTEM_FIELDS_RESET_ON_CREATE {
            meta.remove(*field);
        }
        if query.dry_run() {
            meta.remove("resourceVersion");
            return Ok(obj);
        }
        let rv = self.next_rv();
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
        self.objects.insert(key, obj.clone());
        self.record(Event {
            rv,
            resource,
            namespace: namespace.to_string(),
            kind: EventType::Added,
            object: with_type(resource, &obj),
            prev: None,
        });
        Ok(obj)
    }

    /// PUT. Returns the object and whether it was created.
    fn update(
        &mut self,
        resource: Resource,
        namespace: &str,
        name: &str,
        body: &[u8],
        query: &Query,
    ) -> Result<(Value, bool), Status> {
        let (mut obj, _) = decode(resource, body, query.strict())?;
        let body_name = mstr(meta_mut(&mut obj), "name").to_string();
        if body_name != name {
            return Err(Status::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        check_namespace(&mut obj, namespace)?;
        self.store_update(resource, namespace, name, obj, query)
    }

    fn patch(
        &mut self,
        resource: Resource,
        namespace: &str,
        name: &str,
        content_type: &str,
        body: &[u8],
        query: &Query,
    ) -> Result<Value, Status> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        if media != "application/merge-patch+json"
            && media != "application/strategic-merge-patch+json"
        {
            return Err(Status::new(
                415,
                "UnsupportedMediaType",
                &format!(
                    "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (fake: {media} is not implemented)"
                ),
            ));
        }
        let key = (resource, namespace.to_string(), name.to_string());
        let Some(current) = self.objects.get(&key) else {
            return Err(Status::not_found(resource, name));
        };
        let patch: Value = serde_json::from_slice(body)
            .map_err(|e| Status::bad_request(format!("error decoding patch: {e}")))?;
        let mut patched = with_type(resource, current);
        merge_patch(&mut patched, &patch);
        let bytes = serde_json::to_vec(&patched).unwrap();
        let (mut obj, _) = decode(resource, &bytes, query.strict())?;
        let body_name = mstr(meta_mut(&mut obj), "name").to_string();
        if body_name != name {
            return Err(Status::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        check_namespace(&mut obj, namespace)?;
        self.store_update(resource, namespace, name, obj, query)
            .map(|(o, _)| o)
    }

    fn store_update(
        &mut self,
        resource: Resource,
        namespace: &str,
        name: &str,
        mut obj: Value,
        query: &Query,
    ) -> Result<(Value, bool), Status> {
        let key = (resource, namespace.to_string(), name.to_string());
        let body_rv = mstr(meta_mut(&mut obj), "resourceVersion").to_string();
        let Some(old) = self.objects.get(&key).cloned() else {
            if !resource.create_on_update() {
                return Err(Status::not_found(resource, name));
            }
            if let Some(uid) = meta_mut(&mut obj).get("uid").and_then(Value::as_str) {
                return Err(Status::conflict_with(
                    resource,
                    name,
                    &storage_precondition(resource, namespace, name, "UID", uid, ""),
                ));
            }
            meta_mut(&mut obj).remove("resourceVersion");
            let body = serde_json::to_vec(&obj).unwrap();
            return self
                .create(resource, namespace, &body, query)
                .map(|o| (o, true));
        };
        let old_rv = str_at(&old["metadata"], "resourceVersion").to_string();
        let new_rv: u64 = body_rv.parse().unwrap_or(0);
        if new_rv == 0 && !body_rv.is_empty() && body_rv != "0" {
            // The versioner's ParseUint error reaches the client as a bare 500.
            return Err(Status::new(
                500,
                "",
                &format!(
                    "strconv.ParseUint: parsing {}: invalid syntax",
                    quote(&body_rv)
                ),
            ));
        }
        if new_rv == 0 {
            if !resource.unconditional_update() {
                return Err(Status::invalid_resource(
                    resource,
                    name,
                    vec![FieldError::invalid_raw(
                        "metadata.resourceVersion",
                        "0x0",
                        "must be specified for an update",
                    )],
                ));
            }
        } else if body_rv != old_rv {
            self.counters.conflicts += 1;
            return Err(Status::conflict(resource, name));
        }
        prepare(resource, &mut obj);
        let meta = meta_mut(&mut obj);
        for field in [
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match old["metadata"].get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        if mstr(meta, "uid").is_empty() {
            meta.insert("uid".into(), old["metadata"]["uid"].clone());
        }
        meta.remove("managedFields");
        meta.remove("selfLink");
        meta.insert("resourceVersion".into(), Value::String(old_rv.clone()));
        let mut errs = validate(resource, &obj);
        errs.extend(validate_update(resource, &obj, &old));
        if !errs.is_empty() {
            return Err(Status::invalid(resource, name, errs));
        }
        if obj == old || query.dry_run() {
            return Ok((obj, false));
        }
        let rv = self.next_rv();
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
        self.objects.insert(key, obj.clone());
        self.record(Event {
            rv,
            resource,
            namespace: namespace.to_string(),
            kind: EventType::Modified,
            object: with_type(resource, &obj),
            prev: Some(with_type(resource, &old)),
        });
        Ok((obj, false))
    }

    fn delete(
        &mut self,
        resource: Resource,
        namespace: &str,
        name: &str,
        body: &[u8],
        query: &Query,
    ) -> Result<Status, Status> {
        let options: Value = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(body).map_err(|e| {
                Status::bad_request(format!(
                    "DeleteOptions in version \"v1\" cannot be handled as a DeleteOptions: {e}"
                ))
            })?
        };
        let key = (resource, namespace.to_string(), name.to_string());
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(Status::not_found(resource, name));
        };
        let pre = &options["preconditions"];
        let old_uid = str_at(&old["metadata"], "uid").to_string();
        let old_rv = str_at(&old["metadata"], "resourceVersion").to_string();
        if let Some(uid) = pre.get("uid").and_then(Value::as_str)
            && uid != old_uid
        {
            self.counters.conflicts += 1;
            let why = storage_precondition(resource, namespace, name, "UID", uid, &old_uid);
            return Err(Status::conflict_with(resource, name, &why));
        }
        if let Some(rv) = pre.get("resourceVersion").and_then(Value::as_str)
            && rv != old_rv
        {
            self.counters.conflicts += 1;
            let why =
                storage_precondition(resource, namespace, name, "ResourceVersion", rv, &old_rv);
            return Err(Status::conflict_with(resource, name, &why));
        }
        let success = Status::success(resource, name, &old_uid);
        if query.dry_run() || options["dryRun"].as_array().is_some_and(|a| !a.is_empty()) {
            return Ok(success);
        }
        self.objects.remove(&key);
        let rv = self.next_rv();
        let mut last = with_type(resource, &old);
        meta_mut(&mut last).insert("resourceVersion".into(), Value::String(rv.to_string()));
        self.record(Event {
            rv,
            resource,
            namespace: namespace.to_string(),
            kind: EventType::Deleted,
            object: last,
            prev: None,
        });
        Ok(success)
    }

    fn list(
        &self,
        resource: Resource,
        namespace: Option<&str>,
        query: &Query,
    ) -> Result<Value, Status> {
        let labels = Selector::parse(query.get("labelSelector").unwrap_or(""))?;
        let fields = FieldSelector::parse(resource, query.get("fieldSelector").unwrap_or(""))?;
        let limit: usize = match query.get("limit") {
            Some(l) if !l.is_empty() => l
                .parse()
                .map_err(|_| Status::bad_request(format!("invalid limit: {l}")))?,
            _ => 0,
        };
        let after: Option<Key> = match query.get("continue") {
            Some(c) if !c.is_empty() => Some(decode_continue(resource, c)?),
            _ => None,
        };
        let mut items = Vec::new();
        let mut more = None;
        let mut remaining = 0usize;
        for (key, obj) in &self.objects {
            if key.0 != resource || namespace.is_some_and(|ns| ns != key.1) {
                continue;
            }
            if after.as_ref().is_some_and(|a| key <= a) {
                continue;
            }
            if !labels.matches(obj) || !fields.matches(obj) {
                continue;
            }
            if limit > 0 && items.len() == limit {
                more.get_or_insert_with(|| items_last_key(&items, resource));
                remaining += 1;
                continue;
            }
            items.push(obj.clone());
        }
        let mut metadata = Map::new();
        metadata.insert("resourceVersion".into(), json!(self.rv.to_string()));
        if let Some(Some(last)) = more {
            metadata.insert("continue".into(), json!(encode_continue(&last)));
            metadata.insert("remainingItemCount".into(), json!(remaining));
        }
        Ok(json!({
            "kind": format!("{}List", resource.kind()),
            "apiVersion": resource.api_version(),
            "metadata": metadata,
            "items": items,
        }))
    }
}

/// Fields of ObjectMeta the server owns on create.
const SYSTEM_FIELDS_RESET_ON_CREATE: &[&str] = &[
    "selfLink",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
];

fn items_last_key(items: &[Value], resource: Resource) -> Option<Key> {
    items.last().map(|o| {
        (
            resource,
            str_at(&o["metadata"], "namespace").to_string(),
            str_at(&o["metadata"], "name").to_string(),
        )
    })
}

fn encode_continue(key: &Key) -> String {
    base64_encode(format!("{}\n{}", key.1, key.2).as_bytes())
}

fn decode_continue(resource: Resource, token: &str) -> Result<Key, Status> {
    let bad = || Status::bad_request("continue key is not valid".to_string());
    let raw = base64_decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (ns, name) = text.split_once('\n').ok_or_else(bad)?;
    Ok((resource, ns.to_string(), name.to_string()))
}

fn storage_precondition(
    resource: Resource,
    namespace: &str,
    name: &str,
    what: &str,
    wanted: &str,
    actual: &str,
) -> String {
    format!(
        "StorageError: invalid object, Code: 4, Key: /registry/{}/{namespace}/{name}, ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: {what} in precondition: {wanted}, {what} in object meta: {actual}",
        resource.plural()
    )
}

/// The metadata map of a decoded object (decode guarantees it exists).
fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let o = obj
        .as_object_mut()
        .expect("decoded objects are JSON objects");
    o.entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .expect("decoded metadata is an object")
}

fn mstr<'a>(m: &'a Map<String, Value>, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or("")
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The object as GET returns it: `kind` and `apiVersion` first.
fn with_type(resource: Resource, obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.insert("kind".into(), json!(resource.kind()));
        m.insert("apiVersion".into(), json!(resource.api_version()));
    }
    o
}

/// The object as stored: list items carry no `kind`/`apiVersion`.
fn without_type(mut obj: Value) -> Value {
    if let Some(m) = obj.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    obj
}

fn check_namespace(obj: &mut Value, namespace: &str) -> Result<(), Status> {
    let meta = meta_mut(obj);
    let given = mstr(meta, "namespace");
    if !given.is_empty() && given != namespace {
        return Err(Status::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
                .to_string(),
        ));
    }
    meta.insert("namespace".into(), json!(namespace));
    Ok(())
}

/// What the strategies' PrepareForCreate/Update and the defaulting do before validation.
fn prepare(resource: Resource, obj: &mut Value) {
    let o = obj.as_object_mut().unwrap();
    o.remove("kind");
    o.remove("apiVersion");
    if resource == Resource::Secrets {
        if let Some(Value::Object(string_data)) = o.remove("stringData") {
            let data = o
                .entry("data")
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .unwrap();
            for (k, v) in string_data {
                let text = v.as_str().unwrap_or_default();
                data.insert(k, json!(base64_encode(text.as_bytes())));
            }
        }
        if o.get("data")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
        {
            o.remove("data");
        }
        if o.get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            o.insert("type".into(), json!("Opaque"));
        }
    } else if !o.contains_key("spec") {
        o.insert("spec".into(), json!({}));
    }
}

fn generate_name(prefix: &str) -> String {
    // names.SimpleNameGenerator: 5 characters from an alphabet without vowels and 0/1/3.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut random = [0u8; 5];
    aws_lc_rs::rand::fill(&mut random).unwrap();
    let prefix = &prefix[..prefix.len().min(253 - 5)];
    let suffix: String = random
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    format!("{prefix}{suffix}")
}

fn uuid() -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn now_rfc3339() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// RFC 7386, which is also what a strategic merge patch does to these two types.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------------------

/// What `event` looks like to watcher `w`, if anything (the cacher's filtering).
fn convert(w: &Watcher, event: &Event) -> Option<Bytes> {
    if w.resource != event.resource || w.namespace.as_ref().is_some_and(|n| *n != event.namespace) {
        return None;
    }
    let passes = |o: &Value| w.labels.matches(o) && w.fields.matches(o);
    let (kind, object) = match event.kind {
        EventType::Added => {
            passes(&event.object).then(|| (EventType::Added, event.object.clone()))?
        }
        EventType::Deleted => {
            passes(&event.object).then(|| (EventType::Deleted, event.object.clone()))?
        }
        EventType::Modified => {
            let now = passes(&event.object);
            let before = event.prev.as_ref().is_some_and(passes);
            match (before, now) {
                (false, true) => (EventType::Added, event.object.clone()),
                (true, true) => (EventType::Modified, event.object.clone()),
                (true, false) => {
                    let mut old = event.prev.clone().unwrap();
                    meta_mut(&mut old)
                        .insert("resourceVersion".into(), json!(event.rv.to_string()));
                    (EventType::Deleted, old)
                }
                (false, false) => return None,
            }
        }
    };
    Some(event_line(kind.as_str(), &object))
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark_line(resource: Resource, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let object = json!({
        "kind": resource.kind(),
        "apiVersion": resource.api_version(),
        "metadata": metadata,
    });
    event_line("BOOKMARK", &object)
}

/// The body of an answer: whole, or a watch stream.
enum ApiBody {
    Full(Option<Bytes>),
    Watch {
        rx: mpsc::UnboundedReceiver<WatchMsg>,
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    },
}

impl hyper::body::Body for ApiBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            ApiBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ApiBody::Watch { rx, deadline } => {
                if let Some(d) = deadline
                    && d.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(None);
                }
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(WatchMsg::Line(line))) => {
                        Poll::Ready(Some(Ok(Frame::data(line))))
                    }
                    Poll::Ready(Some(WatchMsg::Abort)) => {
                        Poll::Ready(Some(Err(io::Error::other("watch cut off"))))
                    }
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ApiBody::Full(None))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            ApiBody::Full(Some(b)) => hyper::body::SizeHint::with_exact(b.len() as u64),
            ApiBody::Full(None) => hyper::body::SizeHint::with_exact(0),
            ApiBody::Watch { .. } => hyper::body::SizeHint::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

fn tls_config(http2: bool) -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "fake kube-apiserver CA");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(365);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kube-apiserver");
    leaf.distinguished_name = dn;
    leaf.subject_alt_names = vec![
        SanType::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        SanType::DnsName("localhost".try_into().unwrap()),
    ];
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = now - time::Duration::hours(1);
    leaf.not_after = now + time::Duration::days(365);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();

    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf_cert.der().clone()], key)
    .unwrap();
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    (ca_cert.pem(), Arc::new(config))
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // EMFILE and the like: try again shortly rather than spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if shared.down.load(Ordering::SeqCst) {
            drop(tcp);
            continue;
        }
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let mut epoch = shared.epoch.subscribe();
            epoch.borrow_and_update();
            let serve = async {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                {
                    let mut state = shared.state();
                    state.counters.connections += 1;
                    state.counters.http2_connections += usize::from(h2);
                }
                let io = TokioIo::new(tls);
                let serving = shared.clone();
                let service = hyper::service::service_fn(move |req| {
                    let shared = serving.clone();
                    async move { handle(shared, req).await }
                });
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = epoch.changed() => {}
            }
        });
    }
}

#[derive(Default, Debug)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            q.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k, true), percent_decode(v, true))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    fn strict(&self) -> bool {
        self.get("fieldValidation") == Some("Strict")
    }

    fn dry_run(&self) -> bool {
        self.0.iter().any(|(k, v)| k == "dryRun" && v == "All")
    }
}

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

enum Route {
    Version,
    Discovery(Value),
    Namespace(Option<String>),
    OpenApiV2,
    Collection(Resource, Option<String>),
    Object(Resource, String, String),
    NotFound,
}

fn route(path: &str, addr: SocketAddr) -> Route {
    let segments: Vec<String> = path
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .map(|s| percent_decode(s, false))
        .collect();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (resource, rest) = match s.as_slice() {
        ["version"] => return Route::Version,
        ["api"] => {
            return Route::Discovery(json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}],
            }));
        }
        ["apis"] => {
            return Route::Discovery(json!({
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [coordination_group()],
            }));
        }
        ["apis", "coordination.k8s.io"] => {
            let mut g = coordination_group();
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            return Route::Discovery(g);
        }
        ["api", "v1"] => {
            let mut list = resource_list(Resource::Secrets);
            list["resources"].as_array_mut().unwrap().insert(
                0,
                json!({
                    "name": "namespaces",
                    "singularName": "namespace",
                    "namespaced": false,
                    "kind": "Namespace",
                    "shortNames": ["ns"],
                    "verbs": ["get", "list"],
                    "storageVersionHash": "Q3oi5N2YM8M=",
                }),
            );
            return Route::Discovery(list);
        }
        ["apis", "coordination.k8s.io", "v1"] => {
            return Route::Discovery(resource_list(Resource::Leases));
        }
        ["openapi", "v2"] => return Route::OpenApiV2,
        ["openapi", "v3"] => return Route::Discovery(openapi_root()),
        ["openapi", "v3", "api", "v1"] => return Route::Discovery(openapi_doc(Resource::Secrets)),
        ["openapi", "v3", "apis", "coordination.k8s.io", "v1"] => {
            return Route::Discovery(openapi_doc(Resource::Leases));
        }
        ["api", "v1", "namespaces"] => return Route::Namespace(None),
        ["api", "v1", "namespaces", ns] => return Route::Namespace(Some(ns.to_string())),
        ["api", "v1", rest @ ..] => (Resource::Secrets, rest),
        ["apis", "coordination.k8s.io", "v1", rest @ ..] => (Resource::Leases, rest),
        _ => return Route::NotFound,
    };
    match rest {
        [r] if *r == resource.plural() => Route::Collection(resource, None),
        ["namespaces", ns, r] if *r == resource.plural() => {
            Route::Collection(resource, Some(ns.to_string()))
        }
        ["namespaces", ns, r, name] if *r == resource.plural() => {
            Route::Object(resource, ns.to_string(), name.to_string())
        }
        _ => Route::NotFound,
    }
}

/// Just enough OpenAPI v3 for kubectl to see that PATCH takes `fieldValidation`, so that
/// it leaves validation to the server (`fieldValidation=Strict`) instead of validating
/// against schemas this fake does not serve.
fn openapi_root() -> Value {
    json!({"paths": {
        "api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=0000000000000001"},
        "apis/coordination.k8s.io/v1": {
            "serverRelativeURL": "/openapi/v3/apis/coordination.k8s.io/v1?hash=0000000000000002"
        },
    }})
}

fn openapi_doc(resource: Resource) -> Value {
    let (prefix, version) = match resource {
        Resource::Secrets => ("/api/v1", "v1"),
        Resource::Leases => ("/apis/coordination.k8s.io/v1", "v1"),
    };
    let path = format!(
        "{prefix}/namespaces/{{namespace}}/{}/{{name}}",
        resource.plural()
    );
    let gvk = json!({"group": resource.group(), "version": version, "kind": resource.kind()});
    let mut paths = Map::new();
    paths.insert(
        path,
        json!({"patch": {
            "operationId": format!("patchNamespaced{}", resource.kind()),
            "parameters": [
                {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            ],
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
        }}),
    );
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
    })
}

fn coordination_group() -> Value {
    let v = json!({"groupVersion": "coordination.k8s.io/v1", "version": "v1"});
    json!({"name": "coordination.k8s.io", "versions": [v], "preferredVersion": v})
}

fn resource_list(resource: Resource) -> Value {
    let (group_version, singular, hash) = match resource {
        Resource::Secrets => ("v1", "secret", "S6u1pOWzb84="),
        Resource::Leases => ("coordination.k8s.io/v1", "lease", "gqkMMb/YqFM="),
    };
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [{
            "name": resource.plural(),
            "singularName": singular,
            "namespaced": true,
            "kind": resource.kind(),
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            "storageVersionHash": hash,
        }],
    })
}

fn bearer(req: &Request<Incoming>) -> Option<String> {
    let value = req
        .headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// An answer, or `Err` to drop the request without one.
type Answer = Result<Response<ApiBody>, io::Error>;

fn json_response(status: u16, body: String, extra: &[(&str, String)]) -> Response<ApiBody> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private");
    for (name, value) in extra {
        builder = builder.header(*name, value);
    }
    builder
        .body(ApiBody::Full(Some(Bytes::from(body))))
        .unwrap()
}

fn status_response(status: Status) -> Response<ApiBody> {
    let mut extra = Vec::new();
    if let Some(after) = status.retry_after {
        extra.push(("retry-after", after.to_string()));
    }
    json_response(status.http_code(), status.to_json(), &extra)
}

fn dropped() -> io::Error {
    io::Error::other("fake kube-apiserver: answer dropped on purpose")
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Answer {
    let token = bearer(&req);
    let method = req.method().clone();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    {
        let mut state = shared.state();
        state.counters.requests += 1;
        state
            .requests
            .push((method.to_string(), path_and_query.clone(), token.clone()));
    }
    let latency = shared.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    {
        let state = shared.state();
        if token.as_ref().is_some_and(|t| state.cut.contains(t)) {
            return Err(dropped());
        }
        if !token.as_ref().is_some_and(|t| state.tokens.contains(t)) {
            return Ok(status_response(Status::new(
                401,
                "Unauthorized",
                "Unauthorized",
            )));
        }
    }
    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query());
    let route = route(&path, shared.addr);
    let write = matches!(
        (&route, method.as_str()),
        (Route::Collection(..), "POST") | (Route::Object(..), "PUT" | "PATCH" | "DELETE")
    );
    if let Some(forbidden) = shared
        .state()
        .forbidden(&route, method.as_str(), &query, &token)
    {
        return Ok(status_response(forbidden));
    }
    if matches!(route, Route::Collection(..) | Route::Object(..)) {
        let mut state = shared.state();
        if let Some(fail) = state.fail.as_mut()
            && fail.left > 0
            && (write || !fail.writes_only)
        {
            fail.left -= 1;
            let status = fail.status;
            return Ok(status_response(Status::injected(status)));
        }
    }
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if std::env::var_os("FAKE_KUBE_DEBUG").is_some() {
        eprintln!("{method} {path_and_query} {:?}", req.headers());
    }
    let mut body = match read_body(req).await {
        Ok(b) => b,
        Err(status) => return Ok(status_response(status)),
    };
    if content_type.starts_with(proto::CONTENT_TYPE) {
        let converted = match (&route, method.as_str()) {
            (Route::Collection(r, _) | Route::Object(r, _, _), "POST" | "PUT") => {
                proto::object_to_json(*r, &body)
            }
            (Route::Object(..), "DELETE") => proto::delete_options_to_json(&body),
            _ => Err("the body of the request was in an unknown format".to_string()),
        };
        match converted {
            Ok(json) => body = json,
            Err(why) => return Ok(status_response(Status::bad_request(why))),
        }
    }
    match (route, method.as_str()) {
        (Route::Version, "GET") => Ok(json_response(200, version_json(), &[])),
        // kubectl before 1.27 validates manifests against OpenAPI v2, fetched as protobuf
        // (sent as octet-stream, as kube-openapi does: Go's mime parser refuses the
        // media type kubectl asks for). An empty document has no schema for any kind, so
        // kubectl skips its own validation and the server's (this fake's) applies.
        (Route::OpenApiV2, "GET") => Ok(Response::builder()
            .status(200)
            .header("content-type", "application/octet-stream")
            .body(ApiBody::Full(Some(Bytes::new())))
            .unwrap()),
        (Route::Namespace(name), "GET") => {
            let mut state = shared.state();
            Ok(match name {
                Some(name) => json_response(200, state.namespace(&name).to_string(), &[]),
                None => {
                    let mut names: Vec<String> =
                        state.objects.keys().map(|(_, ns, _)| ns.clone()).collect();
                    names.push("default".into());
                    names.sort();
                    names.dedup();
                    let items: Vec<Value> = names
                        .iter()
                        .map(|n| without_type(state.namespace(n)))
                        .collect();
                    let list = json!({
                        "kind": "NamespaceList",
                        "apiVersion": "v1",
                        "metadata": {"resourceVersion": state.rv.to_string()},
                        "items": items,
                    });
                    json_response(200, list.to_string(), &[])
                }
            })
        }
        (Route::Discovery(doc), "GET") => Ok(json_response(200, doc.to_string(), &[])),
        (Route::Collection(resource, ns), "GET") => {
            if query.flag("watch") {
                Ok(watch(&shared, resource, ns, None, &query, token))
            } else {
                let state = shared.state();
                Ok(match state.list(resource, ns.as_deref(), &query) {
                    Ok(list) => json_response(200, list.to_string(), &[]),
                    Err(s) => status_response(s),
                })
            }
        }
        (Route::Object(resource, ns, name), "GET") => {
            if query.flag("watch") {
                Ok(watch(
                    &shared,
                    resource,
                    Some(ns),
                    Some(name),
                    &query,
                    token,
                ))
            } else {
                let state = shared.state();
                Ok(match state.objects.get(&(resource, ns, name.clone())) {
                    Some(o) => json_response(200, with_type(resource, o).to_string(), &[]),
                    None => status_response(Status::not_found(resource, &name)),
                })
            }
        }
        (Route::Collection(resource, Some(ns)), "POST") => {
            let mut state = shared.state();
            state.counters.writes += 1;
            let warnings = unknown_field_warnings(resource, &body, &query);
            let result = state.create(resource, &ns, &body, &query);
            lose_or(
                &mut state,
                false,
                result.map(|o| (201, with_type(resource, &o).to_string(), warnings)),
            )
        }
        (Route::Object(resource, ns, name), "PUT") => {
            let mut state = shared.state();
            state.counters.writes += 1;
            let warnings = unknown_field_warnings(resource, &body, &query);
            let touched = state.touch_before_write(resource, &ns, &name);
            let result = state.update(resource, &ns, &name, &body, &query);
            lose_or(
                &mut state,
                touched,
                result.map(|(o, created)| {
                    (
                        if created { 201 } else { 200 },
                        with_type(resource, &o).to_string(),
                        warnings,
                    )
                }),
            )
        }
        (Route::Object(resource, ns, name), "PATCH") => {
            let mut state = shared.state();
            state.counters.writes += 1;
            let touched = state.touch_before_write(resource, &ns, &name);
            let result = state.patch(resource, &ns, &name, &content_type, &body, &query);
            lose_or(
                &mut state,
                touched,
                result.map(|o| (200, with_type(resource, &o).to_string(), Vec::new())),
            )
        }
        (Route::Object(resource, ns, name), "DELETE") => {
            let mut state = shared.state();
            state.counters.writes += 1;
            let touched = state.touch_before_write(resource, &ns, &name);
            let result = state.delete(resource, &ns, &name, &body, &query);
            lose_or(
                &mut state,
                touched,
                result.map(|s| (200, s.to_json(), Vec::new())),
            )
        }
        (Route::NotFound, _) => Ok(status_response(
            Status::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
            .with_details(Details::default()),
        )),
        // go-restful's answer for a method no route takes.
        _ => Ok(status_response(
            Status::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
            .with_details(Details::default()),
        )),
    }
}

/// Applies `lose_next_write_response`: the write happened, the answer is dropped. Notes
/// the answer of a write that met a touch.
fn lose_or(
    state: &mut State,
    touched: bool,
    result: Result<(u16, String, Vec<String>), Status>,
) -> Answer {
    if touched {
        state.touched_status = Some(match &result {
            Ok((code, ..)) => *code,
            Err(status) => status.http_code(),
        });
    }
    if std::mem::take(&mut state.lose_next_write) {
        return Err(dropped());
    }
    Ok(match result {
        Ok((code, obj, warnings)) => {
            let extra: Vec<(&str, String)> = warnings
                .iter()
                .map(|w| {
                    (
                        "warning",
                        format!("299 - {}", quote(&format!("unknown field {}", quote(w)))),
                    )
                })
                .collect();
            json_response(code, obj, &extra)
        }
        Err(status) => status_response(status),
    })
}

fn unknown_field_warnings(resource: Resource, body: &[u8], query: &Query) -> Vec<String> {
    if query.strict() || query.get("fieldValidation") == Some("Ignore") {
        return Vec::new();
    }
    decode(resource, body, false)
        .map(|(_, w)| w)
        .unwrap_or_default()
}

async fn read_body(req: Request<Incoming>) -> Result<Vec<u8>, Status> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes().to_vec()),
        Err(_) => Err(Status::new(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728",
        )),
    }
}

fn version_json() -> String {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0",
        "gitCommit": "70d3cc986aa8221cd1dfb1121852688902d3bf53",
        "gitTreeState": "clean",
        "buildDate": "2024-12-11T17:59:15Z",
        "goVersion": "go1.23.3",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
    .to_string()
}

fn watch(
    shared: &Shared,
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    query: &Query,
    token: Option<String>,
) -> Response<ApiBody> {
    let labels = match Selector::parse(query.get("labelSelector").unwrap_or("")) {
        Ok(s) => s,
        Err(s) => return status_response(s),
    };
    let mut fields = match FieldSelector::parse(resource, query.get("fieldSelector").unwrap_or(""))
    {
        Ok(s) => s,
        Err(s) => return status_response(s),
    };
    if let Some(name) = name {
        fields.0.push(("metadata.name".into(), true, name));
    }
    let deadline = match query.get("timeoutSeconds") {
        Some(t) if !t.is_empty() => match t.parse::<u64>() {
            Ok(secs) => Some(Box::pin(tokio::time::sleep(Duration::from_secs(secs)))),
            Err(_) => {
                return status_response(Status::bad_request(format!(
                    "invalid timeoutSeconds: {t}"
                )));
            }
        },
        _ => None,
    };
    let bookmarks = query.flag("allowWatchBookmarks");
    let initial_events = query.get("sendInitialEvents");
    let rv_param = query.get("resourceVersion").unwrap_or("");
    let (tx, rx) = mpsc::unbounded_channel();
    let watcher = Watcher {
        token,
        resource,
        namespace,
        labels,
        fields,
        bookmarks,
        tx,
    };
    let mut state = shared.state();
    state.counters.watches += 1;
    let send_initial = match initial_events {
        Some("true") => true,
        Some("false") => false,
        _ => rv_param.is_empty() || rv_param == "0",
    };
    if send_initial {
        for ((r, ns, _), obj) in &state.objects {
            if *r != resource || watcher.namespace.as_ref().is_some_and(|n| n != ns) {
                continue;
            }
            let obj = with_type(resource, obj);
            if watcher.labels.matches(&obj) && watcher.fields.matches(&obj) {
                let _ = watcher.tx.send(WatchMsg::Line(event_line("ADDED", &obj)));
            }
        }
        if initial_events == Some("true") {
            let _ = watcher
                .tx
                .send(WatchMsg::Line(bookmark_line(resource, state.rv, true)));
        }
    } else if !rv_param.is_empty() && rv_param != "0" {
        let Ok(from) = rv_param.parse::<u64>() else {
            return status_response(Status::bad_request(format!(
                "invalid resource version: {rv_param}"
            )));
        };
        if from < state.floor {
            let expired = Status::new(
                410,
                "Expired",
                &format!("too old resource version: {from} ({})", state.floor),
            );
            let object: Value = serde_json::from_str(&expired.to_json()).unwrap();
            return json_response(
                200,
                String::from_utf8(event_line("ERROR", &object).to_vec()).unwrap(),
                &[],
            );
        }
        for event in state.history.iter().filter(|e| e.rv > from) {
            if let Some(line) = convert(&watcher, event) {
                let _ = watcher.tx.send(WatchMsg::Line(line));
            }
        }
    }
    state.watchers.push(watcher);
    drop(state);
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(ApiBody::Watch { rx, deadline })
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct Details {
    name: Option<String>,
    group: Option<String>,
    kind: Option<String>,
    uid: Option<String>,
    causes: Vec<Cause>,
}

#[derive(Clone, Debug)]
struct Cause {
    reason: String,
    message: String,
    field: String,
}

/// A `metav1.Status`, written in Go's field order.
#[derive(Clone, Debug)]
struct Status {
    code: u16,
    success: bool,
    reason: String,
    message: String,
    details: Option<Box<Details>>,
    retry_after: Option<u64>,
}

impl Status {
    fn new(code: u16, reason: &str, message: &str) -> Status {
        Status {
            code,
            success: false,
            reason: reason.to_string(),
            message: message.to_string(),
            details: None,
            retry_after: None,
        }
    }

    fn with_details(mut self, details: Details) -> Status {
        self.details = Some(Box::new(details));
        self
    }

    fn resource_details(resource: Resource, name: &str) -> Details {
        Details {
            name: Some(name.to_string()),
            group: Some(resource.group().to_string()).filter(|g| !g.is_empty()),
            kind: Some(resource.plural().to_string()),
            ..Details::default()
        }
    }

    fn not_found(resource: Resource, name: &str) -> Status {
        Status::new(
            404,
            "NotFound",
            &format!("{} {} not found", resource.qualified(), quote(name)),
        )
        .with_details(Status::resource_details(resource, name))
    }

    fn already_exists(resource: Resource, name: &str) -> Status {
        Status::new(
            409,
            "AlreadyExists",
            &format!("{} {} already exists", resource.qualified(), quote(name)),
        )
        .with_details(Status::resource_details(resource, name))
    }

    fn conflict(resource: Resource, name: &str) -> Status {
        Status::conflict_with(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    fn conflict_with(resource: Resource, name: &str, why: &str) -> Status {
        Status::new(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {} {}: {why}",
                resource.qualified(),
                quote(name)
            ),
        )
        .with_details(Status::resource_details(resource, name))
    }

    fn bad_request(message: String) -> Status {
        Status::new(400, "BadRequest", &message)
    }

    /// `NewInvalid(GroupKind{group, Kind}, ...)`, as validation reports it.
    fn invalid(resource: Resource, name: &str, errs: Vec<FieldError>) -> Status {
        Status::invalid_as(
            resource.qualified_kind(),
            resource.group(),
            resource.kind(),
            name,
            errs,
        )
    }

    /// `NewInvalid(GroupKind{group, resource})`: what the registry's update path reports
    /// (it puts the resource where the kind goes).
    fn invalid_resource(resource: Resource, name: &str, errs: Vec<FieldError>) -> Status {
        Status::invalid_as(
            resource.qualified(),
            resource.group(),
            resource.plural(),
            name,
            errs,
        )
    }

    fn invalid_as(
        qualified: &str,
        group: &str,
        kind: &str,
        name: &str,
        errs: Vec<FieldError>,
    ) -> Status {
        let mut seen = HashSet::new();
        let mut messages = Vec::new();
        for e in &errs {
            let m = e.to_string();
            if seen.insert(m.clone()) {
                messages.push(m);
            }
        }
        let aggregated = if messages.len() == 1 {
            messages.pop().unwrap()
        } else {
            format!("[{}]", messages.join(", "))
        };
        Status::new(
            422,
            "Invalid",
            &format!("{qualified} {} is invalid: {aggregated}", quote(name)),
        )
        .with_details(Details {
            name: Some(name.to_string()),
            group: Some(group.to_string()).filter(|g| !g.is_empty()),
            kind: Some(kind.to_string()),
            uid: None,
            causes: errs
                .iter()
                .map(|e| Cause {
                    reason: e.kind.reason().to_string(),
                    message: e.body(),
                    field: e.field.clone(),
                })
                .collect(),
        })
    }

    fn success(resource: Resource, name: &str, uid: &str) -> Status {
        let mut details = Status::resource_details(resource, name);
        details.uid = Some(uid.to_string());
        Status {
            code: 0,
            success: true,
            reason: String::new(),
            message: String::new(),
            details: Some(Box::new(details)),
            retry_after: None,
        }
    }

    fn injected(code: u16) -> Status {
        match code {
            429 => {
                let mut s = Status::new(
                    429,
                    "TooManyRequests",
                    "Too many requests, please try again later.",
                )
                .with_details(Details::default());
                s.retry_after = Some(1);
                s
            }
            500 => Status::new(
                500,
                "InternalError",
                "Internal error occurred: injected fault",
            )
            .with_details(Details {
                causes: vec![Cause {
                    reason: String::new(),
                    message: "injected fault".into(),
                    field: String::new(),
                }],
                ..Details::default()
            }),
            503 => Status::new(503, "ServiceUnavailable", "injected fault"),
            504 => Status::new(
                504,
                "Timeout",
                "Timeout: request did not complete within requested timeout - context deadline exceeded",
            )
            .with_details(Details::default()),
            other => Status::new(other, "InternalError", "injected fault"),
        }
    }

    /// The answer's HTTP status (a Success Status carries no `code`; it is sent as 200).
    fn http_code(&self) -> u16 {
        if self.success { 200 } else { self.code }
    }

    fn to_json(&self) -> String {
        let mut out = String::from(r#"{"kind":"Status","apiVersion":"v1","metadata":{},"#);
        out.push_str(if self.success {
            r#""status":"Success""#
        } else {
            r#""status":"Failure""#
        });
        if !self.message.is_empty() {
            out.push_str(&format!(",\"message\":{}", quote(&self.message)));
        }
        if !self.reason.is_empty() {
            out.push_str(&format!(",\"reason\":{}", quote(&self.reason)));
        }
        if let Some(d) = &self.details {
            let mut parts = Vec::new();
            for (k, v) in [
                ("name", &d.name),
                ("group", &d.group),
                ("kind", &d.kind),
                ("uid", &d.uid),
            ] {
                if let Some(v) = v {
                    parts.push(format!("{}:{}", quote(k), quote(v)));
                }
            }
            if !d.causes.is_empty() {
                let causes: Vec<String> = d
                    .causes
                    .iter()
                    .map(|c| {
                        let mut f = Vec::new();
                        if !c.reason.is_empty() {
                            f.push(format!("\"reason\":{}", quote(&c.reason)));
                        }
                        if !c.message.is_empty() {
                            f.push(format!("\"message\":{}", quote(&c.message)));
                        }
                        if !c.field.is_empty() {
                            f.push(format!("\"field\":{}", quote(&c.field)));
                        }
                        format!("{{{}}}", f.join(","))
                    })
                    .collect();
                parts.push(format!("\"causes\":[{}]", causes.join(",")));
            }
            if let Some(after) = self.retry_after {
                parts.push(format!("\"retryAfterSeconds\":{after}"));
            }
            out.push_str(&format!(",\"details\":{{{}}}", parts.join(",")));
        }
        if !self.success {
            out.push_str(&format!(",\"code\":{}", self.code));
        }
        out.push('}');
        out
    }
}

// ---------------------------------------------------------------------------------------
// Decoding (the JSON serializer) and validation
// ---------------------------------------------------------------------------------------

/// Go field types of Secret, Lease and ObjectMeta, with their `omitempty` behaviour.
#[derive(Clone, Copy)]
enum Ty {
    /// `string` with omitempty: "" is dropped.
    Str,
    /// `*string`: "" is kept.
    PStr,
    /// `int64` with omitempty.
    Int64,
    /// `*int32` / `*int64`: 0 is kept.
    PInt32,
    PInt64,
    PBool,
    /// `metav1.Time` (RFC 3339, stored to the second).
    Time,
    /// `*metav1.MicroTime` (RFC 3339 with exactly 6 fractional digits).
    MicroTime,
    MapStr,
    /// `map[string][]byte`: base64 values.
    MapBytes,
    ListStr,
    /// Kept as given (ownerReferences, managedFields).
    List,
    Obj(&'static str, &'static [(&'static str, Ty)]),
}

const META: &[(&str, Ty)] = &[
    ("name", Ty::Str),
    ("generateName", Ty::Str),
    ("namespace", Ty::Str),
    ("selfLink", Ty::Str),
    ("uid", Ty::Str),
    ("resourceVersion", Ty::Str),
    ("generation", Ty::Int64),
    ("creationTimestamp", Ty::Time),
    ("deletionTimestamp", Ty::Time),
    ("deletionGracePeriodSeconds", Ty::PInt64),
    ("labels", Ty::MapStr),
    ("annotations", Ty::MapStr),
    ("ownerReferences", Ty::List),
    ("finalizers", Ty::ListStr),
    ("managedFields", Ty::List),
];

const SECRET: &[(&str, Ty)] = &[
    ("kind", Ty::Str),
    ("apiVersion", Ty::Str),
    ("metadata", Ty::Obj("ObjectMeta", META)),
    ("immutable", Ty::PBool),
    ("data", Ty::MapBytes),
    ("stringData", Ty::MapStr),
    ("type", Ty::Str),
];

const LEASE_SPEC: &[(&str, Ty)] = &[
    ("holderIdentity", Ty::PStr),
    ("leaseDurationSeconds", Ty::PInt32),
    ("acquireTime", Ty::MicroTime),
    ("renewTime", Ty::MicroTime),
    ("leaseTransitions", Ty::PInt32),
    ("strategy", Ty::PStr),
    ("preferredHolder", Ty::PStr),
];

const LEASE: &[(&str, Ty)] = &[
    ("kind", Ty::Str),
    ("apiVersion", Ty::Str),
    ("metadata", Ty::Obj("ObjectMeta", META)),
    ("spec", Ty::Obj("LeaseSpec", LEASE_SPEC)),
];

struct Decoder {
    unknown: Vec<String>,
}

/// Decodes a request body as the real server would: type errors are 400, unknown fields
/// are dropped (and listed), `null`s and empty `omitempty` fields vanish, times are
/// normalised. Returns the object and the unknown fields' paths.
fn decode(resource: Resource, body: &[u8], strict: bool) -> Result<(Value, Vec<String>), Status> {
    let kind = resource.kind();
    let version = resource.api_version().rsplit('/').next().unwrap();
    let cannot = |why: String| {
        Status::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {why}"
        ))
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Status::bad_request(format!(
            "the object provided is unrecognized (must be of type {kind}): couldn't get version/kind; json parse error: {e}"
        ))
    })?;
    let Value::Object(top) = value else {
        return Err(cannot(format!(
            "json: cannot unmarshal {} into Go value of type struct {{ APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; Kind string \"json:\\\"kind,omitempty\\\"\" }}",
            json_type(&value)
        )));
    };
    if let Some(k) = top.get("kind").and_then(Value::as_str)
        && !k.is_empty()
        && k != kind
    {
        return Err(cannot(format!(
            "no kind \"{k}\" is registered for the endpoint of kind {kind}"
        )));
    }
    if let Some(v) = top.get("apiVersion").and_then(Value::as_str)
        && !v.is_empty()
        && v != resource.api_version()
    {
        return Err(Status::bad_request(format!(
            "the API version in the data ({v}) does not match the expected API version ({})",
            resource.api_version()
        )));
    }
    let mut decoder = Decoder {
        unknown: Vec::new(),
    };
    let obj = decoder
        .object(resource.go_struct(), resource.schema(), top, "")
        .map_err(cannot)?;
    if strict && !decoder.unknown.is_empty() {
        let list: Vec<String> = decoder
            .unknown
            .iter()
            .map(|f| format!("unknown field {}", quote(f)))
            .collect();
        return Err(cannot(format!(
            "strict decoding error: {}",
            list.join(", ")
        )));
    }
    Ok((Value::Object(obj), decoder.unknown))
}

fn json_type(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(_) => "number".into(),
        Value::String(_) => "string".into(),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
    }
}

impl Decoder {
    fn object(
        &mut self,
        go_struct: &str,
        schema: &[(&str, Ty)],
        input: Map<String, Value>,
        prefix: &str,
    ) -> Result<Map<String, Value>, String> {
        let mut out = Map::new();
        for (key, value) in input {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            let Some((_, ty)) = schema.iter().find(|(k, _)| *k == key) else {
                self.unknown.push(path);
                continue;
            };
            if value.is_null() {
                continue;
            }
            let type_err = |go_type: &str| {
                format!(
                    "json: cannot unmarshal {} into Go struct field {go_struct}.{path} of type {go_type}",
                    json_type(&value)
                )
            };
            let kept = match *ty {
                Ty::Str => {
                    let s = value.as_str().ok_or_else(|| type_err("string"))?;
                    (!s.is_empty()).then(|| value.clone())
                }
                Ty::PStr => {
                    value.as_str().ok_or_else(|| type_err("string"))?;
                    Some(value.clone())
                }
                Ty::Int64 => {
                    let n = value.as_i64().ok_or_else(|| type_err("int64"))?;
                    (n != 0).then(|| value.clone())
                }
                Ty::PInt64 => {
                    value.as_i64().ok_or_else(|| type_err("int64"))?;
                    Some(value.clone())
                }
                Ty::PInt32 => {
                    let n = value.as_i64().ok_or_else(|| type_err("int32"))?;
                    if i32::try_from(n).is_err() {
                        return Err(format!(
                            "json: cannot unmarshal number {n} into Go struct field {go_struct}.{path} of type int32"
                        ));
                    }
                    Some(value.clone())
                }
                Ty::PBool => {
                    value.as_bool().ok_or_else(|| type_err("bool"))?;
                    Some(value.clone())
                }
                Ty::Time => {
                    let s = value.as_str().ok_or_else(|| type_err("string"))?;
                    Some(json!(parse_time(s, false)?))
                }
                Ty::MicroTime => {
                    let s = value.as_str().ok_or_else(|| type_err("string"))?;
                    Some(json!(parse_time(s, true)?))
                }
                Ty::MapStr | Ty::MapBytes => {
                    let map = value
                        .as_object()
                        .ok_or_else(|| type_err("map[string]string"))?;
                    let mut m = Map::new();
                    for (k, v) in map {
                        if v.is_null() {
                            // A null []byte decodes to nil, which is kept as a key with
                            // an empty value; a null string to "".
                            m.insert(k.clone(), json!(""));
                            continue;
                        }
                        let s = v.as_str().ok_or_else(|| {
                            let go = if matches!(ty, Ty::MapBytes) { "[]uint8" } else { "string" };
                            format!(
                                "json: cannot unmarshal {} into Go struct field {go_struct}.{path} of type {go}",
                                json_type(v)
                            )
                        })?;
                        if matches!(ty, Ty::MapBytes) {
                            let bytes = base64_decode(s)
                                .map_err(|at| format!("illegal base64 data at input byte {at}"))?;
                            // Stored re-encoded, as Go would write the []byte back.
                            m.insert(k.clone(), json!(base64_encode(&bytes)));
                        } else {
                            m.insert(k.clone(), v.clone());
                        }
                    }
                    (!m.is_empty()).then_some(Value::Object(m))
                }
                Ty::ListStr => {
                    let list = value.as_array().ok_or_else(|| type_err("[]string"))?;
                    if list.iter().any(|v| !v.is_string()) {
                        return Err(type_err("string"));
                    }
                    (!list.is_empty()).then(|| value.clone())
                }
                Ty::List => {
                    let list = value.as_array().ok_or_else(|| type_err("[]struct"))?;
                    (!list.is_empty()).then(|| value.clone())
                }
                Ty::Obj(name, fields) => {
                    let Value::Object(inner) = value else {
                        return Err(type_err(name));
                    };
                    Some(Value::Object(self.object(name, fields, inner, &path)?))
                }
            };
            if let Some(v) = kept {
                out.insert(key, v);
            }
        }
        Ok(out)
    }
}

/// Parses RFC 3339 as Go's `metav1.Time` (any fraction, stored to the second) or
/// `metav1.MicroTime` (layout `2006-01-02T15:04:05.000000Z07:00`: exactly 6 fractional
/// digits) does; returns the UTC form the server stores.
fn parse_time(s: &str, micro: bool) -> Result<String, String> {
    let layout = if micro {
        "2006-01-02T15:04:05.000000Z07:00"
    } else {
        "2006-01-02T15:04:05Z07:00"
    };
    let fail = |why: &str| format!("parsing time {} as {}: {why}", quote(s), quote(layout));
    let b = s.as_bytes();
    if b.len() < 20 || b[10] != b'T' {
        return Err(fail("cannot parse"));
    }
    if micro {
        let digits = b[20..].iter().take_while(|c| c.is_ascii_digit()).count();
        if b[19] != b'.' {
            return Err(fail(&format!(
                "cannot parse {} as \".000000\"",
                quote(&s[19..])
            )));
        }
        if digits != 6 {
            return Err(fail(&format!(
                "cannot parse {} as \"Z07:00\"",
                quote(&s[(20 + digits.min(6))..])
            )));
        }
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| fail(&e.to_string()))?
        .to_offset(time::UtcOffset::UTC);
    let base = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    Ok(if micro {
        format!("{base}.{:06}Z", t.microsecond())
    } else {
        format!("{base}Z")
    })
}

#[derive(Clone, Copy, Debug)]
enum ErrKind {
    Invalid,
    Required,
    Forbidden,
    TooLong,
}

impl ErrKind {
    fn reason(self) -> &'static str {
        match self {
            ErrKind::Invalid => "FieldValueInvalid",
            ErrKind::Required => "FieldValueRequired",
            ErrKind::Forbidden => "FieldValueForbidden",
            ErrKind::TooLong => "FieldValueTooLong",
        }
    }

    fn text(self) -> &'static str {
        match self {
            ErrKind::Invalid => "Invalid value",
            ErrKind::Required => "Required value",
            ErrKind::Forbidden => "Forbidden",
            ErrKind::TooLong => "Too long",
        }
    }
}

/// A `field.Error`.
#[derive(Clone, Debug)]
struct FieldError {
    kind: ErrKind,
    field: String,
    /// The bad value as Go prints it (`%q` for strings), for Invalid only.
    value: Option<String>,
    detail: String,
}

impl FieldError {
    fn invalid(field: &str, value: &str, detail: &str) -> FieldError {
        FieldError::invalid_raw(field, &quote(value), detail)
    }

    fn invalid_raw(field: &str, printed: &str, detail: &str) -> FieldError {
        FieldError {
            kind: ErrKind::Invalid,
            field: field.to_string(),
            value: Some(printed.to_string()),
            detail: detail.to_string(),
        }
    }

    fn other(kind: ErrKind, field: &str, detail: &str) -> FieldError {
        FieldError {
            kind,
            field: field.to_string(),
            value: None,
            detail: detail.to_string(),
        }
    }

    /// `ErrorBody()`.
    fn body(&self) -> String {
        let mut s = self.kind.text().to_string();
        if let Some(v) = &self.value {
            s = format!("{s}: {v}");
        }
        if !self.detail.is_empty() {
            s = format!("{s}: {}", self.detail);
        }
        s
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

/// `IsDNS1123Subdomain`.
fn dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !value.split('.').all(label_ok) {
        errs.push(DNS1123_SUBDOMAIN_MSG.to_string());
    }
    errs
}

fn qualified_name_part(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `IsQualifiedName`.
fn qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                for m in dns1123_subdomain(prefix) {
                    errs.push(format!("prefix part {m}"));
                }
            }
            *name
        }
        _ => {
            errs.push(format!("a qualified name {QUALIFIED_NAME_MSG} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_string());
    }
    if !qualified_name_part(name) {
        errs.push(format!("name part {QUALIFIED_NAME_MSG}"));
    }
    errs
}

fn label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !value.is_empty() && !qualified_name_part(value) {
        errs.push(LABEL_VALUE_MSG.to_string());
    }
    errs
}

fn config_key(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if key.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    if key.is_empty()
        || !key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        errs.push(CONFIG_KEY_MSG.to_string());
    }
    if key == "." {
        errs.push("must not be '.'".to_string());
    } else if key == ".." {
        errs.push("must not be '..'".to_string());
    } else if key.starts_with("..") {
        errs.push("must not start with '..'".to_string());
    }
    errs
}

fn validate(resource: Resource, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let meta = &obj["metadata"];
    let name = meta["name"].as_str().unwrap_or("");
    if name.is_empty() {
        errs.push(FieldError::other(
            ErrKind::Required,
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        for m in dns1123_subdomain(name) {
            errs.push(FieldError::invalid("metadata.name", name, &m));
        }
    }
    if let Some(labels) = meta["labels"].as_object() {
        for (k, v) in labels {
            for m in qualified_name(k) {
                errs.push(FieldError::invalid("metadata.labels", k, &m));
            }
            for m in label_value(v.as_str().unwrap_or("")) {
                errs.push(FieldError::invalid(
                    "metadata.labels",
                    v.as_str().unwrap_or(""),
                    &m,
                ));
            }
        }
    }
    if let Some(annotations) = meta["annotations"].as_object() {
        for k in annotations.keys() {
            for m in qualified_name(&k.to_lowercase()) {
                errs.push(FieldError::invalid("metadata.annotations", k, &m));
            }
        }
    }
    match resource {
        Resource::Secrets => {
            let data = obj["data"].as_object();
            let mut total = 0;
            for (k, v) in data.into_iter().flatten() {
                for m in config_key(k) {
                    errs.push(FieldError::invalid(&format!("data[{k}]"), k, &m));
                }
                total += base64_decode(v.as_str().unwrap_or("")).map_or(0, |b| b.len());
            }
            if total > MAX_SECRET_SIZE {
                errs.push(FieldError::other(
                    ErrKind::TooLong,
                    "data",
                    &format!("must have at most {MAX_SECRET_SIZE} bytes"),
                ));
            }
            if obj["type"] == "kubernetes.io/tls" {
                for key in ["tls.crt", "tls.key"] {
                    if !data.is_some_and(|d| d.contains_key(key)) {
                        errs.push(FieldError::other(
                            ErrKind::Required,
                            &format!("data[{key}]"),
                            "",
                        ));
                    }
                }
            }
        }
        Resource::Leases => {
            let spec = &obj["spec"];
            if let Some(d) = spec["leaseDurationSeconds"].as_i64()
                && d <= 0
            {
                errs.push(FieldError::invalid_raw(
                    "spec.leaseDurationSeconds",
                    &d.to_string(),
                    "must be greater than 0",
                ));
            }
            if let Some(t) = spec["leaseTransitions"].as_i64()
                && t < 0
            {
                errs.push(FieldError::invalid_raw(
                    "spec.leaseTransitions",
                    &t.to_string(),
                    "must be greater than or equal to 0",
                ));
            }
            if spec["preferredHolder"]
                .as_str()
                .is_some_and(|p| !p.is_empty())
                && spec["strategy"].as_str().unwrap_or("").is_empty()
            {
                errs.push(FieldError::other(
                    ErrKind::Forbidden,
                    "spec.preferredHolder",
                    "may only be specified if `strategy` is defined",
                ));
            }
        }
    }
    errs
}

fn validate_update(resource: Resource, new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let (new_uid, old_uid) = (&new["metadata"]["uid"], &old["metadata"]["uid"]);
    if new_uid != old_uid {
        errs.push(FieldError::invalid(
            "metadata.uid",
            new_uid.as_str().unwrap_or(""),
            "field is immutable",
        ));
    }
    if resource == Resource::Secrets {
        if new["type"] != old["type"] {
            errs.push(FieldError::invalid(
                "type",
                new["type"].as_str().unwrap_or(""),
                "field is immutable",
            ));
        }
        if old["immutable"] == json!(true) {
            if new["immutable"] != json!(true) {
                errs.push(FieldError::other(
                    ErrKind::Forbidden,
                    "immutable",
                    "field is immutable when `immutable` is set",
                ));
            }
            if new["data"] != old["data"] {
                errs.push(FieldError::other(
                    ErrKind::Forbidden,
                    "data",
                    "field is immutable when `immutable` is set",
                ));
            }
        }
    }
    errs
}

// ---------------------------------------------------------------------------------------
// Selectors
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A label selector (`k8s.io/apimachinery/pkg/labels`), without `<`/`>`.
#[derive(Clone, Debug, Default)]
struct Selector(Vec<Requirement>);

impl Selector {
    fn parse(text: &str) -> Result<Selector, Status> {
        let bad = |why: &str| {
            Status::bad_request(format!(
                "unable to parse requirement: {why} (label selector {})",
                quote(text)
            ))
        };
        let mut terms = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in text.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    terms.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        terms.push(&text[start..]);
        let mut reqs = Vec::new();
        for term in terms.iter().map(|t| t.trim()) {
            if term.is_empty() {
                if text.trim().is_empty() {
                    continue;
                }
                return Err(bad("empty requirement"));
            }
            let check_key = |k: &str| -> Result<String, Status> {
                let k = k.trim();
                if !qualified_name(k).is_empty() {
                    return Err(bad(&format!("invalid label key {}", quote(k))));
                }
                Ok(k.to_string())
            };
            let req = if let Some(k) = term.strip_prefix('!') {
                Requirement::DoesNotExist(check_key(k)?)
            } else if let Some(open) = term.find('(') {
                let close = term.rfind(')').ok_or_else(|| bad("missing ')'"))?;
                let head: Vec<&str> = term[..open].split_whitespace().collect();
                let values: Vec<String> = term[open + 1..close]
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                match head.as_slice() {
                    [k, "in"] => Requirement::In(check_key(k)?, values),
                    [k, "notin"] => Requirement::NotIn(check_key(k)?, values),
                    _ => return Err(bad("expected 'in' or 'notin'")),
                }
            } else if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(check_key(k)?, v.trim().to_string())
            } else if let Some((k, v)) = term.split_once("==") {
                Requirement::Equals(check_key(k)?, v.trim().to_string())
            } else if let Some((k, v)) = term.split_once('=') {
                Requirement::Equals(check_key(k)?, v.trim().to_string())
            } else {
                Requirement::Exists(check_key(term)?)
            };
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = obj["metadata"]["labels"].as_object();
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

/// A field selector: (field, equal?, value) terms, ANDed.
#[derive(Clone, Debug, Default)]
struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    fn parse(resource: Resource, text: &str) -> Result<FieldSelector, Status> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(Status::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                )));
            };
            let known = matches!(field, "metadata.name" | "metadata.namespace")
                || (resource == Resource::Secrets && field == "type");
            if !known {
                return Err(Status::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            terms.push((field.to_string(), equal, value.to_string()));
        }
        Ok(FieldSelector(terms))
    }

    fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "metadata.name" => obj["metadata"]["name"].as_str(),
                "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
                _ => obj["type"].as_str(),
            }
            .unwrap_or("");
            (actual == value) == *equal
        })
    }
}

// ---------------------------------------------------------------------------------------
// base64 (standard alphabet, padded: Go's base64.StdEncoding, which []byte uses in JSON)
// ---------------------------------------------------------------------------------------

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64_encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes like Go's `StdEncoding` (which skips `\r` and `\n`); the error is the offset
/// Go reports as "illegal base64 data at input byte N".
pub fn base64_decode(input: &str) -> Result<Vec<u8>, usize> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let mut quad = [0u8; 4];
    let mut n = 0;
    let mut pad = 0;
    let mut quad_start = 0;
    let mut finished = false;
    for (i, c) in input.bytes().enumerate() {
        if c == b'\r' || c == b'\n' {
            continue;
        }
        if finished {
            return Err(i);
        }
        if n == 0 {
            quad_start = i;
        }
        if c == b'=' {
            if n < 2 {
                return Err(i);
            }
            pad += 1;
            quad[n] = 0;
        } else {
            if pad > 0 {
                return Err(i);
            }
            quad[n] = B64.iter().position(|&x| x == c).ok_or(i)? as u8;
        }
        n += 1;
        if n == 4 {
            let v = (u32::from(quad[0]) << 18)
                | (u32::from(quad[1]) << 12)
                | (u32::from(quad[2]) << 6)
                | u32::from(quad[3]);
            let bytes = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
            out.extend_from_slice(&bytes[..3 - pad]);
            n = 0;
            finished = pad > 0;
        }
    }
    if n != 0 {
        return Err(quad_start);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Protobuf request bodies
// ---------------------------------------------------------------------------------------

/// kubectl's typed commands (`create secret generic`, ...) send protobuf
/// (`k8s.io/api/*/generated.proto` inside a `runtime.Unknown` envelope); turned into the
/// JSON the rest of the fake reads. Answers stay JSON, which such clients accept.
mod proto {
    use super::{Resource, base64_encode};
    use serde_json::{Map, Value, json};

    pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
    const MAGIC: &[u8] = b"k8s\0";

    enum Wire<'a> {
        Varint(u64),
        Bytes(&'a [u8]),
        Fixed,
    }

    fn varint(b: &[u8], pos: &mut usize) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*pos).ok_or("truncated varint")?;
            *pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn fields(b: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, String> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < b.len() {
            let tag = varint(b, &mut pos)?;
            let wire = match tag & 7 {
                0 => Wire::Varint(varint(b, &mut pos)?),
                1 => {
                    pos += 8;
                    Wire::Fixed
                }
                2 => {
                    let len = varint(b, &mut pos)? as usize;
                    let bytes = b.get(pos..pos + len).ok_or("truncated field")?;
                    pos += len;
                    Wire::Bytes(bytes)
                }
                5 => {
                    pos += 4;
                    Wire::Fixed
                }
                w => return Err(format!("unsupported wire type {w}")),
            };
            out.push((tag >> 3, wire));
        }
        Ok(out)
    }

    fn string(b: &[u8]) -> Result<Value, String> {
        String::from_utf8(b.to_vec())
            .map(Value::String)
            .map_err(|_| "invalid UTF-8 in a string".to_string())
    }

    /// A `map<string, string|bytes>` entry.
    fn entry(b: &[u8], bytes: bool) -> Result<(String, Value), String> {
        let (mut k, mut v) = (String::new(), json!(""));
        for (n, w) in fields(b)? {
            match (n, w) {
                (1, Wire::Bytes(x)) => k = String::from_utf8_lossy(x).into_owned(),
                (2, Wire::Bytes(x)) if bytes => v = json!(base64_encode(x)),
                (2, Wire::Bytes(x)) => v = string(x)?,
                _ => {}
            }
        }
        Ok((k, v))
    }

    fn meta(b: &[u8]) -> Result<Value, String> {
        let mut m = Map::new();
        let mut labels = Map::new();
        let mut annotations = Map::new();
        let mut finalizers = Vec::new();
        for (n, w) in fields(b)? {
            match (n, w) {
                (1, Wire::Bytes(x)) => _ = m.insert("name".into(), string(x)?),
                (2, Wire::Bytes(x)) => _ = m.insert("generateName".into(), string(x)?),
                (3, Wire::Bytes(x)) => _ = m.insert("namespace".into(), string(x)?),
                (5, Wire::Bytes(x)) => _ = m.insert("uid".into(), string(x)?),
                (6, Wire::Bytes(x)) => _ = m.insert("resourceVersion".into(), string(x)?),
                (7, Wire::Varint(v)) => _ = m.insert("generation".into(), json!(v as i64)),
                (11, Wire::Bytes(x)) => {
                    let (k, v) = entry(x, false)?;
                    labels.insert(k, v);
                }
                (12, Wire::Bytes(x)) => {
                    let (k, v) = entry(x, false)?;
                    annotations.insert(k, v);
                }
                (14, Wire::Bytes(x)) => finalizers.push(string(x)?),
                // Timestamps, owner references and managed fields are the server's.
                _ => {}
            }
        }
        if !labels.is_empty() {
            m.insert("labels".into(), Value::Object(labels));
        }
        if !annotations.is_empty() {
            m.insert("annotations".into(), Value::Object(annotations));
        }
        if !finalizers.is_empty() {
            m.insert("finalizers".into(), json!(finalizers));
        }
        Ok(Value::Object(m))
    }

    fn micro_time(b: &[u8]) -> Result<Value, String> {
        let (mut secs, mut nanos) = (0i64, 0i64);
        for (n, w) in fields(b)? {
            match (n, w) {
                (1, Wire::Varint(v)) => secs = v as i64,
                (2, Wire::Varint(v)) => nanos = i64::from(v as i32),
                _ => {}
            }
        }
        let t = time::OffsetDateTime::from_unix_timestamp(secs).map_err(|e| e.to_string())?
            + time::Duration::nanoseconds(nanos);
        Ok(json!(format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        )))
    }

    fn secret(b: &[u8]) -> Result<Value, String> {
        let mut o = Map::new();
        let mut data = Map::new();
        let mut string_data = Map::new();
        for (n, w) in fields(b)? {
            match (n, w) {
                (1, Wire::Bytes(x)) => _ = o.insert("metadata".into(), meta(x)?),
                (2, Wire::Bytes(x)) => {
                    let (k, v) = entry(x, true)?;
                    data.insert(k, v);
                }
                (3, Wire::Bytes(x)) => _ = o.insert("type".into(), string(x)?),
                (4, Wire::Bytes(x)) => {
                    let (k, v) = entry(x, false)?;
                    string_data.insert(k, v);
                }
                (5, Wire::Varint(v)) => _ = o.insert("immutable".into(), json!(v != 0)),
                _ => {}
            }
        }
        if !data.is_empty() {
            o.insert("data".into(), Value::Object(data));
        }
        if !string_data.is_empty() {
            o.insert("stringData".into(), Value::Object(string_data));
        }
        Ok(Value::Object(o))
    }

    fn lease(b: &[u8]) -> Result<Value, String> {
        let mut o = Map::new();
        for (n, w) in fields(b)? {
            match (n, w) {
                (1, Wire::Bytes(x)) => _ = o.insert("metadata".into(), meta(x)?),
                (2, Wire::Bytes(x)) => {
                    let mut spec = Map::new();
                    for (n, w) in fields(x)? {
                        let (key, value) = match (n, w) {
                            (1, Wire::Bytes(x)) => ("holderIdentity", string(x)?),
                            (2, Wire::Varint(v)) => ("leaseDurationSeconds", json!(v as i32)),
                            (3, Wire::Bytes(x)) => ("acquireTime", micro_time(x)?),
                            (4, Wire::Bytes(x)) => ("renewTime", micro_time(x)?),
                            (5, Wire::Varint(v)) => ("leaseTransitions", json!(v as i32)),
                            (6, Wire::Bytes(x)) => ("strategy", string(x)?),
                            (7, Wire::Bytes(x)) => ("preferredHolder", string(x)?),
                            _ => continue,
                        };
                        spec.insert(key.into(), value);
                    }
                    o.insert("spec".into(), Value::Object(spec));
                }
                _ => {}
            }
        }
        Ok(Value::Object(o))
    }

    /// The `runtime.Unknown` envelope: (apiVersion, kind, raw).
    fn envelope(body: &[u8]) -> Result<(String, String, &[u8]), String> {
        let inner = body
            .strip_prefix(MAGIC)
            .ok_or("the protobuf body lacks the k8s envelope")?;
        let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
        for (n, w) in fields(inner)? {
            match (n, w) {
                (1, Wire::Bytes(x)) => {
                    for (n, w) in fields(x)? {
                        match (n, w) {
                            (1, Wire::Bytes(v)) => api_version = String::from_utf8_lossy(v).into(),
                            (2, Wire::Bytes(v)) => kind = String::from_utf8_lossy(v).into(),
                            _ => {}
                        }
                    }
                }
                (2, Wire::Bytes(x)) => raw = x,
                _ => {}
            }
        }
        Ok((api_version, kind, raw))
    }

    pub fn object_to_json(resource: Resource, body: &[u8]) -> Result<Vec<u8>, String> {
        let (api_version, kind, raw) = envelope(body)?;
        let mut obj = match resource {
            Resource::Secrets => secret(raw)?,
            Resource::Leases => lease(raw)?,
        };
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        Ok(serde_json::to_vec(&obj).unwrap())
    }

    pub fn delete_options_to_json(body: &[u8]) -> Result<Vec<u8>, String> {
        if body.is_empty() {
            return Ok(Vec::new());
        }
        let (_, _, raw) = envelope(body)?;
        let mut o = Map::new();
        let mut dry_run = Vec::new();
        for (n, w) in fields(raw)? {
            match (n, w) {
                (1, Wire::Varint(v)) => _ = o.insert("gracePeriodSeconds".into(), json!(v as i64)),
                (2, Wire::Bytes(x)) => {
                    let mut pre = Map::new();
                    for (n, w) in fields(x)? {
                        match (n, w) {
                            (1, Wire::Bytes(v)) => _ = pre.insert("uid".into(), string(v)?),
                            (2, Wire::Bytes(v)) => {
                                _ = pre.insert("resourceVersion".into(), string(v)?)
                            }
                            _ => {}
                        }
                    }
                    o.insert("preconditions".into(), Value::Object(pre));
                }
                (4, Wire::Bytes(x)) => _ = o.insert("propagationPolicy".into(), string(x)?),
                (5, Wire::Bytes(x)) => dry_run.push(string(x)?),
                _ => {}
            }
        }
        if !dry_run.is_empty() {
            o.insert("dryRun".into(), Value::Array(dry_run));
        }
        Ok(serde_json::to_vec(&Value::Object(o)).unwrap())
    }
}
