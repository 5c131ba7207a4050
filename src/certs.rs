//! The certificate path's scheduler: for every site, get a certificate from its source
//! (`files`, the local CA, or the store where ACME puts them) into the resolver, and keep
//! it fresh.
//!
//! Order at start-up (docs/certificates.md): what the store already has is served first,
//! then what is missing or due is obtained. After that [`CertManager::sync`] runs every couple of
//! seconds, and at once after a config reload (`CertManager::reload`): it only stats
//! `files` certificates and compares dates of the others, so it touches the store only
//! when something is due.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::acme::AcmeManager;
use crate::acme::Challenges;
use crate::acme::Tuning;
use crate::config::{Config, SecretPem, Site, TlsSource};
use crate::metrics::Metrics;
use crate::objects::{
    ANNOTATION_LAST_ERROR, ANNOTATION_NEXT_ATTEMPT, ObjectError, cert_object, cert_object_name,
    data, rfc3339, stored_certificate,
};
use crate::report::Chain;
use crate::store::{Change, Kind, LOCAL_CA, Locker, Object, Store, StoreError};
use crate::tls::LocalCa;
use crate::tls::files::{self, Stamp};
use crate::tls::{CertResolver, SiteId, TlsError, load_pem, resolver::site_id};

/// Why a site has no fresh certificate. Logged with the site; the old certificate, if
/// any, keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A certificate or key did not load, or the local CA could not issue.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A stored certificate is incomplete or unreadable.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// Replicas kept racing to create the local CA.
    #[error("the local CA was neither readable nor creatable in the store after 3 tries")]
    LocalCa,
    /// A certificate handed over (a Secret) does not name one of the site's hosts.
    #[error("{what}: the certificate does not cover {host}")]
    NotCovered {
        /// Where the certificate came from.
        what: String,
        /// The host it leaves out.
        host: String,
    },
}

/// Aborts a task when dropped, so it ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often token objects left behind by crashed orders are looked for.
const TOKEN_GC_INTERVAL: Duration = Duration::from_secs(600);

/// The certificate path's scheduler: gets every site a certificate from its source into
/// the resolver, and keeps it fresh (see the module doc).
pub struct CertManager {
    store: Arc<dyn Store>,
    resolver: Arc<CertResolver>,
    acme: Arc<AcmeManager>,
    challenges: Arc<Challenges>,
    ca: tokio::sync::OnceCell<Arc<LocalCa>>,
    /// Last seen stamps of `files` certificates.
    stamps: Mutex<HashMap<SiteId, Stamp>>,
    /// Starts the next pass of [`CertManager::run`] now (a reload added sites).
    wake: tokio::sync::Notify,
}

