//! portico: an edge proxy with automatic HTTPS.
//!
//! Two pipelines meet in the TLS handshake. Requests flow left to right; certificates
//! flow from the store and the CA into the resolver, which the handshake only reads.
//!
//! ```text
//! request path                                  certificate path
//! ------------                                  ----------------
//! workers: one runtime per core                  certs::CertManager (every 2 s: files changed?
//! listener (:443), accepted per worker             certificates due? → local CA / ACME)
//!   │ PROXY header (trusted peers), then           │ install: build a new snapshot,
//!   │ TLS handshake ◄──────────────────────────      │ swap it in (never a lock on reads)
//!   │ (SNI or local address, ALPN)  tls: ArcSwap<Snapshot> ◄┘
//!   ▼                 + TLS-ALPN-01 certificates   ▲
//! HTTP/2 | HTTP/1.1 connection (408, floods)       │ tls: local CA, PEM files
//!   ▼                                              │ acme: account, order, challenges,
//! router (host → site, normalised path → route)    │   CSR, ARI, back-off
//!   ▼                                              ▼  ▲ watch: other replicas' certificates
//! proxy (framing, forwarding headers, balance,   objects: names and annotations
//!   per-worker pools) ─► upstream                store: Store + Locker traits
//!                                        FileStore | KubeStore (Secrets, Leases) | MemoryStore
//! listener (:80)                                    (certificates, account, tokens, locks)
//!   ├ /.well-known/acme-challenge/ ◄── acme::Challenges: tokens in flight, memory
//!   │                                     first, then the store (another replica's)
//!   ├ hosts served without TLS or with routes for port 80 ─► proxy, as above
//!   └ anything else: 308 to https (served hosts only)
//!
//! admin (listen.admin): /healthz, /readyz, /metrics ◄── metrics: one atomic add per
//!   request, handshake failure, connection error and ACME order; a gauge per certificate
//!
//! reload (SIGHUP, or the config file changed): validate the whole file, then swap
//!   config ─► router + proxy table (pools of kept upstreams stay) ─► resolver sites,
//!   and wake certs::CertManager for new sites; nothing is closed
//!
//! cluster ([kubernetes]): IngressClasses, Ingresses, GatewayClasses, Gateways,
//!   HTTPRoutes, ReferenceGrants, Services, EndpointSlices, TLS Secrets (list, then
//!   watch) ─► sites ─► the reload path above, merged with the file's; one replica
//!   (lock `status`) writes Ingress and Gateway API status, Events, filled Secrets
//! ```
//!
//! # Modules, as they import each other
//!
//! Each module imports only modules on a line below its own; there is no cycle. This
//! is the graph the imports draw (a module's `//!` says which part of the flow it owns):
//!
//! ```text
//! server                       assembly, start-up order, graceful shutdown
//! trust                        the local CA's root in the system trust store (CLI)
//! cluster                      Ingresses and Gateway API objects as sites; their
//!                                status, Events, Secrets
//! admin, reload                the admin listener; SIGHUP and config file changes
//! certs, listener              the certificate scheduler; sockets, TLS, HTTP, port 80
//! acme                         accounts, orders, challenges, renewal
//! objects, proxy               store names and annotations; forwarding
//! router, tls, access_log      host and path → route; resolver, local CA, files;
//!                                one line per request, written off the request path
//! config, store, workers       TOML → model; persistence and locks; runtime per core
//! body, metrics, report,       leaves: bodies and small answers, counters, error
//!   request_id, shutdown, uri    chains, X-Request-Id, shutdown phases, path and host
//!                                syntax
//! ```
//!
//! Public, for embedding portico and for its tests: [`config`], [`server`], [`store`],
//! [`certs`], [`acme`], [`tls`], [`metrics`], [`objects`], [`proxy`], [`reload`],
//! [`body`], [`report`], [`trust`]. The rest is the crate's own. The rules these modules
//! implement, for users, are in the repository's `docs/`.

mod access_log;
pub mod acme;
mod admin;
pub mod body;
pub mod certs;
mod cluster;
pub mod config;
mod listener;
pub mod metrics;
pub mod objects;
pub mod proxy;
pub mod reload;
pub mod report;
mod request_id;
mod router;
pub mod server;
mod shutdown;
pub mod store;
pub mod tls;
pub mod trust;
mod uri;
mod workers;

/// Entry points for `cargo fuzz` (built with `--cfg fuzzing`), not part of the API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
