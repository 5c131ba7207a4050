//! Configuration: the first step of both pipelines. One TOML file is read into the raw
//! serde structs of `raw` (unknown keys refused), then validated into [`Config`], the
//! model every other module reads. Every error names the file, the line and the key path
//! (`site[1].upstreams`, 0-based indexes), so `portico check` and a failed reload say
//! exactly what to fix.
//!
//! Decisions, as a Caddy user would expect (docs/configuration.md states them for users):
//! - relative paths (`storage.path`, `cert`, `key`, `ca_root`) are taken from the current
//!   directory, as Caddy and the shell do;
//! - a site's `upstreams` shorthand is a route at `/`; route paths are prefixes of the
//!   request's normalised path, written in normal form, and the longest one wins;
//! - `tls` defaults to `internal` when every host is local (localhost, `*.localhost`, an
//!   IP address, `*.internal`, `*.home.arpa`) and to `acme` otherwise; a local name under
//!   `acme` is an error because no public CA issues for it; an IP address is accepted
//!   under `acme` only when `tls = "acme"` is written (CAs issue IP certificates, RFC
//!   8738, but not every CA or profile does);
//! - `acme.profile` is checked for its syntax only: which profiles a CA offers is
//!   known when portico talks to it, and `portico check` talks to no one;
//! - the optional `[limits]` table overrides the defaults of [`Limits`].

mod cidr;
mod locate;
mod raw;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;

pub use cidr::Cidr;
use locate::Located;
use raw::RawConfig;

/// The Let's Encrypt production directory, the default `acme.directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Why a config file was refused. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the config file", path = .path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type.
    #[error("{path}:{line}: {key}: {message}", path = .path.display())]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// The 1-based line of the error.
        line: usize,
        /// The key path (`site[1].upstreams`), or the table the line is in.
        key: String,
        /// The parser's message.
        message: String,
        /// Boxed: the parser's error is large and every `Result` here would carry it.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// Well-formed, but a value is not allowed (a bad address, a limit out of range, a
    /// host in two sites...).
    #[error("{path}:{line}: {key}: {message}", path = .path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The 1-based line where the key (or its closest written parent) is.
        line: usize,
        /// The key path (`site[1].upstreams`).
        key: String,
        /// What is wrong and, when it can say, how to write it.
        message: String,
    },
}

impl ConfigError {
    /// The key path the error is about (`site[1].upstreams`), empty when it is the file.
    pub fn key(&self) -> &str {
        match self {
            ConfigError::Read { .. } => "",
            ConfigError::Syntax { key, .. } | ConfigError::Invalid { key, .. } => key,
        }
    }
}

/// What `portico proxy` and `portico respond` take on the command line
/// ([`Config::quick`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuickStart {
    /// The site's one host (`--from`).
    pub from: String,
    /// Forward, or answer.
    pub action: QuickAction,
    /// `--https`: the TLS listener, instead of the default.
    pub https: Option<String>,
    /// `--http`: the port-80 listener, instead of the default.
    pub http: Option<String>,
    /// `--data`: the file store's folder; default `./portico-data`, as in a config file.
    pub data: Option<String>,
    /// `--access-log`: `Some(true)` turns the access log on (default as in a file).
    pub access: Option<bool>,
}

/// What the one site of [`QuickStart`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuickAction {
    /// `portico proxy --to ADDR`: forward to `host:port` (also `:port`, `http://host:port`).
    Proxy {
        /// The upstream as written.
        to: String,
    },
    /// `portico respond --body TEXT`: answer every request with 200 and `body`.
    Respond {
        /// The body.
        body: String,
    },
}

impl QuickAction {
    /// The command, which errors name in place of a file.
    fn command(&self) -> &'static str {
        match self {
            QuickAction::Proxy { .. } => "portico proxy",
            QuickAction::Respond { .. } => "portico respond",
        }
    }
}

impl QuickStart {
    /// The flag that set the config key `key`.
    fn flag_of(key: &str) -> &str {
        if key.starts_with("site[0].hosts") {
            "--from"
        } else if key.starts_with("site[0].upstreams") {
            "--to"
        } else if key.starts_with("site[0].route") {
            "--body"
        } else if key == "listen.https" {
            "--https"
        } else if key == "listen.http" {
            "--http"
        } else if key.starts_with("storage") {
            "--data"
        } else {
            key
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from, for reloads and messages.
    pub path: PathBuf,
    /// `[listen]`.
    pub listen: Listen,
    /// `[storage]`.
    pub storage: Storage,
    /// `[acme]`.
    pub acme: Acme,
    /// `[limits]`, with defaults for what the file leaves out.
    pub limits: Limits,
    /// `[log]`: the access log and the format of every log line.
    pub log: Log,
    /// `[kubernetes]`: the cluster's Ingresses as further sites.
    pub kubernetes: Option<Kubernetes>,
    /// `[[site]]`, in the order written; in a cluster, the sites made from Ingresses
    /// follow them.
    pub sites: Vec<Site>,
    /// Built from the command line (`portico proxy`, `portico respond`) rather than
    /// read from `path`: there is no file to watch or reload.
    pub from_command_line: bool,
}

/// `[log]`: what portico logs, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Log {
    /// One line per request on stdout. Default: on in a Kubernetes pod
    /// (`KUBERNETES_SERVICE_HOST` set), off elsewhere.
    pub access: bool,
    /// The format of access log lines and of portico's own log (stderr).
    pub format: LogFormat,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `key=value` text, for people.
    Text,
    /// One JSON object per line, for log shippers (Loki, Elastic, Cloud Logging).
    Json,
}

impl LogFormat {
    /// `text` or `json`, as the config writes it.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Whether this process runs in a Kubernetes pod: the kubelet sets
/// `KUBERNETES_SERVICE_HOST` in every container. The access log's default.
pub fn in_pod() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty())
}

/// `[kubernetes]`: which of the cluster's objects configure portico.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubernetes {
    /// The IngressClass whose Ingresses are served; `None`: Ingresses are ignored.
    pub ingress_class: Option<String>,
    /// The GatewayClass whose Gateways are served (not acted on yet).
    pub gateway_class: Option<String>,
    /// The namespaces watched; empty: all of them.
    pub namespaces: Vec<String>,
    /// `namespace/name` of the Service whose address Ingress status reports.
    pub publish_service: Option<(String, String)>,
}

/// `[listen]`: where portico listens and whom it believes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Port 80's listener: HTTP-01 answers and the redirect to https.
    pub http: SocketAddr,
    /// The TLS listener.
    pub https: SocketAddr,
    /// `/healthz`, `/readyz` and `/metrics`, if set.
    pub admin: Option<SocketAddr>,
    /// Peers whose `X-Forwarded-For` chain (and PROXY header) is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Read a PROXY protocol v1/v2 header from trusted peers on http and https.
    pub proxy_protocol: bool,
}

impl Listen {
    /// Whether `ip` is one of `trusted_proxies`.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }
}

/// `[storage]`: where certificates, accounts, tokens and locks are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// A data folder (the local binary).
    File {
        /// The folder, created if missing.
        path: PathBuf,
    },
    /// Secrets and Leases of one namespace (a cluster ingress).
    Kubernetes {
        /// The namespace; `None`: the pod's own (docs/kubernetes.md).
        namespace: Option<String>,
    },
}

/// `acme.challenge`: how the CA validates a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeType {
    /// A token on port 80 (`/.well-known/acme-challenge/`).
    Http01,
    /// A special certificate on port 443, for `acme-tls/1` (RFC 8737).
    TlsAlpn01,
}

/// `[acme]`: the CA and the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// The account's contact.
    pub email: Option<String>,
    /// The directory URL (`https://`).
    pub directory: String,
    /// An extra root trusted for the directory's own HTTPS.
    pub ca_root: Option<PathBuf>,
    /// The challenge type of every order.
    pub challenge: ChallengeType,
    /// External Account Binding, for CAs that ask for it.
    pub eab: Option<ExternalAccountBinding>,
    /// The ACME profile (draft-aaron-acme-profiles) every order asks for, as written;
    /// whether the directory offers it is known only when portico talks to the CA.
    pub profile: Option<String>,
}

