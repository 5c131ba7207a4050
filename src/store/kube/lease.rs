//! The Kubernetes lock: one `coordination.k8s.io/v1` Lease per lock, which keeps two
//! replicas from ordering the same certificate or registering the same ACME account at
//! once. A port of client-go's leader election (`tryAcquireOrRenew`, `release`), as
//! docs/kubernetes.md describes it:
//!
//! - Lock `<name>` is Lease `portico-<name>`, labelled
//!   `app.kubernetes.io/managed-by=portico`. Its spec: `holderIdentity` (pod name and 64
//!   random bits, new for every acquisition), `leaseDurationSeconds` (the ttl rounded up
//!   to whole seconds, at least 1), `acquireTime` and `renewTime` (MicroTime: RFC 3339,
//!   UTC, exactly 6 fractional digits, as the API server demands), `leaseTransitions`.
//! - **Expiry is judged by the observer's own monotonic clock**: the locker remembers,
//!   per Lease, the record it last saw and the [`Instant`] at which it first saw it that
//!   way. The lease is expired once `leaseDurationSeconds` have passed since then without
//!   the record changing. `renewTime` is never compared with the local clock: the
//!   holder's clock may be hours off. This is also why every renew writes a new
//!   `renewTime`: a PUT that changes nothing keeps the old resourceVersion and the old
//!   record, and proves nothing.
//! - So a process that has never seen a Lease waits a full lease duration from its first
//!   look before it takes the Lease over, even when the holder died long ago. That is
//!   client-go's rule and costs at most one lease duration after a crash.
//! - One refinement: when the record last seen is one this locker wrote itself, it knows
//!   the exact ttl, not only the whole seconds of `leaseDurationSeconds`. Sub-second ttls
//!   exist only in tests; across processes the rounded-up seconds apply, which is never
//!   shorter.
//! - Acquire: GET; POST if absent (AlreadyExists → not acquired); if the holder is empty
//!   (released) or expired, PUT with the resourceVersion just read (Conflict → not
//!   acquired); otherwise not acquired. Renew: PUT a new `renewTime` with the version
//!   last seen; a Lease held by someone else is [`LockError::Lost`]; a Conflict reads
//!   again and retries once if the holder is still this one. Release: if still held by
//!   this one, PUT holder `""` and duration 1 s, so others take it at once.
//!
//! The times the Lease records come from a [`Clock`] that tests can set (a holder whose
//! clock is off); expiry uses tokio's [`Instant`], so a test with paused time controls it.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease as KubeLease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use tokio::time::Instant;

use super::api::{ApiClient, KubeError, LABEL_MANAGED_BY, MANAGED_BY, Resource, resource_version};
use crate::store::{LEASE_PREFIX, Lease, LockError, check_lock, random_u64};

/// Where the times written into Leases come from.
#[derive(Clone)]
pub(crate) struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl From<Arc<dyn Fn() -> SystemTime + Send + Sync>> for Clock {
    fn from(f: Arc<dyn Fn() -> SystemTime + Send + Sync>) -> Self {
        Clock(f)
    }
}

impl Clock {
    fn system() -> Clock {
        Clock(Arc::new(SystemTime::now))
    }

    fn now(&self) -> MicroTime {
        micro_time((self.0)())
    }
}

/// A MicroTime truncated to whole microseconds, so that what is written and what the
/// server sends back compare equal.
fn micro_time(t: SystemTime) -> MicroTime {
    let ts = Timestamp::try_from(t).unwrap_or(Timestamp::UNIX_EPOCH);
    MicroTime(Timestamp::from_microsecond(ts.as_microsecond()).unwrap_or(ts))
}

/// `leaseDurationSeconds` for a ttl: rounded up, at least 1.
fn lease_seconds(ttl: Duration) -> i32 {
    let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i32::try_from(seconds.max(1)).unwrap_or(i32::MAX)
}

