//! A TLS server front end that behaves on the wire as a vulnerable OpenSSL 1.0.1
//! did, for the flaws no installable server still has: Heartbleed (answers a
//! heartbeat with as many bytes as it claims, read from "memory"), CCS injection
//! (takes a ChangeCipherSpec before the key exchange, then fails the next record's
//! MAC), and TLS compression (picks DEFLATE when offered). Without a flaw it acts as
//! the patched release: discards the heartbeat, refuses the early CCS, never
//! compresses. It speaks TLS 1.0–1.2 with static-RSA AES suites up to
//! ServerHelloDone; nothing after that is needed by a scanner.

use std::net::SocketAddr;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::peers::Peer;

/// Which flaws the peer has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flaws {
    pub heartbleed: bool,
    pub ccs_injection: bool,
    pub compression: bool,
    /// Answers an SSLv2 CLIENT-HELLO (RC4, 3DES and export RC4 with MD5), as
    /// OpenSSL 0.9.8 did when SSLv2 was on.
    pub sslv2: bool,
    /// Answers a ClientKeyExchange with bad PKCS#1 padding at once (decrypt_error) and
    /// a well-padded one only after the Finished (bad_record_mac): a Bleichenbacher
    /// oracle, as the servers found by ROBOT had. Needs the key ([`start_with_key`]).
    pub robot: bool,
    /// The suites it accepts, in its order of preference (default: static-RSA AES).
    /// Export and single-DES suites, which no installable server still offers, are
    /// picked in the ServerHello just as OpenSSL 0.9.8 did.
    pub suites: Option<&'static [u16]>,
}

/// Start a flawed peer on 127.0.0.1 presenting `cert_der`.
pub async fn start(cert_der: Vec<u8>, flaws: Flaws) -> Result<Peer> {
    start_inner(cert_der, None, flaws).await
}

/// Like [`start`], with the leaf's private key (PEM), so that a ClientKeyExchange can
/// be decrypted (for the ROBOT flaw).
pub async fn start_with_key(cert_der: Vec<u8>, key_pem: &str, flaws: Flaws) -> Result<Peer> {
    let key = openssl::rsa::Rsa::private_key_from_pem(key_pem.as_bytes())?;
    start_inner(cert_der, Some(std::sync::Arc::new(key)), flaws).await
}

type RsaKey = std::sync::Arc<openssl::rsa::Rsa<openssl::pkey::Private>>;

/// Connections a peer has seen: how many in all, and the most open at once.
#[derive(Debug, Default)]
pub struct Counts {
    pub total: std::sync::atomic::AtomicUsize,
    open: std::sync::atomic::AtomicUsize,
    pub max_open: std::sync::atomic::AtomicUsize,
}

/// Like [`start`], counting the connections (for the scanner's limits).
pub async fn start_counting(
    cert_der: Vec<u8>,
    flaws: Flaws,
) -> Result<(Peer, std::sync::Arc<Counts>)> {
    let counts = std::sync::Arc::new(Counts::default());
    let peer = start_counted(cert_der, None, flaws, Some(counts.clone())).await?;
    Ok((peer, counts))
}

async fn start_inner(cert_der: Vec<u8>, key: Option<RsaKey>, flaws: Flaws) -> Result<Peer> {
    start_counted(cert_der, key, flaws, None).await
}

async fn start_counted(
    cert_der: Vec<u8>,
    key: Option<RsaKey>,
    flaws: Flaws,
    counts: Option<std::sync::Arc<Counts>>,
) -> Result<Peer> {
    use std::sync::atomic::Ordering::SeqCst;
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let cert = cert_der.clone();
            let key = key.clone();
            let counts = counts.clone();
            tokio::spawn(async move {
                if let Some(c) = &counts {
                    c.total.fetch_add(1, SeqCst);
                    let now = c.open.fetch_add(1, SeqCst) + 1;
                    c.max_open.fetch_max(now, SeqCst);
                    // Hold each connection a little so overlaps show.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                // Counted open from accept until the flight is written (the client's
                // connection outlives that), so overlaps seen here are real ones.
                let sent = std::sync::atomic::AtomicBool::new(false);
                let on_flight = || {
                    if !sent.swap(true, SeqCst)
                        && let Some(c) = &counts
                    {
                        c.open.fetch_sub(1, SeqCst);
                    }
                };
                let _ = serve(s, &cert, key, flaws, &on_flight).await;
                on_flight();
            });
        }
    });
    Ok(Peer::new(addr, task))
}

