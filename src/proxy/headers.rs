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

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};

use super::h1codec::{encode_head, is_field_value, write_field};
use crate::config::HeaderEdits;
use crate::request_id::{NewId, X_REQUEST_ID};

static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
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

/// Puts an upgrade back on headers that were stripped of hop-by-hop fields: a request
/// that asks for one, a 101 that grants it.
pub(crate) fn restore_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
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

/// The forwarding headers of one request on its way upstream (see the module doc):
/// `X-Forwarded-For`, `X-Real-IP`, `Forwarded` by trust, `X-Forwarded-Proto`,
/// `X-Forwarded-Host` and a new `X-Request-Id` replaced, `Via` appended. Set in the
/// request's map ([`Forwarding::insert`]) or written straight into an HTTP/1.1 head
/// ([`http1_head`]): the same fields either way.
pub(crate) struct Forwarding<'a> {
    /// The TCP peer, or the source a PROXY protocol header gave.
    pub peer: IpAddr,
    /// The peer is in `listen.trusted_proxies`.
    pub trusted: bool,
    /// [`client_address`]'s answer.
    pub client: IpAddr,
    /// `X-Forwarded-Proto`.
    pub proto: &'static str,
    /// The host the client asked for, as written: `X-Forwarded-Host`.
    pub original_host: &'a str,
    /// The client's HTTP version, for `Via`.
    pub version: Version,
    /// An id made for this request, to replace every `X-Request-Id` the client sent;
    /// `None` keeps the client's.
    pub request_id: Option<NewId>,
}

impl Forwarding<'_> {
    /// Sets the forwarding headers in `headers`.
    pub(crate) fn insert(&self, headers: &mut HeaderMap) {
        let peer = self.peer.to_canonical();
        let mut peer_text = Vec::with_capacity(15);
        write_ip(&mut peer_text, peer);
        let peer_value = ip_value(&peer_text);
        // From an untrusted peer the client is the peer: one value for both headers.
        let real_ip = if self.client == peer {
            peer_value.clone()
        } else {
            let mut text = Vec::with_capacity(15);
            write_ip(&mut text, self.client);
            ip_value(&text)
        };
        if self.trusted {
            let xff = join_with(headers, &X_FORWARDED_FOR, &peer_text);
            headers.insert(X_FORWARDED_FOR.clone(), xff);
        } else {
            headers.remove(&FORWARDED);
            // One value: `insert` replaces every X-Forwarded-For the client sent.
            headers.insert(X_FORWARDED_FOR.clone(), peer_value);
        }
        headers.insert(X_REAL_IP.clone(), real_ip);
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(self.proto),
        );
        match HeaderValue::from_str(self.original_host) {
            Ok(v) => {
                headers.insert(X_FORWARDED_HOST.clone(), v);
            }
            // The host came from a header value or a parsed URI, so it is a valid value;
            // if not, saying nothing beats saying something wrong.
            Err(_) => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
        let via = self.via();
        // Most requests come without a `Via`: then ours is the whole value, no copy.
        let via = if headers.contains_key(header::VIA) {
            join_with(headers, &header::VIA, via.as_bytes())
        } else {
            HeaderValue::from_static(via)
        };
        headers.insert(header::VIA, via);
        if let Some(id) = self.request_id {
            headers.insert(X_REQUEST_ID.clone(), id.to_value());
        }
    }

    /// `Via`'s entry for this hop.
    fn via(&self) -> &'static str {
        match self.version {
            Version::HTTP_09 => "0.9 portico",
            Version::HTTP_10 => "1.0 portico",
            Version::HTTP_2 => "2 portico",
            Version::HTTP_3 => "3 portico",
            _ => "1.1 portico",
        }
    }

    /// Whether a header of the client's goes upstream as it is; the values of those
    /// that are joined with portico's (a trusted `X-Forwarded-For`, `Via`) are
    /// gathered in `joins`.
    fn keeps(&self, name: &HeaderName, value: &HeaderValue, joins: &mut Joins) -> bool {
        if name == header::HOST {
            false
        } else if name == header::VIA {
            push_joined(&mut joins.via, value);
            false
        } else if name == X_FORWARDED_FOR {
            if self.trusted {
                push_joined(&mut joins.xff, value);
            }
            false
        } else if name == X_REAL_IP || name == X_FORWARDED_PROTO || name == X_FORWARDED_HOST {
            false
        } else if name == FORWARDED {
            self.trusted
        } else if name == X_REQUEST_ID {
            self.request_id.is_none()
        } else {
            true
        }
    }

    /// Writes the forwarding header lines, after the client's headers were written
    /// with [`Forwarding::keeps`] gathering `joins`.
    fn write(&self, joins: Joins, out: &mut Vec<u8>) {
        // The joined values go in before ours, with no copy in between: most requests
        // have none, and then no list was ever allocated.
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(&joins.xff);
        write_ip(out, self.peer.to_canonical());
        out.extend_from_slice(b"\r\nx-real-ip: ");
        write_ip(out, self.client);
        out.extend_from_slice(b"\r\n");
        write_field(out, "x-forwarded-proto", self.proto.as_bytes());
        if is_field_value(self.original_host.as_bytes()) {
            write_field(out, "x-forwarded-host", self.original_host.as_bytes());
        }
        out.extend_from_slice(b"via: ");
        out.extend_from_slice(&joins.via);
        out.extend_from_slice(self.via().as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(id) = self.request_id {
            write_field(out, "x-request-id", id.as_bytes());
        }
    }
}