/// External Account Binding (RFC 8555 §7.3.4): a key id and HMAC key from the CA.
#[derive(Clone, PartialEq, Eq)]
pub struct ExternalAccountBinding {
    /// The key id.
    pub kid: String,
    /// Base64url HMAC key as the CA hands it out. Never printed.
    pub hmac_key: String,
}

impl fmt::Debug for ExternalAccountBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalAccountBinding")
            .field("kid", &self.kid)
            .field("hmac_key", &"<redacted>")
            .finish()
    }
}

/// Timeouts and sizes that protect the listeners. Defaults are nginx/Caddy-like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// TCP accept to finished TLS handshake.
    pub handshake_timeout: Duration,
    /// Time for a client to send a request's headers (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// Time to connect to an upstream; past it the next upstream, or 504.
    pub upstream_connect_timeout: Duration,
    /// Time for an upstream to send response headers; past it the client gets 504.
    pub upstream_timeout: Duration,
    /// How long in-flight requests may finish after SIGTERM.
    pub shutdown_timeout: Duration,
    /// The largest request head (431 beyond), and HTTP/2 header list.
    pub max_header_bytes: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_h2_streams: u32,
    /// Open client connections; more wait to be accepted.
    pub max_connections: usize,
}

impl Limits {
    /// The accepted range of each duration key (`limits.idle_timeout`). Bounded so no
    /// deadline computed from a config value can overflow, and no value makes the
    /// listener useless (a zero handshake timeout fails every handshake).
    pub(crate) fn duration_range(key: &str) -> (Duration, Duration) {
        let ms = Duration::from_millis;
        let h = |n: u64| Duration::from_secs(n * 3600);
        match key {
            "limits.handshake_timeout" | "limits.upstream_connect_timeout" => {
                (ms(100), Duration::from_secs(300))
            }
            "limits.header_read_timeout" => (ms(100), h(1)),
            "limits.shutdown_timeout" => (Duration::ZERO, h(1)),
            // idle_timeout, upstream_timeout
            _ => (ms(100), h(24)),
        }
    }

    /// The accepted range of each size key.
    pub(crate) fn size_range(key: &str) -> (u64, u64) {
        match key {
            "limits.max_header_bytes" => (4096, 1 << 20),
            "limits.max_h2_streams" => (1, 10_000),
            // max_connections
            _ => (1, 1_000_000),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_h2_streams: 256,
            max_connections: 10_000,
        }
    }
}

/// `[[site]]`: names that share one certificate and one set of routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Lowercased, in the order written; the first names the certificate.
    pub hosts: Vec<HostPattern>,
    /// Where the certificate comes from.
    pub tls: TlsSource,
    /// Longest path first.
    pub routes: Vec<Route>,
}

impl Site {
    /// The certificate name set: hosts lowercased, sorted, deduplicated.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.hosts.iter().map(|h| h.to_string()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Whether one of the hosts matches `host` (lowercased, without port).
    pub fn covers(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.matches(host))
    }
}

/// A site's `tls`: where its certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// An ACME CA (`acme.directory`).
    Acme,
    /// The local CA portico keeps in the store.
    Internal,
    /// PEM files, reloaded when they change.
    Files {
        /// The chain, leaf first.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// A `kubernetes.io/tls` Secret named by an Ingress's `spec.tls` (never written in
    /// the file).
    Secret(SecretPem),
    /// No TLS at all: plain HTTP on port 80, no redirect (an Ingress annotated
    /// `portico.dev/tls: "off"`; never written in the file).
    Off,
}

/// The PEM of a Secret, as the cluster watch last read it. Its `Debug` shows only
/// where it came from: the key never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretPem {
    /// `namespace/name` of the Secret.
    pub origin: String,
    /// `tls.crt`: the chain, leaf first.
    pub chain: std::sync::Arc<[u8]>,
    /// `tls.key`.
    pub key: std::sync::Arc<[u8]>,
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretPem")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl TlsSource {
    /// `acme`, `internal` or `files`, as the config writes it.
    pub fn name(&self) -> &'static str {
        match self {
            TlsSource::Acme => "acme",
            TlsSource::Internal => "internal",
            TlsSource::Files { .. } => "files",
            TlsSource::Secret(_) => "secret",
            TlsSource::Off => "off",
        }
    }
}

/// A host as written in `hosts`: an exact name (or IP), or `*.suffix` matching exactly
/// one more label. Gateway API listeners and routes add two the config file cannot
/// write: a `*.suffix` covering any number of labels, and the catch-all of a listener
/// and route that both leave the hostname out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// A name or an IP address (canonical form).
    Exact(String),
    /// The suffix after `*.`: one more label (TOML, Ingress, certificates).
    Wildcard(String),
    /// The suffix after `*.`: one or more labels (Gateway API hostnames).
    Suffix(String),
    /// Every host (a Gateway API listener and route without a hostname).
    Any,
}

impl HostPattern {
    /// `host` must already be lowercased and stripped of any `:port`.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            HostPattern::Suffix(suffix) => host
                .strip_suffix(suffix.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|labels| !labels.is_empty() && !labels.starts_with('.')),
            HostPattern::Any => true,
        }
    }

    /// Whether this stands for more than one name (no certificate can be obtained for
    /// it over HTTP-01).
    pub fn is_wildcard(&self) -> bool {
        !matches!(self, HostPattern::Exact(_))
    }

    /// The address, when the host is an IP address (written in canonical form).
    pub(crate) fn ip(&self) -> Option<IpAddr> {
        match self {
            HostPattern::Exact(name) => name.parse().ok(),
            _ => None,
        }
    }

    /// Hosts that default to the local CA: names no public CA issues for, and IP
    /// addresses (which some CAs do issue for, with an explicit `tls = "acme"`).
    pub fn is_local(&self) -> bool {
        let name = match self {
            HostPattern::Exact(n) | HostPattern::Wildcard(n) | HostPattern::Suffix(n) => n.as_str(),
            HostPattern::Any => return false,
        };
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || [".localhost", ".internal", ".home.arpa"]
                .iter()
                .any(|s| name.ends_with(s))
            || matches!(name, "internal" | "home.arpa")
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Wildcard(s) | HostPattern::Suffix(s) => write!(f, "*.{s}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

/// Sites (or what a lookup wants of them) by host pattern, for the lookups of a request
/// and of a handshake: an exact name first, then the longest wildcard suffix that covers
/// the host (a one-label [`HostPattern::Wildcard`] only one label up), then the
/// catch-all. The first value given for a pattern keeps it.
#[derive(Debug)]
pub(crate) struct HostIndex<V> {
    exact: HashMap<String, V>,
    /// Suffix → the value, and whether it covers more than one label.
    wildcard: HashMap<String, (V, bool)>,
    /// Whether any wildcard covers more than one label: without one, a lookup stops one
    /// label up.
    deep: bool,
    any: Option<V>,
}

impl<V> Default for HostIndex<V> {
    fn default() -> Self {
        HostIndex {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            deep: false,
            any: None,
        }
    }
}

impl<V> HostIndex<V> {
    pub(crate) fn with_capacity(exact: usize) -> Self {
        HostIndex {
            exact: HashMap::with_capacity(exact),
            ..HostIndex::default()
        }
    }

    /// Adds `pattern` unless it is there already; `make` is called only when it is added.
    pub(crate) fn insert_with(&mut self, pattern: &HostPattern, make: impl FnOnce() -> V) {
        match pattern {
            HostPattern::Exact(name) => {
                self.exact.entry(name.clone()).or_insert_with(make);
            }
            HostPattern::Wildcard(suffix) => {
                self.wildcard
                    .entry(suffix.clone())
                    .or_insert_with(|| (make(), false));
            }
            HostPattern::Suffix(suffix) => {
                self.deep = true;
                self.wildcard
                    .entry(suffix.clone())
                    .or_insert_with(|| (make(), true));
            }
            HostPattern::Any => {
                if self.any.is_none() {
                    self.any = Some(make());
                }
            }
        }
    }

    /// The exact entry for `name` only.
    pub(crate) fn exact(&self, name: &str) -> Option<&V> {
        self.exact.get(name)
    }

    /// `host` lowercased, without a port.
    pub(crate) fn get(&self, host: &str) -> Option<&V> {
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        if let Some((label, mut suffix)) = host.split_once('.')
            && !label.is_empty()
        {
            if let Some((v, _)) = self.wildcard.get(suffix) {
                return Some(v);
            }
            while self.deep
                && let Some((_, up)) = suffix.split_once('.')
            {
                suffix = up;
                if let Some((v, true)) = self.wildcard.get(suffix) {
                    return Some(v);
                }
            }
        }
        self.any.as_ref()
    }

    /// The catch-all's value.
    pub(crate) fn any(&self) -> Option<&V> {
        self.any.as_ref()
    }
}

/// `[[site.route]]` (or a site's `upstreams`, a route at `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The path matched against the normalised request path, in normal form, starting
    /// with `/`.
    pub path: String,
    /// How `path` is matched.
    pub matching: PathMatch,
    /// What the route does.
    pub action: RouteAction,
    /// Its own limits over `[limits]` (an Ingress's annotations; none for the file's).
    pub limits: RouteLimits,
    /// What a Gateway API HTTPRoute rule adds: matches beyond the path, filters, and
    /// the listener it is served on. Empty for the file's and Ingresses' routes.
    pub rule: RouteRule,
}

/// What an HTTPRoute rule adds to a path match. All matches must hold; the filters
/// apply in the order the fields are listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteRule {
    /// The listener the route is served on.
    pub listener: ListenerScope,
    /// The request method, when the rule names one.
    pub method: Option<http::Method>,
    /// Headers that must be present with exactly this value (names compare without
    /// case, values exactly).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Query parameters that must be present with exactly this value (names and
    /// values compare exactly, after percent-decoding).
    pub query: Vec<(String, String)>,
    /// `RequestHeaderModifier`: applied to the request going upstream.
    pub request_headers: HeaderEdits,
    /// `ResponseHeaderModifier`: applied to the response going back.
    pub response_headers: HeaderEdits,
    /// `URLRewrite`: the Host and path the upstream sees.
    pub rewrite: Option<Rewrite>,
}

