//! Keys and certificate signing requests: generate them from a typed request (or an
//! OpenSSL request config, as administrators already keep them) and read them back.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use certkeeper_core::KeyInfo;
use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, RsaKeySize, SanType};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::*;

/// ISO 3166-1 alpha-2 codes, officially assigned.
const COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// Why a request cannot be made or read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    /// The common name is not a host name.
    #[error("the common name must be a host name such as www.example.com: {0}")]
    BadCommonName(String),
    /// The country is not an ISO 3166 two-letter code.
    #[error("country {0:?} is not an ISO 3166 two-letter code (e.g. DE, US, GB)")]
    BadCountry(String),
    /// A subject alternative name is neither a DNS name, an IP address nor an e-mail.
    #[error("subject alternative name {0:?} is not a DNS name, an IP address or an e-mail address")]
    BadSan(String),
    /// An unknown key type.
    #[error("unknown key type {0:?} (rsa2048, rsa3072, rsa4096, p256, p384 or ed25519)")]
    BadKeyType(String),
    /// The OpenSSL request config is incomplete or malformed.
    #[error("OpenSSL config: {0}")]
    OpensslConfig(String),
    /// The bytes are not a PEM or DER certificate request.
    #[error("not a certificate signing request: {0}")]
    NotACsr(String),
    /// Generating the key or the request failed.
    #[error("could not generate the key or request: {0}")]
    Generate(String),
}

/// Key algorithm and size of a new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    #[default]
    Rsa2048,
    Rsa3072,
    Rsa4096,
    P256,
    P384,
    Ed25519,
}

impl FromStr for KeyAlgorithm {
    type Err = CsrError;
    fn from_str(s: &str) -> Result<Self, CsrError> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "rsa2048" | "rsa" => KeyAlgorithm::Rsa2048,
            "rsa3072" => KeyAlgorithm::Rsa3072,
            "rsa4096" => KeyAlgorithm::Rsa4096,
            "p256" | "ecdsa" | "prime256v1" => KeyAlgorithm::P256,
            "p384" | "secp384r1" => KeyAlgorithm::P384,
            "ed25519" => KeyAlgorithm::Ed25519,
            _ => return Err(CsrError::BadKeyType(s.to_string())),
        })
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::Rsa2048 => "rsa2048",
            KeyAlgorithm::Rsa3072 => "rsa3072",
            KeyAlgorithm::Rsa4096 => "rsa4096",
            KeyAlgorithm::P256 => "p256",
            KeyAlgorithm::P384 => "p384",
            KeyAlgorithm::Ed25519 => "ed25519",
        })
    }
}

/// A subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
    Email(String),
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(d) => write!(f, "DNS:{d}"),
            San::Ip(i) => write!(f, "IP:{i}"),
            San::Email(e) => write!(f, "email:{e}"),
        }
    }
}

/// Everything a new request says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsrRequest {
    pub common_name: String,
    pub sans: Vec<San>,
    pub country: Option<String>,
    pub state: Option<String>,
    pub locality: Option<String>,
    pub organization: Option<String>,
    pub org_unit: Option<String>,
    pub key: KeyAlgorithm,
}