/// The holder part every identity starts with: `POD_NAME`, else `HOSTNAME`, else the
/// host name (docs/kubernetes.md).
fn pod_name() -> String {
    let from_env = |var| {
        std::env::var(var)
            .ok()
            .filter(|v: &String| !v.trim().is_empty())
    };
    from_env("POD_NAME")
        .or_else(|| from_env("HOSTNAME"))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "portico".to_owned())
}

/// A Lease as last seen by this locker.
#[derive(Clone)]
struct Observed {
    lease: KubeLease,
    /// When this locker first saw the record (the spec) as it is in `lease`.
    at: Instant,
    /// The exact ttl, when this locker wrote the record itself.
    own_ttl: Option<Duration>,
}

impl Observed {
    fn spec(&self) -> &LeaseSpec {
        spec(&self.lease)
    }

    /// Someone holds it and has not let it expire, as far as this process can tell.
    fn held_at(&self, now: Instant) -> bool {
        let spec = self.spec();
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        let duration = self.own_ttl.unwrap_or_else(|| {
            Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64)
        });
        !holder.is_empty() && now < self.at + duration
    }
}

fn spec(lease: &KubeLease) -> &LeaseSpec {
    static EMPTY: LazyLock<LeaseSpec> = LazyLock::new(LeaseSpec::default);
    lease.spec.as_ref().unwrap_or(&EMPTY)
}

fn holder(lease: &KubeLease) -> &str {
    spec(lease).holder_identity.as_deref().unwrap_or("")
}

/// How a write ended, other than with an error.
enum Written {
    Done(Box<KubeLease>),
    /// Create: it exists. Replace: it changed since it was read.
    Conflict,
    /// Replace: it was deleted.
    Missing,
}

/// The Lease locker of one [`super::KubeStore`].
pub(crate) struct Leases {
    api: Arc<ApiClient>,
    pod: String,
    clock: Clock,
    observed: Mutex<HashMap<String, Observed>>,
}

