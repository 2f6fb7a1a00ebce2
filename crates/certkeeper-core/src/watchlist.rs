//! What an agent watches: servers and address ranges, each with its ports, changed the
//! way `ers discover` changes it: consecutive calls add targets or reconfigure ports.

use serde::{Deserialize, Serialize};

use crate::target::{AddressRange, PortSet, TargetError};

/// A server name with the ports probed on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    pub name: String,
    pub ports: PortSet,
}

/// An address or CIDR block with the ports probed on each of its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeEntry {
    pub range: AddressRange,
    pub ports: PortSet,
}

/// The agent's discovery configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watchlist {
    #[serde(default)]
    pub servers: Vec<ServerEntry>,
    #[serde(default)]
    pub ranges: Vec<RangeEntry>,
}

/// One `discover` call, already parsed.
#[derive(Debug, Clone, Default)]
pub struct DiscoverChange {
    pub add_servers: Vec<String>,
    pub add_ranges: Vec<AddressRange>,
    pub remove_servers: Vec<String>,
    pub remove_ranges: Vec<AddressRange>,
    pub ports: Option<PortSet>,
}

impl Watchlist {
    /// Apply one `discover` call.
    ///
    /// - Named servers and ranges are added; a target already present keeps its place.
    /// - `ports`, when given, become the ports of every target named in the same call; when
    ///   the call names no target, they become the ports of every configured target.
    /// - A new target without `ports` gets the default ports.
    /// - Ranges larger than `max_range_addresses` are refused and nothing changes.
    pub fn apply(
        &mut self,
        change: &DiscoverChange,
        max_range_addresses: u128,
    ) -> Result<(), TargetError> {
        for r in &change.add_ranges {
            r.check_size(max_range_addresses)?;
        }
        self.servers
            .retain(|s| !change.remove_servers.contains(&s.name));
        self.ranges
            .retain(|r| !change.remove_ranges.contains(&r.range));
        let names_targets = !change.add_servers.is_empty() || !change.add_ranges.is_empty();
        for name in &change.add_servers {
            match self.servers.iter_mut().find(|s| &s.name == name) {
                Some(s) => {
                    if let Some(p) = &change.ports {
                        s.ports = p.clone();
                    }
                }
                None => self.servers.push(ServerEntry {
                    name: name.clone(),
                    ports: change.ports.clone().unwrap_or_else(PortSet::defaults),
                }),
            }
        }
        for range in &change.add_ranges {
            match self.ranges.iter_mut().find(|r| &r.range == range) {
                Some(r) => {
                    if let Some(p) = &change.ports {
                        r.ports = p.clone();
                    }
                }
                None => self.ranges.push(RangeEntry {
                    range: *range,
                    ports: change.ports.clone().unwrap_or_else(PortSet::defaults),
                }),
            }
        }
        if !names_targets && let Some(p) = &change.ports {
            for s in &mut self.servers {
                s.ports = p.clone();
            }
            for r in &mut self.ranges {
                r.ports = p.clone();
            }
        }
        Ok(())
    }

    /// How many (address, port) pairs a scan will try; a server counts once per port
    /// whatever its name resolves to.
    pub fn endpoint_count(&self) -> u128 {
        let servers: u128 = self.servers.iter().map(|s| s.ports.len() as u128).sum();
        let ranges: u128 = self
            .ranges
            .iter()
            .map(|r| {
                r.range
                    .address_count()
                    .saturating_mul(r.ports.len() as u128)
            })
            .sum();
        servers.saturating_add(ranges)
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(s: &str) -> PortSet {
        s.parse().unwrap()
    }

    #[test]
    fn consecutive_calls_add_servers_and_reconfigure_ports() {
        let mut w = Watchlist::default();
        let cap = 65536;
        w.apply(
            &DiscoverChange {
                add_servers: vec!["mail.example.com".into()],
                ..Default::default()
            },
            cap,
        )
        .unwrap();
        assert_eq!(w.servers[0].ports, PortSet::defaults());
        w.apply(
            &DiscoverChange {
                add_servers: vec!["mail.example.com".into(), "web.example.com".into()],
                ports: Some(ports("8443,9443")),
                ..Default::default()
            },
            cap,
        )
        .unwrap();
        assert_eq!(w.servers.len(), 2);
        assert!(w.servers.iter().all(|s| s.ports == ports("8443,9443")));
        w.apply(
            &DiscoverChange {
                add_ranges: vec!["198.51.100.0/24".parse().unwrap()],
                ports: Some(ports("8000-9000")),
                ..Default::default()
            },
            cap,
        )
        .unwrap();
        assert_eq!(w.endpoint_count(), 2 * 2 + 254 * 1001);
        // Ports alone reconfigure everything.
        w.apply(
            &DiscoverChange {
                ports: Some(ports("443")),
                ..Default::default()
            },
            cap,
        )
        .unwrap();
        assert_eq!(w.endpoint_count(), 2 + 254);
        w.apply(
            &DiscoverChange {
                remove_servers: vec!["web.example.com".into()],
                ..Default::default()
            },
            cap,
        )
        .unwrap();
        assert_eq!(w.servers.len(), 1);
    }

    #[test]
    fn oversized_range_changes_nothing() {
        let mut w = Watchlist::default();
        let before = w.clone();
        let err = w
            .apply(
                &DiscoverChange {
                    add_servers: vec!["a.example".into()],
                    add_ranges: vec!["10.0.0.0/8".parse().unwrap()],
                    ..Default::default()
                },
                65536,
            )
            .unwrap_err();
        assert!(matches!(err, TargetError::RangeTooLarge { .. }));
        assert_eq!(w, before);
    }

    #[test]
    fn round_trips_through_toml_shape() {
        let mut w = Watchlist::default();
        w.apply(
            &DiscoverChange {
                add_servers: vec!["a.example".into()],
                add_ranges: vec!["192.0.2.0/30".parse().unwrap()],
                ports: Some(ports("443,8000-8002")),
                ..Default::default()
            },
            1 << 16,
        )
        .unwrap();
        let json = serde_json::to_string(&w).unwrap();
        assert!(json.contains("\"443,8000-8002\""));
        assert_eq!(serde_json::from_str::<Watchlist>(&json).unwrap(), w);
    }
}
