//! Vulnerability scan of one endpoint on the wire: protocol support and accepted
//! suites by elimination (offer every candidate, drop the one the server picks,
//! repeat: accepted+1 connections per protocol), the server's preference order,
//! DH sizes, fallback SCSV, secure renegotiation and compression, all read from
//! the first flight without completing a handshake. Protocols run in parallel under
//! a per-host connection cap; every connection also takes a slot of the global rate
//! limiter when there is one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use certkeeper_core::findings::{AcceptedSuite, Protocol, ProtocolFacts, TlsFacts};
use tokio::sync::Semaphore;

use crate::Target;
use crate::hello::{
    FALLBACK_SCSV, Hello, Reply, ServerFlight, WireError, candidate_suites, exchange, open_flight,
    poke, suite_name,
};
use crate::scan::RateLimiter;

/// Limits of a vulnerability scan.
#[derive(Debug, Clone)]
pub struct VulnConfig {
    /// Connect + hello + first flight, per connection.
    pub timeout: Duration,
    /// Connections open at once to one host (IP address), across the endpoints and
    /// names scanned with this configuration.
    pub per_host_connections: usize,
    /// The per-host slots, shared by every scan that uses (a clone of) this config.
    pub host_slots: Arc<HostSlots>,
    /// Shared across endpoints: at most this many connections at once overall.
    pub global: Option<Arc<Semaphore>>,
    /// Shared across endpoints: new connections per second.
    pub limiter: Option<Arc<RateLimiter>>,
    /// Limits of the online revocation checks (OCSP, CRL); `None` turns them off
    /// (a stapled response is still judged).
    pub revocation: Option<crate::fetch::FetchPolicy>,
}

/// One semaphore per IP address: a load balancer with many names in the inventory is
/// still probed by at most `per_host_connections` connections at once.
#[derive(Debug, Default)]
pub struct HostSlots {
    map: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, Arc<Semaphore>>>,
}

impl HostSlots {
    fn for_ip(&self, ip: std::net::IpAddr, per_host: usize) -> Arc<Semaphore> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(ip)
            .or_insert_with(|| Arc::new(Semaphore::new(per_host.max(1))))
            .clone()
    }
}

impl Default for VulnConfig {
    fn default() -> Self {
        VulnConfig {
            timeout: Duration::from_secs(3),
            per_host_connections: 4,
            host_slots: Arc::default(),
            global: None,
            limiter: None,
            revocation: Some(crate::fetch::FetchPolicy::default()),
        }
    }
}

/// The result of scanning one endpoint.
#[derive(Debug, Clone, Default)]
pub struct VulnScan {
    pub facts: TlsFacts,
    /// The chain of the first plaintext Certificate message (TLS ≤ 1.2).
    pub chain: Vec<Vec<u8>>,
    /// Whether the scan had to drop SNI to get answers.
    pub sni_dropped: bool,
    /// Whether the server stapled an OCSP response to a TLS ≤ 1.2 hello asking for
    /// one; `None` when no such hello was accepted (e.g. a TLS 1.3-only server).
    pub stapling: Option<bool>,
    /// The stapled response (DER), from the best protocol that had one.
    pub ocsp_staple: Option<Vec<u8>>,
}

/// Why an endpoint could not be scanned at all.
#[derive(Debug, thiserror::Error)]
pub enum VulnError {
    #[error("{0}")]
    Unreachable(String),
    #[error("the endpoint accepted none of SSLv3, TLS 1.0, 1.1, 1.2 or 1.3: {0}")]
    NoTls(String),
}

struct Session<'a> {
    addr: SocketAddr,
    sni: Option<&'a str>,
    cfg: &'a VulnConfig,
    host_slots: Arc<Semaphore>,
    connections: AtomicU32,
}

impl Session<'_> {
    async fn hello(&self, h: &Hello<'_>) -> Result<ServerFlight, WireError> {
        let _slot = self.slot().await;
        exchange(self.addr, h, self.cfg.timeout).await
    }
}

