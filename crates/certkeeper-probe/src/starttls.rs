//! Plain-text upgrades to TLS: SMTP, IMAP, POP3 and LDAP.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A STARTTLS dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    Smtp,
    Imap,
    Pop3,
    Ldap,
}

/// Longest plain-text reply we read before giving up on a peer.
const MAX_REPLY: usize = 16 * 1024;

impl StartTls {
    /// The dialect a well-known plain-text port speaks.
    pub fn for_port(port: u16) -> Option<StartTls> {
        match port {
            25 | 587 => Some(StartTls::Smtp),
            143 => Some(StartTls::Imap),
            110 => Some(StartTls::Pop3),
            389 => Some(StartTls::Ldap),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            StartTls::Smtp => "starttls-smtp",
            StartTls::Imap => "starttls-imap",
            StartTls::Pop3 => "starttls-pop3",
            StartTls::Ldap => "starttls-ldap",
        }
    }

    /// Run the upgrade; on success the next bytes on `stream` are TLS.
    pub async fn upgrade(self, stream: &mut TcpStream) -> Result<(), String> {
        match self {
            StartTls::Smtp => {
                let greet = read_smtp_reply(stream).await?;
                expect_code(&greet, "220", "SMTP greeting")?;
                stream
                    .write_all(b"EHLO certkeeper.invalid\r\n")
                    .await
                    .map_err(io)?;
                let ehlo = read_smtp_reply(stream).await?;
                expect_code(&ehlo, "250", "EHLO")?;
                if !ehlo.to_ascii_uppercase().contains("STARTTLS") {
                    return Err("SMTP server does not offer STARTTLS".into());
                }
                stream.write_all(b"STARTTLS\r\n").await.map_err(io)?;
                let r = read_smtp_reply(stream).await?;
                expect_code(&r, "220", "STARTTLS")
            }
            StartTls::Imap => {
                let greet = read_line(stream).await?;
                if !greet.starts_with("* OK") {
                    return Err(format!("unexpected IMAP greeting {:?}", trim(&greet)));
                }
                stream.write_all(b"a1 STARTTLS\r\n").await.map_err(io)?;
                loop {
                    let line = read_line(stream).await?;
                    if line.starts_with("a1 ") {
                        return if line.starts_with("a1 OK") {
                            Ok(())
                        } else {
                            Err(format!("IMAP STARTTLS refused: {:?}", trim(&line)))
                        };
                    }
                }
            }
            StartTls::Pop3 => {
                let greet = read_line(stream).await?;
                if !greet.starts_with("+OK") {
                    return Err(format!("unexpected POP3 greeting {:?}", trim(&greet)));
                }
                stream.write_all(b"STLS\r\n").await.map_err(io)?;
                let r = read_line(stream).await?;
                if r.starts_with("+OK") {
                    Ok(())
                } else {
                    Err(format!("POP3 STLS refused: {:?}", trim(&r)))
                }
            }
            StartTls::Ldap => {
                stream.write_all(&LDAP_STARTTLS_REQUEST).await.map_err(io)?;
                let msg = read_ber(stream).await?;
                ldap_result_code(&msg).and_then(|code| {
                    if code == 0 {
                        Ok(())
                    } else {
                        Err(format!("LDAP StartTLS refused with result code {code}"))
                    }
                })
            }
        }
    }
}

/// LDAPMessage { messageID 1, extendedReq { requestName "1.3.6.1.4.1.1466.20037" } }.
pub(crate) const LDAP_STARTTLS_REQUEST: [u8; 31] = [
    0x30, 0x1d, 0x02, 0x01, 0x01, 0x77, 0x18, 0x80, 0x16, b'1', b'.', b'3', b'.', b'6', b'.', b'1',
    b'.', b'4', b'.', b'1', b'.', b'1', b'4', b'6', b'6', b'.', b'2', b'0', b'0', b'3', b'7',
];

fn io(e: std::io::Error) -> String {
    e.to_string()
}

