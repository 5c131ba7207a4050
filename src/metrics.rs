//! Counters and gauges for operators, rendered in the Prometheus text exposition format
//! (version 0.0.4) by hand, and served by `crate::admin` at `/metrics`.
//!
//! | family | type | labels | what |
//! |---|---|---|---|
//! | `portico_build_info` | gauge | `version` | always 1; the crate version |
//! | `portico_ready` | gauge | | 1 once listeners are bound and stored certificates loaded (`/readyz`) |
//! | `portico_certificate_not_after_seconds` | gauge | `site`, `names` | unix time the served certificate expires; one sample per site that has a certificate |
//! | `portico_acme_orders_total` | counter | `site`, `result` (`valid`, `failed`) | finished ACME orders |
//! | `portico_requests_total` | counter | `site`, `code` | responses by site and status code |
//! | `portico_tls_handshake_failures_total` | counter | `reason` (`no_certificate`, `error`, `timeout`) | handshakes on :443 that did not complete |
//! | `portico_connection_errors_total` | counter | `reason` (`h2_too_many_resets`, `h2_protocol`, `h1_protocol`, `header_timeout`, `proxy_protocol`) | client connections ended for a protocol violation, a flood or a slow request head |
//! | `portico_config_reloads_total` | counter | `result` (`ok`, `error`) | config reloads (SIGHUP, file change); `error`: the file was refused and the running config kept |
//! | `portico_access_log_dropped_total` | counter | | access log lines dropped because the writer fell behind (its queue was full) |
//! | `portico_worker_connections` | gauge | `worker` | HTTPS connections each worker thread serves now (one worker per core; they should stay within a few of each other) |
//!
//! Labels: `site` is the site's id ([`crate::tls::resolver::site_id`]: its sorted names
//! joined by `,`); requests that match no site (unknown or missing Host) count under
//! `site=""`, and requests whose Host names a site count under it even when refused
//! (404 no route, 421 not covered by the connection's certificate). `names` lists the DNS
//! names (and IP addresses) the served leaf certifies, in the certificate's order.
//! A response is counted when its head is ready (the status is known), so a request the
//! client abandons before that is not counted.
//! `reason="no_certificate"`: the client asked for a name no site covers (or sent no SNI
//! while several sites exist); `error`: any other failure (protocol errors, the client
//! rejecting our certificate, a closed connection); `timeout`: `limits.handshake_timeout`.
//!
//! Cost on the request path: the proxy's routing table holds one `SiteCounters` per
//! site, built with the table; a response costs one relaxed atomic add on it. A
//! handshake failure is one atomic add. Locks are only taken when a table or certificate
//! changes, an ACME order finishes, and when rendering.
//!
//! Counters live as long as the process: a site removed by a reload keeps its request
//! counters (counters only go up); its certificate gauge disappears with its certificate.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use http::StatusCode;

/// How an ACME order ended, for `portico_acme_orders_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum OrderResult {
    /// The order reached `valid` and the certificate was downloaded.
    Valid,
    /// Any other end: `invalid`, a challenge failure, a CA or network error.
    Failed,
}

impl OrderResult {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OrderResult::Valid => "valid",
            OrderResult::Failed => "failed",
        }
    }
}

/// Why a client connection was ended by portico, for `portico_connection_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionError {
    /// HTTP/2: GOAWAY `ENHANCE_YOUR_CALM` for too many reset streams (rapid reset).
    H2TooManyResets,
    /// HTTP/2: any other protocol violation (GOAWAY with an error code): floods of
    /// CONTINUATION or SETTINGS, oversized header lists, bad frames.
    H2Protocol,
    /// HTTP/1.1: a request head hyper could not parse (answered 400, 414 or 431).
    H1Protocol,
    /// HTTP/1.1: no complete request head within `limits.header_read_timeout` (408).
    HeaderTimeout,
    /// A malformed PROXY protocol header from a trusted peer.
    ProxyProtocol,
}

