//! Vulnerability findings. A TLS scan gathers [`TlsFacts`] (what the server did on
//! the wire); [`tls_findings`] turns them into findings by fixed rules, each finding
//! with a severity, its evidence and a one-line fix. Pure: no I/O, no clock.

use serde::{Deserialize, Serialize};

/// How bad a finding is, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// A protocol version a scan can offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "SSLv2")]
    Ssl2,
    #[serde(rename = "SSLv3")]
    Ssl3,
    #[serde(rename = "TLSv1.0")]
    Tls10,
    #[serde(rename = "TLSv1.1")]
    Tls11,
    #[serde(rename = "TLSv1.2")]
    Tls12,
    #[serde(rename = "TLSv1.3")]
    Tls13,
}

impl Protocol {
    pub const ALL: [Protocol; 6] = [
        Protocol::Ssl2,
        Protocol::Ssl3,
        Protocol::Tls10,
        Protocol::Tls11,
        Protocol::Tls12,
        Protocol::Tls13,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Ssl2 => "SSLv2",
            Protocol::Ssl3 => "SSLv3",
            Protocol::Tls10 => "TLSv1.0",
            Protocol::Tls11 => "TLSv1.1",
            Protocol::Tls12 => "TLSv1.2",
            Protocol::Tls13 => "TLSv1.3",
        }
    }

    /// The version number on the wire (`0x0303` for TLS 1.2); SSLv2 has `0x0002`.
    pub fn wire(self) -> u16 {
        match self {
            Protocol::Ssl2 => 0x0002,
            Protocol::Ssl3 => 0x0300,
            Protocol::Tls10 => 0x0301,
            Protocol::Tls11 => 0x0302,
            Protocol::Tls12 => 0x0303,
            Protocol::Tls13 => 0x0304,
        }
    }

    pub fn from_wire(v: u16) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.wire() == v)
    }
}

/// One cipher suite the server accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedSuite {
    pub id: u16,
    /// IANA name, e.g. `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`.
    pub iana: String,
    /// OpenSSL's name, e.g. `ECDHE-RSA-AES128-GCM-SHA256`, where OpenSSL knows it.
    pub openssl: Option<String>,
}

/// What one protocol version looked like on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolFacts {
    pub protocol: Protocol,
    pub supported: bool,
    /// Accepted suites, in the server's order of preference when it has one.
    pub suites: Vec<AcceptedSuite>,
    /// `Some(true)`: the server picks by its own preference; `Some(false)`: it
    /// follows the client's order; `None`: fewer than two suites, nothing to tell.
    pub server_order: Option<bool>,
}

/// Everything a vulnerability scan of one endpoint saw, before any judgement.
/// `None` means "not tested" (e.g. the protocol that test needs is not offered).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFacts {
    pub protocols: Vec<ProtocolFacts>,
    /// Size of the smallest finite-field DH prime the server used with a DHE suite.
    pub dh_bits: Option<u32>,
    /// Whether the server refused a downgraded hello carrying TLS_FALLBACK_SCSV.
    pub fallback_scsv: Option<bool>,
    /// Whether the server indicated RFC 5746 secure renegotiation (TLS ≤ 1.2).
    pub secure_renegotiation: Option<bool>,
    /// Whether the server agreed to TLS-level (DEFLATE) compression.
    pub compression: Option<bool>,
    /// Whether the server answered an over-long heartbeat with more than it was sent.
    pub heartbleed: Option<bool>,
    /// Whether the server accepted a ChangeCipherSpec before the key exchange.
    pub ccs_injection: Option<bool>,
    /// Whether a client-initiated renegotiation of a finished handshake succeeded.
    pub client_renegotiation: Option<bool>,
    /// Whether the server's answers to bad RSA padding differ (a Bleichenbacher oracle).
    pub robot: Option<bool>,
    /// Connections the scan opened.
    pub connections: u32,
    /// Checks that could not finish (a protocol whose hellos timed out twice): its
    /// "not supported" is not a verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incomplete: Vec<String>,
}

impl TlsFacts {
    pub fn protocol(&self, p: Protocol) -> Option<&ProtocolFacts> {
        self.protocols.iter().find(|f| f.protocol == p)
    }

    pub fn supports(&self, p: Protocol) -> bool {
        self.protocol(p).is_some_and(|f| f.supported)
    }
}

/// One list makes the enum, its stable names (serde and [`FindingKind::as_str`]) and
/// [`ALL_KINDS`], so the three cannot drift apart.
macro_rules! finding_kinds {
    ($($variant:ident => $name:literal,)*) => {
        /// Kinds of finding: stable names the API, tickets and benchmarks use.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum FindingKind {
            $(#[serde(rename = $name)] $variant,)*
        }

        impl FindingKind {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(FindingKind::$variant => $name,)*
                }
            }
        }

        /// Every kind, for parsing and listings.
        pub const ALL_KINDS: &[FindingKind] = &[$(FindingKind::$variant,)*];
    };
}

finding_kinds! {
    ProtocolSsl2 => "protocol_ssl2",
    ProtocolSsl3 => "protocol_ssl3",
    ProtocolTls10 => "protocol_tls10",
    ProtocolTls11 => "protocol_tls11",
    NoTls12 => "no_tls12",
    NoTls13 => "no_tls13",
    CipherNull => "cipher_null",
    CipherAnonymous => "cipher_anonymous",
    CipherExport => "cipher_export",
    CipherDes => "cipher_des",
    Cipher3des => "cipher_3des",
    CipherRc4 => "cipher_rc4",
    CipherMd5Mac => "cipher_md5_mac",
    CipherCbcLegacy => "cipher_cbc_legacy",
    CipherStaticRsa => "cipher_static_rsa",
    WeakDhParams => "weak_dh_params",
    Poodle => "poodle",
    NoFallbackScsv => "no_fallback_scsv",
    NoSecureRenegotiation => "no_secure_renegotiation",
    ClientRenegotiation => "client_renegotiation",
    TlsCompression => "tls_compression",
    Heartbleed => "heartbleed",
    CcsInjection => "ccs_injection",
    Robot => "robot",
    CertExpired => "cert_expired",
    CertNotYetValid => "cert_not_yet_valid",
    CertExpiringSoon => "cert_expiring_soon",
    CertSelfSigned => "cert_self_signed",
    CertUntrusted => "cert_untrusted",
    ChainIncomplete => "chain_incomplete",
    ChainMisordered => "chain_misordered",
    HostnameMismatch => "hostname_mismatch",
    WeakSignature => "weak_signature",
    WeakKey => "weak_key",
    ValidityTooLong => "validity_too_long",
    CertRevoked => "cert_revoked",
    OcspStaplingMissing => "ocsp_stapling_missing",
    OcspStapleInvalid => "ocsp_staple_invalid",
    RevocationStatusUnknown => "revocation_status_unknown",
    RevocationUnreachable => "revocation_unreachable",
}

