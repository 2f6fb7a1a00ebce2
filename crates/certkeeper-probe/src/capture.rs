//! One endpoint: connect, optional STARTTLS, handshake, record the chain.

use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use certkeeper_core::report::DerBase64;
use certkeeper_core::{FailureKind, Observation, Outcome};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::starttls::StartTls;
use crate::{ProbeConfig, Target, legacy};

/// Probe one endpoint and say what it presented.
pub async fn probe(target: &Target, cfg: &ProbeConfig) -> Observation {
    let seen_at = OffsetDateTime::now_utc();
    let outcome = probe_outcome(target, cfg).await;
    Observation {
        host: target.host.clone(),
        ip: target.ip,
        port: target.port,
        sni: target.sni.clone(),
        seen_at,
        outcome,
    }
}

pub(crate) fn failed(kind: FailureKind, message: impl Into<String>) -> Outcome {
    Outcome::Failed {
        kind,
        message: message.into(),
    }
}

async fn probe_outcome(target: &Target, cfg: &ProbeConfig) -> Outcome {
    let starttls = StartTls::for_port(target.port);
    let deadline = Instant::now() + cfg.connect_timeout + cfg.handshake_timeout;

    let modern = match connect(target, cfg, starttls, deadline).await {
        Ok(stream) => rustls_capture(stream, target, starttls, deadline).await,
        Err(outcome) => return outcome,
    };
    let first_failure = match modern {
        Ok(outcome) => return outcome,
        Err(outcome) => outcome,
    };
    let retry = cfg.legacy_fallback
        && matches!(
            &first_failure,
            Outcome::Failed {
                kind: FailureKind::Handshake | FailureKind::Reset | FailureKind::NotTls,
                ..
            }
        );
    if !retry {
        return first_failure;
    }
    let stream = match connect(target, cfg, starttls, deadline).await {
        Ok(s) => s,
        Err(_) => return first_failure,
    };
    let std_stream = match stream.into_std() {
        Ok(s) => s,
        Err(_) => return first_failure,
    };
    let sni = target.sni.clone();
    let deadline_std = deadline.into_std();
    let legacy = tokio::task::spawn_blocking(move || {
        legacy::capture(std_stream, sni.as_deref(), deadline_std)
    })
    .await;
    match legacy {
        Ok(Ok((protocol, cipher, chain))) => Outcome::Tls {
            protocol,
            cipher,
            starttls: starttls.map(|s| s.label().to_string()),
            chain: chain.into_iter().map(DerBase64).collect(),
        },
        Ok(Err(legacy::LegacyError::Timeout)) => failed(
            FailureKind::HandshakeTimeout,
            "handshake did not finish in time",
        ),
        Ok(Err(legacy::LegacyError::Failed(msg))) => match first_failure {
            Outcome::Failed { kind, message } => failed(kind, format!("{message}; OpenSSL: {msg}")),
            other => other,
        },
        Err(_) => first_failure,
    }
}

/// TCP connect within the connect timeout, then STARTTLS (if any) within the deadline.
async fn connect(
    target: &Target,
    cfg: &ProbeConfig,
    starttls: Option<StartTls>,
    deadline: Instant,
) -> Result<TcpStream, Outcome> {
    let addr = std::net::SocketAddr::new(target.ip, target.port);
    if let Some(l) = &cfg.limiter {
        l.acquire().await;
    }
    let connect_deadline = (Instant::now() + cfg.connect_timeout).min(deadline);
    let mut stream = match timeout_at(connect_deadline, TcpStream::connect(addr)).await {
        Err(_) => return Err(failed(FailureKind::ConnectTimeout, "no answer to connect")),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(failed(FailureKind::Refused, "connection refused"));
        }
        Ok(Err(e)) => return Err(failed(FailureKind::Network, e.to_string())),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    if let Some(st) = starttls {
        match timeout_at(deadline, st.upgrade(&mut stream)).await {
            Err(_) => {
                return Err(failed(
                    FailureKind::HandshakeTimeout,
                    format!("{} did not finish in time", st.label()),
                ));
            }
            Ok(Err(msg)) => {
                return Err(failed(
                    FailureKind::NotTls,
                    format!("{}: {msg}", st.label()),
                ));
            }
            Ok(Ok(())) => {}
        }
    }
    Ok(stream)
}

