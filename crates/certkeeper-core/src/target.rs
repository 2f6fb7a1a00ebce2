//! Scan targets as users type them: port lists with ranges, addresses and CIDR blocks.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The ports probed when none are given: web, SMTPS, LDAPS, DNS-over-TLS, FTPS (data and
/// control), Telnet over TLS, IMAPS and POP3S.
pub const DEFAULT_PORTS: [u16; 9] = [443, 465, 636, 853, 989, 990, 992, 993, 995];

/// Why a target or port list was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// A port was not a number from 1 to 65535.
    #[error("invalid port {0:?}: ports are numbers from 1 to 65535")]
    BadPort(String),
    /// A range such as `9000-8000` ends before it starts.
    #[error("invalid port range {0:?}: the first port must not be greater than the second")]
    ReversedRange(String),
    /// The port list was empty.
    #[error("the port list is empty")]
    NoPorts,
    /// An address or CIDR block did not parse.
    #[error("invalid IP address or CIDR block {0:?} (expected e.g. 192.0.2.10 or 198.51.100.0/24)")]
    BadAddress(String),
    /// A CIDR block holds more addresses than the configured cap.
    #[error(
        "range {range} has {addresses} addresses, more than the limit of {limit}; split it or raise max_range_addresses"
    )]
    RangeTooLarge {
        range: String,
        addresses: u128,
        limit: u128,
    },
    /// A host name is empty or holds characters no host name has.
    #[error("invalid server name {0:?}")]
    BadHostName(String),
}

/// A set of TCP ports, kept sorted and without duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortSet(BTreeSet<u16>);

impl PortSet {
    pub fn defaults() -> Self {
        PortSet(DEFAULT_PORTS.into_iter().collect())
    }
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().copied()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn parse_port(s: &str) -> Result<u16, TargetError> {
    match s.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(TargetError::BadPort(s.trim().to_string())),
    }
}

impl FromStr for PortSet {
    type Err = TargetError;
    /// Parses `"443"`, `"8443,9443"`, `"8000-9000,9443"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut set = BTreeSet::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some((a, b)) = part.split_once('-') {
                let (a, b) = (parse_port(a)?, parse_port(b)?);
                if a > b {
                    return Err(TargetError::ReversedRange(part.to_string()));
                }
                set.extend(a..=b);
            } else {
                set.insert(parse_port(part)?);
            }
        }
        if set.is_empty() {
            return Err(TargetError::NoPorts);
        }
        Ok(PortSet(set))
    }
}

impl TryFrom<String> for PortSet {
    type Error = TargetError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PortSet> for String {
    fn from(p: PortSet) -> String {
        p.to_string()
    }
}

impl fmt::Display for PortSet {
    /// Compact form with ranges: `443,8000-9000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut iter = self.0.iter().copied().peekable();
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&(end.wrapping_add(1))) && end < u16::MAX {
                end = iter.next().unwrap_or(end);
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

/// An address range given with `--ips`: one address or a CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AddressRange(IpNet);

impl AddressRange {
    /// Number of addresses scanned in this range (network and broadcast addresses of IPv4
    /// blocks shorter than /31 are skipped, as `ipnet::IpNet::hosts` does).
    pub fn address_count(&self) -> u128 {
        let host_bits = u32::from(self.0.max_prefix_len() - self.0.prefix_len());
        let total: u128 = if host_bits >= 128 {
            u128::MAX
        } else {
            1u128 << host_bits
        };
        match self.0 {
            IpNet::V4(_) if host_bits >= 2 => total - 2,
            _ => total,
        }
    }

    /// Refuse blocks larger than `limit` addresses.
    pub fn check_size(&self, limit: u128) -> Result<(), TargetError> {
        let addresses = self.address_count();
        if addresses > limit {
            return Err(TargetError::RangeTooLarge {
                range: self.to_string(),
                addresses,
                limit,
            });
        }
        Ok(())
    }

    pub fn hosts(&self) -> impl Iterator<Item = IpAddr> {
        self.0.hosts()
    }
}

impl FromStr for AddressRange {
    type Err = TargetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Ok(net) = t.parse::<IpNet>() {
            // Normalise 198.51.100.7/24 to 198.51.100.0/24.
            return Ok(AddressRange(net.trunc()));
        }
        t.parse::<IpAddr>()
            .map(|ip| AddressRange(IpNet::from(ip)))
            .map_err(|_| TargetError::BadAddress(t.to_string()))
    }
}

impl TryFrom<String> for AddressRange {
    type Error = TargetError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<AddressRange> for String {
    fn from(r: AddressRange) -> String {
        r.to_string()
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// Check a server name as given with `--servers`: a DNS name or an IP literal.
pub fn parse_server_name(s: &str) -> Result<String, TargetError> {
    let t = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !t.is_empty()
        && t.len() <= 253
        && (t.parse::<IpAddr>().is_ok()
            || t.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            }));
    if ok {
        Ok(t)
    } else {
        Err(TargetError::BadHostName(s.trim().to_string()))
    }
}

/// Split a comma-separated list, dropping empty items.
pub fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports_and_ranges() {
        let p: PortSet = "8000-8003,9443, 443".parse().unwrap();
        assert_eq!(
            p.iter().collect::<Vec<_>>(),
            vec![443, 8000, 8001, 8002, 8003, 9443]
        );
        assert_eq!(p.to_string(), "443,8000-8003,9443");
        let all: PortSet = "1-65535".parse().unwrap();
        assert_eq!(all.len(), 65535);
        assert_eq!(all.to_string(), "1-65535");
    }