/// Which listener serves a route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ListenerScope {
    /// Wherever its site is served: HTTPS, or port 80 for a site with [`TlsSource::Off`].
    #[default]
    Any,
    /// Only port 80 (a Gateway listener of protocol HTTP): served over plain HTTP there,
    /// whatever the site's certificate.
    Http,
    /// Only HTTPS (a Gateway listener of protocol HTTPS).
    Https,
}

/// Header edits (Gateway API `HTTPHeaderFilter`): `set` replaces, `add` appends,
/// `remove` drops, in that order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Replace every value of the header with this one.
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Append this value to the header (a new line for it).
    pub add: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Drop the header.
    pub remove: Vec<http::HeaderName>,
}

impl HeaderEdits {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// `URLRewrite`: what the upstream sees instead of what the client sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// The Host (`:authority`) sent upstream.
    pub hostname: Option<String>,
    /// The path sent upstream (the query is kept).
    pub path: Option<PathRewrite>,
}

/// A path rewrite, of `URLRewrite` or `RequestRedirect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRewrite {
    /// The whole path becomes this.
    Full(String),
    /// The part the route's path matched (a prefix by path element) becomes this:
    /// `/foo` → `/bar` turns `/foo/x` into `/bar/x`; `/foo` → `/` turns it into `/x`.
    Prefix(String),
}

/// `RequestRedirect`: the answer's `Location` is the request's URL with these parts
/// replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// `http` or `https`; `None` keeps the request's.
    pub scheme: Option<String>,
    /// `None` keeps the request's host.
    pub hostname: Option<String>,
    /// `None`: the well-known port of `scheme` (80, 443) when it is set, else the
    /// listener's (80 on plain HTTP, 443 on HTTPS: the Gateway's listener ports, as
    /// the Gateway API says), never the port in the request's Host. A default port
    /// for the scheme is never written.
    pub port: Option<u16>,
    /// `None` keeps the path.
    pub path: Option<PathRewrite>,
    /// 301 or 302.
    pub status: StatusCode,
}

/// One of a rule's weighted backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weighted {
    /// Its share is `weight` over the sum of the weights; 0 is never chosen.
    pub weight: u32,
    /// [`RouteAction::Proxy`], or [`RouteAction::Respond`] for a backend that cannot be
    /// reached (500 for a reference that is invalid, 503 with no ready endpoint).
    pub action: RouteAction,
}

/// A route's own limits, over the `[limits]` ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RouteLimits {
    /// The largest request body, in bytes; `None`: no limit.
    pub max_body_bytes: Option<u64>,
    /// The wait for the upstream's response head, instead of `limits.upstream_timeout`.
    pub upstream_timeout: Option<Duration>,
}

/// How a route's path is matched against the normalised request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// A byte prefix (TOML routes: `/api` matches `/api`, `/api/x` and `/apix`).
    Prefix,
    /// The whole path (Ingress `Exact`).
    Exact,
    /// A prefix by path element (Ingress `Prefix`: `/api` and `/api/` match `/api` and
    /// `/api/x`, not `/apix`).
    Elements,
    /// Everything, after every other route (an Ingress's `defaultBackend`).
    Fallback,
}

impl PathMatch {
    /// Whether a route at `pattern` takes `path` (normalised).
    pub fn matches(self, pattern: &str, path: &str) -> bool {
        match self {
            PathMatch::Prefix => path.starts_with(pattern),
            PathMatch::Exact => path == pattern,
            PathMatch::Elements => {
                let base = pattern.trim_end_matches('/');
                path.strip_prefix(base)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            PathMatch::Fallback => true,
        }
    }

    /// The order routes are tried in, first to last: the longest path first; at one
    /// length `Exact` before the prefixes (the Ingress rule); fallbacks last.
    pub fn precedence(self, pattern: &str) -> (bool, std::cmp::Reverse<usize>, bool) {
        (
            self == PathMatch::Fallback,
            std::cmp::Reverse(pattern.len()),
            self != PathMatch::Exact,
        )
    }
}

impl Route {
    /// Whether the route takes `path` (normalised).
    pub fn matches(&self, path: &str) -> bool {
        self.matching.matches(&self.path, path)
    }

    /// Where this route comes in the order routes are tried: [`PathMatch::precedence`]
    /// first; at one path, a route that names a method, then the one with more header
    /// matches, then more query matches (the Gateway API's order). A route without a
    /// rule (the file's, Ingresses') ties on those, so with a stable sort the order of
    /// such routes is the path order alone, and ties keep the order they were given in
    /// (an HTTPRoute translator's: oldest route, namespace/name, rule order).
    pub fn precedence(&self) -> Precedence {
        Precedence {
            path: self.matching.precedence(&self.path),
            no_method: self.rule.method.is_none(),
            headers: std::cmp::Reverse(self.rule.headers.len()),
            query: std::cmp::Reverse(self.rule.query.len()),
        }
    }
}

/// A route's place in the order routes are tried ([`Route::precedence`]): smaller
/// comes first. Compared field by field, in the order they are declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    path: (bool, std::cmp::Reverse<usize>, bool),
    no_method: bool,
    headers: std::cmp::Reverse<usize>,
    query: std::cmp::Reverse<usize>,
}

impl RouteRule {
    /// Whether the route asks more of a request than its path: a method, headers or
    /// query parameters.
    pub fn has_conditions(&self) -> bool {
        self.method.is_some() || !self.headers.is_empty() || !self.query.is_empty()
    }

    /// Whether the route changes the request or the response on the way through.
    pub fn has_filters(&self) -> bool {
        !self.request_headers.is_empty()
            || !self.response_headers.is_empty()
            || self.rewrite.is_some()
    }
}

/// What a route does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    /// Forward it, round robin over the upstreams.
    Proxy {
        /// At least one. Shared: the routes of many Ingresses to one Service hold one
        /// list, however many endpoints it has.
        upstreams: std::sync::Arc<[Upstream]>,
        /// How to speak to them.
        protocol: UpstreamProtocol,
    },
    /// Answer it with a fixed text/plain response.
    Respond {
        /// 200 to 599.
        status: StatusCode,
        /// The body.
        body: String,
    },
    /// Answer it with a redirect (`RequestRedirect`).
    Redirect(Redirect),
    /// Each request to one backend, chosen by weight (an HTTPRoute rule's
    /// `backendRefs`). At least one has a weight above 0.
    Split(std::sync::Arc<[Weighted]>),
}

/// How a route speaks to its upstreams (`upstream_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (the default).
    Http1,
    /// HTTP/2 without TLS (gRPC backends).
    H2c,
}

