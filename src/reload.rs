//! Live config reload: owns the question "which config is running?" after start-up.
//!
//! Two triggers lead to the same [`Reloader::reload_now`]: SIGHUP (`main` turns it into
//! a call) and a change of the config file, which `Reloader::watch` notices by polling.
//!
//! A reload reads and validates the whole file first. Any error (unreadable file, TOML
//! syntax, unknown key, a semantic error) leaves the running config in place; the error
//! is logged and returned with the file, line and key, and counted in
//! `portico_config_reloads_total{result="error"}`. A valid config is applied in this
//! order, none of which closes a listener or a connection:
//!
//! 1. the shared `Config` is swapped (limits for new connections, the port-80 challenge
//!    check, ACME settings for the next scheduler pass);
//! 2. the proxy's routing table is swapped ([`Proxy::update`]): the next request takes
//!    the new routes and upstreams, requests in flight finish on the upstream they
//!    already have, and upstreams that stay keep their pooled connections;
//! 3. the certificate side is reconciled (`CertManager::reload`): removed sites leave
//!    the resolver, so their names fail the handshake like unknown SNI and requests for
//!    them on open connections get 421; new sites are served from the store when it has
//!    a certificate, and the scheduler is woken at once to obtain what is missing.
//!
//! What applies live, and when:
//! - sites, hosts, routes, upstreams, `upstream_protocol`, `respond`: the next request
//!   (the next handshake for certificates);
//! - a site's `tls` (and `cert`/`key` paths): at once for `files` and for what the store
//!   holds; else the scheduler obtains a certificate from the new source, and the old
//!   one serves until then. A site whose hosts were edited counts as a new site (it is
//!   known by its names); the certificate it replaced keeps serving the names it covers
//!   until the new one is installed (`crate::tls::resolver`);
//! - `limits` other than `max_connections`: new connections (timeouts, header size,
//!   HTTP/2 streams), the next request (upstream timeouts), the next shutdown;
//! - `acme`: the next order;
//! - `listen.trusted_proxies` and `listen.proxy_protocol`: the next connection and request;
//! - `log.access`: the next request.
//!
//! What needs a restart: `listen.http`, `listen.https`, `listen.admin` (the sockets are
//! bound once), `log.format` (portico's own log is set up once, and the access log
//! keeps the same format), `storage` (the store
//! and its locks are opened once) and `limits.max_connections` (the connection cap is
//! sized once). A change there is logged as a warning naming the key; the running value
//! is kept and the rest of the file is applied.
//!
//! Watching: every [`POLL_INTERVAL`] the file is read through its path, so every symlink
//! is followed anew. That is what makes a Kubernetes ConfigMap update visible: kubelet
//! writes a new timestamped folder and renames a fresh `..data` symlink over the old one,
//! and `portico.toml -> ..data/portico.toml` then leads to the new file, while the folder
//! and the `portico.toml` link themselves never change (inotify on the file would miss
//! it). A reload starts when the content's SHA-256 differs from the last version tried
//! and the file (its resolved path, modification time, length and content) stayed the
//! same for one whole interval, so a file caught half-written by an editor or `cat >` is
//! not applied. Polling instead of inotify (the `notify` crate): a small file read once a
//! second costs nothing, works the same on every file system (NFS, overlay, ConfigMap
//! volumes), and needs no re-arming of watches when symlinks move.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{Mutex, watch};

use crate::certs::CertManager;
use crate::config::{Config, ConfigError, HostPattern, Site};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::report::Chain;
use crate::shutdown::Phase;
use crate::tls::{SiteId, resolver::site_id};

/// How often the config file is looked at. Public so that an embedder that rewrites
/// the file (and the reload tests) knows how long to wait before the change can have
/// been seen: a file is applied once it stayed the same for a whole interval.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What a successful reload did. Sites are named by their id (sorted names joined by `,`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Sites that were not served before.
    pub added: Vec<SiteId>,
    /// Sites no longer served.
    pub removed: Vec<SiteId>,
    /// Sites with the same names and other routes, upstreams or `tls`.
    pub changed: Vec<SiteId>,
    /// Keys whose new value needs a restart; their running value was kept.
    pub needs_restart: Vec<&'static str>,
    /// False when the file, apart from `needs_restart`, says what is already running.
    pub applied: bool,
}

