//! Ticket decisions, pure: the create / skip / note / reopen table of the ticketing
//! contract (`shared/contracts/ticketing.md` §0) and the two fixed ticket formats.
//! Connectors (not yet written) do the I/O; they ask these functions what to do.

use std::net::IpAddr;

use time::OffsetDateTime;

/// A ticket's status, normalised across ServiceNow, ServiceDesk Plus, Jira and RT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormStatus {
    /// New, open, in progress or on hold.
    Active,
    Resolved,
    Closed,
    Canceled,
}

/// A ticket found by its dedupe key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRef {
    pub id: String,
    pub display_no: String,
    pub status: NormStatus,
    pub created: OffsetDateTime,
}

/// What a run is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// An expiring (or expired, not renewed) certificate.
    Expiry,
    /// A vulnerability scan; `still_vulnerable` is false when the finding is gone.
    Vulnerability { still_vulnerable: bool },
}

/// What to do with the ticketing system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a new High-priority ticket.
    Create,
    /// Leave everything alone.
    Nothing,
    /// Add the latest results as a note to this (active) ticket.
    Note { id: String },
    /// Reopen this ticket and add a note.
    Reopen { id: String, display_no: String },
}

/// The contract's decision table. Several matches: an active ticket wins, otherwise
/// the newest.
pub fn decide(found: &[TicketRef], run: Run) -> Action {
    let chosen = found
        .iter()
        .filter(|t| t.status == NormStatus::Active)
        .min_by_key(|t| t.created) // the oldest active one is the one we keep
        .or_else(|| found.iter().max_by_key(|t| t.created));
    match (chosen, run) {
        (
            _,
            Run::Vulnerability {
                still_vulnerable: false,
            },
        ) => Action::Nothing,
        (None, _) => Action::Create,
        (Some(t), Run::Expiry) if t.status == NormStatus::Active => Action::Nothing,
        (Some(t), Run::Vulnerability { .. }) if t.status == NormStatus::Active => {
            Action::Note { id: t.id.clone() }
        }
        (Some(t), _) => Action::Reopen {
            id: t.id.clone(),
            display_no: t.display_no.clone(),
        },
    }
}

/// When the system refuses a reopen: the subject line cites the old ticket (the
/// contract's "create a new one with the same key, citing the old number").
pub fn cite_old(body: &str, old_display_no: &str) -> String {
    format!("Follows {old_display_no}, which could not be reopened.\n{body}")
}

/// The canonical dedupe text of an expiry ticket: `expiry|<SERIAL HEX>|<ip>`.
pub fn expiry_key_text(serial_hex: &str, ip: IpAddr) -> String {
    format!(
        "expiry|{}|{ip}",
        serial_hex.replace(':', "").to_ascii_uppercase()
    )
}

/// The canonical dedupe text of a vulnerability ticket: `vuln|<domain>|<ip>`.
pub fn vuln_key_text(domain: &str, ip: IpAddr) -> String {
    format!("vuln|{}|{ip}", domain.to_ascii_lowercase())
}

/// `Mon DD, YYYY`, as the ticket format asks.
pub fn ticket_date(t: OffsetDateTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {:02}, {}",
        MONTHS[usize::from(u8::from(t.month())) - 1],
        t.day(),
        t.year()
    )
}

/// Subject and body of an expiry ticket (the fixed format of issue 4).
pub fn expiry_ticket(
    common_name: &str,
    not_after: OffsetDateTime,
    external_url: &str,
) -> (String, String) {
    (
        format!("SSL Certificate {common_name} expiry"),
        format!(
            "The SSL Certificate {common_name} expiring soon, please take care\nCommon Name: {common_name}\nExpiry Date: {}\nScanned by: certkeeper running at {external_url}",
            ticket_date(not_after)
        ),
    )
}

/// What a vulnerability ticket reports for one domain at one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VulnFacts {
    pub domain: String,
    pub common_name: String,
    pub ip: IpAddr,
    /// IANA names of the weak suites found (never the healthy ones).
    pub weak_ciphers: Vec<String>,
    /// OCSP, CRL, Heartbleed and POODLE findings, each a line.
    pub findings: Vec<String>,
    pub signature_algorithm: String,
    pub not_after: OffsetDateTime,
    pub scan_time: OffsetDateTime,
}

impl VulnFacts {
    /// Anything to report at all.
    pub fn is_vulnerable(&self) -> bool {
        !self.weak_ciphers.is_empty() || !self.findings.is_empty()
    }
}

/// The finding kinds a vulnerability ticket is about besides weak ciphers: the
/// issue's OCSP, CRL, Heartbleed and POODLE.
pub fn ticket_finding(kind: crate::findings::FindingKind) -> bool {
    use crate::findings::FindingKind as K;
    matches!(
        kind,
        K::Heartbleed
            | K::Poodle
            | K::CertRevoked
            | K::RevocationStatusUnknown
            | K::OcspStapleInvalid
    )
}