/// An upstream's `host:port`, resolved when connecting so Kubernetes Service names work.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    /// `host:port`.
    pub authority: http::uri::Authority,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.authority.as_str())
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as if read from `path` (used by tests and the embedded default).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let located = Located::new(text);
        let raw: RawConfig = toml::from_str(text).map_err(|source| {
            let offset = source.span().map_or(0, |s| s.start);
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line: located.line(offset),
                key: located.path_at(offset),
                message: source.message().trim().to_string(),
                source: Box::new(source),
            }
        })?;
        Validator {
            path,
            located: &located,
        }
        .config(raw)
    }

    /// The config of `portico proxy` and `portico respond`: one site for `from`, built as
    /// the raw tables a file would give and validated the same way. A local name (see
    /// [`HostPattern::is_local`]) gets the local CA and listens on loopback like
    /// `config/local.toml` (`127.0.0.1:8443`, `127.0.0.1:8080`); a public one gets ACME
    /// and `0.0.0.0:443` and `0.0.0.0:80`, which the CA has to reach. Errors name the
    /// flag (`--from`, `--to`, `--https`, `--http`, `--data`).
    pub fn quick(start: &QuickStart) -> Result<Config, ConfigError> {
        let local = parse_host(&start.from).is_ok_and(|h| h.is_local());
        let (http, https) = if local {
            ("127.0.0.1:8080", "127.0.0.1:8443")
        } else {
            ("0.0.0.0:80", "0.0.0.0:443")
        };
        let mut site = raw::RawSite {
            hosts: vec![start.from.clone()],
            ..Default::default()
        };
        match &start.action {
            QuickAction::Proxy { to } => {
                // `:3000` and `http://host:port` as Caddy's `--to` takes them.
                let to = to.strip_prefix("http://").unwrap_or(to);
                let to = match to.strip_prefix(':') {
                    Some(port) => format!("127.0.0.1:{port}"),
                    None => to.to_string(),
                };
                site.upstreams = Some(vec![to]);
            }
            QuickAction::Respond { body } => site.route.push(raw::RawRoute {
                path: Some("/".to_string()),
                respond: Some(raw::RawRespond {
                    status: Some(200),
                    body: Some(body.clone()),
                }),
                ..Default::default()
            }),
        }
        let raw = RawConfig {
            listen: raw::RawListen {
                http: Some(start.http.clone().unwrap_or_else(|| http.to_string())),
                https: Some(start.https.clone().unwrap_or_else(|| https.to_string())),
                ..Default::default()
            },
            storage: raw::RawStorage {
                path: start.data.clone(),
                ..Default::default()
            },
            log: raw::RawLog {
                access: start.access,
                format: None,
            },
            site: vec![site],
            ..Default::default()
        };
        let path = Path::new(start.action.command());
        let located = Located::new("");
        let mut config = Validator {
            path,
            located: &located,
        }
        .config(raw)
        .map_err(|e| match e {
            ConfigError::Invalid {
                path,
                line,
                key,
                message,
            } => ConfigError::Invalid {
                path,
                line,
                key: QuickStart::flag_of(&key).to_string(),
                message,
            },
            other => other,
        })?;
        config.from_command_line = true;
        Ok(config)
    }

    /// The site whose hosts match `host` (already normalized). Exact names win over
    /// wildcards, as in the certificate resolver.
    pub(crate) fn site_for(&self, host: &str) -> Option<&Site> {
        self.sites
            .iter()
            .find(|s| s.hosts.contains(&HostPattern::Exact(host.to_string())))
            .or_else(|| self.sites.iter().find(|s| s.covers(host)))
    }

    /// Where `tls = "internal"` keeps its root, for `portico check` and `curl --cacert`.
    pub fn internal_root_hint(&self) -> String {
        match &self.storage {
            Storage::File { path } => path.join("ca").join("root.pem").display().to_string(),
            Storage::Kubernetes { .. } => "Secret portico-local-ca".to_string(),
        }
    }

    /// The text `portico check` prints: each site and where its certificate comes from.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "{}: ok\nlisten: http {} https {}{}\n",
            self.path.display(),
            self.listen.http,
            self.listen.https,
            self.listen
                .admin
                .map(|a| format!(" admin {a}"))
                .unwrap_or_default()
        );
        out.push_str(&format!(
            "log: access {}, format {}\n",
            if self.log.access {
                "on (stdout)"
            } else {
                "off"
            },
            self.log.format.name()
        ));
        if let Some(k) = &self.kubernetes {
            let namespaces = if k.namespaces.is_empty() {
                "all namespaces".to_string()
            } else {
                format!("namespaces {}", k.namespaces.join(", "))
            };
            match &k.ingress_class {
                Some(class) => out.push_str(&format!(
                    "kubernetes: Ingresses of class {class} in {namespaces}, as further sites\n"
                )),
                None => out.push_str("kubernetes: no ingress_class; Ingresses are ignored\n"),
            }
            match &k.gateway_class {
                Some(class) => out.push_str(&format!(
                    "kubernetes: Gateways of GatewayClass {class} and their HTTPRoutes in {namespaces}, as further sites\n"
                )),
                None => out.push_str("kubernetes: no gateway_class; Gateway API objects are ignored\n"),
            }
        }
        for (i, site) in self.sites.iter().enumerate() {
            let hosts: Vec<String> = site.hosts.iter().map(|h| h.to_string()).collect();
            let source = match &site.tls {
                TlsSource::Acme => match &self.acme.profile {
                    Some(profile) => {
                        format!("acme from {} (profile {profile})", self.acme.directory)
                    }
                    None => format!("acme from {}", self.acme.directory),
                },
                TlsSource::Internal => {
                    format!("internal CA (root: {})", self.internal_root_hint())
                }
                TlsSource::Files { cert, key } => {
                    format!("files {} + {}", cert.display(), key.display())
                }
                TlsSource::Secret(pem) => format!("Secret {}", pem.origin),
                TlsSource::Off => "none: plain HTTP on port 80".to_string(),
            };
            out.push_str(&format!(
                "site[{i}] {}\n  certificate: {source}\n",
                hosts.join(", ")
            ));
            for route in &site.routes {
                let what = match &route.action {
                    RouteAction::Proxy {
                        upstreams,
                        protocol,
                    } => {
                        let list: Vec<String> = upstreams.iter().map(|u| u.to_string()).collect();
                        let proto = match protocol {
                            UpstreamProtocol::Http1 => "http1",
                            UpstreamProtocol::H2c => "h2c",
                        };
                        format!("{proto} {}", list.join(", "))
                    }
                    RouteAction::Respond { status, .. } => format!("respond {}", status.as_u16()),
                    RouteAction::Redirect(r) => format!("redirect {}", r.status.as_u16()),
                    RouteAction::Split(backends) => {
                        format!("split over {} backends", backends.len())
                    }
                };
                out.push_str(&format!("  route {} -> {what}\n", route.path));
            }
        }
        out
    }
}

