//! The OpenSSL path for peers rustls will not talk to: TLS 1.0/1.1, RSA key
//! exchange, CBC and older suites. Blocking; run it on a blocking thread.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use openssl::ssl::{SslConnector, SslMethod, SslOptions, SslVerifyMode, SslVersion};

#[derive(Debug)]
pub(crate) enum LegacyError {
    Timeout,
    Failed(String),
}

/// A TCP stream whose every read and write is bounded by one overall deadline, so a
/// peer that trickles bytes cannot stretch the handshake past it.
#[derive(Debug)]
struct DeadlineStream {
    inner: TcpStream,
    deadline: Instant,
}

impl DeadlineStream {
    fn arm(&self, write: bool) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        if write {
            self.inner.set_write_timeout(Some(left))
        } else {
            self.inner.set_read_timeout(Some(left))
        }
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm(false)?;
        self.inner.read(buf)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm(true)?;
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Handshake over `stream` and return (protocol, IANA cipher name, chain DER).
pub(crate) fn capture(
    stream: TcpStream,
    sni: Option<&str>,
    deadline: Instant,
) -> Result<(String, String, Vec<Vec<u8>>), LegacyError> {
    let fail = |e: &dyn std::fmt::Display| LegacyError::Failed(e.to_string());
    stream.set_nonblocking(false).map_err(|e| fail(&e))?;
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| fail(&e))?;
    builder.set_security_level(0);
    builder.set_verify(SslVerifyMode::NONE);
    builder
        .set_min_proto_version(Some(SslVersion::TLS1))
        .map_err(|e| fail(&e))?;
    builder
        .set_cipher_list("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
        .map_err(|e| fail(&e))?;
    // SSL_OP_LEGACY_SERVER_CONNECT (0x4, not named by the openssl crate): talk to servers
    // without secure renegotiation, which OpenSSL 3 refuses by default.
    builder.set_options(
        SslOptions::ALLOW_UNSAFE_LEGACY_RENEGOTIATION | SslOptions::from_bits_retain(0x4),
    );
    let connector = builder.build();
    let mut config = connector.configure().map_err(|e| fail(&e))?;
    config.set_verify_hostname(false);
    config.set_use_server_name_indication(sni.is_some());
    let stream = DeadlineStream {
        inner: stream,
        deadline,
    };
    let ssl = match config.connect(sni.unwrap_or(""), stream) {
        Ok(s) => s,
        Err(e) => {
            if Instant::now() >= deadline {
                return Err(LegacyError::Timeout);
            }
            return Err(fail(&e));
        }
    };
    let session = ssl.ssl();
    let protocol = match session.version_str() {
        "TLSv1" => "TLSv1.0".to_string(),
        other => other.to_string(),
    };
    let cipher = session
        .current_cipher()
        .map(|c| c.standard_name().unwrap_or(c.name()).to_string())
        .unwrap_or_else(|| "unknown".into());
    let mut chain = Vec::new();
    if let Some(stack) = session.peer_cert_chain() {
        for cert in stack {
            chain.push(cert.to_der().map_err(|e| fail(&e))?);
        }
    } else if let Some(leaf) = session.peer_certificate() {
        chain.push(leaf.to_der().map_err(|e| fail(&e))?);
    }
    if chain.is_empty() {
        return Err(LegacyError::Failed(
            "the server presented no certificate".into(),
        ));
    }
    Ok((protocol, cipher, chain))
}
