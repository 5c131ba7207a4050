//! The request target as portico reads it, before any routing: the normal form of a
//! path ([`path`]) and the syntax of a host with its port ([`host`]). A leaf: the config
//! (route paths, hosts), the router and the listeners all read requests through it, so
//! they agree on what a path or a host is.

pub(crate) mod host;
pub(crate) mod path;
