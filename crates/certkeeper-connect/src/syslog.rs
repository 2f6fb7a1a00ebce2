//! Syslog (RFC 5424) for notifications: the message format with structured data as
//! the connector contract gives it (`[certkeeper@32473 key=… serial=… ip=… days=…]`,
//! MSGID `CERTEXP`, `VULN` or `TICKET`), the severity ladder, and the transports:
//! UDP (RFC 5426, one datagram a message), TCP and TLS (RFC 5425/6587, octet
//! counting: `<len> <msg>`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

/// The documentation Private Enterprise Number (RFC 5612), until one is registered.
pub const PEN: u32 = 32473;

/// Severity 0–7 (RFC 5424 table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Emergency = 0,
    Alert = 1,
    Critical = 2,
    Error = 3,
    Warning = 4,
    Notice = 5,
    Informational = 6,
    Debug = 7,
}

/// What a notification is about: its MSGID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    CertExpiry,
    Vulnerability,
    Ticket,
}

impl Kind {
    pub fn msgid(self) -> &'static str {
        match self {
            Kind::CertExpiry => "CERTEXP",
            Kind::Vulnerability => "VULN",
            Kind::Ticket => "TICKET",
        }
    }
}

/// The contract's ladder for expiry: warning within 30 days, error within 7,
/// critical once expired; `None` further out.
pub fn expiry_severity(days_left: i64) -> Option<Severity> {
    match days_left {
        d if d < 0 => Some(Severity::Critical),
        0..=7 => Some(Severity::Error),
        8..=30 => Some(Severity::Warning),
        _ => None,
    }
}

/// Facilities by name (`local0` … `local7`, and the usual others).
pub fn facility(name: &str) -> Option<u8> {
    Some(match name {
        "kern" => 0,
        "user" => 1,
        "mail" => 2,
        "daemon" => 3,
        "auth" => 4,
        "syslog" => 5,
        "authpriv" => 10,
        n => {
            let i: u8 = n.strip_prefix("local")?.parse().ok()?;
            if i > 7 {
                return None;
            }
            16 + i
        }
    })
}

/// One message.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub facility: u8,
    pub severity: Severity,
    pub timestamp: OffsetDateTime,
    pub hostname: &'a str,
    pub app_name: &'a str,
    pub proc_id: Option<&'a str>,
    pub kind: Kind,
    /// Structured data parameters of `certkeeper@PEN`, in order.
    pub params: &'a [(&'a str, String)],
    pub msg: &'a str,
}

fn field(s: &str, max: usize) -> String {
    // PRINTUSASCII without spaces; "-" for empty.
    let v: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if v.is_empty() { "-".into() } else { v }
}

