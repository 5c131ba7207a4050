//! Header rewriting for one hop: what a proxy must drop (hop-by-hop headers, RFC 9110
//! §7.6.1) in both directions, and what it adds to requests (`X-Forwarded-*`, `Via`).
//!
//! Forwarding headers are what upstreams base access rules and logs on, so a client
//! cannot write them for portico:
//! - from a peer outside `listen.trusted_proxies`, `X-Forwarded-For` is replaced by the
//!   peer's address, `X-Real-IP` and `Forwarded` are dropped, and `X-Real-IP` is set to
//!   the peer's address;
//! - from a trusted peer (a load balancer, a CDN), the incoming `X-Forwarded-For` chain
//!   is kept and the peer appended (nginx's `$proxy_add_x_forwarded_for`), `Forwarded`
//!   is kept, and `X-Real-IP` is the client: the rightmost address of the chain that is
//!   not itself trusted (nginx's `real_ip_recursive on`);
//! - the peer is the address PROXY protocol gave, when the connection carried one.
//!
//! Decisions (docs/requests.md states them for users):
//! - `X-Forwarded-Proto` and `X-Forwarded-Host` are always replaced, because portico,
//!   the edge, knows them first hand;
//! - `Via` is appended (`1.1 portico`, `2 portico`, by the client's HTTP version) on
//!   requests only, as Caddy does;
//! - `TE` survives only as `TE: trailers` (gRPC needs it end to end).

use std::net::{IpAddr, SocketAddr};

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::HeaderEdits;

static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub(crate) static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// Never forwarded: an `Upgrade: h2c` request's settings are for the hop it was sent on.
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
/// What never crosses a hop, besides the headers `Connection` names.
static HOP_BY_HOP: [&HeaderName; 10] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHORIZATION,
    &header::PROXY_AUTHENTICATE,
    &HTTP2_SETTINGS,
];