/// Triggers reloads and watches the config file. Cheap to clone; clones share one state,
/// so a SIGHUP and the watcher never reload at the same time or twice for one change.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    config: Arc<ArcSwap<Config>>,
    proxy: Arc<Proxy>,
    certs: Arc<CertManager>,
    metrics: Arc<Metrics>,
    /// Held for a whole reload: reloads run one at a time.
    seen: Mutex<Seen>,
}

#[derive(Debug)]
struct Seen {
    /// The content of the last version reloaded from (or the one running at start).
    /// `None`: unknown, so the watcher's first settled look reloads.
    tried: Option<Content>,
    /// A version the watcher saw differ from `tried`; reloaded if still the same at the
    /// next look.
    pending: Option<FileVersion>,
    /// The running config as the file makes it (without the cluster's sites).
    file: Config,
    /// The sites the cluster's objects make ([`Reloader::apply_cluster`]).
    cluster: Vec<Site>,
}

/// The SHA-256 of the file's bytes, or why it could not be read.
type Content = Result<[u8; 32], std::io::ErrorKind>;

/// What the watcher compares from one look to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileVersion {
    /// The file at the end of every symlink.
    target: Option<PathBuf>,
    modified: Option<SystemTime>,
    len: Option<u64>,
    content: Content,
}

/// Reads the file once: its version and its text.
fn read(path: &Path) -> (FileVersion, std::io::Result<String>) {
    let meta = std::fs::metadata(path).ok();
    let text = std::fs::read_to_string(path);
    let content = match &text {
        Ok(t) => {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, t.as_bytes());
            let mut sum = [0u8; 32];
            sum.copy_from_slice(digest.as_ref());
            Ok(sum)
        }
        Err(e) => Err(e.kind()),
    };
    let version = FileVersion {
        target: std::fs::canonicalize(path).ok(),
        modified: meta.as_ref().and_then(|m| m.modified().ok()),
        len: meta.as_ref().map(|m| m.len()),
        content,
    };
    (version, text)
}

impl Reloader {
    /// A reloader for the running `config` (its `path` is the file reloads read).
    pub(crate) fn new(
        config: Arc<ArcSwap<Config>>,
        proxy: Arc<Proxy>,
        certs: Arc<CertManager>,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        let path = config.load().path.clone();
        // The file may have changed since it was loaded: only a version that validates
        // to the running config counts as already applied.
        let (version, text) = read(&path);
        let tried = text
            .ok()
            .and_then(|t| Config::parse(&path, &t).ok())
            .filter(|c| c == config.load().as_ref())
            .map(|_| version.content);
        let file = config.load().as_ref().clone();
        Reloader {
            inner: Arc::new(Inner {
                path,
                config,
                proxy,
                certs,
                metrics,
                seen: Mutex::new(Seen {
                    tried,
                    pending: None,
                    file,
                    cluster: Vec::new(),
                }),
            }),
        }
    }

    /// The config file reloads read.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Reads, validates and applies the config file now. On error the running config
    /// stays and the error (file:line: key: message) is logged and returned.
    pub async fn reload_now(&self) -> Result<ReloadOutcome, ConfigError> {
        let mut seen = self.inner.seen.lock().await;
        let (version, text) = read(&self.inner.path);
        self.inner.reload(&mut seen, version, text).await
    }

    /// Replaces the sites made from the cluster's objects and applies them, merged with
    /// the file's, as a reload does; returns what changed.
    pub(crate) async fn apply_cluster(&self, sites: Vec<Site>) -> ReloadOutcome {
        let mut seen = self.inner.seen.lock().await;
        seen.cluster = sites;
        let old = self.inner.config.load_full();
        let (new, outcome) = plan(&old, merged(seen.file.clone(), &seen.cluster));
        self.inner.apply(&old, new, &outcome).await;
        if outcome.applied {
            tracing::info!(
                added = ?outcome.added,
                removed = ?outcome.removed,
                changed = ?outcome.changed,
                "cluster: sites updated"
            );
        }
        outcome
    }

    /// The hosts the config file's sites serve (which win over the cluster's).
    pub(crate) async fn file_hosts(&self) -> std::collections::HashSet<HostPattern> {
        let seen = self.inner.seen.lock().await;
        seen.file
            .sites
            .iter()
            .flat_map(|s| s.hosts.iter().cloned())
            .collect()
    }