impl Session<'_> {
    async fn slot(
        &self,
    ) -> (
        tokio::sync::SemaphorePermit<'_>,
        Option<tokio::sync::SemaphorePermit<'_>>,
    ) {
        let host = self.host_slots.acquire().await.expect("never closed");
        let global = match &self.cfg.global {
            Some(g) => Some(g.acquire().await.expect("never closed")),
            None => None,
        };
        if let Some(l) = &self.cfg.limiter {
            l.acquire().await;
        }
        self.connections.fetch_add(1, Ordering::Relaxed);
        (host, global)
    }

    /// Heartbleed (CVE-2014-0160): negotiate the heartbeat extension, then send a
    /// heartbeat request that claims 16 KiB of payload and carries none. A patched
    /// server discards it; a vulnerable one answers with 16 KiB of its memory.
    async fn heartbleed(&self, p: Protocol, suites: &[u16], sni: Option<&str>) -> Option<bool> {
        let _slot = self.slot().await;
        let deadline = tokio::time::Instant::now() + self.cfg.timeout;
        let (mut stream, flight) = open_flight(self.addr, p, suites, sni, true, deadline).await?;
        if !flight.heartbeat {
            return Some(false);
        }
        let [v1, v2] = p.wire().to_be_bytes();
        let request = [0x18, v1, v2, 0x00, 0x03, 0x01, 0x40, 0x00];
        Some(match poke(&mut stream, &request, deadline).await {
            Reply::Record {
                content_type: 24,
                len,
            } => len > 3,
            _ => false,
        })
    }

    /// ROBOT: one connection per padding variant, each under the limits.
    async fn robot(&self, p: Protocol, rsa: &[u16], sni: Option<&str>) -> Option<bool> {
        use crate::robot::{VARIANTS, Variant, probe_one, verdict};
        let mut answers = Vec::new();
        for v in VARIANTS.into_iter().chain([Variant::Correct]) {
            let _slot = self.slot().await;
            answers.push(probe_one(self.addr, p, rsa, sni, v, self.cfg.timeout).await?);
        }
        let repeat = answers.pop()?;
        verdict(&answers, repeat)
    }

    /// CCS injection (CVE-2014-0224): a ChangeCipherSpec before any key exchange, and a
    /// Finished after it, in one write. A patched server refuses the CCS
    /// (unexpected_message) and reads no further; a vulnerable one takes it and fails
    /// the Finished's MAC under keys made of nothing (bad_record_mac). No waiting.
    async fn ccs_injection(&self, p: Protocol, suites: &[u16], sni: Option<&str>) -> Option<bool> {
        let _slot = self.slot().await;
        let deadline = tokio::time::Instant::now() + self.cfg.timeout;
        let (mut stream, _) = open_flight(self.addr, p, suites, sni, false, deadline).await?;
        let [v1, v2] = p.wire().to_be_bytes();
        let mut probe = vec![0x14, v1, v2, 0x00, 0x01, 0x01, 0x16, v1, v2, 0x00, 0x30];
        probe.extend_from_slice(&[0u8; 0x30]);
        Some(matches!(
            poke(&mut stream, &probe, deadline).await,
            Reply::Alert(20) | Reply::Alert(21)
        ))
    }
}

/// What one protocol's enumeration found.
#[derive(Debug, Default)]
struct ProtocolRun {
    facts: Option<ProtocolFacts>,
    chain: Vec<Vec<u8>>,
    dh_bits: Option<u32>,
    renegotiation_info: bool,
    compression: bool,
    sni_dropped: bool,
    /// The answer to the first hello, which asked for a stapled OCSP response
    /// (TLS 1.0–1.2): `Some(None)` when the server stapled nothing.
    staple: Option<Option<Vec<u8>>>,
    error: Option<WireError>,
}

fn negotiated(p: Protocol, f: &ServerFlight) -> bool {
    f.accepted() && f.version == Some(p.wire())
}

