//! Small in-test peers: STARTTLS servers that really upgrade to TLS (rustls), and
//! hostile peers that misbehave on the wire.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A rustls server config from a chain file and a key file.
pub fn server_config(chain: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(chain)
        .context("reading chain")?
        .collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key).context("reading key")?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(cfg))
}

/// A task serving one kind of peer until dropped.
pub struct Peer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Peer {
    pub(crate) fn new(addr: SocketAddr, task: JoinHandle<()>) -> Self {
        Peer { addr, task }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a peer does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// SMTP greeting, EHLO with STARTTLS, then TLS.
    SmtpStartTls,
    /// LDAP StartTLS extended operation, then TLS.
    LdapStartTls,
    /// IMAP greeting, `STARTTLS` tagged command, then TLS.
    ImapStartTls,
    /// POP3 greeting, `STLS`, then TLS.
    Pop3StartTls,
    /// Answers every connection with bytes that are not TLS.
    Garbage,
    /// Accepts and never says anything.
    Stall,
    /// Reads the ClientHello and resets the connection.
    Reset,
    /// Sends a ServerHello and a Certificate message claiming many megabytes, slowly.
    HugeCertificate,
}

/// Start a peer on `addr` (use port 0 for any port).
pub async fn start(
    addr: SocketAddr,
    behaviour: Behaviour,
    tls: Option<Arc<ServerConfig>>,
) -> Result<Peer> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tls = tls.clone();
            tokio::spawn(async move {
                let _ = serve(stream, behaviour, tls).await;
            });
        }
    });
    Ok(Peer { addr, task })
}

async fn read_line(s: &mut TcpStream) -> Result<String> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            anyhow::bail!("closed");
        }
        line.push(b[0]);
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
    }
}

async fn serve(
    mut s: TcpStream,
    behaviour: Behaviour,
    tls: Option<Arc<ServerConfig>>,
) -> Result<()> {
    match behaviour {
        Behaviour::SmtpStartTls => {
            s.write_all(b"220 mail.test ESMTP certkeeper-testkit\r\n")
                .await?;
            loop {
                let line = read_line(&mut s).await?.to_ascii_uppercase();
                if line.starts_with("EHLO") {
                    s.write_all(b"250-mail.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
                        .await?;
                } else if line.starts_with("STARTTLS") {
                    s.write_all(b"220 2.0.0 Ready to start TLS\r\n").await?;
                    break;
                } else {
                    s.write_all(b"502 5.5.2 Error: command not recognized\r\n")
                        .await?;
                }
            }
            finish_tls(s, tls).await
        }
        Behaviour::LdapStartTls => {
            let mut head = [0u8; 2];
            s.read_exact(&mut head).await?;
            let mut body = vec![0u8; usize::from(head[1])];
            s.read_exact(&mut body).await?;
            anyhow::ensure!(
                body.windows(22).any(|w| w == b"1.3.6.1.4.1.1466.20037"),
                "not StartTLS"
            );
            // ExtendedResponse, messageID 1, resultCode success.
            s.write_all(&[
                0x30, 0x0c, 0x02, 0x01, 0x01, 0x78, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00,
            ])
            .await?;
            finish_tls(s, tls).await
        }
        Behaviour::ImapStartTls => {
            s.write_all(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] certkeeper-testkit ready\r\n")
                .await?;
            loop {
                let line = read_line(&mut s).await?;
                let (tag, cmd) = line.trim_end().split_once(' ').unwrap_or(("*", ""));
                if cmd.eq_ignore_ascii_case("STARTTLS") {
                    s.write_all(format!("{tag} OK Begin TLS negotiation now\r\n").as_bytes())
                        .await?;
                    break;
                }
                s.write_all(format!("{tag} BAD unknown command\r\n").as_bytes())
                    .await?;
            }
            finish_tls(s, tls).await
        }
        Behaviour::Pop3StartTls => {
            s.write_all(b"+OK certkeeper-testkit POP3 ready\r\n")
                .await?;
            loop {
                let line = read_line(&mut s).await?;
                if line.trim_end().eq_ignore_ascii_case("STLS") {
                    s.write_all(b"+OK Begin TLS negotiation\r\n").await?;
                    break;
                }
                s.write_all(b"-ERR unknown command\r\n").await?;
            }
            finish_tls(s, tls).await
        }
        Behaviour::Garbage => {
            s.write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n").await?;
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(b"Protocol mismatch.\n").await?;
            Ok(())
        }
        Behaviour::Stall => {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            Ok(())
        }
        Behaviour::Reset => {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            s.set_zero_linger()?;
            drop(s);
            Ok(())
        }
        Behaviour::HugeCertificate => {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            // TLS 1.2 ServerHello (RSA AES128-GCM), then a Certificate handshake message
            // that announces 16 MiB and streams zeros for as long as the client reads.
            let mut hello = vec![0x02, 0, 0, 0x26, 0x03, 0x03];
            hello.extend_from_slice(&[7u8; 32]);
            hello.extend_from_slice(&[0x00, 0x00, 0x9c, 0x00]);
            hello[3] = (hello.len() - 4) as u8;
            let mut rec = vec![0x16, 0x03, 0x03, 0x00, hello.len() as u8];
            rec.extend_from_slice(&hello);
            s.write_all(&rec).await?;
            let len: u32 = 16 * 1024 * 1024;
            let mut first = vec![0x0b, (len >> 16) as u8, (len >> 8) as u8, len as u8];
            first.extend_from_slice(&[0u8; 16380]);
            let mut record = vec![
                0x16,
                0x03,
                0x03,
                (first.len() >> 8) as u8,
                first.len() as u8,
            ];
            record.extend_from_slice(&first);
            s.write_all(&record).await?;
            let zeros = [0u8; 16384];
            loop {
                let mut record = vec![0x16, 0x03, 0x03, 0x40, 0x00];
                record.extend_from_slice(&zeros);
                s.write_all(&record).await?;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }
}

async fn finish_tls(s: TcpStream, tls: Option<Arc<ServerConfig>>) -> Result<()> {
    let cfg = tls.context("a STARTTLS peer needs a TLS config")?;
    let mut tls = tokio_rustls::TlsAcceptor::from(cfg).accept(s).await?;
    let mut buf = [0u8; 64];
    let _ = tls.read(&mut buf).await;
    Ok(())
}
