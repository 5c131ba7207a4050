//! Hosts as clients write them: the `Host` header, HTTP/2 `:authority`, SNI. Two
//! readings:
//!
//! - [`normalize`], lenient, for lookups: lowercase, without `:port`, brackets or a
//!   final dot. A host that is not a name simply matches no site.
//! - [`parse`], strict, for anything that is written back to a client (the port-80
//!   redirect's `Location`): only a host name, an IPv4 address or a bracketed IPv6
//!   address, with an optional port. Userinfo (`localhost@evil.example`), a path, a
//!   query, spaces or any other character are refused, so a Host can never steer a
//!   redirect somewhere else.

/// Why a Host cannot be used as an authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HostError {
    #[error("empty host")]
    Empty,
    #[error("the host has a character that is not part of a host name")]
    BadCharacter,
    #[error("the host is not a valid IPv6 literal")]
    BadIpv6,
    #[error("the port is not a number from 1 to 65535")]
    BadPort,
    #[error("the host name is too long")]
    TooLong,
}

/// A host that passed [`parse`]: lowercased, without brackets or a final dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Authority {
    pub host: String,
    pub port: Option<u16>,
}

impl Authority {
    /// The host as it goes into a URL: IPv6 in brackets.
    pub(crate) fn url_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

/// Lowercases a Host header or SNI value and drops a `:port` suffix (and IPv6 brackets).
pub(crate) fn normalize(host: &str) -> String {
    // What nearly every request carries, a lowercase name with perhaps a port, in one
    // pass: the general reading below searched the text three times (~430 of ~46,700
    // instructions per HTTP/2 request, scripts/profile).
    let mut colon = None;
    for (i, b) in host.bytes().enumerate() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' => {}
            b':' if colon.is_none() => colon = Some(i),
            _ => return normalize_any(host),
        }
    }
    host[..colon.unwrap_or(host.len())]
        .trim_end_matches('.')
        .to_owned()
}

/// [`normalize`] for any text (also the reference its quick reading is fuzzed against).
pub(crate) fn normalize_any(host: &str) -> String {
    let host = host.trim();
    let bare = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap_or(host)
    } else {
        host
    };
    // After the port is gone: `a.test.:443` is `a.test` (found by fuzz/host).
    let bare = bare.trim_end_matches('.');
    // An IPv6 address has many spellings (`0001:db8::1`, `1:DB8:0::1`); sites list the
    // canonical one. Found by fuzz/host.
    if bare.contains(':')
        && let Ok(ip) = bare.parse::<std::net::Ipv6Addr>()
    {
        return ip.to_string();
    }
    bare.to_ascii_lowercase()
}

/// Reads `raw` strictly as `host[:port]`.
pub(crate) fn parse(raw: &str) -> Result<Authority, HostError> {
    if raw.is_empty() {
        return Err(HostError::Empty);
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or(HostError::BadIpv6)?;
        let ip: std::net::Ipv6Addr = inside.parse().map_err(|_| HostError::BadIpv6)?;
        let port = match after {
            "" => None,
            p => Some(port(p.strip_prefix(':').ok_or(HostError::BadCharacter)?)?),
        };
        (ip.to_string(), port)
    } else {
        let (name, port) = match raw.split_once(':') {
            Some((name, p)) => (name, Some(port(p)?)),
            None => (raw, None),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return Err(HostError::Empty);
        }
        if name.len() > 253 {
            return Err(HostError::TooLong);
        }
        // Letters, digits, '-', '_' and dots between labels: no empty label.
        let ok = name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !ok {
            return Err(HostError::BadCharacter);
        }
        (name.to_ascii_lowercase(), port)
    };
    Ok(Authority { host, port })
}

fn port(digits: &str) -> Result<u16, HostError> {
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::BadPort);
    }
    match digits.parse::<u16>() {
        Ok(0) | Err(_) => Err(HostError::BadPort),
        Ok(p) => Ok(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_strips_port_and_case() {
        assert_eq!(normalize("Example.COM:8443"), "example.com");
        assert_eq!(normalize("[::1]:443"), "::1");
        assert_eq!(normalize("::1"), "::1");
        assert_eq!(normalize("a.example.com."), "a.example.com");
        assert_eq!(normalize("[0001:DB8:0::1]:443"), "1:db8::1");
        assert_eq!(normalize("E.:1"), "e");
        // The one-pass reading and the general one agree, in and out of its alphabet.
        for raw in [
            "a.test",
            "a.test:8443",
            "a.test.:443",
            "a.test:",
            ":",
            ".",
            "",
            "1:2",
            "1:2:3",
            "a-b.c0",
            " a.test",
            "a.test ",
            "A.test:1",
            "[::1]",
            "a_b.test",
            "ä.test:1",
        ] {
            assert_eq!(normalize(raw), normalize_any(raw), "{raw:?}");
        }
        assert_eq!(normalize("a.test.:443"), "a.test");
        assert_eq!(parse("[0001:DB8:0::1]:443").unwrap().host, "1:db8::1");
    }

    #[test]
    fn names_addresses_and_ports_parse() {
        let a = parse("Example.COM:8443").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("example.com", Some(8443)));
        let a = parse("127.0.0.1").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", None));
        let a = parse("[::1]:80").unwrap();
        assert_eq!((a.url_host().as_str(), a.port), ("[::1]", Some(80)));
        assert_eq!(parse("a.test.").unwrap().host, "a.test");
        assert_eq!(parse("_acme.a-b.test").unwrap().host, "_acme.a-b.test");
    }

    #[test]
    fn anything_that_could_steer_a_url_is_refused() {
        for bad in [
            "localhost@evil.example",
            "evil.example/x",
            "a.test?x",
            "a.test#x",
            "a b",
            "a.test:80:80",
            "a.test:",
            "a.test:0",
            "a.test:65536",
            "a.test:+80",
            "a..test",
            ".a.test",
            "[::1",
            "[evil]",
            "[::1]x",
            "a.test\\x",
            "ä.test",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
