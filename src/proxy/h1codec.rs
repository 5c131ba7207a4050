//! The HTTP/1.1 wire format towards upstreams, without I/O: the request head portico
//! writes, the response head it reads and how that response's body is framed, and the
//! chunked decoder. `h1pool` owns the sockets and drives these; the fuzz target
//! `upstream` drives them with arbitrary bytes.
//!
//! Strict where leniency is how smuggling starts (RFC 9112 §6.3, §7.1):
//! - a response with both `Transfer-Encoding` and `Content-Length` is read as chunked,
//!   its `Content-Length` dropped, and its connection never reused;
//! - a `Transfer-Encoding` whose last coding is not `chunked`, a `Content-Length` that
//!   is not one number (or lists two different ones), a chunk size that is not hex or
//!   overflows, a chunk line without CRLF: each is an error, not a guess;
//! - obsolete line folding, a head over [`MAX_HEAD`] bytes or over [`MAX_HEADERS`]
//!   lines: errors.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// The largest response head accepted from an upstream (haproxy's whole buffer is
/// 16 KiB; nginx's `proxy_buffer_size` 4 or 8 KiB).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most header lines in a response head.
pub(crate) const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 1024;
/// The most trailer bytes after the last chunk (read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;

/// Why an upstream's response could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    /// httparse refused the head (bad status line, bad header, folding, too many lines).
    #[error("the upstream's response head is malformed")]
    Head(#[source] httparse::Error),
    /// The head did not end within [`MAX_HEAD`] bytes.
    #[error("the upstream's response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// A header name or value the `http` crate does not accept (a control character).
    #[error("the upstream's response has an invalid header")]
    Header,
    /// `Content-Length` is not one decimal number.
    #[error("the upstream's Content-Length is invalid")]
    ContentLength,
    /// `Transfer-Encoding` does not end in `chunked`: the length is unknowable.
    #[error("the upstream's Transfer-Encoding does not end in chunked")]
    TransferCoding,
    /// A chunk-size line or a chunk's end is not what RFC 9112 §7.1 allows.
    #[error("the upstream's chunked body is malformed")]
    Chunked,
}

/// How a request's body goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Writes a request head: `method target HTTP/1.1`, the headers (lower-case names),
/// and the framing header that `framing` says, in place of any the headers carry.
#[cfg(any(test, fuzzing))]
pub(crate) fn encode_request(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    framing: RequestFraming,
    out: &mut Vec<u8>,
) {
    encode_head(method, target, headers, |_, _| true, out);
    finish_head(method, framing, out);
}

/// Writes the start of a request head: `method target HTTP/1.1` and the header lines
/// of `headers` that `keep` accepts, lower-case, without the framing headers
/// ([`finish_head`] writes those). Several `Cookie` fields become one line joined by
/// `; `, as an HTTP/1.1 server expects (RFC 9113 §8.2.3: HTTP/2 clients send one per
/// cookie). More lines may follow ([`write_field`]) before the head is finished.
pub(crate) fn encode_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    mut keep: impl FnMut(&HeaderName, &HeaderValue) -> bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // A map yields the values of one name one after another, so the cookies of a
    // request are consecutive: the line stays open while they last.
    let mut cookie_open = false;
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || !keep(name, value)
        {
            continue;
        }
        let cookie = name == header::COOKIE;
        if cookie && cookie_open {
            out.extend_from_slice(b"; ");
            out.extend_from_slice(value.as_bytes());
            continue;
        }
        if cookie_open {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        cookie_open = cookie;
        if !cookie {
            out.extend_from_slice(b"\r\n");
        }
    }
    if cookie_open {
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes one header line. `value` must be a valid field value ([`is_field_value`]).
pub(crate) fn write_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether `value` may be written as a field value: what `HeaderValue` accepts
/// (visible ASCII, space, tab and bytes above 0x7F; no other control character).
pub(crate) fn is_field_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
}

