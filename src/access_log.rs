//! The access log: one line per request on stdout, written once the response body has
//! ended (or the client went away), for every request the proxy serves (the TLS listener,
//! and port 80 for sites with `tls: off`; not port 80's redirects and challenges). The
//! proxy starts
//! a [`Record`] when a request comes in (with `log.access` on), fills in the site, the
//! upstream and the status as it learns them, and [`Record::finish`] wraps the response
//! body so that the line goes out when the body ends or is dropped. A request dropped
//! before its response head (the client left first) is logged with status 499.
//!
//! Never blocking the request path: the line is formatted on the request's own task
//! into a buffer its thread reuses and appended to one shared buffer (a mutex held for
//! that copy only), which holds at most [`QUEUE`] lines. When it is full (stdout is a
//! pipe nobody drains fast enough) the line is dropped and counted in
//! `portico_access_log_dropped_total`; a request never waits for the log. One writer
//! thread swaps the shared buffer for an empty one every 10 ms and writes what it took
//! with one `write` to stdout: a request never has a thread to wake, and no line is an
//! allocation of its own. Lines are written in the order they were appended.
//!
//! Fields (docs/configuration.md lists them for users): `time` (when the request came
//! in, UTC, milliseconds), `site`, `client` (the address `X-Real-IP` gets: after
//! `trusted_proxies` and PROXY protocol), `method`, `host`, `path` (without the query,
//! which may carry secrets), `proto`, `status`, `bytes_in` and `bytes_out` (body bytes
//! actually transferred), `duration_ms`, `upstream` and `upstream_ms` (to the
//! response head), `tls` and `sni`, `request_id`. Never a header other than Host and
//! `X-Request-Id`: no cookies, no authorization. Text lines are logfmt (`key=value`,
//! quoted and escaped when a value has a space, a quote, `=`, `\` or anything but
//! visible ASCII); JSON lines are one object each. No value can end a line early.

use std::io::Write;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Method, Response, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::{Body, BoxError};
use crate::config::LogFormat;
use crate::metrics::Metrics;
use crate::request_id::RequestId;

/// Lines the queue holds before new ones are dropped.
pub(crate) const QUEUE: usize = 16 * 1024;

/// The capacity the writer's buffers keep between batches; a burst's larger buffers
/// are given back.
const BATCH: usize = 256 * 1024;

type Sink = Box<dyn Write + Send>;

/// Lines appended and not yet taken by the writer.
#[derive(Default)]
struct Queue {
    lines: Vec<u8>,
    /// How many lines `lines` holds.
    count: u64,
    /// Lines ever appended, so shutdown can wait until they are written.
    queued: u64,
}

/// The writer thread's end of the log, shared by every request.
pub(crate) struct AccessLog {
    /// Where lines go; taken by the writer thread when the first line comes.
    sink: Mutex<Option<Sink>>,
    /// The writer is started on the first line, so a process whose config never turns
    /// the log on has no thread for it; `false` when it could not be started.
    started: OnceLock<bool>,
    /// Shared with the writer, which ends once it holds the last reference.
    queue: Arc<Mutex<Queue>>,
    /// Lines written, so shutdown can wait for the queue to empty.
    written: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// A log that writes to stdout.
    pub(crate) fn stdout(metrics: Arc<Metrics>) -> AccessLog {
        AccessLog::to(Box::new(std::io::stdout()), metrics)
    }

    /// A log that writes to `sink` (tests).
    pub(crate) fn to(sink: Sink, metrics: Arc<Metrics>) -> AccessLog {
        AccessLog {
            sink: Mutex::new(Some(sink)),
            started: OnceLock::new(),
            queue: Arc::default(),
            written: Arc::new(AtomicU64::new(0)),
            metrics,
        }
    }

