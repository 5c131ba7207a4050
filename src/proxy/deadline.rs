//! The upstream timeout of a request (`upstream_timeout`), without a runtime timer per
//! request.
//!
//! `tokio::time::timeout` registers a timer in the runtime's wheel for every request
//! that has to wait for its upstream, which is nearly every one: a lock, an insertion
//! and a removal, and a write to the driver's eventfd whenever the new deadline is the
//! earliest it knows of (0.21 `write` syscalls per HTTP/1.1 request in
//! `STRACE=1 scripts/profile h1`), for a timeout that almost never fires. Here a request
//! that waits puts its deadline and waker in a list of its thread's, and takes them out
//! when it is done; one sweeper task per list, alive only while the list holds
//! something, looks at it every [`TICK`] and wakes the requests whose deadline passed.
//! A timeout fires up to one `TICK` late.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often a sweeper looks for passed deadlines.
pub(super) const TICK: Duration = Duration::from_millis(100);

/// The deadline passed first.
#[derive(Debug)]
pub(super) struct Elapsed;

/// Runs `future` until it is done or `after` has passed (up to a [`TICK`] more).
pub(super) async fn within<F: Future>(after: Duration, future: F) -> Result<F::Output, Elapsed> {
    let mut future = std::pin::pin!(future);
    let mut waiting = Waiting { after, entry: None };
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        waiting.poll(cx).map(|()| Err(Elapsed))
    })
    .await
}

/// One request's place in its thread's list, from its first wait to its end.
struct Waiting {
    after: Duration,
    /// The list and the slot in it, once registered.
    entry: Option<(Arc<List>, usize)>,
}

impl Waiting {
    /// Ready once the deadline has passed; registers the waker on the first wait.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &self.entry {
            None => {
                let list = List::of_this_thread();
                let at = Instant::now() + self.after;
                let slot = list.insert(at, cx.waker().clone());
                self.entry = Some((list, slot));
                Poll::Pending
            }
            Some((list, slot)) => {
                let mut slots = list.lock();
                match slots.entries.get_mut(*slot).and_then(Option::as_mut) {
                    Some(entry) if entry.expired => Poll::Ready(()),
                    Some(entry) => {
                        if !entry.waker.will_wake(cx.waker()) {
                            entry.waker = cx.waker().clone();
                        }
                        Poll::Pending
                    }
                    // Never: only this request takes its slot out.
                    None => Poll::Ready(()),
                }
            }
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some((list, slot)) = self.entry.take() {
            list.remove(slot);
        }
    }
}

/// The waiting requests of one thread, and whether a sweeper looks after them.
struct List(Mutex<Slots>);

#[derive(Default)]
struct Slots {
    entries: Vec<Option<Entry>>,
    /// Empty slots in `entries`, to be used first.
    free: Vec<usize>,
    /// Slots in use.
    len: usize,
    /// A sweeper task runs for this list.
    sweeping: bool,
}

struct Entry {
    at: Instant,
    waker: Waker,
    /// The sweeper found the deadline passed.
    expired: bool,
}

impl List {
    /// This thread's list. The requests of a worker stay on its thread, so its list is
    /// locked by that thread alone (the sweeper runs there too); a future moved to
    /// another thread (tests' multi-threaded runtimes) keeps the list it registered in.
    fn of_this_thread() -> Arc<List> {
        thread_local! {
            static LIST: Arc<List> = Arc::new(List(Mutex::default()));
        }
        LIST.with(Arc::clone)
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        // Nothing panics while holding it; a poisoned list is still a valid list.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(self: &Arc<Self>, at: Instant, waker: Waker) -> usize {
        let mut slots = self.lock();
        let entry = Some(Entry {
            at,
            waker,
            expired: false,
        });
        let slot = match slots.free.pop() {
            Some(slot) => {
                slots.entries[slot] = entry;
                slot
            }
            None => {
                slots.entries.push(entry);
                slots.entries.len() - 1
            }
        };
        slots.len += 1;
        if !slots.sweeping {
            slots.sweeping = true;
            tokio::spawn(sweep(self.clone()));
        }
        slot
    }

    fn remove(&self, slot: usize) {
        let mut slots = self.lock();
        if let Some(entry) = slots.entries.get_mut(slot)
            && entry.take().is_some()
        {
            slots.free.push(slot);
            slots.len -= 1;
        }
    }
}

/// Wakes the requests of `list` whose deadline passed, every [`TICK`] until the list
/// is empty.
async fn sweep(list: Arc<List>) {
    let sweeper = Sweeper(list);
    loop {
        tokio::time::sleep(TICK).await;
        let now = Instant::now();
        let mut slots = sweeper.0.lock();
        if slots.len == 0 {
            // Slots and free lists sized for a burst are not kept for the quiet after.
            *slots = Slots::default();
            return;
        }
        for entry in slots.entries.iter_mut().flatten() {
            if !entry.expired && entry.at <= now {
                entry.expired = true;
                entry.waker.wake_by_ref();
            }
        }
    }
}

/// Held by a sweeper task: however it ends (the list empty, or its runtime shutting
/// down), the next request to wait starts a new one.
struct Sweeper(Arc<List>);

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.0.lock().sweeping = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting_now() -> usize {
        List::of_this_thread().lock().len
    }

    #[tokio::test]
    async fn a_future_that_never_finishes_times_out_and_leaves_nothing() {
        let outcome = within(Duration::from_millis(10), std::future::pending::<()>()).await;
        assert!(outcome.is_err());
        assert_eq!(waiting_now(), 0);
    }

    #[tokio::test]
    async fn a_future_that_finishes_gives_its_output_and_its_slot_back() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(within(Duration::from_secs(60), rx));
        tokio::task::yield_now().await;
        tx.send(7).unwrap();
        assert_eq!(task.await.unwrap().unwrap().unwrap(), 7);
        assert_eq!(waiting_now(), 0);
        // Ready at once: never registered.
        assert_eq!(
            within(Duration::from_secs(60), async { 8 }).await.unwrap(),
            8
        );
        assert_eq!(waiting_now(), 0);
    }

    #[tokio::test]
    async fn a_dropped_request_gives_its_slot_back_and_the_others_still_time_out() {
        let dropped = tokio::spawn(within(
            Duration::from_secs(60),
            std::future::pending::<()>(),
        ));
        let short: Vec<_> = (0..50)
            .map(|_| {
                tokio::spawn(within(
                    Duration::from_millis(20),
                    std::future::pending::<()>(),
                ))
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(waiting_now(), 51);
        dropped.abort();
        assert!(dropped.await.unwrap_err().is_cancelled());
        for task in short {
            assert!(task.await.unwrap().is_err());
        }
        assert_eq!(waiting_now(), 0);
    }
}
