//! The meeting point of the two pipelines: the certificate path swaps certificates in,
//! the handshake reads them out.
//!
//! Writers (start-up, renewals, file reloads, config reloads) take a mutex, edit the
//! per-site table and publish a fresh immutable [`Snapshot`] through `ArcSwap`. The
//! handshake path only loads that snapshot: no lock, no await, and a swap can never hand
//! a handshake half of an old certificate and half of a new one, because a site's chain
//! and key travel together in one `Arc<CertifiedKey>`.
//!
//! Across config reloads a site is known by its names ([`SiteId`]): a site whose hosts
//! were edited is a new site and needs a new certificate. Until it has one, the
//! certificate it replaced keeps serving the names it covers (an "interim" certificate),
//! so adding `www.` to a site never takes down the name it already had.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{HostIndex, HostPattern, Site};
use crate::metrics::Metrics;

/// A site's current certificate with what the request path and the operator need.
#[derive(Debug)]
pub struct SiteCert {
    /// The chain and key served.
    pub key: Arc<CertifiedKey>,
    /// The site's hosts: a connection handshaken with this certificate may send requests
    /// for any of them (HTTP/2 connection reuse); others get 421.
    pub hosts: Arc<[HostPattern]>,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
    /// The leaf's notBefore, parsed on first use: the scheduler asks for every site
    /// every couple of seconds, and parsing 10,000 leaves each time cost a steady few
    /// percent of a core.
    not_before: std::sync::OnceLock<Option<SystemTime>>,
}

impl SiteCert {
    /// The leaf's notBefore, if the leaf parses.
    pub(crate) fn not_before(&self) -> Option<SystemTime> {
        *self.not_before.get_or_init(|| {
            let der = self.key.end_entity_cert().ok()?;
            super::validity("served certificate", der)
                .ok()
                .map(|(not_before, _)| not_before)
        })
    }

    /// The renewal rule for what is being served: a third or less of its life left.
    pub(crate) fn due(&self, now: SystemTime) -> bool {
        super::due(self.not_before().unwrap_or(now), self.not_after, now)
    }
}

/// Identifies a site across config reloads: its sorted, lowercased names joined by `,`.
pub type SiteId = String;

/// The [`SiteId`] of `site`.
pub fn site_id(site: &Site) -> SiteId {
    site.names().join(",")
}

/// What one handshake reads.
#[derive(Debug, Default)]
pub struct Snapshot {
    hosts: HostIndex<Arc<SiteCert>>,
    /// The certificate for clients that send no SNI: set only when exactly one site is
    /// configured (docs/requests.md); else the catch-all's, if there is one; else such
    /// handshakes fail.
    no_sni: Option<Arc<SiteCert>>,
}

impl Snapshot {
    /// For a client that sent no SNI on a connection to `local`: the site whose hosts
    /// include that address, else the only site, else the catch-all (docs/requests.md);
    /// none means a handshake alert.
    pub(crate) fn lookup_by_address(&self, local: std::net::IpAddr) -> Option<&Arc<SiteCert>> {
        self.hosts
            .exact(&local.to_canonical().to_string())
            .or_else(|| self.lookup(None))
    }