    /// Whether the writer runs (started here on the first line).
    fn started(&self) -> bool {
        *self.started.get_or_init(|| {
            let Some(sink) = self
                .sink
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            else {
                return false;
            };
            let queue = self.queue.clone();
            let written = self.written.clone();
            match std::thread::Builder::new()
                .name("portico-access-log".into())
                .spawn(move || write_lines(&queue, sink, &written))
            {
                Ok(_) => true,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the access log writer; access log lines are dropped");
                    false
                }
            }
        })
    }

    /// Queues one line (ending in `\n`), or drops and counts it when the queue is full.
    pub(crate) fn send(&self, line: &[u8]) {
        let sent = self.started() && {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.count < QUEUE as u64 {
                queue.lines.extend_from_slice(line);
                queue.count += 1;
                queue.queued += 1;
                true
            } else {
                false
            }
        };
        if !sent {
            self.metrics.access_log_dropped();
        }
    }

    /// Formats `record`'s line in this thread's buffer and queues it.
    fn send_record(&self, record: &Record) {
        thread_local! {
            static LINE: std::cell::RefCell<Vec<u8>> =
                std::cell::RefCell::new(Vec::with_capacity(1024));
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            record.write_line(line, record.start.elapsed());
            self.send(line);
            // A line with a huge path does not keep its buffer.
            if line.capacity() > 64 * 1024 {
                *line = Vec::with_capacity(1024);
            }
        });
    }

    /// Waits, up to `deadline`, until every queued line is written (at shutdown).
    pub(crate) async fn drain(&self, deadline: Duration) {
        let until = Instant::now() + deadline;
        loop {
            let queued = self.queue.lock().unwrap_or_else(|p| p.into_inner()).queued;
            if self.written.load(Ordering::Acquire) >= queued || Instant::now() >= until {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// How long the writer sleeps between batches.
const IDLE: Duration = Duration::from_millis(10);

/// The writer thread: every [`IDLE`], swap the queue's buffer for an empty one and
/// write what it held with one `write`. It never waits on the queue: a writer woken by
/// each line would cost every request a futex call and a context switch (measured as
/// most of the log's cost when it blocked in a channel's `recv`); polling costs one
/// wake-up per 10 ms. It ends, after a last batch, once the log is dropped.
fn write_lines(queue: &Arc<Mutex<Queue>>, mut sink: Sink, written: &AtomicU64) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // Nobody else holds the queue: nothing can be appended after this batch.
        let last = Arc::strong_count(queue) == 1;
        let lines = {
            let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut queue.lines, &mut batch);
            std::mem::take(&mut queue.count)
        };
        if lines > 0 {
            // A closed stdout loses the log, not the proxy: the lines count as written
            // so shutdown does not wait for them.
            let _ = sink.write_all(&batch).and_then(|()| sink.flush());
            written.fetch_add(lines, Ordering::Release);
            batch.clear();
            batch.shrink_to(BATCH);
        }
        if last {
            return;
        }
        std::thread::sleep(IDLE);
    }
}

/// What the upstream did, for the log line.
#[derive(Debug, Default)]
pub(crate) struct UpstreamTrace {
    /// The last upstream tried (`host:port` as configured).
    pub upstream: Option<http::uri::Authority>,
    /// From sending the request to the response head, when one came.
    pub head: Option<Duration>,
}

/// A request's line until its response head is ready. Dropped before that (the client
/// went away while the upstream was still working: hyper drops the request's future),
/// it sends the line with status 499, nginx's "client closed request". Holds nothing
/// when the access log is off.
#[derive(Default)]
pub(crate) struct Pending(Option<(Record, Arc<AccessLog>)>);

impl Pending {
    /// A line to come for `record`, written to `log`.
    pub(crate) fn new(record: Record, log: &Arc<AccessLog>) -> Pending {
        Pending(Some((record, log.clone())))
    }

    /// The record, to fill in (`None` when the log is off).
    pub(crate) fn record(&mut self) -> Option<&mut Record> {
        self.0.as_mut().map(|(record, _)| record)
    }