/// Subject and body of a vulnerability ticket (the fixed format of issue 4).
pub fn vuln_ticket(f: &VulnFacts, external_url: &str) -> (String, String) {
    let mut body = format!("{}\n{}\n{}\n", f.domain, f.common_name, f.ip);
    if !f.weak_ciphers.is_empty() {
        body.push_str("Weak ciphers in use, which should be removed\n");
        for c in &f.weak_ciphers {
            body.push_str(c);
            body.push('\n');
        }
    }
    for line in &f.findings {
        body.push_str(&format!(
            "{line}; signature algorithm {}; expires {}\n",
            f.signature_algorithm,
            ticket_date(f.not_after)
        ));
    }
    let scan = f
        .scan_time
        .replace_nanosecond(0)
        .unwrap_or(f.scan_time)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    body.push_str(&format!(
        "Scan Time: {scan}\nScanned by: certkeeper running at {external_url}"
    ));
    (format!("Vulnerabilities for {}", f.domain), body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn t(id: &str, status: NormStatus, day: u8) -> TicketRef {
        TicketRef {
            id: id.into(),
            display_no: format!("INC{id}"),
            status,
            created: datetime!(2026-11-01 0:00 UTC) + time::Duration::days(i64::from(day)),
        }
    }

    #[test]
    fn follows_the_contract_table() {
        assert_eq!(decide(&[], Run::Expiry), Action::Create);
        assert_eq!(
            decide(&[t("1", NormStatus::Active, 1)], Run::Expiry),
            Action::Nothing
        );
        assert_eq!(
            decide(&[t("1", NormStatus::Resolved, 1)], Run::Expiry),
            Action::Reopen {
                id: "1".into(),
                display_no: "INC1".into()
            }
        );
        let vuln = Run::Vulnerability {
            still_vulnerable: true,
        };
        assert_eq!(decide(&[], vuln), Action::Create);
        assert_eq!(
            decide(&[t("1", NormStatus::Active, 1)], vuln),
            Action::Note { id: "1".into() }
        );
        assert_eq!(
            decide(&[t("1", NormStatus::Canceled, 1)], vuln),
            Action::Reopen {
                id: "1".into(),
                display_no: "INC1".into()
            }
        );
        assert_eq!(
            decide(
                &[t("1", NormStatus::Closed, 1)],
                Run::Vulnerability {
                    still_vulnerable: false
                }
            ),
            Action::Nothing,
            "a terminal ticket whose domain is no longer vulnerable is left alone"
        );
    }

    #[test]
    fn prefers_active_then_newest() {
        let found = [
            t("old", NormStatus::Closed, 1),
            t("new", NormStatus::Resolved, 5),
        ];
        assert_eq!(
            decide(&found, Run::Expiry),
            Action::Reopen {
                id: "new".into(),
                display_no: "INCnew".into()
            }
        );
        let found = [
            t("a", NormStatus::Closed, 9),
            t("b", NormStatus::Active, 2),
            t("c", NormStatus::Active, 3),
        ];
        assert_eq!(
            decide(
                &found,
                Run::Vulnerability {
                    still_vulnerable: true
                }
            ),
            Action::Note { id: "b".into() }
        );
    }

    #[test]
    fn keys_and_the_fixed_format() {
        let ip: IpAddr = "192.0.2.23".parse().unwrap();
        assert_eq!(expiry_key_text("0a:1b:ff", ip), "expiry|0A1BFF|192.0.2.23");
        assert_eq!(
            vuln_key_text("Example.COM", ip),
            "vuln|example.com|192.0.2.23"
        );
        let (subject, body) = expiry_ticket(
            "www.example.com",
            datetime!(2026-12-05 10:00 UTC),
            "https://ck.example.com:8443",
        );
        assert_eq!(subject, "SSL Certificate www.example.com expiry");
        assert_eq!(
            body,
            "The SSL Certificate www.example.com expiring soon, please take care\nCommon Name: www.example.com\nExpiry Date: Dec 05, 2026\nScanned by: certkeeper running at https://ck.example.com:8443"
        );
        assert!(cite_old(&body, "INC0010001").starts_with("Follows INC0010001"));
    }

    #[test]
    fn vulnerability_format() {
        let f = VulnFacts {
            domain: "test.example.com".into(),
            common_name: "example.com".into(),
            ip: "192.0.2.35".parse().unwrap(),
            weak_ciphers: vec!["TLS_RSA_WITH_RC4_128_SHA".into()],
            findings: vec!["Heartbleed (CVE-2014-0160): memory disclosed".into()],
            signature_algorithm: "sha1WithRSAEncryption".into(),
            not_after: datetime!(2027-01-10 00:00 UTC),
            scan_time: datetime!(2026-12-02 09:00 UTC),
        };
        let (subject, body) = vuln_ticket(&f, "https://ck.test");
        assert_eq!(subject, "Vulnerabilities for test.example.com");
        assert_eq!(
            body,
            "test.example.com\nexample.com\n192.0.2.35\nWeak ciphers in use, which should be removed\nTLS_RSA_WITH_RC4_128_SHA\nHeartbleed (CVE-2014-0160): memory disclosed; signature algorithm sha1WithRSAEncryption; expires Jan 10, 2027\nScan Time: 2026-12-02T09:00:00Z\nScanned by: certkeeper running at https://ck.test"
        );
        assert!(f.is_vulnerable());
    }
}
