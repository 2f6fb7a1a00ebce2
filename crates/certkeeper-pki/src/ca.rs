//! The internal CA: a root of our own (or an imported intermediate with its key) that
//! issues certificates from CSRs by profile.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::csr::KeyAlgorithm;

/// What certificates issued by a CA look like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Profile {
    /// Validity of issued certificates, in days.
    pub validity_days: u32,
    /// Extended key usage serverAuth.
    pub server_auth: bool,
    /// Extended key usage clientAuth.
    pub client_auth: bool,
    /// If not empty, every DNS name requested must match one of these
    /// (`*.example.com` covers names under example.com).
    pub allowed_names: Vec<String>,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            validity_days: 90,
            server_auth: true,
            client_auth: false,
            allowed_names: Vec::new(),
        }
    }
}

/// Why a CA could not be made or could not issue.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaError {
    /// The CSR does not parse or its self-signature does not verify.
    #[error("the CSR is not valid: {0}")]
    BadCsr(String),
    /// A requested name is outside what the profile allows.
    #[error("{0} is not a name this CA may issue for")]
    NameNotAllowed(String),
    /// The CA's key or certificate is unusable.
    #[error("the CA cannot sign: {0}")]
    Unusable(String),
    /// The validity asked for is not allowed.
    #[error("{0}")]
    Validity(String),
}

fn unusable(e: impl std::fmt::Display) -> CaError {
    CaError::Unusable(e.to_string())
}

fn serial() -> Result<SerialNumber, CaError> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CaError::Unusable("no randomness".into()))?;
    b[0] &= 0x7f; // positive
    Ok(SerialNumber::from(b.to_vec()))
}

/// The text of a distinguished-name value, whatever its ASN.1 string type.
fn dn_text(v: &rcgen::DnValue) -> String {
    match v {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(s) => s.as_str().to_string(),
        rcgen::DnValue::Ia5String(s) => s.as_str().to_string(),
        rcgen::DnValue::TeletexString(s) => s.as_str().to_string(),
        rcgen::DnValue::BmpString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        rcgen::DnValue::UniversalString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        _ => "(unreadable name)".to_string(),
    }
}

fn name_allowed(name: &str, patterns: &[String]) -> bool {
    let name = name.to_ascii_lowercase();
    patterns.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        match p.strip_prefix("*.") {
            Some(base) => name == base || name.ends_with(&format!(".{base}")),
            None => name == p,
        }
    })
}

/// A new self-signed root CA: (certificate DER, PKCS#8 DER key).
pub fn new_root(
    common_name: &str,
    key: KeyAlgorithm,
    validity_days: u32,
    now: OffsetDateTime,
) -> Result<(Vec<u8>, Vec<u8>), CaError> {
    let key_pair = crate::csr::new_key_pair(key).map_err(unusable)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "certkeeper internal CA");
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = now - Duration::minutes(5);
    p.not_after = now + Duration::days(i64::from(validity_days));
    p.serial_number = Some(serial()?);
    let cert = p.self_signed(&key_pair).map_err(unusable)?;
    Ok((cert.der().to_vec(), key_pair.serialize_der()))
}

