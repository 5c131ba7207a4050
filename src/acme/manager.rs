//! Which `tls = "acme"` site needs a certificate, when, and what happens around an order.
//!
//! [`AcmeManager::poll`] is called for every ACME site on each pass of the certificate
//! scheduler. It is cheap when nothing is due: no I/O unless the site has no certificate,
//! its certificate is due (a third of its lifetime left, or inside the CA's ARI window),
//! and its back-off has passed. A due site's order runs in its own task (at most
//! [`CONCURRENT_ORDERS`] at once), so one slow CA exchange never holds up other sites
//! and the current certificate keeps serving throughout.
//!
//! Around each order: the per-certificate lock (`acme-<h(names)>`) is taken and kept
//! alive; after taking it the store is read again, since another holder may have
//! finished; the new certificate is written with compare-and-swap and never replaces one
//! that expires later; then it is swapped into the resolver.
//!
//! Failures back off 1, 2, 5, 10, 30 minutes, then 1 to 6 hours, or longer when the CA's
//! `Retry-After` says so (up to a day); the CA's problem document is logged with the
//! site, and kept with the last error and the next attempt as annotations of the site's
//! store object, where `portico certs` reads them.
//!
//! ARI (RFC 9773), when the directory offers `renewalInfo`: each served certificate's
//! window is asked for every [`Tuning::ari_interval`] (with jitter), or later when the
//! CA's `Retry-After` says so (up to a day); once the window has opened the site is due,
//! and its order names the certificate it `replaces`.
//!
//! `acme.profile` is checked against the directory whenever the account is used for a
//! site: before each order, and at each ARI check, so a profile the CA does not offer is
//! reported at start even for a site whose stored certificate is still good. It fails
//! like an order (logged, back-off, last error in the store); a reload that changes
//! `acme.profile` lifts the back-off, and the cached account (with the directory it
//! read) is dropped so that the next check reads the directory again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use instant_acme::{Account, CertificateIdentifier};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::challenges::Challenges;
use super::order::{self, Responders};
use super::{AcmeError, account, describe};
use crate::config::{Acme, Site};
use crate::metrics::{Metrics, OrderResult};
use crate::objects::{
    ANNOTATION_LAST_ERROR, ANNOTATION_NEXT_ATTEMPT, cert_object, cert_object_name, rfc3339,
    short_hash, stored_certificate,
};
use crate::report::Chain;
use crate::store::{Kind, Locker, Object, Store, StoreError, Version, hold};
use crate::tls::resolver::site_id;
use crate::tls::{CertResolver, SiteId, load_pem};

/// Orders running at once; more sites wait their turn.
pub(super) const CONCURRENT_ORDERS: usize = 4;
/// How long an issuance lock lives without renewal: the Lease duration of
/// docs/kubernetes.md (client-go's default), so a crashed holder delays issuance by
/// seconds, not minutes.
const LOCK_TTL: Duration = Duration::from_secs(15);
/// When another process holds the lock: look again soon (its certificate will be in the
/// store, or its lease will expire), without counting a failure. client-go's retry period;
/// jitter keeps replicas from knocking in step.
const BUSY_RETRY: Duration = Duration::from_secs(2);

/// RFC 8555's problem type for "slow down".
const RATE_LIMITED: &str = "urn:ietf:params:acme:error:rateLimited";

/// When the store or lock failed: retry at this pace until it answers again.
const STORE_RETRY: Duration = Duration::from_secs(5);
/// The first and the longest wait between tries to store an issued certificate. The
/// longest stays well under [`LOCK_TTL`]: after an outage of the API server this
/// replica's Lease still names it, so others wait out a whole ttl before ordering, and
/// the stored certificate should be there by then.
const STORE_WRITE_RETRY: (Duration, Duration) =
    (Duration::from_millis(250), Duration::from_secs(5));

/// Timing knobs of ACME renewal, given to [`Server::bind_with`](crate::server::Server::bind_with).
/// Part of the embedding API: an embedder facing a private CA with other rate limits
/// sets its own back-off and ARI pace; portico's tests shorten both. The default is
/// what `portico run` uses.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Waits after the first, second, ... failure; the last repeats.
    pub backoff: Vec<Duration>,
    /// How often a certificate's ARI window is asked for, at least.
    pub ari_interval: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(60 * n);
        Tuning {
            backoff: vec![
                m(1),
                m(2),
                m(5),
                m(10),
                m(30),
                m(60),
                m(120),
                m(180),
                m(240),
                m(300),
                m(360),
            ],
            ari_interval: m(10),
        }
    }
}