impl CertManager {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        locker: Arc<dyn Locker>,
        resolver: Arc<CertResolver>,
        challenges: Arc<Challenges>,
        metrics: Arc<Metrics>,
        tuning: Tuning,
    ) -> Self {
        CertManager {
            acme: AcmeManager::new(
                store.clone(),
                locker,
                resolver.clone(),
                challenges.clone(),
                metrics,
                tuning,
            ),
            challenges,
            store,
            resolver,
            ca: tokio::sync::OnceCell::new(),
            stamps: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Start-up step one: declare the sites and serve whatever the store and the files
    /// already hold. Errors are per site and logged; no site blocks another.
    pub(crate) async fn load_existing(&self, config: &Config) {
        use futures_util::StreamExt;
        let _batch = self.resolver.batch();
        self.resolver.set_sites(&config.sites);
        // Stored certificates are read and parsed two per core at a time, the parsing
        // (PEM, X.509, the key) on the blocking pool: with 10,000 sites one at a time
        // left all but one core idle and waited on every file in turn. More at once
        // only adds blocking threads (32 at once: 600 MiB of allocator heaps).
        let mut loads = futures_util::stream::iter(&config.sites)
            .map(|site| async move {
                let result = match &site.tls {
                    TlsSource::Files { .. } => self.sync_files(site).map(|_| ()),
                    TlsSource::Secret(pem) => self.install_secret(site, pem),
                    TlsSource::Off => Ok(()),
                    TlsSource::Internal | TlsSource::Acme => self.load_stored_parallel(site).await,
                };
                if let Err(e) = result {
                    tracing::warn!(site = %site_id(site), error = %Chain(&e), "could not load a certificate");
                }
            })
            .buffer_unordered(2 * crate::workers::count());
        while loads.next().await.is_some() {}
    }

    /// [`CertManager::load_stored`] with the certificate parsed off the async runtime.
    async fn load_stored_parallel(&self, site: &Site) -> Result<(), CertError> {
        let name = cert_object_name(site);
        let Some(stored) = self.store.get(Kind::Certificate, &name).await? else {
            return Ok(());
        };
        let owned = site.clone();
        let parsed =
            tokio::task::spawn_blocking(move || stored_certificate(&owned, &stored.object)).await;
        let loaded = match parsed {
            Ok(result) => result?,
            Err(e) => {
                tracing::warn!(site = %site_id(site), object = %name, error = %e, "parsing the stored certificate failed");
                return Ok(());
            }
        };
        if let Some(loaded) = loaded {
            self.resolver
                .install(&site_id(site), loaded.key, loaded.not_after);
            tracing::info!(site = %site_id(site), object = %name, "serving the stored certificate");
        }
        Ok(())
    }

    /// A reloaded config: declares its sites (removed ones stop being served), serves
    /// what the store or the files hold for sites that are new or whose `tls` changed,
    /// and wakes the scheduler so anything still missing is obtained now, not at its
    /// next pass. Sites that stay as they were keep their certificate untouched.
    pub(crate) async fn reload(&self, old: &Config, new: &Config) {
        let batch = self.resolver.batch();
        self.resolver.set_sites(&new.sites);
        // By id: one pass over each config, whatever the number of sites.
        let old_sites: HashMap<SiteId, &Site> = old.sites.iter().map(|s| (site_id(s), s)).collect();
        for site in &new.sites {
            let id = site_id(site);
            let before = old_sites.get(&id).copied();
            if before.is_some_and(|b| b.tls == site.tls) {
                continue;
            }
            // A stamp of other files with the same times and sizes would hide the change.
            self.stamps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            let result = match &site.tls {
                TlsSource::Files { .. } => self.sync_files(site).map(|_| ()),
                TlsSource::Secret(pem) => self.install_secret(site, pem),
                TlsSource::Off => {
                    // Served over plain HTTP now: whatever served it over TLS stops.
                    self.resolver.retire(&id);
                    Ok(())
                }
                TlsSource::Internal | TlsSource::Acme => {
                    self.load_stored(site).await.map(|served| {
                        if !served && before.is_some() {
                            // What the previous source gave must not pass for the new
                            // one's: it serves only until the scheduler has a new one.
                            self.resolver.retire(&id);
                        }
                    })
                }
            };
            if let Err(e) = result {
                tracing::warn!(site = %id, error = %Chain(&e), "could not load a certificate");
            }
        }
        drop(batch);
        self.wake.notify_one();
    }

    /// One pass over every site: reload changed files, obtain missing or due
    /// certificates from the local CA. Runs at start after `load_existing`, then on a
    /// timer.
    pub async fn sync(&self, config: &Config, now: SystemTime) {
        let _batch = self.resolver.batch();
        for site in &config.sites {
            let result = match &site.tls {
                TlsSource::Files { .. } => self.sync_files(site).map(|_| ()),
                // Installed when the Secret changes (a reload of the cluster's sites).
                TlsSource::Secret(_) | TlsSource::Off => Ok(()),
                TlsSource::Internal => self.sync_internal(site, now).await,
                // Runs in the background; failures are the ACME manager's to report.
                TlsSource::Acme => {
                    self.acme.poll(site, &config.acme, now);
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::warn!(site = %site_id(site), error = %Chain(&e), "certificate not renewed; the current one keeps serving");
            }
        }
    }

    /// The notAfter of the certificate served for `site`, if one is (no I/O).
    pub(crate) fn served_not_after(&self, site: &Site) -> Option<SystemTime> {
        self.resolver.current(&site_id(site)).map(|c| c.not_after)
    }

    /// The PEM chain and key of the certificate the store holds for `site` from its own
    /// source (ACME or the local CA), if it holds one that loads: what a Secret named
    /// by an Ingress is filled with.
    pub(crate) async fn stored_pem(&self, site: &Site) -> Option<(Vec<u8>, Vec<u8>)> {
        let name = cert_object_name(site);
        let stored = self.store.get(Kind::Certificate, &name).await.ok()??;
        stored_certificate(site, &stored.object).ok()??;
        Some((
            stored.object.get("tls.crt")?.to_vec(),
            stored.object.get("tls.key")?.to_vec(),
        ))
    }

    /// The last ACME error of a site (by its id: sorted names joined by `,`), if its
    /// last attempt failed.
    pub fn acme_last_error(&self, site: &str) -> Option<String> {
        self.acme.last_error(site)
    }

    /// The last error of `site` (by [`SiteId`]) if its last ACME attempt failed, with
    /// the notAfter of the certificate it serves meanwhile, if it serves one: a failed
    /// renewal, not a site left without a certificate.
    pub(crate) fn acme_failure(&self, site: &str) -> Option<(String, Option<SystemTime>)> {
        let error = self.acme.last_error(site)?;
        Some((error, self.resolver.current(site).map(|c| c.not_after)))
    }

    /// Keeps running `sync` until `shutdown` turns true; `config` is read anew each pass
    /// so reloads apply.
    pub(crate) async fn run(
        self: Arc<Self>,
        config: Arc<arc_swap::ArcSwap<Config>>,
        mut shutdown: tokio::sync::watch::Receiver<crate::shutdown::Phase>,
    ) {
        let follower = tokio::spawn(self.clone().follow_store(config.clone()));
        let _stop_following = AbortOnDrop(follower);
        let mut last_collected: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
            self.sync(&config.load(), SystemTime::now()).await;
            if last_collected.is_none_or(|at| at.elapsed() >= TOKEN_GC_INTERVAL) {
                last_collected = Some(tokio::time::Instant::now());
                match self.challenges.collect_garbage(SystemTime::now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        removed = n,
                        "removed expired challenge tokens from the store"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %Chain(&e), "cannot collect expired challenge tokens")
                    }
                }
            }
        }
    }

    /// Serves what other processes sharing the store issue: every certificate object
    /// written (Kubernetes: the Secret watch; file: the folder scan) is installed for the
    /// configured site it belongs to when it lives longer than the one served. A deleted
    /// object changes nothing: what is served stays until it is replaced.
    async fn follow_store(self: Arc<Self>, config: Arc<arc_swap::ArcSwap<Config>>) {
        let mut changes = self.store.watch(Kind::Certificate);
        // Object name -> site index, built once per config: a scan that hashes every
        // site's names per change was quadratic when a watch starts on thousands.
        let mut names: Option<(Arc<Config>, HashMap<String, usize>)> = None;
        while let Some(change) = changes.recv().await {
            let Change::Upsert(name, stored) = change else {
                continue;
            };
            let config = config.load_full();
            let by_name = match &mut names {
                Some((built_for, map)) if Arc::ptr_eq(built_for, &config) => map,
                slot => {
                    let map = config
                        .sites
                        .iter()
                        .enumerate()
                        .filter(|(_, site)| {
                            matches!(site.tls, TlsSource::Acme | TlsSource::Internal)
                        })
                        .map(|(i, site)| (cert_object_name(site), i))
                        .collect();
                    &mut slot.insert((config.clone(), map)).1
                }
            };
            let Some(site) = by_name.get(&name).map(|&i| &config.sites[i]) else {
                continue;
            };
            let id = site_id(site);
            // The not-after annotation tells, without parsing the certificate, that the
            // object holds nothing newer than what is served: the common case when a
            // watch starts and reports every object the start-up just loaded.
            let served = self.resolver.current(&id).map(|c| c.not_after);
            if let (Some(served), Some(stored_after)) =
                (served, crate::objects::annotated_not_after(&stored.object))
                && stored_after <= served
            {
                continue;
            }
            let loaded = match stored_certificate(site, &stored.object) {
                Ok(Some(loaded)) => loaded,
                // ACME status only, no certificate yet.
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(object = %name, error = %Chain(&e), "ignoring an unusable stored certificate");
                    continue;
                }
            };
            if served.is_none_or(|served| served < loaded.not_after) {
                self.resolver.install(&id, loaded.key, loaded.not_after);
                tracing::info!(site = %id, object = %name, "serving a certificate from the store");
            }
        }
    }

    /// Serves a Secret's certificate when it parses and covers every host of the site;
    /// otherwise the error is returned and whatever served the site before keeps
    /// serving.
    fn install_secret(&self, site: &Site, pem: &SecretPem) -> Result<(), CertError> {
        let what = format!("Secret {}", pem.origin);
        let loaded = load_pem(&what, &pem.chain, &pem.key)?;
        if let Some(host) = site
            .hosts
            .iter()
            .find(|h| !crate::tls::leaf_covers(&loaded, h))
        {
            return Err(CertError::NotCovered {
                what,
                host: host.to_string(),
            });
        }
        let id = site_id(site);
        self.resolver.install(&id, loaded.key, loaded.not_after);
        tracing::info!(site = %id, secret = %pem.origin, "serving the certificate of a Secret");
        Ok(())
    }

    fn sync_files(&self, site: &Site) -> Result<bool, CertError> {
        let TlsSource::Files { cert, key } = &site.tls else {
            return Ok(false);
        };
        let id = site_id(site);
        let stamp = files::stamp(cert, key);
        let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        if stamps.get(&id) == Some(&stamp) {
            return Ok(false);
        }
        // Remember the stamp even on failure: a broken file is reported once, not every
        // pass, and the next change is tried again.
        stamps.insert(id.clone(), stamp);
        drop(stamps);
        let loaded = files::load(cert, key)?;
        self.resolver.install(&id, loaded.key, loaded.not_after);
        tracing::info!(site = %id, "loaded certificate files");
        Ok(true)
    }

    /// Installs the stored certificate of `site` if there is one; returns whether it did.
    async fn load_stored(&self, site: &Site) -> Result<bool, CertError> {
        let name = cert_object_name(site);
        let Some(stored) = self.store.get(Kind::Certificate, &name).await? else {
            return Ok(false);
        };
        let Some(loaded) = stored_certificate(site, &stored.object)? else {
            return Ok(false);
        };
        self.resolver
            .install(&site_id(site), loaded.key, loaded.not_after);
        tracing::info!(site = %site_id(site), object = %name, "serving the stored certificate");
        Ok(true)
    }

    async fn sync_internal(&self, site: &Site, now: SystemTime) -> Result<(), CertError> {
        let id = site_id(site);
        if self.resolver.current(&id).is_some_and(|c| !c.due(now)) {
            return Ok(());
        }
        let name = cert_object_name(site);
        let stored = self.store.get(Kind::Certificate, &name).await?;
        // Another process sharing the store may have renewed it already.
        if let Some(loaded) = stored
            .as_ref()
            .and_then(|s| stored_certificate(site, &s.object).ok().flatten())
            && !loaded.due(now)
        {
            self.resolver.install(&id, loaded.key, loaded.not_after);
            return Ok(());
        }
        let ca = self.local_ca(now).await?;
        let issued = ca.issue(&site.hosts, now)?;
        let loaded = load_pem(
            &name,
            issued.chain_pem.as_bytes(),
            issued.key_pem.as_bytes(),
        )?;
        let object = cert_object(site, &issued.chain_pem, &issued.key_pem, loaded.not_after);
        match self
            .store
            .put(
                Kind::Certificate,
                &name,
                &object,
                stored.as_ref().map(|s| &s.version),
            )
            .await
        {
            Ok(_) => {}
            // Someone else wrote first: serve ours now, theirs is picked up next pass.
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.resolver.install(&id, loaded.key, loaded.not_after);
        tracing::info!(site = %id, "issued a certificate from the local CA");
        Ok(())
    }

    /// The local CA, created once in the store and shared by everything using it.
    pub(crate) async fn local_ca(&self, now: SystemTime) -> Result<Arc<LocalCa>, CertError> {
        self.ca
            .get_or_try_init(|| async {
                for _ in 0..3 {
                    if let Some(stored) = self.store.get(Kind::Ca, LOCAL_CA).await? {
                        let cert = data(&stored.object, Kind::Ca, LOCAL_CA, "tls.crt")?;
                        let key = data(&stored.object, Kind::Ca, LOCAL_CA, "tls.key")?;
                        let ca = LocalCa::from_pem(
                            &String::from_utf8_lossy(cert),
                            &String::from_utf8_lossy(key),
                        )?;
                        return Ok(Arc::new(ca));
                    }
                    let ca = LocalCa::generate(now)?;
                    let mut data = BTreeMap::new();
                    data.insert("tls.crt".to_string(), ca.root_pem().as_bytes().to_vec());
                    data.insert("tls.key".to_string(), ca.key_pem().as_bytes().to_vec());
                    let object = Object {
                        data,
                        annotations: BTreeMap::new(),
                    };
                    match self.store.put(Kind::Ca, LOCAL_CA, &object, None).await {
                        Ok(_) => {
                            tracing::info!("created the local CA");
                            return Ok(Arc::new(ca));
                        }
                        // Another process created it first: use theirs.
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(CertError::LocalCa)
            })
            .await
            .cloned()
    }
}

/// The table `portico certs` prints: every configured site and every stored
/// certificate, with names, issuer, not-after, days left, source, and for ACME sites the
/// last error and the next attempt when the last attempt failed.
pub async fn table(
    store: &dyn Store,
    config: &Config,
    now: SystemTime,
) -> Result<String, CertError> {
    let mut out = format!(
        "{:<40} {:<28} {:<21} {:>9}  {}\n",
        "NAMES", "ISSUER", "NOT AFTER", "DAYS LEFT", "SOURCE"
    );
    let mut stored: BTreeMap<String, Object> = store
        .list(Kind::Certificate)
        .await?
        .into_iter()
        .map(|(name, s)| (name, s.object))
        .collect();
    let mut rows: Vec<(String, &'static str, Option<Object>)> = config
        .sites
        .iter()
        .map(|site| {
            let object = stored.remove(&cert_object_name(site));
            (site.names().join(","), site.tls.name(), object)
        })
        .collect();
    // Not a site of the file: with [kubernetes], most likely an Ingress's host (the
    // command reads no cluster objects to tell).
    let elsewhere = if config.kubernetes.is_some() {
        "(not in the file: an Ingress's?)"
    } else {
        "(not configured)"
    };
    rows.extend(stored.into_iter().map(|(name, object)| {
        let names = object
            .annotations
            .get("cert-manager.io/alt-names")
            .cloned()
            .unwrap_or(name);
        (names, elsewhere, Some(object))
    }));
    for (names, source, object) in rows {
        let leaf = object
            .as_ref()
            .and_then(|o| o.get("tls.crt"))
            .and_then(|pem| {
                use rustls::pki_types::pem::PemObject;
                rustls::pki_types::CertificateDer::from_pem_slice(pem).ok()
            });
        let parsed = leaf.as_ref().and_then(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
            let issuer = cert
                .issuer()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .unwrap_or("?")
                .to_string();
            Some((issuer, cert.validity().not_after.timestamp()))
        });
        let (issuer, not_after, days) = match parsed {
            Some((issuer, ts)) => {
                let at = SystemTime::UNIX_EPOCH + Duration::from_secs(ts.max(0) as u64);
                let days = match at.duration_since(now) {
                    Ok(left) => format!("{}", left.as_secs() / 86_400),
                    Err(_) => "expired".to_string(),
                };
                (issuer, rfc3339(at), days)
            }
            None => ("-".to_string(), "-".to_string(), "-".to_string()),
        };
        out.push_str(&format!(
            "{names:<40} {issuer:<28} {not_after:<21} {days:>9}  {source}\n"
        ));
        let annotations = object.map(|o| o.annotations).unwrap_or_default();
        if let Some(error) = annotations.get(ANNOTATION_LAST_ERROR) {
            out.push_str(&format!("  last error: {error}\n"));
        }
        if let Some(next) = annotations.get(ANNOTATION_NEXT_ATTEMPT) {
            out.push_str(&format!("  next attempt: {next}\n"));
        }
    }
    Ok(out)
}