/// An SSLv2 CLIENT-HELLO: a SERVER-HELLO with the shared cipher kinds when SSLv2 is
/// on; otherwise the connection is closed, as servers without SSLv2 do.
async fn sslv2(mut s: TcpStream, hdr: [u8; 2], cert: &[u8], on: bool) -> Result<()> {
    let len = usize::from(u16::from_be_bytes([hdr[0] & 0x7f, hdr[1]]));
    let mut b = vec![0u8; len];
    s.read_exact(&mut b).await?;
    if !on || b.len() < 9 || b[0] != 1 {
        return Ok(());
    }
    let specs_len = usize::from(u16::from_be_bytes([b[3], b[4]]));
    let offered: Vec<&[u8]> = b
        .get(9..9 + specs_len)
        .unwrap_or_default()
        .chunks(3)
        .collect();
    let mine: [[u8; 3]; 3] = [[0x01, 0x00, 0x80], [0x07, 0x00, 0xc0], [0x02, 0x00, 0x80]];
    let shared: Vec<u8> = mine
        .iter()
        .filter(|m| offered.contains(&&m[..]))
        .flatten()
        .copied()
        .collect();
    let mut body = vec![0x04, 0x00, 0x01, 0x00, 0x02];
    body.extend_from_slice(&(cert.len() as u16).to_be_bytes());
    body.extend_from_slice(&(shared.len() as u16).to_be_bytes());
    body.extend_from_slice(&16u16.to_be_bytes());
    body.extend_from_slice(cert);
    body.extend_from_slice(&shared);
    body.extend_from_slice(&[0x33; 16]);
    let mut rec = vec![0x80 | (body.len() >> 8) as u8, body.len() as u8];
    rec.extend_from_slice(&body);
    s.write_all(&rec).await?;
    Ok(())
}

async fn read_record_after(s: &mut TcpStream, first: [u8; 2]) -> Result<(u8, Vec<u8>)> {
    let mut rest = [0u8; 3];
    s.read_exact(&mut rest).await?;
    let hdr = [first[0], first[1], rest[0], rest[1], rest[2]];
    let mut body = vec![0u8; usize::from(u16::from_be_bytes([hdr[3], hdr[4]]))];
    s.read_exact(&mut body).await?;
    Ok((hdr[0], body))
}

async fn read_record(s: &mut TcpStream) -> Result<(u8, Vec<u8>)> {
    let mut hdr = [0u8; 5];
    s.read_exact(&mut hdr).await?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes([hdr[3], hdr[4]]))];
    s.read_exact(&mut body).await?;
    Ok((hdr[0], body))
}

fn record(ct: u8, version: u16, body: &[u8]) -> Vec<u8> {
    let mut r = vec![ct];
    r.extend_from_slice(&version.to_be_bytes());
    r.extend_from_slice(&(body.len() as u16).to_be_bytes());
    r.extend_from_slice(body);
    r
}

fn handshake(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    m.extend_from_slice(body);
    m
}

struct ClientHello {
    version: u16,
    suites: Vec<u16>,
    compression: Vec<u8>,
    extensions: Vec<u16>,
}

fn parse_hello(b: &[u8]) -> Option<ClientHello> {
    let mut i = 4; // handshake header
    let version = u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]);
    i += 2 + 32;
    i += 1 + usize::from(*b.get(i)?);
    let n = usize::from(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]));
    let suites = b
        .get(i + 2..i + 2 + n)?
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    i += 2 + n;
    let n = usize::from(*b.get(i)?);
    let compression = b.get(i + 1..i + 1 + n)?.to_vec();
    i += 1 + n;
    let mut extensions = Vec::new();
    if let Some(len) = b.get(i..i + 2) {
        let end = i + 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
        i += 2;
        while i + 4 <= end.min(b.len()) {
            extensions.push(u16::from_be_bytes([b[i], b[i + 1]]));
            i += 4 + usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
        }
    }
    Some(ClientHello {
        version,
        suites,
        compression,
        extensions,
    })
}

/// Whether a decrypted ClientKeyExchange block is well-formed PKCS#1 v1.5 carrying a
/// 48-byte premaster secret (the version bytes are not checked here).
fn pkcs1_ok(m: &[u8]) -> bool {
    if m.len() < 11 + 48 || m[0] != 0 || m[1] != 2 {
        return false;
    }
    match m[2..].iter().position(|b| *b == 0) {
        Some(i) => i >= 8 && m.len() - (2 + i + 1) == 48,
        None => false,
    }
}

