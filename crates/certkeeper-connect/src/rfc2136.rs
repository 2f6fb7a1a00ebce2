//! dns-01 records published by DNS UPDATE (RFC 2136) signed with TSIG (RFC 8945), sent
//! over TCP to the zone's primary server. Hand-written: one message shape (add or
//! delete one TXT record), HMAC from aws-lc-rs, no DNS library.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where and how to send updates.
#[derive(Clone)]
pub struct Rfc2136Config {
    /// The primary server of the zone (`host:port`, TCP).
    pub server: SocketAddr,
    /// The zone the records are added to, e.g. `example.com.`.
    pub zone: String,
    /// The TSIG key's name, as the server knows it.
    pub key_name: String,
    pub algorithm: TsigAlgorithm,
    /// The raw TSIG secret (decoded from base64).
    pub secret: Vec<u8>,
    /// TTL of the published TXT record.
    pub ttl: u32,
    /// Longest wait for the server's answer.
    pub timeout: Duration,
}

impl std::fmt::Debug for Rfc2136Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc2136Config")
            .field("server", &self.server)
            .field("zone", &self.zone)
            .field("key_name", &self.key_name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// TSIG algorithms offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl std::str::FromStr for TsigAlgorithm {
    type Err = Rfc2136Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha256" => Ok(TsigAlgorithm::HmacSha256),
            "hmac-sha384" => Ok(TsigAlgorithm::HmacSha384),
            "hmac-sha512" => Ok(TsigAlgorithm::HmacSha512),
            other => Err(Rfc2136Error::Config(format!(
                "TSIG algorithm must be hmac-sha256, hmac-sha384 or hmac-sha512, not {other:?}"
            ))),
        }
    }
}

impl TsigAlgorithm {
    fn name(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256.",
            TsigAlgorithm::HmacSha384 => "hmac-sha384.",
            TsigAlgorithm::HmacSha512 => "hmac-sha512.",
        }
    }
    fn hmac(self) -> hmac::Algorithm {
        match self {
            TsigAlgorithm::HmacSha256 => hmac::HMAC_SHA256,
            TsigAlgorithm::HmacSha384 => hmac::HMAC_SHA384,
            TsigAlgorithm::HmacSha512 => hmac::HMAC_SHA512,
        }
    }
}

/// Read a TSIG secret file: the base64 secret alone, or a BIND key file
/// (`key "name" { algorithm …; secret "…"; };`, as `tsig-keygen` writes it).
pub fn read_secret(text: &str) -> Result<Vec<u8>, Rfc2136Error> {
    let b64 = match text.find("secret") {
        Some(i) => text[i + "secret".len()..]
            .split('"')
            .nth(1)
            .ok_or_else(|| Rfc2136Error::Config("the key file's secret is not quoted".into()))?,
        None => text.trim(),
    };
    let secret = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| Rfc2136Error::Config("the TSIG secret is not base64".into()))?;
    if secret.is_empty() {
        return Err(Rfc2136Error::Config("the TSIG secret is empty".into()));
    }
    Ok(secret)
}

/// What can go wrong. Messages carry no secret.
#[derive(Debug, thiserror::Error)]
pub enum Rfc2136Error {
    #[error("RFC 2136 configuration: {0}")]
    Config(String),
    #[error("DNS server {server}: {message}")]
    Network { server: SocketAddr, message: String },
    /// The server did not accept our TSIG signature (wrong key name, secret or algorithm,
    /// or clocks apart).
    #[error("DNS server {server} refused the TSIG signature of key {key}: {reason}")]
    Tsig {
        server: SocketAddr,
        key: String,
        reason: String,
    },
    /// The server refused the update itself (not allowed for this key, name outside the zone …).
    #[error("DNS server {server} refused the update of {name}: {rcode}")]
    Refused {
        server: SocketAddr,
        name: String,
        rcode: String,
    },
    /// The answer is malformed or its signature does not verify.
    #[error("DNS server {server} answered badly: {message}")]
    BadAnswer { server: SocketAddr, message: String },
}

const TYPE_SOA: u16 = 6;
const TYPE_TXT: u16 = 16;
const TYPE_TSIG: u16 = 250;
const CLASS_IN: u16 = 1;
const CLASS_NONE: u16 = 254;
const CLASS_ANY: u16 = 255;
const OPCODE_UPDATE: u16 = 5;
const FUDGE: u16 = 300;