    /// The response, whose body sends the line when it ends.
    pub(crate) fn finish(mut self, response: Response<Body>) -> Response<Body> {
        match self.0.take() {
            Some((record, log)) => record.finish(response, log),
            None => response,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some((mut record, log)) = self.0.take() {
            record.status = CLIENT_CLOSED;
            log.send_record(&record);
        }
    }
}

/// The status logged for a request whose client left before the response head.
pub(crate) const CLIENT_CLOSED: u16 = 499;

/// One request's line, filled in as the request goes.
pub(crate) struct Record {
    pub format: LogFormat,
    pub time: SystemTime,
    pub start: Instant,
    pub site: Option<Arc<str>>,
    pub client: IpAddr,
    pub method: Method,
    pub host: Option<String>,
    /// The request's path and query (a reference count, not a copy); only the path is
    /// logged. `None` when the request had no path (a CONNECT's authority).
    pub path: Option<PathAndQuery>,
    pub version: Version,
    pub status: u16,
    /// Request body bytes read so far; the forwarding body adds to it. `None` for a
    /// request without a body (most): 0, and no counter to allocate.
    pub bytes_in: Option<Arc<AtomicU64>>,
    pub bytes_out: u64,
    pub upstream: UpstreamTrace,
    pub tls: Option<&'static str>,
    pub sni: Option<Arc<str>>,
    pub request_id: RequestId,
    /// ` site=… client=…` made once per connection and site ([`text_head`]), for text
    /// lines; `None`: written from `site` and `client`.
    pub text_head: Option<Arc<[u8]>>,
    /// ` tls=… sni=…` made once per connection ([`text_tail`]), for text lines; `None`:
    /// written from `tls` and `sni`.
    pub text_tail: Option<Arc<[u8]>>,
}

impl Record {
    /// Wraps `response`'s body: the line is sent when it ends or is dropped.
    pub(crate) fn finish(
        mut self,
        response: Response<Body>,
        log: Arc<AccessLog>,
    ) -> Response<Body> {
        self.status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let body = Logged {
            inner: body,
            record: Some(self),
            log,
        };
        Response::from_parts(parts, body.boxed())
    }

    fn bytes_in(&self) -> u64 {
        self.bytes_in
            .as_ref()
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// The path as the request line had it (without the query).
    fn path(&self) -> &str {
        self.path.as_ref().map_or("", PathAndQuery::path)
    }

    /// The line, `\n` included.
    #[cfg(test)]
    pub(crate) fn line(&self, duration: Duration) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_line(&mut out, duration);
        out
    }

    /// Appends the line, `\n` included, to `out`.
    fn write_line(&self, out: &mut Vec<u8>, duration: Duration) {
        match self.format {
            LogFormat::Text => self.text(out, duration),
            LogFormat::Json => self.json(out, duration),
        }
    }

    fn text(&self, out: &mut Vec<u8>, duration: Duration) {
        // Written straight into one buffer: numbers and addresses need no escaping and
        // no string of their own.
        out.reserve(384);
        out.extend_from_slice(b"time=");
        push_time(out, self.time);
        match &self.text_head {
            Some(head) => out.extend_from_slice(head),
            None => push_head(out, self.site.as_deref(), self.client),
        }
        text_field(out, b" method=", Some(self.method.as_str()));
        text_field(out, b" host=", self.host.as_deref());
        text_field(out, b" path=", Some(self.path()));
        // ` proto=HTTP/2 status=` in one copy.
        out.extend_from_slice(proto_field(self.version));
        match self.status {
            // Three digits, always, for a status a response can have.
            status @ 100..=999 => out.extend_from_slice(&[
                b'0' + (status / 100) as u8,
                b'0' + (status / 10 % 10) as u8,
                b'0' + (status % 10) as u8,
            ]),
            status => push_u64(out, u64::from(status)),
        }
        out.extend_from_slice(b" bytes_in=");
        push_u64(out, self.bytes_in());
        out.extend_from_slice(b" bytes_out=");
        push_u64(out, self.bytes_out);
        out.extend_from_slice(b" duration_ms=");
        push_millis(out, duration);
        text_field(
            out,
            b" upstream=",
            self.upstream.upstream.as_ref().map(|a| a.as_str()),
        );
        out.extend_from_slice(b" upstream_ms=");
        match self.upstream.head {
            Some(head) => push_millis(out, head),
            None => out.push(b'-'),
        }
        match &self.text_tail {
            Some(tail) => out.extend_from_slice(tail),
            None => push_tail(out, self.tls, self.sni.as_deref()),
        }
        // An id is visible ASCII (request_id::of): checked once as bytes, not by
        // `to_str` first and again for quoting.
        let id = self.request_id.as_bytes();
        if !id.is_empty() && is_bare(id) {
            out.extend_from_slice(b" request_id=");
            out.extend_from_slice(id);
        } else {
            text_field(out, b" request_id=", self.request_id.as_str());
        }
        out.push(b'\n');
    }

