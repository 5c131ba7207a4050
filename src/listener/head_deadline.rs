//! The request-head deadline of HTTP/1.1 connections and its 408.
//!
//! hyper's own `header_read_timeout` closes the connection without a word, and starts
//! counting whenever hyper waits for a head, so it also cut idle keep-alive
//! connections short. This wrapper around the connection's bytes does what nginx and
//! haproxy do instead:
//! - a new connection must send a whole request head within
//!   `limits.header_read_timeout`, and so must a kept-alive one once the first byte of
//!   its next request has arrived (slowloris);
//! - when the deadline passes, the client gets `408 Request Timeout` with
//!   `Connection: close` (RFC 9110 §15.5.9), then the connection ends;
//! - a kept-alive connection that sends nothing is left to `limits.idle_timeout`,
//!   which closes it silently: a 408 there could cross a request the client has just
//!   sent.
//!
//! The wrapper only reads [`Activity`]: a request in flight suspends the deadline, and
//! a request that has begun since the last read resets it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::Activity;

const RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 29\r\n\r\nno complete request in time\r\n";

enum State {
    Reading,
    /// Writing the 408; `usize` bytes are out.
    Answering(usize),
    /// The 408 is out: every read is the end of the stream.
    Done,
}

pub(super) struct HeadDeadline<I> {
    io: I,
    activity: Arc<Activity>,
    timeout: Duration,
    /// `Activity::begun` at the last read: a change means a request began since.
    seen_begun: usize,
    /// When the head being read is due; `None` while no head is expected by one.
    due: Option<Instant>,
    /// The timer for `due`, made only once a read has to wait for more of the head:
    /// most heads arrive whole in the read that starts their clock, and then no timer
    /// is made, registered or dropped for them.
    timer: Option<Pin<Box<Sleep>>>,
    state: State,
}

impl<I> HeadDeadline<I> {
    /// Wraps a new connection: its first head is due within `timeout` from now.
    pub(super) fn new(io: I, activity: Arc<Activity>, timeout: Duration) -> Self {
        let seen_begun = activity.begun.load(Ordering::Acquire);
        HeadDeadline {
            io,
            activity,
            timeout,
            seen_begun,
            due: Some(Instant::now() + timeout),
            timer: None,
            state: State::Reading,
        }
    }
}

impl<I: AsyncWrite + Unpin> HeadDeadline<I> {
    /// Writes the 408 and flushes it; ready once it is out (or the write failed: the
    /// connection ends either way).
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while let State::Answering(written) = self.state {
            if written == RESPONSE.len() {
                return match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(_) => {
                        self.state = State::Done;
                        Poll::Ready(())
                    }
                };
            }
            match Pin::new(&mut self.io).poll_write(cx, &RESPONSE[written..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) if n > 0 => self.state = State::Answering(written + n),
                Poll::Ready(_) => self.state = State::Done,
            }
        }
        Poll::Ready(())
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadDeadline<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.state {
                // The end of the stream for hyper: it closes the connection.
                State::Done => return Poll::Ready(Ok(())),
                State::Answering(_) => {
                    if this.poll_answer(cx).is_pending() {
                        return Poll::Pending;
                    }
                    continue;
                }
                State::Reading => {}
            }
            let begun = this.activity.begun.load(Ordering::Acquire);
            if begun != this.seen_begun {
                this.seen_begun = begun;
                this.due = None;
                this.timer = None;
            }
            let busy = this.activity.in_flight.load(Ordering::Acquire) > 0;
            let before = buf.filled().len();
            let read = Pin::new(&mut this.io).poll_read(cx, buf);
            if busy {
                return read;
            }
            match read {
                Poll::Ready(Ok(())) if buf.filled().len() > before => {
                    // The first bytes of a head after an idle pause start its clock.
                    if this.due.is_none() {
                        this.due = Some(Instant::now() + this.timeout);
                    }
                    return read;
                }
                Poll::Ready(_) => return read,
                Poll::Pending => {
                    let Some(due) = this.due else {
                        return Poll::Pending;
                    };
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                    let expired = timer.as_mut().poll(cx).is_ready();
                    if !expired {
                        return Poll::Pending;
                    }
                    this.activity.head_timed_out.store(true, Ordering::Release);
                    this.state = State::Answering(0);
                }
            }
        }
    }
}

write_through!(HeadDeadline);
