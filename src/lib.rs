//! portico: an edge proxy with automatic HTTPS.
//!
//! Two pipelines meet in the TLS handshake. Requests flow left to right; certificates
//! flow from the store and the CA into the resolver, which the handshake only reads.
//!
//! ```text
//! request path                                 certificate path
//! ------------                                 ----------------
//! listener (:443) ─ TLS handshake ◄─────────── tls::resolver (ArcSwap snapshot: name → cert)
//!    │              (SNI, ALPN h2 / http/1.1)            ▲ swap, never a lock on the handshake
//!    ▼                                                   │
//! HTTP/1.1 | HTTP/2 ─ router (host, prefix) ─ proxy ─ upstream pool ─ upstream
//!                                                        │
//! listener (:80) ─ /.well-known/acme-challenge/ ─► acme::challenges
//!              └─ anything else: 308 to https       tls::internal (local CA) / tls::files
//!                                                        │
//!                                                        ▼
//!                                         store: Store + Locker (file | memory)
//! ```
//!
//! Modules in that order: [`config`] (TOML → validated model), [`listener`] (sockets,
//! TLS, HTTP connections, port 80), [`tls`] (resolver, acceptor config, local CA,
//! certificate files), [`router`] and [`proxy`] (the request path), [`acme`] (challenge
//! registry), [`store`] (persistence and locks), [`server`] (assembly and shutdown).

pub mod acme;
pub mod certs;
pub mod config;
pub mod listener;
pub mod proxy;
pub mod router;
pub mod server;
pub mod store;
pub mod tls;
