//! Certificate policy: ordered, pure checks, each with a machine rule name and a
//! human message. The same checks judge imports, server-kept requests and issued
//! certificates. The server-wide policy may be overridden field by field per team.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cert::{CertificateFacts, KeyInfo, KeyType};

/// CA/Browser Forum maximum validity presets, in days.
pub const PRESET_398: u32 = 398;
pub const PRESET_200: u32 = 200;
pub const PRESET_100: u32 = 100;
pub const PRESET_47: u32 = 47;

/// What certificates must look like. Defaults follow the CA/Browser Forum today.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertificatePolicy {
    /// Longest allowed validity (notAfter − notBefore), in days.
    pub max_validity_days: u32,
    /// Allowed key types (`rsa`, `ec`, `ed25519`).
    pub allowed_key_types: Vec<KeyType>,
    /// Smallest RSA modulus, in bits.
    pub min_rsa_bits: u32,
    /// Smallest EC field size, in bits.
    pub min_ec_bits: u32,
    /// Signature algorithms refused (OpenSSL short names, e.g. `sha1WithRSAEncryption`).
    pub forbidden_signature_algorithms: Vec<String>,
    /// If not empty, every DNS name (CN and SANs) must match one of these patterns
    /// (`*.example.com` matches any name under example.com; others match exactly).
    pub allowed_names: Vec<String>,
    /// Per-team overrides (`[policy.teams.NAME]`): the fields a team sets replace the
    /// server-wide ones for certificates and requests of that team.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub teams: BTreeMap<String, PolicyOverride>,
}

/// The fields of a policy a team sets; the others come from the server-wide policy.
/// Lists replace the server-wide list, they are not added to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_validity_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_key_types: Option<Vec<KeyType>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_rsa_bits: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_ec_bits: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forbidden_signature_algorithms: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_names: Option<Vec<String>>,
}

impl Default for CertificatePolicy {
    fn default() -> Self {
        CertificatePolicy {
            max_validity_days: PRESET_398,
            allowed_key_types: vec![KeyType::Rsa, KeyType::Ec, KeyType::Ed25519],
            min_rsa_bits: 2048,
            min_ec_bits: 256,
            forbidden_signature_algorithms: vec![
                "md2WithRSAEncryption".into(),
                "md5WithRSAEncryption".into(),
                "sha1WithRSAEncryption".into(),
                "ecdsa-with-SHA1".into(),
                "dsaWithSHA1".into(),
            ],
            allowed_names: Vec::new(),
            teams: BTreeMap::new(),
        }
    }
}

/// `base` with the fields `over` sets replaced; the result has no team overrides of
/// its own.
pub fn merge(base: &CertificatePolicy, over: &PolicyOverride) -> CertificatePolicy {
    CertificatePolicy {
        max_validity_days: over.max_validity_days.unwrap_or(base.max_validity_days),
        allowed_key_types: over
            .allowed_key_types
            .clone()
            .unwrap_or_else(|| base.allowed_key_types.clone()),
        min_rsa_bits: over.min_rsa_bits.unwrap_or(base.min_rsa_bits),
        min_ec_bits: over.min_ec_bits.unwrap_or(base.min_ec_bits),
        forbidden_signature_algorithms: over
            .forbidden_signature_algorithms
            .clone()
            .unwrap_or_else(|| base.forbidden_signature_algorithms.clone()),
        allowed_names: over
            .allowed_names
            .clone()
            .unwrap_or_else(|| base.allowed_names.clone()),
        teams: BTreeMap::new(),
    }
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Stable rule name: `max_validity`, `key_type`, `key_size`, `signature_algorithm`, `name`.
    pub rule: String,
    pub message: String,
}

fn violation(rule: &str, message: String) -> Violation {
    Violation {
        rule: rule.into(),
        message,
    }
}

fn name_matches(name: &str, pattern: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(base) => name == base || name.ends_with(&format!(".{base}")),
        None => name == pattern,
    }
}

impl CertificatePolicy {
    /// The policy in force for `team`: the server-wide one with the team's overrides,
    /// or the server-wide one for no team or a team without a `[policy.teams.NAME]`.
    pub fn for_team(&self, team: Option<&str>) -> CertificatePolicy {
        let none = PolicyOverride::default();
        merge(self, team.and_then(|t| self.teams.get(t)).unwrap_or(&none))
    }

    /// Whether `team` has overrides of its own.
    pub fn has_team(&self, team: &str) -> bool {
        self.teams.contains_key(team)
    }