impl FindingKind {
    /// Whether this finding is about a weak cipher suite (listed in tickets by name).
    pub fn is_weak_cipher(self) -> bool {
        use FindingKind::*;
        matches!(
            self,
            CipherNull
                | CipherAnonymous
                | CipherExport
                | CipherDes
                | Cipher3des
                | CipherRc4
                | CipherMd5Mac
                | CipherCbcLegacy
                | CipherStaticRsa
        )
    }
}

/// One finding about one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub severity: Severity,
    pub title: String,
    /// What was seen: suite names, protocol versions, sizes.
    pub evidence: String,
    /// One line saying what to change.
    pub fix: String,
    /// The weak suites this finding is about (IANA names), for cipher findings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suites: Vec<String>,
}

/// The weakness classes of one suite offered under one protocol, from its IANA
/// name (the names are systematic: `TLS_<kx>_<auth>_WITH_<cipher>_<mac>`).
pub fn suite_weaknesses(iana: &str, protocol: Protocol) -> Vec<FindingKind> {
    let n = iana.to_ascii_uppercase();
    let mut out = Vec::new();
    let (kx, cipher) = match n.split_once("_WITH_") {
        Some((kx, c)) => (kx.to_string(), c.to_string()),
        // TLS 1.3 suites (TLS_AES_128_GCM_SHA256) and SCSVs have no `_WITH_`.
        None => (String::new(), n.trim_start_matches("TLS_").to_string()),
    };
    // Integrity-only TLS 1.3 suites (RFC 9150: TLS_SHA256_SHA256) encrypt nothing.
    let integrity_only = kx.is_empty()
        && cipher
            .split_once('_')
            .is_some_and(|(a, b)| a.starts_with("SHA") && a == b);
    if cipher.starts_with("NULL") || n == "TLS_NULL_WITH_NULL_NULL" || integrity_only {
        out.push(FindingKind::CipherNull);
    }
    if kx.contains("_ANON") {
        out.push(FindingKind::CipherAnonymous);
    }
    if n.contains("EXPORT") {
        out.push(FindingKind::CipherExport);
    }
    if cipher.starts_with("DES_") || cipher.starts_with("DES40_") {
        out.push(FindingKind::CipherDes);
    }
    if cipher.contains("3DES") {
        out.push(FindingKind::Cipher3des);
    }
    if cipher.starts_with("RC4") {
        out.push(FindingKind::CipherRc4);
    }
    if cipher.ends_with("_MD5") {
        out.push(FindingKind::CipherMd5Mac);
    }
    if cipher.contains("_CBC") && matches!(protocol, Protocol::Ssl3 | Protocol::Tls10) {
        out.push(FindingKind::CipherCbcLegacy);
    }
    if kx == "TLS_RSA" || kx == "TLS_RSA_EXPORT" || kx == "SSL_RSA" || kx == "TLS_RSA_PSK" {
        out.push(FindingKind::CipherStaticRsa);
    }
    out
}

/// A yes/no fact, the answer that is a problem, and the finding it gives.
type BoolRule = (
    Option<bool>,
    bool,
    FindingKind,
    Severity,
    &'static str,
    &'static str,
    &'static str,
);

fn finding(
    kind: FindingKind,
    severity: Severity,
    title: &str,
    evidence: String,
    fix: &str,
) -> Finding {
    Finding {
        kind,
        severity,
        title: title.to_string(),
        evidence,
        fix: fix.to_string(),
        suites: Vec::new(),
    }
}

