//! Bringing certificates in: PEM or DER certificates, private keys (PKCS#1, PKCS#8,
//! encrypted PKCS#8, legacy encrypted PEM), intermediates by hand, PKCS#12 files
//! (modern AES/SHA-256 and legacy RC2/3DES/SHA-1). Every way in ends in the same
//! checks: the key matches, the chain links verify in order, nothing is expired.

use std::sync::OnceLock;

use ::time::OffsetDateTime;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, Private};
use openssl::provider::Provider;
use openssl::x509::X509;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::parse::{ParseError, parse_der, pem_to_ders};

/// Why an import was refused. Each case has a stable code for the API.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    /// Neither a certificate nor a PKCS#12 file was given.
    #[error("give a certificate (PEM or DER) or a PKCS#12 file")]
    NothingToImport,
    /// A certificate does not decode (truncated DER, bad PEM, not X.509).
    #[error("{what} is not a readable certificate: {reason}")]
    MalformedCertificate { what: String, reason: String },
    /// The private key does not decode, or needs a passphrase that was not given.
    #[error("the private key is not readable{0}")]
    KeyUnreadable(String),
    /// The passphrase or PKCS#12 password is wrong.
    #[error("wrong password for the {0}")]
    WrongPassword(&'static str),
    /// The PKCS#12 file is not one.
    #[error("not a PKCS#12 file: {0}")]
    NotPkcs12(String),
    /// The private key belongs to another certificate.
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    /// Chain certificates were given out of order (each must be followed by its issuer).
    #[error("the chain is in the wrong order: {0}")]
    ChainMisordered(String),
    /// A chain certificate is not part of this certificate's chain.
    #[error("chain certificate {0} does not belong to this certificate's chain")]
    ChainUnrelated(String),
    /// A link's signature does not verify.
    #[error("the signature of {0} does not verify with its issuer's key")]
    BadSignature(String),
    /// The certificate has expired.
    #[error("the certificate expired on {0}")]
    Expired(String),
    /// What a CA-issuers (AIA) URL returned is no certificate (DER, PEM or PKCS#7).
    #[error("{0} did not return a certificate (expected DER, PEM or a certs-only PKCS#7)")]
    FetchedUnreadable(String),
    /// What a CA-issuers URL returned does not issue the certificate that points there.
    #[error("the certificate fetched from {url} does not issue {subject} (name or signature)")]
    FetchedNotIssuer { url: String, subject: String },
}

impl ImportError {
    /// The stable error code the API sends.
    pub fn code(&self) -> &'static str {
        match self {
            ImportError::NothingToImport => "invalid_request",
            ImportError::MalformedCertificate { .. } => "malformed_certificate",
            ImportError::KeyUnreadable(_) => "key_unreadable",
            ImportError::WrongPassword(_) => "wrong_password",
            ImportError::NotPkcs12(_) => "malformed_pkcs12",
            ImportError::KeyMismatch => "key_mismatch",
            ImportError::ChainMisordered(_) => "chain_misordered",
            ImportError::ChainUnrelated(_) => "chain_unrelated",
            ImportError::BadSignature(_) => "chain_signature_invalid",
            ImportError::Expired(_) => "certificate_expired",
            ImportError::FetchedUnreadable(_) => "aia_unreadable",
            ImportError::FetchedNotIssuer { .. } => "aia_not_issuer",
        }
    }
}

/// What the user handed over.
#[derive(Default)]
pub struct ImportInput {
    /// A certificate in PEM (first block is the leaf; more blocks are chain) or DER.
    pub certificate: Option<Vec<u8>>,
    /// Intermediates, each a PEM (one or more blocks) or DER blob, leaf-side first.
    pub chain: Vec<Vec<u8>>,
    pub private_key: Option<Vec<u8>>,
    pub key_password: Option<Vec<u8>>,
    pub pkcs12: Option<Vec<u8>>,
    pub pkcs12_password: Option<Vec<u8>>,
}

impl std::fmt::Debug for ImportInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportInput")
            .field("certificate", &self.certificate.as_ref().map(Vec::len))
            .field("chain", &self.chain.len())
            .field("private_key", &self.private_key.as_ref().map(|_| "***"))
            .field("pkcs12", &self.pkcs12.as_ref().map(Vec::len))
            .finish()
    }
}

