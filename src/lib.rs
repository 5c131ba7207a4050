//! portico: an edge proxy with automatic HTTPS.
//!
//! Two pipelines meet in the TLS handshake. Requests flow left to right; certificates
//! flow from the store and the CA into the resolver, which the handshake only reads.
//!
//! ```text
//! request path                                  certificate path
//! ------------                                  ----------------
//! listener::workers: one runtime per core        certs::CertManager (every 2 s: files changed?
//! listener::https (:443), accepted per worker      certificates due? → local CA / ACME)
//!   │ TLS handshake ◄──────────────────────────      │ install: build a new snapshot,
//!   │ (SNI, ALPN h2 | http/1.1 | acme-tls/1)         │ swap it in (never a lock on reads)
//!   │                 tls::resolver: ArcSwap<Snapshot> ◄┘
//!   ▼                 + TLS-ALPN-01 certificates   ▲
//! HTTP/2 | HTTP/1.1 connection                     │ tls::internal (local CA)
//!   ▼                                              │ tls::files (PEM on disk)
//! router (host → site, longest path prefix)        │ acme::manager → acme::order
//!   ▼                                              │   (account, order, challenges, CSR)
//! proxy (headers, balance, per-worker pools)       ▼  ▲ watch: other replicas' certificates
//!   └─► upstream                                store: Store + Locker traits
//!                                        FileStore | KubeStore (Secrets, Leases) | MemoryStore
//! listener::http (:80)                              (certificates, account, tokens, locks)
//!   ├ /.well-known/acme-challenge/ ◄── acme::challenges: tokens in flight, memory
//!   │                                     first, then the store (another replica's)
//!   └ anything else: 308 to https
//!
//! admin (listen.admin): /healthz, /readyz, /metrics ◄── metrics: one atomic add per
//!   request, handshake failure and ACME order; a gauge per installed certificate
//!
//! reload (SIGHUP, or the config file changed): validate the whole file, then swap
//!   config ─► router + proxy table (pools of kept upstreams stay) ─► resolver sites,
//!   and wake certs::CertManager for new sites; nothing is closed
//! ```
//!
//! Modules in that order: [`config`] (TOML → validated model), `listener` (worker
//! threads, sockets, TLS handshake, HTTP connections, port 80, shutdown phases), [`tls`]
//! (resolver, rustls config, local CA, certificate files), `router` and [`proxy`] (the
//! request path), [`certs`] (the certificate scheduler), [`acme`] (account, orders,
//! challenges, renewal), [`store`] (persistence and locks), [`metrics`] (counters and
//! gauges of both pipelines, in the Prometheus text format), `admin` (the
//! `listen.admin` listener: `/healthz`, `/readyz`, `/metrics`), [`reload`] (SIGHUP and
//! config file changes: validate, then swap routes, sites and certificates in place),
//! [`server`] (assembly, start-up order, graceful shutdown).

pub mod acme;
mod admin;
pub mod body;
pub mod certs;
pub mod config;
mod listener;
pub mod metrics;
pub mod objects;
pub mod proxy;
pub mod reload;
pub mod report;
mod router;
pub mod server;
mod shutdown;
pub mod store;
pub mod tls;
mod uri;
mod workers;

/// Entry points for `cargo fuzz` (built with `--cfg fuzzing`), not part of the API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