fn rcode_name(rcode: u16) -> String {
    match rcode {
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        6 => "YXDOMAIN".into(),
        7 => "YXRRSET".into(),
        8 => "NXRRSET".into(),
        9 => "NOTAUTH".into(),
        10 => "NOTZONE".into(),
        16 => "BADSIG".into(),
        17 => "BADKEY".into(),
        18 => "BADTIME".into(),
        n => format!("rcode {n}"),
    }
}

/// A domain name in wire form, lower-cased (TSIG's canonical form; DNS compares
/// names without regard to case anyway).
fn wire_name(name: &str) -> Result<Vec<u8>, Rfc2136Error> {
    let bad = |why: &str| Rfc2136Error::Config(format!("{name:?} is not a domain name: {why}"));
    let trimmed = name.trim_end_matches('.');
    let mut out = Vec::with_capacity(trimmed.len() + 2);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() {
                return Err(bad("empty label"));
            }
            if label.len() > 63 {
                return Err(bad("a label is longer than 63 bytes"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad("only letters, digits, '-' and '_' are allowed"));
            }
            out.push(label.len() as u8);
            out.extend(label.to_ascii_lowercase().bytes());
        }
    }
    out.push(0);
    if out.len() > 255 {
        return Err(bad("longer than 255 bytes"));
    }
    Ok(out)
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.').to_ascii_lowercase())
}

fn rr(out: &mut Vec<u8>, name: &[u8], rtype: u16, class: u16, ttl: u32, rdata: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&class.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

/// The TSIG variables that are signed after the message (RFC 8945 §4.3.3).
fn tsig_variables(key: &[u8], alg: &[u8], time: u64, error: u16, other: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(key);
    v.extend_from_slice(&CLASS_ANY.to_be_bytes());
    v.extend_from_slice(&0u32.to_be_bytes());
    v.extend_from_slice(alg);
    v.extend_from_slice(&time.to_be_bytes()[2..]);
    v.extend_from_slice(&FUDGE.to_be_bytes());
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&(other.len() as u16).to_be_bytes());
    v.extend_from_slice(other);
    v
}

/// An UPDATE message adding (or deleting) one TXT record, signed: the wire bytes,
/// the request MAC (the answer's MAC covers it) and the message id.
fn signed_update(
    cfg: &Rfc2136Config,
    name: &str,
    value: &str,
    add: bool,
    id: u16,
    time: u64,
) -> Result<(Vec<u8>, Vec<u8>), Rfc2136Error> {
    let zone = wire_name(&cfg.zone)?;
    let owner = wire_name(name)?;
    let key = wire_name(&cfg.key_name)?;
    let alg = wire_name(cfg.algorithm.name())?;
    let (zone_fq, name_fq) = (fqdn(&cfg.zone), fqdn(name));
    if !(name_fq == zone_fq || name_fq.ends_with(&format!(".{zone_fq}"))) {
        return Err(Rfc2136Error::Config(format!(
            "{name_fq} is not inside the zone {zone_fq}"
        )));
    }
    if value.len() > 255 {
        return Err(Rfc2136Error::Config(
            "TXT value longer than 255 bytes".into(),
        ));
    }
    let mut txt = vec![value.len() as u8];
    txt.extend_from_slice(value.as_bytes());

    let mut msg = Vec::with_capacity(256);
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&(OPCODE_UPDATE << 11).to_be_bytes());
    for count in [1u16, 0, 1, 0] {
        msg.extend_from_slice(&count.to_be_bytes());
    }
    msg.extend_from_slice(&zone);
    msg.extend_from_slice(&TYPE_SOA.to_be_bytes());
    msg.extend_from_slice(&CLASS_IN.to_be_bytes());
    if add {
        rr(&mut msg, &owner, TYPE_TXT, CLASS_IN, cfg.ttl, &txt);
    } else {
        // Class NONE with the rdata: delete exactly this record (RFC 2136 §2.5.4).
        rr(&mut msg, &owner, TYPE_TXT, CLASS_NONE, 0, &txt);
    }

    let hkey = hmac::Key::new(cfg.algorithm.hmac(), &cfg.secret);
    let mut signed = msg.clone();
    signed.extend(tsig_variables(&key, &alg, time, 0, &[]));
    let mac = hmac::sign(&hkey, &signed).as_ref().to_vec();

    let mut rdata = alg.clone();
    rdata.extend_from_slice(&time.to_be_bytes()[2..]);
    rdata.extend_from_slice(&FUDGE.to_be_bytes());
    rdata.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    rdata.extend_from_slice(&mac);
    rdata.extend_from_slice(&id.to_be_bytes());
    rdata.extend_from_slice(&0u16.to_be_bytes());
    rdata.extend_from_slice(&0u16.to_be_bytes());
    rr(&mut msg, &key, TYPE_TSIG, CLASS_ANY, 0, &rdata);
    msg[10..12].copy_from_slice(&1u16.to_be_bytes());
    Ok((msg, mac))
}