async fn enumerate(s: &Session<'_>, p: Protocol) -> ProtocolRun {
    let mut run = ProtocolRun::default();
    let mut offered = candidate_suites(p);
    let mut sni = s.sni;
    let mut accepted: Vec<u16> = Vec::new();
    let mut first = true;
    // Bounded: a server cannot keep us here longer than its suites last.
    while !offered.is_empty() && accepted.len() < 400 {
        let h = Hello {
            protocol: p,
            suites: &offered,
            sni,
            offer_compression: p != Protocol::Tls13,
            heartbeat: false,
            status_request: first && (Protocol::Tls10..=Protocol::Tls12).contains(&p),
        };
        let mut flight = s.hello(&h).await;
        if first && sni.is_some() && matches!(&flight, Ok(f) if f.alert == Some(112)) {
            // Some servers refuse names they do not serve (unrecognized_name): try once
            // without SNI. Other alerts (protocol_version, handshake_failure) are answers.
            let h = Hello {
                sni: None,
                ..h.clone()
            };
            let retry = s.hello(&h).await;
            if matches!(&retry, Ok(f) if negotiated(p, f)) {
                sni = None;
                run.sni_dropped = true;
                flight = retry;
            }
        }
        if matches!(flight, Err(WireError::Timeout)) {
            // A busy server (one that serves one connection at a time, say) may
            // answer a second try: a timeout is not an answer.
            flight = s.hello(&h).await;
        }
        let flight = match flight {
            Ok(f) => f,
            Err(e) => {
                if first || matches!(e, WireError::Timeout) {
                    run.error = Some(e);
                }
                break;
            }
        };
        let asked = first && h.status_request;
        first = false;
        if !negotiated(p, &flight) {
            break;
        }
        if asked {
            run.staple = Some(flight.ocsp_staple.clone());
        }
        let suite = flight.suite.expect("accepted");
        if !offered.contains(&suite) {
            // The server picked something we did not offer: stop, it is broken.
            break;
        }
        if run.chain.is_empty() {
            run.chain = flight.chain.clone();
        }
        if let Some(b) = flight.dh_bits {
            run.dh_bits = Some(run.dh_bits.map_or(b, |m: u32| m.min(b)));
        }
        run.renegotiation_info |= flight.renegotiation_info;
        run.compression |= flight.compression.is_some_and(|c| c != 0);
        accepted.push(suite);
        offered.retain(|x| *x != suite);
    }
    let mut server_order = None;
    if accepted.len() >= 2 {
        // Offer what was accepted in reverse: a server with its own order still
        // picks its favourite, one following the client picks our first.
        let reversed: Vec<u16> = accepted.iter().rev().copied().collect();
        let h = Hello {
            protocol: p,
            suites: &reversed,
            sni,
            offer_compression: false,
            heartbeat: false,
            status_request: false,
        };
        if let Ok(f) = s.hello(&h).await
            && negotiated(p, &f)
        {
            server_order = Some(f.suite == Some(accepted[0]));
        }
    }
    let suites = accepted
        .iter()
        .map(|id| {
            let iana = suite_name(*id);
            let openssl = openssl::ssl::cipher_name(&iana);
            AcceptedSuite {
                id: *id,
                openssl: (openssl != "(NONE)").then(|| openssl.to_string()),
                iana,
            }
        })
        .collect();
    run.facts = Some(ProtocolFacts {
        protocol: p,
        supported: !accepted.is_empty(),
        suites,
        server_order,
    });
    run
}