    fn json(&self, out: &mut Vec<u8>, duration: Duration) {
        let mut time = Vec::with_capacity(24);
        push_time(&mut time, self.time);
        let time = String::from_utf8(time).unwrap_or_default();
        let line = JsonLine {
            time: &time,
            site: self.site.as_deref(),
            client: self.client,
            method: self.method.as_str(),
            host: self.host.as_deref(),
            path: self.path(),
            proto: protocol(self.version),
            status: self.status,
            bytes_in: self.bytes_in(),
            bytes_out: self.bytes_out,
            duration_ms: duration.as_secs_f64() * 1000.0,
            upstream: self.upstream.upstream.as_ref().map(|a| a.as_str()),
            upstream_ms: self.upstream.head.map(|d| d.as_secs_f64() * 1000.0),
            tls: self.tls,
            sni: self.sni.as_deref(),
            request_id: self.request_id.as_str(),
        };
        // Serializing borrowed strings and numbers into memory cannot fail.
        let _ = serde_json::to_writer(&mut *out, &line);
        out.push(b'\n');
    }
}

#[derive(serde::Serialize)]
struct JsonLine<'a> {
    time: &'a str,
    site: Option<&'a str>,
    client: IpAddr,
    method: &'a str,
    host: Option<&'a str>,
    path: &'a str,
    proto: &'static str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    upstream: Option<&'a str>,
    upstream_ms: Option<f64>,
    tls: Option<&'static str>,
    sni: Option<&'a str>,
    request_id: Option<&'a str>,
}

/// ` site=… client=…`, made once per connection and site: [`Record::text_head`].
pub(crate) fn text_head(site: Option<&str>, client: IpAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    push_head(&mut out, site, client);
    out
}

/// ` tls=… sni=…`, made once per connection: [`Record::text_tail`].
pub(crate) fn text_tail(tls: Option<&str>, sni: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    push_tail(&mut out, tls, sni);
    out
}

fn push_head(out: &mut Vec<u8>, site: Option<&str>, client: IpAddr) {
    text_field(out, b" site=", site);
    out.extend_from_slice(b" client=");
    push_ip(out, client);
}

fn push_tail(out: &mut Vec<u8>, tls: Option<&str>, sni: Option<&str>) {
    out.extend_from_slice(b" tls=");
    out.extend_from_slice(tls.unwrap_or("-").as_bytes());
    text_field(out, b" sni=", sni);
}

/// ` proto=… status=`.
fn proto_field(version: Version) -> &'static [u8] {
    match version {
        Version::HTTP_09 => b" proto=HTTP/0.9 status=",
        Version::HTTP_10 => b" proto=HTTP/1.0 status=",
        Version::HTTP_11 => b" proto=HTTP/1.1 status=",
        Version::HTTP_2 => b" proto=HTTP/2 status=",
        Version::HTTP_3 => b" proto=HTTP/3 status=",
        _ => b" proto=HTTP/? status=",
    }
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// Milliseconds with three decimals (microseconds).
fn push_millis(out: &mut Vec<u8>, d: Duration) {
    // Seconds and microseconds apart: no 128-bit division.
    let micros = u64::from(d.subsec_micros());
    push_u64(out, d.as_secs().saturating_mul(1000) + micros / 1000);
    let frac = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// A number in decimal, without `core::fmt` (a third of the line's cost when it was
/// written with `write!`, scripts/profile ACCESS_LOG=1).
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    // Most numbers (byte counts of small bodies, milliseconds) have one to three digits:
    // written without the loop.
    if n < 10 {
        out.push(b'0' + n as u8);
        return;
    }
    if n < 100 {
        out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
        return;
    }
    if n < 1000 {
        out.extend_from_slice(&[
            b'0' + (n / 100) as u8,
            b'0' + (n / 10 % 10) as u8,
            b'0' + (n % 10) as u8,
        ]);
        return;
    }
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Byte pushes into the reserved line inline; a slice copy calls memcpy.
    for &digit in &buf[at..] {
        out.push(digit);
    }
}

/// `n` in exactly `width` digits (zero-padded; higher digits are cut).
fn push_digits(out: &mut Vec<u8>, n: u64, width: u32) {
    for i in (0..width).rev() {
        out.push(b'0' + (n / 10u64.pow(i) % 10) as u8);
    }
}

