//! The server's own TLS identity: `server.crt` and `server.key` in the data directory,
//! generated at first start.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use certkeeper_core::Fingerprint;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::ServerError;

/// Write a secret file readable by its owner only.
pub(crate) fn write_secret(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(tmp, path)
}

/// Write a secret file that must not exist yet (mode 0600); `Ok(false)` if it does.
pub(crate) fn write_secret_new(path: &Path, data: &[u8]) -> std::io::Result<bool> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = match opts.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    f.write_all(data)?;
    f.sync_all()?;
    Ok(true)
}

/// Load `server.crt`/`server.key`, creating them first if absent.
pub(crate) fn load_or_create(
    dir: &Path,
    extra_names: &[String],
    now: OffsetDateTime,
) -> Result<Identity, ServerError> {
    let cert_path = dir.join("server.crt");
    let key_path = dir.join("server.key");
    if !cert_path.exists() || !key_path.exists() {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
            let h = h.trim();
            if !h.is_empty() {
                names.push(h.to_string());
            }
        }
        for n in extra_names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        let id = certkeeper_pki::selfsigned::server_identity(&names, now, 825)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        write_secret(&key_path, id.key_pem.as_bytes()).map_err(|source| ServerError::Io {
            context: format!("writing {}", key_path.display()),
            source,
        })?;
        std::fs::write(&cert_path, &id.cert_pem).map_err(|source| ServerError::Io {
            context: format!("writing {}", cert_path.display()),
            source,
        })?;
        tracing::info!(path = %cert_path.display(), "generated the server certificate");
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServerError::Tls(format!("{}: {e}", cert_path.display())))?;
    let leaf = certs
        .first()
        .ok_or_else(|| ServerError::Tls(format!("{} holds no certificate", cert_path.display())))?;
    let fingerprint = certkeeper_pki::sha256(leaf);
    // The key's content never appears in an error message.
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|_| {
        ServerError::Tls(format!(
            "{} holds no usable private key",
            key_path.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key_der = key.secret_der().to_vec();
    let leaf_der = leaf.to_vec();
    let certified = CertifiedKey::from_der(certs, key, &provider)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let resolver = Arc::new(SwappableCert::new(certified, fingerprint));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Identity {
        config: Arc::new(cfg),
        resolver,
        leaf_der,
        key_der,
    })
}

/// The server's TLS setup and where its certificate came from.
pub(crate) struct Identity {
    pub config: Arc<rustls::ServerConfig>,
    pub resolver: Arc<SwappableCert>,
    pub leaf_der: Vec<u8>,
    /// The file key, to be sealed into the inventory; never logged.
    pub key_der: Vec<u8>,
}

/// The certificate the server presents, replaceable while it runs: new handshakes get
/// the new one, established connections keep theirs.
#[derive(Debug)]
pub struct SwappableCert {
    current: RwLock<(Arc<CertifiedKey>, Fingerprint)>,
}

impl SwappableCert {
    fn new(key: CertifiedKey, fp: Fingerprint) -> Self {
        SwappableCert {
            current: RwLock::new((Arc::new(key), fp)),
        }
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.current.read().unwrap_or_else(|p| p.into_inner()).1
    }

    pub fn swap(&self, key: CertifiedKey, fp: Fingerprint) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (Arc::new(key), fp);
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .clone(),
        )
    }
}

/// Build what the server presents for an inventory certificate with a stored key:
/// the certificate, its chain (without the root), and the key, which must match.
pub(crate) async fn certified_from_inventory(
    store: &certkeeper_store::Store,
    vault: &certkeeper_pki::vault::Vault,
    fp: &Fingerprint,
) -> Result<CertifiedKey, String> {
    let cert = store.certificate(fp).await.map_err(|e| e.to_string())?;
    let sealed = store
        .sealed_key(fp)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no private key is stored for this certificate")?;
    let key = vault
        .open(
            &certkeeper_pki::vault::SealedKey {
                kek_id: sealed.kek_id,
                wrapped_dek: sealed.wrapped_dek,
                ciphertext: sealed.ciphertext,
            },
            fp.to_string().as_bytes(),
        )
        .map_err(|e| e.to_string())?;
    let chain = store.chain_of(fp).await.map_err(|e| e.to_string())?;
    let mut certs = vec![CertificateDer::from(cert.der)];
    certs.extend(
        certkeeper_pki::import::served_chain(&chain)
            .iter()
            .map(|d| CertificateDer::from(d.clone())),
    );
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    CertifiedKey::from_der(
        certs,
        PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(key)),
        &provider,
    )
    .map_err(|e| format!("the key does not fit the certificate: {e}"))
}