fn is_dns_name(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// Check a common name: a host name (wildcards allowed), never a URL, port or path.
pub fn check_common_name(cn: &str) -> Result<String, CsrError> {
    let t = cn.trim();
    if let Some((scheme, _)) = t.split_once("://") {
        return Err(CsrError::BadCommonName(format!(
            "{t:?} has a scheme ({scheme}://); give only the host name"
        )));
    }
    if t.contains('/') {
        return Err(CsrError::BadCommonName(format!(
            "{t:?} has a path; give only the host name"
        )));
    }
    if t.parse::<IpAddr>().is_err()
        && let Some((_, port)) = t.rsplit_once(':')
    {
        return Err(CsrError::BadCommonName(format!(
            "{t:?} has a port (:{port}); give only the host name"
        )));
    }
    if t.parse::<IpAddr>().is_ok() || is_dns_name(t) {
        Ok(t.trim_end_matches('.').to_ascii_lowercase())
    } else {
        Err(CsrError::BadCommonName(format!(
            "{t:?} is not a valid host name"
        )))
    }
}

/// Check an ISO 3166 alpha-2 code (case-insensitive); returns it upper-cased.
pub fn check_country(c: &str) -> Result<String, CsrError> {
    let up = c.trim().to_ascii_uppercase();
    if up.len() == 2 && COUNTRIES.split(' ').any(|x| x == up) {
        Ok(up)
    } else {
        Err(CsrError::BadCountry(c.trim().to_string()))
    }
}

impl FromStr for San {
    type Err = CsrError;
    /// `www.example.com`, `*.example.com`, `192.0.2.1`, `admin@example.com`, or the
    /// same with `DNS:`, `IP:`, `email:` prefixes.
    fn from_str(s: &str) -> Result<Self, CsrError> {
        let t = s.trim();
        let lower = t.to_ascii_lowercase();
        let bad = || CsrError::BadSan(t.to_string());
        if let Some(rest) = lower.strip_prefix("dns:") {
            return if is_dns_name(rest) {
                Ok(San::Dns(rest.to_string()))
            } else {
                Err(bad())
            };
        }
        if let Some(rest) = lower.strip_prefix("ip:") {
            return rest.parse().map(San::Ip).map_err(|_| bad());
        }
        if let Some(rest) = t
            .strip_prefix("email:")
            .or_else(|| t.strip_prefix("EMAIL:"))
        {
            return email(rest).ok_or_else(bad);
        }
        if let Ok(ip) = t.parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        if t.contains('@') {
            return email(t).ok_or_else(bad);
        }
        if is_dns_name(&lower) {
            return Ok(San::Dns(lower.trim_end_matches('.').to_string()));
        }
        Err(bad())
    }
}

fn email(s: &str) -> Option<San> {
    let (local, domain) = s.split_once('@')?;
    (!local.is_empty() && is_dns_name(domain) && s.is_ascii() && !s.contains(char::is_whitespace))
        .then(|| San::Email(s.to_string()))
}

/// A new key and request.
pub struct GeneratedCsr {
    pub csr_pem: String,
    pub csr_der: Vec<u8>,
    /// PKCS#8 PEM of the private key. Callers write it with mode 0600 and never log it.
    pub key_pem: String,
}

impl fmt::Debug for GeneratedCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedCsr")
            .field("csr_pem", &self.csr_pem)
            .field("key_pem", &"***")
            .finish()
    }
}

/// A new key pair of the given algorithm (Ed25519 made by OpenSSL, see below).
pub fn new_key_pair(alg: KeyAlgorithm) -> Result<KeyPair, rcgen::Error> {
    match alg {
        KeyAlgorithm::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)
        }
        KeyAlgorithm::Rsa3072 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072)
        }
        KeyAlgorithm::Rsa4096 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096)
        }
        KeyAlgorithm::P256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::P384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        // aws-lc-rs writes Ed25519 keys as PKCS#8 v2, which OpenSSL 3.0 (and so nginx,
        // Apache, `openssl pkey`) cannot read; let OpenSSL make the key instead.
        KeyAlgorithm::Ed25519 => {
            let key = openssl::pkey::PKey::generate_ed25519()
                .and_then(|k| k.private_key_to_pem_pkcs8())
                .map_err(|_| rcgen::Error::KeyGenerationUnavailable)?;
            let pem = String::from_utf8(key).map_err(|_| rcgen::Error::KeyGenerationUnavailable)?;
            KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_ED25519)
        }
    }
}