/// Scan one endpoint. Only an endpoint that cannot be reached, or speaks no TLS at
/// all, is an error; everything else is in the facts.
pub async fn vulnscan(target: &Target, cfg: &VulnConfig) -> Result<VulnScan, VulnError> {
    let s = Session {
        addr: SocketAddr::new(target.ip, target.port),
        // Never an IP literal, and no trailing dot (RFC 6066).
        sni: target
            .sni
            .as_deref()
            .map(|n| n.trim_end_matches('.'))
            .filter(|n| !n.is_empty() && n.parse::<std::net::IpAddr>().is_err()),
        cfg,
        host_slots: cfg.host_slots.for_ip(target.ip, cfg.per_host_connections),
        connections: AtomicU32::new(0),
    };
    let (ssl2, ssl3, t10, t11, t12, t13) = tokio::join!(
        async {
            let _slot = s.slot().await;
            crate::sslv2::probe(s.addr, cfg.timeout).await
        },
        enumerate(&s, Protocol::Ssl3),
        enumerate(&s, Protocol::Tls10),
        enumerate(&s, Protocol::Tls11),
        enumerate(&s, Protocol::Tls12),
        enumerate(&s, Protocol::Tls13),
    );
    let runs = [ssl3, t10, t11, t12, t13];
    let mut out = VulnScan::default();
    let supported = |r: &ProtocolRun| r.facts.as_ref().is_some_and(|f| f.supported);
    if !runs.iter().any(supported) {
        let err = runs.iter().find_map(|r| r.error.as_ref());
        return Err(match err {
            Some(WireError::Connect(e)) => VulnError::Unreachable(e.clone()),
            Some(WireError::Timeout) => VulnError::Unreachable("timed out".into()),
            Some(e) => VulnError::NoTls(e.to_string()),
            None => VulnError::NoTls("every hello was refused".into()),
        });
    }
    let legacy: Vec<&ProtocolRun> = runs[..4].iter().filter(|r| supported(r)).collect();
    if !legacy.is_empty() {
        // Judged on TLS 1.0–1.2 where the server has them (an SSLv3 answer may
        // carry no extensions at all), else on SSLv3.
        let tls: Vec<&&ProtocolRun> = legacy[..]
            .iter()
            .filter(|r| !std::ptr::eq(**r, &runs[0]))
            .collect();
        out.facts.secure_renegotiation = Some(if tls.is_empty() {
            legacy.iter().all(|r| r.renegotiation_info)
        } else {
            tls.iter().all(|r| r.renegotiation_info)
        });
        out.facts.compression = Some(legacy.iter().any(|r| r.compression));
    }
    out.facts.dh_bits = runs.iter().filter_map(|r| r.dh_bits).min();
    out.chain = runs
        .iter()
        .rev()
        .find(|r| !r.chain.is_empty())
        .map(|r| r.chain.clone())
        .unwrap_or_default();
    out.sni_dropped = runs.iter().any(|r| r.sni_dropped);
    let asked: Vec<&Option<Vec<u8>>> = runs
        .iter()
        .rev()
        .filter_map(|r| r.staple.as_ref())
        .collect();
    if !asked.is_empty() {
        out.ocsp_staple = asked.iter().find_map(|s| (*s).clone());
        out.stapling = Some(out.ocsp_staple.is_some());
    }

    // Fallback SCSV: a hello one version below the best the server has, carrying
    // the SCSV, must be refused with inappropriate_fallback (86).
    let protos: Vec<(Protocol, Vec<u16>)> = runs
        .iter()
        .filter_map(|r| r.facts.as_ref())
        .filter(|f| f.supported)
        .map(|f| (f.protocol, f.suites.iter().map(|s| s.id).collect()))
        .collect();
    let sni = if out.sni_dropped { None } else { s.sni };
    // The checks after enumeration run side by side, each under the limits.
    let fallback = async {
        let (low, suites) = protos.len().checked_sub(2).map(|i| &protos[i])?;
        let mut offer = suites.clone();
        offer.push(FALLBACK_SCSV);
        let h = Hello {
            protocol: *low,
            suites: &offer,
            sni,
            offer_compression: false,
            heartbeat: false,
            status_request: false,
        };
        let f = s.hello(&h).await.ok()?;
        if f.alert == Some(86) {
            Some(true)
        } else if negotiated(*low, &f) {
            Some(false)
        } else {
            None
        }
    };
    // Checks that need the connection after the first flight, on the best protocol
    // below TLS 1.3, with the suites it accepted.
    let best = protos.iter().rev().find(|(p, _)| *p <= Protocol::Tls12);
    let heartbleed = async {
        let (p, suites) = best?;
        s.heartbleed(*p, suites, sni).await
    };
    let ccs = async {
        let (p, suites) = best?;
        s.ccs_injection(*p, suites, sni).await
    };
    let robot = async {
        let (p, suites) = best?;
        // ROBOT needs an RSA key exchange: without one there is no oracle to have.
        let rsa: Vec<u16> = suites
            .iter()
            .copied()
            .filter(|id| crate::hello::suite_name(*id).starts_with("TLS_RSA_WITH_"))
            .collect();
        if rsa.is_empty() {
            Some(false)
        } else {
            s.robot(*p, &rsa, sni).await
        }
    };
    // Client-initiated renegotiation, on the best protocol from TLS 1.0 to 1.2.
    let reneg = async {
        let (p, _) = protos
            .iter()
            .rev()
            .find(|(p, _)| *p >= Protocol::Tls10 && *p <= Protocol::Tls12)?;
        let _slot = s.slot().await;
        crate::reneg::client_renegotiation(s.addr, sni, *p, cfg.timeout * 2).await
    };
    let (fallback, heartbleed, ccs, robot, reneg) =
        tokio::join!(fallback, heartbleed, ccs, robot, reneg);
    out.facts.fallback_scsv = fallback;
    out.facts.heartbleed = heartbleed;
    out.facts.ccs_injection = ccs;
    out.facts.robot = robot;
    out.facts.client_renegotiation = reneg;
    out.facts.incomplete = runs
        .iter()
        .filter_map(|r| {
            let p = r.facts.as_ref()?.protocol;
            match &r.error {
                Some(WireError::Timeout) => Some(format!("{}: timed out", p.name())),
                _ => None,
            }
        })
        .collect();
    out.facts.protocols = ssl2
        .into_iter()
        .chain(runs.into_iter().filter_map(|r| r.facts))
        .collect();
    out.facts.connections = s.connections.load(Ordering::Relaxed);
    Ok(out)
}