/// Follow the `server_certificate` setting, so every replica of a shared database
/// switches when one of them is told to.
pub(crate) async fn follow_setting(
    store: certkeeper_store::Store,
    vault: Arc<certkeeper_pki::vault::Vault>,
    resolver: Arc<SwappableCert>,
    every: std::time::Duration,
) {
    loop {
        if let Ok(Some(sha)) = store.setting("server_certificate").await
            && let Ok(fp) = sha.parse::<Fingerprint>()
            && fp != resolver.fingerprint()
        {
            match certified_from_inventory(&store, &vault, &fp).await {
                Ok(ck) => {
                    resolver.swap(ck, fp);
                    tracing::info!(certificate = %fp, "now serving the configured certificate");
                }
                Err(e) => {
                    tracing::warn!(certificate = %fp, error = %e, "cannot serve the configured certificate")
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// The vault: the current KEK from `CERTKEEPER_KEK`, `kek_file`, or `DATA_DIR/kek.key`
/// (created with mode 0600 at first start), plus earlier KEKs for rotation.
pub(crate) fn load_vault(
    config: &crate::ServerConfig,
) -> Result<certkeeper_pki::vault::Vault, ServerError> {
    use certkeeper_pki::vault::{Kek, Vault};
    let bad = |what: String| {
        move |e: certkeeper_pki::vault::VaultError| ServerError::Kek(format!("{what}: {e}"))
    };
    let current = match (&config.kek, &config.kek_file) {
        (Some(material), _) => {
            Kek::from_material(material.as_bytes()).map_err(bad("CERTKEEPER_KEK".into()))?
        }
        (None, file) => {
            let path = file
                .clone()
                .unwrap_or_else(|| config.data_dir.join("kek.key"));
            if file.is_none() && !path.exists() {
                let fresh = Kek::generate().map_err(bad("generating".into()))?;
                write_secret(&path, fresh.as_bytes()).map_err(|source| ServerError::Io {
                    context: format!("writing {}", path.display()),
                    source,
                })?;
                tracing::info!(path = %path.display(), "generated the key-encryption key; back it up apart from the database");
            }
            let material = std::fs::read(&path).map_err(|source| ServerError::Io {
                context: format!("reading {}", path.display()),
                source,
            })?;
            Kek::from_material(&material).map_err(bad(path.display().to_string()))?
        }
    };
    let mut keks = vec![current];
    for p in &config.previous_kek_files {
        let material = std::fs::read(p).map_err(|source| ServerError::Io {
            context: format!("reading {}", p.display()),
            source,
        })?;
        keks.push(Kek::from_material(&material).map_err(bad(p.display().to_string()))?);
    }
    Vault::new(keks).map_err(bad("vault".into()))
}

/// Make sure this server's KEKs are the ones the database's keys are sealed with: a
/// replica started with another KEK would seal keys the others cannot open.
pub(crate) async fn check_kek(
    store: &certkeeper_store::Store,
    vault: &certkeeper_pki::vault::Vault,
) -> Result<(), ServerError> {
    use certkeeper_pki::vault::SealedKey;
    const PLAIN: &[u8] = b"certkeeper key-encryption key check";
    let mine = vault
        .seal(PLAIN, b"kek-check")
        .map_err(|e| ServerError::Kek(e.to_string()))?;
    let encode = |s: &SealedKey| {
        format!(
            "{}:{}:{}",
            s.kek_id,
            hex::encode(&s.wrapped_dek),
            hex::encode(&s.ciphertext)
        )
    };
    let in_force = store.init_setting("kek_check", &encode(&mine)).await?;
    let mut parts = in_force.split(':');
    let (Some(id), Some(dek), Some(ct)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ServerError::Kek(
            "the stored KEK check value is malformed".into(),
        ));
    };
    let sealed = SealedKey {
        kek_id: id.to_string(),
        wrapped_dek: hex::decode(dek).map_err(|e| ServerError::Kek(e.to_string()))?,
        ciphertext: hex::decode(ct).map_err(|e| ServerError::Kek(e.to_string()))?,
    };
    match vault.open(&sealed, b"kek-check") {
        Ok(p) if p == PLAIN => {
            if sealed.kek_id != vault.current_id() {
                // Rotation in progress: record the new KEK as the one in force.
                store.set_setting("kek_check", &encode(&mine)).await?;
            }
            Ok(())
        }
        _ => Err(ServerError::Kek(format!(
            "the database's keys are sealed with key-encryption key {id}, which this server does not have \
             (its KEK is {}); give every server of a database the same KEK (CERTKEEPER_KEK or kek_file), \
             and list an old KEK in previous_kek_files while rotating",
            vault.current_id()
        ))),
    }
}

/// Re-wrap every stored key (certificates' and pending requests') that is not under
/// the current KEK. A key that will not open is reported and skipped, not retried.
pub(crate) async fn rewrap_all(
    store: certkeeper_store::Store,
    vault: Arc<certkeeper_pki::vault::Vault>,
) {
    use certkeeper_pki::vault::SealedKey;
    use certkeeper_store::KeyHolder;
    let current = vault.current_id().to_string();
    let mut skipped = std::collections::HashSet::new();
    for holder in [KeyHolder::Certificate, KeyHolder::Request] {
        loop {
            let limit = 100 + skipped.len() as i64;
            let batch = store.keys_not_under(holder, &current, limit).await;
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "key re-wrapping paused");
                    return;
                }
            };
            let mut progressed = false;
            for (id, k) in batch {
                if skipped.contains(&id) {
                    continue;
                }
                let aad = if holder == KeyHolder::Request {
                    format!("request:{id}")
                } else {
                    id.clone()
                };
                let sealed = SealedKey {
                    kek_id: k.kek_id.clone(),
                    wrapped_dek: k.wrapped_dek,
                    ciphertext: k.ciphertext,
                };
                match vault.rewrap(&sealed, aad.as_bytes()) {
                    Ok(new) => {
                        let stored = certkeeper_store::StoredKey {
                            kek_id: new.kek_id,
                            wrapped_dek: new.wrapped_dek,
                            ciphertext: new.ciphertext,
                        };
                        let done = store.rewrap_key(holder, &id, &k.kek_id, &stored).await;
                        progressed |= done.unwrap_or(false);
                    }
                    Err(e) => {
                        tracing::warn!(key = %id, error = %e, "cannot re-wrap a key; it stays under its old KEK");
                        skipped.insert(id);
                    }
                }
            }
            if !progressed {
                break;
            }
        }
    }
}