/// A checked import: the leaf, its chain in order (leaf's issuer first, no root
/// unless it was given), and the private key as unencrypted PKCS#8 DER, if any.
pub struct Imported {
    pub leaf: Vec<u8>,
    pub chain: Vec<Vec<u8>>,
    pub key_pkcs8: Option<Vec<u8>>,
}

impl std::fmt::Debug for Imported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imported")
            .field("chain", &self.chain.len())
            .field("key", &self.key_pkcs8.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Load OpenSSL's legacy provider once, so RC2-40 PKCS#12 files open.
fn legacy_provider() {
    static PROVIDERS: OnceLock<Option<(Provider, Provider)>> = OnceLock::new();
    PROVIDERS.get_or_init(|| {
        let legacy = Provider::try_load(None, "legacy", true).ok()?;
        let default = Provider::try_load(None, "default", true).ok()?;
        Some((legacy, default))
    });
}

fn ders(blob: &[u8], what: &str) -> Result<Vec<Vec<u8>>, ImportError> {
    let malformed = |reason: String| ImportError::MalformedCertificate {
        what: what.to_string(),
        reason,
    };
    let list = if blob.trim_ascii_start().starts_with(b"-----BEGIN") {
        pem_to_ders(blob).map_err(|e| malformed(e.to_string()))?
    } else {
        vec![blob.to_vec()]
    };
    for d in &list {
        parse_der(d).map_err(|e: ParseError| malformed(e.to_string()))?;
    }
    Ok(list)
}

fn read_key(pem: &[u8], password: Option<&[u8]>) -> Result<PKey<Private>, ImportError> {
    let encrypted = pem.windows(9).any(|w| w == b"ENCRYPTED");
    match (encrypted, password) {
        (true, None) => Err(ImportError::KeyUnreadable(
            ": it is encrypted; give its passphrase".into(),
        )),
        (true, Some(p)) => PKey::private_key_from_pem_passphrase(pem, p)
            .map_err(|_| ImportError::WrongPassword("private key")),
        (false, _) => PKey::private_key_from_pem(pem)
            .or_else(|_| PKey::private_key_from_der(pem))
            .map_err(|_| {
                ImportError::KeyUnreadable(" (expected PEM or DER: PKCS#1, PKCS#8 or SEC1)".into())
            }),
    }
}

fn name_of(der: &[u8]) -> String {
    parse_der(der)
        .map(|f| f.common_name.unwrap_or(f.subject))
        .unwrap_or_else(|_| "a certificate".into())
}

/// Read and check an import at `now`. Chain order: the given chain must already be in
/// order (each certificate followed by its issuer); certificates that do not belong
/// are refused. Completion from other sources is the caller's (see [`complete_chain`]).
pub fn read(input: &ImportInput, now: OffsetDateTime) -> Result<Imported, ImportError> {
    let (leaf, mut given, key) = if let Some(p12) = &input.pkcs12 {
        legacy_provider();
        let parsed = Pkcs12::from_der(p12)
            .map_err(|e| ImportError::NotPkcs12(e.to_string()))?
            .parse2(
                std::str::from_utf8(input.pkcs12_password.as_deref().unwrap_or_default())
                    .map_err(|_| ImportError::WrongPassword("PKCS#12 file"))?,
            )
            .map_err(|_| ImportError::WrongPassword("PKCS#12 file"))?;
        let cert = parsed
            .cert
            .ok_or_else(|| ImportError::NotPkcs12("it holds no certificate".into()))?;
        let leaf = cert
            .to_der()
            .map_err(|e| ImportError::NotPkcs12(e.to_string()))?;
        let mut chain = Vec::new();
        if let Some(ca) = parsed.ca {
            for c in ca {
                chain.push(
                    c.to_der()
                        .map_err(|e| ImportError::NotPkcs12(e.to_string()))?,
                );
            }
        }
        (leaf, chain, parsed.pkey)
    } else {
        let blob = input
            .certificate
            .as_ref()
            .ok_or(ImportError::NothingToImport)?;
        let mut list = ders(blob, "the certificate")?;
        let leaf = list.remove(0);
        let key = match &input.private_key {
            Some(k) => Some(read_key(k, input.key_password.as_deref())?),
            None => None,
        };
        (leaf, list, key)
    };
    for (i, c) in input.chain.iter().enumerate() {
        given.extend(ders(c, &format!("chain file #{}", i + 1))?);
    }
    let facts = parse_der(&leaf).map_err(|e| ImportError::MalformedCertificate {
        what: "the certificate".into(),
        reason: e.to_string(),
    })?;
    if facts.not_after < now {
        return Err(ImportError::Expired(facts.not_after.date().to_string()));
    }
    let key_pkcs8 = match key {
        Some(k) => {
            let cert = X509::from_der(&leaf).map_err(|e| ImportError::MalformedCertificate {
                what: "the certificate".into(),
                reason: e.to_string(),
            })?;
            let public = cert.public_key().map_err(|_| ImportError::KeyMismatch)?;
            if !public.public_eq(&k) {
                return Err(ImportError::KeyMismatch);
            }
            Some(
                k.private_key_to_pkcs8()
                    .map_err(|_| ImportError::KeyUnreadable(String::new()))?,
            )
        }
        None => None,
    };
    // PKCS#12 files carry their CA certificates in no particular order; order them.
    let chain = if input.pkcs12.is_some() {
        order_chain(&leaf, given)?
    } else {
        check_order(&leaf, &given)?;
        given
    };
    Ok(Imported {
        leaf,
        chain,
        key_pkcs8,
    })
}

/// `issuer` issued `subject`: names chain and the signature verifies.
fn issued_by(subject: &[u8], issuer: &[u8]) -> bool {
    let (Ok((_, s)), Ok((_, i))) = (
        X509Certificate::from_der(subject),
        X509Certificate::from_der(issuer),
    ) else {
        return false;
    };
    s.issuer().as_raw() == i.subject().as_raw() && s.verify_signature(Some(i.public_key())).is_ok()
}

fn is_self_issued(der: &[u8]) -> bool {
    issued_by(der, der)
}

/// Each certificate of `chain` must be issued by the next; the first by the leaf's issuer.
fn check_order(leaf: &[u8], chain: &[Vec<u8>]) -> Result<(), ImportError> {
    let mut current = leaf;
    for (i, c) in chain.iter().enumerate() {
        if issued_by(current, c) {
            current = c;
            continue;
        }
        // Is it a link of this chain at all, just in the wrong place?
        let belongs = chain
            .iter()
            .any(|other| issued_by(c, other) || issued_by(other, c))
            || issued_by(leaf, c);
        if belongs {
            return Err(ImportError::ChainMisordered(format!(
                "certificate #{} ({}) does not issue {}; put each certificate right after the one it signed",
                i + 1,
                name_of(c),
                name_of(current)
            )));
        }
        return Err(ImportError::ChainUnrelated(name_of(c)));
    }
    Ok(())
}

/// Order an unordered set of CA certificates from the leaf upwards.
fn order_chain(leaf: &[u8], mut pool: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, ImportError> {
    let mut out = Vec::new();
    let mut current = leaf.to_vec();
    while let Some(pos) = pool.iter().position(|c| issued_by(&current, c)) {
        let next = pool.remove(pos);
        if is_self_issued(&next) {
            out.push(next);
            break;
        }
        current = next.clone();
        out.push(next);
    }
    match pool.first() {
        Some(extra) => Err(ImportError::ChainUnrelated(name_of(extra))),
        None => Ok(out),
    }
}

/// Extend `chain` (ordered, possibly empty) with issuers found in `known`, until a
/// self-signed root or no known issuer. Returns whether the chain reaches a root or an
/// issuer that is itself a trust anchor in `known`.
pub fn complete_chain(leaf: &[u8], chain: &mut Vec<Vec<u8>>, known: &[Vec<u8>]) -> bool {
    loop {
        let last = chain.last().map(Vec::as_slice).unwrap_or(leaf);
        if is_self_issued(last) {
            return true;
        }
        match known
            .iter()
            .find(|k| !chain.contains(k) && issued_by(last, k))
        {
            Some(issuer) => chain.push(issuer.clone()),
            None => return false,
        }
        if chain.len() > 10 {
            return false;
        }
    }
}

/// Whether `issuer` issued `subject`: the names chain and the signature verifies.
pub fn issues(issuer: &[u8], subject: &[u8]) -> bool {
    issued_by(subject, issuer)
}

/// Whether a certificate is self-issued and self-signed (a root).
pub fn is_root(der: &[u8]) -> bool {
    is_self_issued(der)
}

/// The certificates in what a CA-issuers (AIA) URL returned: one DER certificate
/// (RFC 5280's `application/pkix-cert`), PEM certificates, or a certs-only PKCS#7
/// (`.p7c`, DER or PEM). `url` only names the source in errors.
pub fn fetched_certificates(body: &[u8], url: &str) -> Result<Vec<Vec<u8>>, ImportError> {
    let unreadable = || ImportError::FetchedUnreadable(url.to_string());
    let text = body.trim_ascii_start();
    let list =
        if text.starts_with(b"-----BEGIN PKCS7-----") || text.starts_with(b"-----BEGIN CMS-----") {
            let p7 = openssl::pkcs7::Pkcs7::from_pem(text).map_err(|_| unreadable())?;
            pkcs7_certs(&p7)
        } else if text.starts_with(b"-----BEGIN") {
            pem_to_ders(text).map_err(|_| unreadable())?
        } else if parse_der(body).is_ok() {
            vec![body.to_vec()]
        } else {
            let p7 = openssl::pkcs7::Pkcs7::from_der(body).map_err(|_| unreadable())?;
            pkcs7_certs(&p7)
        };
    if list.is_empty() || list.iter().any(|d| parse_der(d).is_err()) {
        return Err(unreadable());
    }
    Ok(list)
}

fn pkcs7_certs(p7: &openssl::pkcs7::Pkcs7) -> Vec<Vec<u8>> {
    p7.signed()
        .and_then(|s| s.certificates())
        .map(|stack| stack.iter().filter_map(|c| c.to_der().ok()).collect())
        .unwrap_or_default()
}

/// The chain a server should present: everything but a self-signed root at the end.
pub fn served_chain(chain: &[Vec<u8>]) -> &[Vec<u8>] {
    match chain.last() {
        Some(last) if is_self_issued(last) => &chain[..chain.len() - 1],
        _ => chain,
    }
}

/// Export formats.
pub mod export {
    use openssl::pkcs12::Pkcs12;
    use openssl::pkey::PKey;
    use openssl::stack::Stack;
    use openssl::x509::X509;

    /// A PKCS#12 file with the key, the certificate and its chain, protected by
    /// `password` (AES-256-CBC, PBKDF2, SHA-256 MAC: OpenSSL 3 defaults).
    pub fn pkcs12(
        leaf: &[u8],
        chain: &[Vec<u8>],
        key_pkcs8: Option<&[u8]>,
        password: &str,
        name: &str,
    ) -> Result<Vec<u8>, String> {
        let cert = X509::from_der(leaf).map_err(|e| e.to_string())?;
        let mut stack = Stack::new().map_err(|e| e.to_string())?;
        for c in chain {
            stack
                .push(X509::from_der(c).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let mut b = Pkcs12::builder();
        b.name(name).cert(&cert).ca(stack);
        let key;
        if let Some(k) = key_pkcs8 {
            key = PKey::private_key_from_pkcs8(k)
                .map_err(|_| "the stored key is unreadable".to_string())?;
            b.pkey(&key);
        }
        b.build2(password)
            .and_then(|p| p.to_der())
            .map_err(|e| e.to_string())
    }

    /// Unencrypted PKCS#8 PEM of a key.
    pub fn key_pem(key_pkcs8: &[u8]) -> Result<String, String> {
        let k = PKey::private_key_from_pkcs8(key_pkcs8)
            .map_err(|_| "the stored key is unreadable".to_string())?;
        String::from_utf8(k.private_key_to_pem_pkcs8().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())
    }
}