/// The client's values of the headers portico appends to.
#[derive(Default)]
struct Joins {
    xff: Vec<u8>,
    via: Vec<u8>,
}

/// Adds a value to a `, `-joined list: trimmed, and dropped when empty or not visible
/// ASCII (rather than passed on garbled).
fn push_joined(list: &mut Vec<u8>, value: &HeaderValue) {
    if let Ok(v) = value.to_str() {
        let v = v.trim();
        if !v.is_empty() {
            list.extend_from_slice(v.as_bytes());
            list.extend_from_slice(b", ");
        }
    }
}

/// The head of a request to an HTTP/1.1 upstream, up to its framing (which the
/// upstream client adds once it knows the body): the request line, the client's
/// headers (already stripped of hop-by-hop ones), `Host` (`host`, the host the
/// upstream is asked for), the forwarding headers, and the upgrade when `upgrade`.
///
/// A route's header edits (`edits`) have the last word, so with edits the headers are
/// set in the map, edited, and written from it; without, the forwarding headers are
/// written straight into the head as the client's are copied, and the map is not
/// touched: its inserts (hashing, growing the map, a value allocated for each) cost
/// 3.1k instructions of the 39k of a proxied request (scripts/profile). Both ways
/// write the same fields (tests and the `headers` fuzz target hold them to it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn http1_head(
    method: &Method,
    target: &str,
    mut headers: HeaderMap,
    forwarding: &Forwarding,
    edits: Option<&HeaderEdits>,
    host: &str,
    upgrade: Option<&HeaderValue>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(320 + headers.len() * 48);
    let Some(edits) = edits else {
        let mut joins = Joins::default();
        encode_head(
            method,
            target,
            &headers,
            |name, value| forwarding.keeps(name, value, &mut joins),
            &mut out,
        );
        if is_field_value(host.as_bytes()) {
            write_field(&mut out, "host", host.as_bytes());
        }
        forwarding.write(joins, &mut out);
        if let Some(upgrade) = upgrade {
            write_field(&mut out, "connection", b"upgrade");
            write_field(&mut out, "upgrade", upgrade.as_bytes());
        }
        return out;
    };
    forwarding.insert(&mut headers);
    apply_edits(&mut headers, edits);
    match HeaderValue::from_str(host) {
        Ok(v) => {
            headers.insert(header::HOST, v);
        }
        Err(_) => {
            headers.remove(header::HOST);
        }
    }
    if let Some(upgrade) = upgrade {
        restore_upgrade(&mut headers, upgrade.clone());
    }
    encode_head(method, target, &headers, |_, _| true, &mut out);
    out
}

/// The header lines [`http1_head`] writes straight and through the map (as it does
/// for a route with edits, here none), each sorted: the two must be equal for any
/// request (tests and the `headers` fuzz target).
#[cfg(any(test, fuzzing))]
pub(crate) fn http1_head_both_ways(
    headers: &HeaderMap,
    forwarding: &Forwarding,
    host: &str,
    upgrade: Option<&HeaderValue>,
) -> [Vec<Vec<u8>>; 2] {
    let no_edits = HeaderEdits::default();
    [None, Some(&no_edits)].map(|edits| {
        let head = http1_head(
            &Method::GET,
            "/",
            headers.clone(),
            forwarding,
            edits,
            host,
            upgrade,
        );
        let mut lines: Vec<Vec<u8>> = head
            .split(|&b| b == b'\n')
            .skip(1)
            .map(|l| l.to_vec())
            .collect();
        lines.sort();
        lines
    })
}

/// Writes the address as `Display` does; IPv4 without the formatting machinery, which
/// cost ~1.3k instructions per request (scripts/profile), ten times this.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        use std::io::Write as _;
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{ip}");
        return;
    };
    // On the stack first: one copy into `out`, not a capacity check per digit.
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    out.extend_from_slice(&text[..len]);
}

/// An address as a header value (always valid: digits, dots, colons, hex).
fn ip_value(ip: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(ip).unwrap_or(HeaderValue::from_static("unknown"))
}

