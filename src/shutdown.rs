//! Where the process is in its shutdown, shared by everything that runs until then:
//! the listeners and their connections, the worker threads, the certificate scheduler
//! and the config watcher. [`crate::server`] moves it forward on SIGTERM.

/// Where shutdown is; it only moves forward. Accept loops stop at `Draining`;
/// connections finish their requests then, and are dropped at `Closed` (the deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Accepting and serving.
    Serving,
    /// No longer accepting; requests in flight finish.
    Draining,
    /// The deadline passed: what is left is dropped.
    Closed,
}