/// A key pair from PKCS#8 DER, with the signature algorithm its key type implies.
fn existing_key_pair(der: &[u8]) -> Result<KeyPair, CsrError> {
    let bad = |e: rcgen::Error| CsrError::Generate(format!("the existing key: {e}"));
    let pkey = openssl::pkey::PKey::private_key_from_pkcs8(der)
        .map_err(|_| CsrError::Generate("the existing key is unreadable".into()))?;
    let alg = match pkey.id() {
        openssl::pkey::Id::RSA => &rcgen::PKCS_RSA_SHA256,
        openssl::pkey::Id::ED25519 => &rcgen::PKCS_ED25519,
        openssl::pkey::Id::EC => match pkey.bits() {
            384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            _ => &rcgen::PKCS_ECDSA_P256_SHA256,
        },
        _ => return Err(CsrError::Generate("unsupported key type".into())),
    };
    let key = rustls_pki_types::PrivatePkcs8KeyDer::from(der.to_vec());
    KeyPair::from_pkcs8_der_and_sign_algo(&key, alg).map_err(bad)
}

/// Generate a key and a request. The common name is also put in the SANs (browsers
/// ignore the CN) unless it is already there.
pub fn generate(req: &CsrRequest) -> Result<GeneratedCsr, CsrError> {
    generate_with_key(req, None)
}

/// As [`generate`], but with an existing key (PKCS#8 DER) when one is given: a renewal
/// that keeps its key. `req.key` is then ignored.
pub fn generate_with_key(
    req: &CsrRequest,
    key_pkcs8: Option<&[u8]>,
) -> Result<GeneratedCsr, CsrError> {
    let cn = check_common_name(&req.common_name)?;
    let gen_err = |e: rcgen::Error| CsrError::Generate(e.to_string());
    let mut sans = req.sans.clone();
    let cn_san = match cn.parse::<IpAddr>() {
        Ok(ip) => San::Ip(ip),
        Err(_) => San::Dns(cn.clone()),
    };
    if !sans.contains(&cn_san) {
        sans.insert(0, cn_san);
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(c) = &req.country {
        dn.push(DnType::CountryName, check_country(c)?);
    }
    for (ty, v) in [
        (DnType::StateOrProvinceName, &req.state),
        (DnType::LocalityName, &req.locality),
        (DnType::OrganizationName, &req.organization),
        (DnType::OrganizationalUnitName, &req.org_unit),
    ] {
        if let Some(v) = v.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            dn.push(ty, v);
        }
    }
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.subject_alt_names = sans
        .iter()
        .map(|s| {
            Ok(match s {
                San::Dns(d) => SanType::DnsName(Ia5String::try_from(d.as_str()).map_err(gen_err)?),
                San::Ip(i) => SanType::IpAddress(*i),
                San::Email(e) => {
                    SanType::Rfc822Name(Ia5String::try_from(e.as_str()).map_err(gen_err)?)
                }
            })
        })
        .collect::<Result<_, CsrError>>()?;
    let key = match key_pkcs8 {
        Some(der) => existing_key_pair(der)?,
        None => new_key_pair(req.key).map_err(gen_err)?,
    };
    let csr = params.serialize_request(&key).map_err(gen_err)?;
    Ok(GeneratedCsr {
        csr_pem: csr.pem().map_err(gen_err)?,
        csr_der: csr.der().to_vec(),
        key_pem: key.serialize_pem(),
    })
}