fn sd_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The RFC 5424 text of `r`: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG`.
pub fn format(r: &Record<'_>) -> String {
    let pri = u16::from(r.facility) * 8 + r.severity as u16;
    let ts = r.timestamp.to_offset(time::UtcOffset::UTC);
    let micros = ts.microsecond();
    let stamp = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{}Z",
        ts.year(),
        u8::from(ts.month()),
        ts.day(),
        ts.hour(),
        ts.minute(),
        ts.second(),
        if micros == 0 {
            String::new()
        } else {
            format!(".{micros:06}")
        }
    );
    let sd = if r.params.is_empty() {
        "-".to_string()
    } else {
        let mut sd = format!("[certkeeper@{PEN}");
        for (k, v) in r.params {
            sd.push_str(&format!(" {}=\"{}\"", field(k, 32), sd_value(v)));
        }
        sd.push(']');
        sd
    };
    format!(
        "<{pri}>1 {stamp} {} {} {} {} {sd} {}",
        field(r.hostname, 255),
        field(r.app_name, 48),
        field(r.proc_id.unwrap_or(""), 128),
        r.kind.msgid(),
        r.msg
    )
}

/// How messages travel.
#[derive(Clone)]
pub enum Transport {
    Udp,
    Tcp,
    /// TLS to `server_name`, trusting `roots`.
    Tls {
        server_name: String,
        roots: Arc<rustls::RootCertStore>,
    },
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Udp => f.write_str("udp"),
            Transport::Tcp => f.write_str("tcp"),
            Transport::Tls { server_name, .. } => write!(f, "tls({server_name})"),
        }
    }
}

/// Why a message did not go out.
#[derive(Debug, thiserror::Error)]
pub enum SyslogError {
    #[error("cannot reach the syslog server at {addr}: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("the syslog server at {0} did not take the message in time")]
    Timeout(SocketAddr),
    #[error("TLS to the syslog server failed: {0}")]
    Tls(String),
    #[error("a {len}-byte message is too long for UDP syslog (at most {max})")]
    TooLong { len: usize, max: usize },
}

/// The longest message sent over UDP (the contract: keep them under about 2 KB).
pub const MAX_UDP: usize = 2048;

/// Send `messages` to `addr`, each a whole RFC 5424 message, within `timeout`.
pub async fn send(
    addr: SocketAddr,
    transport: &Transport,
    messages: &[String],
    timeout: Duration,
) -> Result<(), SyslogError> {
    let unreachable = |e: std::io::Error| SyslogError::Unreachable {
        addr,
        reason: e.to_string(),
    };
    let work = async {
        match transport {
            Transport::Udp => {
                let bind: SocketAddr = if addr.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let sock = UdpSocket::bind(bind).await.map_err(unreachable)?;
                sock.connect(addr).await.map_err(unreachable)?;
                for m in messages {
                    if m.len() > MAX_UDP {
                        return Err(SyslogError::TooLong {
                            len: m.len(),
                            max: MAX_UDP,
                        });
                    }
                    sock.send(m.as_bytes()).await.map_err(unreachable)?;
                }
                Ok(())
            }
            Transport::Tcp => {
                let mut s = TcpStream::connect(addr).await.map_err(unreachable)?;
                write_framed(&mut s, messages).await.map_err(unreachable)?;
                s.shutdown().await.map_err(unreachable)
            }
            Transport::Tls { server_name, roots } => {
                let tcp = TcpStream::connect(addr).await.map_err(unreachable)?;
                let cfg = rustls::ClientConfig::builder()
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth();
                let name = rustls_pki_types::ServerName::try_from(server_name.clone())
                    .map_err(|e| SyslogError::Tls(e.to_string()))?;
                let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| SyslogError::Tls(e.to_string()))?;
                write_framed(&mut s, messages).await.map_err(unreachable)?;
                s.shutdown().await.map_err(unreachable)
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| SyslogError::Timeout(addr))?
}

/// RFC 6587 octet counting: `<length> <message>` per message.
async fn write_framed<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    messages: &[String],
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    for m in messages {
        buf.extend_from_slice(format!("{} ", m.len()).as_bytes());
        buf.extend_from_slice(m.as_bytes());
    }
    w.write_all(&buf).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn the_contract_example_formats_exactly() {
        let params = [("key", "cm1-9f".to_string()), ("days", "7".to_string())];
        let r = Record {
            facility: facility("local0").unwrap(),
            severity: Severity::Warning,
            timestamp: datetime!(2026-11-24 06:55:00 UTC),
            hostname: "scan01",
            app_name: "certkeeper",
            proc_id: Some("4242"),
            kind: Kind::CertExpiry,
            params: &params,
            msg: "www.example.com expires 2026-12-01",
        };
        assert_eq!(
            format(&r),
            "<132>1 2026-11-24T06:55:00Z scan01 certkeeper 4242 CERTEXP [certkeeper@32473 key=\"cm1-9f\" days=\"7\"] www.example.com expires 2026-12-01"
        );
    }

    #[test]
    fn values_are_escaped_fields_bounded_and_the_ladder_holds() {
        let params = [("cn", "a\"b]c\\d".to_string())];
        let long = "h".repeat(300);
        let r = Record {
            facility: 16,
            severity: Severity::Error,
            timestamp: datetime!(2026-11-24 06:55:00.123456789 UTC),
            hostname: &long,
            app_name: "cert keeper",
            proc_id: None,
            kind: Kind::Vulnerability,
            params: &params,
            msg: "m",
        };
        let text = format(&r);
        assert!(
            text.starts_with("<131>1 2026-11-24T06:55:00.123456Z "),
            "{text}"
        );
        assert!(
            text.contains(&format!(" {} certkeeper - VULN ", "h".repeat(255))),
            "{text}"
        );
        assert!(text.contains(r#"cn="a\"b\]c\\d""#), "{text}");
        assert_eq!(expiry_severity(31), None);
        assert_eq!(expiry_severity(30), Some(Severity::Warning));
        assert_eq!(expiry_severity(7), Some(Severity::Error));
        assert_eq!(expiry_severity(-1), Some(Severity::Critical));
        assert_eq!(facility("local7"), Some(23));
        assert_eq!(facility("local8"), None);
    }
}
