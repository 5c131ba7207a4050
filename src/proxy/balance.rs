//! Choosing an upstream for a route: round robin over its endpoints, skipping those
//! cooling down after a connect failure (passive health, no probes).
//!
//! Decisions:
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
pub(super) struct Balancer {
    endpoints: Vec<Arc<Endpoint>>,
    pub protocol: UpstreamProtocol,
    next: AtomicUsize,
}

impl Balancer {
    pub(super) fn new(endpoints: Vec<Arc<Endpoint>>, protocol: UpstreamProtocol) -> Balancer {
        Balancer {
            endpoints,
            protocol,
            next: AtomicUsize::new(0),
        }
    }

    /// The endpoint at an index that [`Balancer::pick`] or [`Balancer::pick_after`]
    /// returned (always in range).
    pub(super) fn endpoint(&self, index: usize) -> &Arc<Endpoint> {
        &self.endpoints[index]
    }

    /// The index of the endpoint for a new request; `None` only for a route without
    /// upstreams, which a validated config never has.
    pub(super) fn pick(&self) -> Option<usize> {
        let n = self.endpoints.len();
        if n <= 1 {
            return (n == 1).then_some(0);
        }
        // Relaxed: the counter only spreads load, it orders nothing.
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let healthy = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| !self.endpoints[i].is_cooling_down());
        Some(healthy.unwrap_or(start))
    }

    /// After `failed` could not connect: the endpoint to retry on, if there is another.
    pub(super) fn pick_after(&self, failed: usize) -> Option<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Upstream;
    use crate::proxy::pool::Pools;
    use std::time::Duration;

    fn balancer(n: usize) -> Balancer {
        let pools = Pools::default();
        let endpoints = (0..n)
            .map(|i| {
                let upstream = Upstream {
                    authority: format!("u{i}:1").parse().unwrap(),
                };
                pools.endpoint(&upstream, UpstreamProtocol::Http1, Duration::from_secs(1))
            })
            .collect();
        Balancer::new(endpoints, UpstreamProtocol::Http1)
    }

    #[test]
    fn round_robin_skips_cooling_down_and_falls_back_to_next_in_turn() {
        let b = balancer(3);
        let picks: Vec<_> = (0..6).map(|_| b.pick().unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        b.endpoint(1).mark_failed();
        let picks: Vec<_> = (0..3).map(|_| b.pick().unwrap()).collect();
        assert_eq!(picks, [0, 2, 2]);
        assert_eq!(b.pick_after(0), Some(2));
        b.endpoint(0).mark_failed();
        b.endpoint(2).mark_failed();
        // All cooling down: the next in turn anyway, not a refusal.
        let picks: Vec<_> = (0..3).map(|_| b.pick().unwrap()).collect();
        assert_eq!(picks, [0, 1, 2]);
        assert_eq!(b.pick_after(2), Some(0));
        b.endpoint(1).mark_ok();
        assert!(!b.endpoint(1).is_cooling_down());
        assert_eq!(b.pick_after(2), Some(1));
    }

    #[test]
    fn single_and_empty() {
        let one = balancer(1);
        assert_eq!(one.pick(), Some(0));
        assert_eq!(one.pick_after(0), None);
        assert_eq!(balancer(0).pick(), None);
    }
}
