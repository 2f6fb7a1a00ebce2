//! ROBOT (Return Of Bleichenbacher's Oracle Threat): with an RSA key exchange, send
//! ClientKeyExchange messages whose PKCS#1 v1.5 padding is right or wrong in different
//! ways, each followed by ChangeCipherSpec and a Finished, and compare how the server
//! answers. A server that answers every one the same way (OpenSSL's implicit
//! rejection) has no oracle; one whose answers differ by the kind of padding error
//! (an alert for one, a closed connection or silence for another) leaks it.

use std::time::Duration;

use certkeeper_core::findings::Protocol;
use openssl::rsa::Padding;
use openssl::x509::X509;
use tokio::time::Instant;

use crate::hello::{Reply, open_flight, poke};

/// The kinds of plaintext sent, the first well-formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Correct,
    WrongFirstBytes,
    ZeroInPadding,
    NoSeparator,
    WrongVersion,
}

pub const VARIANTS: [Variant; 5] = [
    Variant::Correct,
    Variant::WrongFirstBytes,
    Variant::ZeroInPadding,
    Variant::NoSeparator,
    Variant::WrongVersion,
];

/// A PKCS#1 v1.5 block of `k` bytes carrying a premaster secret for `version`, with
/// the defect `v` asks for.
pub fn plaintext(k: usize, version: u16, v: Variant) -> Vec<u8> {
    let mut m = vec![0u8; k];
    m[0] = 0x00;
    m[1] = 0x02;
    let pms_at = k - 48;
    for (i, b) in m.iter_mut().enumerate().take(pms_at - 1).skip(2) {
        *b = 0x11 + (i % 200) as u8; // non-zero padding
    }
    m[pms_at - 1] = 0x00;
    m[pms_at..pms_at + 2].copy_from_slice(&version.to_be_bytes());
    for (i, b) in m.iter_mut().enumerate().skip(pms_at + 2) {
        *b = (i * 7) as u8 | 1;
    }
    match v {
        Variant::Correct => {}
        Variant::WrongFirstBytes => {
            m[0] = 0x41;
            m[1] = 0x17;
        }
        Variant::ZeroInPadding => m[11] = 0x00,
        Variant::NoSeparator => m[pms_at - 1] = 0x42,
        Variant::WrongVersion => m[pms_at..pms_at + 2].copy_from_slice(&[0x02, 0x02]),
    }
    m
}

/// One probe: hello with `suites` (static RSA), then the crafted ClientKeyExchange,
/// ChangeCipherSpec and Finished; what came back (an alert, another record, the
/// connection closed, or silence).
pub async fn probe_one(
    addr: std::net::SocketAddr,
    p: Protocol,
    suites: &[u16],
    sni: Option<&str>,
    v: Variant,
    timeout: Duration,
) -> Option<Reply> {
    let deadline = Instant::now() + timeout;
    let (mut stream, flight) = open_flight(addr, p, suites, sni, false, deadline).await?;
    let leaf = X509::from_der(flight.chain.first()?).ok()?;
    let rsa = leaf.public_key().ok()?.rsa().ok()?;
    let k = rsa.size() as usize;
    let m = plaintext(k, p.wire(), v);
    let mut c = vec![0u8; k];
    rsa.public_encrypt(&m, &mut c, Padding::NONE).ok()?;
    let [v1, v2] = p.wire().to_be_bytes();
    let mut cke = vec![0x10];
    cke.extend_from_slice(&((k + 2) as u32).to_be_bytes()[1..]);
    cke.extend_from_slice(&(k as u16).to_be_bytes());
    cke.extend_from_slice(&c);
    let mut out = vec![0x16, v1, v2];
    out.extend_from_slice(&(cke.len() as u16).to_be_bytes());
    out.extend_from_slice(&cke);
    out.extend_from_slice(&[0x14, v1, v2, 0x00, 0x01, 0x01]);
    // A Finished "encrypted" under keys the server derived: 64 bytes it cannot check.
    out.extend_from_slice(&[0x16, v1, v2, 0x00, 0x40]);
    out.extend_from_slice(&[0x5c; 0x40]);
    Some(poke(&mut stream, &out, deadline).await)
}

/// The verdict from the answers to [`VARIANTS`] and a repeat of the first:
/// `Some(true)` when they differ by padding error (an oracle), `Some(false)` when all
/// are the same, `None` when the server answered the same probe two ways (no verdict).
pub fn verdict(answers: &[Reply], repeat: Reply) -> Option<bool> {
    let first = *answers.first()?;
    if repeat != first {
        return None;
    }
    Some(answers.iter().any(|a| *a != first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintexts_have_the_defect_asked_for_and_nothing_else() {
        let ok = plaintext(256, 0x0303, Variant::Correct);
        assert_eq!(ok.len(), 256);
        assert_eq!(&ok[..2], &[0, 2]);
        assert!(ok[2..207].iter().all(|b| *b != 0));
        assert_eq!(ok[207], 0);
        assert_eq!(&ok[208..210], &[3, 3]);
        for v in &VARIANTS[1..] {
            let m = plaintext(256, 0x0303, *v);
            let diff = m.iter().zip(&ok).filter(|(a, b)| a != b).count();
            assert!((1..=2).contains(&diff), "{v:?}: {diff}");
        }
    }
}
