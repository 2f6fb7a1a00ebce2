//! Many endpoints at once, within concurrency and rate limits.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use certkeeper_core::target::{AddressRange, PortSet};
use certkeeper_core::{Observation, Watchlist};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::{ProbeConfig, Target, probe};

/// A watchlist with its server names resolved.
#[derive(Debug, Clone, Default)]
pub struct Expansion {
    servers: Vec<(String, Vec<IpAddr>, PortSet)>,
    ranges: Vec<(AddressRange, PortSet)>,
    /// Server names that did not resolve, with the reason.
    pub dns_failures: Vec<(String, String)>,
}

/// How long one name may take to resolve.
const DNS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Resolve every server name of `watchlist` (all of its addresses), 32 at a time,
/// each within [`DNS_TIMEOUT`].
pub async fn expand(watchlist: &Watchlist) -> Expansion {
    let mut out = Expansion::default();
    let sem = Arc::new(Semaphore::new(32));
    let mut set = JoinSet::new();
    for (i, s) in watchlist.servers.iter().enumerate() {
        let name = s.name.clone();
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            if let Ok(ip) = name.parse::<IpAddr>() {
                return (i, Ok(vec![ip]));
            }
            let r = match tokio::time::timeout(
                DNS_TIMEOUT,
                tokio::net::lookup_host((name.as_str(), 0)),
            )
            .await
            {
                Err(_) => Err(format!("no answer within {DNS_TIMEOUT:?}")),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok(addrs)) => {
                    let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                    ips.sort();
                    ips.dedup();
                    if ips.is_empty() {
                        Err("no addresses".into())
                    } else {
                        Ok(ips)
                    }
                }
            };
            (i, r)
        });
    }
    let mut resolved = Vec::new();
    while let Some(done) = set.join_next().await {
        if let Ok(r) = done {
            resolved.push(r);
        }
    }
    resolved.sort_by_key(|(i, _)| *i);
    for (i, r) in resolved {
        let s = &watchlist.servers[i];
        match r {
            Ok(ips) => out.servers.push((s.name.clone(), ips, s.ports.clone())),
            Err(e) => out.dns_failures.push((s.name.clone(), e)),
        }
    }
    out.ranges = watchlist
        .ranges
        .iter()
        .map(|r| (r.range, r.ports.clone()))
        .collect();
    out
}

impl Expansion {
    /// Number of targets [`Expansion::targets`] yields.
    pub fn len(&self) -> u64 {
        let s: u64 = self
            .servers
            .iter()
            .map(|(_, ips, p)| (ips.len() * p.len()) as u64)
            .sum();
        let r: u64 = self
            .ranges
            .iter()
            .map(|(r, p)| (r.address_count() as u64).saturating_mul(p.len() as u64))
            .sum();
        s + r
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every target, lazily: a /16 over many ports is never held in memory at once.
    pub fn targets(&self) -> impl Iterator<Item = Target> + '_ {
        let servers = self.servers.iter().flat_map(|(name, ips, ports)| {
            let sni = if name.parse::<IpAddr>().is_ok() {
                None
            } else {
                Some(name.clone())
            };
            ips.iter().flat_map(move |ip| {
                let sni = sni.clone();
                ports.iter().map(move |port| Target {
                    host: name.clone(),
                    ip: *ip,
                    port,
                    sni: sni.clone(),
                    named: true,
                })
            })
        });
        // Port-major order spreads the load of a range over its hosts.
        let ranges = self.ranges.iter().flat_map(|(range, ports)| {
            ports.iter().flat_map(move |port| {
                range.hosts().map(move |ip| Target {
                    host: ip.to_string(),
                    ip,
                    port,
                    sni: None,
                    named: false,
                })
            })
        });
        servers.chain(ranges)
    }
}

/// Spaces new connections evenly at `rate` per second.
#[derive(Debug)]
pub struct RateLimiter {
    period: Duration,
    next: Mutex<Instant>,
}

impl RateLimiter {
    pub fn new(rate_per_second: u32) -> Self {
        RateLimiter {
            period: Duration::from_secs(1) / rate_per_second.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Wait for the next slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.period;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// Probe every target with at most `cfg.concurrency` in flight and at most
/// `cfg.rate_per_second` new connections a second; `on_result` sees each observation
/// as it completes.
pub async fn scan<I, F>(targets: I, cfg: &ProbeConfig, mut on_result: F)
where
    I: IntoIterator<Item = Target>,
    F: FnMut(Target, Observation),
{
    let mut cfg = cfg.clone();
    cfg.limiter = cfg.rate_per_second.map(|r| Arc::new(RateLimiter::new(r)));
    let cfg = Arc::new(cfg);
    let sem = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut set = JoinSet::new();
    for target in targets {
        // Collect finished probes as we go so memory stays bounded by concurrency.
        while let Some(done) = set.try_join_next() {
            if let Ok((t, o)) = done {
                on_result(t, o);
            }
        }
        let permit = match sem.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => break,
        };
        let cfg = cfg.clone();
        set.spawn(async move {
            let obs = probe(&target, &cfg).await;
            drop(permit);
            (target, obs)
        });
    }
    while let Some(done) = set.join_next().await {
        if let Ok((t, o)) = done {
            on_result(t, o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certkeeper_core::watchlist::DiscoverChange;

    #[tokio::test]
    async fn expands_servers_and_ranges_lazily() {
        let mut w = Watchlist::default();
        w.apply(
            &DiscoverChange {
                add_servers: vec!["localhost".into(), "192.0.2.9".into()],
                add_ranges: vec!["198.51.100.0/30".parse().unwrap()],
                ports: Some("443,8443".parse().unwrap()),
                ..Default::default()
            },
            1 << 16,
        )
        .unwrap();
        let e = expand(&w).await;
        let all: Vec<Target> = e.targets().collect();
        assert_eq!(all.len() as u64, e.len());
        let ip_server = all.iter().find(|t| t.host == "192.0.2.9").unwrap();
        assert_eq!(ip_server.sni, None, "never an IP literal in SNI");
        let named = all.iter().find(|t| t.host == "localhost").unwrap();
        assert_eq!(named.sni.as_deref(), Some("localhost"));
        assert_eq!(all.iter().filter(|t| !t.named).count(), 2 * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_spaces_connections_evenly() {
        // Virtual time: the test measures the limiter, not the machine.
        let l = RateLimiter::new(10);
        let start = Instant::now();
        for _ in 0..11 {
            l.acquire().await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1000), "{took:?}");
        assert!(took < Duration::from_millis(1100), "{took:?}");
    }

    #[tokio::test]
    async fn unresolvable_names_are_listed() {
        let mut w = Watchlist::default();
        w.apply(
            &DiscoverChange {
                add_servers: vec!["no-such-host.invalid".into()],
                ..Default::default()
            },
            1,
        )
        .unwrap();
        let e = expand(&w).await;
        assert_eq!(e.len(), 0);
        assert_eq!(e.dns_failures[0].0, "no-such-host.invalid");
    }
}