    /// Every rule `facts` breaks, in a fixed order (validity, key, signature, names).
    pub fn check(&self, facts: &CertificateFacts) -> Vec<Violation> {
        let mut v = Vec::new();
        let days = (facts.not_after - facts.not_before).whole_seconds() as f64 / 86_400.0;
        // The validity limit is for subscriber certificates; CAs live longer.
        if !facts.is_ca && days > f64::from(self.max_validity_days) {
            v.push(violation(
                "max_validity",
                format!(
                    "valid for {:.0} days, more than the {} days allowed",
                    days.ceil(),
                    self.max_validity_days
                ),
            ));
        }
        v.extend(self.check_key(&facts.key));
        if self
            .forbidden_signature_algorithms
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&facts.signature_algorithm))
        {
            v.push(violation(
                "signature_algorithm",
                format!(
                    "signed with {}, which is not allowed",
                    facts.signature_algorithm
                ),
            ));
        }
        v.extend(
            self.check_names(
                facts
                    .common_name
                    .iter()
                    .chain(facts.sans.iter())
                    .map(String::as_str),
            ),
        );
        v
    }

    /// The key rules (type, size) for a key, before there is a certificate (a request).
    pub fn check_key(&self, key: &KeyInfo) -> Vec<Violation> {
        let mut v = Vec::new();
        let kt = key.key_type;
        if !self.allowed_key_types.contains(&kt) {
            v.push(violation(
                "key_type",
                format!("{} keys are not allowed", kt.as_str()),
            ));
        }
        match (kt, key.bits) {
            (KeyType::Rsa, Some(b)) if b < self.min_rsa_bits => v.push(violation(
                "key_size",
                format!(
                    "RSA key of {b} bits, at least {} required",
                    self.min_rsa_bits
                ),
            )),
            (KeyType::Ec, Some(b)) if b < self.min_ec_bits => v.push(violation(
                "key_size",
                format!("EC key of {b} bits, at least {} required", self.min_ec_bits),
            )),
            // A key whose size cannot be read (an unknown curve, explicit parameters)
            // cannot be shown to meet the minimum.
            (KeyType::Rsa | KeyType::Ec | KeyType::Dsa, None) => v.push(violation(
                "key_size",
                format!(
                    "the {} key's size cannot be determined{}",
                    kt.as_str(),
                    key.curve
                        .as_deref()
                        .map(|c| format!(" (curve {c})"))
                        .unwrap_or_default()
                ),
            )),
            _ => {}
        }
        v
    }

    /// The name rule for DNS names (IP addresses are not judged by it).
    pub fn check_names<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<Violation> {
        let mut v = Vec::new();
        if !self.allowed_names.is_empty() {
            let names = names
                .into_iter()
                .filter(|n| n.parse::<std::net::IpAddr>().is_err());
            for n in names {
                if !self.allowed_names.iter().any(|p| name_matches(n, p)) {
                    v.push(violation(
                        "name",
                        format!("{n} matches none of the allowed names"),
                    ));
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::{Fingerprint, KeyInfo, Serial};
    use time::macros::datetime;

    fn facts(days: i64, key: KeyType, bits: u32, sig: &str, names: &[&str]) -> CertificateFacts {
        let nb = datetime!(2026-01-01 0:00 UTC);
        CertificateFacts {
            sha256: Fingerprint::from_bytes([0; 32]),
            sha1: String::new(),
            serial: Serial::from_be_bytes(&[1]),
            subject: String::new(),
            common_name: names.first().map(|s| s.to_string()),
            sans: names.iter().map(|s| s.to_string()).collect(),
            issuer: String::new(),
            not_before: nb,
            not_after: nb + time::Duration::days(days),
            key: KeyInfo {
                key_type: key,
                bits: Some(bits),
                curve: None,
            },
            signature_algorithm: sig.into(),
            is_ca: false,
            self_signed: false,
            subject_key_id: None,
            authority_key_id: None,
            ocsp_urls: vec![],
            ca_issuer_urls: vec![],
            crl_urls: vec![],
        }
    }

    #[test]
    fn a_compliant_certificate_passes() {
        let p = CertificatePolicy::default();
        let f = facts(
            398,
            KeyType::Ec,
            256,
            "ecdsa-with-SHA256",
            &["www.example.com"],
        );
        assert!(p.check(&f).is_empty());
    }

    #[test]
    fn each_rule_reports_itself() {
        let mut p = CertificatePolicy {
            max_validity_days: PRESET_47,
            allowed_key_types: vec![KeyType::Rsa],
            allowed_names: vec!["*.example.com".into()],
            ..Default::default()
        };
        let f = facts(
            90,
            KeyType::Rsa,
            1024,
            "sha1WithRSAEncryption",
            &["www.example.org"],
        );
        let rules: Vec<String> = p.check(&f).into_iter().map(|v| v.rule).collect();
        assert_eq!(
            rules,
            [
                "max_validity",
                "key_size",
                "signature_algorithm",
                "name",
                "name"
            ]
        );
        p.allowed_key_types = vec![KeyType::Ec];
        let ok_size = facts(
            30,
            KeyType::Rsa,
            2048,
            "sha256WithRSAEncryption",
            &["a.example.com"],
        );
        let rules: Vec<String> = p.check(&ok_size).into_iter().map(|v| v.rule).collect();
        assert_eq!(rules, ["key_type"]);
    }

    #[test]
    fn keys_of_unknown_size_are_refused() {
        let mut f = facts(
            30,
            KeyType::Ec,
            256,
            "ecdsa-with-SHA256",
            &["a.example.com"],
        );
        f.key.bits = None;
        f.key.curve = Some("secp224r1".into());
        let v = CertificatePolicy::default().check(&f);
        assert_eq!(v[0].rule, "key_size");
        assert!(v[0].message.contains("secp224r1"));
    }

    #[test]
    fn a_team_override_replaces_only_the_fields_it_sets() {
        let server = CertificatePolicy {
            max_validity_days: PRESET_200,
            allowed_names: vec!["*.example.com".into()],
            ..Default::default()
        };
        let over = PolicyOverride {
            max_validity_days: Some(PRESET_47),
            allowed_key_types: Some(vec![KeyType::Ec]),
            ..Default::default()
        };
        let merged = merge(&server, &over);
        assert_eq!(merged.max_validity_days, PRESET_47);
        assert_eq!(merged.allowed_key_types, [KeyType::Ec]);
        assert_eq!(merged.allowed_names, server.allowed_names, "kept");
        assert_eq!(merged.min_rsa_bits, server.min_rsa_bits, "kept");
        assert_eq!(merge(&server, &PolicyOverride::default()), server);
        // Lists replace; an empty list lifts the server-wide name rule for the team.
        let open = PolicyOverride {
            allowed_names: Some(vec![]),
            ..Default::default()
        };
        assert!(merge(&server, &open).allowed_names.is_empty());
    }

    #[test]
    fn for_team_picks_the_team_and_falls_back_to_the_server() {
        let server: CertificatePolicy = serde_json::from_value(serde_json::json!({
            "max_validity_days": 200,
            "teams": {"web": {"max_validity_days": 47, "allowed_names": ["*.web.example"]}}
        }))
        .unwrap();
        assert!(server.has_team("web") && !server.has_team("db"));
        let web = server.for_team(Some("web"));
        assert_eq!(web.max_validity_days, 47);
        assert!(web.teams.is_empty());
        assert_eq!(server.for_team(Some("db")).max_validity_days, 200);
        assert_eq!(server.for_team(None).max_validity_days, 200);
        let f = facts(
            90,
            KeyType::Ec,
            256,
            "ecdsa-with-SHA256",
            &["www.other.example"],
        );
        let rules: Vec<String> = web.check(&f).into_iter().map(|v| v.rule).collect();
        assert_eq!(rules, ["max_validity", "name", "name"]);
        assert!(server.for_team(None).check(&f).is_empty());
        // A misspelt field in a team's table is an error, not silently ignored.
        let bad = serde_json::from_value::<CertificatePolicy>(
            serde_json::json!({"teams": {"web": {"max_valid_days": 47}}}),
        );
        assert!(bad.is_err());
    }

    #[test]
    fn requests_are_judged_by_key_and_names() {
        let p = CertificatePolicy {
            allowed_key_types: vec![KeyType::Rsa],
            min_rsa_bits: 3072,
            allowed_names: vec!["*.corp.example".into()],
            ..Default::default()
        };
        let rsa2048 = KeyInfo {
            key_type: KeyType::Rsa,
            bits: Some(2048),
            curve: None,
        };
        assert_eq!(p.check_key(&rsa2048)[0].rule, "key_size");
        let ec = KeyInfo {
            key_type: KeyType::Ec,
            bits: Some(256),
            curve: None,
        };
        assert_eq!(p.check_key(&ec)[0].rule, "key_type");
        assert!(p.check_names(["a.corp.example", "192.0.2.1"]).is_empty());
        assert_eq!(p.check_names(["a.example.org"])[0].rule, "name");
    }

    #[test]
    fn wildcard_patterns_match_subdomains_only() {
        assert!(name_matches("a.b.example.com", "*.example.com"));
        assert!(name_matches("example.com", "*.example.com"));
        assert!(!name_matches("badexample.com", "*.example.com"));
        assert!(name_matches("WWW.example.com", "www.example.com"));
    }
}
