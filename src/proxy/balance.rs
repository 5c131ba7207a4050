//! Choosing an upstream for a route: round robin over its endpoints, skipping those
//! cooling down after a connect failure (passive health, no probes).
//!
//! Decisions where DESIGN.md is silent:
//! - when every endpoint is cooling down, the next in turn is tried anyway: an outage
//!   shorter than the cool-down should not turn into 10 s of certain 502s;
//! - after a connect failure the request is retried once, on the next endpoint in turn
//!   that is not cooling down (or simply the next one), and only when nothing of the
//!   request was sent (see [`super::body`]); a route with one upstream is not retried.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::pool::Endpoint;
use crate::config::UpstreamProtocol;

/// The upstreams of one proxy route.
pub struct Balancer {
    endpoints: Vec<Arc<Endpoint>>,
    pub protocol: UpstreamProtocol,
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(endpoints: Vec<Arc<Endpoint>>, protocol: UpstreamProtocol) -> Balancer {
        Balancer {
            endpoints,
            protocol,
            next: AtomicUsize::new(0),
        }
    }

    pub fn endpoint(&self, index: usize) -> &Arc<Endpoint> {
        &self.endpoints[index % self.endpoints.len()]
    }

    /// The index of the endpoint for a new request.
    pub fn pick(&self) -> usize {
        let n = self.endpoints.len();
        if n <= 1 {
            return 0;
        }
        // Relaxed: the counter only spreads load, it orders nothing.
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| !self.endpoints[i].is_cooling_down())
            .unwrap_or(start)
    }

    /// After `failed` could not connect: the endpoint to retry on, if there is another.
    pub fn pick_after(&self, failed: usize) -> Option<usize> {
        let n = self.endpoints.len();
        if n <= 1 {
            return None;
        }
        let others = (1..n).map(|i| (failed + i) % n);
        others
            .clone()
            .find(|&i| !self.endpoints[i].is_cooling_down())
            .or_else(|| others.clone().next())
    }
}