/// The findings a scan's facts call for, ordered by severity (worst first), then kind.
pub fn tls_findings(facts: &TlsFacts) -> Vec<Finding> {
    use FindingKind::*;
    let mut out = Vec::new();
    let offered = |p: Protocol| facts.supports(p);
    let proto_rules = [
        (
            Protocol::Ssl2,
            ProtocolSsl2,
            Severity::Critical,
            "SSLv2 is enabled",
            "Disable SSLv2.",
        ),
        (
            Protocol::Ssl3,
            ProtocolSsl3,
            Severity::High,
            "SSLv3 is enabled",
            "Disable SSLv3.",
        ),
        (
            Protocol::Tls10,
            ProtocolTls10,
            Severity::Medium,
            "TLS 1.0 is enabled",
            "Disable TLS 1.0; offer TLS 1.2 and 1.3.",
        ),
        (
            Protocol::Tls11,
            ProtocolTls11,
            Severity::Medium,
            "TLS 1.1 is enabled",
            "Disable TLS 1.1; offer TLS 1.2 and 1.3.",
        ),
    ];
    for (p, kind, sev, title, fix) in proto_rules {
        if offered(p) {
            let mut f = finding(
                kind,
                sev,
                title,
                format!("the server accepted a {} handshake", p.name()),
                fix,
            );
            if p == Protocol::Ssl2 {
                let kinds: Vec<String> = facts
                    .protocol(p)
                    .map(|f| f.suites.iter().map(|s| s.iana.clone()).collect())
                    .unwrap_or_default();
                f.evidence = format!(
                    "the server answered an SSLv2 CLIENT-HELLO with {}",
                    kinds.join(", ")
                );
                f.suites = kinds;
            }
            out.push(f);
        }
    }
    let any_offered = facts.protocols.iter().any(|p| p.supported);
    if any_offered && !offered(Protocol::Tls12) {
        let sev = if offered(Protocol::Tls13) {
            Severity::Info
        } else {
            Severity::High
        };
        out.push(finding(
            NoTls12,
            sev,
            "TLS 1.2 is not offered",
            "no TLS 1.2 ServerHello".into(),
            "Enable TLS 1.2 for clients without TLS 1.3.",
        ));
    }
    if any_offered && !offered(Protocol::Tls13) {
        out.push(finding(
            NoTls13,
            Severity::Low,
            "TLS 1.3 is not offered",
            "no TLS 1.3 ServerHello".into(),
            "Enable TLS 1.3.",
        ));
    }

    // Weak suites, one finding per class, listing each suite once per class.
    let classes: [(FindingKind, Severity, &str, &str); 9] = [
        (
            CipherNull,
            Severity::Critical,
            "NULL cipher suites (no encryption)",
            "Remove NULL suites (eNULL) from the cipher list.",
        ),
        (
            CipherAnonymous,
            Severity::Critical,
            "Anonymous cipher suites (no authentication)",
            "Remove anonymous suites (aNULL: ADH, AECDH).",
        ),
        (
            CipherExport,
            Severity::Critical,
            "EXPORT-grade cipher suites",
            "Remove EXPORT suites.",
        ),
        (
            CipherDes,
            Severity::High,
            "DES cipher suites",
            "Remove single-DES suites.",
        ),
        (
            CipherRc4,
            Severity::High,
            "RC4 cipher suites",
            "Remove RC4 suites.",
        ),
        (
            Cipher3des,
            Severity::Medium,
            "3DES cipher suites (SWEET32)",
            "Remove 3DES suites.",
        ),
        (
            CipherMd5Mac,
            Severity::Medium,
            "Cipher suites with an MD5 MAC",
            "Remove suites whose MAC is MD5.",
        ),
        (
            CipherCbcLegacy,
            Severity::Low,
            "CBC cipher suites under SSLv3/TLS 1.0 (BEAST)",
            "Disable SSLv3 and TLS 1.0, or their CBC suites.",
        ),
        (
            CipherStaticRsa,
            Severity::Low,
            "Static RSA key exchange (no forward secrecy)",
            "Prefer ECDHE/DHE suites and remove TLS_RSA_* suites.",
        ),
    ];
    for (kind, sev, title, fix) in classes {
        let mut suites: Vec<String> = Vec::new();
        let mut where_: Vec<&str> = Vec::new();
        // SSLv2's cipher kinds are reported under protocol_ssl2, not by class.
        for p in facts
            .protocols
            .iter()
            .filter(|p| p.supported && p.protocol != Protocol::Ssl2)
        {
            for s in &p.suites {
                if suite_weaknesses(&s.iana, p.protocol).contains(&kind) {
                    if !suites.contains(&s.iana) {
                        suites.push(s.iana.clone());
                    }
                    if !where_.contains(&p.protocol.name()) {
                        where_.push(p.protocol.name());
                    }
                }
            }
        }
        if !suites.is_empty() {
            let mut f = finding(
                kind,
                sev,
                title,
                format!("{} under {}", suites.join(", "), where_.join(", ")),
                fix,
            );
            f.suites = suites;
            out.push(f);
        }
    }
    if let Some(bits) = facts.dh_bits.filter(|b| *b < 2048) {
        let sev = if bits < 1024 {
            Severity::High
        } else {
            Severity::Medium
        };
        out.push(finding(
            WeakDhParams,
            sev,
            "Weak Diffie-Hellman parameters",
            format!("DHE with a {bits}-bit prime"),
            "Use DH parameters of at least 2048 bits, or ECDHE only.",
        ));
    }
    if let Some(p) = facts.protocol(Protocol::Ssl3).filter(|p| p.supported) {
        let cbc: Vec<String> = p
            .suites
            .iter()
            .filter(|s| s.iana.to_ascii_uppercase().contains("_CBC"))
            .map(|s| s.iana.clone())
            .collect();
        if !cbc.is_empty() {
            let mut f = finding(
                Poodle,
                Severity::High,
                "POODLE (SSLv3 with CBC suites)",
                format!("SSLv3 with {}", cbc.join(", ")),
                "Disable SSLv3.",
            );
            f.suites = cbc;
            out.push(f);
        }
    }
    let bool_rules: [BoolRule; 7] = [
        (
            facts.fallback_scsv,
            false,
            NoFallbackScsv,
            Severity::Medium,
            "TLS_FALLBACK_SCSV not supported (downgrade possible)",
            "a downgraded hello with TLS_FALLBACK_SCSV was answered with a ServerHello",
            "Upgrade the TLS library so it honours TLS_FALLBACK_SCSV, or offer one protocol version only.",
        ),
        (
            facts.secure_renegotiation,
            false,
            NoSecureRenegotiation,
            Severity::High,
            "Secure renegotiation (RFC 5746) not supported",
            "the ServerHello carried no renegotiation_info extension",
            "Upgrade the TLS library or enable RFC 5746 secure renegotiation.",
        ),
        (
            facts.client_renegotiation,
            true,
            ClientRenegotiation,
            Severity::Medium,
            "Client-initiated renegotiation allowed (DoS)",
            "a renegotiation started by the client completed",
            "Disable client-initiated renegotiation.",
        ),
        (
            facts.compression,
            true,
            TlsCompression,
            Severity::High,
            "TLS compression enabled (CRIME)",
            "the server chose the DEFLATE compression method",
            "Disable TLS compression.",
        ),
        (
            facts.heartbleed,
            true,
            Heartbleed,
            Severity::Critical,
            "Heartbleed (CVE-2014-0160)",
            "the server answered an over-long heartbeat request with memory contents",
            "Upgrade OpenSSL and replace the private key and certificate.",
        ),
        (
            facts.ccs_injection,
            true,
            CcsInjection,
            Severity::High,
            "OpenSSL CCS injection (CVE-2014-0224)",
            "the server accepted a ChangeCipherSpec before the key exchange",
            "Upgrade OpenSSL.",
        ),
        (
            facts.robot,
            true,
            Robot,
            Severity::High,
            "ROBOT (Bleichenbacher oracle on RSA key exchange)",
            "the server answered malformed RSA padding differently from well-formed",
            "Disable static RSA key exchange suites or patch the TLS stack.",
        ),
    ];
    for (seen, bad, kind, sev, title, evidence, fix) in bool_rules {
        if seen == Some(bad) {
            out.push(finding(kind, sev, title, evidence.to_string(), fix));
        }
    }
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.kind.cmp(&b.kind)));
    out
}