/// An address as `Display` writes it; IPv4 by hand, the usual case.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// ` key=value` (`key` given with its space and `=`), the value in logfmt (bare when it
/// is visible ASCII without `"`, `=` and `\`, else quoted), or `-`. Inlined: a call
/// per field cost about 17 instructions of its own (scripts/profile ACCESS_LOG=1).
#[inline(always)]
fn text_field(out: &mut Vec<u8>, key: &[u8], value: Option<&str>) {
    out.extend_from_slice(key);
    match value {
        Some(v) if !v.is_empty() && is_bare(v.as_bytes()) => out.extend_from_slice(v.as_bytes()),
        Some(v) => push_quoted(out, v),
        None => out.push(b'-'),
    }
}

/// `2026-12-06T19:47:37.123Z`.
fn push_time(out: &mut Vec<u8>, time: SystemTime) {
    thread_local! {
        /// The last second formatted on this thread and its text up to the seconds
        /// (always 19 bytes: copied without a call): requests in the same second
        /// reuse it.
        static SECOND: std::cell::Cell<(u64, [u8; 19])> =
            const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (second, mut text) = SECOND.get();
    if second != secs {
        let t = time::OffsetDateTime::from(time);
        let mut made = Vec::with_capacity(19);
        push_digits(&mut made, u64::try_from(t.year()).unwrap_or(0), 4);
        made.push(b'-');
        push_digits(&mut made, u64::from(u8::from(t.month())), 2);
        made.push(b'-');
        push_digits(&mut made, u64::from(t.day()), 2);
        made.push(b'T');
        push_digits(&mut made, u64::from(t.hour()), 2);
        made.push(b':');
        push_digits(&mut made, u64::from(t.minute()), 2);
        made.push(b':');
        push_digits(&mut made, u64::from(t.second()), 2);
        text.copy_from_slice(&made);
        SECOND.set((secs, text));
    }
    out.extend_from_slice(&text);
    let ms = since.subsec_millis();
    out.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
}

/// A logfmt value that is not bare (see [`text_field`]): quoted, with `"` and `\`
/// escaped and every other byte outside visible ASCII written `\xNN`, so no value can
/// start a field or a line of its own.
#[cold]
fn push_quoted(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    for b in value.bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b' ' => out.push(b' '),
            b if b.is_ascii_graphic() => out.push(b),
            b => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\x");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
    }
    out.push(b'"');
}

/// Whether every byte is one [`BARE`] allows; eight at a time (most of a line's bytes
/// are checked here: host, path, SNI, request id).
fn is_bare(value: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is zero: its high bit set in the result (no false positives once
    // any byte that is >= 0x80 in `x` is excluded, which `above` does first).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut chunks = value.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // Any byte >= 0x7f (DEL and non-ASCII): adding 0x80 - 0x7f = 1 to each byte
        // sets its high bit...
        let above = (x.wrapping_add(ONES) | x) & HIGH;
        // ...or < 0x21 (space and controls)...
        let below = x.wrapping_sub(ONES * 0x21) & !x & HIGH;
        if above | below != 0 {
            return false;
        }
        // ...or one of `"`, `=`, `\`.
        if zero(x ^ (ONES * u64::from(b'"')))
            | zero(x ^ (ONES * u64::from(b'=')))
            | zero(x ^ (ONES * u64::from(b'\\')))
            != 0
        {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| BARE[usize::from(b)])
}

/// Bytes a logfmt value may hold unquoted: visible ASCII but `"`, `=` and `\`.
static BARE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = b'!';
    while b <= b'~' {
        table[b as usize] = !matches!(b, b'"' | b'=' | b'\\');
        b += 1;
    }
    table
};

/// A response body that counts what it passes and sends the log line when it ends or
/// is dropped (the client went away), whichever comes first.
struct Logged {
    inner: Body,
    /// Inline: the body wrapper is boxed already, a second box would be one more
    /// allocation per request.
    record: Option<Record>,
    log: Arc<AccessLog>,
}

