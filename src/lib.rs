//! portico: an edge proxy with automatic HTTPS.
//!
//! Two pipelines meet in the TLS handshake. Requests flow left to right; certificates
//! flow from the store and the CA into the resolver, which the handshake only reads.
//!
//! ```text
//! request path                                  certificate path
//! ------------                                  ----------------
//! listener::https (:443)                         certs::CertManager (every 2 s: files changed?
//!   │ TLS handshake ◄──────────────────────────    certificates due? → local CA / ACME)
//!   │ (SNI, ALPN h2 | http/1.1)   tls::resolver      │ install: build a new snapshot,
//!   ▼                             ArcSwap<Snapshot> ◄┘ swap it in (never a lock on reads)
//! HTTP/2 | HTTP/1.1 connection                       ▲
//!   ▼                                                │ tls::internal (local CA)
//! router (host → site, longest path prefix)          │ tls::files (PEM on disk)
//!   ▼                                                │
//! proxy (headers, balance, pool) ─► upstream         ▼
//!                                                 store: Store + Locker traits
//! listener::http (:80)                              FileStore | MemoryStore
//!   ├ /.well-known/acme-challenge/ ◄── acme::challenges (tokens in flight)
//!   └ anything else: 308 to https
//!
//! admin (listen.admin): /healthz, /readyz, /metrics ◄── metrics: one atomic add per
//!   request, handshake failure and ACME order; a gauge per installed certificate
//! ```
//!
//! Modules in that order: [`config`] (TOML → validated model), [`listener`] (sockets,
//! TLS handshake, HTTP connections, port 80, shutdown phases), [`tls`] (resolver, rustls
//! config, local CA, certificate files), [`router`] and [`proxy`] (the request path),
//! [`acme`] (challenge registry), [`certs`] (the certificate scheduler), [`store`]
//! (persistence and locks), [`metrics`] (counters and gauges of both pipelines, in the
//! Prometheus text format), [`admin`] (the `listen.admin` listener: `/healthz`,
//! `/readyz`, `/metrics`), [`server`] (assembly, start-up order, graceful shutdown).

pub mod acme;
pub mod admin;
pub mod certs;
pub mod config;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod router;
pub mod server;
pub mod store;
pub mod tls;