impl ConnectionError {
    /// Every reason, in the order `/metrics` lists them.
    pub const ALL: [ConnectionError; 5] = [
        ConnectionError::H2TooManyResets,
        ConnectionError::H2Protocol,
        ConnectionError::H1Protocol,
        ConnectionError::HeaderTimeout,
        ConnectionError::ProxyProtocol,
    ];

    /// The `reason` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionError::H2TooManyResets => "h2_too_many_resets",
            ConnectionError::H2Protocol => "h2_protocol",
            ConnectionError::H1Protocol => "h1_protocol",
            ConnectionError::HeaderTimeout => "header_timeout",
            ConnectionError::ProxyProtocol => "proxy_protocol",
        }
    }
}

/// Why a TLS handshake failed, for `portico_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// No site covers the SNI name (or no SNI with several sites).
    NoCertificate,
    /// Any other error.
    Error,
    /// Not finished within `limits.handshake_timeout`.
    Timeout,
}

impl HandshakeFailure {
    /// Every reason, in the order `/metrics` lists them.
    pub const ALL: [HandshakeFailure; 3] = [
        HandshakeFailure::NoCertificate,
        HandshakeFailure::Error,
        HandshakeFailure::Timeout,
    ];

    /// The `reason` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::Error => "error",
            HandshakeFailure::Timeout => "timeout",
        }
    }

    /// Classifies the error `tokio_rustls` returned for a failed handshake. rustls
    /// reports a resolver that found no certificate only as this `General` message; if
    /// a future rustls words it otherwise, such failures count as `error`.
    pub(crate) fn of(error: &std::io::Error) -> HandshakeFailure {
        let no_cert = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .is_some_and(|e| {
                matches!(e, rustls::Error::General(m) if m == "no server certificate chain resolved")
            });
        if no_cert {
            HandshakeFailure::NoCertificate
        } else {
            HandshakeFailure::Error
        }
    }
}

const FIRST_CODE: u16 = 100;
const LAST_CODE: u16 = 599;
const CODES: usize = (LAST_CODE - FIRST_CODE + 1) as usize;

/// One site's responses by status code: an atomic per standard code (100..=599), so
/// counting a response is a single relaxed add. Codes above 599 (an upstream may send
/// up to 999) go to a small locked map; they are rare by nature.
pub(crate) struct SiteCounters {
    codes: Box<[AtomicU64; CODES]>,
    other: Mutex<BTreeMap<u16, u64>>,
}

impl std::fmt::Debug for SiteCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteCounters")
            .field("counts", &self.counts())
            .finish()
    }
}

impl Default for SiteCounters {
    fn default() -> Self {
        SiteCounters {
            codes: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            other: Mutex::new(BTreeMap::new()),
        }
    }
}

impl SiteCounters {
    /// Counts one response with `status`.
    #[inline]
    pub(crate) fn count(&self, status: StatusCode) {
        let code = status.as_u16();
        match self.codes.get(usize::from(code.wrapping_sub(FIRST_CODE))) {
            Some(counter) => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            None => *lock(&self.other).entry(code).or_default() += 1,
        }
    }

    /// Non-zero counts by code, ascending.
    pub(crate) fn counts(&self) -> Vec<(u16, u64)> {
        let mut out: Vec<(u16, u64)> = self
            .codes
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let n = c.load(Ordering::Relaxed);
                (n > 0).then_some((FIRST_CODE + i as u16, n))
            })
            .collect();
        out.extend(lock(&self.other).iter().map(|(&c, &n)| (c, n)));
        out
    }

    /// The count for one code.
    #[cfg(test)]
    pub(crate) fn get(&self, code: u16) -> u64 {
        match self.codes.get(usize::from(code.wrapping_sub(FIRST_CODE))) {
            Some(c) => c.load(Ordering::Relaxed),
            None => lock(&self.other).get(&code).copied().unwrap_or(0),
        }
    }
}

/// The not-after gauge of one site.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CertGauge {
    names: String,
    not_after: i64,
}