struct Validator<'a> {
    path: &'a Path,
    located: &'a Located<'a>,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let key = key.into();
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: self.located.line_of(&key),
            key,
            message: message.into(),
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = Listen {
            http: self.addr("listen.http", raw.listen.http.as_deref(), "0.0.0.0:80")?,
            https: self.addr("listen.https", raw.listen.https.as_deref(), "0.0.0.0:443")?,
            admin: match raw.listen.admin.as_deref() {
                Some(a) => Some(self.addr("listen.admin", Some(a), "")?),
                None => None,
            },
            trusted_proxies: raw
                .listen
                .trusted_proxies
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    Cidr::parse(c)
                        .map_err(|why| self.err(format!("listen.trusted_proxies[{i}]"), why))
                })
                .collect::<Result<_, _>>()?,
            proxy_protocol: raw.listen.proxy_protocol.unwrap_or(false),
        };
        if listen.proxy_protocol && listen.trusted_proxies.is_empty() {
            return Err(self.err(
                "listen.proxy_protocol",
                "a PROXY header is read only from trusted_proxies; list the load balancer's addresses there",
            ));
        }
        let storage = self.storage(raw.storage)?;
        let acme = self.acme(raw.acme)?;
        let limits = self.limits(raw.limits)?;
        let log = self.log(raw.log, in_pod())?;
        let kubernetes = raw.kubernetes.map(|k| self.kubernetes(k)).transpose()?;
        if raw.site.is_empty()
            && kubernetes
                .as_ref()
                .is_none_or(|k| k.ingress_class.is_none() && k.gateway_class.is_none())
        {
            return Err(self.err(
                "site",
                "at least one [[site]] is needed (or [kubernetes] ingress_class or gateway_class, to serve the cluster's Ingresses or Gateways)",
            ));
        }
        let mut sites: Vec<Site> = Vec::with_capacity(raw.site.len());
        // Host -> the site that has it: a scan of every earlier site per host made a
        // config of 10,000 sites take a second to validate.
        let mut owner: std::collections::HashMap<HostPattern, usize> =
            std::collections::HashMap::with_capacity(raw.site.len());
        for (i, raw_site) in raw.site.into_iter().enumerate() {
            let site = self.site(i, raw_site)?;
            for (j, host) in site.hosts.iter().enumerate() {
                if let Some(&k) = owner.get(host).filter(|&&k| k != i) {
                    return Err(self.err(
                        format!("site[{i}].hosts[{j}]"),
                        format!(
                            "{host} is already a host of site[{k}]; a host belongs to one site"
                        ),
                    ));
                }
                owner.insert(host.clone(), i);
            }
            sites.push(site);
        }
        Ok(Config {
            path: self.path.to_path_buf(),
            listen,
            storage,
            acme,
            limits,
            log,
            kubernetes,
            sites,
            from_command_line: false,
        })
    }

    fn log(&self, raw: raw::RawLog, in_pod: bool) -> Result<Log, ConfigError> {
        let format = match raw.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(self.err(
                    "log.format",
                    format!("{other:?} is not a log format; use \"text\" or \"json\""),
                ));
            }
        };
        Ok(Log {
            access: raw.access.unwrap_or(in_pod),
            format,
        })
    }

    fn addr(
        &self,
        key: &str,
        value: Option<&str>,
        default: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let value = value.unwrap_or(default);
        let full = if value.starts_with(':') {
            format!("0.0.0.0{value}")
        } else {
            value.to_string()
        };
        full.parse().map_err(|_| {
            self.err(
                key,
                format!("{value:?} is not an address; write ip:port, such as \"0.0.0.0:443\" or \"[::]:443\""),
            )
        })
    }

    fn kubernetes(&self, raw: raw::RawKubernetes) -> Result<Kubernetes, ConfigError> {
        // Object names: RFC 1123 labels or subdomains, as the API server checks them.
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 253
                && n.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                })
        };
        let class = |key: &str, value: Option<String>| -> Result<Option<String>, ConfigError> {
            match value {
                Some(v) if !name_ok(&v) => Err(self.err(
                    key,
                    format!("{v:?} is not a Kubernetes object name (lowercase letters, digits, '-' and '.')"),
                )),
                v => Ok(v),
            }
        };
        let ingress_class = class("kubernetes.ingress_class", raw.ingress_class)?;
        let gateway_class = class("kubernetes.gateway_class", raw.gateway_class)?;
        let namespaces = raw.namespaces.unwrap_or_default();
        for (i, ns) in namespaces.iter().enumerate() {
            if !name_ok(ns) || ns.contains('.') || ns.len() > 63 {
                return Err(self.err(
                    format!("kubernetes.namespaces[{i}]"),
                    format!("{ns:?} is not a namespace name"),
                ));
            }
        }
        let publish_service = match raw.publish_service {
            None => None,
            Some(v) => match v.split_once('/') {
                Some((ns, name)) if name_ok(ns) && name_ok(name) && !ns.contains('.') => {
                    Some((ns.to_string(), name.to_string()))
                }
                _ => {
                    return Err(self.err(
                        "kubernetes.publish_service",
                        format!("{v:?}: write the Service as \"namespace/name\""),
                    ));
                }
            },
        };
        Ok(Kubernetes {
            ingress_class,
            gateway_class,
            namespaces,
            publish_service,
        })
    }

    fn storage(&self, raw: raw::RawStorage) -> Result<Storage, ConfigError> {
        match raw.backend.as_deref().unwrap_or("file") {
            "file" => {
                if raw.namespace.is_some() {
                    return Err(self.err(
                        "storage.namespace",
                        "namespace applies only to backend = \"kubernetes\"",
                    ));
                }
                let path = raw.path.unwrap_or_else(|| "./portico-data".to_string());
                if path.is_empty() {
                    return Err(self.err("storage.path", "must not be empty"));
                }
                Ok(Storage::File { path: path.into() })
            }
            "kubernetes" => {
                if raw.path.is_some() {
                    return Err(self.err("storage.path", "path applies only to backend = \"file\""));
                }
                Ok(Storage::Kubernetes {
                    namespace: raw.namespace,
                })
            }
            other => Err(self.err(
                "storage.backend",
                format!("{other:?} is not a backend; use \"file\" or \"kubernetes\""),
            )),
        }
    }

    fn acme(&self, raw: raw::RawAcme) -> Result<Acme, ConfigError> {
        if let Some(email) = &raw.email {
            let ok = email
                .split_once('@')
                .is_some_and(|(user, domain)| !user.is_empty() && domain.contains('.'));
            if !ok {
                return Err(self.err("acme.email", format!("{email:?} is not an email address")));
            }
        }
        let directory = raw.directory.unwrap_or_else(|| LETS_ENCRYPT.to_string());
        match directory.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
            _ => {
                return Err(self.err(
                    "acme.directory",
                    format!("{directory:?} is not an https:// URL"),
                ));
            }
        }
        let challenge = match raw.challenge.as_deref().unwrap_or("http-01") {
            "http-01" => ChallengeType::Http01,
            "tls-alpn-01" => ChallengeType::TlsAlpn01,
            other => {
                return Err(self.err(
                    "acme.challenge",
                    format!("{other:?} is not supported; use \"http-01\" or \"tls-alpn-01\""),
                ));
            }
        };
        let eab = match (raw.eab_kid, raw.eab_hmac_key) {
            (None, None) => None,
            (Some(kid), Some(hmac_key)) => Some(ExternalAccountBinding { kid, hmac_key }),
            (Some(_), None) => {
                return Err(self.err("acme.eab_kid", "eab_kid needs eab_hmac_key too"));
            }
            (None, Some(_)) => {
                return Err(self.err("acme.eab_hmac_key", "eab_hmac_key needs eab_kid too"));
            }
        };
        if let Some(profile) = &raw.profile
            && let Err(why) = check_profile_name(profile)
        {
            return Err(self.err("acme.profile", format!("{profile:?}: {why}")));
        }
        Ok(Acme {
            email: raw.email,
            directory,
            ca_root: raw.ca_root.map(PathBuf::from),
            challenge,
            eab,
            profile: raw.profile,
        })
    }

    fn limits(&self, raw: raw::RawLimits) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let dur = |key: &str, v: Option<String>, default: Duration| {
            let key = format!("limits.{key}");
            let Some(text) = v else {
                return Ok(default);
            };
            let value = parse_duration(&text).ok_or_else(|| {
                self.err(
                    &key,
                    format!(
                        "{text:?} is not a duration; write e.g. \"500ms\", \"10s\", \"5m\", \"1h\""
                    ),
                )
            })?;
            let (min, max) = Limits::duration_range(&key);
            if value < min || value > max {
                return Err(self.err(
                    &key,
                    format!(
                        "{text:?} is out of range; use {} to {}",
                        show_duration(min),
                        show_duration(max)
                    ),
                ));
            }
            Ok(value)
        };
        let size = |key: &str, v: Option<u64>, default: u64| {
            let key = format!("limits.{key}");
            let Some(n) = v else {
                return Ok(default);
            };
            let (min, max) = Limits::size_range(&key);
            if n < min || n > max {
                return Err(self.err(&key, format!("{n} is out of range; use {min} to {max}")));
            }
            Ok(n)
        };
        Ok(Limits {
            handshake_timeout: dur(
                "handshake_timeout",
                raw.handshake_timeout,
                d.handshake_timeout,
            )?,
            header_read_timeout: dur(
                "header_read_timeout",
                raw.header_read_timeout,
                d.header_read_timeout,
            )?,
            idle_timeout: dur("idle_timeout", raw.idle_timeout, d.idle_timeout)?,
            upstream_connect_timeout: dur(
                "upstream_connect_timeout",
                raw.upstream_connect_timeout,
                d.upstream_connect_timeout,
            )?,
            upstream_timeout: dur("upstream_timeout", raw.upstream_timeout, d.upstream_timeout)?,
            shutdown_timeout: dur("shutdown_timeout", raw.shutdown_timeout, d.shutdown_timeout)?,
            // The ranges keep every size well inside usize and u32.
            max_header_bytes: size(
                "max_header_bytes",
                raw.max_header_bytes,
                d.max_header_bytes as u64,
            )? as usize,
            max_h2_streams: size(
                "max_h2_streams",
                raw.max_h2_streams.map(u64::from),
                u64::from(d.max_h2_streams),
            )? as u32,
            max_connections: size(
                "max_connections",
                raw.max_connections.map(u64::from),
                d.max_connections as u64,
            )? as usize,
        })
    }

    fn site(&self, i: usize, raw: raw::RawSite) -> Result<Site, ConfigError> {
        let at = |key: &str| format!("site[{i}].{key}");
        if raw.hosts.is_empty() {
            return Err(self.err(at("hosts"), "a site needs at least one host"));
        }
        let mut hosts: Vec<HostPattern> = Vec::new();
        for (j, h) in raw.hosts.iter().enumerate() {
            let host = parse_host(h).map_err(|why| self.err(at(&format!("hosts[{j}]")), why))?;
            if hosts.contains(&host) {
                return Err(self.err(
                    at(&format!("hosts[{j}]")),
                    format!("{host} is listed twice"),
                ));
            }
            hosts.push(host);
        }
        let all_local = hosts.iter().all(HostPattern::is_local);
        let tls = match raw.tls.as_deref() {
            None if all_local => TlsSource::Internal,
            None | Some("acme") => TlsSource::Acme,
            Some("internal") => TlsSource::Internal,
            Some("files") => {
                let cert = raw
                    .cert
                    .clone()
                    .ok_or_else(|| self.err(at("cert"), "tls = \"files\" needs cert and key"))?;
                let key = raw
                    .key
                    .clone()
                    .ok_or_else(|| self.err(at("key"), "tls = \"files\" needs cert and key"))?;
                TlsSource::Files {
                    cert: cert.into(),
                    key: key.into(),
                }
            }
            Some(other) => {
                return Err(self.err(
                    at("tls"),
                    format!("{other:?} is not a certificate source; use \"acme\", \"internal\" or \"files\""),
                ));
            }
        };
        if !matches!(tls, TlsSource::Files { .. }) {
            if raw.cert.is_some() {
                return Err(self.err(at("cert"), "cert applies only to tls = \"files\""));
            }
            if raw.key.is_some() {
                return Err(self.err(at("key"), "key applies only to tls = \"files\""));
            }
        }
        if tls == TlsSource::Acme {
            for (j, host) in hosts.iter().enumerate() {
                if host.is_wildcard() {
                    return Err(self.err(
                        at(&format!("hosts[{j}]")),
                        format!(
                            "{host}: ACME CAs issue wildcard certificates only over DNS-01, which portico does not do yet; use tls = \"internal\" or \"files\", or list the names"
                        ),
                    ));
                }
                // RFC 8738 `ip` identifiers: public CAs issue for public addresses (Let's
                // Encrypt on its short-lived profile), private CAs for theirs; asked for
                // explicitly, since an address alone defaults to the local CA.
                if host.ip().is_some() {
                    if raw.tls.is_none() {
                        return Err(self.err(
                            at(&format!("hosts[{j}]")),
                            format!("{host}: an IP address gets an ACME certificate only with an explicit tls = \"acme\" (the CA must issue IP certificates: Let's Encrypt does on its \"shortlived\" profile), or use tls = \"internal\""),
                        ));
                    }
                    continue;
                }
                if host.is_local() {
                    return Err(self.err(
                        at(&format!("hosts[{j}]")),
                        format!(
                            "{host}: no public CA issues for a local name; use tls = \"internal\""
                        ),
                    ));
                }
            }
        }

        let mut routes = Vec::new();
        if let Some(list) = raw.upstreams {
            let protocol =
                self.protocol(&at("upstream_protocol"), raw.upstream_protocol.as_deref())?;
            routes.push(Route {
                path: "/".to_string(),
                matching: PathMatch::Prefix,
                action: RouteAction::Proxy {
                    upstreams: self.upstreams(&at("upstreams"), &list)?,
                    protocol,
                },
                limits: RouteLimits::default(),
                rule: RouteRule::default(),
            });
        } else if raw.upstream_protocol.is_some() {
            return Err(self.err(
                at("upstream_protocol"),
                "upstream_protocol goes with the site's upstreams or a route's",
            ));
        }
        for (r, raw_route) in raw.route.into_iter().enumerate() {
            let key = |k: &str| format!("site[{i}].route[{r}].{k}");
            let path = raw_route
                .path
                .ok_or_else(|| self.err(key("path"), "a route needs a path, such as \"/api/\""))?;
            // Requests are matched on their normalised path; a route written another
            // way would never match, so it is written in normal form too.
            let path = match crate::uri::path::normalize(&path) {
                Ok(normal) if normal == path => path,
                Ok(normal) => {
                    return Err(self.err(
                        key("path"),
                        format!("{path:?}: write it as {normal:?} (requests are matched on their normalised path)"),
                    ));
                }
                Err(why) => return Err(self.err(key("path"), format!("{path:?}: {why}"))),
            };
            if routes.iter().any(|x: &Route| x.path == path) {
                let what = if path == "/" {
                    "the site's upstreams already make a route at \"/\""
                } else {
                    "another route of this site has the same path"
                };
                return Err(self.err(key("path"), format!("{path:?}: {what}")));
            }
            let action = match (raw_route.upstreams, raw_route.respond) {
                (Some(list), None) => RouteAction::Proxy {
                    upstreams: self.upstreams(&key("upstreams"), &list)?,
                    protocol: self.protocol(
                        &key("upstream_protocol"),
                        raw_route.upstream_protocol.as_deref(),
                    )?,
                },
                (None, Some(respond)) => {
                    if raw_route.upstream_protocol.is_some() {
                        return Err(self.err(
                            key("upstream_protocol"),
                            "upstream_protocol does not apply to respond",
                        ));
                    }
                    let code = respond.status.unwrap_or(200);
                    let status = StatusCode::from_u16(code)
                        .ok()
                        .filter(|_| (200..=599).contains(&code))
                        .ok_or_else(|| {
                            self.err(
                                key("respond"),
                                format!("status {code} is not a final HTTP status (200-599)"),
                            )
                        })?;
                    RouteAction::Respond {
                        status,
                        body: respond.body.unwrap_or_default(),
                    }
                }
                (Some(_), Some(_)) => {
                    return Err(
                        self.err(key("respond"), "a route has upstreams or respond, not both")
                    );
                }
                (None, None) => {
                    return Err(self.err(key("upstreams"), "a route needs upstreams or respond"));
                }
            };
            routes.push(Route {
                path,
                matching: PathMatch::Prefix,
                action,
                limits: RouteLimits::default(),
                rule: RouteRule::default(),
            });
        }
        if routes.is_empty() {
            return Err(self.err(
                at("upstreams"),
                "a site needs upstreams or at least one [[site.route]]",
            ));
        }
        routes.sort_by_key(Route::precedence);
        Ok(Site { hosts, tls, routes })
    }

    fn protocol(&self, key: &str, value: Option<&str>) -> Result<UpstreamProtocol, ConfigError> {
        match value.unwrap_or("http1") {
            "http1" => Ok(UpstreamProtocol::Http1),
            "h2c" => Ok(UpstreamProtocol::H2c),
            other => Err(self.err(
                key,
                format!("{other:?} is not supported; use \"http1\" or \"h2c\""),
            )),
        }
    }

    fn upstreams(
        &self,
        key: &str,
        list: &[String],
    ) -> Result<std::sync::Arc<[Upstream]>, ConfigError> {
        if list.is_empty() {
            return Err(self.err(key, "needs at least one upstream"));
        }
        list.iter()
            .enumerate()
            .map(|(n, u)| parse_upstream(u).map_err(|why| self.err(format!("{key}[{n}]"), why)))
            .collect()
    }
}

