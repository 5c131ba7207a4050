//! The header rewrite of a forwarded request: whatever a client sends, no hop-by-hop
//! header survives, and an untrusted client's forwarding headers are replaced.
#![no_main]

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portico::fuzzing::{add_forwarded, client_address, strip_hop_by_hop};

fn trusted(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 10)
}

fuzz_target!(|data: &[u8]| {
    // One header per line, `name: value`; lines that are not valid headers are skipped.
    let (flags, lines) = data.split_first().unwrap_or((&0, &[]));
    let mut headers = HeaderMap::new();
    for line in lines.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let peer: IpAddr = if flags & 1 == 1 {
        "10.0.0.1".parse().unwrap()
    } else {
        "192.0.2.1".parse().unwrap()
    };
    strip_hop_by_hop(&mut headers);
    for hop in ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "http2-settings", "trailer"] {
        assert!(!headers.contains_key(hop), "{hop} survived");
    }
    if let Some(te) = headers.get("te") {
        assert_eq!(te, "trailers");
    }
    let is_trusted = trusted(peer);
    let client = client_address(&headers, peer, trusted);
    if !is_trusted {
        assert_eq!(client, peer);
    }
    add_forwarded(&mut headers, peer, is_trusted, client, "https", "a.test", http::Version::HTTP_11);
    assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(headers.get_all("x-real-ip").iter().count(), 1);
    assert_eq!(headers["x-real-ip"], client.to_string());
    if !is_trusted {
        assert_eq!(headers["x-forwarded-for"], peer.to_string());
        assert!(!headers.contains_key("forwarded"));
    } else {
        let xff = headers["x-forwarded-for"].to_str().unwrap();
        assert!(xff.ends_with(&peer.to_string()), "{xff}");
    }
});
