//! Request bodies on their way upstream, wrapped so that a request whose upstream
//! connection failed can be sent again to another upstream.
//!
//! The upstream clients (`h1pool`, hyper's for h2c) take the request by value and drop
//! it when the connection cannot be made, body included. [`RetryBody`] keeps the
//! client's body in a slot shared with a [`Reclaim`] handle until the upstream client
//! polls it for the first time: if the attempt fails before that, nothing of the body
//! was read, so [`Reclaim::take`] gets it back whole and the request can go to the
//! next upstream. Once polled, the body belongs to that attempt and cannot be replayed
//! (we never buffer bodies).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

type Slot = Arc<Mutex<Option<Incoming>>>;

/// A request body that stays reclaimable until its first poll.
pub(super) struct RetryBody {
    /// Until the first poll, the body sits in `slot`; after it, here.
    polled: Option<Incoming>,
    /// None for a body that no retry can take back.
    slot: Option<Slot>,
    /// Read at creation: hyper asks before polling (to pick Content-Length or chunked),
    /// and answering from a copy keeps the slot untouched until the first poll.
    hint: SizeHint,
    end_stream: bool,
    /// Body bytes read, for the access log (when it is on).
    counted: Option<Arc<AtomicU64>>,
    /// The route's largest body (`proxy-body-size`), and what was read so far: a body
    /// sent without a length is cut where it passes the limit.
    limit: Option<u64>,
    read: u64,
}

/// Gets an unpolled body back after a failed attempt.
pub(super) struct Reclaim(Slot);

/// The client's request body broke off or was malformed (a bad chunk size, data past
/// a chunk, a reset stream). Kept apart from upstream failures: the client gets 400,
/// and the upstream is not blamed.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed")]
pub(super) struct ClientBodyError(#[source] pub hyper::Error);

/// The request body passed its route's limit while it was being sent: the upstream
/// request is aborted and the client gets 413.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than the route allows ({limit} bytes)")]
pub(super) struct BodyTooLarge {
    pub limit: u64,
}

/// The reclaimed body was polled again: a bug in the retry logic, reported as a body
/// error rather than a panic.
#[derive(Debug, thiserror::Error)]
#[error("request body was taken back for a retry")]
pub(super) struct Reclaimed;

impl RetryBody {
    /// Counts the body's bytes into `counter` as they are read (the access log's
    /// `bytes_in`).
    pub(super) fn counting(mut self, counter: Option<Arc<AtomicU64>>) -> RetryBody {
        self.counted = counter;
        self
    }

    /// Fails the body once more than `limit` bytes have been read.
    pub(super) fn limited(mut self, limit: Option<u64>) -> RetryBody {
        self.limit = limit;
        self
    }

    pub(super) fn new(body: Incoming) -> (RetryBody, Reclaim) {
        let hint = body.size_hint();
        let end_stream = body.is_end_stream();
        let slot: Slot = Arc::new(Mutex::new(Some(body)));
        (
            RetryBody {
                polled: None,
                slot: Some(slot.clone()),
                hint,
                end_stream,
                counted: None,
                limit: None,
                read: 0,
            },
            Reclaim(slot),
        )
    }

    /// A body for the last attempt: nothing to take back, so no shared slot.
    pub(super) fn direct(body: Incoming) -> RetryBody {
        RetryBody {
            hint: body.size_hint(),
            end_stream: body.is_end_stream(),
            polled: Some(body),
            slot: None,
            counted: None,
            limit: None,
            read: 0,
        }
    }
}

fn lock(slot: &Slot) -> MutexGuard<'_, Option<Incoming>> {
    // A poisoned lock still holds a valid Option; nothing here can panic while holding
    // it, but a lock is no reason to panic on network input.
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

impl Reclaim {
    /// The body, if no attempt ever polled it.
    pub(super) fn take(self) -> Option<Incoming> {
        lock(&self.0).take()
    }
}

impl Body for RetryBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.polled.is_none() {
            // One uncontended lock per retryable request, only on the first poll.
            let taken = self.slot.as_ref().and_then(|slot| lock(slot).take());
            match taken {
                Some(body) => self.polled = Some(body),
                None => return Poll::Ready(Some(Err(Reclaimed.into()))),
            }
        }
        let this = &mut *self;
        match this.polled.as_mut() {
            Some(body) => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled
                    && let Some(data) = frame.data_ref()
                {
                    let len = data.len() as u64;
                    if let Some(counter) = &this.counted {
                        counter.fetch_add(len, Ordering::Relaxed);
                    }
                    this.read = this.read.saturating_add(len);
                    if let Some(limit) = this.limit
                        && this.read > limit
                    {
                        return Poll::Ready(Some(Err(BodyTooLarge { limit }.into())));
                    }
                }
                polled.map_err(|e| ClientBodyError(e).into())
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.polled {
            Some(body) => body.is_end_stream(),
            None => self.end_stream,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.polled {
            Some(body) => body.size_hint(),
            None => self.hint,
        }
    }
}