fn parse_host(raw: &str) -> Result<HostPattern, String> {
    let name = raw.trim().to_ascii_lowercase();
    if name.is_empty() {
        return Err("empty host".into());
    }
    // Addresses in their canonical form (`::1`, not `0:0::1`): that is how a client's
    // Host and the address it connected to are compared.
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(HostPattern::Exact(ip.to_string()));
    }
    if name.contains(':') || name.contains('/') {
        return Err(format!(
            "{raw:?}: write a bare host name, without scheme, port or path"
        ));
    }
    let (wildcard, rest) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name.as_str()),
    };
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if rest.len() > 253 || !rest.split('.').all(valid_label) {
        return Err(format!(
            "{raw:?} is not a host name (letters, digits and '-' in dot-separated labels; a wildcard only as the whole first label, \"*.example.com\")"
        ));
    }
    if wildcard {
        Ok(HostPattern::Wildcard(rest.to_string()))
    } else {
        Ok(HostPattern::Exact(name))
    }
}

fn parse_upstream(raw: &str) -> Result<Upstream, String> {
    let rest = if let Some(rest) = raw.strip_prefix("http://") {
        rest.trim_end_matches('/')
    } else if raw.contains("://") {
        return Err(format!(
            "{raw:?}: only plain http:// upstreams are supported"
        ));
    } else {
        raw
    };
    let authority: http::uri::Authority = rest
        .parse()
        .map_err(|_| format!("{raw:?} is not host:port"))?;
    if authority.port_u16().is_none() || rest.contains('@') || rest.contains('/') {
        return Err(format!(
            "{raw:?}: write host:port, such as \"127.0.0.1:8080\""
        ));
    }
    Ok(Upstream { authority })
}