    /// Exact names first, then the longest wildcard that covers the name, then the
    /// catch-all.
    pub fn lookup(&self, name: Option<&str>) -> Option<&Arc<SiteCert>> {
        match name {
            Some(name) => self.hosts.get(name),
            None => self.no_sni.as_ref().or_else(|| self.hosts.any()),
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    /// Configured sites in config order, with their hosts.
    sites: Vec<(SiteId, Arc<[HostPattern]>)>,
    /// Index into `sites` by id: with thousands of sites, a scan per install (or per
    /// site in `set_sites`) made start-up quadratic.
    index: HashMap<SiteId, usize>,
    certs: BTreeMap<SiteId, Arc<SiteCert>>,
    /// For a site without a certificate of its own yet: certificates it inherited from
    /// sites a reload replaced (its hosts were edited) or from its previous `tls`
    /// source. They serve the names they cover until [`CertResolver::install`] gives the
    /// site its own, so adding a name to a site does not take down the names it had.
    /// Never reported by [`CertResolver::current`], so the scheduler still obtains one.
    interim: BTreeMap<SiteId, Vec<Arc<SiteCert>>>,
}

/// Whether a certificate issued for `hosts` serves `host`.
fn covers(hosts: &[HostPattern], host: &HostPattern) -> bool {
    match host {
        HostPattern::Exact(name) => hosts.iter().any(|h| h.matches(name)),
        _ => hosts.contains(host),
    }
}

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// rustls' certificate resolver for every site.
#[derive(Debug, Default)]
pub struct CertResolver {
    snapshot: ArcSwap<Snapshot>,
    table: Mutex<Table>,
    /// TLS-ALPN-01 challenge certificates by the SNI the validator sends (the name, or
    /// for an IP address its reverse-DNS name, RFC 8738), kept apart from site
    /// certificates: served only to a ClientHello that offers `acme-tls/1`, which
    /// browsers never do.
    alpn_challenges: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// Keeps `portico_certificate_not_after_seconds` in step with the table (edited
    /// under the table lock, so the gauge and the served certificates agree).
    metrics: Arc<Metrics>,
    /// Open [`Batch`]es: while any is, edits do not publish; the last one to close does.
    batches: AtomicUsize,
}

/// Holds publishing back until dropped (see [`CertResolver::batch`]).
pub struct Batch<'a>(&'a CertResolver);

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        let table = self.0.lock();
        // Under the table lock, so an edit racing the last close publishes itself or is
        // published here.
        if self.0.batches.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.publish_now(&table);
        }
    }
}

impl CertResolver {
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A resolver that reports the certificates it serves to `metrics`.
    pub(crate) fn with_metrics(metrics: Arc<Metrics>) -> Self {
        CertResolver {
            metrics,
            ..Self::default()
        }
    }

