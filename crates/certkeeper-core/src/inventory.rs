//! What the inventory holds and how it is asked: endpoints, agents, filters.

use std::net::IpAddr;

use time::OffsetDateTime;

use crate::cert::{CertificateFacts, Fingerprint};

/// A (host, IP, port) where TLS was seen, with the certificate it serves now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub ip: IpAddr,
    pub port: u16,
    pub first_seen: OffsetDateTime,
    /// Last time a certificate was seen here (None if it never answered with TLS).
    pub last_seen: Option<OffsetDateTime>,
    /// Last time an agent tried it, successful or not.
    pub last_checked: OffsetDateTime,
    /// SHA-256 of the leaf served now.
    pub sha256: Option<Fingerprint>,
    /// Id of the agent that saw it last.
    pub agent: Option<String>,
    pub sni: Option<String>,
    pub protocol: Option<String>,
    pub cipher: Option<String>,
    pub starttls: Option<String>,
    /// The last failure kind and message, when the last check failed.
    pub last_error: Option<(String, String)>,
}

/// One period during which an endpoint served one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedPeriod {
    pub sha256: Fingerprint,
    pub first_seen: OffsetDateTime,
    pub last_seen: OffsetDateTime,
    /// When a different certificate was first seen in its place.
    pub replaced_at: Option<OffsetDateTime>,
}

/// A certificate in the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCertificate {
    pub facts: CertificateFacts,
    pub der: Vec<u8>,
    pub first_seen: OffsetDateTime,
}

/// An enrolled agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub id: String,
    pub name: String,
    pub hostname: String,
    pub version: String,
    pub enrolled_at: OffsetDateTime,
    pub last_contact: Option<OffsetDateTime>,
    /// (address, port) pairs it is configured to watch, as of its last report.
    pub watched_endpoints: u64,
    /// Endpoints whose latest sighting came from it.
    pub endpoints_seen: u64,
    pub revoked_at: Option<OffsetDateTime>,
}

/// Ways to narrow a certificate listing. All set fields must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateFilter {
    /// `not_after` at or before this instant (expired ones included).
    pub not_after_before: Option<OffsetDateTime>,
    /// `Some(true)`: only expired at `now`; `Some(false)`: only not expired.
    pub expired: Option<bool>,
    pub now: Option<OffsetDateTime>,
    /// Substring of the common name or any SAN, case-insensitive.
    pub query: Option<String>,
    /// Substring of the issuer, case-insensitive.
    pub issuer: Option<String>,
    /// Exact serial, lower-case hex.
    pub serial: Option<String>,
}

/// A page of results and the cursor of the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// What applying a report changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IngestSummary {
    pub observations: u64,
    pub tls_endpoints: u64,
    pub new_certificates: u64,
    pub new_endpoints: u64,
    /// Endpoints now serving a different certificate than before.
    pub replaced: u64,
    /// Endpoints whose presented data could not be used (undecodable certificates).
    pub rejected: u64,
    /// The report had been applied before; nothing changed this time.
    pub duplicate: bool,
}