/// An ACME profile name as `acme.profile` may write it: 1 to 64 ASCII letters, digits,
/// `-`, `_` or `.` (Let's Encrypt's are `classic`, `tlsserver`, `shortlived`). It is
/// sent in the order as written.
fn check_profile_name(name: &str) -> Result<(), &'static str> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(
            "not a profile name: 1 to 64 letters, digits, '-', '_' or '.', as the CA's directory lists them in meta.profiles (such as \"shortlived\")",
        )
    }
}

/// `"500ms"`, `"10s"`, `"5m"`, `"1h"`; `None` for anything else. A number too large
/// for a `Duration` saturates (and then fails any range check); it never wraps.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return None;
    }
    // All digits, so the only way to fail is to be too large.
    let n: u64 = digits.parse().unwrap_or(u64::MAX);
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.saturating_mul(60))),
        "h" => Some(Duration::from_secs(n.saturating_mul(3600))),
        _ => None,
    }
}

/// A range bound as the config would write it: `"100ms"`, `"30s"`, `"5m"`, `"24h"`.
fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_string(),
        ms if ms % 3_600_000 == 0 => format!("\"{}h\"", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("\"{}m\"", ms / 60_000),
        ms if ms % 1000 == 0 => format!("\"{}s\"", ms / 1000),
        ms => format!("\"{ms}ms\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("t.toml"), text)
    }

    #[test]
    fn wildcard_matches_one_label() {
        let w = HostPattern::Wildcard("example.com".into());
        assert!(w.matches("a.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("a.b.example.com"));
        assert!(!w.matches("aexample.com"));
    }

    #[test]
    fn gateway_suffix_matches_any_number_of_labels_and_any_every_host() {
        let s = HostPattern::Suffix("example.com".into());
        assert!(s.matches("a.example.com"));
        assert!(s.matches("a.b.example.com"));
        assert!(!s.matches("example.com"));
        assert!(!s.matches("aexample.com"));
        assert!(!s.matches(".example.com"));
        assert!(HostPattern::Any.matches("anything.test"));
        assert!(HostPattern::Any.is_wildcard() && s.is_wildcard());
        assert_eq!(s.to_string(), "*.example.com");
    }

    #[test]
    fn host_index_prefers_exact_then_the_longest_wildcard_then_the_catch_all() {
        let mut index = HostIndex::default();
        index.insert_with(&HostPattern::Exact("a.b.example.com".into()), || "exact");
        index.insert_with(
            &HostPattern::Wildcard("b.example.com".into()),
            || "one label",
        );
        index.insert_with(&HostPattern::Suffix("example.com".into()), || "deep");
        // The first value for a pattern keeps it.
        index.insert_with(&HostPattern::Suffix("example.com".into()), || "second");
        assert_eq!(index.get("a.b.example.com"), Some(&"exact"));
        assert_eq!(index.get("x.b.example.com"), Some(&"one label"));
        assert_eq!(index.get("x.y.b.example.com"), Some(&"deep"));
        assert_eq!(index.get("x.example.com"), Some(&"deep"));
        assert_eq!(index.get("example.com"), None);
        assert_eq!(index.get("other.test"), None);
        index.insert_with(&HostPattern::Any, || "any");
        assert_eq!(index.get("other.test"), Some(&"any"));
        assert_eq!(index.get("example.com"), Some(&"any"));
        assert_eq!(index.get("x.example.com"), Some(&"deep"));
        assert_eq!(index.exact("x.example.com"), None);

        // Without a deep wildcard a one-label one stays one label.
        let mut index = HostIndex::default();
        index.insert_with(&HostPattern::Wildcard("example.com".into()), || 1);
        assert_eq!(index.get("a.example.com"), Some(&1));
        assert_eq!(index.get("a.b.example.com"), None);
        assert_eq!(index.get(".example.com"), None);
    }

    #[test]
    fn defaults_and_shorthand() {
        let c =
            parse("[[site]]\nhosts = [\"localhost\"]\nupstreams = [\"127.0.0.1:1\"]\n").unwrap();
        assert_eq!(c.listen.https, "0.0.0.0:443".parse().unwrap());
        assert_eq!(c.sites[0].tls, TlsSource::Internal);
        assert_eq!(c.sites[0].routes[0].path, "/");
        let c = parse("[[site]]\nhosts = [\"example.com\"]\nupstreams = [\"b:80\"]\n").unwrap();
        assert_eq!(c.sites[0].tls, TlsSource::Acme);
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = parse("[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"x\"]\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml:3: site[0].upstreams[0]: \"x\": write host:port, such as \"127.0.0.1:8080\""
        );
        let e = parse("[listen]\nhttps = \"0.0.0.0:1\"\nbogus = 1\n").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { line: 3, .. }), "{e}");
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = parse("[[site]]\nhosts = [\"a.test\"]\nupstreams = \"x\"\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("t.toml:3: site[0].upstreams: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn the_kubernetes_table_is_checked_and_stands_in_for_sites() {
        let c = parse(
            "[kubernetes]\ningress_class = \"portico\"\nnamespaces = [\"shop\", \"blog\"]\npublish_service = \"portico/portico\"\n",
        )
        .unwrap();
        let k = c.kubernetes.as_ref().unwrap();
        assert_eq!(k.ingress_class.as_deref(), Some("portico"));
        assert_eq!(k.namespaces, ["shop", "blog"]);
        assert_eq!(
            k.publish_service,
            Some(("portico".to_string(), "portico".to_string()))
        );
        assert!(c.sites.is_empty());
        assert!(
            c.describe()
                .contains("Ingresses of class portico in namespaces shop, blog")
        );
        let c = parse("[kubernetes]\ngateway_class = \"portico\"\n").unwrap();
        assert!(c.describe().contains("Gateways of GatewayClass portico"));
        for (text, line, key) in [
            ("[kubernetes]\nnamespaces = []\n", 1, "site"),
            (
                "[kubernetes]\ningress_class = \"Portico\"\n",
                2,
                "kubernetes.ingress_class",
            ),
            (
                "[kubernetes]\ningress_class = \"p\"\nnamespaces = [\"a.b\"]\n",
                3,
                "kubernetes.namespaces[0]",
            ),
            (
                "[kubernetes]\ningress_class = \"p\"\npublish_service = \"portico\"\n",
                3,
                "kubernetes.publish_service",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key(), key, "{text}: {e}");
            assert!(
                e.to_string().starts_with(&format!("t.toml:{line}: ")),
                "{text}: {e}"
            );
        }
        let e = parse("[kubernetes]\ningress = \"p\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn ingress_path_types_match_and_order_as_the_ingress_spec_says() {
        let route = |path: &str, matching| Route {
            path: path.into(),
            matching,
            action: RouteAction::Respond {
                status: StatusCode::OK,
                body: String::new(),
            },
            limits: RouteLimits::default(),
            rule: RouteRule::default(),
        };
        let elements = route("/foo/", PathMatch::Elements);
        for (path, want) in [
            ("/foo", true),
            ("/foo/", true),
            ("/foo/bar", true),
            ("/foobar", false),
            ("/", false),
        ] {
            assert_eq!(elements.matches(path), want, "{path}");
        }
        assert!(route("/", PathMatch::Elements).matches("/anything"));
        let exact = route("/foo", PathMatch::Exact);
        assert!(exact.matches("/foo") && !exact.matches("/foo/"));
        let mut routes = [
            route("/", PathMatch::Fallback),
            route("/foo", PathMatch::Elements),
            route("/", PathMatch::Elements),
            route("/foo", PathMatch::Exact),
        ];
        routes.sort_by_key(Route::precedence);
        let order: Vec<_> = routes
            .iter()
            .map(|r| (r.path.as_str(), r.matching))
            .collect();
        assert_eq!(
            order,
            [
                ("/foo", PathMatch::Exact),
                ("/foo", PathMatch::Elements),
                ("/", PathMatch::Elements),
                ("/", PathMatch::Fallback)
            ]
        );
    }

    #[test]
    fn same_host_twice_is_an_error() {
        let e = parse(
            "[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"h:1\"]\n[[site]]\nhosts = [\"b.test\", \"A.test\"]\nupstreams = [\"h:1\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.key(), "site[1].hosts[1]");
        assert!(e.to_string().starts_with("t.toml:5: "), "{e}");
    }

    #[test]
    fn acme_profile_is_checked_for_syntax_only() {
        let site = "[[site]]\nhosts = [\"example.com\"]\nupstreams = [\"h:1\"]\n";
        let c = parse(&format!("[acme]\nprofile = \"shortlived\"\n{site}")).unwrap();
        assert_eq!(c.acme.profile.as_deref(), Some("shortlived"));
        assert!(
            c.describe().contains("(profile shortlived)"),
            "{}",
            c.describe()
        );
        // Any name the CA might list: portico check cannot know the CA's.
        let c = parse(&format!("[acme]\nprofile = \"tls-server_2.v1\"\n{site}")).unwrap();
        assert_eq!(c.acme.profile.as_deref(), Some("tls-server_2.v1"));
        assert_eq!(parse(site).unwrap().acme.profile, None);
        for bad in ["", "short lived", "a/b", "\u{e9}t\u{e9}", &"x".repeat(65)] {
            let e = parse(&format!("[acme]\nprofile = {bad:?}\n{site}")).unwrap_err();
            assert_eq!(e.key(), "acme.profile", "{bad:?}: {e}");
            assert!(e.to_string().starts_with("t.toml:2: acme.profile: "), "{e}");
        }
    }

    #[test]
    fn an_ip_takes_acme_only_when_asked_and_local_names_never() {
        let site = |hosts: &str, tls: &str| {
            parse(&format!(
                "[[site]]\nhosts = [{hosts}]\n{tls}upstreams = [\"h:1\"]\n"
            ))
        };
        let acme = "tls = \"acme\"\n";
        // An address alone defaults to the local CA; written explicitly, ACME.
        assert_eq!(
            site("\"192.0.2.7\"", "").unwrap().sites[0].tls,
            TlsSource::Internal
        );
        let c = site("\"192.0.2.7\", \"2001:DB8::1\"", acme).unwrap();
        assert_eq!(c.sites[0].tls, TlsSource::Acme);
        assert_eq!(c.sites[0].names(), ["192.0.2.7", "2001:db8::1"]);
        let c = site("\"example.com\", \"192.0.2.7\"", acme).unwrap();
        assert_eq!(c.sites[0].tls, TlsSource::Acme);
        // With a public name the default is acme, but an address must be asked for.
        let e = site("\"example.com\", \"192.0.2.7\"", "").unwrap_err();
        assert_eq!(e.key(), "site[0].hosts[1]");
        assert!(e.to_string().contains("explicit tls = \"acme\""), "{e}");
        for local in ["localhost", "a.localhost", "nas.home.arpa", "db.internal"] {
            let e = site(&format!("\"{local}\""), acme).unwrap_err();
            assert!(
                e.to_string().contains("no public CA issues"),
                "{local}: {e}"
            );
        }
    }

    #[test]
    fn log_table_defaults_and_errors() {
        let site = "[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"h:1\"]\n";
        let c = parse(&format!("[log]\naccess = true\nformat = \"json\"\n{site}")).unwrap();
        assert_eq!(
            c.log,
            Log {
                access: true,
                format: LogFormat::Json
            }
        );
        assert!(
            c.describe()
                .contains("log: access on (stdout), format json\n"),
            "{}",
            c.describe()
        );
        let c = parse(&format!("[log]\naccess = false\n{site}")).unwrap();
        assert_eq!(c.log.format, LogFormat::Text);
        assert!(c.describe().contains("log: access off, format text\n"));
        let e = parse(&format!("[log]\nformat = \"xml\"\n{site}")).unwrap_err();
        assert_eq!(e.key(), "log.format");
        assert!(e.to_string().starts_with("t.toml:2: log.format: "), "{e}");
        let e = parse(&format!("[log]\nlevel = \"debug\"\n{site}")).unwrap_err();
        assert!(e.to_string().contains("level"), "{e}");
        // Unwritten, `access` follows where portico runs: on in a pod, off elsewhere.
        let located = Located::new("");
        let v = Validator {
            path: Path::new("t.toml"),
            located: &located,
        };
        assert!(v.log(raw::RawLog::default(), true).unwrap().access);
        assert!(!v.log(raw::RawLog::default(), false).unwrap().access);
        let off = raw::RawLog {
            access: Some(false),
            format: None,
        };
        assert!(!v.log(off, true).unwrap().access);
    }

    #[test]
    fn quick_configs_are_validated_like_files() {
        let start = |from: &str, action: QuickAction| QuickStart {
            from: from.to_string(),
            action,
            https: None,
            http: None,
            data: None,
            access: None,
        };
        let proxy = |to: &str| QuickAction::Proxy { to: to.to_string() };
        let c = Config::quick(&start("app.localhost", proxy(":3000"))).unwrap();
        assert!(c.from_command_line);
        assert_eq!(c.listen.https, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(c.listen.http, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.sites[0].tls, TlsSource::Internal);
        assert_eq!(
            c.storage,
            Storage::File {
                path: "./portico-data".into()
            }
        );
        match &c.sites[0].routes[0].action {
            RouteAction::Proxy { upstreams, .. } => {
                assert_eq!(upstreams[0].to_string(), "127.0.0.1:3000")
            }
            other => panic!("{other:?}"),
        }
        let c = Config::quick(&start("example.com", proxy("http://10.0.0.1:80"))).unwrap();
        assert_eq!(c.sites[0].tls, TlsSource::Acme);
        assert_eq!(c.listen.https, "0.0.0.0:443".parse().unwrap());
        let body = QuickAction::Respond {
            body: "hi".to_string(),
        };
        let c = Config::quick(&start("localhost", body)).unwrap();
        assert_eq!(
            c.sites[0].routes[0].action,
            RouteAction::Respond {
                status: StatusCode::OK,
                body: "hi".to_string()
            }
        );
        // Errors name the flag and the command.
        let e = Config::quick(&start("app.localhost", proxy("nope"))).unwrap_err();
        assert_eq!(e.key(), "--to");
        assert!(e.to_string().starts_with("portico proxy:"), "{e}");
        let e = Config::quick(&start("bad host/", proxy(":1"))).unwrap_err();
        assert_eq!(e.key(), "--from");
        let mut s = start("localhost", proxy(":1"));
        s.https = Some("nowhere".to_string());
        assert_eq!(Config::quick(&s).unwrap_err().key(), "--https");
    }

    #[test]
    fn acme_wildcard_is_refused_with_reason() {
        let e =
            parse("[[site]]\nhosts = [\"*.example.com\"]\ntls = \"acme\"\nupstreams = [\"h:1\"]\n")
                .unwrap_err();
        assert!(e.to_string().contains("DNS-01"), "{e}");
    }
}
