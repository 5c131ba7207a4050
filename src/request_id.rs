//! Request ids: the `X-Request-Id` that ties one request's access log line to its
//! upstream's logs. The proxy calls [`of`] on every request before routing; the id
//! then goes upstream with the forwarding headers and into the access log line.
//!
//! Decisions (docs/requests.md states them for users):
//! - a client's (or load balancer's) id is kept when the request carries exactly one
//!   `X-Request-Id` and it is *sane*: 1 to [`MAX_LEN`] bytes of visible ASCII (`!` to
//!   `~`), so it can break neither a log line nor a header. Anything else (two values,
//!   an empty or oversized one, spaces, control characters, bytes above 0x7E) is
//!   replaced, never logged or forwarded as sent: an id is a log field, and a log field
//!   a client writes is a log injection waiting to happen;
//! - a new id is 128 random bits in lowercase hex, 32 characters like nginx's
//!   `$request_id`, from a fast generator per thread seeded from aws-lc's RNG.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The header.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest incoming id kept, in bytes.
pub(crate) const MAX_LEN: usize = 200;

/// Whether a client's id may be kept as it is: 1 to [`MAX_LEN`] bytes, each a visible
/// ASCII character (no space, no control character, nothing above `~`).
pub(crate) fn is_sane(value: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&value.len()) && value.iter().all(|b| (b'!'..=b'~').contains(b))
}

/// A new id: 128 random bits as 32 lowercase hex digits.
pub(crate) fn generate() -> NewId {
    let bytes = [next_u64().to_be_bytes(), next_u64().to_be_bytes()];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    for (i, b) in bytes.iter().flatten().enumerate() {
        text[2 * i] = HEX[usize::from(b >> 4)];
        text[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    NewId(text)
}

/// wyrand, one state per thread, seeded from aws-lc's RNG when the thread makes its
/// first id. aws-lc's RNG for every id cost 2,300 instructions, 4% of a whole proxied
/// request (scripts/profile); this costs a few. Ids need to be unique and not
/// guessable from outside, not secret: they are written to logs and sent upstream.
fn next_u64() -> u64 {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(seed());
    }
    STATE.with(|state| {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    // aws-lc's RNG fails only when the operating system has no entropy to give; then
    // the seed is the time in nanoseconds and the thread: ids stay unique.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (nanos as u64).to_be_bytes();
    }
    u64::from_be_bytes(bytes)
}

/// An id made here: 32 lowercase hex digits, kept as bytes. Most go straight into an
/// HTTP/1.1 upstream's request head; a `HeaderValue` (an allocation, and a check of
/// every byte) is made only where a header map needs one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct NewId([u8; 32]);

impl NewId {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn as_str(&self) -> &str {
        // Hex digits: always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub(crate) fn to_value(self) -> HeaderValue {
        HeaderValue::from_bytes(&self.0).expect("hex digits are a valid header value")
    }
}

impl std::fmt::Debug for NewId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request's id.
#[derive(Debug, Clone)]
pub(crate) enum RequestId {
    /// The request's one sane `X-Request-Id`: it goes upstream as it came.
    Kept(HeaderValue),
    /// Made here: it replaces every `X-Request-Id` the request carries, on its way
    /// upstream (`proxy::headers::Forwarding`).
    New(NewId),
}

impl RequestId {
    /// The id's text: visible ASCII either way.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Kept(value) => value.as_bytes(),
            RequestId::New(id) => id.as_bytes(),
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            RequestId::Kept(value) => value.to_str().ok(),
            RequestId::New(id) => Some(id.as_str()),
        }
    }

    /// The id, if it was made here.
    pub(crate) fn new_id(&self) -> Option<NewId> {
        match self {
            RequestId::Kept(_) => None,
            RequestId::New(id) => Some(*id),
        }
    }
}

/// The request's id: the one `X-Request-Id` it carries when that is sane, else a new
/// one. `headers` is not changed: the id goes upstream with the forwarding headers.
pub(crate) fn of(headers: &HeaderMap) -> RequestId {
    let mut values = headers.get_all(&X_REQUEST_ID).iter();
    if let (Some(first), None) = (values.next(), values.next())
        && is_sane(first.as_bytes())
    {
        return RequestId::Kept(first.clone());
    }
    RequestId::New(generate())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(X_REQUEST_ID.clone(), HeaderValue::from_bytes(v).unwrap());
        }
        headers
    }

    #[test]
    fn a_sane_id_is_kept() {
        let id = of(&with(&[b"abc-123_XYZ.{}"]));
        assert_eq!(id.as_bytes(), b"abc-123_XYZ.{}");
        assert!(id.new_id().is_none());
        let longest = vec![b'a'; MAX_LEN];
        let id = of(&with(&[&longest]));
        assert_eq!(id.as_bytes(), &longest[..]);
        assert!(id.new_id().is_none());
    }

    /// Log injection: whatever an attacker puts in the header never comes out.
    #[test]
    fn oversized_control_spaced_or_repeated_ids_are_replaced() {
        let oversized = vec![b'a'; MAX_LEN + 1];
        let cases: [&[&[u8]]; 6] = [
            &[&oversized],
            &[b"a\tb"],
            &[b"fake\" status=200"],
            &[b"caf\xc3\xa9"],
            &[b""],
            &[b"one", b"two"],
        ];
        for values in cases {
            let id = of(&with(values));
            assert!(id.new_id().is_some(), "{values:?}");
            assert_eq!(id.as_bytes().len(), 32, "{values:?}");
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
            assert_eq!(id.new_id().unwrap().to_value().as_bytes(), id.as_bytes());
        }
    }

    #[test]
    fn a_missing_id_is_created_fresh_each_time() {
        let (x, y) = (of(&HeaderMap::new()), of(&HeaderMap::new()));
        assert!(x.new_id().is_some() && y.new_id().is_some());
        assert_ne!(x.as_bytes(), y.as_bytes());
        assert!(is_sane(x.as_bytes()));
    }

    #[test]
    fn ids_from_several_threads_are_all_different() {
        let make = || (0..5000).map(|_| generate()).collect::<Vec<_>>();
        let other = std::thread::spawn(make);
        let mut all = make();
        all.extend(other.join().unwrap());
        let count = all.len();
        all.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        all.dedup();
        assert_eq!(all.len(), count);
    }
}
