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
//! Every worker runs its own accept loop on a clone of the one listening socket, so a
//! connection is accepted, handshaken and served on the same thread.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, watch};

use crate::shutdown::Phase;

/// Work for a worker: built on the worker's thread, so it can register sockets there.
pub(crate) type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

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

pub(crate) struct Workers {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    /// Starts `n` worker threads, serving their jobs until `phase` is [`Phase::Closed`].
    pub(crate) fn start(n: usize, phase: watch::Receiver<Phase>) -> std::io::Result<Workers> {
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
            threads: Mutex::new(threads),
        })
    }

    pub(crate) fn count(&self) -> usize {
        self.senders.len()
    }

    /// Runs `job` on worker `index`.
    pub(crate) fn spawn_on(&self, index: usize, job: Job) {
        // A worker only stops at Phase::Closed; a job sent after that has nothing left
        // to serve.
        let _ = self.senders[index % self.senders.len()].send(job);
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

/// Runs jobs until the server is closed; connections spawned by them are drained by the
/// server (it waits for the connection count) before it says [`Phase::Closed`].
async fn serve(mut jobs: mpsc::UnboundedReceiver<Job>, mut phase: watch::Receiver<Phase>) {
    let mut open = true;
    loop {
        if *phase.borrow_and_update() == Phase::Closed {
            return;
        }
        tokio::select! {
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
