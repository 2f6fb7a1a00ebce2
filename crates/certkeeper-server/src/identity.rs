//! The server's own TLS identity: `server.crt` and `server.key` in the data directory,
//! generated at first start.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

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

/// Load `server.crt`/`server.key`, creating them first if absent.
pub(crate) fn load_or_create(
    dir: &Path,
    extra_names: &[String],
    now: OffsetDateTime,
) -> Result<(Arc<rustls::ServerConfig>, Fingerprint), ServerError> {
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
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(cfg), fingerprint))
}