fn trim(s: &str) -> &str {
    let t = s.trim_end();
    &t[..t.len().min(120)]
}

fn expect_code(reply: &str, code: &str, what: &str) -> Result<(), String> {
    if reply.starts_with(code) {
        Ok(())
    } else {
        Err(format!("{what}: unexpected reply {:?}", trim(reply)))
    }
}

/// Read one CRLF- or LF-terminated line, byte by byte (the peer must not be able to
/// push TLS bytes into a buffer we then drop).
async fn read_line(stream: &mut TcpStream) -> Result<String, String> {
    let mut buf = Vec::with_capacity(128);
    loop {
        let mut b = [0u8; 1];
        let n = stream.read(&mut b).await.map_err(io)?;
        if n == 0 {
            return Err("connection closed during STARTTLS".into());
        }
        buf.push(b[0]);
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        if buf.len() > MAX_REPLY {
            return Err("plain-text reply too long".into());
        }
    }
}

/// Read a whole (possibly multi-line) SMTP reply.
async fn read_smtp_reply(stream: &mut TcpStream) -> Result<String, String> {
    let mut all = String::new();
    loop {
        let line = read_line(stream).await?;
        all.push_str(&line);
        if all.len() > MAX_REPLY {
            return Err("SMTP reply too long".into());
        }
        // "250-..." continues, "250 ..." ends; anything without a code is not SMTP.
        let b = line.as_bytes();
        let continues = b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b'-';
        if !continues {
            return Ok(all);
        }
    }
}

/// Read one BER element (an LDAPMessage).
async fn read_ber(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.map_err(io)?;
    if head[0] != 0x30 {
        return Err("peer did not answer with an LDAP message".into());
    }
    let len = if head[1] & 0x80 == 0 {
        usize::from(head[1])
    } else {
        let n = usize::from(head[1] & 0x7f);
        if n == 0 || n > 3 {
            return Err("bad LDAP length".into());
        }
        let mut l = [0u8; 3];
        stream.read_exact(&mut l[..n]).await.map_err(io)?;
        l[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if len > MAX_REPLY {
        return Err("LDAP reply too long".into());
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(io)?;
    Ok(body)
}

/// The resultCode of an ExtendedResponse inside an LDAPMessage body.
fn ldap_result_code(body: &[u8]) -> Result<u8, String> {
    // messageID INTEGER, then [APPLICATION 24] ExtendedResponse whose first element
    // is the ENUMERATED resultCode.
    let bad = || "malformed LDAP ExtendedResponse".to_string();
    if body.len() < 3 || body[0] != 0x02 {
        return Err(bad());
    }
    let id_len = usize::from(body[1]);
    let rest = body.get(2 + id_len..).ok_or_else(bad)?;
    if rest.first() != Some(&0x78) {
        return Err(bad());
    }
    let mut i = 1;
    let l = *rest.get(i).ok_or_else(bad)?;
    i += 1 + if l & 0x80 != 0 {
        usize::from(l & 0x7f)
    } else {
        0
    };
    match rest.get(i..i + 3) {
        Some([0x0a, 0x01, code]) => Ok(*code),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldap_request_is_well_formed() {
        assert_eq!(
            usize::from(LDAP_STARTTLS_REQUEST[1]),
            LDAP_STARTTLS_REQUEST.len() - 2
        );
        assert_eq!(&LDAP_STARTTLS_REQUEST[9..], b"1.3.6.1.4.1.1466.20037");
    }

    #[test]
    fn reads_ldap_result_codes() {
        let ok = [
            0x02, 0x01, 0x01, 0x78, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00,
        ];
        assert_eq!(ldap_result_code(&ok), Ok(0));
        let refused = [
            0x02, 0x01, 0x01, 0x78, 0x07, 0x0a, 0x01, 0x34, 0x04, 0x00, 0x04, 0x00,
        ];
        assert_eq!(ldap_result_code(&refused), Ok(0x34));
        assert!(ldap_result_code(&[0x02]).is_err());
    }
}