    #[test]
    fn refuses_bad_ports() {
        assert_eq!(
            "0".parse::<PortSet>(),
            Err(TargetError::BadPort("0".into()))
        );
        assert_eq!(
            "65536".parse::<PortSet>(),
            Err(TargetError::BadPort("65536".into()))
        );
        assert_eq!(
            "9000-8000".parse::<PortSet>(),
            Err(TargetError::ReversedRange("9000-8000".into()))
        );
        assert_eq!(
            "http".parse::<PortSet>(),
            Err(TargetError::BadPort("http".into()))
        );
        assert_eq!(",".parse::<PortSet>(), Err(TargetError::NoPorts));
        assert_eq!(
            "-5".parse::<PortSet>(),
            Err(TargetError::BadPort("".into()))
        );
    }

    #[test]
    fn parses_addresses_and_blocks() {
        let r: AddressRange = "198.51.100.7/24".parse().unwrap();
        assert_eq!(r.to_string(), "198.51.100.0/24");
        assert_eq!(r.address_count(), 254);
        assert_eq!(r.hosts().count(), 254);
        let one: AddressRange = "192.0.2.1".parse().unwrap();
        assert_eq!(one.to_string(), "192.0.2.1");
        assert_eq!(one.address_count(), 1);
        assert_eq!(one.hosts().count(), 1);
        let v6: AddressRange = "2001:db8::/126".parse().unwrap();
        assert_eq!(v6.address_count(), 4);
        assert_eq!(v6.hosts().count(), 4);
        let b16: AddressRange = "10.1.0.0/16".parse().unwrap();
        assert_eq!(b16.address_count(), 65534);
        assert_eq!(b16.hosts().count(), 65534);
        for bad in ["198.51.100.0/33", "300.1.1.1", "10.0.0.0/", "host.example"] {
            assert_eq!(
                bad.parse::<AddressRange>(),
                Err(TargetError::BadAddress(bad.into()))
            );
        }
    }

    #[test]
    fn caps_range_size() {
        let r: AddressRange = "10.0.0.0/8".parse().unwrap();
        let err = r.check_size(65536).unwrap_err();
        assert!(
            err.to_string()
                .contains("10.0.0.0/8 has 16777214 addresses")
        );
        assert!(
            "10.0.0.0/16"
                .parse::<AddressRange>()
                .unwrap()
                .check_size(65536)
                .is_ok()
        );
    }

    #[test]
    fn checks_server_names() {
        assert_eq!(
            parse_server_name("Mail.Example.com.").unwrap(),
            "mail.example.com"
        );
        assert_eq!(parse_server_name("192.0.2.1").unwrap(), "192.0.2.1");
        assert!(parse_server_name("https://x.example").is_err());
        assert!(parse_server_name("a..b").is_err());
        assert!(parse_server_name("").is_err());
    }
}