    /// Declares the configured sites (at start and on reload). Certificates of removed
    /// sites are dropped, so names no site has any more fail the handshake like unknown
    /// SNI; names that moved to a new site (its hosts were edited) keep their
    /// certificate as an interim one until the new site has its own.
    pub(crate) fn set_sites(&self, sites: &[Site]) {
        let mut table = self.lock();
        table.sites = sites
            .iter()
            .map(|s| (site_id(s), Arc::from(s.hosts.clone())))
            .collect();
        let Table {
            sites,
            index,
            certs,
            interim,
        } = &mut *table;
        *index = sites
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (id.clone(), i))
            .collect();
        let mut leaving: Vec<Arc<SiteCert>> =
            std::mem::take(interim).into_values().flatten().collect();
        certs.retain(|id, cert| {
            let stays = index.contains_key(id);
            if !stays {
                leaving.push(cert.clone());
            }
            stays
        });
        for (id, hosts) in sites.iter() {
            if certs.contains_key(id) {
                continue;
            }
            let inherited: Vec<Arc<SiteCert>> = leaving
                .iter()
                .filter(|cert| hosts.iter().any(|h| covers(&cert.hosts, h)))
                .cloned()
                .collect();
            if !inherited.is_empty() {
                interim.insert(id.clone(), inherited);
            }
        }
        self.metrics
            .retain_certificates(|id| certs.contains_key(id));
        self.publish(&table);
    }

    /// Installs a site's new certificate atomically. Ignored for a site that is not (or
    /// no longer) configured, so a renewal racing a reload cannot resurrect it.
    pub fn install(&self, site: &SiteId, key: Arc<CertifiedKey>, not_after: SystemTime) -> bool {
        let mut table = self.lock();
        let Some((_, hosts)) = table.index.get(site).map(|&i| &table.sites[i]) else {
            return false;
        };
        self.metrics
            .set_certificate(site, key.end_entity_cert().ok().map(|c| &c[..]), not_after);
        let cert = Arc::new(SiteCert {
            key,
            hosts: hosts.clone(),
            not_after,
            not_before: std::sync::OnceLock::new(),
        });
        table.certs.insert(site.clone(), cert);
        table.interim.remove(site);
        self.publish(&table);
        true
    }

    /// The site's certificate came from a `tls` source it no longer uses: it keeps
    /// serving as an interim one, but [`CertResolver::current`] no longer reports it,
    /// so the scheduler obtains one from the new source.
    pub(crate) fn retire(&self, site: &SiteId) {
        let mut table = self.lock();
        if let Some(cert) = table.certs.remove(site) {
            table.interim.insert(site.clone(), vec![cert]);
            self.metrics.retain_certificates(|id| id != site);
            self.publish(&table);
        }
    }

    /// Serves `key` to TLS-ALPN-01 validation whose SNI is `name` until removed (for an
    /// IP identifier, its reverse-DNS name: `acme::order::alpn_server_name`).
    pub(crate) fn set_alpn_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        self.alpn_challenges.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(name.to_string(), key.clone());
            map
        });
    }

    pub(crate) fn remove_alpn_challenge(&self, name: &str) {
        self.alpn_challenges.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(name);
            map
        });
    }

    /// The certificate a site serves now, if any.
    pub(crate) fn current(&self, site: &str) -> Option<Arc<SiteCert>> {
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

    /// Defers publishing the snapshot until the returned guard (and any other open
    /// batch) is dropped: thousands of installs at start-up then build it once, not once
    /// each (each build is linear in the sites). Handshakes meanwhile see the snapshot
    /// from before the batch.
    pub fn batch(&self) -> Batch<'_> {
        self.batches.fetch_add(1, Ordering::AcqRel);
        Batch(self)
    }

    fn publish(&self, table: &Table) {
        if self.batches.load(Ordering::Acquire) == 0 {
            self.publish_now(table);
        }
    }

    fn publish_now(&self, table: &Table) {
        let mut snap = Snapshot {
            hosts: HostIndex::with_capacity(table.sites.len()),
            ..Snapshot::default()
        };
        // Config order decides ties, though validation already refuses a host in two sites.
        for (id, hosts) in &table.sites {
            let own = table.certs.get(id);
            let interim = table.interim.get(id).map_or(&[][..], Vec::as_slice);
            for host in hosts.iter() {
                let Some(cert) = own.or_else(|| interim.iter().find(|c| covers(&c.hosts, host)))
                else {
                    continue;
                };
                snap.hosts.insert_with(host, || cert.clone());
            }
        }
        if let [(only, _)] = table.sites.as_slice() {
            snap.no_sni = table
                .certs
                .get(only)
                .or_else(|| table.interim.get(only).and_then(|i| i.first()))
                .cloned();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn sites(hosts: &[&[&str]]) -> Vec<Site> {
        let mut text = String::new();
        for site in hosts {
            let list: Vec<String> = site.iter().map(|h| format!("\"{h}\"")).collect();
            text.push_str(&format!(
                "[[site]]\nhosts = [{}]\ntls = \"internal\"\nupstreams = [\"u:1\"]\n",
                list.join(", ")
            ));
        }
        Config::parse(std::path::Path::new("t.toml"), &text)
            .unwrap()
            .sites
    }

    /// A self-signed certificate for `names`.
    fn key(names: &[&str]) -> Arc<CertifiedKey> {
        crate::tls::self_signed(names).key
    }

    fn served(r: &CertResolver, name: &str) -> Option<Arc<CertifiedKey>> {
        r.snapshot().lookup(Some(name)).map(|c| c.key.clone())
    }

    fn same(a: Option<Arc<CertifiedKey>>, b: &Arc<CertifiedKey>) -> bool {
        a.is_some_and(|a| Arc::ptr_eq(&a, b))
    }

    #[test]
    fn names_that_move_to_an_edited_site_keep_their_certificate_until_it_has_its_own() {
        let r = CertResolver::new();
        r.set_sites(&sites(&[&["a.test"], &["c.test"], &["*.w.test"]]));
        let (a, c, w) = (key(&["a.test"]), key(&["c.test"]), key(&["*.w.test"]));
        let never = SystemTime::UNIX_EPOCH;
        assert!(r.install(&"a.test".into(), a.clone(), never));
        assert!(r.install(&"c.test".into(), c.clone(), never));
        assert!(r.install(&"*.w.test".into(), w.clone(), never));

        // a.test gains a name, c.test goes, the wildcard becomes one exact name.
        let after = sites(&[&["a.test", "www.a.test"], &["x.w.test"]]);
        r.set_sites(&after);
        let grown = site_id(&after[0]);
        assert!(same(served(&r, "a.test"), &a));
        assert!(served(&r, "www.a.test").is_none());
        assert!(served(&r, "c.test").is_none());
        assert!(same(served(&r, "x.w.test"), &w));
        assert!(served(&r, "y.w.test").is_none());
        assert!(
            r.current(&grown).is_none(),
            "the scheduler must still see the edited site as lacking a certificate"
        );
        // Another reload before the new certificate arrives keeps the interim one.
        r.set_sites(&after);
        assert!(same(served(&r, "a.test"), &a));

        let own = key(&["a.test", "www.a.test"]);
        assert!(r.install(&grown, own.clone(), never));
        assert!(same(served(&r, "a.test"), &own));
        assert!(same(served(&r, "www.a.test"), &own));
        r.set_sites(&after);
        assert!(same(served(&r, "a.test"), &own));
    }

    #[test]
    fn a_retired_certificate_serves_until_the_new_source_delivers() {
        let r = CertResolver::new();
        r.set_sites(&sites(&[&["a.test"]]));
        let id: SiteId = "a.test".into();
        r.retire(&id);
        assert!(served(&r, "a.test").is_none());
        let old = key(&["a.test"]);
        r.install(&id, old.clone(), SystemTime::UNIX_EPOCH);
        r.retire(&id);
        assert!(r.current(&id).is_none());
        assert!(same(served(&r, "a.test"), &old));
        assert!(
            r.snapshot().lookup(None).is_some(),
            "the only site answers clients without SNI"
        );
        let new = key(&["a.test"]);
        r.install(&id, new.clone(), SystemTime::UNIX_EPOCH);
        assert!(same(served(&r, "a.test"), &new));
        // Removed for good: nothing serves the name.
        r.set_sites(&sites(&[&["b.test"]]));
        assert!(served(&r, "a.test").is_none());
    }

    #[test]
    fn a_gateway_catch_all_serves_unknown_names_and_clients_without_sni() {
        let r = CertResolver::new();
        let mut all = sites(&[&["a.test"], &["b.test"], &["c.test"]]);
        all[1].hosts = vec![HostPattern::Suffix("deep.test".into())];
        all[2].hosts = vec![HostPattern::Any];
        r.set_sites(&all);
        let (a, deep, any) = (key(&["a.test"]), key(&["*.deep.test"]), key(&["x.test"]));
        let never = SystemTime::UNIX_EPOCH;
        assert!(r.install(&site_id(&all[0]), a.clone(), never));
        assert!(r.install(&site_id(&all[1]), deep.clone(), never));
        assert!(r.install(&site_id(&all[2]), any.clone(), never));
        assert!(same(served(&r, "a.test"), &a));
        assert!(same(served(&r, "x.y.deep.test"), &deep));
        assert!(same(served(&r, "unknown.test"), &any));
        // Three sites: no "only site", so the catch-all answers a client without SNI.
        assert!(same(r.snapshot().lookup(None).map(|c| c.key.clone()), &any));
        let local = "127.0.0.1".parse().unwrap();
        assert!(same(
            r.snapshot().lookup_by_address(local).map(|c| c.key.clone()),
            &any
        ));
    }
}
