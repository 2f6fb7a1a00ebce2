//! Talking to a certkeeper server: TLS trust by pinned fingerprint, by a given CA, or
//! by the system roots; never following redirects; API errors made readable.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use certkeeper_core::Fingerprint;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde_json::Value;

/// How the server's certificate is trusted.
#[derive(Debug, Clone, Default)]
pub enum Trust {
    /// The system's roots.
    #[default]
    System,
    /// The SHA-256 of the server's certificate or of a CA in its chain.
    Pinned(Fingerprint),
    /// A CA certificate file (PEM).
    CaFile(std::path::PathBuf),
}

/// Accepts the server when its leaf is the pinned certificate (the handshake signature
/// proves the key), or when its chain verifies up to a pinned CA it presents.
#[derive(Debug)]
struct PinnedVerifier {
    pin: Fingerprint,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if certkeeper_pki::sha256(end_entity) == self.pin {
            return Ok(ServerCertVerified::assertion());
        }
        let Some(ca) = intermediates
            .iter()
            .find(|c| certkeeper_pki::sha256(c) == self.pin)
        else {
            return Err(rustls::Error::General(format!(
                "the server's certificate does not match the pinned fingerprint {}",
                self.pin
            )));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An HTTP client for `server`, trusting it as `trust` says.
pub fn http_client(trust: &Trust, timeout: Duration) -> Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .user_agent(concat!("certkeeper/", env!("CARGO_PKG_VERSION")));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = match trust {
        Trust::System => builder,
        Trust::Pinned(pin) => {
            let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    pin: *pin,
                    provider,
                }))
                .with_no_client_auth();
            builder.tls_backend_preconfigured(cfg)
        }
        Trust::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading CA file {}", path.display()))?
            {
                roots.add(
                    c.with_context(|| format!("{} holds a bad certificate", path.display()))?,
                )?;
            }
            if roots.is_empty() {
                bail!("{} holds no certificate", path.display());
            }
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.tls_backend_preconfigured(cfg)
        }
    };
    builder.build().context("building the HTTP client")
}

/// Refuse URLs that would send a token in the clear: `http://` only to a loopback
/// address, and never with a pin or CA file (which plain HTTP would silently ignore).
pub fn check_url(url: &str, trust: &Trust) -> Result<()> {
    let Some(rest) = url.strip_prefix("http://") else {
        if url.starts_with("https://") {
            return Ok(());
        }
        bail!("{url:?} is not an https:// URL");
    };
    if !matches!(trust, Trust::System) {
        bail!("{url} is plain HTTP: a pinned fingerprint or CA file needs https://");
    }
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(host)
        .trim_matches(['[', ']']);
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!(
            "{url} is plain HTTP to another host: tokens would cross the network in the clear; use https://"
        );
    }
    Ok(())
}

/// Trust from the usual pair of options.
pub fn trust_from(ca_fingerprint: Option<&str>, ca_file: Option<&Path>) -> Result<Trust> {
    match (ca_fingerprint, ca_file) {
        (Some(_), Some(_)) => bail!("give either --ca-fingerprint or --ca-file, not both"),
        (Some(fp), None) => Ok(Trust::Pinned(
            fp.parse().map_err(|e| anyhow!("--ca-fingerprint: {e}"))?,
        )),
        (None, Some(p)) => Ok(Trust::CaFile(p.to_path_buf())),
        (None, None) => Ok(Trust::System),
    }
}

/// A failed API call, with the server's stable error code when it sent one.
#[derive(Debug, thiserror::Error)]
pub enum ApiCallError {
    /// The server could not be reached (or did not answer in time).
    #[error("cannot reach the server at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    /// The server answered with an error.
    #[error("the server refused: {message} ({code}, HTTP {status})")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
}

fn error_chain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Send a request and decode the JSON answer, or turn the error body into an error.
pub async fn call(req: reqwest::RequestBuilder, url: &str) -> Result<Value, ApiCallError> {
    let resp = req.send().await.map_err(|e| ApiCallError::Unreachable {
        url: url.to_string(),
        cause: error_chain(&e),
    })?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| ApiCallError::Unreachable {
        url: url.to_string(),
        cause: error_chain(&e),
    })?;
    if status.is_success() {
        if text.is_empty() {
            return Ok(Value::Null);
        }
        return serde_json::from_str(&text).map_err(|e| ApiCallError::Refused {
            status: status.as_u16(),
            code: "bad_response".into(),
            message: format!("the answer is not JSON: {e}"),
        });
    }
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    Err(ApiCallError::Refused {
        status: status.as_u16(),
        code: v["error"]["code"]
            .as_str()
            .unwrap_or("http_error")
            .to_string(),
        message: v["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {status}")),
    })
}
