//! A root CA, an intermediate and leaves of every shape the tests need.

use std::path::{Path, PathBuf};

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PKCS_RSA_SHA256, RsaKeySize,
};
use time::{Duration, OffsetDateTime};

/// Key algorithm of a generated certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa2048,
    EcdsaP256,
    Ed25519,
}

/// What a leaf should look like.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    pub names: Vec<String>,
    pub key: KeyKind,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A leaf for `name`, valid from yesterday for 90 days.
    pub fn new(name: &str, key: KeyKind) -> Self {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            common_name: name.to_string(),
            names: vec![name.to_string()],
            key,
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(90),
        }
    }
    pub fn valid_days(mut self, from_now: i64, days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        self.not_before = now + Duration::days(from_now);
        self.not_after = self.not_before + Duration::days(days);
        self
    }
    pub fn names(mut self, names: &[&str]) -> Self {
        self.names = names.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// A generated certificate with its key, written to files.
#[derive(Debug, Clone)]
pub struct Issued {
    pub der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The leaf followed by the intermediate (for leaves issued by the intermediate).
    pub chain_path: PathBuf,
}

/// A throwaway PKI: root CA, intermediate CA, and leaves issued from the intermediate.
pub struct TestPki {
    dir: tempfile::TempDir,
    pub root: Issued,
    pub intermediate: Issued,
    intermediate_issuer: Issuer<'static, KeyPair>,
    counter: std::cell::Cell<u32>,
}

fn key_for(kind: KeyKind) -> Result<KeyPair> {
    Ok(match kind {
        KeyKind::Rsa2048 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048)?,
        KeyKind::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
        // aws-lc-rs writes Ed25519 keys as PKCS#8 v2, which OpenSSL 3.0 cannot load;
        // let OpenSSL make the key so `s_server` can use it.
        KeyKind::Ed25519 => {
            let out = std::process::Command::new("openssl")
                .args(["genpkey", "-algorithm", "ed25519"])
                .output()?;
            anyhow::ensure!(out.status.success(), "openssl genpkey failed");
            KeyPair::from_pem_and_sign_algo(&String::from_utf8(out.stdout)?, &PKCS_ED25519)?
        }
    })
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "certkeeper tests");
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(cn: &str) -> Result<CertificateParams> {
    let now = OffsetDateTime::now_utc();
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = now - Duration::days(2);
    p.not_after = now + Duration::days(3650);
    Ok(p)
}

impl TestPki {
    /// A new root (ECDSA P-256) and intermediate (ECDSA P-256) in a fresh temp dir.
    pub fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let root_key = key_for(KeyKind::EcdsaP256)?;
        let root_params = ca_params("certkeeper test root")?;
        let root_cert = root_params.self_signed(&root_key)?;
        let root = write(dir.path(), "root", &root_cert, &root_key, None)?;
        let root_issuer = Issuer::new(root_params, root_key);

        let int_key = key_for(KeyKind::EcdsaP256)?;
        let mut int_params = ca_params("certkeeper test intermediate")?;
        int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let int_cert = int_params.signed_by(&int_key, &root_issuer)?;
        let intermediate = write(dir.path(), "intermediate", &int_cert, &int_key, None)?;
        let intermediate_issuer = Issuer::new(int_params, int_key);
        Ok(TestPki {
            dir,
            root,
            intermediate,
            intermediate_issuer,
            counter: std::cell::Cell::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn next_name(&self, base: &str) -> String {
        let n = self.counter.get() + 1;
        self.counter.set(n);
        format!("{base}-{n}")
    }

    fn leaf_params(spec: &LeafSpec) -> Result<CertificateParams> {
        let mut p = CertificateParams::new(spec.names.clone())?;
        p.distinguished_name = dn(&spec.common_name);
        p.not_before = spec.not_before;
        p.not_after = spec.not_after;
        p.use_authority_key_identifier_extension = true;
        Ok(p)
    }

    /// A leaf issued by the intermediate; its chain file holds leaf + intermediate.
    pub fn leaf(&self, spec: &LeafSpec) -> Result<Issued> {
        let key = key_for(spec.key)?;
        let cert = Self::leaf_params(spec)?.signed_by(&key, &self.intermediate_issuer)?;
        write(
            self.dir.path(),
            &self.next_name("leaf"),
            &cert,
            &key,
            Some(&self.intermediate.cert_pem),
        )
    }

    /// A self-signed leaf (not a CA).
    pub fn self_signed(&self, spec: &LeafSpec) -> Result<Issued> {
        let key = key_for(spec.key)?;
        let cert = Self::leaf_params(spec)?.self_signed(&key)?;
        write(self.dir.path(), &self.next_name("self"), &cert, &key, None)
    }
}

fn write(
    dir: &Path,
    name: &str,
    cert: &rcgen::Certificate,
    key: &KeyPair,
    chain_extra: Option<&str>,
) -> Result<Issued> {
    let der = cert.der().to_vec();
    let cert_pem = cert.pem();
    let key_pem = key.serialize_pem();
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    let chain_path = dir.join(format!("{name}.chain.pem"));
    std::fs::write(&cert_path, &cert_pem)?;
    std::fs::write(&key_path, &key_pem)?;
    std::fs::write(
        &chain_path,
        format!("{cert_pem}{}", chain_extra.unwrap_or_default()),
    )?;
    Ok(Issued {
        der,
        cert_pem,
        key_pem,
        cert_path,
        key_path,
        chain_path,
    })
}