#[derive(Debug, Default)]
struct SiteState {
    in_flight: bool,
    failures: usize,
    not_before: Option<Instant>,
    last_error: Option<String>,
    ari: Option<Ari>,
    /// The `acme.profile` the last attempt found missing from the directory.
    unknown_profile: Option<String>,
}

/// What an ARI check found.
struct AriCheck {
    /// The window has opened (or there is no certificate to ask about).
    due: bool,
    /// The account was loaded and `acme.profile` is one the directory offers.
    profile_ok: bool,
}

/// What the CA's ARI endpoint said about the served certificate.
#[derive(Debug, Clone, Copy)]
struct Ari {
    /// Not asked again before this.
    next_check: Instant,
    /// The suggested renewal window (start, end), once known.
    window: Option<(SystemTime, SystemTime)>,
}

pub(crate) struct AcmeManager {
    store: Arc<dyn Store>,
    locker: Arc<dyn Locker>,
    resolver: Arc<CertResolver>,
    challenges: Arc<Challenges>,
    metrics: Arc<Metrics>,
    holder: String,
    tuning: Tuning,
    /// The account for the (directory, email) in use, by account name.
    account: tokio::sync::Mutex<Option<(String, Account)>>,
    sites: Mutex<HashMap<SiteId, SiteState>>,
    orders: Semaphore,
    /// The directory has no `renewalInfo`: stop asking.
    no_ari: std::sync::atomic::AtomicBool,
}

/// How far an attempt got while it held the lock.
enum Locked {
    Done(Outcome),
    /// A new certificate, installed, still to be stored.
    Issued(Issued),
}