/// What a trust evaluation of the presented chain concluded (made by `pki`, which
/// checks signatures against the system roots and the administrator's CAs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum ChainTrust {
    Trusted,
    /// The leaf is its own issuer and not a trust anchor.
    SelfSigned,
    /// The chain ends at a certificate whose issuer was neither sent nor trusted.
    Incomplete {
        missing_issuer: String,
    },
    /// The chain ends at a root nobody here trusts, or a signature does not verify.
    Untrusted {
        reason: String,
    },
}

/// The certificate side of a vulnerability scan.
#[derive(Debug, Clone)]
pub struct CertCheck<'a> {
    /// As presented, leaf first.
    pub chain: &'a [crate::CertificateFacts],
    /// The name scanned (never an IP literal for SNI, but an IP is checked against
    /// IP SANs); `None` when scanned by address only.
    pub name: Option<&'a str>,
    pub now: time::OffsetDateTime,
    pub expiring_within_days: u32,
    pub max_validity_days: u32,
    pub trust: Option<ChainTrust>,
}

/// Whether `name` is covered by `pattern` (a DNS SAN, `*.` only as the whole
/// left-most label, matching exactly one label).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let p = pattern.trim_end_matches('.').to_ascii_lowercase();
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    if let Some(rest) = p.strip_prefix("*.") {
        match n.split_once('.') {
            Some((label, tail)) => !label.is_empty() && tail == rest && rest.contains('.'),
            None => false,
        }
    } else {
        p == n
    }
}

/// Certificate and chain findings, each of its own (an expired, self-signed,
/// wrong-name certificate gets three), worst first.
pub fn cert_findings(c: &CertCheck<'_>) -> Vec<Finding> {
    use FindingKind::*;
    let mut out = Vec::new();
    let Some(leaf) = c.chain.first() else {
        return out;
    };
    let date = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    if leaf.not_after <= c.now {
        out.push(finding(
            CertExpired,
            Severity::Critical,
            "Certificate expired",
            format!("notAfter {}", date(leaf.not_after)),
            "Renew the certificate.",
        ));
    } else if leaf.not_before > c.now {
        out.push(finding(
            CertNotYetValid,
            Severity::High,
            "Certificate not yet valid",
            format!("notBefore {}", date(leaf.not_before)),
            "Check the issuing CA's clock or serve the current certificate.",
        ));
    } else if leaf.not_after <= c.now + time::Duration::days(c.expiring_within_days.into()) {
        let days = (leaf.not_after - c.now).whole_days();
        out.push(finding(
            CertExpiringSoon,
            Severity::Medium,
            "Certificate expires soon",
            format!(
                "notAfter {} ({days} days left, policy window {} days)",
                date(leaf.not_after),
                c.expiring_within_days
            ),
            "Renew the certificate.",
        ));
    }
    let validity_days = (leaf.not_after - leaf.not_before).whole_days();
    if !leaf.is_ca && validity_days > i64::from(c.max_validity_days) {
        out.push(finding(
            ValidityTooLong,
            Severity::Low,
            "Validity longer than the policy allows",
            format!(
                "{validity_days} days, policy maximum {}",
                c.max_validity_days
            ),
            "Reissue with a shorter validity.",
        ));
    }
    if let Some(name) = c.name {
        let ip: Option<std::net::IpAddr> = name.parse().ok();
        let covered = if let Some(ip) = ip {
            leaf.sans
                .iter()
                .any(|s| s.parse::<std::net::IpAddr>().ok() == Some(ip))
        } else if leaf.sans.is_empty() {
            leaf.common_name
                .as_deref()
                .is_some_and(|cn| name_matches(cn, name))
        } else {
            leaf.sans.iter().any(|s| name_matches(s, name))
        };
        if !covered {
            let names = if leaf.sans.is_empty() {
                format!("CN {}", leaf.common_name.as_deref().unwrap_or("-"))
            } else {
                leaf.sans.join(", ")
            };
            out.push(finding(
                HostnameMismatch,
                Severity::High,
                "Certificate does not match the name scanned",
                format!("{name} is not in {names}"),
                "Serve a certificate whose SANs include this name.",
            ));
        }
    }
    for (i, cert) in c.chain.iter().enumerate() {
        // The signature of a root is never checked by anyone: skip self-signed CAs.
        if i > 0 && cert.self_signed {
            continue;
        }
        let alg = cert.signature_algorithm.to_ascii_lowercase();
        if alg.contains("md5")
            || alg.contains("md2")
            || alg.contains("sha1")
            || alg == "ecdsa-with-sha1"
        {
            let what = if i == 0 {
                "certificate"
            } else {
                "intermediate"
            };
            out.push(finding(
                WeakSignature,
                if alg.contains("md") {
                    Severity::High
                } else {
                    Severity::Medium
                },
                "Weak signature algorithm",
                format!(
                    "{what} {} signed with {}",
                    cert.common_name.as_deref().unwrap_or(&cert.subject),
                    cert.signature_algorithm
                ),
                "Reissue with a SHA-256 (or stronger) signature.",
            ));
        }
    }
    let weak_key = match (leaf.key.key_type, leaf.key.bits) {
        (crate::KeyType::Rsa | crate::KeyType::Dsa, Some(b)) if b < 2048 => Some(b),
        (crate::KeyType::Ec, Some(b)) if b < 256 => Some(b),
        _ => None,
    };
    if let Some(bits) = weak_key {
        out.push(finding(
            WeakKey,
            if bits < 1024 {
                Severity::Critical
            } else {
                Severity::High
            },
            "Weak public key",
            format!("{} {bits} bits", leaf.key.key_type.as_str()),
            "Reissue with RSA 2048+ or ECDSA P-256+.",
        ));
    }
    // Order: each certificate followed by its issuer.
    for w in c.chain.windows(2) {
        if w[0].issuer != w[1].subject {
            let later = c
                .chain
                .iter()
                .any(|x| x.subject == w[0].issuer && !std::ptr::eq(x, &w[1]));
            out.push(finding(
                ChainMisordered,
                Severity::Medium,
                "Chain misordered or with unrelated certificates",
                format!(
                    "{} is followed by {}{}",
                    w[0].subject,
                    w[1].subject,
                    if later {
                        ", its issuer comes later"
                    } else {
                        ""
                    }
                ),
                "Serve the leaf, then each issuer in order.",
            ));
            break;
        }
    }
    match &c.trust {
        Some(ChainTrust::SelfSigned) => out.push(finding(
            CertSelfSigned,
            Severity::High,
            "Self-signed certificate",
            format!("{} is its own issuer", leaf.subject),
            "Serve a certificate from a trusted CA (or add this one as a trusted CA).",
        )),
        Some(ChainTrust::Incomplete { missing_issuer }) => out.push(finding(
            ChainIncomplete,
            Severity::Medium,
            "Chain incomplete",
            format!("the issuer {missing_issuer} was not sent"),
            "Serve the intermediate certificates with the leaf.",
        )),
        Some(ChainTrust::Untrusted { reason }) => out.push(finding(
            CertUntrusted,
            Severity::High,
            "Certificate not trusted",
            reason.clone(),
            "Serve a chain to a trusted root, or add the root as a trusted CA.",
        )),
        Some(ChainTrust::Trusted) | None => {}
    }
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.kind.cmp(&b.kind)));
    out
}