/// Read the request fields from an OpenSSL request config: `[req]` with
/// `distinguished_name`, `req_extensions` (or `x509_extensions`) and `default_bits`;
/// the DN section (`C`/`countryName`, `ST`, `L`, `O`, `OU`, `CN`, with `prompt = no`
/// values or `*_default` values); `subjectAltName = @alt_names` with `DNS.1 = …`,
/// `IP.1 = …`, `email.1 = …`, or inline `DNS:a,IP:b`.
pub fn from_openssl_config(text: &str) -> Result<CsrRequest, CsrError> {
    let cfg_err = |m: String| CsrError::OpensslConfig(m);
    let mut sections: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut current = String::from("default");
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_string();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(cfg_err(format!(
                "line {}: expected key = value, got {line:?}",
                n + 1
            )));
        };
        let v = v.trim().trim_matches('"').to_string();
        sections
            .entry(current.clone())
            .or_default()
            .push((k.trim().to_string(), v));
    }
    let get = |sec: &str, key: &str| -> Option<String> {
        sections
            .get(sec)?
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    if !sections.contains_key("req") {
        return Err(cfg_err("no [req] section".into()));
    }
    let dn_sec =
        get("req", "distinguished_name").unwrap_or_else(|| "req_distinguished_name".into());
    let prompt_no = get("req", "prompt").is_some_and(|p| p.eq_ignore_ascii_case("no"));
    let dn_field = |short: &str, long: &str| -> Option<String> {
        let direct = get(&dn_sec, short).or_else(|| get(&dn_sec, long));
        let default = get(&dn_sec, &format!("{short}_default"))
            .or_else(|| get(&dn_sec, &format!("{long}_default")));
        // With prompts, the plain key holds the prompt text; the value is the default.
        let v = if prompt_no {
            direct.or(default)
        } else {
            default.or(direct)
        };
        v.filter(|s| !s.is_empty())
    };
    let common_name = dn_field("CN", "commonName")
        .ok_or_else(|| cfg_err(format!("[{dn_sec}] has no CN (or commonName_default)")))?;
    let mut req = CsrRequest {
        common_name,
        country: dn_field("C", "countryName"),
        state: dn_field("ST", "stateOrProvinceName"),
        locality: dn_field("L", "localityName"),
        organization: dn_field("O", "organizationName"),
        org_unit: dn_field("OU", "organizationalUnitName"),
        ..Default::default()
    };
    if let Some(bits) = get("req", "default_bits") {
        req.key = match bits.as_str() {
            "2048" => KeyAlgorithm::Rsa2048,
            "3072" => KeyAlgorithm::Rsa3072,
            "4096" => KeyAlgorithm::Rsa4096,
            other => {
                return Err(cfg_err(format!(
                    "default_bits = {other} (use 2048, 3072 or 4096)"
                )));
            }
        };
    }
    let ext_sec = get("req", "req_extensions").or_else(|| get("req", "x509_extensions"));
    if let Some(ext) = ext_sec
        && let Some(san) = get(&ext, "subjectAltName")
    {
        if let Some(list) = san.strip_prefix('@') {
            let entries = sections.get(list.trim()).ok_or_else(|| {
                cfg_err(format!(
                    "subjectAltName refers to [{list}], which is missing"
                ))
            })?;
            for (k, v) in entries {
                let kind = k.split('.').next().unwrap_or("").to_ascii_lowercase();
                let s = match kind.as_str() {
                    "dns" => format!("DNS:{v}"),
                    "ip" => format!("IP:{v}"),
                    "email" => format!("email:{v}"),
                    _ => {
                        return Err(cfg_err(format!(
                            "[{list}] {k}: only DNS, IP and email names are supported"
                        )));
                    }
                };
                req.sans.push(s.parse()?);
            }
        } else {
            for item in san.split(',') {
                req.sans.push(item.trim().parse()?);
            }
        }
    }
    Ok(req)
}

/// SHA-256 (lower-case hex) of a CSR's SubjectPublicKeyInfo.
pub fn csr_spki_sha256(csr_der: &[u8]) -> Result<String, CsrError> {
    let (_, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| CsrError::NotACsr(e.to_string()))?;
    let d = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        csr.certification_request_info.subject_pki.raw,
    );
    Ok(hex::encode(d))
}

/// What a request says, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrInfo {
    pub subject: String,
    pub common_name: Option<String>,
    /// `DNS:…`, `IP:…`, `email:…`.
    pub sans: Vec<String>,
    pub key: KeyInfo,
    pub signature_algorithm: String,
    /// The request's self-signature verifies with its own public key.
    pub signature_valid: bool,
}

