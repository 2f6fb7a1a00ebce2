//! The server's own certificate, generated at first start.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use time::{Duration, OffsetDateTime};

/// A generated certificate and its private key, both PEM.
pub struct GeneratedIdentity {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    /// PKCS#8 PEM. Callers store it with mode 0600 and never log it.
    pub key_pem: String,
}

impl std::fmt::Debug for GeneratedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedIdentity")
            .field("cert_der_len", &self.cert_der.len())
            .field("key_pem", &"***")
            .finish()
    }
}

/// Certificate generation failed.
#[derive(Debug, thiserror::Error)]
#[error("could not generate a certificate: {0}")]
pub struct GenerateError(#[from] rcgen::Error);

/// A self-signed ECDSA P-256 server certificate for `names` (DNS names and IP
/// addresses), valid from an hour before `now` for `days` days.
pub fn server_identity(
    names: &[String],
    now: OffsetDateTime,
    days: i64,
) -> Result<GeneratedIdentity, GenerateError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "certkeeper server");
    dn.push(DnType::OrganizationName, "certkeeper");
    params.distinguished_name = dn;
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
    let cert = params.self_signed(&key)?;
    Ok(GeneratedIdentity {
        cert_pem: cert.pem(),
        cert_der: cert.der().to_vec(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_parses_with_its_names() {
        let now = OffsetDateTime::now_utc();
        let id = server_identity(&["localhost".into(), "127.0.0.1".into()], now, 365).unwrap();
        let facts = crate::parse_der(&id.cert_der).unwrap();
        assert_eq!(
            facts.sans,
            vec!["localhost".to_string(), "127.0.0.1".to_string()]
        );
        assert!(facts.self_signed);
        assert_eq!(facts.key.curve.as_deref(), Some("P-256"));
        assert!(!format!("{id:?}").contains("PRIVATE"));
    }
}