/// True when the `Connection` header lists `token` (case-insensitive, comma list, any
/// number of `Connection` headers).
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`,
/// `Proxy-Connection`, `TE` (kept as `TE: trailers` on requests that ask for trailers),
/// `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-Authorization`, `Proxy-Authenticate`.
/// The caller puts `Connection: upgrade` and `Upgrade` back for an upgrade.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests and responses carry none, and most of the rest one or two
    // (`Connection: keep-alive`): one pass over the names, then a removal only for those
    // present, beats removing all ten, each removal hashing its name (scripts/profile:
    // ~1k instructions per proxied request for responses with `Connection`).
    let present = headers
        .keys()
        .filter_map(|n| HOP_BY_HOP.iter().position(|h| *h == n))
        .fold(0u16, |set, i| set | 1 << i);
    if present == 0 {
        return;
    }
    // Headers named by `Connection` are hop-by-hop too. Collect first: names borrow
    // from the map.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let wants_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for name in named {
        // `wants_trailers` was read first, so `Connection: TE` (which RFC 9110 asks a
        // client sending TE to add) does not lose the trailers request. Headers we add
        // come after stripping, so a client cannot name them away.
        headers.remove(&name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & 1 << i != 0 {
            headers.remove(*name);
        }
    }
    if wants_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// Applies a route's header edits (Gateway API `RequestHeaderModifier` and
/// `ResponseHeaderModifier`): `set` replaces every line of a header, `add` appends a
/// line, `remove` drops it, in that order. Called after portico's own handling, so an
/// edit has the last word on end-to-end headers, but never on [`editable`]'s others.
pub(crate) fn apply_edits(headers: &mut HeaderMap, edits: &HeaderEdits) {
    for (name, value) in edits.set.iter().filter(|(name, _)| editable(name)) {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in edits.add.iter().filter(|(name, _)| editable(name)) {
        headers.append(name.clone(), value.clone());
    }
    for name in edits.remove.iter().filter(|name| editable(name)) {
        headers.remove(name);
    }
}

/// Whether a route's header edits may touch `name`. Not the hop-by-hop headers,
/// `Content-Length` and `Host`: they frame the message or belong to the connection
/// (a `Connection` or `Transfer-Encoding` written into a request is request smuggling
/// waiting for an upstream that believes it), and the Host is `URLRewrite`'s. Such an
/// edit is skipped without a word: the route is served, without that edit.
pub(crate) fn editable(name: &HeaderName) -> bool {
    !is_hop_by_hop(name) && name != header::HOST && name != header::CONTENT_LENGTH
}

/// The client as far as portico can tell: `peer` (the TCP peer, or the PROXY
/// protocol source) when it is not trusted; else the rightmost address of the request's
/// `X-Forwarded-For` that is not trusted, or the leftmost one when all are. An entry
/// that is not an address ends the walk at the last address read.
pub(crate) fn client_address(
    headers: &HeaderMap,
    peer: IpAddr,
    trusts: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusts(peer) {
        return peer;
    }
    let mut client = peer;
    let values: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Some(ip) = parse_forwarded_ip(entry.trim()) else {
            break;
        };
        client = ip;
        if !trusts(ip) {
            break;
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, optionally with a port (`[v6]:port`,
/// `v4:port`).
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| e.parse::<IpAddr>().ok())
}

/// Sets the forwarding headers of a request on its way upstream (see the module doc):
/// `X-Forwarded-For`, `X-Real-IP`, `Forwarded` by trust, `X-Forwarded-Proto` and
/// `X-Forwarded-Host` replaced, `Via` appended. `client` is [`client_address`]'s answer.
pub(crate) fn add_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    trusted: bool,
    client: IpAddr,
    proto: &'static str,
    original_host: &str,
    version: Version,
) {
    let peer = peer.to_canonical();
    let peer_text = ip_text(peer);
    let peer_value = ip_value(&peer_text);
    // From an untrusted peer the client is the peer: one value for both headers.
    let real_ip = if client == peer {
        peer_value.clone()
    } else {
        ip_value(&ip_text(client))
    };
    if trusted {
        let xff = join_with(headers, &X_FORWARDED_FOR, &peer_text);
        headers.insert(X_FORWARDED_FOR.clone(), xff);
    } else {
        headers.remove(&FORWARDED);
        // One value: `insert` replaces every X-Forwarded-For the client sent.
        headers.insert(X_FORWARDED_FOR.clone(), peer_value);
    }
    headers.insert(X_REAL_IP.clone(), real_ip);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    match HeaderValue::from_str(original_host) {
        Ok(v) => {
            headers.insert(X_FORWARDED_HOST.clone(), v);
        }
        // The host came from a header value or a parsed URI, so it is a valid value;
        // if not, saying nothing beats saying something wrong.
        Err(_) => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
    let via = match version {
        Version::HTTP_09 => "0.9 portico",
        Version::HTTP_10 => "1.0 portico",
        Version::HTTP_2 => "2 portico",
        Version::HTTP_3 => "3 portico",
        _ => "1.1 portico",
    };
    // Most requests come without a `Via`: then ours is the whole value, no copy.
    let via = if headers.contains_key(header::VIA) {
        join_with(headers, &header::VIA, via)
    } else {
        HeaderValue::from_static(via)
    };
    headers.insert(header::VIA, via);
}

/// The address as `Display` writes it; IPv4 without the formatting machinery, which
/// cost ~1.3k instructions per request (scripts/profile), ten times this.
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

/// An address as a header value (always valid: digits, dots, colons, hex).
fn ip_value(ip: &str) -> HeaderValue {
    HeaderValue::from_str(ip).unwrap_or(HeaderValue::from_static("unknown"))
}

/// All values of `name` joined by `, ` with `last` appended, as one value.
fn join_with(headers: &HeaderMap, name: &HeaderName, last: &str) -> HeaderValue {
    let mut out = String::new();
    for v in headers.get_all(name) {
        // A value that is not visible ASCII is dropped rather than passed on garbled.
        if let Ok(v) = v.to_str() {
            let v = v.trim();
            if !v.is_empty() {
                out.push_str(v);
                out.push_str(", ");
            }
        }
    }
    out.push_str(last);
    HeaderValue::from_str(&out).unwrap_or_else(|_| {
        HeaderValue::from_str(last).unwrap_or(HeaderValue::from_static("unknown"))
    })
}

/// HTTP/2 allows (and HPACK favours) one `cookie` header per cookie; an HTTP/1.1
/// upstream expects one `Cookie` line (RFC 9113 §8.2.3), so join them with `; `.
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_named() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip, trailers;q=1"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ("proxy-authorization", "Basic c2VjcmV0"),
            ("proxy-authenticate", "Basic"),
            ("x-keep", "yes"),
            ("content-length", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["content-length", "te", "x-keep"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn te_without_trailers_goes() {
        let mut h = map(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    fn trusted(ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 10)
    }

    #[test]
    fn a_trusted_peer_keeps_the_chain_and_names_the_client() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8, 10.0.0.9"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.test"),
            ("forwarded", "for=5.6.7.8"),
            ("x-real-ip", "9.9.9.9"),
            ("via", "1.0 corp"),
        ]);
        let peer: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let client = client_address(&h, peer, trusted);
        assert_eq!(client, "5.6.7.8".parse::<IpAddr>().unwrap());
        add_forwarded(
            &mut h,
            peer,
            true,
            client,
            "https",
            "A.test:8443",
            Version::HTTP_2,
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.0.0.9, 10.0.0.1");
        assert_eq!(h["x-real-ip"], "5.6.7.8");
        assert_eq!(h["forwarded"], "for=5.6.7.8");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "A.test:8443");
        assert_eq!(h["via"], "1.0 corp, 2 portico");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn an_untrusted_peer_cannot_write_forwarding_headers() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
        ]);
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let client = client_address(&h, peer, trusted);
        assert_eq!(client, peer);
        add_forwarded(
            &mut h,
            peer,
            false,
            client,
            "https",
            "a.test",
            Version::HTTP_11,
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-real-ip"], "192.0.2.1");
        assert!(h.get("forwarded").is_none());
    }

    #[test]
    fn the_client_walk_stops_at_garbage_and_when_all_are_trusted() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let h = map(&[("x-forwarded-for", "6.6.6.6, bogus, 10.1.1.1")]);
        assert_eq!(
            client_address(&h, peer, trusted),
            "10.1.1.1".parse::<IpAddr>().unwrap()
        );
        let h = map(&[("x-forwarded-for", "10.2.2.2, [2001:db8::1]:443")]);
        assert_eq!(
            client_address(&h, peer, trusted),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        let h = map(&[("x-forwarded-for", "10.3.3.3, 10.2.2.2")]);
        assert_eq!(
            client_address(&h, peer, trusted),
            "10.3.3.3".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_address(&HeaderMap::new(), peer, trusted), peer);
    }

    #[test]
    fn ip_text_is_display() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn cookies_joined_for_http1() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2");
        let mut h = map(&[("cookie", "a=1")]);
        join_cookies(&mut h);
        assert_eq!(h["cookie"], "a=1");
    }

    #[test]
    fn connection_token_lookup() {
        let h = map(&[("connection", "keep-alive, Upgrade")]);
        assert!(connection_has(&h, "upgrade"));
        assert!(!connection_has(&h, "close"));
    }
}
