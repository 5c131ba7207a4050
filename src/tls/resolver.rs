//! The meeting point of the two pipelines: the certificate path swaps certificates in,
//! the handshake reads them out.
//!
//! Writers (start-up, renewals, file reloads, config reloads) take a mutex, edit the
//! per-site table and publish a fresh immutable [`Snapshot`] through `ArcSwap`. The
//! handshake path only loads that snapshot: no lock, no await, and a swap can never hand
//! a handshake half of an old certificate and half of a new one, because a site's chain
//! and key travel together in one `Arc<CertifiedKey>`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{HostPattern, Site};
use crate::metrics::Metrics;

/// A site's current certificate with what the request path and the operator need.
#[derive(Debug)]
pub struct SiteCert {
    pub key: Arc<CertifiedKey>,
    /// The site's hosts: a connection handshaken with this certificate may send requests
    /// for any of them (HTTP/2 connection reuse); others get 421.
    pub hosts: Arc<[HostPattern]>,
    pub not_after: SystemTime,
}

impl SiteCert {
    /// The leaf's notBefore, if the leaf parses.
    pub fn not_before(&self) -> Option<SystemTime> {
        let der = self.key.end_entity_cert().ok()?;
        super::validity("served certificate", der)
            .ok()
            .map(|(not_before, _)| not_before)
    }

    /// The renewal rule for what is being served: a third or less of its life left.
    pub fn due(&self, now: SystemTime) -> bool {
        super::due(self.not_before().unwrap_or(now), self.not_after, now)
    }
}

/// Identifies a site across config reloads: its sorted, lowercased names joined by `,`.
pub type SiteId = String;

pub fn site_id(site: &Site) -> SiteId {
    site.names().join(",")
}

/// What one handshake reads.
#[derive(Debug, Default)]
pub struct Snapshot {
    exact: HashMap<String, Arc<SiteCert>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<SiteCert>>,
    /// The certificate for clients that send no SNI: set only when exactly one site is
    /// configured (DESIGN), else such handshakes fail.
    no_sni: Option<Arc<SiteCert>>,
}

impl Snapshot {
    /// Exact names first, then a wildcard covering exactly one more label.
    pub fn lookup(&self, name: Option<&str>) -> Option<&Arc<SiteCert>> {
        let Some(name) = name else {
            return self.no_sni.as_ref();
        };
        if let Some(cert) = self.exact.get(name) {
            return Some(cert);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent)
    }
}

#[derive(Debug, Default)]
struct Table {
    /// Configured sites in config order, with their hosts.
    sites: Vec<(SiteId, Arc<[HostPattern]>)>,
    certs: BTreeMap<SiteId, Arc<SiteCert>>,
}

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// rustls' certificate resolver for every site.
#[derive(Debug, Default)]
pub struct CertResolver {
    snapshot: ArcSwap<Snapshot>,
    table: Mutex<Table>,
    /// TLS-ALPN-01 challenge certificates by name, kept apart from site certificates:
    /// served only to a ClientHello that offers `acme-tls/1`, which browsers never do.
    alpn_challenges: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// Keeps `portico_certificate_not_after_seconds` in step with the table (edited
    /// under the table lock, so the gauge and the served certificates agree).
    metrics: Arc<Metrics>,
}

impl CertResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// A resolver that reports the certificates it serves to `metrics`.
    pub fn with_metrics(metrics: Arc<Metrics>) -> Self {
        CertResolver {
            metrics,
            ..Self::default()
        }
    }

    /// Declares the configured sites (at start and on reload). Certificates of removed
    /// sites are dropped, so their names fail the handshake like unknown SNI.
    pub fn set_sites(&self, sites: &[Site]) {
        let mut table = self.lock();
        table.sites = sites
            .iter()
            .map(|s| (site_id(s), Arc::from(s.hosts.clone())))
            .collect();
        let Table { sites, certs } = &mut *table;
        certs.retain(|id, _| sites.iter().any(|(s, _)| s == id));
        self.metrics
            .retain_certificates(|id| certs.contains_key(id));
        self.publish(&table);
    }

    /// Installs a site's new certificate atomically. Ignored for a site that is not (or
    /// no longer) configured, so a renewal racing a reload cannot resurrect it.
    pub fn install(&self, site: &SiteId, key: Arc<CertifiedKey>, not_after: SystemTime) -> bool {
        let mut table = self.lock();
        let Some((_, hosts)) = table.sites.iter().find(|(id, _)| id == site) else {
            return false;
        };
        self.metrics
            .set_certificate(site, key.end_entity_cert().ok().map(|c| &c[..]), not_after);
        let cert = Arc::new(SiteCert {
            key,
            hosts: hosts.clone(),
            not_after,
        });
        table.certs.insert(site.clone(), cert);
        self.publish(&table);
        true
    }

    /// Stops serving a site's certificate while the site stays configured (its `tls`
    /// source changed): its names fail the handshake until [`CertResolver::install`].
    pub fn forget(&self, site: &SiteId) {
        let mut table = self.lock();
        if table.certs.remove(site).is_some() {
            self.metrics.retain_certificates(|id| id != site);
            self.publish(&table);
        }
    }

    /// Serves `key` to TLS-ALPN-01 validation of `name` until removed.
    pub fn set_alpn_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        self.alpn_challenges.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(name.to_string(), key.clone());
            map
        });
    }

    pub fn remove_alpn_challenge(&self, name: &str) {
        self.alpn_challenges.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(name);
            map
        });
    }

    /// The certificate a site serves now, if any.
    pub fn current(&self, site: &SiteId) -> Option<Arc<SiteCert>> {
        self.lock().certs.get(site).cloned()
    }

    /// The snapshot handshakes read; also used after a handshake to learn which hosts the
    /// connection's certificate covers.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding this lock leaves the table consistent (every edit is a
        // whole insert or replace), so a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, table: &Table) {
        let mut snap = Snapshot::default();
        // Config order decides ties, though validation already refuses a host in two sites.
        for (id, hosts) in &table.sites {
            let Some(cert) = table.certs.get(id) else {
                continue;
            };
            for host in hosts.iter() {
                match host {
                    HostPattern::Exact(n) => {
                        snap.exact.entry(n.clone()).or_insert_with(|| cert.clone());
                    }
                    HostPattern::Wildcard(s) => {
                        snap.wildcard
                            .entry(s.clone())
                            .or_insert_with(|| cert.clone());
                    }
                }
            }
        }
        if let [(only, _)] = table.sites.as_slice() {
            snap.no_sni = table.certs.get(only).cloned();
        }
        self.snapshot.store(Arc::new(snap));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls hands SNI over already validated as a DNS name; it is not lowercased.
        let name = hello.server_name().map(|n| n.to_ascii_lowercase());
        if hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN))
        {
            // A validator: only a challenge certificate, never a site's.
            return name.and_then(|n| self.alpn_challenges.load().get(&n).cloned());
        }
        let snap = self.snapshot.load();
        let found = snap.lookup(name.as_deref()).map(|c| c.key.clone());
        if found.is_none() {
            tracing::debug!(sni = ?name, "no certificate for this name; refusing the handshake");
        }
        found
    }
}