impl Leases {
    pub(crate) fn new(api: Arc<ApiClient>) -> Leases {
        Leases {
            api,
            pod: pod_name(),
            clock: Clock::system(),
            observed: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn with_clock(self, clock: Clock) -> Leases {
        Leases { clock, ..self }
    }

    pub(crate) fn with_pod(self, pod: String) -> Leases {
        Leases { pod, ..self }
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<String, Observed>> {
        // Every update is one insert: a panic elsewhere cannot leave it half-done.
        self.observed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes the Lease as read now; keeps the time of first sight while the record is
    /// unchanged.
    fn observe(&self, name: &str, lease: KubeLease) -> Observed {
        let mut cache = self.cache();
        let observed = match cache.get(name) {
            Some(seen) if seen.spec() == spec(&lease) => Observed {
                lease,
                ..seen.clone()
            },
            _ => Observed {
                lease,
                at: Instant::now(),
                own_ttl: None,
            },
        };
        cache.insert(name.to_owned(), observed.clone());
        observed
    }

    /// Notes a Lease this locker has just written.
    fn wrote(&self, name: &str, lease: KubeLease, ttl: Option<Duration>) {
        self.cache().insert(
            name.to_owned(),
            Observed {
                lease,
                at: Instant::now(),
                own_ttl: ttl,
            },
        );
    }

    /// The Lease last seen, if this locker thinks `holder` holds it.
    fn cached_for(&self, name: &str, holder_id: &str) -> Option<KubeLease> {
        self.cache()
            .get(name)
            .filter(|seen| holder(&seen.lease) == holder_id)
            .map(|seen| seen.lease.clone())
    }

    async fn read(&self, name: &str) -> Result<Option<KubeLease>, LockError> {
        let value = self
            .api
            .get(Resource::Leases, name)
            .await
            .map_err(|e| api_error("get", name, e))?;
        value.map(|v| parse(name, "get", v)).transpose()
    }

    /// POSTs (`base = None`) or PUTs `base` with `spec`, at `base`'s resourceVersion.
    async fn write(
        &self,
        name: &str,
        base: Option<KubeLease>,
        spec: LeaseSpec,
    ) -> Result<Written, LockError> {
        let replace = base.is_some();
        let lease = match base {
            Some(base) => KubeLease {
                metadata: ObjectMeta {
                    managed_fields: None,
                    ..base.metadata
                },
                spec: Some(spec),
            },
            None => KubeLease {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    labels: Some([(LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned())].into()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            },
        };
        let body = serde_json::to_vec(&lease).expect("a Lease serializes to JSON");
        let (action, result) = if replace {
            (
                "update",
                self.api.replace(Resource::Leases, name, body).await,
            )
        } else {
            ("create", self.api.create(Resource::Leases, body).await)
        };
        match result {
            Ok(value) => Ok(Written::Done(Box::new(parse(name, action, value)?))),
            Err(e) if e.status() == Some(409) => Ok(Written::Conflict),
            Err(e) if replace && e.status() == Some(404) => Ok(Written::Missing),
            Err(e) => Err(api_error(action, name, e)),
        }
    }

    fn new_spec(&self, holder_id: &str, ttl: Duration, transitions: i32) -> LeaseSpec {
        let now = self.clock.now();
        LeaseSpec {
            holder_identity: Some(holder_id.to_owned()),
            lease_duration_seconds: Some(lease_seconds(ttl)),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    pub(crate) async fn try_acquire(
        &self,
        lock: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, LockError> {
        check_lock(lock)?;
        let name = format!("{LEASE_PREFIX}{lock}");
        let holder_id = format!("{}-{:016x}", self.pod, random_u64());
        let Some(current) = self.read(&name).await? else {
            let spec = self.new_spec(&holder_id, ttl, 0);
            return match self.write(&name, None, spec).await? {
                Written::Done(lease) => {
                    self.wrote(&name, *lease, Some(ttl));
                    Ok(Some(Lease::new(lock, holder_id, ttl)))
                }
                Written::Conflict | Written::Missing => Ok(None),
            };
        };
        let observed = self.observe(&name, current);
        if observed.held_at(Instant::now()) {
            return Ok(None);
        }
        let previous = holder(&observed.lease).to_owned();
        let transitions = observed
            .spec()
            .lease_transitions
            .unwrap_or(0)
            .saturating_add(1);
        let spec = self.new_spec(&holder_id, ttl, transitions);
        match self.write(&name, Some(observed.lease), spec).await? {
            Written::Done(lease) => {
                if !previous.is_empty() {
                    tracing::info!(
                        lock,
                        previous_holder = previous,
                        "took over an expired lease"
                    );
                }
                self.wrote(&name, *lease, Some(ttl));
                Ok(Some(Lease::new(lock, holder_id, ttl)))
            }
            Written::Conflict | Written::Missing => Ok(None),
        }
    }

    pub(crate) async fn renew(&self, lease: &Lease) -> Result<(), LockError> {
        check_lock(lease.name())?;
        let name = format!("{LEASE_PREFIX}{}", lease.name());
        let lost = || LockError::Lost {
            name: lease.name().to_owned(),
        };
        let mut current = match self.cached_for(&name, lease.holder()) {
            Some(current) => current,
            None => self.read_observed(&name).await?.ok_or_else(lost)?,
        };
        for _ in 0..2 {
            if holder(&current) != lease.holder() {
                return Err(lost());
            }
            let spec = LeaseSpec {
                renew_time: Some(self.clock.now()),
                lease_duration_seconds: Some(lease_seconds(lease.ttl())),
                ..spec(&current).clone()
            };
            match self.write(&name, Some(current), spec).await? {
                Written::Done(written) => {
                    self.wrote(&name, *written, Some(lease.ttl()));
                    return Ok(());
                }
                Written::Missing => return Err(lost()),
                Written::Conflict => {
                    current = self.read_observed(&name).await?.ok_or_else(lost)?;
                }
            }
        }
        Err(api_error(
            "renew",
            &name,
            KubeError::Response("changed by someone else during both attempts".into()),
        ))
    }

    pub(crate) async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        check_lock(lease.name())?;
        let name = format!("{LEASE_PREFIX}{}", lease.name());
        let mut current = match self.cached_for(&name, lease.holder()) {
            Some(current) => current,
            None => match self.read_observed(&name).await? {
                Some(current) => current,
                None => return Ok(()),
            },
        };
        for _ in 0..2 {
            // Lost already: the lock is its new holder's.
            if holder(&current) != lease.holder() {
                return Ok(());
            }
            let now = self.clock.now();
            let spec = LeaseSpec {
                holder_identity: Some(String::new()),
                lease_duration_seconds: Some(1),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: spec(&current).lease_transitions,
                ..LeaseSpec::default()
            };
            match self.write(&name, Some(current), spec).await? {
                Written::Done(written) => {
                    self.wrote(&name, *written, None);
                    return Ok(());
                }
                Written::Missing => return Ok(()),
                Written::Conflict => match self.read_observed(&name).await? {
                    Some(again) => current = again,
                    None => return Ok(()),
                },
            }
        }
        Err(api_error(
            "release",
            &name,
            KubeError::Response("changed by someone else during both attempts".into()),
        ))
    }

    /// Reads the Lease and notes what it shows.
    async fn read_observed(&self, name: &str) -> Result<Option<KubeLease>, LockError> {
        Ok(self
            .read(name)
            .await?
            .map(|lease| self.observe(name, lease).lease))
    }
}

fn api_error(action: &str, name: &str, source: KubeError) -> LockError {
    LockError::Unavailable {
        action: format!("{action} Lease {name}"),
        source: Box::new(source),
    }
}

fn parse(name: &str, action: &str, value: Value) -> Result<KubeLease, LockError> {
    if resource_version(&value).is_none() {
        return Err(api_error(
            action,
            name,
            KubeError::Response("the Lease has no resourceVersion".into()),
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        api_error(
            action,
            name,
            KubeError::Response(format!(
                "not a Lease ({:?} error in its JSON)",
                e.classify()
            )),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_times_have_exactly_six_fractional_digits_in_utc() {
        let at = |secs: u64, nanos: u32| {
            let t = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
            serde_json::to_value(micro_time(t)).unwrap()
        };
        assert_eq!(at(1_700_000_000, 0), "2023-11-14T22:13:20.000000Z");
        assert_eq!(
            at(1_700_000_000, 123_456_789),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(at(1_700_000_000, 1_000), "2023-11-14T22:13:20.000001Z");
        // What is written parses back equal: the observed record compares equal.
        let t = micro_time(SystemTime::now());
        let back: MicroTime = serde_json::from_value(serde_json::to_value(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn lease_seconds_round_up_to_at_least_one() {
        assert_eq!(lease_seconds(Duration::ZERO), 1);
        assert_eq!(lease_seconds(Duration::from_millis(1)), 1);
        assert_eq!(lease_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(lease_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(lease_seconds(Duration::from_secs(15)), 15);
        assert_eq!(lease_seconds(Duration::from_secs(u64::MAX)), i32::MAX);
    }

    fn observed(holder: &str, seconds: i32, own_ttl: Option<Duration>) -> Observed {
        Observed {
            lease: KubeLease {
                metadata: ObjectMeta::default(),
                spec: Some(LeaseSpec {
                    holder_identity: Some(holder.to_owned()),
                    lease_duration_seconds: Some(seconds),
                    ..LeaseSpec::default()
                }),
            },
            at: Instant::now(),
            own_ttl,
        }
    }

    #[test]
    fn expiry_counts_from_first_sight() {
        let seen = observed("other", 15, None);
        let at = seen.at;
        assert!(seen.held_at(at));
        assert!(seen.held_at(at + Duration::from_secs(14)));
        assert!(!seen.held_at(at + Duration::from_secs(15)));
        // Released: free at once.
        let released = observed("", 15, None);
        assert!(!released.held_at(released.at));
        // Written here with a sub-second ttl: that ttl counts, not the rounded seconds.
        let own = observed("me", 1, Some(Duration::from_millis(300)));
        assert!(own.held_at(own.at + Duration::from_millis(299)));
        assert!(!own.held_at(own.at + Duration::from_millis(300)));
    }
}