/// Where a revocation status came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationSource {
    /// The OCSP response the server stapled to its handshake.
    Stapled,
    /// The OCSP responder named in the leaf's AIA.
    Ocsp,
    /// The CRL at the leaf's CRL distribution point.
    Crl,
}

impl RevocationSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationSource::Stapled => "stapled",
            RevocationSource::Ocsp => "ocsp",
            RevocationSource::Crl => "crl",
        }
    }
}

/// What one revocation source said about the leaf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RevocationStatus {
    Good,
    Revoked {
        #[serde(default, with = "time::serde::rfc3339::option")]
        revoked_at: Option<time::OffsetDateTime>,
        /// RFC 5280 reason name (`keyCompromise`, …), when one was given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// An answer that says nothing: the responder does not know the certificate,
    /// or the answer is out of date.
    Unknown {
        reason: String,
    },
    /// No usable answer: not fetched (refused address, redirect elsewhere, timeout,
    /// HTTP error, too large) or not decodable/verifiable.
    Unreachable {
        reason: String,
    },
}

/// One revocation check of the leaf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationCheck {
    pub source: RevocationSource,
    /// The responder or CRL address (none for a stapled response).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(flatten)]
    pub status: RevocationStatus,
}

/// The revocation side of a scan. `None`/empty means "not tested".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationFacts {
    /// Whether the server stapled an OCSP response when asked (status_request in a
    /// TLS ≤ 1.2 hello); `None` when no TLS ≤ 1.2 hello was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stapling: Option<bool>,
    /// Whether the leaf names an OCSP responder (AIA).
    #[serde(default)]
    pub leaf_has_ocsp: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<RevocationCheck>,
    /// Why the online checks were not run, when they were not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_tested: Option<String>,
}

/// Revocation findings: a revoked leaf (critical, whichever source said so), a
/// missing or unusable staple, sources that do not know the leaf or could not be
/// asked. Worst first.
pub fn revocation_findings(r: &RevocationFacts) -> Vec<Finding> {
    use FindingKind::*;
    let mut out = Vec::new();
    let date = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let from = |c: &RevocationCheck| match &c.url {
        Some(u) => format!("{} {u}", c.source.as_str()),
        None => c.source.as_str().to_string(),
    };
    let revoked: Vec<String> = r
        .checks
        .iter()
        .filter_map(|c| match &c.status {
            RevocationStatus::Revoked { revoked_at, reason } => Some(format!(
                "revoked {} reason {} (source: {})",
                revoked_at
                    .map(date)
                    .unwrap_or_else(|| "at an unknown time".into()),
                reason.as_deref().unwrap_or("unspecified"),
                from(c)
            )),
            _ => None,
        })
        .collect();
    if !revoked.is_empty() {
        out.push(finding(
            CertRevoked,
            Severity::Critical,
            "Certificate revoked",
            revoked.join("; "),
            "Replace the certificate now (and the key, if it was compromised).",
        ));
    }
    if r.stapling == Some(false) && r.leaf_has_ocsp {
        out.push(finding(
            OcspStaplingMissing,
            Severity::Low,
            "OCSP stapling not offered",
            "the server sent no CertificateStatus to a hello asking for one".into(),
            "Enable OCSP stapling (nginx ssl_stapling on; Apache SSLUseStapling on).",
        ));
    }
    let (mut bad_staple, mut unknown, mut unreachable) = (Vec::new(), Vec::new(), Vec::new());
    for c in &r.checks {
        match (&c.status, c.source) {
            (
                RevocationStatus::Unknown { reason } | RevocationStatus::Unreachable { reason },
                RevocationSource::Stapled,
            ) => bad_staple.push(reason.clone()),
            (RevocationStatus::Unknown { reason }, _) => {
                unknown.push(format!("{}: {reason}", from(c)))
            }
            (RevocationStatus::Unreachable { reason }, _) => {
                unreachable.push(format!("{}: {reason}", from(c)))
            }
            _ => {}
        }
    }
    if !bad_staple.is_empty() {
        out.push(finding(
            OcspStapleInvalid,
            Severity::Medium,
            "Stapled OCSP response unusable",
            bad_staple.join("; "),
            "Check the server's OCSP stapling (responder reachable from it, response current).",
        ));
    }
    if !unknown.is_empty() {
        out.push(finding(
            RevocationStatusUnknown,
            Severity::Low,
            "Revocation status unknown",
            unknown.join("; "),
            "Ask the CA why its responder or CRL does not cover this certificate.",
        ));
    }
    if !unreachable.is_empty() {
        out.push(finding(
            RevocationUnreachable,
            Severity::Low,
            "Revocation source unreachable",
            unreachable.join("; "),
            "Make the CA's OCSP responder and CRL reachable from here, or allow the address.",
        ));
    }
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.kind.cmp(&b.kind)));
    out
}

