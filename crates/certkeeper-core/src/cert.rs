//! What certkeeper knows about one certificate, decoded once from its DER.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The facts of one X.509 certificate. Built by `certkeeper-pki` from DER and
/// never from fields an agent claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    pub sha256: Fingerprint,
    /// Lower-case hex SHA-1 of the DER, for matching against older tools.
    pub sha1: String,
    pub serial: Serial,
    /// RFC 4514 string of the subject.
    pub subject: String,
    pub common_name: Option<String>,
    /// DNS names and IP addresses from the subjectAltName extension.
    pub sans: Vec<String>,
    pub issuer: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub key: KeyInfo,
    /// Name of the signature algorithm, e.g. `sha256WithRSAEncryption`.
    pub signature_algorithm: String,
    pub is_ca: bool,
    pub self_signed: bool,
    pub subject_key_id: Option<String>,
    pub authority_key_id: Option<String>,
    pub ocsp_urls: Vec<String>,
    pub ca_issuer_urls: Vec<String>,
    pub crl_urls: Vec<String>,
}

/// The public key of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub key_type: KeyType,
    /// Modulus size for RSA/DSA, field size for EC, 256 for Ed25519.
    pub bits: Option<u32>,
    /// Named curve for EC keys, e.g. `P-256`.
    pub curve: Option<String>,
}

/// Kind of public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Rsa,
    Ec,
    Ed25519,
    Ed448,
    Dsa,
    Unknown,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Rsa => "rsa",
            KeyType::Ec => "ec",
            KeyType::Ed25519 => "ed25519",
            KeyType::Ed448 => "ed448",
            KeyType::Dsa => "dsa",
            KeyType::Unknown => "unknown",
        }
    }
}

impl FromStr for KeyType {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "rsa" => KeyType::Rsa,
            "ec" => KeyType::Ec,
            "ed25519" => KeyType::Ed25519,
            "ed448" => KeyType::Ed448,
            "dsa" => KeyType::Dsa,
            _ => KeyType::Unknown,
        })
    }
}

/// SHA-256 of a certificate's DER: the identity of a certificate everywhere.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// A fingerprint string was not 64 hex digits (colons allowed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a SHA-256 fingerprint is 64 hexadecimal digits (colons allowed), got {0:?}")]
pub struct BadFingerprint(pub String);

impl FromStr for Fingerprint {
    type Err = BadFingerprint;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let cleaned: String = s.trim().chars().filter(|c| *c != ':').collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(&cleaned, &mut out).map_err(|_| BadFingerprint(s.to_string()))?;
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A certificate serial number: lower-case hex, no colons, no leading zero bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Serial(String);

impl Serial {
    /// From the big-endian bytes of the serial's INTEGER content.
    pub fn from_be_bytes(bytes: &[u8]) -> Self {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        let trimmed = &bytes[start..];
        if trimmed.is_empty() {
            return Serial("00".into());
        }
        Serial(hex::encode(trimmed))
    }
    /// From text already in canonical form (read back from our own storage).
    pub fn from_hex_unchecked(s: String) -> Self {
        Serial(s)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_round_trips_and_accepts_colons() {
        let hex = "ab".repeat(32);
        let fp: Fingerprint = hex.parse().unwrap();
        assert_eq!(fp.to_string(), hex);
        let colon = vec!["AB"; 32].join(":");
        assert_eq!(colon.parse::<Fingerprint>().unwrap(), fp);
        assert!("abcd".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }

    #[test]
    fn serial_drops_leading_zero_bytes() {
        assert_eq!(Serial::from_be_bytes(&[0, 0x8f, 0x01]).as_str(), "8f01");
        assert_eq!(Serial::from_be_bytes(&[0, 0]).as_str(), "00");
        assert_eq!(Serial::from_be_bytes(&[0x01, 0x00]).as_str(), "0100");
    }
}
