//! The JSON and CSV shapes of the API (names fixed in `shared/contracts/surface.md`).

use certkeeper_core::expiry::days_left;
use certkeeper_core::inventory::{Agent, Endpoint, ServedPeriod, StoredCertificate};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn opt_time(t: Option<OffsetDateTime>) -> Value {
    t.map(|t| Value::String(rfc3339(t))).unwrap_or(Value::Null)
}

pub fn endpoint(e: &Endpoint) -> Value {
    json!({
        "host": e.host,
        "ip": e.ip.to_string(),
        "port": e.port,
        "first_seen": rfc3339(e.first_seen),
        "last_seen": opt_time(e.last_seen),
        "last_checked": rfc3339(e.last_checked),
        "sha256": e.sha256.map(|f| f.to_string()),
        "agent": e.agent,
        "sni": e.sni,
        "protocol": e.protocol,
        "cipher": e.cipher,
        "starttls": e.starttls,
        "last_error": e.last_error.as_ref().map(|(k, m)| json!({"kind": k, "message": m})),
    })
}

pub fn certificate(c: &StoredCertificate, endpoints: &[Endpoint], now: OffsetDateTime) -> Value {
    let f = &c.facts;
    json!({
        "sha256": f.sha256.to_string(),
        "sha1": f.sha1,
        "serial": f.serial.as_str(),
        "subject": f.subject,
        "common_name": f.common_name,
        "sans": f.sans,
        "issuer": f.issuer,
        "not_before": rfc3339(f.not_before),
        "not_after": rfc3339(f.not_after),
        "days_left": days_left(f.not_after, now),
        "key_type": f.key.key_type.as_str(),
        "key_bits": f.key.bits,
        "key_curve": f.key.curve,
        "signature_algorithm": f.signature_algorithm,
        "self_signed": f.self_signed,
        "is_ca": f.is_ca,
        "subject_key_id": f.subject_key_id,
        "authority_key_id": f.authority_key_id,
        "ocsp_urls": f.ocsp_urls,
        "ca_issuer_urls": f.ca_issuer_urls,
        "crl_urls": f.crl_urls,
        "first_seen": rfc3339(c.first_seen),
        "endpoints": endpoints.iter().map(endpoint).collect::<Vec<_>>(),
    })
}

pub fn served(host: &str, port: u16, p: &ServedPeriod) -> Value {
    json!({
        "host": host,
        "port": port,
        "first_seen": rfc3339(p.first_seen),
        "last_seen": rfc3339(p.last_seen),
        "replaced_at": opt_time(p.replaced_at),
    })
}

pub fn agent(a: &Agent) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "hostname": a.hostname,
        "version": a.version,
        "enrolled_at": rfc3339(a.enrolled_at),
        "last_contact": opt_time(a.last_contact),
        "watched_endpoints": a.watched_endpoints,
        "endpoints_seen": a.endpoints_seen,
        "revoked": a.revoked_at.is_some(),
        "revoked_at": opt_time(a.revoked_at),
    })
}

/// The CSV export header.
pub const CSV_HEADER: &str = "sha256,common_name,sans,issuer,serial,not_before,not_after,days_left,key_type,key_bits,signature_algorithm,self_signed,endpoints\r\n";

/// One CSV row of a certificate; endpoints as `host:port` separated by spaces.
pub fn csv_row(c: &StoredCertificate, endpoints: &[Endpoint], now: OffsetDateTime) -> String {
    let f = &c.facts;
    let eps: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{}:{}", e.host, e.port))
        .collect();
    let fields = [
        f.sha256.to_string(),
        f.common_name.clone().unwrap_or_default(),
        f.sans.join(" "),
        f.issuer.clone(),
        f.serial.to_string(),
        rfc3339(f.not_before),
        rfc3339(f.not_after),
        days_left(f.not_after, now).to_string(),
        f.key.key_type.as_str().to_string(),
        f.key.bits.map(|b| b.to_string()).unwrap_or_default(),
        f.signature_algorithm.clone(),
        f.self_signed.to_string(),
        eps.join(" "),
    ];
    let mut row = fields
        .iter()
        .map(|s| csv_field(s))
        .collect::<Vec<_>>()
        .join(",");
    row.push_str("\r\n");
    row
}

/// RFC 4180 quoting, and a leading `'` on cells a spreadsheet would run as a formula
/// (certificate fields are attacker-controlled).
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) && s.parse::<f64>().is_err() {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(csv_field("-1"), "-1");
        assert_eq!(csv_field("-cmd"), "'-cmd");
    }
}