impl std::str::FromStr for FindingKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_KINDS
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown finding kind {s:?}"))
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Severity::Info,
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| format!("unknown severity {s:?} (info, low, medium, high, critical)"))
    }
}

/// What changed for one endpoint between its open findings and a new scan's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingChanges {
    /// In this scan, not open before (first seen, or back after a fix).
    pub new: Vec<FindingKind>,
    /// Open before, found again.
    pub still: Vec<FindingKind>,
    /// Open before, gone now.
    pub fixed: Vec<FindingKind>,
}

/// The kinds a scan really tested: only those can be called fixed when not found.
/// `cert_checked`: the chain was obtained and decoded; `trust_checked`: its trust
/// was judged.
pub fn evaluated_kinds(
    facts: &TlsFacts,
    cert_checked: bool,
    trust_checked: bool,
) -> Vec<FindingKind> {
    use FindingKind::*;
    let tested = |p: Protocol| {
        facts.protocol(p).is_some() && !facts.incomplete.iter().any(|n| n.starts_with(p.name()))
    };
    let mut out = Vec::new();
    for (p, k) in [
        (Protocol::Ssl2, ProtocolSsl2),
        (Protocol::Ssl3, ProtocolSsl3),
        (Protocol::Tls10, ProtocolTls10),
        (Protocol::Tls11, ProtocolTls11),
        (Protocol::Tls12, NoTls12),
        (Protocol::Tls13, NoTls13),
    ] {
        if tested(p) {
            out.push(k);
        }
    }
    if tested(Protocol::Ssl3) {
        out.push(Poodle);
    }
    let all_protocols = Protocol::ALL[1..].iter().all(|p| tested(*p));
    if all_protocols {
        out.extend([
            CipherNull,
            CipherAnonymous,
            CipherExport,
            CipherDes,
            Cipher3des,
            CipherRc4,
            CipherMd5Mac,
            CipherCbcLegacy,
            CipherStaticRsa,
            WeakDhParams,
        ]);
    }
    for (seen, k) in [
        (facts.fallback_scsv, NoFallbackScsv),
        (facts.secure_renegotiation, NoSecureRenegotiation),
        (facts.client_renegotiation, ClientRenegotiation),
        (facts.compression, TlsCompression),
        (facts.heartbleed, Heartbleed),
        (facts.ccs_injection, CcsInjection),
        (facts.robot, Robot),
    ] {
        if seen.is_some() {
            out.push(k);
        }
    }
    if cert_checked {
        out.extend([
            CertExpired,
            CertNotYetValid,
            CertExpiringSoon,
            ChainMisordered,
            HostnameMismatch,
            WeakSignature,
            WeakKey,
            ValidityTooLong,
        ]);
        if trust_checked {
            out.extend([CertSelfSigned, CertUntrusted, ChainIncomplete]);
        }
    }
    out
}

