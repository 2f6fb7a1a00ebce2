//! SSLv2: its own record format and hello. One CLIENT-HELLO offering every SSLv2
//! cipher kind; a server that speaks SSLv2 answers with a SERVER-HELLO listing the
//! kinds it shares (no elimination needed), anything else means no SSLv2.

use std::net::SocketAddr;
use std::time::Duration;

use certkeeper_core::findings::{AcceptedSuite, Protocol, ProtocolFacts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The SSLv2 cipher kinds (RFC draft, "SSL 2.0"), with their conventional and OpenSSL names.
pub const SSL2_CIPHERS: &[([u8; 3], &str, &str)] = &[
    ([0x01, 0x00, 0x80], "SSL_CK_RC4_128_WITH_MD5", "RC4-MD5"),
    (
        [0x02, 0x00, 0x80],
        "SSL_CK_RC4_128_EXPORT40_WITH_MD5",
        "EXP-RC4-MD5",
    ),
    (
        [0x03, 0x00, 0x80],
        "SSL_CK_RC2_128_CBC_WITH_MD5",
        "RC2-CBC-MD5",
    ),
    (
        [0x04, 0x00, 0x80],
        "SSL_CK_RC2_128_CBC_EXPORT40_WITH_MD5",
        "EXP-RC2-CBC-MD5",
    ),
    (
        [0x05, 0x00, 0x80],
        "SSL_CK_IDEA_128_CBC_WITH_MD5",
        "IDEA-CBC-MD5",
    ),
    (
        [0x06, 0x00, 0x40],
        "SSL_CK_DES_64_CBC_WITH_MD5",
        "DES-CBC-MD5",
    ),
    (
        [0x07, 0x00, 0xc0],
        "SSL_CK_DES_192_EDE3_CBC_WITH_MD5",
        "DES-CBC3-MD5",
    ),
];

/// The bytes of an SSLv2 CLIENT-HELLO offering every cipher kind.
pub fn client_hello() -> Vec<u8> {
    let mut body = vec![0x01, 0x00, 0x02];
    body.extend_from_slice(&((SSL2_CIPHERS.len() * 3) as u16).to_be_bytes());
    body.extend_from_slice(&[0, 0, 0, 16]);
    for (spec, _, _) in SSL2_CIPHERS {
        body.extend_from_slice(spec);
    }
    body.extend_from_slice(&[0x5a; 16]);
    let mut rec = vec![0x80 | (body.len() >> 8) as u8, body.len() as u8];
    rec.extend_from_slice(&body);
    rec
}

/// Parse a SERVER-HELLO: the cipher kinds it lists, or `None` when it is none.
pub fn parse_server_hello(buf: &[u8]) -> Option<Vec<[u8; 3]>> {
    if buf.len() < 2 || buf[0] & 0x80 == 0 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([buf[0] & 0x7f, buf[1]]));
    let b = buf.get(2..2 + len)?;
    // type, session-id-hit, certificate type, version, cert len, specs len, conn id len
    if b.len() < 11 || b[0] != 0x04 || b[3..5] != [0x00, 0x02] {
        return None;
    }
    let cert_len = usize::from(u16::from_be_bytes([b[5], b[6]]));
    let specs_len = usize::from(u16::from_be_bytes([b[7], b[8]]));
    let specs = b.get(11 + cert_len..11 + cert_len + specs_len)?;
    let out: Vec<[u8; 3]> = specs.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
    (!out.is_empty()).then_some(out)
}

/// Whether the endpoint speaks SSLv2, and with which cipher kinds.
pub async fn probe(addr: SocketAddr, timeout: Duration) -> Option<ProtocolFacts> {
    let run = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(&client_hello()).await.ok()?;
        let mut hdr = [0u8; 2];
        s.read_exact(&mut hdr).await.ok()?;
        if hdr[0] & 0x80 == 0 {
            // A TLS alert or record: no SSLv2 here.
            return Some(None);
        }
        let len = usize::from(u16::from_be_bytes([hdr[0] & 0x7f, hdr[1]]));
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.ok()?;
        let mut all = hdr.to_vec();
        all.extend_from_slice(&body);
        Some(parse_server_hello(&all))
    };
    let specs = tokio::time::timeout(timeout, run)
        .await
        .ok()
        .flatten()
        .flatten();
    let suites: Vec<AcceptedSuite> = specs
        .unwrap_or_default()
        .iter()
        .map(|spec| {
            let known = SSL2_CIPHERS.iter().find(|(s, _, _)| s == spec);
            AcceptedSuite {
                id: u16::from_be_bytes([spec[0], spec[2]]),
                iana: known.map_or_else(
                    || format!("SSL_CK_0x{:02X}{:02X}{:02X}", spec[0], spec[1], spec[2]),
                    |k| k.1.to_string(),
                ),
                openssl: known.map(|k| k.2.to_string()),
            }
        })
        .collect();
    Some(ProtocolFacts {
        protocol: Protocol::Ssl2,
        supported: !suites.is_empty(),
        suites,
        server_order: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_and_server_hello_round_trip() {
        let h = client_hello();
        assert_eq!(h[0] & 0x80, 0x80);
        assert_eq!(usize::from(h[1]), h.len() - 2);
        assert_eq!(&h[2..5], &[1, 0, 2]);
        // A SERVER-HELLO with a 3-byte "certificate", two specs and a 16-byte connection id.
        let mut b = vec![
            0x04, 0x00, 0x01, 0x00, 0x02, 0x00, 0x03, 0x00, 0x06, 0x00, 0x10,
        ];
        b.extend_from_slice(&[9, 9, 9]);
        b.extend_from_slice(&[0x01, 0x00, 0x80, 0x07, 0x00, 0xc0]);
        b.extend_from_slice(&[0; 16]);
        let mut rec = vec![0x80, b.len() as u8];
        rec.extend_from_slice(&b);
        assert_eq!(
            parse_server_hello(&rec),
            Some(vec![[1, 0, 0x80], [7, 0, 0xc0]])
        );
        assert_eq!(
            parse_server_hello(&[0x15, 0x03, 0x01, 0x00, 0x02, 2, 40]),
            None
        );
    }
}
