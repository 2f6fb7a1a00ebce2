//! Decode a certificate once into its facts. Nothing is validated here: expired,
//! self-signed and odd certificates are all facts worth keeping.

use std::net::IpAddr;

use aws_lc_rs::digest;
use certkeeper_core::{CertificateFacts, Fingerprint, KeyInfo, KeyType, Serial};
use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_DSA, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_PKIX_ACCESS_DESCRIPTOR_CA_ISSUERS,
    OID_PKIX_ACCESS_DESCRIPTOR_OCSP, OID_SIG_ED448, OID_SIG_ED25519,
};
use x509_parser::prelude::*;

/// Why a blob is not a certificate we can read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The bytes are not a DER-encoded X.509 certificate.
    #[error("not a DER X.509 certificate: {0}")]
    NotACertificate(String),
    /// Bytes follow the certificate's outer SEQUENCE.
    #[error("{0} bytes of trailing data after the certificate")]
    TrailingData(usize),
    /// PEM input held no CERTIFICATE block.
    #[error("no PEM CERTIFICATE block found")]
    NoPem,
    /// A PEM block's base64 did not decode.
    #[error("PEM block is not valid base64")]
    BadPem,
}

/// SHA-256 of some bytes, as a [`Fingerprint`].
pub fn sha256(der: &[u8]) -> Fingerprint {
    let d = digest::digest(&digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    Fingerprint::from_bytes(out)
}

/// SHA-256 (lower-case hex) of a certificate's SubjectPublicKeyInfo: the key's identity,
/// shared by the CSR and every certificate issued for that key.
pub fn cert_spki_sha256(der: &[u8]) -> Result<String, ParseError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| ParseError::NotACertificate(e.to_string()))?;
    Ok(hex::encode(digest::digest(
        &digest::SHA256,
        cert.tbs_certificate.subject_pki.raw,
    )))
}

/// Decode one DER certificate.
pub fn parse_der(der: &[u8]) -> Result<CertificateFacts, ParseError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| ParseError::NotACertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ParseError::TrailingData(rest.len()));
    }
    let tbs = &cert.tbs_certificate;
    let common_name = tbs
        .subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string);

    let mut facts = CertificateFacts {
        sha256: sha256(der),
        sha1: hex::encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der)),
        serial: Serial::from_be_bytes(tbs.raw_serial()),
        subject: tbs.subject.to_string(),
        common_name,
        sans: Vec::new(),
        issuer: tbs.issuer.to_string(),
        not_before: tbs.validity.not_before.to_datetime(),
        not_after: tbs.validity.not_after.to_datetime(),
        key: key_info(tbs.public_key()),
        signature_algorithm: oid_name(&cert.signature_algorithm.algorithm),
        is_ca: false,
        self_signed: false,
        subject_key_id: None,
        authority_key_id: None,
        ocsp_urls: Vec::new(),
        ca_issuer_urls: Vec::new(),
        crl_urls: Vec::new(),
    };

    for ext in tbs.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) => facts.sans.push(d.to_string()),
                        GeneralName::IPAddress(b) => {
                            if let Some(ip) = ip_from_bytes(b) {
                                facts.sans.push(ip.to_string());
                            }
                        }
                        _ => {}
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) => facts.is_ca = bc.ca,
            ParsedExtension::SubjectKeyIdentifier(k) => {
                facts.subject_key_id = Some(hex::encode(k.0));
            }
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                facts.authority_key_id = aki.key_identifier.as_ref().map(|k| hex::encode(k.0));
            }
            ParsedExtension::AuthorityInfoAccess(aia) => {
                for desc in aia.iter() {
                    if let GeneralName::URI(uri) = &desc.access_location {
                        if desc.access_method == OID_PKIX_ACCESS_DESCRIPTOR_OCSP {
                            facts.ocsp_urls.push(uri.to_string());
                        } else if desc.access_method == OID_PKIX_ACCESS_DESCRIPTOR_CA_ISSUERS {
                            facts.ca_issuer_urls.push(uri.to_string());
                        }
                    }
                }
            }
            ParsedExtension::CRLDistributionPoints(cdp) => {
                for point in cdp.iter() {
                    if let Some(DistributionPointName::FullName(names)) = &point.distribution_point
                    {
                        for n in names {
                            if let GeneralName::URI(uri) = n {
                                facts.crl_urls.push(uri.to_string());
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }

    // Self-signed: issued by its own subject and signed by its own key. A matching
    // name alone is not enough (cross-signed and re-keyed CAs share names).
    facts.self_signed =
        tbs.subject.as_raw() == tbs.issuer.as_raw() && cert.verify_signature(None).is_ok();
    Ok(facts)
}

pub(crate) fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

pub(crate) fn key_info(spki: &SubjectPublicKeyInfo<'_>) -> KeyInfo {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => Some(rsa.key_size() as u32),
            _ => None,
        };
        return KeyInfo {
            key_type: KeyType::Rsa,
            bits,
            curve: None,
        };
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve_oid = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        let (curve, bits) = match curve_oid {
            Some(o) if o == OID_EC_P256 => (Some("P-256".to_string()), Some(256)),
            Some(o) if o == OID_NIST_EC_P384 => (Some("P-384".to_string()), Some(384)),
            Some(o) if o == OID_NIST_EC_P521 => (Some("P-521".to_string()), Some(521)),
            Some(o) => (Some(oid_name(&o)), None),
            None => (None, None),
        };
        return KeyInfo {
            key_type: KeyType::Ec,
            bits,
            curve,
        };
    }
    if *alg == OID_SIG_ED25519 {
        return KeyInfo {
            key_type: KeyType::Ed25519,
            bits: Some(256),
            curve: None,
        };
    }
    if *alg == OID_SIG_ED448 {
        return KeyInfo {
            key_type: KeyType::Ed448,
            bits: Some(456),
            curve: None,
        };
    }
    if *alg == OID_KEY_TYPE_DSA {
        return KeyInfo {
            key_type: KeyType::Dsa,
            bits: spki.parsed().ok().map(|k| k.key_size() as u32),
            curve: None,
        };
    }
    KeyInfo {
        key_type: KeyType::Unknown,
        bits: None,
        curve: None,
    }
}

/// OpenSSL-style short name of an OID, or its dotted form when unknown.
pub(crate) fn oid_name(oid: &x509_parser::der_parser::oid::Oid<'_>) -> String {
    match oid2sn(oid, oid_registry()) {
        Ok(name) => name.to_string(),
        Err(_) => oid.to_id_string(),
    }
}

/// Every `CERTIFICATE` block in a PEM text, decoded to DER, in order.
pub fn pem_to_ders(pem: &[u8]) -> Result<Vec<Vec<u8>>, ParseError> {
    let mut out = Vec::new();
    for item in Pem::iter_from_buffer(pem) {
        let item = item.map_err(|_| ParseError::BadPem)?;
        if item.label == "CERTIFICATE" {
            out.push(item.contents);
        }
    }
    if out.is_empty() {
        return Err(ParseError::NoPem);
    }
    Ok(out)
}

/// PEM text of a DER certificate.
pub fn to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let flat = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    // Base64 is ASCII, so splitting at any byte keeps valid UTF-8.
    for line in flat.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap_or_default());
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}