    /// Looks at the config file every [`POLL_INTERVAL`] and reloads it when it changed,
    /// until shutdown begins.
    pub(crate) async fn watch(self, mut shutdown: watch::Receiver<Phase>) {
        let mut ticks = tokio::time::interval(POLL_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.look().await;
        }
    }

    /// One look of the watcher.
    async fn look(&self) {
        let mut seen = self.inner.seen.lock().await;
        let (version, text) = read(&self.inner.path);
        if seen.tried.as_ref() == Some(&version.content) {
            seen.pending = None;
            return;
        }
        if seen.pending.as_ref() != Some(&version) {
            // Changed since the last look: maybe still being written.
            seen.pending = Some(version);
            return;
        }
        tracing::info!(
            file = %self.inner.path.display(),
            target = ?version.target,
            "the config file changed: reloading"
        );
        // Errors are logged and counted inside; the next change is tried again.
        let _ = self.inner.reload(&mut seen, version, text).await;
    }
}

impl Inner {
    async fn reload(
        &self,
        seen: &mut Seen,
        version: FileVersion,
        text: std::io::Result<String>,
    ) -> Result<ReloadOutcome, ConfigError> {
        seen.tried = Some(version.content);
        seen.pending = None;
        let parsed = text
            .map_err(|source| ConfigError::Read {
                path: self.path.clone(),
                source,
            })
            .and_then(|text| Config::parse(&self.path, &text));
        let new = match parsed {
            Ok(config) => config,
            Err(e) => {
                self.metrics.config_reload(false);
                tracing::error!(error = %Chain(&e), "config not reloaded; the running config keeps serving");
                return Err(e);
            }
        };
        let old = self.config.load_full();
        let from_file = new.sites.len();
        let (new, outcome) = plan(&old, merged(new, &seen.cluster));
        for key in &outcome.needs_restart {
            tracing::warn!(
                key,
                file = %self.path.display(),
                "changing {key} needs a restart; the running value is kept and the rest applied"
            );
        }
        let mut file = new.clone();
        file.sites.truncate(from_file);
        seen.file = file;
        self.apply(&old, new, &outcome).await;
        self.metrics.config_reload(true);
        tracing::info!(
            file = %self.path.display(),
            added = ?outcome.added,
            removed = ?outcome.removed,
            changed = ?outcome.changed,
            applied = outcome.applied,
            "config reloaded"
        );
        Ok(outcome)
    }
}

impl Inner {
    async fn apply(&self, old: &Config, new: Config, outcome: &ReloadOutcome) {
        if outcome.applied {
            let new = Arc::new(new);
            self.config.store(new.clone());
            self.proxy.update(&new);
            self.certs.reload(old, &new).await;
        }
    }
}

/// `file` with the cluster's sites after its own; a host the file serves is taken out of
/// the cluster's sites (the file wins), and a site left with no host is dropped.
fn merged(mut file: Config, cluster: &[Site]) -> Config {
    let taken: std::collections::HashSet<HostPattern> = file
        .sites
        .iter()
        .flat_map(|s| s.hosts.iter().cloned())
        .collect();
    for site in cluster {
        let mut site = site.clone();
        site.hosts.retain(|h| {
            // The cluster's builder already left these out and said so; this covers a
            // file changed since its last build.
            !taken.contains(h)
        });
        if !site.hosts.is_empty() {
            file.sites.push(site);
        }
    }
    file
}

