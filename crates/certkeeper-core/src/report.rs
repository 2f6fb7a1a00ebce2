//! The report an agent pushes after a scan: where it looked and what each endpoint
//! presented. The server treats every field here as a claim; certificate facts are
//! always re-derived from the DER.

use std::net::IpAddr;

use base64::Engine;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Highest number of observations one report may carry; agents split larger scans.
pub const MAX_OBSERVATIONS_PER_REPORT: usize = 5_000;
/// Largest DER certificate the server decodes; real ones are a few kilobytes.
pub const MAX_CERT_DER_BYTES: usize = 64 * 1024;
/// Highest number of certificates in one presented chain that the server keeps.
pub const MAX_CHAIN_LEN: usize = 16;

/// One scan's results, pushed by an agent to `POST /api/v1/reports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanReport {
    /// Chosen by the agent; re-sending the same report (after a lost reply, from the
    /// spool) is accepted once and acknowledged again without changes.
    pub report_id: String,
    pub agent_version: String,
    pub hostname: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: OffsetDateTime,
    /// How many (address, port) pairs the agent is configured to watch.
    pub watched_endpoints: u64,
    pub observations: Vec<Observation>,
}

/// What one (host, IP, port) presented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observation {
    /// The name scanned, or the IP address when scanned by address.
    pub host: String,
    pub ip: IpAddr,
    pub port: u16,
    /// The SNI sent, if any.
    pub sni: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub seen_at: OffsetDateTime,
    pub outcome: Outcome,
}

/// The result of probing one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// A TLS handshake got as far as the server's certificates.
    Tls {
        /// e.g. `TLSv1.3`.
        protocol: String,
        /// IANA name, e.g. `TLS_AES_128_GCM_SHA256`.
        cipher: String,
        /// `starttls-smtp`, `starttls-ldap`, … when STARTTLS was used.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        starttls: Option<String>,
        /// The certificates as presented, leaf first, base64 DER.
        chain: Vec<DerBase64>,
    },
    /// Nothing usable: the reason, by kind.
    Failed { kind: FailureKind, message: String },
}

/// Why an endpoint gave no certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Name resolution failed.
    Dns,
    /// The port refused the connection.
    Refused,
    /// No answer within the connect timeout.
    ConnectTimeout,
    /// Connected, but the handshake did not finish within the handshake timeout.
    HandshakeTimeout,
    /// The peer did not speak TLS (or STARTTLS was refused).
    NotTls,
    /// The peer spoke TLS but the handshake failed before any certificate.
    Handshake,
    /// The connection was reset or closed mid-handshake.
    Reset,
    /// Some other network error.
    Network,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Dns => "dns",
            FailureKind::Refused => "refused",
            FailureKind::ConnectTimeout => "connect_timeout",
            FailureKind::HandshakeTimeout => "handshake_timeout",
            FailureKind::NotTls => "not_tls",
            FailureKind::Handshake => "handshake",
            FailureKind::Reset => "reset",
            FailureKind::Network => "network",
        }
    }
}

/// DER bytes carried as standard base64 in JSON.
#[derive(Clone, PartialEq, Eq)]
pub struct DerBase64(pub Vec<u8>);

impl std::fmt::Debug for DerBase64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DerBase64({} bytes)", self.0.len())
    }
}

impl Serialize for DerBase64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for DerBase64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(DerBase64)
            .map_err(|e| serde::de::Error::custom(format!("chain entry is not base64: {e}")))
    }
}

/// A report was well-formed JSON but breaks a rule.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    /// More observations than [`MAX_OBSERVATIONS_PER_REPORT`].
    #[error(
        "a report carries at most {MAX_OBSERVATIONS_PER_REPORT} observations, this one has {0}"
    )]
    TooManyObservations(usize),
    /// A chain longer than [`MAX_CHAIN_LEN`].
    #[error("a presented chain has at most {MAX_CHAIN_LEN} certificates, {host}:{port} has {len}")]
    ChainTooLong { host: String, port: u16, len: usize },
    /// A TLS outcome with no certificate in it.
    #[error("{host}:{port} reports TLS but no certificate")]
    EmptyChain { host: String, port: u16 },
    /// Port 0, an empty host or an empty report id.
    #[error("invalid field: {0}")]
    Invalid(String),
}

