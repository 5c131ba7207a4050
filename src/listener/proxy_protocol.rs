//! PROXY protocol (v1 text and v2 binary, as haproxy specifies them): a load balancer
//! that forwards TCP writes the client's address in a header before the client's bytes,
//! so the client address survives a hop that is not HTTP.
//!
//! Read only from `listen.trusted_proxies` when `listen.proxy_protocol` is on, and
//! optional there: a connection from a trusted peer that starts with neither signature
//! is served as it is (a TLS ClientHello starts with 0x16, an HTTP request with a
//! method, so the two never look alike). From any other peer nothing is read, so an
//! untrusted client cannot claim an address.
//!
//! [`parse`] is a pure function of the bytes read so far; [`read`] drives it over a
//! socket and returns the bytes that followed the header for the TLS or HTTP layer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

const V1_PREFIX: &[u8] = b"PROXY ";
/// A v1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Addresses and TLVs after the 16-byte v2 header; more is refused, not buffered.
const V2_MAX_PAYLOAD: usize = 2048;

/// Why a PROXY header was refused; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyHeaderError {
    #[error("malformed PROXY v1 header")]
    BadV1,
    #[error("PROXY v1 header longer than 107 bytes")]
    V1TooLong,
    #[error("unsupported PROXY v2 version or command")]
    BadV2Command,
    #[error("PROXY v2 address block too short for its family")]
    V2Truncated,
    #[error("PROXY v2 header longer than {V2_MAX_PAYLOAD} bytes")]
    V2TooLong,
    #[error("the connection closed inside the PROXY header")]
    Eof,
    #[error("cannot read the PROXY header")]
    Io(#[source] std::io::Error),
}

/// What the bytes read so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Not a PROXY header: serve the bytes as they are.
    NotProxy,
    /// A header has begun; read more.
    Incomplete,
    /// A whole header of `len` bytes. `source` is the client; `None` for `LOCAL` (v2,
    /// the balancer's own health check) and `UNKNOWN` (v1): the peer stays the client.
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
}

/// Reads `buf` (the first bytes of a connection) as a PROXY header.
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    if buf.is_empty() {
        return Ok(Parsed::Incomplete);
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        return if n < V1_PREFIX.len() {
            Ok(Parsed::Incomplete)
        } else {
            parse_v1(buf)
        };
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(Parsed::Incomplete)
        } else {
            parse_v2(buf)
        };
    }
    Ok(Parsed::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyHeaderError::V1TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line =
        std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| ProxyHeaderError::BadV1)?;
    let len = end + 2;
    let fields: Vec<&str> = line.split(' ').collect();
    let source = match fields.as_slice() {
        ["UNKNOWN", ..] => None,
        [family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let src: IpAddr = src.parse().map_err(|_| ProxyHeaderError::BadV1)?;
            let dst: IpAddr = dst.parse().map_err(|_| ProxyHeaderError::BadV1)?;
            let v4 = *family == "TCP4";
            if src.is_ipv4() != v4 || dst.is_ipv4() != v4 {
                return Err(ProxyHeaderError::BadV1);
            }
            let sport = v1_port(sport)?;
            v1_port(dport)?;
            Some(SocketAddr::new(src, sport))
        }
        _ => return Err(ProxyHeaderError::BadV1),
    };
    Ok(Parsed::Header { len, source })
}

/// A v1 port: decimal without sign or leading zeros, 0 to 65535.
fn v1_port(s: &str) -> Result<u16, ProxyHeaderError> {
    let ok = !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if !ok {
        return Err(ProxyHeaderError::BadV1);
    }
    s.parse().map_err(|_| ProxyHeaderError::BadV1)
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let version_command = buf[12];
    let family = buf[13];
    let payload = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if version_command >> 4 != 2 || version_command & 0x0f > 1 {
        return Err(ProxyHeaderError::BadV2Command);
    }
    if payload > V2_MAX_PAYLOAD {
        return Err(ProxyHeaderError::V2TooLong);
    }
    let len = 16 + payload;
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let local = version_command & 0x0f == 0;
    let addresses = &buf[16..len];
    let source = match (local, family >> 4) {
        // LOCAL: the balancer speaking for itself; addresses, if any, are ignored.
        (true, _) => None,
        // AF_INET
        (false, 1) => {
            let a: [u8; 12] = addresses
                .get(..12)
                .and_then(|a| a.try_into().ok())
                .ok_or(ProxyHeaderError::V2Truncated)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
        }
        // AF_INET6
        (false, 2) => {
            let a: [u8; 36] = addresses
                .get(..36)
                .and_then(|a| a.try_into().ok())
                .ok_or(ProxyHeaderError::V2Truncated)?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&a[..16]);
            let ip = Ipv6Addr::from(ip);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        // AF_UNSPEC or AF_UNIX: no client address to report.
        (false, _) => None,
    };
    Ok(Parsed::Header { len, source })
}