/// Every metric of one portico process. Shared as `Arc<Metrics>` by the server, the
/// resolver, the proxy, the listeners and (later) the ACME manager.
#[derive(Debug)]
pub struct Metrics {
    ready: AtomicBool,
    handshake_failures: [AtomicU64; 3],
    connection_errors: [AtomicU64; 5],
    /// Site id → counters; the proxy fetches these when it builds a routing table.
    sites: Mutex<BTreeMap<String, Arc<SiteCounters>>>,
    /// Requests that matched no site (`site=""`).
    unmatched: Arc<SiteCounters>,
    certificates: Mutex<BTreeMap<String, CertGauge>>,
    acme_orders: Mutex<BTreeMap<(String, OrderResult), u64>>,
    /// Config reloads: `[ok, error]`.
    config_reloads: [AtomicU64; 2],
    /// Access log lines dropped for a full queue (`crate::access_log`).
    access_log_dropped: AtomicU64,
    /// HTTPS connections per worker, once the workers run.
    worker_connections: OnceLock<Arc<WorkerConnections>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            ready: AtomicBool::new(false),
            handshake_failures: std::array::from_fn(|_| AtomicU64::new(0)),
            connection_errors: std::array::from_fn(|_| AtomicU64::new(0)),
            sites: Mutex::new(BTreeMap::new()),
            unmatched: Arc::new(SiteCounters::default()),
            certificates: Mutex::new(BTreeMap::new()),
            acme_orders: Mutex::new(BTreeMap::new()),
            config_reloads: std::array::from_fn(|_| AtomicU64::new(0)),
            access_log_dropped: AtomicU64::new(0),
            worker_connections: OnceLock::new(),
        }
    }
}

/// The HTTPS connections each worker thread serves now (`portico_worker_connections`);
/// `crate::workers` places new connections by it.
#[derive(Debug)]
pub(crate) struct WorkerConnections(Box<[AtomicUsize]>);

impl WorkerConnections {
    /// Zero connections on each of `workers` workers (at least one).
    pub(crate) fn new(workers: usize) -> Self {
        WorkerConnections((0..workers.max(1)).map(|_| AtomicUsize::new(0)).collect())
    }

    /// How many workers there are.
    pub(crate) fn workers(&self) -> usize {
        self.0.len()
    }

    /// Connections worker `worker` serves now (indices past the end wrap).
    pub(crate) fn get(&self, worker: usize) -> usize {
        self.0[worker % self.0.len()].load(Ordering::Relaxed)
    }

    /// Counts one connection on `worker` until the seat is dropped.
    pub(crate) fn seat(self: &Arc<Self>, worker: usize) -> Seat {
        let worker = worker % self.0.len();
        self.0[worker].fetch_add(1, Ordering::Relaxed);
        Seat {
            counts: self.clone(),
            worker,
        }
    }
}

/// One connection counted in [`WorkerConnections`]; dropped with the connection.
#[derive(Debug)]
pub(crate) struct Seat {
    counts: Arc<WorkerConnections>,
    worker: usize,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.counts.0[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every edit under these locks is a single insert or add: a poisoned lock still
    // holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The DNS names and IP addresses a DER certificate certifies, in its order, or None
/// if it cannot be parsed or has no subjectAltName.
pub fn certificate_names(der: &[u8]) -> Option<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let names = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(octets) => {
                if let Ok(v4) = <[u8; 4]>::try_from(*octets) {
                    Some(std::net::Ipv4Addr::from(v4).to_string())
                } else {
                    <[u8; 16]>::try_from(*octets)
                        .ok()
                        .map(|v6| std::net::Ipv6Addr::from(v6).to_string())
                }
            }
            _ => None,
        })
        .collect();
    Some(names)
}

impl Metrics {
    /// Every counter at zero, not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// The HTTPS connection counts of `workers` workers, which they keep (the first
    /// call decides how many there are).
    pub(crate) fn worker_connections(&self, workers: usize) -> Arc<WorkerConnections> {
        self.worker_connections
            .get_or_init(|| Arc::new(WorkerConnections::new(workers)))
            .clone()
    }

    /// Marks the process ready (`/readyz` 200) or not.
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The counters of the site `site` (its id), created on first use and kept for the
    /// life of the process, so a reload that keeps the site keeps counting on.
    pub(crate) fn site_counters(&self, site: &str) -> Arc<SiteCounters> {
        lock(&self.sites)
            .entry(site.to_string())
            .or_default()
            .clone()
    }