/// Bytes of a message being read; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    /// Skip a (possibly compressed) name.
    fn skip_name(&mut self) -> Option<()> {
        for _ in 0..128 {
            let len = *self.take(1)?.first()?;
            match len {
                0 => return Some(()),
                l if l & 0xc0 == 0xc0 => {
                    self.take(1)?;
                    return Some(());
                }
                l if l < 64 => {
                    self.take(usize::from(l))?;
                }
                _ => return None,
            }
        }
        None
    }
}

/// The TSIG record of an answer: where it starts, and its fields.
struct AnswerTsig {
    start: usize,
    alg: Vec<u8>,
    time: u64,
    mac: Vec<u8>,
    error: u16,
    other: Vec<u8>,
}

/// The header's rcode and the TSIG record, if the answer is signed.
fn parse_answer(buf: &[u8]) -> Option<(u16, u16, Option<AnswerTsig>)> {
    let mut r = Reader { buf, pos: 0 };
    r.u16()?;
    let flags = r.u16()?;
    let counts = [r.u16()?, r.u16()?, r.u16()?, r.u16()?];
    for _ in 0..counts[0] {
        r.skip_name()?;
        r.take(4)?;
    }
    let records = usize::from(counts[1]) + usize::from(counts[2]) + usize::from(counts[3]);
    let mut tsig = None;
    for i in 0..records {
        let start = r.pos;
        r.skip_name()?;
        let rtype = r.u16()?;
        r.take(6)?;
        let len = usize::from(r.u16()?);
        let rdata = r.take(len)?;
        if rtype == TYPE_TSIG && i + 1 == records {
            let mut d = Reader { buf: rdata, pos: 0 };
            d.skip_name()?;
            let alg = rdata[..d.pos].to_vec();
            let t = d.take(6)?;
            let time = t.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            d.u16()?;
            let mac_len = usize::from(d.u16()?);
            let mac = d.take(mac_len)?.to_vec();
            d.u16()?;
            let error = d.u16()?;
            let other_len = usize::from(d.u16()?);
            let other = d.take(other_len)?.to_vec();
            tsig = Some(AnswerTsig {
                start,
                alg,
                time,
                mac,
                error,
                other,
            });
        }
    }
    // The extended rcode of TSIG errors is in the TSIG record; the header has 4 bits.
    Some((flags & 0x000f, (flags >> 11) & 0xf, tsig))
}

async fn exchange(server: SocketAddr, msg: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let run = async {
        let mut tcp = tokio::net::TcpStream::connect(server).await?;
        let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(msg);
        tcp.write_all(&framed).await?;
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).await?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tcp.read_exact(&mut answer).await?;
        Ok(answer)
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))?
}