/// All values of `name` joined by `, ` with `last` appended, as one value.
fn join_with(headers: &HeaderMap, name: &HeaderName, last: &[u8]) -> HeaderValue {
    let mut out = Vec::new();
    for v in headers.get_all(name) {
        push_joined(&mut out, v);
    }
    out.extend_from_slice(last);
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| {
        HeaderValue::from_bytes(last).unwrap_or(HeaderValue::from_static("unknown"))
    })
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
        Forwarding {
            peer,
            trusted: true,
            client,
            proto: "https",
            original_host: "A.test:8443",
            version: Version::HTTP_2,
            request_id: None,
        }
        .insert(&mut h);
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
        Forwarding {
            peer,
            trusted: false,
            client,
            proto: "https",
            original_host: "a.test",
            version: Version::HTTP_11,
            request_id: None,
        }
        .insert(&mut h);
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
    fn ip_addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut text = Vec::new();
            write_ip(&mut text, ip);
            assert_eq!(text, ip.to_string().as_bytes());
        }
    }

    fn forwarding(trusted: bool, id: Option<NewId>) -> Forwarding<'static> {
        Forwarding {
            peer: if trusted {
                "10.0.0.1".parse().unwrap()
            } else {
                "192.0.2.1".parse().unwrap()
            },
            trusted,
            client: "5.6.7.8".parse().unwrap(),
            proto: "https",
            original_host: "A.test:8443",
            version: Version::HTTP_2,
            request_id: id,
        }
    }

    #[test]
    fn an_http1_head_gets_the_forwarding_headers_written_straight() {
        let h = map(&[
            ("host", "spoofed.test"),
            ("user-agent", "t"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "9.9.9.9"),
            ("x-real-ip", "1.2.3.4"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.test"),
            ("forwarded", "for=1.2.3.4"),
            ("via", "1.0 corp"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("x-request-id", "from-client"),
            ("content-length", "3"),
        ]);
        let id = crate::request_id::generate();
        let head = http1_head(
            &Method::POST,
            "/p?q",
            h.clone(),
            &forwarding(false, Some(id)),
            None,
            "up.test",
            None,
        );
        assert_eq!(
            String::from_utf8(head).unwrap(),
            format!(
                "POST /p?q HTTP/1.1\r\nuser-agent: t\r\ncookie: a=1; b=2\r\nhost: up.test\r\n\
                 x-forwarded-for: 192.0.2.1\r\nx-real-ip: 5.6.7.8\r\nx-forwarded-proto: https\r\n\
                 x-forwarded-host: A.test:8443\r\nvia: 1.0 corp, 2 portico\r\nx-request-id: {}\r\n",
                std::str::from_utf8(id.as_bytes()).unwrap()
            )
        );
        // A trusted peer: the chain and `Forwarded` kept, the client's id kept.
        let head = http1_head(
            &Method::GET,
            "/",
            h,
            &forwarding(true, None),
            None,
            "up.test",
            Some(&HeaderValue::from_static("websocket")),
        );
        let head = String::from_utf8(head).unwrap();
        for line in [
            "x-forwarded-for: 1.2.3.4, 9.9.9.9, 10.0.0.1\r\n",
            "forwarded: for=1.2.3.4\r\n",
            "x-request-id: from-client\r\n",
            "connection: upgrade\r\nupgrade: websocket\r\n",
        ] {
            assert!(head.contains(line), "{line:?} not in {head:?}");
        }
        assert!(
            !head.contains("spoofed") && !head.contains("evil"),
            "{head}"
        );
    }

    /// The straight way and the map's (taken for routes with header edits) write the
    /// same fields, whatever the client sent.
    #[test]
    fn an_http1_head_is_the_same_straight_or_through_the_map() {
        let inputs = [
            map(&[]),
            map(&[("host", "a.test"), ("accept", "*/*")]),
            map(&[
                ("x-forwarded-for", " 1.2.3.4 "),
                ("x-forwarded-for", ""),
                ("x-forwarded-for", "caf\u{e9}"),
                ("via", "1.1 a"),
                ("via", "1.1 b"),
                ("forwarded", "for=x"),
                ("x-real-ip", "1"),
                ("x-request-id", "a"),
                ("x-request-id", "b"),
                ("cookie", "a=1"),
                ("x-other", "1"),
                ("cookie", "b=2"),
                ("transfer-encoding", "chunked"),
            ]),
        ];
        let id = crate::request_id::generate();
        for h in &inputs {
            for trusted in [false, true] {
                for id in [None, Some(id)] {
                    for host in ["up.test", "bad\u{1}host", ""] {
                        for upgrade in [None, Some(&HeaderValue::from_static("websocket"))] {
                            let mut f = forwarding(trusted, id);
                            f.original_host = host;
                            let [straight, mapped] = http1_head_both_ways(h, &f, host, upgrade);
                            assert_eq!(straight, mapped, "{h:?} trusted={trusted} {id:?} {host:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn connection_token_lookup() {
        let h = map(&[("connection", "keep-alive, Upgrade")]);
        assert!(connection_has(&h, "upgrade"));
        assert!(!connection_has(&h, "close"));
    }
}