/// Compare the kinds open before a scan with the kinds it found; an open kind not
/// found is fixed only if this scan tested it (`evaluated`).
pub fn finding_changes(
    open_before: &[FindingKind],
    found: &[FindingKind],
    evaluated: &[FindingKind],
) -> FindingChanges {
    let mut c = FindingChanges::default();
    for k in found {
        let list = if open_before.contains(k) {
            &mut c.still
        } else {
            &mut c.new
        };
        if !list.contains(k) {
            list.push(*k);
        }
    }
    for k in open_before {
        if !found.contains(k) && evaluated.contains(k) && !c.fixed.contains(k) {
            c.fixed.push(*k);
        }
    }
    c.new.sort();
    c.still.sort();
    c.fixed.sort();
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suite(iana: &str) -> AcceptedSuite {
        AcceptedSuite {
            id: 0,
            iana: iana.into(),
            openssl: None,
        }
    }

    fn proto(p: Protocol, suites: &[&str]) -> ProtocolFacts {
        ProtocolFacts {
            protocol: p,
            supported: true,
            suites: suites.iter().map(|s| suite(s)).collect(),
            server_order: None,
        }
    }

    fn cert(subject: &str, issuer: &str, sans: &[&str]) -> crate::CertificateFacts {
        let now = time::OffsetDateTime::now_utc();
        crate::CertificateFacts {
            sha256: crate::Fingerprint::from_bytes([0; 32]),
            sha1: String::new(),
            serial: crate::Serial::from_be_bytes(&[1]),
            subject: subject.into(),
            common_name: Some(subject.trim_start_matches("CN=").into()),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            issuer: issuer.into(),
            not_before: now - time::Duration::days(10),
            not_after: now + time::Duration::days(80),
            key: crate::KeyInfo {
                key_type: crate::KeyType::Ec,
                bits: Some(256),
                curve: Some("P-256".into()),
            },
            signature_algorithm: "ecdsa-with-SHA256".into(),
            is_ca: false,
            self_signed: subject == issuer,
            subject_key_id: None,
            authority_key_id: None,
            ocsp_urls: vec![],
            ca_issuer_urls: vec![],
            crl_urls: vec![],
        }
    }

    fn check(
        chain: &[crate::CertificateFacts],
        name: Option<&'static str>,
        trust: ChainTrust,
    ) -> Vec<&'static str> {
        let c = CertCheck {
            chain,
            name,
            now: time::OffsetDateTime::now_utc(),
            expiring_within_days: 30,
            max_validity_days: 398,
            trust: Some(trust),
        };
        let mut k: Vec<&str> = cert_findings(&c).iter().map(|f| f.kind.as_str()).collect();
        k.sort();
        k
    }

    #[test]
    fn changes_between_scans_are_new_still_and_fixed() {
        use FindingKind::*;
        let c = finding_changes(
            &[Heartbleed, CipherRc4],
            &[CipherRc4, ProtocolTls10, ProtocolTls10],
            ALL_KINDS,
        );
        assert_eq!(c.new, [ProtocolTls10]);
        assert_eq!(c.still, [CipherRc4]);
        assert_eq!(c.fixed, [Heartbleed]);
        assert_eq!(finding_changes(&[], &[], &[]), FindingChanges::default());
        // Heartbleed not tested this time (its probe timed out): not fixed, still open.
        let untested = finding_changes(&[Heartbleed], &[], &[CipherRc4]);
        assert!(untested.fixed.is_empty());
        let facts = TlsFacts {
            protocols: vec![proto(Protocol::Tls12, &[])],
            heartbleed: None,
            compression: Some(false),
            ..Default::default()
        };
        let ev = evaluated_kinds(&facts, false, false);
        assert!(ev.contains(&NoTls12) && ev.contains(&TlsCompression));
        assert!(
            !ev.contains(&Heartbleed) && !ev.contains(&CertExpired) && !ev.contains(&CipherRc4)
        );
        for k in ALL_KINDS {
            assert_eq!(k.as_str().parse::<FindingKind>().unwrap(), *k);
            // The JSON name is the same stable name.
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        assert_eq!(ALL_KINDS.len(), RevocationUnreachable as usize + 1);
        assert_eq!("high".parse::<Severity>().unwrap(), Severity::High);
        assert!("severe".parse::<Severity>().is_err());
    }

    #[test]
    fn names_match_sans_with_single_label_wildcards() {
        assert!(name_matches("www.example.com", "WWW.example.com."));
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.com", "example.com"));
    }

    #[test]
    fn each_certificate_problem_is_its_own_finding() {
        let good = cert("CN=www.test", "CN=Int", &["www.test"]);
        let int = {
            let mut c = cert("CN=Int", "CN=Root", &[]);
            c.is_ca = true;
            c
        };
        assert_eq!(
            check(
                &[good.clone(), int.clone()],
                Some("www.test"),
                ChainTrust::Trusted
            ),
            Vec::<&str>::new()
        );
        assert_eq!(
            check(
                &[good.clone(), int.clone()],
                Some("other.test"),
                ChainTrust::Trusted
            ),
            ["hostname_mismatch"]
        );
        assert_eq!(
            check(
                std::slice::from_ref(&good),
                Some("www.test"),
                ChainTrust::Incomplete {
                    missing_issuer: "CN=Int".into()
                }
            ),
            ["chain_incomplete"]
        );
        assert_eq!(
            check(
                &[int.clone(), good.clone()],
                None,
                ChainTrust::Untrusted { reason: "x".into() }
            ),
            ["cert_untrusted", "chain_misordered"]
        );
        let mut old = cert("CN=old.test", "CN=old.test", &["old.test"]);
        old.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        old.not_before = old.not_after - time::Duration::days(800);
        old.signature_algorithm = "sha1WithRSAEncryption".into();
        old.key = crate::KeyInfo {
            key_type: crate::KeyType::Rsa,
            bits: Some(1024),
            curve: None,
        };
        assert_eq!(
            check(&[old], Some("www.test"), ChainTrust::SelfSigned),
            [
                "cert_expired",
                "cert_self_signed",
                "hostname_mismatch",
                "validity_too_long",
                "weak_key",
                "weak_signature"
            ]
        );
        let mut soon = good.clone();
        soon.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(5);
        assert_eq!(
            check(&[soon], Some("www.test"), ChainTrust::Trusted),
            ["cert_expiring_soon"]
        );
        let mut later = good.clone();
        later.not_before = time::OffsetDateTime::now_utc() + time::Duration::days(5);
        assert_eq!(
            check(&[later], Some("www.test"), ChainTrust::Trusted),
            ["cert_not_yet_valid"]
        );
    }

    #[test]
    fn suites_are_classified_by_their_iana_names() {
        use FindingKind::*;
        let t12 = Protocol::Tls12;
        assert_eq!(
            suite_weaknesses("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", t12),
            vec![]
        );
        assert_eq!(
            suite_weaknesses("TLS_AES_256_GCM_SHA384", Protocol::Tls13),
            vec![]
        );
        assert_eq!(
            suite_weaknesses("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", t12),
            vec![]
        );
        assert_eq!(
            suite_weaknesses("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", Protocol::Tls10),
            vec![CipherCbcLegacy]
        );
        assert_eq!(
            suite_weaknesses("TLS_RSA_WITH_NULL_SHA256", t12),
            vec![CipherNull, CipherStaticRsa]
        );
        assert_eq!(
            suite_weaknesses("TLS_DH_anon_WITH_AES_128_CBC_SHA", t12),
            vec![CipherAnonymous]
        );
        assert_eq!(
            suite_weaknesses("TLS_ECDH_anon_WITH_NULL_SHA", t12),
            vec![CipherNull, CipherAnonymous]
        );
        assert_eq!(
            suite_weaknesses("TLS_RSA_EXPORT_WITH_RC4_40_MD5", Protocol::Tls10),
            vec![CipherExport, CipherRc4, CipherMd5Mac, CipherStaticRsa]
        );
        assert_eq!(
            suite_weaknesses("TLS_RSA_WITH_DES_CBC_SHA", Protocol::Tls11),
            vec![CipherDes, CipherStaticRsa]
        );
        assert_eq!(
            suite_weaknesses("TLS_RSA_WITH_3DES_EDE_CBC_SHA", t12),
            vec![Cipher3des, CipherStaticRsa]
        );
        assert_eq!(
            suite_weaknesses("TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA", t12),
            vec![Cipher3des]
        );
        assert_eq!(
            suite_weaknesses("TLS_ECDHE_RSA_WITH_RC4_128_SHA", t12),
            vec![CipherRc4]
        );
        assert_eq!(
            suite_weaknesses("TLS_RSA_WITH_AES_256_GCM_SHA384", t12),
            vec![CipherStaticRsa]
        );
        assert_eq!(
            suite_weaknesses("TLS_DHE_RSA_WITH_AES_256_GCM_SHA384", t12),
            vec![]
        );
    }

    #[test]
    fn a_modern_server_has_no_findings() {
        let facts = TlsFacts {
            protocols: vec![
                proto(Protocol::Tls12, &["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]),
                proto(Protocol::Tls13, &["TLS_AES_128_GCM_SHA256"]),
            ],
            fallback_scsv: Some(true),
            secure_renegotiation: Some(true),
            compression: Some(false),
            heartbleed: Some(false),
            ..Default::default()
        };
        assert_eq!(tls_findings(&facts), vec![]);
    }

    #[test]
    fn a_legacy_server_gets_one_finding_per_class_worst_first() {
        let facts = TlsFacts {
            protocols: vec![
                proto(Protocol::Ssl3, &["TLS_RSA_WITH_AES_128_CBC_SHA"]),
                proto(
                    Protocol::Tls10,
                    &["TLS_RSA_WITH_AES_128_CBC_SHA", "TLS_RSA_WITH_RC4_128_SHA"],
                ),
                proto(Protocol::Tls12, &["TLS_RSA_WITH_RC4_128_SHA"]),
            ],
            dh_bits: Some(1024),
            secure_renegotiation: Some(false),
            fallback_scsv: Some(false),
            ..Default::default()
        };
        let f = tls_findings(&facts);
        let kinds: Vec<&str> = f.iter().map(|f| f.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "protocol_ssl3",
                "cipher_rc4",
                "poodle",
                "no_secure_renegotiation",
                "protocol_tls10",
                "weak_dh_params",
                "no_fallback_scsv",
                "no_tls13",
                "cipher_cbc_legacy",
                "cipher_static_rsa"
            ]
        );
        let rc4 = f.iter().find(|f| f.kind == FindingKind::CipherRc4).unwrap();
        assert_eq!(rc4.suites, ["TLS_RSA_WITH_RC4_128_SHA"]);
        assert_eq!(
            rc4.evidence,
            "TLS_RSA_WITH_RC4_128_SHA under TLSv1.0, TLSv1.2"
        );
        let rsa = f
            .iter()
            .find(|f| f.kind == FindingKind::CipherStaticRsa)
            .unwrap();
        assert_eq!(rsa.suites.len(), 2);
    }

    #[test]
    fn tls13_only_is_fine_and_untested_checks_say_nothing() {
        let facts = TlsFacts {
            protocols: vec![proto(Protocol::Tls13, &["TLS_AES_128_GCM_SHA256"])],
            ..Default::default()
        };
        let f = tls_findings(&facts);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, FindingKind::NoTls12);
        assert_eq!(f[0].severity, Severity::Info);
    }
    #[test]
    fn revocation_findings_each_of_its_own() {
        use RevocationSource::*;
        let check = |source, status| RevocationCheck {
            source,
            url: (source != Stapled).then(|| "http://ca.test/x".to_string()),
            status,
        };
        let kinds = |r: &RevocationFacts| -> Vec<&'static str> {
            revocation_findings(r)
                .iter()
                .map(|f| f.kind.as_str())
                .collect()
        };
        let good = RevocationFacts {
            stapling: Some(true),
            leaf_has_ocsp: true,
            checks: vec![
                check(Stapled, RevocationStatus::Good),
                check(Ocsp, RevocationStatus::Good),
                check(Crl, RevocationStatus::Good),
            ],
            not_tested: None,
        };
        assert_eq!(kinds(&good), Vec::<&str>::new());
        assert_eq!(kinds(&RevocationFacts::default()), Vec::<&str>::new());
        let at = time::macros::datetime!(2026-11-30 10:00 UTC);
        let revoked = RevocationStatus::Revoked {
            revoked_at: Some(at),
            reason: Some("keyCompromise".into()),
        };
        let r = RevocationFacts {
            stapling: Some(false),
            leaf_has_ocsp: true,
            checks: vec![
                check(Ocsp, revoked.clone()),
                check(
                    Crl,
                    RevocationStatus::Unreachable {
                        reason: "timed out".into(),
                    },
                ),
            ],
            not_tested: None,
        };
        let f = revocation_findings(&r);
        assert_eq!(
            kinds(&r),
            [
                "cert_revoked",
                "ocsp_stapling_missing",
                "revocation_unreachable"
            ]
        );
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(
            f[0].evidence,
            "revoked 2026-11-30T10:00:00Z reason keyCompromise (source: ocsp http://ca.test/x)"
        );
        assert_eq!(f[2].evidence, "crl http://ca.test/x: timed out");
        // No stapling finding when the leaf names no responder to staple from.
        let mut no_ocsp = r.clone();
        no_ocsp.leaf_has_ocsp = false;
        assert!(!kinds(&no_ocsp).contains(&"ocsp_stapling_missing"));
        let odd = RevocationFacts {
            stapling: Some(true),
            leaf_has_ocsp: true,
            checks: vec![
                check(
                    Stapled,
                    RevocationStatus::Unreachable {
                        reason: "signature does not verify".into(),
                    },
                ),
                check(
                    Ocsp,
                    RevocationStatus::Unknown {
                        reason: "the responder does not know the certificate".into(),
                    },
                ),
                check(Stapled, revoked),
            ],
            not_tested: None,
        };
        assert_eq!(
            kinds(&odd),
            [
                "cert_revoked",
                "ocsp_staple_invalid",
                "revocation_status_unknown"
            ]
        );
        assert!(
            revocation_findings(&odd)[0]
                .evidence
                .ends_with("(source: stapled)")
        );
        let json = serde_json::to_value(&odd.checks[2]).unwrap();
        assert_eq!(json["status"], "revoked");
        assert_eq!(json["revoked_at"], "2026-11-30T10:00:00Z");
        let back: RevocationCheck = serde_json::from_value(json).unwrap();
        assert_eq!(back, odd.checks[2]);
    }
}