/// Publish (`add`) or remove one TXT record.
async fn update(
    cfg: &Rfc2136Config,
    name: &str,
    value: &str,
    add: bool,
) -> Result<(), Rfc2136Error> {
    let time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut id = [0u8; 2];
    aws_lc_rs::rand::fill(&mut id)
        .map_err(|_| Rfc2136Error::Config("no randomness for the message id".into()))?;
    let id = u16::from_be_bytes(id);
    let (msg, request_mac) = signed_update(cfg, name, value, add, id, time)?;
    let server = cfg.server;
    let answer = exchange(server, &msg, cfg.timeout)
        .await
        .map_err(|e| Rfc2136Error::Network {
            server,
            message: e.to_string(),
        })?;
    let bad = |message: &str| Rfc2136Error::BadAnswer {
        server,
        message: message.to_string(),
    };
    if answer.len() < 12 || u16::from_be_bytes([answer[0], answer[1]]) != id {
        return Err(bad("not an answer to our update"));
    }
    let (rcode, opcode, tsig) = parse_answer(&answer).ok_or_else(|| bad("malformed message"))?;
    if opcode != OPCODE_UPDATE {
        return Err(bad("not an UPDATE answer"));
    }
    if let Some(t) = &tsig
        && t.error != 0
    {
        return Err(Rfc2136Error::Tsig {
            server,
            key: fqdn(&cfg.key_name),
            reason: format!("{} ({})", rcode_name(rcode), rcode_name(t.error)),
        });
    }
    // An answer to a signed request must be signed with the same key (RFC 8945 §5.3);
    // an unsigned NOTAUTH is a server that could not check our signature.
    let t = match tsig {
        Some(t) => t,
        None if rcode == 9 => {
            return Err(Rfc2136Error::Tsig {
                server,
                key: fqdn(&cfg.key_name),
                reason: "NOTAUTH, unsigned".into(),
            });
        }
        None => return Err(bad("the answer is not signed")),
    };
    let key = wire_name(&cfg.key_name)?;
    let mut signed = (request_mac.len() as u16).to_be_bytes().to_vec();
    signed.extend_from_slice(&request_mac);
    let mut body = answer[..t.start].to_vec();
    let ar = u16::from_be_bytes([body[10], body[11]]).saturating_sub(1);
    body[10..12].copy_from_slice(&ar.to_be_bytes());
    signed.extend_from_slice(&body);
    signed.extend(tsig_variables(&key, &t.alg, t.time, t.error, &t.other));
    let hkey = hmac::Key::new(cfg.algorithm.hmac(), &cfg.secret);
    hmac::verify(&hkey, &signed, &t.mac)
        .map_err(|_| bad("the answer's TSIG signature does not verify"))?;
    if rcode != 0 {
        let mut rcode = rcode_name(rcode);
        if rcode == "NOTAUTH" || rcode == "NOTZONE" {
            rcode.push_str(&format!(
                " (the server is not the primary of the zone {})",
                fqdn(&cfg.zone)
            ));
        }
        return Err(Rfc2136Error::Refused {
            server,
            name: fqdn(name),
            rcode,
        });
    }
    Ok(())
}

/// Add the TXT record `name` = `value`.
pub async fn publish(cfg: &Rfc2136Config, name: &str, value: &str) -> Result<(), Rfc2136Error> {
    update(cfg, name, value, true).await
}

/// Remove exactly the TXT record `name` = `value` (others of that name stay).
pub async fn remove(cfg: &Rfc2136Config, name: &str, value: &str) -> Result<(), Rfc2136Error> {
    update(cfg, name, value, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_secrets_are_checked() {
        assert_eq!(
            wire_name("A.b.").unwrap(),
            vec![1, b'a', 1, b'b', 0],
            "lower-cased wire form"
        );
        assert!(wire_name("a..b").is_err());
        assert!(wire_name(&format!("{}.b", "x".repeat(64))).is_err());
        assert!(wire_name("a b.c").is_err());
        assert_eq!(read_secret("c2VjcmV0\n").unwrap(), b"secret");
        assert_eq!(
            read_secret("key \"k\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0\";\n};\n")
                .unwrap(),
            b"secret"
        );
        assert!(read_secret("not base64!").is_err());
        assert!("hmac-md5".parse::<TsigAlgorithm>().is_err());
        assert_eq!(
            "HMAC-SHA512.".parse::<TsigAlgorithm>().unwrap(),
            TsigAlgorithm::HmacSha512
        );
    }

    #[test]
    fn a_name_outside_the_zone_is_refused_before_sending() {
        let cfg = Rfc2136Config {
            server: "127.0.0.1:53".parse().unwrap(),
            zone: "example.com".into(),
            key_name: "k".into(),
            algorithm: TsigAlgorithm::HmacSha256,
            secret: b"secret".to_vec(),
            ttl: 60,
            timeout: Duration::from_secs(1),
        };
        let e = signed_update(&cfg, "_acme-challenge.example.org.", "v", true, 1, 0).unwrap_err();
        assert!(e.to_string().contains("not inside the zone"), "{e}");
        // "notexample.com" is not inside "example.com" either.
        assert!(signed_update(&cfg, "_acme-challenge.notexample.com", "v", true, 1, 0).is_err());
        assert!(signed_update(&cfg, "_acme-challenge.www.example.com", "v", true, 1, 0).is_ok());
        assert!(format!("{cfg:?}").contains("redacted"));
    }
}
