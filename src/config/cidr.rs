//! Address ranges in `listen.trusted_proxies`: `10.0.0.0/8`, `2001:db8::/32`, or one
//! address (`192.0.2.7`, a /32 or /128).

use std::fmt;
use std::net::IpAddr;

/// One range of addresses. IPv4-mapped IPv6 peers (`::ffff:10.0.0.1`, what a dual-stack
/// socket reports) are matched as the IPv4 address they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/len` or a bare address; the host bits must be zero, as in routing
    /// tables, so a typo like `10.0.0.1/8` is caught rather than widened silently.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an address or range such as \"10.0.0.0/8\""))?;
        let network = network.to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(len) => match len.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{text:?}: the prefix length must be 0 to {max}")),
            },
        };
        let cidr = Cidr { network, prefix };
        if !cidr.contains(network) || mask(network, prefix) != bits(network) {
            return Err(format!(
                "{text:?} has host bits set; write the network, such as \"{}/{prefix}\"",
                from_bits(network, mask(network, prefix))
            ));
        }
        Ok(cidr)
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4()
            && mask(ip, self.prefix) == mask(self.network, self.prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_bits(like: IpAddr, bits: u128) -> IpAddr {
    match like {
        // A v4 value was made from 32 bits, so it fits.
        IpAddr::V4(_) => IpAddr::V4((bits as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(bits.into()),
    }
}

/// The address with everything after the first `prefix` bits cleared.
fn mask(ip: IpAddr, prefix: u8) -> u128 {
    let width: u32 = if ip.is_ipv4() { 32 } else { 128 };
    let keep = u32::from(prefix).min(width);
    if keep == 0 {
        return 0;
    }
    let shift = width - keep;
    (bits(ip) >> shift) << shift
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_contain_their_addresses_only() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.200.3.4")));
        assert!(c.contains(ip("::ffff:10.0.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::1")));
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::2")));
    }

    #[test]
    fn bad_ranges_say_why() {
        assert!(
            Cidr::parse("10.0.0.1/8")
                .unwrap_err()
                .contains("\"10.0.0.0/8\"")
        );
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(Cidr::parse("example.com").is_err());
        assert!(Cidr::parse("10.0.0.0/x").is_err());
    }
}