impl ScanReport {
    /// Check the structural rules a report must follow before anything is stored.
    pub fn check(&self) -> Result<(), ReportError> {
        if self.report_id.trim().is_empty() || self.report_id.len() > 128 {
            return Err(ReportError::Invalid(
                "report_id must be 1 to 128 characters".into(),
            ));
        }
        if self.observations.len() > MAX_OBSERVATIONS_PER_REPORT {
            return Err(ReportError::TooManyObservations(self.observations.len()));
        }
        for o in &self.observations {
            if o.port == 0 {
                return Err(ReportError::Invalid(format!("{}: port 0", o.host)));
            }
            if o.host.trim().is_empty() || o.host.len() > 253 {
                return Err(ReportError::Invalid(
                    "host must be 1 to 253 characters".into(),
                ));
            }
            if let Outcome::Tls { chain, .. } = &o.outcome {
                if chain.is_empty() {
                    return Err(ReportError::EmptyChain {
                        host: o.host.clone(),
                        port: o.port,
                    });
                }
                if chain.len() > MAX_CHAIN_LEN {
                    return Err(ReportError::ChainTooLong {
                        host: o.host.clone(),
                        port: o.port,
                        len: chain.len(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn sample() -> ScanReport {
        ScanReport {
            report_id: "r1".into(),
            agent_version: "0.1.0".into(),
            hostname: "scanner".into(),
            started_at: datetime!(2026-11-24 8:00 UTC),
            finished_at: datetime!(2026-11-24 8:01 UTC),
            watched_endpoints: 2,
            observations: vec![
                Observation {
                    host: "www.example.com".into(),
                    ip: "192.0.2.1".parse().unwrap(),
                    port: 443,
                    sni: Some("www.example.com".into()),
                    seen_at: datetime!(2026-11-24 8:00:30 UTC),
                    outcome: Outcome::Tls {
                        protocol: "TLSv1.3".into(),
                        cipher: "TLS_AES_128_GCM_SHA256".into(),
                        starttls: None,
                        chain: vec![DerBase64(vec![0x30, 0x03, 1, 2, 3])],
                    },
                },
                Observation {
                    host: "192.0.2.2".into(),
                    ip: "192.0.2.2".parse().unwrap(),
                    port: 8443,
                    sni: None,
                    seen_at: datetime!(2026-11-24 8:00:31 UTC),
                    outcome: Outcome::Failed {
                        kind: FailureKind::Refused,
                        message: "connection refused".into(),
                    },
                },
            ],
        }
    }

    #[test]
    fn json_round_trip() {
        let r = sample();
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""status":"tls""#));
        assert!(json.contains(r#""chain":["MAMBAgM="]"#));
        assert!(json.contains(r#""kind":"refused""#));
        assert_eq!(serde_json::from_str::<ScanReport>(&json).unwrap(), r);
        r.check().unwrap();
    }

    #[test]
    fn rejects_broken_reports() {
        let mut r = sample();
        r.observations[1].port = 0;
        assert!(matches!(r.check(), Err(ReportError::Invalid(_))));
        let mut r = sample();
        if let Outcome::Tls { chain, .. } = &mut r.observations[0].outcome {
            chain.clear();
        }
        assert!(matches!(r.check(), Err(ReportError::EmptyChain { .. })));
        let bad = serde_json::to_string(&sample())
            .unwrap()
            .replace("MAMBAgM=", "!!");
        assert!(serde_json::from_str::<ScanReport>(&bad).is_err());
        let extra = serde_json::to_string(&sample()).unwrap().replacen(
            "{",
            r#"{"common_name":"forged","#,
            1,
        );
        assert!(serde_json::from_str::<ScanReport>(&extra).is_err());
    }
}