/// `Ok` with a TLS outcome, or `Err` with a failure that may deserve a legacy retry.
async fn rustls_capture(
    stream: TcpStream,
    target: &Target,
    starttls: Option<StartTls>,
    deadline: Instant,
) -> Result<Outcome, Outcome> {
    let recorder = Arc::new(RecordingVerifier::default());
    let mut config = (*base_config()).clone();
    config
        .dangerous()
        .set_certificate_verifier(recorder.clone());
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server_name = match &target.sni {
        Some(name) => ServerName::try_from(name.clone())
            .unwrap_or_else(|_| ServerName::IpAddress(target.ip.into())),
        None => ServerName::IpAddress(target.ip.into()),
    };
    let result = timeout_at(deadline, connector.connect(server_name, stream)).await;
    let starttls = starttls.map(|s| s.label().to_string());
    match result {
        Ok(Ok(tls)) => {
            let (_, conn) = tls.get_ref();
            let protocol = conn
                .protocol_version()
                .map(protocol_name)
                .unwrap_or_else(|| "unknown".into());
            let cipher = conn
                .negotiated_cipher_suite()
                .map(|s| suite_name(s.suite()))
                .unwrap_or_else(|| "unknown".into());
            let chain = conn
                .peer_certificates()
                .map(|c| c.iter().map(|d| DerBase64(d.to_vec())).collect::<Vec<_>>())
                .filter(|c| !c.is_empty())
                .or_else(|| recorder.take())
                .unwrap_or_default();
            if chain.is_empty() {
                return Err(failed(
                    FailureKind::Handshake,
                    "the server presented no certificate",
                ));
            }
            Ok(Outcome::Tls {
                protocol,
                cipher,
                starttls,
                chain,
            })
        }
        Ok(Err(e)) => {
            // A handshake that failed after the server's certificate arrived (a client
            // certificate demanded, say) still tells us what the server presents.
            if let Some(chain) = recorder.take() {
                return Ok(Outcome::Tls {
                    protocol: "unknown".into(),
                    cipher: "unknown".into(),
                    starttls,
                    chain,
                });
            }
            Err(classify(&e))
        }
        Err(_) => Err(failed(
            FailureKind::HandshakeTimeout,
            "handshake did not finish in time",
        )),
    }
}

fn classify(e: &io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::BrokenPipe => failed(FailureKind::Reset, e.to_string()),
        _ => {
            let tls = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            match tls {
                Some(rustls::Error::InvalidMessage(_)) => {
                    failed(FailureKind::NotTls, format!("peer does not speak TLS: {e}"))
                }
                Some(_) => failed(FailureKind::Handshake, e.to_string()),
                None => failed(FailureKind::Network, e.to_string()),
            }
        }
    }
}

fn protocol_name(v: rustls::ProtocolVersion) -> String {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        rustls::ProtocolVersion::TLSv1_1 => "TLSv1.1".into(),
        rustls::ProtocolVersion::TLSv1_0 => "TLSv1.0".into(),
        other => format!("{other:?}"),
    }
}

/// IANA name of a suite (rustls prefixes TLS 1.3 suites with `TLS13_`).
fn suite_name(s: rustls::CipherSuite) -> String {
    match s.as_str() {
        Some(name) => name.replacen("TLS13_", "TLS_", 1),
        None => format!("0x{:04x}", u16::from(s)),
    }
}

/// Every suite, group and version rustls can speak, with a recording verifier.
fn base_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut provider = rustls::crypto::aws_lc_rs::default_provider();
            // Every suite rustls has, cheapest first: the suite does not change which
            // certificate a server presents, so SHA-256 suites are preferred to SHA-384.
            let mut suites = rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES.to_vec();
            suites.sort_by_key(|s| !format!("{:?}", s.suite()).contains("SHA256"));
            provider.cipher_suites = suites;
            // Classical groups only: a post-quantum hybrid key share costs every
            // handshake an ML-KEM key generation and a 1 KB larger ClientHello, for a
            // connection that carries no secrets.
            provider.kx_groups = vec![
                rustls::crypto::aws_lc_rs::kx_group::X25519,
                rustls::crypto::aws_lc_rs::kx_group::SECP256R1,
                rustls::crypto::aws_lc_rs::kx_group::SECP384R1,
            ];
            let config = ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map(|b| {
                    b.dangerous()
                        .with_custom_certificate_verifier(Arc::new(RecordingVerifier::default()))
                        .with_no_client_auth()
                });
            // The aws-lc-rs provider supports both versions; failing here is a build bug.
            Arc::new(config.expect("aws-lc-rs supports TLS 1.2 and 1.3"))
        })
        .clone()
}

/// Accepts every certificate and signature and keeps the presented chain.
#[derive(Debug, Default)]
struct RecordingVerifier {
    chain: Mutex<Option<Vec<DerBase64>>>,
}

impl RecordingVerifier {
    fn take(&self) -> Option<Vec<DerBase64>> {
        self.chain.lock().ok().and_then(|mut c| c.take())
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(DerBase64(end_entity.to_vec()));
        chain.extend(intermediates.iter().map(|c| DerBase64(c.to_vec())));
        if let Ok(mut slot) = self.chain.lock() {
            *slot = Some(chain);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ECDSA_NISTP521_SHA512,
            SignatureScheme::ED25519,
            SignatureScheme::ED448,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PKCS1_SHA256,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA512,
            SignatureScheme::RSA_PKCS1_SHA1,
            SignatureScheme::ECDSA_SHA1_Legacy,
        ]
    }
}