    /// The counters of requests that matched no site.
    pub(crate) fn unmatched_counters(&self) -> Arc<SiteCounters> {
        self.unmatched.clone()
    }

    pub(crate) fn handshake_failed(&self, reason: HandshakeFailure) {
        self.handshake_failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// `portico_tls_handshake_failures_total{reason}`.
    pub fn handshake_failures(&self, reason: HandshakeFailure) -> u64 {
        self.handshake_failures[reason as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn connection_error(&self, reason: ConnectionError) {
        self.connection_errors[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// `portico_connection_errors_total{reason}`.
    pub fn connection_errors(&self, reason: ConnectionError) -> u64 {
        self.connection_errors[reason as usize].load(Ordering::Relaxed)
    }

    /// Counts one finished ACME order of `site` (its id).
    pub(crate) fn acme_order(&self, site: &str, result: OrderResult) {
        *lock(&self.acme_orders)
            .entry((site.to_string(), result))
            .or_default() += 1;
    }

    /// Counts one config reload: applied (`ok`) or refused.
    pub(crate) fn config_reload(&self, ok: bool) {
        self.config_reloads[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn access_log_dropped(&self) {
        self.access_log_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Access log lines dropped so far because the writer's queue was full.
    pub fn access_log_drops(&self) -> u64 {
        self.access_log_dropped.load(Ordering::Relaxed)
    }

    /// Config reloads so far that were applied (`ok`) or refused.
    pub fn config_reloads(&self, ok: bool) -> u64 {
        self.config_reloads[usize::from(!ok)].load(Ordering::Relaxed)
    }

    /// Sets the not-after gauge of `site` (its id) for the certificate it now serves.
    /// `leaf` is the served leaf in DER, for the `names` label; when it cannot be read
    /// the site id stands in.
    pub(crate) fn set_certificate(&self, site: &str, leaf: Option<&[u8]>, not_after: SystemTime) {
        let names = leaf
            .and_then(certificate_names)
            .filter(|n| !n.is_empty())
            .map_or_else(|| site.to_string(), |n| n.join(","));
        lock(&self.certificates).insert(
            site.to_string(),
            CertGauge {
                names,
                not_after: unix_seconds(not_after),
            },
        );
    }

    /// Keeps the not-after gauges of the sites `keep` accepts, drops the others.
    pub(crate) fn retain_certificates(&self, mut keep: impl FnMut(&str) -> bool) {
        lock(&self.certificates).retain(|site, _| keep(site));
    }

    /// The not-after gauge of `site`, in unix seconds.
    pub fn certificate_not_after(&self, site: &str) -> Option<i64> {
        lock(&self.certificates).get(site).map(|g| g.not_after)
    }

    /// Everything, in the Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        family(
            &mut out,
            "portico_build_info",
            "gauge",
            "Always 1; the version of this portico build.",
        );
        sample(
            &mut out,
            "portico_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
        family(
            &mut out,
            "portico_ready",
            "gauge",
            "1 once listeners are bound, the config is loaded and stored certificates are served, else 0.",
        );
        sample(&mut out, "portico_ready", &[], i64::from(self.is_ready()));

        family(
            &mut out,
            "portico_certificate_not_after_seconds",
            "gauge",
            "Unix time at which the certificate a site serves expires.",
        );
        for (site, gauge) in lock(&self.certificates).iter() {
            sample(
                &mut out,
                "portico_certificate_not_after_seconds",
                &[("site", site), ("names", &gauge.names)],
                gauge.not_after,
            );
        }

        family(
            &mut out,
            "portico_acme_orders_total",
            "counter",
            "ACME orders finished, by site and result (valid or failed).",
        );
        for ((site, result), n) in lock(&self.acme_orders).iter() {
            sample_u(
                &mut out,
                "portico_acme_orders_total",
                &[("site", site), ("result", result.as_str())],
                *n,
            );
        }

        family(
            &mut out,
            "portico_requests_total",
            "counter",
            "HTTPS responses by site and status code; site=\"\" when the Host matches no site.",
        );
        let sites: Vec<(String, Arc<SiteCounters>)> = lock(&self.sites)
            .iter()
            .map(|(s, c)| (s.clone(), c.clone()))
            .collect();
        let all = std::iter::once((String::new(), self.unmatched.clone())).chain(sites);
        for (site, counters) in all {
            for (code, n) in counters.counts() {
                sample_u(
                    &mut out,
                    "portico_requests_total",
                    &[("site", &site), ("code", &code.to_string())],
                    n,
                );
            }
        }

        family(
            &mut out,
            "portico_tls_handshake_failures_total",
            "counter",
            "TLS handshakes on the https listener that did not complete, by reason.",
        );
        for reason in HandshakeFailure::ALL {
            sample_u(
                &mut out,
                "portico_tls_handshake_failures_total",
                &[("reason", reason.as_str())],
                self.handshake_failures(reason),
            );
        }

        family(
            &mut out,
            "portico_connection_errors_total",
            "counter",
            "Client connections portico ended for a protocol violation, a flood or a slow request head, by reason.",
        );
        for reason in ConnectionError::ALL {
            sample_u(
                &mut out,
                "portico_connection_errors_total",
                &[("reason", reason.as_str())],
                self.connection_errors(reason),
            );
        }

        family(
            &mut out,
            "portico_config_reloads_total",
            "counter",
            "Config reloads (SIGHUP or a file change) by result; error: the file was refused and the running config kept.",
        );
        for (result, ok) in [("ok", true), ("error", false)] {
            sample_u(
                &mut out,
                "portico_config_reloads_total",
                &[("result", result)],
                self.config_reloads(ok),
            );
        }

        family(
            &mut out,
            "portico_access_log_dropped_total",
            "counter",
            "Access log lines dropped because the log writer fell behind (its queue was full).",
        );
        sample_u(
            &mut out,
            "portico_access_log_dropped_total",
            &[],
            self.access_log_drops(),
        );

        family(
            &mut out,
            "portico_worker_connections",
            "gauge",
            "HTTPS connections each worker thread serves now.",
        );
        if let Some(load) = self.worker_connections.get() {
            for worker in 0..load.workers() {
                sample_u(
                    &mut out,
                    "portico_worker_connections",
                    &[("worker", &worker.to_string())],
                    load.get(worker) as u64,
                );
            }
        }
        out
    }
}

/// `# HELP` and `# TYPE` lines of one family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: i64) {
    write_labels(out, name, labels);
    let _ = writeln!(out, " {value}");
}

fn sample_u(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    write_labels(out, name, labels);
    let _ = writeln!(out, " {value}");
}

fn write_labels(out: &mut String, name: &str, labels: &[(&str, &str)]) {
    out.push_str(name);
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (key, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(key);
        out.push_str("=\"");
        escape_label_into(out, value);
        out.push('"');
    }
    out.push('}');
}

/// Label values escape `\`, `"` and line feed (format 0.0.4).
fn escape_label_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text escapes `\` and line feed only.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The sample lines of `family` in `text`.
    fn samples<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| {
                l.strip_prefix(family)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .collect()
    }

    #[test]
    fn every_family_has_help_and_type_once_before_its_samples() {
        let m = Metrics::new();
        let _seat = m.worker_connections(2).seat(1);
        m.site_counters("a.test").count(StatusCode::OK);
        m.acme_order("a.test", OrderResult::Valid);
        m.set_certificate("a.test", None, SystemTime::UNIX_EPOCH);
        let text = m.render();
        assert!(text.ends_with('\n'));
        let families = [
            ("portico_build_info", "gauge"),
            ("portico_ready", "gauge"),
            ("portico_certificate_not_after_seconds", "gauge"),
            ("portico_acme_orders_total", "counter"),
            ("portico_requests_total", "counter"),
            ("portico_tls_handshake_failures_total", "counter"),
            ("portico_config_reloads_total", "counter"),
            ("portico_access_log_dropped_total", "counter"),
            ("portico_worker_connections", "gauge"),
        ];
        for (name, kind) in families {
            let help = format!("# HELP {name} ");
            let ty = format!("# TYPE {name} {kind}");
            assert_eq!(text.matches(&help).count(), 1, "{name}: {text}");
            assert_eq!(text.lines().filter(|l| *l == ty).count(), 1, "{name}");
            let help_at = text.find(&help).unwrap();
            let type_at = text.find(&ty).unwrap();
            let first = samples(&text, name)[0];
            assert!(help_at < type_at && type_at < text.find(first).unwrap());
        }
        // One family per metric: all samples of a family are contiguous.
        let mut seen: Vec<&str> = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            if seen.last() != Some(&name) {
                assert!(!seen.contains(&name), "{name} split: {text}");
                seen.push(name);
            }
        }
        assert!(
            samples(&text, "portico_build_info")[0].starts_with(&format!(
                "portico_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ))
        );
        assert_eq!(samples(&text, "portico_ready"), ["portico_ready 0"]);
        m.set_ready(true);
        assert_eq!(samples(&m.render(), "portico_ready"), ["portico_ready 1"]);
    }

    #[test]
    fn config_reloads_by_result_are_always_listed() {
        let m = Metrics::new();
        m.config_reload(true);
        m.config_reload(false);
        m.config_reload(false);
        assert_eq!(
            samples(&m.render(), "portico_config_reloads_total"),
            [
                "portico_config_reloads_total{result=\"ok\"} 1",
                "portico_config_reloads_total{result=\"error\"} 2"
            ]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.site_counters("a\\b\"c\nd").count(StatusCode::OK);
        let text = m.render();
        assert!(
            text.contains("portico_requests_total{site=\"a\\\\b\\\"c\\nd\",code=\"200\"} 1\n"),
            "{text}"
        );
        let mut help = String::new();
        family(&mut help, "x", "gauge", "back\\slash\nline \"quoted\"");
        assert_eq!(
            help,
            "# HELP x back\\\\slash\\nline \"quoted\"\n# TYPE x gauge\n"
        );
    }

    #[test]
    fn requests_by_site_and_code() {
        let m = Metrics::new();
        let a = m.site_counters("a.test,www.a.test");
        assert!(Arc::ptr_eq(&a, &m.site_counters("a.test,www.a.test")));
        a.count(StatusCode::OK);
        a.count(StatusCode::OK);
        a.count(StatusCode::NOT_FOUND);
        a.count(StatusCode::from_u16(799).unwrap());
        m.unmatched_counters()
            .count(StatusCode::MISDIRECTED_REQUEST);
        // A site that never answered renders nothing.
        m.site_counters("idle.test");
        let text = m.render();
        assert_eq!(
            samples(&text, "portico_requests_total"),
            [
                "portico_requests_total{site=\"\",code=\"421\"} 1",
                "portico_requests_total{site=\"a.test,www.a.test\",code=\"200\"} 2",
                "portico_requests_total{site=\"a.test,www.a.test\",code=\"404\"} 1",
                "portico_requests_total{site=\"a.test,www.a.test\",code=\"799\"} 1",
            ]
        );
        assert_eq!(a.get(200), 2);
        assert_eq!(a.get(799), 1);
        assert_eq!(a.get(500), 0);
    }

    #[test]
    fn acme_orders_by_site_and_result() {
        let m = Metrics::new();
        m.acme_order("b.test", OrderResult::Failed);
        m.acme_order("a.test", OrderResult::Valid);
        m.acme_order("b.test", OrderResult::Failed);
        m.acme_order("b.test", OrderResult::Valid);
        assert_eq!(
            samples(&m.render(), "portico_acme_orders_total"),
            [
                "portico_acme_orders_total{site=\"a.test\",result=\"valid\"} 1",
                "portico_acme_orders_total{site=\"b.test\",result=\"valid\"} 1",
                "portico_acme_orders_total{site=\"b.test\",result=\"failed\"} 2",
            ]
        );
    }

    #[test]
    fn handshake_failures_by_reason_are_always_listed() {
        let m = Metrics::new();
        m.handshake_failed(HandshakeFailure::Timeout);
        m.handshake_failed(HandshakeFailure::Error);
        m.handshake_failed(HandshakeFailure::Error);
        assert_eq!(
            samples(&m.render(), "portico_tls_handshake_failures_total"),
            [
                "portico_tls_handshake_failures_total{reason=\"no_certificate\"} 0",
                "portico_tls_handshake_failures_total{reason=\"error\"} 2",
                "portico_tls_handshake_failures_total{reason=\"timeout\"} 1",
            ]
        );
        let no_cert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::General("no server certificate chain resolved".into()),
        );
        assert_eq!(
            HandshakeFailure::of(&no_cert),
            HandshakeFailure::NoCertificate
        );
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(HandshakeFailure::of(&eof), HandshakeFailure::Error);
    }

    #[test]
    fn certificate_gauge_in_unix_seconds_with_the_leaf_names() {
        let m = Metrics::new();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["b.test".to_string(), "a.test".to_string()])
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        m.set_certificate("a.test,b.test", Some(cert.der()), at);
        m.set_certificate("c.test", Some(b"not a certificate"), at);
        assert_eq!(
            m.certificate_not_after("a.test,b.test"),
            Some(1_900_000_000)
        );
        assert_eq!(
            samples(&m.render(), "portico_certificate_not_after_seconds"),
            [
                "portico_certificate_not_after_seconds{site=\"a.test,b.test\",names=\"b.test,a.test\"} 1900000000",
                "portico_certificate_not_after_seconds{site=\"c.test\",names=\"c.test\"} 1900000000",
            ]
        );
        m.retain_certificates(|s| s == "c.test");
        assert_eq!(m.certificate_not_after("a.test,b.test"), None);
        assert_eq!(
            samples(&m.render(), "portico_certificate_not_after_seconds").len(),
            1
        );
    }

    #[test]
    fn the_resolver_keeps_the_gauge_in_step_with_the_sites() {
        use crate::config::Config;
        use crate::tls::resolver::{CertResolver, site_id};
        let two = Config::parse(
            std::path::Path::new("t.toml"),
            "[[site]]\nhosts = [\"b.internal\", \"a.internal\"]\n[[site.route]]\npath = \"/\"\nrespond = { status = 200, body = \"a\" }\n\n[[site]]\nhosts = [\"c.internal\"]\n[[site.route]]\npath = \"/\"\nrespond = { status = 200, body = \"c\" }\n",
        )
        .unwrap();
        let metrics = Arc::new(Metrics::new());
        let resolver = CertResolver::with_metrics(metrics.clone());
        resolver.set_sites(&two.sites);
        let (ab, c) = (site_id(&two.sites[0]), site_id(&two.sites[1]));
        assert_eq!(ab, "a.internal,b.internal");
        for (id, names) in [
            (&ab, &["b.internal", "a.internal"][..]),
            (&c, &["c.internal"][..]),
        ] {
            let l = crate::tls::self_signed(names);
            assert!(resolver.install(id, l.key, l.not_after));
            assert_eq!(
                metrics.certificate_not_after(id),
                Some(unix_seconds(l.not_after))
            );
        }
        let text = metrics.render();
        assert!(
            text.contains("portico_certificate_not_after_seconds{site=\"a.internal,b.internal\",names=\"b.internal,a.internal\"} "),
            "{text}"
        );
        // A site that is not configured gets no certificate, hence no gauge.
        let l = crate::tls::self_signed(&["x.internal"]);
        assert!(!resolver.install(&"x.internal".to_string(), l.key, l.not_after));
        assert_eq!(metrics.certificate_not_after("x.internal"), None);
        // A reload without site c drops its gauge; the other stays.
        resolver.set_sites(&two.sites[..1]);
        assert_eq!(metrics.certificate_not_after(&c), None);
        assert!(metrics.certificate_not_after(&ab).is_some());
        let text = metrics.render();
        assert!(!text.contains("site=\"c.internal\""), "{text}");
        assert_eq!(
            samples(&text, "portico_certificate_not_after_seconds").len(),
            1
        );
    }
}