/// Ends a head begun by [`encode_head`]: the framing header that `framing` says, and
/// the empty line.
pub(crate) fn finish_head(method: &Method, framing: RequestFraming, out: &mut Vec<u8>) {
    match framing {
        RequestFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(n, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // A method that defines a body says it has none, as hyper and curl do; the
        // others say nothing.
        RequestFraming::Empty if expects_body(method) => {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        RequestFraming::Empty => {}
    }
    out.extend_from_slice(b"\r\n");
}

fn expects_body(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::DELETE
            | Method::OPTIONS
            | Method::TRACE
            | Method::CONNECT
    )
}

/// `n` in decimal, in `buf`.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// The prefix of one chunk of `len` bytes: its size in hex and CRLF.
pub(crate) fn chunk_prefix(len: usize) -> Bytes {
    let mut out = Vec::with_capacity(18);
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(len >> (i * 4)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    /// What [`response_framing`] reads, noted from the lines as they were parsed: the
    /// map is not searched again for it (five lookups and two removals were ~1k
    /// instructions a request, scripts/profile).
    noted: Noted,
}

/// The framing headers of a response head.
#[derive(Debug, Default)]
struct Noted {
    /// `Connection` lists `close`.
    close: bool,
    /// With `Transfer-Encoding`: whether its last coding is `chunked`.
    chunked: Option<bool>,
    /// With `Content-Length`: its one number, or `Err` when a value is not a number or
    /// two differ.
    length: Option<Result<u64, ()>>,
}

/// Parses a response head from the front of `buf` and removes it from there. `None`:
/// the head is not complete yet (read more, unless `buf` already holds [`MAX_HEAD`]).
pub(crate) fn parse_response(buf: &mut BytesMut) -> Result<Option<ResponseHead>, WireError> {
    let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut response, buf, &mut lines)
        .map_err(WireError::Head)?;
    let httparse::Status::Complete(len) = parsed else {
        return if buf.len() >= MAX_HEAD {
            Err(WireError::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    if len > MAX_HEAD {
        return Err(WireError::HeadTooLarge);
    }
    let version = if response.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(WireError::Head(httparse::Error::Status))?;
    // The framing headers, read from the lines before the map is built. `Connection:
    // keep-alive` (nginx's on every response) or `close` speaks of this hop only: it
    // and `Keep-Alive` are not put in the map, so the hop-by-hop pass after
    // (`headers::strip_hop_by_hop`) finds nothing to do on most responses. A
    // `Connection` that names other headers stays for that pass.
    let mut noted = Noted::default();
    let (mut connection, mut persistence_only) = (false, true);
    for h in response.headers.iter() {
        let name = h.name.as_bytes();
        let tokens = || h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii);
        if name.eq_ignore_ascii_case(b"connection") {
            connection = true;
            for t in tokens() {
                let close = t.eq_ignore_ascii_case(b"close");
                noted.close |= close;
                persistence_only &= close || t.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = tokens().rfind(|t| !t.is_empty());
            noted.chunked = match (last, noted.chunked) {
                (Some(t), _) => Some(t.eq_ignore_ascii_case(b"chunked")),
                // A line of no codings leaves the last one as it was.
                (None, before) => Some(before.unwrap_or(false)),
            };
        } else if name.eq_ignore_ascii_case(b"content-length") {
            for part in tokens() {
                noted.length = match (noted.length, parse_decimal(part)) {
                    (Some(Err(())), _) | (_, None) => Some(Err(())),
                    (Some(Ok(l)), Some(n)) if l != n => Some(Err(())),
                    (_, Some(n)) => Some(Ok(n)),
                };
            }
        }
    }
    let drop_persistence = connection && persistence_only;
    // Where each name and value sits in `buf`, so the values can share the head's
    // memory instead of being copied. On the stack: offsets and lengths within a head
    // of at most `MAX_HEAD` (64 KiB) bytes fit in 16 bits, and a `Vec` here was an
    // allocation per response.
    const _: () = assert!(MAX_HEAD <= 1 << 16);
    let base = buf.as_ptr() as usize;
    let mut spans = [[0u16; 4]; MAX_HEADERS];
    let mut count = 0;
    for h in response.headers.iter() {
        if drop_persistence
            && (h.name.eq_ignore_ascii_case("connection")
                || h.name.eq_ignore_ascii_case("keep-alive"))
        {
            continue;
        }
        let offset = |p: *const u8| (p as usize - base) as u16;
        spans[count] = [
            offset(h.name.as_ptr()),
            h.name.len() as u16,
            offset(h.value.as_ptr()),
            h.value.len() as u16,
        ];
        count += 1;
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for [name_at, name_len, value_at, value_len] in
        spans[..count].iter().map(|s| s.map(usize::from))
    {
        let name = HeaderName::from_bytes(&head[name_at..name_at + name_len])
            .map_err(|_| WireError::Header)?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
            .map_err(|_| WireError::Header)?;
        headers.append(name, value);
    }
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        noted,
    }))
}

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseFraming {
    /// No body: a HEAD request, 1xx, 204, 304.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// How the body of `head` (the answer to a `method` request) is framed, and whether
/// the connection can carry another request after it. Removes a `Content-Length` that
/// a chunked response also carries.
pub(crate) fn response_framing(
    head: &mut ResponseHead,
    method: &Method,
) -> Result<(ResponseFraming, bool), WireError> {
    let noted = &head.noted;
    let mut reusable = head.version == Version::HTTP_11 && !noted.close;
    let status = head.status;
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((ResponseFraming::Empty, reusable));
    }
    if let Some(chunked) = noted.chunked {
        if !chunked {
            return Err(WireError::TransferCoding);
        }
        if noted.length.is_some() {
            head.headers.remove(header::CONTENT_LENGTH);
            // Someone on the way may have read the other length: never trust this
            // connection again.
            reusable = false;
        }
        return Ok((ResponseFraming::Chunked, reusable));
    }
    match noted.length {
        Some(Ok(n)) => Ok((ResponseFraming::Length(n), reusable)),
        Some(Err(())) => Err(WireError::ContentLength),
        None => Ok((ResponseFraming::Close, false)),
    }
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// What the chunked decoder found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// Nothing yet: read more into the buffer.
    NeedMore,
    /// The last chunk and its trailers were read: the body is over.
    End,
}

/// The chunked decoder (RFC 9112 §7.1): chunk extensions and trailers are read and
/// dropped.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl Chunked {
    /// Decodes from the front of `buf`, removing what it consumed.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WireError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(WireError::Chunked);
                    }
                    let _ = buf.split_to(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let room = MAX_TRAILERS.saturating_sub(self.trailer_bytes);
                    let Some(line) = take_line(buf, room)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    self.trailer_bytes += line.len() + 2;
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// One CRLF-ended line from the front of `buf` (without the CRLF), or `None` when it
/// is not all there yet; a bare LF, or a line longer than `max`, is an error.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, WireError> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(at) => {
            if at == 0 || buf[at - 1] != b'\r' || at - 1 > max {
                return Err(WireError::Chunked);
            }
            let mut line = buf.split_to(at + 1);
            line.truncate(at - 1);
            Ok(Some(line))
        }
        None if buf.len() > max + 1 => Err(WireError::Chunked),
        None => Ok(None),
    }
}