/// Read a PEM or DER certificate signing request.
pub fn inspect(data: &[u8]) -> Result<CsrInfo, CsrError> {
    let der = if data.trim_ascii_start().starts_with(b"-----BEGIN") {
        let pem = Pem::iter_from_buffer(data)
            .filter_map(Result::ok)
            .find(|p| p.label == "CERTIFICATE REQUEST" || p.label == "NEW CERTIFICATE REQUEST")
            .ok_or_else(|| CsrError::NotACsr("no PEM CERTIFICATE REQUEST block".into()))?;
        pem.contents
    } else {
        data.to_vec()
    };
    let (_, csr) =
        X509CertificationRequest::from_der(&der).map_err(|e| CsrError::NotACsr(e.to_string()))?;
    let info = &csr.certification_request_info;
    let mut sans = Vec::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    match n {
                        GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                        GeneralName::RFC822Name(e) => sans.push(format!("email:{e}")),
                        GeneralName::IPAddress(b) => {
                            if let Some(ip) = crate::parse::ip_from_bytes(b) {
                                sans.push(format!("IP:{ip}"));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(CsrInfo {
        subject: info.subject.to_string(),
        common_name: info
            .subject
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string),
        sans,
        key: crate::parse::key_info(&info.subject_pki),
        signature_algorithm: crate::parse::oid_name(&csr.signature_algorithm.algorithm),
        signature_valid: csr.verify_signature().is_ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_must_be_host_names() {
        assert_eq!(
            check_common_name("WWW.Example.com").unwrap(),
            "www.example.com"
        );
        assert_eq!(check_common_name("*.example.com").unwrap(), "*.example.com");
        let e = check_common_name("https://www.example.com")
            .unwrap_err()
            .to_string();
        assert!(e.contains("scheme"), "{e}");
        let e = check_common_name("www.example.com:8443")
            .unwrap_err()
            .to_string();
        assert!(e.contains("port"), "{e}");
        let e = check_common_name("www.example.com/login")
            .unwrap_err()
            .to_string();
        assert!(e.contains("path"), "{e}");
        assert!(check_common_name("bad name").is_err());
    }

    #[test]
    fn countries_are_iso_3166() {
        assert_eq!(COUNTRIES.split(' ').count(), 249);
        assert_eq!(check_country("de").unwrap(), "DE");
        assert!(
            check_country("UK").is_err(),
            "the code for the United Kingdom is GB"
        );
        assert!(check_country("USA").is_err());
    }

    #[test]
    fn sans_of_every_kind() {
        assert_eq!(
            "*.domain.com".parse::<San>().unwrap(),
            San::Dns("*.domain.com".into())
        );
        assert_eq!(
            "192.0.2.1".parse::<San>().unwrap(),
            San::Ip("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            "IP:2001:db8::1".parse::<San>().unwrap(),
            San::Ip("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            "admin@example.com".parse::<San>().unwrap(),
            San::Email("admin@example.com".into())
        );
        assert!("not a name".parse::<San>().is_err());
        assert!("a..b".parse::<San>().is_err());
    }

    #[test]
    fn reads_openssl_request_configs() {
        let cfg = "[req]\ndefault_bits = 4096\nprompt = no\ndistinguished_name = req_distinguished_name\nreq_extensions = req_ext\n\n[req_distinguished_name]\nC = DE\nST = Berlin\nL = Berlin\nO = Example GmbH\nOU = IT\nCN = www.example.com\n\n[req_ext]\nsubjectAltName = @alt_names\n\n[alt_names]\nDNS.1 = www.example.com\nDNS.2 = *.example.com\nIP.1 = 192.0.2.10\n";
        let r = from_openssl_config(cfg).unwrap();
        assert_eq!(r.common_name, "www.example.com");
        assert_eq!(r.country.as_deref(), Some("DE"));
        assert_eq!(r.org_unit.as_deref(), Some("IT"));
        assert_eq!(r.key, KeyAlgorithm::Rsa4096);
        assert_eq!(r.sans.len(), 3);
        let prompted = "[req]\ndistinguished_name = dn\n[dn]\ncommonName = Common Name\ncommonName_default = mail.example.com\n";
        assert_eq!(
            from_openssl_config(prompted).unwrap().common_name,
            "mail.example.com"
        );
        assert!(from_openssl_config("[dn]\nCN = x").is_err());
    }
}
