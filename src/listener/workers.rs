//! Thread-per-core serving: one single-threaded tokio runtime per core, each serving the
//! connections handed to it, the way nginx runs one event loop per worker process.
//!
//! Why not tokio's work-stealing runtime: on a proxy every request wakes several tasks
//! (client connection, stream, upstream connection); spread over a work-stealing pool
//! those wake-ups cross threads, and idle workers spin looking for work. Measured with
//! `scripts/bench`, that cost about half again the CPU per request of single-threaded
//! loops. Here a connection lives on one thread from handshake to close, and so do the
//! upstream connections it opens ([`worker_index`] picks that thread's pool).
//!
//! The accept loop hands each accepted socket over as a std socket, so it is registered
//! with the worker's own I/O driver rather than the acceptor's.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::Phase;

/// Work for a worker: built on the worker's thread, so it can register sockets there.
pub type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker thread running the caller, or 0 elsewhere (tests, the main
/// runtime). Per-thread resources (upstream pools) are picked with it.
pub fn worker_index() -> usize {
    WORKER.with(|w| w.get()).unwrap_or(0)
}

/// How many workers a server runs: one per available core.
pub fn count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

pub struct Workers {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    /// Starts `n` worker threads. Each serves its jobs until [`Workers::join`]; then it
    /// lets them finish, or drops them when `phase` reaches [`Phase::Closed`].
    pub fn start(n: usize, phase: watch::Receiver<Phase>) -> std::io::Result<Workers> {
        let mut senders = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for index in 0..n.max(1) {
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
            senders,
            next: AtomicUsize::new(0),
            threads: Mutex::new(threads),
        })
    }

    /// Runs `job` on the next worker in turn.
    pub fn spawn(&self, job: Job) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        // A worker only stops after join; a send to one that is gone drops the job
        // (and its socket), which is all that could be done with it anyway.
        let _ = self.senders[i].send(job);
    }

    /// Once shutdown has begun: waits until every worker has finished its connections
    /// (or dropped them at the deadline).
    pub async fn join(&self) {
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

async fn serve(mut jobs: mpsc::UnboundedReceiver<Job>, mut phase: watch::Receiver<Phase>) {
    let mut tasks = JoinSet::new();
    while *phase.borrow_and_update() == Phase::Serving {
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => {
                    tasks.spawn(job());
                }
                None => break,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            changed = phase.changed() => if changed.is_err() { break },
        }
    }
    // Connections accepted just before shutdown are served too (and drained at once).
    while let Ok(job) = jobs.try_recv() {
        tasks.spawn(job());
    }
    loop {
        if *phase.borrow_and_update() == Phase::Closed {
            tasks.abort_all();
            return;
        }
        tokio::select! {
            done = tasks.join_next() => if done.is_none() { return },
            changed = phase.changed() => if changed.is_err() {
                tasks.abort_all();
                return;
            },
        }
    }
}