/// Reads a PROXY header, if the connection starts with one, from `tcp`. Returns the
/// client address it named (if any) and the bytes read past it, which belong to the
/// TLS or HTTP layer. The caller bounds the time this takes.
pub(crate) async fn read(
    tcp: &mut tokio::net::TcpStream,
) -> Result<(Option<SocketAddr>, Vec<u8>), ProxyHeaderError> {
    let mut buf = Vec::with_capacity(256);
    loop {
        match parse(&buf)? {
            Parsed::NotProxy => return Ok((None, buf)),
            Parsed::Header { len, source } => {
                let rest = buf.split_off(len);
                return Ok((source, rest));
            }
            Parsed::Incomplete => {}
        }
        let mut chunk = [0u8; 512];
        let n = tcp.read(&mut chunk).await.map_err(ProxyHeaderError::Io)?;
        if n == 0 {
            return Err(ProxyHeaderError::Eof);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A connection whose first bytes were already read (past a PROXY header): they are
/// served again before the socket's.
pub(crate) struct Prefixed<T> {
    prefix: Vec<u8>,
    at: usize,
    io: T,
}

impl<T> Prefixed<T> {
    pub(crate) fn new(io: T, prefix: Vec<u8>) -> Self {
        Prefixed { prefix, at: 0, io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

write_through!(Prefixed);

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    #[test]
    fn v1_addresses_and_the_bytes_after() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n\x16\x03\x01";
        assert_eq!(
            parse(h).unwrap(),
            Parsed::Header {
                len: h.len() - 3,
                source: Some("203.0.113.7:51000".parse().unwrap())
            }
        );
        let h = b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n";
        assert_eq!(
            parse(h).unwrap(),
            Parsed::Header {
                len: h.len(),
                source: Some("[2001:db8::1]:1".parse().unwrap())
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap(),
            Parsed::Header {
                len: 15,
                source: None
            }
        );
    }

    #[test]
    fn v2_addresses_local_and_tlvs() {
        let mut a = vec![198, 51, 100, 9, 10, 0, 0, 1];
        a.extend_from_slice(&4321u16.to_be_bytes());
        a.extend_from_slice(&443u16.to_be_bytes());
        a.extend_from_slice(&[0x04, 0x00, 0x01, 0xff]); // a TLV (NOOP)
        let h = v2(1, 0x11, &a);
        assert_eq!(
            parse(&h).unwrap(),
            Parsed::Header {
                len: h.len(),
                source: Some("198.51.100.9:4321".parse().unwrap())
            }
        );
        let h = v2(0, 0x00, &[]);
        assert_eq!(
            parse(&h).unwrap(),
            Parsed::Header {
                len: 16,
                source: None
            }
        );
        let mut a = vec![0u8; 36];
        a[15] = 1;
        a[33] = 80;
        let h = v2(1, 0x21, &a);
        assert_eq!(
            parse(&h).unwrap(),
            Parsed::Header {
                len: 52,
                source: Some("[::1]:80".parse().unwrap())
            }
        );
    }

    #[test]
    fn partial_headers_ask_for_more_and_others_pass() {
        assert_eq!(parse(b"PRO").unwrap(), Parsed::Incomplete);
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4").unwrap(), Parsed::Incomplete);
        assert_eq!(parse(&V2_SIGNATURE[..5]).unwrap(), Parsed::Incomplete);
        assert_eq!(
            parse(&v2(1, 0x11, &[0; 12])[..20]).unwrap(),
            Parsed::Incomplete
        );
        assert_eq!(parse(b"\x16\x03\x01\x02").unwrap(), Parsed::NotProxy);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n").unwrap(), Parsed::NotProxy);
        assert_eq!(parse(b"PRI * HTTP/2.0").unwrap(), Parsed::NotProxy);
        assert_eq!(parse(b"\r\nGET /").unwrap(), Parsed::NotProxy);
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"[..],
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyHeaderError::BadV1)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 120]].concat();
        assert!(matches!(parse(&long), Err(ProxyHeaderError::V1TooLong)));
        assert!(matches!(
            parse(&v2(1, 0x11, &[0; 4])),
            Err(ProxyHeaderError::V2Truncated)
        ));
        assert!(matches!(
            parse(&v2(2, 0x11, &[0; 12])),
            Err(ProxyHeaderError::BadV2Command)
        ));
        let mut h = v2(1, 0x11, &[]);
        h[14..16].copy_from_slice(&4000u16.to_be_bytes());
        assert!(matches!(parse(&h), Err(ProxyHeaderError::V2TooLong)));
    }
}