/// A certificate this process was issued, as it goes to the store.
struct Issued {
    object: Object,
    /// The stored object's version when the order began (`None`: there was none).
    expected: Option<Version>,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// What a finished attempt reports to the scheduler.
enum Outcome {
    Issued,
    /// The store already had a fresh certificate (another holder's).
    Stored,
    /// Another process holds the lock.
    Busy,
}

impl AcmeManager {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        locker: Arc<dyn Locker>,
        resolver: Arc<CertResolver>,
        challenges: Arc<Challenges>,
        metrics: Arc<Metrics>,
        tuning: Tuning,
    ) -> Arc<Self> {
        Arc::new(AcmeManager {
            store,
            locker,
            resolver,
            challenges,
            metrics,
            holder: holder_identity(),
            tuning,
            account: tokio::sync::Mutex::new(None),
            sites: Mutex::new(HashMap::new()),
            orders: Semaphore::new(CONCURRENT_ORDERS),
            no_ari: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HashMap<SiteId, SiteState>> {
        self.sites.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last error of a site (by [`SiteId`]), if its last attempt failed.
    pub(crate) fn last_error(&self, site: &str) -> Option<String> {
        self.state().get(site).and_then(|s| s.last_error.clone())
    }

    /// Starts an order for `site` if it is due and not backing off. Never waits for it.
    pub(crate) fn poll(self: &Arc<Self>, site: &Site, acme: &Acme, now: SystemTime) {
        let id = site_id(site);
        let current = self.resolver.current(&id);
        let due = {
            let mut sites = self.state();
            let state = sites.entry(id.clone()).or_default();
            // The profile the CA refused is no longer configured: try the new one now.
            if state
                .unknown_profile
                .as_deref()
                .is_some_and(|bad| acme.profile.as_deref() != Some(bad))
            {
                state.not_before = None;
            }
            if state.in_flight || state.not_before.is_some_and(|t| Instant::now() < t) {
                return;
            }
            let due = match &current {
                None => true,
                Some(cert) => {
                    let window = state.ari.and_then(|ari| ari.window);
                    renewal_due(
                        cert.not_before().unwrap_or(now),
                        cert.not_after,
                        window,
                        now,
                    )
                }
            };
            let ask_ari = current.is_some()
                && !due
                && !self.no_ari.load(std::sync::atomic::Ordering::Relaxed)
                && state.ari.is_none_or(|ari| Instant::now() >= ari.next_check);
            if !due && !ask_ari {
                return;
            }
            state.in_flight = true;
            due
        };
        let this = self.clone();
        let site = site.clone();
        let acme = acme.clone();
        // One Retry-After slot per site's task: concurrent sites share the account's
        // client, never each other's Retry-After.
        tokio::spawn(super::http::scoped(async move {
            let due = if due {
                Ok(true)
            } else {
                match this.window_open(&site, &acme, now).await {
                    Ok(AriCheck {
                        due: false,
                        profile_ok,
                    }) => {
                        if profile_ok {
                            this.profile_confirmed(&site).await;
                        }
                        Ok(false)
                    }
                    Ok(AriCheck { due: true, .. }) => Ok(true),
                    Err(e) => Err(e),
                }
            };
            let outcome = match due {
                Ok(true) => {
                    // Never closed: `ok` is always a permit.
                    let slot = this.orders.acquire().await.ok();
                    Some(this.attempt(&site, &acme, now, slot).await)
                }
                Ok(false) => None,
                Err(e) => Some(Err(e)),
            };
            this.finish(&site, outcome).await;
        }));
    }

    /// Notes what the ARI endpoint said (a window, or nothing) and when to ask again:
    /// after the CA's `Retry-After`, but no sooner than [`Tuning::ari_interval`] and no
    /// later than a day, plus a per-site jitter so that many sites do not bunch up.
    fn ari_answered(
        &self,
        id: &str,
        window: Option<(SystemTime, SystemTime)>,
        retry_at: Option<SystemTime>,
    ) {
        let interval = self.tuning.ari_interval;
        let wait = retry_at
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .unwrap_or(interval)
            .clamp(interval, super::http::MAX_RETRY_AFTER.max(interval));
        if let Some(state) = self.state().get_mut(id) {
            let window = window.or(state.ari.and_then(|ari| ari.window));
            state.ari = Some(Ari {
                next_check: Instant::now() + wait + jitter(id, interval / 5),
                window,
            });
        }
    }

    /// Asks the CA's ARI endpoint whether renewal is due now (not when the CA has no
    /// ARI), and checks `acme.profile` against the directory on the way: an error only
    /// for a profile the directory does not offer.
    async fn window_open(
        &self,
        site: &Site,
        acme: &Acme,
        now: SystemTime,
    ) -> Result<AriCheck, AcmeError> {
        let id = site_id(site);
        let not_due = |profile_ok| {
            Ok(AriCheck {
                due: false,
                profile_ok,
            })
        };
        let Some(current) = self.resolver.current(&id) else {
            return Ok(AriCheck {
                due: true,
                profile_ok: false,
            });
        };
        let cert_id = current
            .key
            .end_entity_cert()
            .ok()
            .and_then(|leaf| CertificateIdentifier::try_from(leaf).ok());
        let Some(cert_id) = cert_id else {
            // No AKI or serial to name it by: ARI cannot say anything about it.
            self.ari_answered(&id, None, None);
            return not_due(false);
        };
        let account = match self.account(acme).await {
            Ok(account) => account,
            Err(e) => {
                tracing::debug!(site = %id, error = %describe(&e), "no ACME account for the ARI check");
                self.ari_answered(&id, None, e.retry_at());
                return not_due(false);
            }
        };
        self.check_profile(&account, acme).await?;
        let due = match account.renewal_info(&cert_id).await {
            Ok((info, retry_after)) => {
                let window = (
                    SystemTime::from(info.suggested_window.start),
                    SystemTime::from(info.suggested_window.end),
                );
                tracing::debug!(site = %id, start = %rfc3339(window.0), end = %rfc3339(window.1), "ARI window");
                self.ari_answered(&id, Some(window), Some(SystemTime::now() + retry_after));
                let not_before = current.not_before().unwrap_or(now);
                ari_due(window, not_before, current.not_after, now)
            }
            Err(instant_acme::Error::Unsupported(_)) => {
                self.no_ari
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                false
            }
            Err(e) => {
                let e = AcmeError::from(e);
                tracing::debug!(site = %id, error = %describe(&e), "ARI check failed; the lifetime rule still applies");
                self.ari_answered(&id, None, e.retry_at());
                false
            }
        };
        Ok(AriCheck {
            due,
            profile_ok: true,
        })
    }

    /// `acme.profile` against the directory `account` read. When it is not offered, the
    /// cached account goes too: the next check reads the directory again (the CA may
    /// add the profile, or the config may name the directory's own).
    async fn check_profile(&self, account: &Account, acme: &Acme) -> Result<(), AcmeError> {
        let checked = order::check_profile(account, &acme.directory, acme.profile.as_deref());
        if checked.is_err() {
            *self.account.lock().await = None;
        }
        checked
    }

    /// An ARI check found `acme.profile` offered: a failure recorded for an earlier,
    /// refused profile no longer holds.
    async fn profile_confirmed(&self, site: &Site) {
        let cleared = {
            let mut sites = self.state();
            match sites.get_mut(&site_id(site)) {
                Some(state) if state.unknown_profile.is_some() => {
                    state.unknown_profile = None;
                    state.last_error = None;
                    state.failures = 0;
                    state.not_before = None;
                    true
                }
                _ => false,
            }
        };
        if cleared && let Err(e) = self.record_status(site, None, None).await {
            tracing::debug!(site = %site_id(site), error = %Chain(&e), "could not record the ACME status");
        }
    }

    async fn account(&self, acme: &Acme) -> Result<Account, AcmeError> {
        let name = account::account_name(acme);
        let mut cached = self.account.lock().await;
        if let Some((cached_name, account)) = cached.as_ref()
            && *cached_name == name
        {
            return Ok(account.clone());
        }
        let account =
            account::load_or_create(self.store.as_ref(), self.locker.clone(), acme, &self.holder)
                .await?;
        *cached = Some((name, account.clone()));
        Ok(account)
    }

    /// `slot` is the site's place among [`CONCURRENT_ORDERS`]: held while it talks to
    /// the CA, given up before a certificate that is issued waits for the store.
    async fn attempt(
        &self,
        site: &Site,
        acme: &Acme,
        now: SystemTime,
        slot: Option<SemaphorePermit<'_>>,
    ) -> Result<Outcome, AcmeError> {
        let names = site.names();
        let lock = format!("acme-{}", short_hash(&names.join(",")));
        let Some(lease) = self.locker.try_acquire(&lock, LOCK_TTL).await? else {
            return Ok(Outcome::Busy);
        };
        let guard = hold(self.locker.clone(), lease);
        let mut lost = guard.lost();
        let locked = tokio::select! {
            result = self.attempt_locked(site, acme, now) => result,
            _ = lost.wait_for(|lost| *lost) => Err(AcmeError::LockLost),
        };
        // The CA's part is over: a store that refuses the certificate for hours must not
        // keep other sites from being ordered.
        drop(slot);
        // An issued certificate is stored even if the lock was lost meanwhile (renewals
        // failing while the API server came back, say): the order is paid for, and the
        // store's compare-and-swap keeps it from overwriting another holder's. Dropped
        // instead, this replica served a certificate no other replica had, and the next
        // holder found nothing stored and ordered again.
        let result = match locked {
            Ok(Locked::Done(outcome)) => Ok(outcome),
            Ok(Locked::Issued(issued)) => self.store_issued(site, issued).await,
            Err(e) => Err(e),
        };
        if let Err(e) = guard.release().await {
            tracing::debug!(error = %Chain(&e), "releasing the issuance lock");
        }
        result
    }

    async fn attempt_locked(
        &self,
        site: &Site,
        acme: &Acme,
        now: SystemTime,
    ) -> Result<Locked, AcmeError> {
        let id = site_id(site);
        let names = site.names();
        let name = cert_object_name(site);
        let stored = self.store.get(Kind::Certificate, &name).await?;
        let stored_cert = stored
            .as_ref()
            .and_then(|s| stored_certificate(site, &s.object).ok().flatten());
        if let Some(loaded) = &stored_cert
            && !loaded.due(now)
            && self
                .resolver
                .current(&id)
                .is_none_or(|c| c.not_after < loaded.not_after)
        {
            self.resolver
                .install(&id, loaded.key.clone(), loaded.not_after);
            return Ok(Locked::Done(Outcome::Stored));
        }

        let account = self.account(acme).await?;
        self.check_profile(&account, acme).await?;
        // ARI: tell the CA which certificate this one replaces (when it offers ARI).
        let replaces = if self.no_ari.load(std::sync::atomic::Ordering::Relaxed) {
            None
        } else {
            self.resolver.current(&id).and_then(|c| {
                let leaf = c.key.end_entity_cert().ok()?;
                CertificateIdentifier::try_from(leaf)
                    .ok()
                    .map(|i| i.into_owned())
            })
        };
        let responders = Responders {
            challenges: &self.challenges,
            resolver: &self.resolver,
        };
        let mut request = order::Request {
            names: &names,
            challenge: acme.challenge,
            profile: acme.profile.as_deref(),
            replaces,
        };
        tracing::info!(site = %id, profile = acme.profile.as_deref().unwrap_or("(the CA's default)"), "ordering a certificate");
        let issued = match order::issue(&account, &request, &responders).await {
            // The CA may refuse `replaces` (already replaced, say): order without it. Not
            // when it asked us to wait or to slow down: that holds for any order.
            Err(e @ AcmeError::Ca { .. })
                if request.replaces.is_some()
                    && e.retry_at().is_none()
                    && e.problem_type() != Some(RATE_LIMITED) =>
            {
                tracing::info!(site = %id, error = %describe(&e), "the CA refused the order that names the certificate it replaces; ordering without");
                request.replaces = None;
                order::issue(&account, &request, &responders).await?
            }
            other => other?,
        };
        let loaded = load_pem(
            &name,
            issued.chain_pem.as_bytes(),
            issued.key_pem.as_bytes(),
        )
        .map_err(AcmeError::Certificate)?;
        // Serve it at once; the store write below only makes it last (and shared).
        self.resolver
            .install(&id, loaded.key.clone(), loaded.not_after);
        tracing::info!(site = %id, not_after = %rfc3339(loaded.not_after), "installed a new ACME certificate");
        Ok(Locked::Issued(Issued {
            object: cert_object(site, &issued.chain_pem, &issued.key_pem, loaded.not_after),
            expected: stored.map(|s| s.version),
            not_before: loaded.not_before,
            not_after: loaded.not_after,
        }))
    }

    /// Writes a certificate this process was issued to the store, unless another
    /// holder's, living at least as long, is there by then: that one is served instead.
    ///
    /// An unreachable store is retried until it answers: the order is paid for, and
    /// given up here the certificate would live in this process only, so the next
    /// holder of the lock would find nothing stored and order again. The lock is kept
    /// (renewed while the API answers) throughout, and when it is lost the write's
    /// compare-and-swap still keeps it from overwriting another's. Only once the
    /// certificate is itself due for renewal (a store that never takes it: no RBAC for
    /// Secrets, say) is the write given up, so that renewal is not held up by it.
    async fn store_issued(&self, site: &Site, issued: Issued) -> Result<Outcome, AcmeError> {
        let id = site_id(site);
        let name = cert_object_name(site);
        let Issued {
            object,
            mut expected,
            not_before,
            not_after,
        } = issued;
        let mut conflicts = 0;
        let mut tries = 0u32;
        let mut wait = STORE_WRITE_RETRY.0;
        loop {
            let failed = match self
                .store
                .put(Kind::Certificate, &name, &object, expected.as_ref())
                .await
            {
                Ok(_) => return Ok(Outcome::Issued),
                Err(StoreError::Conflict { .. }) if conflicts < 3 => {
                    conflicts += 1;
                    // Re-read; keep whichever certificate lives longer.
                    match self.store.get(Kind::Certificate, &name).await {
                        Ok(again) => {
                            let theirs = again
                                .as_ref()
                                .and_then(|s| stored_certificate(site, &s.object).ok().flatten());
                            if let Some(theirs) = theirs
                                && theirs.not_after >= not_after
                            {
                                self.resolver.install(&id, theirs.key, theirs.not_after);
                                return Ok(Outcome::Stored);
                            }
                            expected = again.map(|s| s.version);
                            continue;
                        }
                        Err(e) => e,
                    }
                }
                // Written over and over by others: theirs is served when it is followed.
                Err(StoreError::Conflict { .. }) => return Ok(Outcome::Issued),
                Err(e) => e,
            };
            let e = AcmeError::Store(failed);
            if !store_unavailable(&e) || crate::tls::due(not_before, not_after, SystemTime::now()) {
                return Err(e);
            }
            let text = describe(&e);
            tries += 1;
            // The first few, then about once a minute: a store that stays away for hours
            // is not a line every 5 seconds.
            if tries <= 3 || tries.is_multiple_of(12) {
                tracing::warn!(site = %id, error = %text, tries, retry_in = ?wait, "could not store the new certificate; it is served from memory meanwhile");
            }
            if let Some(state) = self.state().get_mut(&id) {
                state.last_error = Some(format!("storing the new certificate: {text}"));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(STORE_WRITE_RETRY.1);
        }
    }

    async fn finish(&self, site: &Site, outcome: Option<Result<Outcome, AcmeError>>) {
        let id = site_id(site);
        let (error, next) = {
            let mut sites = self.state();
            let state = sites.entry(id.clone()).or_default();
            state.in_flight = false;
            match &outcome {
                None => return,
                Some(Ok(Outcome::Busy)) => {
                    let spread = jitter(&format!("{id}{:?}", Instant::now()), BUSY_RETRY / 2);
                    state.not_before = Some(Instant::now() + BUSY_RETRY + spread);
                    return;
                }
                Some(Ok(outcome @ (Outcome::Issued | Outcome::Stored))) => {
                    if matches!(outcome, Outcome::Issued) {
                        self.metrics.acme_order(&id, OrderResult::Valid);
                    }
                    let had_error = state.last_error.take().is_some();
                    state.unknown_profile = None;
                    state.failures = 0;
                    state.not_before = None;
                    state.ari = None;
                    if !had_error {
                        return;
                    }
                    (None, None)
                }
                // The store or the lock is unreachable (the Kubernetes API is down): not
                // the CA's doing and no reason for the long back-off; nothing can be
                // recorded in the store either. Try again soon.
                Some(Err(e)) if store_unavailable(e) => {
                    let text = describe(e);
                    state.last_error = Some(text.clone());
                    state.not_before = Some(Instant::now() + STORE_RETRY);
                    tracing::warn!(site = %id, error = %text, retry_in = ?STORE_RETRY, "store unavailable; the current certificate (if any) keeps serving");
                    return;
                }
                Some(Err(e)) => {
                    self.metrics.acme_order(&id, OrderResult::Failed);
                    state.unknown_profile = match e {
                        AcmeError::UnknownProfile { profile, .. } => Some(profile.clone()),
                        _ => None,
                    };
                    let step =
                        self.tuning.backoff[state.failures.min(self.tuning.backoff.len() - 1)];
                    state.failures += 1;
                    let wait = backoff_wait(step, e.retry_at(), SystemTime::now());
                    state.not_before = Some(Instant::now() + wait);
                    let text = describe(e);
                    state.last_error = Some(text.clone());
                    tracing::warn!(site = %id, error = %text, retry_in = ?wait, "could not obtain a certificate; the current one (if any) keeps serving");
                    (Some(text), Some(SystemTime::now() + wait))
                }
            }
        };
        if let Err(e) = self.record_status(site, error.as_deref(), next).await {
            tracing::debug!(site = %id, error = %Chain(&e), "could not record the ACME status");
        }
    }

    /// Keeps the last error and next attempt where `portico certs` can read them.
    async fn record_status(
        &self,
        site: &Site,
        error: Option<&str>,
        next: Option<SystemTime>,
    ) -> Result<(), StoreError> {
        let name = cert_object_name(site);
        for _ in 0..3 {
            let stored = self.store.get(Kind::Certificate, &name).await?;
            let (mut object, version) = match stored {
                Some(s) => (s.object, Some(s.version)),
                None => (Object::new(), None),
            };
            match error {
                Some(e) => {
                    object
                        .annotations
                        .insert(ANNOTATION_LAST_ERROR.into(), e.to_string());
                }
                None => {
                    object.annotations.remove(ANNOTATION_LAST_ERROR);
                }
            }
            match next {
                Some(t) => {
                    object
                        .annotations
                        .insert(ANNOTATION_NEXT_ATTEMPT.into(), rfc3339(t));
                }
                None => {
                    object.annotations.remove(ANNOTATION_NEXT_ATTEMPT);
                }
            }
            match self
                .store
                .put(Kind::Certificate, &name, &object, version.as_ref())
                .await
            {
                Err(StoreError::Conflict { .. }) => continue,
                other => return other.map(|_| ()),
            }
        }
        Ok(())
    }
}

/// How long to wait after a failure: the back-off `step`, or longer if the CA's
/// `Retry-After` asked for it, but never more than a day on its word.
fn backoff_wait(step: Duration, retry_at: Option<SystemTime>, now: SystemTime) -> Duration {
    let asked = retry_at
        .and_then(|at| at.duration_since(now).ok())
        .unwrap_or(Duration::ZERO)
        .min(super::http::MAX_RETRY_AFTER);
    step.max(asked)
}

/// The store or lock backend did not answer (I/O, the Kubernetes API): transient, and
/// nothing the CA did.
fn store_unavailable(e: &AcmeError) -> bool {
    use crate::store::LockError;
    matches!(
        e,
        AcmeError::Store(StoreError::Io { .. } | StoreError::Unavailable { .. })
            | AcmeError::Lock(LockError::Io { .. } | LockError::Unavailable { .. })
    )
}

/// The renewal rule: a third of the lifetime left, or the CA's ARI window has opened.
fn renewal_due(
    not_before: SystemTime,
    not_after: SystemTime,
    ari_window: Option<(SystemTime, SystemTime)>,
    now: SystemTime,
) -> bool {
    crate::tls::due(not_before, not_after, now)
        || ari_window.is_some_and(|window| ari_due(window, not_before, not_after, now))
}

/// Whether the CA's suggested window (start, end) says to renew the certificate valid
/// from `not_before` to `not_after` now: once the window has started. A window that
/// spans the certificate's whole life suggests no time at all: renewing at its start
/// would renew at issuance, and again after every order (Pebble gives such windows to
/// certificates shorter than two days: two days around two thirds of the life, clamped
/// to it). Such a window is left to the lifetime rule. A window in the past, or one
/// that starts early but ends before the certificate does (a CA about to revoke), is
/// followed as it is.
fn ari_due(
    (start, end): (SystemTime, SystemTime),
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
) -> bool {
    let whole_life = start <= not_before && end >= not_after;
    now >= start && !whole_life
}

/// A stable spread in `[0, max)` per site, so checks of many sites do not bunch up.
fn jitter(id: &str, max: Duration) -> Duration {
    let h = short_hash(id);
    let n = u64::from_str_radix(&h[..8], 16).unwrap_or(0);
    Duration::from_millis(n % max.as_millis().max(1) as u64)
}

/// Who holds locks: the pod or host name plus a random suffix, unique per process.
fn holder_identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "portico".to_string());
    let mut random = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut random);
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_a_third_of_life_or_inside_the_ari_window() {
        let day = Duration::from_secs(86_400);
        let issued = SystemTime::UNIX_EPOCH + 1000 * day;
        let expires = issued + 90 * day;
        assert!(!renewal_due(issued, expires, None, issued + 59 * day));
        assert!(renewal_due(issued, expires, None, issued + 61 * day));
        assert!(renewal_due(issued, expires, None, expires + day));
        // The CA moved the window earlier (a revocation, say): renew then.
        let window = Some((issued + 10 * day, issued + 11 * day));
        assert!(!renewal_due(issued, expires, window, issued + 9 * day));
        assert!(renewal_due(issued, expires, window, issued + 10 * day));
        // Already over: at once.
        let past = Some((issued - day, issued - day / 2));
        assert!(renewal_due(issued, expires, past, issued + day));
    }

    #[test]
    fn a_window_over_the_whole_life_leaves_renewal_to_the_lifetime_rule() {
        let hour = Duration::from_secs(3600);
        let issued = SystemTime::UNIX_EPOCH + 100_000 * hour;
        let expires = issued + 6 * hour;
        // What Pebble answers for a six-hour certificate.
        let whole = Some((issued, expires));
        assert!(!renewal_due(issued, expires, whole, issued));
        assert!(!renewal_due(issued, expires, whole, issued + 3 * hour));
        assert!(renewal_due(issued, expires, whole, issued + 4 * hour));
        // A CA that wants it replaced soon, from issuance on: followed.
        let soon = Some((issued - hour, issued + 2 * hour));
        assert!(renewal_due(issued, expires, soon, issued + hour));
    }

    #[test]
    fn backoff_waits_for_retry_after_up_to_a_day() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let minute = Duration::from_secs(60);
        assert_eq!(backoff_wait(minute, None, now), minute);
        // Sooner than the step, or already past: the step.
        assert_eq!(
            backoff_wait(minute, Some(now + Duration::from_secs(5)), now),
            minute
        );
        assert_eq!(backoff_wait(minute, Some(now - minute), now), minute);
        let two_hours = Duration::from_secs(7200);
        assert_eq!(backoff_wait(minute, Some(now + two_hours), now), two_hours);
        let year = Duration::from_secs(365 * 86_400);
        assert_eq!(
            backoff_wait(minute, Some(now + year), now),
            super::super::http::MAX_RETRY_AFTER
        );
    }

    #[test]
    fn jitter_is_stable_and_bounded() {
        let max = Duration::from_secs(120);
        assert_eq!(jitter("a.example", max), jitter("a.example", max));
        assert!(jitter("a.example", max) < max);
    }
}
