//! Thread-per-core serving: one single-threaded tokio runtime per core, each serving the
//! connections handed to it, the way nginx runs one event loop per worker process. The
//! listeners accept on them; the proxy keeps one upstream pool per worker.
//!
//! Why not tokio's work-stealing runtime: on a proxy every request wakes several tasks
//! (client connection, stream, upstream connection); spread over a work-stealing pool
//! those wake-ups cross threads, and idle workers spin looking for work. Measured with
//! `scripts/bench`, that cost about half again the CPU per request of single-threaded
//! loops. Here a connection lives on one thread from handshake to close, and so do the
//! upstream connections it opens ([`worker_index`] picks that thread's pool).
//!
//! Every worker runs its own accept loop on a clone of the one listening socket. The
//! kernel gives a new connection to whichever worker asks first, and a worker woken by a
//! burst accepts the whole burst before the other wakes: 40 connections opened at once
//! ended 40/0 on two workers (tests/admin.rs), and a benchmark's 20 connections loaded
//! one core while the other idled. So a worker that accepts a connection while it serves
//! two or more than another hands the socket to the one serving fewest ([`place`]);
//! from there the connection lives on that one thread from handshake to close.

use std::cell::Cell;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, watch};

use crate::metrics::WorkerConnections;
use crate::shutdown::Phase;

/// Work for a worker: built on the worker's thread, so it can register sockets there.
type Job = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker thread running the caller, or 0 elsewhere (tests, the main
/// runtime). Per-thread resources (upstream pools) are picked with it.
pub(crate) fn worker_index() -> usize {
    WORKER.with(|w| w.get()).unwrap_or(0)
}

/// How many workers a server runs: one per available core.
pub(crate) fn count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Which worker serves a connection worker `me` accepted: `me`, unless another serves
/// at least two fewer, then the one serving fewest. A hand-off wakes another thread and
/// moves the socket between two reactors; a difference of one connection is not worth
/// that, and keeping it also keeps workers from trading sockets back and forth when they
/// accept at the same moment.
pub(crate) fn place(load: &WorkerConnections, me: usize) -> usize {
    let me = me % load.workers();
    let mine = load.get(me);
    let (fewest, least) = (0..load.workers())
        .map(|w| (w, load.get(w)))
        .min_by_key(|&(_, n)| n)
        .unwrap_or((me, mine));
    if least + 2 <= mine { fewest } else { me }
}

/// Sends work to the workers; cloned into each accept loop.
#[derive(Clone)]
pub(crate) struct Dispatch {
    senders: Arc<[mpsc::UnboundedSender<Job>]>,
    load: Arc<WorkerConnections>,
}

impl Dispatch {
    /// How many workers there are.
    pub(crate) fn count(&self) -> usize {
        self.senders.len()
    }

    /// The HTTPS connections each worker serves.
    pub(crate) fn load(&self) -> &Arc<WorkerConnections> {
        &self.load
    }

    /// Runs the future `make` builds on worker `index`, built there (so the sockets it
    /// registers are that worker's).
    pub(crate) fn spawn_on<F, Fut>(&self, index: usize, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let job: Job = Box::new(move || Box::pin(make()));
        // A worker only stops at Phase::Closed; a job sent after that has nothing left
        // to serve.
        let _ = self.senders[index % self.senders.len()].send(job);
    }
}

pub(crate) struct Workers {
    dispatch: Dispatch,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    /// Starts one worker thread per slot of `load` (where they count their HTTPS
    /// connections), serving their jobs until `phase` is [`Phase::Closed`].
    pub(crate) fn start(
        load: Arc<WorkerConnections>,
        phase: watch::Receiver<Phase>,
    ) -> std::io::Result<Workers> {
        let n = load.workers();
        let mut senders = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for index in 0..n {
            let (tx, rx) = mpsc::unbounded_channel::<Job>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let phase = phase.clone();
            let thread = std::thread::Builder::new()
                .name(format!("portico-worker-{index}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(Some(index)));
                    runtime.block_on(serve(rx, phase));
                })?;
            senders.push(tx);
            threads.push(thread);
        }
        Ok(Workers {
            dispatch: Dispatch {
                senders: senders.into(),
                load,
            },
            threads: Mutex::new(threads),
        })
    }

    /// A handle that sends work to these workers.
    pub(crate) fn dispatch(&self) -> Dispatch {
        self.dispatch.clone()
    }

    /// Once shutdown has begun: waits until every worker has finished its connections
    /// (or dropped them at the deadline).
    pub(crate) async fn join(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        // Joining blocks; do it off the async runtime.
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// A timer that always expires within this much keeps tokio's time driver from waking
/// itself for every new timer. The driver writes to its eventfd (a syscall, and another
/// turn of its event loop) whenever a timer is registered earlier than the earliest it
/// was going to wake for; a request's upstream timeout (60 s by default) often was, on
/// a worker whose other timers were the connections' idle timeouts (120 s):
/// 0.21 `write`s per HTTP/1.1 request. Timers shorter than this still wake it.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Runs jobs until the server is closed; connections spawned by them are drained by the
/// server (it waits for the connection count) before it says [`Phase::Closed`].
async fn serve(mut jobs: mpsc::UnboundedReceiver<Job>, mut phase: watch::Receiver<Phase>) {
    let mut open = true;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *phase.borrow_and_update() == Phase::Closed {
            return;
        }
        tokio::select! {
            _ = heartbeat.tick() => {}
            job = jobs.recv(), if open => match job {
                Some(job) => {
                    tokio::spawn(job());
                }
                None => open = false,
            },
            changed = phase.changed() => if changed.is_err() {
                return;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Seat;

    #[test]
    fn a_burst_accepted_by_one_worker_is_spread_over_all() {
        let load = Arc::new(WorkerConnections::new(3));
        // Worker 0 wakes first and accepts all 30 connections of a burst.
        let seats: Vec<Seat> = (0..30).map(|_| load.seat(place(&load, 0))).collect();
        let counts: Vec<usize> = (0..3).map(|w| load.get(w)).collect();
        assert_eq!(counts.iter().sum::<usize>(), 30);
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 2,
            "{counts:?}"
        );
        drop(seats);
        assert_eq!((0..3).map(|w| load.get(w)).sum::<usize>(), 0);
    }

    #[test]
    fn a_difference_of_one_connection_stays_put() {
        let load = Arc::new(WorkerConnections::new(2));
        let _a = load.seat(0);
        assert_eq!(place(&load, 0), 0);
        let _b = load.seat(0);
        // Two more than worker 1: the next goes there, then worker 0 keeps its own.
        assert_eq!(place(&load, 0), 1);
        let _c = load.seat(1);
        assert_eq!(place(&load, 0), 0);
        assert_eq!(place(&load, 1), 1);
    }
}