/// The config to run after a reload from `old` to `new`, and what changes. Values that
/// need a restart are taken from `old`.
fn plan(old: &Config, mut new: Config) -> (Config, ReloadOutcome) {
    let mut needs_restart = Vec::new();
    let mut keep = |key: &'static str, differs: bool| {
        if differs {
            needs_restart.push(key);
        }
    };
    keep("listen.http", new.listen.http != old.listen.http);
    keep("listen.https", new.listen.https != old.listen.https);
    keep("listen.admin", new.listen.admin != old.listen.admin);
    keep("storage", new.storage != old.storage);
    keep(
        "limits.max_connections",
        new.limits.max_connections != old.limits.max_connections,
    );
    // The subscriber of portico's own log is installed once; both logs keep one format.
    keep("log.format", new.log.format != old.log.format);
    // Sockets are bound once; who is trusted (`trusted_proxies`, `proxy_protocol`)
    // applies to the next connection and request.
    new.listen.http = old.listen.http;
    new.listen.https = old.listen.https;
    new.listen.admin = old.listen.admin;
    new.storage = old.storage.clone();
    new.limits.max_connections = old.limits.max_connections;
    new.log.format = old.log.format;

    // By id, so a change of one site among thousands (an Ingress edited) costs one
    // pass over each list, not a pass over the old list per new site.
    let old_sites: std::collections::HashMap<SiteId, &Site> =
        old.sites.iter().map(|s| (site_id(s), s)).collect();
    let new_ids: Vec<SiteId> = new.sites.iter().map(site_id).collect();
    let new_set: std::collections::HashSet<&SiteId> = new_ids.iter().collect();
    let added = new_ids
        .iter()
        .filter(|id| !old_sites.contains_key(*id))
        .cloned()
        .collect();
    let removed = old
        .sites
        .iter()
        .map(site_id)
        .filter(|id| !new_set.contains(id))
        .collect();
    let changed = new
        .sites
        .iter()
        .zip(&new_ids)
        .filter_map(|(site, id)| {
            let before = old_sites.get(id)?;
            (*before != site).then(|| id.clone())
        })
        .collect();
    let applied = new != *old;
    let outcome = ReloadOutcome {
        added,
        removed,
        changed,
        needs_restart,
        applied,
    };
    (new, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(Path::new("t.toml"), text).unwrap()
    }

    const OLD: &str = "[listen]\nhttps = \"127.0.0.1:8443\"\n[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"one:1\"]\n[[site]]\nhosts = [\"c.test\"]\nupstreams = [\"one:1\"]\n";

    #[test]
    fn plan_names_added_removed_and_changed_sites() {
        let old = config(OLD);
        let (new, outcome) = plan(
            &old,
            config(
                "[listen]\nhttps = \"127.0.0.1:8443\"\n[[site]]\nhosts = [\"b.test\"]\nupstreams = [\"one:1\"]\n[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"two:1\"]\n",
            ),
        );
        assert_eq!(outcome.added, ["b.test"]);
        assert_eq!(outcome.removed, ["c.test"]);
        assert_eq!(outcome.changed, ["a.test"]);
        assert!(outcome.needs_restart.is_empty());
        assert!(outcome.applied);
        assert_eq!(new.sites.len(), 2);
    }

    #[test]
    fn restart_only_keys_keep_their_running_value_and_the_rest_applies() {
        let old = config(OLD);
        let (new, outcome) = plan(
            &old,
            config(
                "[listen]\nhttps = \"127.0.0.1:9443\"\nadmin = \"127.0.0.1:2019\"\n[storage]\npath = \"elsewhere\"\n[limits]\nmax_connections = 5\nidle_timeout = \"5s\"\n[log]\naccess = true\nformat = \"json\"\n[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"one:1\"]\n[[site]]\nhosts = [\"c.test\"]\nupstreams = [\"one:1\"]\n",
            ),
        );
        assert_eq!(
            outcome.needs_restart,
            [
                "listen.https",
                "listen.admin",
                "storage",
                "limits.max_connections",
                "log.format"
            ]
        );
        // The access log turns on at once, in the format running.
        assert!(new.log.access);
        assert_eq!(new.log.format, old.log.format);
        assert_eq!(new.listen, old.listen);
        assert_eq!(new.storage, old.storage);
        assert_eq!(new.limits.max_connections, old.limits.max_connections);
        assert_eq!(new.limits.idle_timeout, Duration::from_secs(5));
        assert!(outcome.applied, "the idle timeout changed");
        assert!(outcome.changed.is_empty() && outcome.added.is_empty());

        // Only a restart-only key changed: nothing to apply.
        let (_, outcome) = plan(&old, config(&OLD.replace("8443", "9443")));
        assert_eq!(outcome.needs_restart, ["listen.https"]);
        assert!(!outcome.applied);
        let (_, outcome) = plan(&old, config(OLD));
        assert_eq!(outcome, ReloadOutcome::default());
    }
}
