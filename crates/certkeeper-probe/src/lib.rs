//! The network side of discovery: expand targets, connect, speak STARTTLS where the
//! port calls for it, and capture whatever certificate chain the peer presents.
//!
//! Capture never validates: a recording verifier accepts every chain so expired,
//! self-signed and wrong-name certificates are all seen. TLS 1.2/1.3 go through
//! rustls; peers rustls cannot talk to (TLS 1.0/1.1, RSA key exchange, CBC-only
//! suites) are retried through OpenSSL at security level 0.

mod capture;
pub mod fetch;
pub mod hello;
mod legacy;
mod reneg;
pub mod revocation;
pub mod robot;
mod scan;
pub mod sslv2;
mod starttls;
mod tlsscan;

use std::net::IpAddr;
use std::time::Duration;

pub use capture::probe;
pub use reneg::client_renegotiation;
pub use scan::{Expansion, RateLimiter, expand, scan};
pub use starttls::StartTls;
pub use tlsscan::{HostSlots, VulnConfig, VulnError, VulnScan, vulnscan};

/// One (host, IP, port) to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The name scanned, or the IP address as text when scanned by address.
    pub host: String,
    pub ip: IpAddr,
    pub port: u16,
    /// SNI to send: the server name when one is given, never an IP literal.
    pub sni: Option<String>,
    /// Whether the target came from an explicitly named server (its failures are
    /// reported) or from an address range (only peers that answered are reported).
    pub named: bool,
}

/// Limits of a scan.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub connect_timeout: Duration,
    /// Covers STARTTLS and every handshake attempt of one endpoint together.
    pub handshake_timeout: Duration,
    /// Probes in flight at once.
    pub concurrency: usize,
    /// New connections per second, across the scan; `None` for no limit.
    pub rate_per_second: Option<u32>,
    /// Retry through OpenSSL when rustls cannot complete the handshake.
    pub legacy_fallback: bool,
    /// Set by [`scan`] from `rate_per_second`: every connection, retries included,
    /// takes a slot.
    pub limiter: Option<std::sync::Arc<RateLimiter>>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            connect_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(5),
            concurrency: 256,
            rate_per_second: None,
            legacy_fallback: true,
            limiter: None,
        }
    }
}