/// The size of a chunk-size line: hex digits, then nothing or `;` extensions (optional
/// whitespace before the `;`, as RFC 9112 allows).
fn chunk_size(line: &[u8]) -> Result<u64, WireError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(WireError::Chunked);
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') {
        return Err(WireError::Chunked);
    }
    line[..digits].iter().try_fold(0u64, |n, d| {
        let v = (*d as char).to_digit(16).ok_or(WireError::Chunked)?;
        Ok(n << 4 | u64::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> ResponseHead {
        let mut buf = BytesMut::from(text);
        parse_response(&mut buf).unwrap().unwrap()
    }

    fn framing(text: &str, method: Method) -> Result<(ResponseFraming, bool), WireError> {
        response_framing(&mut head(text), &method)
    }

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, bool), WireError> {
        let mut buf = BytesMut::from(input);
        let mut dec = Chunked::default();
        let mut out = Vec::new();
        loop {
            match dec.decode(&mut buf)? {
                Decoded::Data(d) => out.extend_from_slice(&d),
                Decoded::NeedMore => return Ok((out, false)),
                Decoded::End => return Ok((out, true)),
            }
        }
    }

    #[test]
    fn request_head_carries_the_framing_it_is_given() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("a.test"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        headers.insert("x-a", HeaderValue::from_static("1"));
        let mut out = Vec::new();
        encode_request(
            &Method::POST,
            "/p?q",
            &headers,
            RequestFraming::Length(12345),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q HTTP/1.1\r\nhost: a.test\r\nx-a: 1\r\ncontent-length: 12345\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_request(
            &Method::PUT,
            "/",
            &headers,
            RequestFraming::Chunked,
            &mut out,
        );
        assert!(out.ends_with(b"x-a: 1\r\ntransfer-encoding: chunked\r\n\r\n"));
        let mut out = Vec::new();
        encode_request(
            &Method::POST,
            "/",
            &HeaderMap::new(),
            RequestFraming::Empty,
            &mut out,
        );
        assert_eq!(out, b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        let mut out = Vec::new();
        encode_request(
            &Method::GET,
            "/",
            &HeaderMap::new(),
            RequestFraming::Empty,
            &mut out,
        );
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn a_head_joins_cookies_and_leaves_out_what_keep_refuses() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("cookie", "a=1"),
            ("x-a", "1"),
            ("cookie", "b=2"),
            ("x-drop", "1"),
            ("cookie", "c=3"),
            ("transfer-encoding", "chunked"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let mut out = Vec::new();
        encode_head(
            &Method::GET,
            "/",
            &headers,
            |name, _| name != "x-drop",
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\ncookie: a=1; b=2; c=3\r\nx-a: 1\r\n"
        );
        let mut out = Vec::new();
        headers.remove("x-a");
        encode_head(&Method::GET, "/", &headers, |_, _| true, &mut out);
        assert!(out.ends_with(b"cookie: a=1; b=2; c=3\r\nx-drop: 1\r\n"));
        assert!(is_field_value(b"a b\tc\x80"));
        assert!(!is_field_value(b"a\x01") && !is_field_value(b"\x7f"));
    }

    #[test]
    fn numbers_are_written_exactly() {
        for n in [0u64, 9, 10, 99, 100, 65535, u64::MAX] {
            assert_eq!(itoa(n, &mut [0; 20]), n.to_string().as_bytes());
        }
        for n in [1usize, 9, 10, 15, 16, 255, 256, 16384, 0x1234_5678] {
            assert_eq!(&chunk_prefix(n)[..], format!("{n:x}\r\n").as_bytes());
        }
    }

    #[test]
    fn response_head_is_split_off_and_its_values_kept() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: a b\r\nx-a: c\r\n\r\nok\n",
        );
        let h = parse_response(&mut buf).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.version, Version::HTTP_11);
        let xa: Vec<_> = h.headers.get_all("x-a").iter().collect();
        assert_eq!(xa, ["a b", "c"]);
        assert_eq!(&buf[..], b"ok\n");
        // Incomplete, then too large.
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nA: b\r\n");
        assert!(parse_response(&mut buf).unwrap().is_none());
        let mut big = b"HTTP/1.1 200 OK\r\nA: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        assert!(matches!(
            parse_response(&mut BytesMut::from(&big[..])),
            Err(WireError::HeadTooLarge)
        ));
    }

    #[test]
    fn bad_heads_are_refused() {
        for bad in [
            "HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n", // obsolete folding
            "HTTP/1.1 2000 OK\r\n\r\n",              // status
            "HTTP/2 200 OK\r\n\r\n",                 // version
            "HTTP/1.1 200 OK\r\nA b: c\r\n\r\n",     // name
            "HTTP/1.1 200 OK\r\nA: b\0c\r\n\r\n",    // value
        ] {
            assert!(parse_response(&mut BytesMut::from(bad)).is_err(), "{bad:?}");
        }
        let mut many = "HTTP/1.1 200 OK\r\n".to_string();
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("h{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert!(parse_response(&mut BytesMut::from(many.as_str())).is_err());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        use ResponseFraming::*;
        let f = |t: &str| framing(t, Method::GET).unwrap();
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            (Length(5), true)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n"),
            (Length(5), true)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            (Chunked, true)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"),
            (Chunked, true)
        );
        assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n"), (Close, false));
        assert_eq!(f("HTTP/1.1 204 No Content\r\n\r\n"), (Empty, true));
        assert_eq!(
            f("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
            (Empty, true)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: x, Close\r\n\r\n"),
            (Length(5), false)
        );
        assert_eq!(
            f("HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n"),
            (Length(5), false)
        );
        // Persistence is read and taken out; a Connection naming other headers stays
        // for the hop-by-hop pass.
        let mut h = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(
            response_framing(&mut h, &Method::GET).unwrap(),
            (Length(0), true)
        );
        assert!(!h.headers.contains_key(header::CONNECTION));
        assert!(!h.headers.contains_key("keep-alive"));
        let mut h = head(
            "HTTP/1.1 200 OK\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(
            response_framing(&mut h, &Method::GET).unwrap(),
            (Length(0), false)
        );
        assert!(h.headers.contains_key(header::CONNECTION));
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::HEAD).unwrap(),
            (Empty, true)
        );
        // Both lengths: chunked wins, the other is dropped, the connection retired.
        let mut h =
            head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(
            response_framing(&mut h, &Method::GET).unwrap(),
            (Chunked, false)
        );
        assert!(!h.headers.contains_key(header::CONTENT_LENGTH));
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n",
        ] {
            assert!(framing(bad, Method::GET).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chunked_bodies_decode_whole_and_in_pieces() {
        let body = b"4\r\nWiki\r\n5;ext=\"x\"\r\npedia\r\nE \t;a\r\n in\r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\n";
        assert_eq!(
            decode_all(body).unwrap(),
            (b"Wikipedia in\r\n\r\nchunks.".to_vec(), true)
        );
        // Byte by byte: the same data, in order.
        let mut dec = Chunked::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut ended = false;
        for b in body {
            buf.extend_from_slice(&[*b]);
            loop {
                match dec.decode(&mut buf).unwrap() {
                    Decoded::Data(d) => out.extend_from_slice(&d),
                    Decoded::NeedMore => break,
                    Decoded::End => {
                        ended = true;
                        break;
                    }
                }
            }
        }
        assert!(ended);
        assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.");
        // What follows the body stays in the buffer.
        let mut buf = BytesMut::from(&b"1\r\na\r\n0\r\n\r\nHTTP/1.1"[..]);
        let mut dec = Chunked::default();
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"a"))
        );
        assert_eq!(dec.decode(&mut buf).unwrap(), Decoded::End);
        assert_eq!(&buf[..], b"HTTP/1.1");
    }

    #[test]
    fn bad_chunks_are_refused() {
        for bad in [
            &b"x\r\n"[..],            // not hex
            b"\r\n",                  // no size
            b"4\nWiki\r\n0\r\n\r\n",  // bare LF
            b"4\r\nWikiXX0\r\n\r\n",  // no CRLF after the data
            b"11111111111111111\r\n", // 17 digits: overflow
            b"4 x\r\n",               // junk after the size
            b"-1\r\n",
        ] {
            assert!(
                decode_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = b"1;".to_vec();
        long.resize(MAX_CHUNK_LINE + 10, b'a');
        assert!(decode_all(&long).is_err());
        let mut trailers = b"0\r\n".to_vec();
        while trailers.len() < MAX_TRAILERS + 100 {
            trailers.extend_from_slice(b"t: vvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\r\n");
        }
        assert!(decode_all(&trailers).is_err());
        assert_eq!(
            decode_all(b"fffffffffffffff\r\nab").unwrap(),
            (b"ab".to_vec(), false)
        );
    }
}