async fn serve(
    mut s: TcpStream,
    cert: &[u8],
    key: Option<RsaKey>,
    flaws: Flaws,
    flight_sent: &(dyn Fn() + Send + Sync),
) -> Result<()> {
    let mut first = [0u8; 2];
    s.read_exact(&mut first).await?;
    if first[0] & 0x80 != 0 {
        return sslv2(s, first, cert, flaws.sslv2).await;
    }
    let (ct, body) = read_record_after(&mut s, first).await?;
    let alert = |v: u16, code: u8| record(21, v, &[2, code]);
    let Some(ch) = parse_hello(&body).filter(|_| ct == 22 && body.first() == Some(&1)) else {
        s.write_all(&alert(0x0301, 10)).await?;
        return Ok(());
    };
    // OpenSSL 1.0.1: TLS 1.0 to 1.2, no TLS 1.3; static RSA with AES.
    if ch.version < 0x0301 {
        s.write_all(&alert(0x0300, 70)).await?;
        return Ok(());
    }
    let version = ch.version.min(0x0303);
    let accepted = flaws.suites.unwrap_or(&[0x002f, 0x0035, 0x003c, 0x009c]);
    let Some(suite) = accepted.iter().copied().find(|x| ch.suites.contains(x)) else {
        s.write_all(&alert(version, 40)).await?;
        return Ok(());
    };
    let heartbeat = flaws.heartbleed && ch.extensions.contains(&0x000f);
    let compress = flaws.compression && ch.compression.contains(&1);
    let mut sh = version.to_be_bytes().to_vec();
    sh.extend_from_slice(&[0x42; 32]);
    sh.push(0);
    sh.extend_from_slice(&suite.to_be_bytes());
    sh.push(u8::from(compress));
    let mut ext = Vec::new();
    if ch.extensions.contains(&0xff01) || ch.suites.contains(&0x00ff) {
        ext.extend_from_slice(&[0xff, 0x01, 0x00, 0x01, 0x00]);
    }
    if heartbeat {
        ext.extend_from_slice(&[0x00, 0x0f, 0x00, 0x01, 0x01]);
    }
    if !ext.is_empty() {
        sh.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        sh.extend_from_slice(&ext);
    }
    let mut certs = Vec::new();
    certs.extend_from_slice(&(cert.len() as u32).to_be_bytes()[1..]);
    certs.extend_from_slice(cert);
    let mut cm = (certs.len() as u32).to_be_bytes()[1..].to_vec();
    cm.extend_from_slice(&certs);
    let mut flight = handshake(2, &sh);
    flight.extend_from_slice(&handshake(11, &cm));
    flight.extend_from_slice(&handshake(14, &[]));
    s.write_all(&record(22, version, &flight)).await?;
    flight_sent();

    let mut ccs_taken = false;
    let mut cke_seen = false;
    loop {
        let (ct, body) = read_record(&mut s).await?;
        match ct {
            24 if heartbeat && body.first() == Some(&1) && body.len() >= 3 => {
                // The bug: trust the claimed length, copy that much from "memory".
                let claimed = usize::from(u16::from_be_bytes([body[1], body[2]]));
                let mut resp = vec![2, body[1], body[2]];
                let mut memory = body[3..].to_vec();
                memory.extend(std::iter::repeat_n(
                    0xab,
                    claimed.saturating_sub(memory.len()),
                ));
                memory.truncate(claimed);
                resp.extend_from_slice(&memory);
                resp.extend_from_slice(&[0; 16]);
                s.write_all(&record(24, version, &resp)).await?;
            }
            // Patched (or heartbeat not negotiated): silently discarded.
            24 => {}
            // The ClientKeyExchange.
            22 if !cke_seen && !ccs_taken && body.first() == Some(&0x10) => {
                cke_seen = true;
                if let (true, Some(key)) = (flaws.robot, &key)
                    && body.len() > 6
                {
                    let mut m = vec![0u8; key.size() as usize];
                    let ok = key
                        .private_decrypt(&body[6..], &mut m, openssl::rsa::Padding::NONE)
                        .is_ok_and(|_| pkcs1_ok(&m));
                    if !ok {
                        s.write_all(&alert(version, 51)).await?;
                        return Ok(());
                    }
                }
            }
            // A second early CCS reaches keys made of nothing, as the next record does.
            20 if ccs_taken && !cke_seen => {
                s.write_all(&alert(version, 20)).await?;
                return Ok(());
            }
            20 if cke_seen || flaws.ccs_injection => ccs_taken = true,
            20 => {
                s.write_all(&alert(version, 10)).await?;
                return Ok(());
            }
            22 if ccs_taken => {
                // "Encrypted" with keys derived from an empty master secret: the MAC fails.
                s.write_all(&alert(version, 20)).await?;
                return Ok(());
            }
            _ => {
                s.write_all(&alert(version, 10)).await?;
                return Ok(());
            }
        }
    }
}