impl Logged {
    fn emit(&mut self) {
        if let Some(record) = self.record.take() {
            self.log.send_record(&record);
        }
    }
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(record)) = (frame.data_ref(), self.record.as_mut()) {
                    record.bytes_out += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.emit();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.emit(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::full;

    fn line_of(r: &Record, d: Duration) -> String {
        String::from_utf8(r.line(d)).unwrap()
    }

    /// A sink tests can read.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn record(format: LogFormat) -> Record {
        Record {
            format,
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_765_050_457_123),
            start: Instant::now(),
            site: Some(Arc::from("a.test")),
            client: "203.0.113.7".parse().unwrap(),
            method: Method::POST,
            host: Some("a.test".to_string()),
            path: Some(PathAndQuery::from_static("/p?q=secret")),
            version: Version::HTTP_2,
            status: 201,
            bytes_in: Some(Arc::new(AtomicU64::new(5))),
            bytes_out: 0,
            upstream: UpstreamTrace {
                upstream: Some(http::uri::Authority::from_static("127.0.0.1:3000")),
                head: Some(Duration::from_micros(1500)),
            },
            tls: Some("TLSv1.3"),
            sni: Some(Arc::from("a.test")),
            request_id: RequestId::Kept(http::HeaderValue::from_static("abc")),
            text_head: None,
            text_tail: None,
        }
    }

    #[test]
    fn parts_made_once_per_connection_are_the_same_text() {
        let mut r = record(LogFormat::Text);
        let fields = line_of(&r, Duration::from_millis(2));
        r.text_head = Some(text_head(r.site.as_deref(), r.client).into());
        r.text_tail = Some(text_tail(r.tls, r.sni.as_deref()).into());
        assert_eq!(line_of(&r, Duration::from_millis(2)), fields);
        for version in [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2] {
            assert_eq!(
                proto_field(version),
                format!(" proto={} status=", protocol(version)).as_bytes()
            );
        }
    }

    #[test]
    fn text_and_json_lines_carry_every_field() {
        let mut r = record(LogFormat::Text);
        r.bytes_out = 12;
        let text = line_of(&r, Duration::from_millis(2));
        assert_eq!(
            text,
            "time=2025-12-06T19:47:37.123Z site=a.test client=203.0.113.7 method=POST host=a.test path=/p proto=HTTP/2 status=201 bytes_in=5 bytes_out=12 duration_ms=2.000 upstream=127.0.0.1:3000 upstream_ms=1.500 tls=TLSv1.3 sni=a.test request_id=abc\n"
        );
        let mut r = record(LogFormat::Json);
        r.bytes_out = 12;
        let json = line_of(&r, Duration::from_millis(2));
        assert!(json.ends_with("}\n") && json.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["time"], "2025-12-06T19:47:37.123Z");
        assert_eq!(v["client"], "203.0.113.7");
        assert_eq!(v["status"], 201);
        assert_eq!(v["bytes_in"], 5);
        assert_eq!(v["upstream_ms"], 1.5);
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v.as_object().unwrap().len(), 16);
    }

    #[test]
    fn missing_values_are_dashes_and_odd_ones_cannot_break_the_line() {
        let mut r = record(LogFormat::Text);
        r.site = None;
        r.upstream = UpstreamTrace::default();
        r.host = Some("a b\n=\"x\\".to_string());
        r.path = Some("/é".parse().unwrap());
        let line = line_of(&r, Duration::ZERO);
        assert!(line.contains(" site=- "), "{line}");
        assert!(line.contains(" upstream=- upstream_ms=- "), "{line}");
        assert!(line.contains(r#" host="a b\x0a=\"x\\" "#), "{line}");
        assert!(line.contains(r#" path="/\xc3\xa9" "#), "{line}");
        assert_eq!(line.matches('\n').count(), 1);
        let mut r = record(LogFormat::Json);
        r.host = Some("a\nb".to_string());
        let line = line_of(&r, Duration::ZERO);
        assert_eq!(line.matches('\n').count(), 1, "{line}");
    }

    #[test]
    fn the_word_at_a_time_check_agrees_with_the_table() {
        let by_table = |v: &[u8]| v.iter().all(|&b| BARE[usize::from(b)]);
        for b in 0..=255u8 {
            for at in 0..8 {
                for fill in [b'a', b'~', b'!', b'>', b'<'] {
                    let mut v = [fill; 11];
                    v[at] = b;
                    assert_eq!(is_bare(&v), by_table(&v), "byte {b:#x} at {at}");
                    let mut w = [fill; 8];
                    w[at] = b;
                    assert_eq!(is_bare(&w), by_table(&w), "byte {b:#x} at {at}");
                    // Two odd bytes in one word (a borrow between lanes).
                    w[(at + 1) % 8] = 0x80;
                    assert_eq!(is_bare(&w), by_table(&w), "byte {b:#x} at {at}");
                }
            }
        }
    }

    #[test]
    fn numbers_addresses_and_times_are_written_by_hand_correctly() {
        let mut out = Vec::new();
        for n in [0, 7, 10, 999, 1000, u64::MAX] {
            out.clear();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        out.clear();
        push_millis(&mut out, Duration::from_micros(12_034_005));
        assert_eq!(out, b"12034.005");
        for ip in ["0.0.0.0", "203.0.113.255", "2001:db8::1", "::ffff:10.0.0.1"] {
            out.clear();
            push_ip(&mut out, ip.parse().unwrap());
            assert_eq!(out, ip.as_bytes());
        }
        // The cached second is not reused for another second, nor for another day.
        for (ms, want) in [
            (1_765_050_457_123, "2025-12-06T19:47:37.123Z"),
            (1_765_050_457_999, "2025-12-06T19:47:37.999Z"),
            (1_765_050_458_000, "2025-12-06T19:47:38.000Z"),
            (951_782_400_001, "2000-02-29T00:00:00.001Z"),
        ] {
            out.clear();
            push_time(&mut out, SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
            assert_eq!(out, want.as_bytes());
        }
    }

    #[tokio::test]
    async fn the_line_goes_out_when_the_body_ends_and_once() {
        let sink = Shared::default();
        let log = Arc::new(AccessLog::to(
            Box::new(sink.clone()),
            Arc::new(Metrics::new()),
        ));
        let response = Response::new(full("hello"));
        let response = record(LogFormat::Text).finish(response, log.clone());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
        log.drain(Duration::from_secs(10)).await;
        let written = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(written.lines().count(), 1, "{written}");
        assert!(written.contains(" status=200 "), "{written}");
        assert!(written.contains(" bytes_out=5 "), "{written}");
    }

    #[tokio::test]
    async fn a_dropped_body_is_logged_with_what_was_sent() {
        let sink = Shared::default();
        let log = Arc::new(AccessLog::to(
            Box::new(sink.clone()),
            Arc::new(Metrics::new()),
        ));
        let response = record(LogFormat::Json).finish(Response::new(full("x")), log.clone());
        drop(response);
        log.drain(Duration::from_secs(10)).await;
        let written = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(written.trim()).unwrap();
        assert_eq!(v["bytes_out"], 0);
    }

    #[tokio::test]
    async fn a_request_dropped_before_its_head_is_logged_as_499() {
        let sink = Shared::default();
        let log = Arc::new(AccessLog::to(
            Box::new(sink.clone()),
            Arc::new(Metrics::new()),
        ));
        let mut pending = Pending::new(record(LogFormat::Text), &log);
        pending.record().unwrap().path = Some(PathAndQuery::from_static("/gone"));
        drop(pending);
        let off = Pending::default();
        drop(off);
        log.drain(Duration::from_secs(10)).await;
        let written = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(written.lines().count(), 1, "{written}");
        assert!(written.contains(" path=/gone "), "{written}");
        assert!(written.contains(" status=499 "), "{written}");
    }

    /// A writer that never returns: the queue fills, and requests go on, counted.
    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        struct Stuck(std::sync::mpsc::Receiver<()>);
        impl Write for Stuck {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.recv();
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (release, stuck) = std::sync::mpsc::channel();
        let metrics = Arc::new(Metrics::new());
        let log = AccessLog::to(Box::new(Stuck(stuck)), metrics.clone());
        // The writer takes at most one queue's worth before it is stuck.
        for _ in 0..2 * QUEUE + 10 {
            log.send(b"xx\n");
        }
        assert!(
            metrics.access_log_drops() >= 10,
            "{}",
            metrics.access_log_drops()
        );
        assert!(
            metrics
                .render()
                .contains("portico_access_log_dropped_total ")
        );
        drop(release);
    }
}