/// Issue a certificate for `csr_der` (its subject and SANs), signed by the CA.
pub fn issue(
    ca_cert_der: &[u8],
    ca_key_pkcs8: &[u8],
    csr_der: &[u8],
    profile: &Profile,
    now: OffsetDateTime,
) -> Result<Vec<u8>, CaError> {
    let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
        .map_err(|e| CaError::BadCsr(e.to_string()))?;
    if !profile.allowed_names.is_empty() {
        // Every name the certificate will carry: the subject CN (clients fall back to
        // it when there is no DNS SAN) and every SAN, of every type.
        for (ty, value) in csr.params.distinguished_name.iter() {
            if *ty == DnType::CommonName {
                let cn = dn_text(value);
                if !name_allowed(&cn, &profile.allowed_names) {
                    return Err(CaError::NameNotAllowed(cn));
                }
            }
        }
        for san in &csr.params.subject_alt_names {
            match san {
                SanType::DnsName(d) if name_allowed(d.as_str(), &profile.allowed_names) => {}
                SanType::DnsName(d) => return Err(CaError::NameNotAllowed(d.as_str().to_string())),
                // A profile limited to names issues DNS names only.
                SanType::IpAddress(ip) => {
                    return Err(CaError::NameNotAllowed(format!("IP address {ip}")));
                }
                SanType::Rfc822Name(e) => {
                    return Err(CaError::NameNotAllowed(format!("e-mail {}", e.as_str())));
                }
                SanType::URI(u) => {
                    return Err(CaError::NameNotAllowed(format!("URI {}", u.as_str())));
                }
                _ => return Err(CaError::NameNotAllowed("a SAN of another type".into())),
            }
        }
    }
    if profile.validity_days == 0 {
        return Err(CaError::Validity(
            "validity must be at least one day".into(),
        ));
    }
    let ca_key = KeyPair::try_from(ca_key_pkcs8).map_err(unusable)?;
    let issuer =
        Issuer::from_ca_cert_der(&ca_cert_der.to_vec().into(), ca_key).map_err(unusable)?;
    let (_, ca) = x509_parser::prelude::FromDer::from_der(ca_cert_der)
        .map(|(r, c): (&[u8], x509_parser::certificate::X509Certificate<'_>)| (r, c))
        .map_err(unusable)?;
    let not_after = now + Duration::days(i64::from(profile.validity_days));
    if not_after > ca.validity().not_after.to_datetime() {
        return Err(CaError::Validity(format!(
            "the certificate would outlive its CA (which expires {})",
            ca.validity().not_after.to_datetime().date()
        )));
    }
    let mut params = csr.params;
    params.not_before = now - Duration::minutes(5);
    params.not_after = not_after;
    params.serial_number = Some(serial()?);
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = [
        (profile.server_auth, ExtendedKeyUsagePurpose::ServerAuth),
        (profile.client_auth, ExtendedKeyUsagePurpose::ClientAuth),
    ]
    .into_iter()
    .filter_map(|(on, p)| on.then_some(p))
    .collect();
    let cert = params
        .signed_by(&csr.public_key, &issuer)
        .map_err(unusable)?;
    Ok(cert.der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_from_a_csr_within_the_profile() {
        let now = OffsetDateTime::now_utc();
        let (ca, ca_key) = new_root("Test Root", KeyAlgorithm::P256, 3650, now).unwrap();
        let root = crate::parse_der(&ca).unwrap();
        assert!(root.is_ca && root.self_signed);
        let req = crate::csr::generate(&crate::csr::CsrRequest {
            common_name: "app.example.com".into(),
            key: KeyAlgorithm::P256,
            ..Default::default()
        })
        .unwrap();
        let profile = Profile {
            allowed_names: vec!["*.example.com".into()],
            ..Default::default()
        };
        let der = issue(&ca, &ca_key, &req.csr_der, &profile, now).unwrap();
        let f = crate::parse_der(&der).unwrap();
        assert_eq!(f.sans, vec!["app.example.com".to_string()]);
        assert_eq!(f.issuer, root.subject);
        assert!(!f.is_ca);
        assert_eq!(
            ((f.not_after - now).whole_seconds() as f64 / 86_400.0).round(),
            90.0
        );
        let elsewhere = Profile {
            allowed_names: vec!["*.example.org".into()],
            ..Default::default()
        };
        assert_eq!(
            issue(&ca, &ca_key, &req.csr_der, &elsewhere, now),
            Err(CaError::NameNotAllowed("app.example.com".into()))
        );
        // The CN counts too, and a name-limited profile issues no IP addresses.
        let ip_only = crate::csr::generate(&crate::csr::CsrRequest {
            common_name: "app.example.com".into(),
            sans: vec![crate::csr::San::Ip("192.0.2.1".parse().unwrap())],
            key: KeyAlgorithm::P256,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            issue(&ca, &ca_key, &ip_only.csr_der, &profile, now),
            Err(CaError::NameNotAllowed("IP address 192.0.2.1".into()))
        );
        let too_long = Profile {
            validity_days: 4000,
            ..Default::default()
        };
        assert!(matches!(
            issue(&ca, &ca_key, &req.csr_der, &too_long, now),
            Err(CaError::Validity(_))
        ));
    }
}
