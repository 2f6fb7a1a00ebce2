//! Raw TLS on the wire for vulnerability scans: ClientHellos written byte by byte
//! (so any suite, version, compression method or extension can be offered) and a
//! reader of the server's first flight that stops at ServerHelloDone, an alert, or
//! the first encrypted record. Records are parsed with `tls-parser`.

use std::time::Duration;

use certkeeper_core::findings::Protocol;
use tls_parser::{
    TlsCipherSuite, TlsExtension, TlsMessage, TlsMessageHandshake, parse_dh_params,
    parse_tls_extensions, parse_tls_message_handshake,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// TLS_FALLBACK_SCSV (RFC 7507).
pub const FALLBACK_SCSV: u16 = 0x5600;
/// TLS_EMPTY_RENEGOTIATION_INFO_SCSV (RFC 5746).
pub const RENEGOTIATION_SCSV: u16 = 0x00ff;

/// The largest first flight we read (certificate chains included).
const MAX_FLIGHT: usize = 256 * 1024;

/// SHA-256("HelloRetryRequest"): the random of a TLS 1.3 HelloRetryRequest.
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// What to put in one ClientHello.
#[derive(Debug, Clone)]
pub struct Hello<'a> {
    pub protocol: Protocol,
    pub suites: &'a [u16],
    pub sni: Option<&'a str>,
    /// Offer DEFLATE before the mandatory NULL compression method.
    pub offer_compression: bool,
    /// Offer the heartbeat extension (peer_allowed_to_send).
    pub heartbeat: bool,
    /// Ask for a stapled OCSP response (status_request, RFC 6066; TLS ≤ 1.2).
    pub status_request: bool,
}

/// Every suite id `tls-parser` knows, for one protocol: TLS 1.3 suites for TLS 1.3,
/// all others (signalling values excluded) for SSLv3–TLS 1.2.
pub fn candidate_suites(protocol: Protocol) -> Vec<u16> {
    let mut ids: Vec<u16> = (0..=u16::MAX)
        .filter_map(TlsCipherSuite::from_id)
        .filter(|s| {
            let tls13 = s.kx == tls_parser::TlsCipherKx::Tls13;
            let scsv = s.name.ends_with("_SCSV");
            !scsv && (tls13 == (protocol == Protocol::Tls13))
        })
        .map(|s| s.id.0)
        .collect();
    ids.sort_unstable();
    ids
}

/// The IANA name of a suite id, or its hex form.
pub fn suite_name(id: u16) -> String {
    TlsCipherSuite::from_id(id)
        .map(|s| s.name.to_string())
        .unwrap_or_else(|| format!("0x{id:04X}"))
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u24(out: &mut Vec<u8>, v: usize) {
    out.extend_from_slice(&(v as u32).to_be_bytes()[1..]);
}

fn extension(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    put_u16(out, kind);
    put_u16(out, body.len() as u16);
    out.extend_from_slice(body);
}

fn vec16(items: &[u16]) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + items.len() * 2);
    put_u16(&mut v, (items.len() * 2) as u16);
    for i in items {
        put_u16(&mut v, *i);
    }
    v
}

/// Groups offered: the modern curves first, then every older named curve, so a
/// server limited to an odd curve still answers.
const GROUPS: &[u16] = &[
    29, 23, 24, 25, 30, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 26, 27, 28,
];
/// Signature schemes, weak ones included (we judge, we do not refuse).
const SIG_ALGS: &[u16] = &[
    0x0403, 0x0503, 0x0603, 0x0804, 0x0805, 0x0806, 0x0807, 0x0808, 0x0401, 0x0501, 0x0601, 0x0303,
    0x0203, 0x0301, 0x0201, 0x0402, 0x0302, 0x0202, 0x0101,
];

/// The bytes of one ClientHello record.
pub fn client_hello(h: &Hello<'_>) -> Vec<u8> {
    let tls13 = h.protocol == Protocol::Tls13;
    let version = if tls13 { 0x0303 } else { h.protocol.wire() };
    let mut body = Vec::with_capacity(1024);
    put_u16(&mut body, version);
    let random: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(151).wrapping_add(7));
    body.extend_from_slice(&random);
    if tls13 {
        body.push(32);
        body.extend_from_slice(&[0x5a; 32]);
    } else {
        body.push(0);
    }
    if h.protocol == Protocol::Ssl3 {
        // No extensions in an SSLv3 hello: ask for RFC 5746 through the SCSV instead.
        let mut with_scsv = h.suites.to_vec();
        with_scsv.push(RENEGOTIATION_SCSV);
        body.extend_from_slice(&vec16(&with_scsv));
    } else {
        body.extend_from_slice(&vec16(h.suites));
    }
    if h.offer_compression {
        body.extend_from_slice(&[2, 1, 0]);
    } else {
        body.extend_from_slice(&[1, 0]);
    }
    let mut ext = Vec::new();
    if h.protocol != Protocol::Ssl3 {
        if let Some(name) = h.sni {
            let mut sn = Vec::new();
            put_u16(&mut sn, (name.len() + 3) as u16);
            sn.push(0);
            put_u16(&mut sn, name.len() as u16);
            sn.extend_from_slice(name.as_bytes());
            extension(&mut ext, 0x0000, &sn);
        }
        extension(&mut ext, 0x000a, &vec16(GROUPS));
        extension(&mut ext, 0x000b, &[3, 0, 1, 2]);
        if h.protocol >= Protocol::Tls12 {
            extension(&mut ext, 0x000d, &vec16(SIG_ALGS));
        }
        if h.heartbeat {
            extension(&mut ext, 0x000f, &[1]);
        }
        if h.status_request && !tls13 {
            // status_type ocsp, no responder ids, no request extensions.
            extension(&mut ext, 0x0005, &[1, 0, 0, 0, 0]);
        }
        if tls13 {
            extension(&mut ext, 0x002b, &[2, 0x03, 0x04]);
            // An empty key_share: the server answers with a HelloRetryRequest that
            // already names the suite it picked, and no key exchange is done.
            extension(&mut ext, 0x0033, &[0, 0]);
            extension(&mut ext, 0x002d, &[1, 1]);
        } else {
            extension(&mut ext, 0xff01, &[0]);
        }
    }
    if !ext.is_empty() {
        put_u16(&mut body, ext.len() as u16);
        body.extend_from_slice(&ext);
    }
    let mut hs = Vec::with_capacity(body.len() + 4);
    hs.push(1);
    put_u24(&mut hs, body.len());
    hs.extend_from_slice(&body);
    let mut rec = Vec::with_capacity(hs.len() + 5);
    rec.push(0x16);
    // Record version: SSLv3 for an SSLv3 hello, TLS 1.0 otherwise (what every
    // client sends, and what intolerant servers accept).
    put_u16(
        &mut rec,
        if h.protocol == Protocol::Ssl3 {
            0x0300
        } else {
            0x0301
        },
    );
    put_u16(&mut rec, hs.len() as u16);
    rec.extend_from_slice(&hs);
    rec
}

/// The server's answer to one ClientHello, as far as it was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFlight {
    /// Negotiated version (from supported_versions for TLS 1.3).
    pub version: Option<u16>,
    pub suite: Option<u16>,
    pub compression: Option<u8>,
    pub hello_retry: bool,
    pub renegotiation_info: bool,
    pub heartbeat: bool,
    /// The certificate chain from the plaintext Certificate message (TLS ≤ 1.2).
    pub chain: Vec<Vec<u8>>,
    /// The DER OCSP response of a CertificateStatus message (a stapled response).
    pub ocsp_staple: Option<Vec<u8>>,
    /// Prime size of the DHE parameters in the ServerKeyExchange.
    pub dh_bits: Option<u32>,
    /// A fatal alert the server sent instead (its description code).
    pub alert: Option<u8>,
    pub done: bool,
}

/// Why a hello got no usable answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("timed out")]
    Timeout,
    #[error("connection closed before the server answered")]
    Closed,
    #[error("the peer does not speak TLS: {0}")]
    Garbage(String),
}

impl ServerFlight {
    /// Whether the server accepted the hello (a ServerHello or a HelloRetryRequest).
    pub fn accepted(&self) -> bool {
        self.suite.is_some()
    }
}

/// Read records until ServerHelloDone, an alert, an encrypted record (TLS 1.3 after
/// the ServerHello) or `deadline`.
pub async fn read_flight(
    stream: &mut TcpStream,
    deadline: Instant,
) -> Result<ServerFlight, WireError> {
    let mut flight = ServerFlight::default();
    let mut handshake: Vec<u8> = Vec::new();
    let mut total = 0usize;
    loop {
        let mut hdr = [0u8; 5];
        match read_exact_by(stream, &mut hdr, deadline).await {
            Ok(()) => {}
            Err(WireError::Closed) if flight.accepted() => return Ok(flight),
            Err(e) => return Err(e),
        }
        let (ctype, major, len) = (
            hdr[0],
            hdr[1],
            u16::from_be_bytes([hdr[3], hdr[4]]) as usize,
        );
        if !(20..=24).contains(&ctype) || major != 3 || len > 18432 {
            if hdr[0] & 0x80 != 0 && flight.suite.is_none() {
                return Err(WireError::Garbage("an SSLv2 record".into()));
            }
            return Err(WireError::Garbage(format!("record header {:02x?}", hdr)));
        }
        total += len + 5;
        if total > MAX_FLIGHT {
            return Err(WireError::Garbage(
                "first flight larger than 256 KiB".into(),
            ));
        }
        let mut payload = vec![0u8; len];
        read_exact_by(stream, &mut payload, deadline).await?;
        match ctype {
            // A warning (unrecognized_name before a ServerHello, RFC 6066) is not the
            // end of the flight; a fatal alert or close_notify is.
            21 if payload.len() >= 2 && payload[0] == 1 && payload[1] != 0 => {}
            21 => {
                if payload.len() >= 2 {
                    flight.alert = Some(payload[1]);
                }
                return Ok(flight);
            }
            22 => {
                handshake.extend_from_slice(&payload);
                while handshake.len() >= 4 {
                    let mlen =
                        u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]]) as usize;
                    if handshake.len() < 4 + mlen {
                        break;
                    }
                    let msg: Vec<u8> = handshake.drain(..4 + mlen).collect();
                    absorb(&mut flight, &msg)?;
                    if flight.done {
                        return Ok(flight);
                    }
                }
            }
            // ChangeCipherSpec (TLS 1.3 middlebox compatibility) or application data:
            // everything after this is encrypted.
            20 | 23 if flight.accepted() => return Ok(flight),
            _ => {
                return Err(WireError::Garbage(format!(
                    "unexpected record type {ctype} before the ServerHello"
                )));
            }
        }
    }
}

fn absorb(flight: &mut ServerFlight, msg: &[u8]) -> Result<(), WireError> {
    let parsed = parse_tls_message_handshake(msg)
        .map_err(|e| WireError::Garbage(format!("undecodable handshake message: {e:?}")))?
        .1;
    let TlsMessage::Handshake(hs) = parsed else {
        return Ok(());
    };
    match hs {
        TlsMessageHandshake::ServerHello(sh) => {
            flight.version = Some(sh.version.0);
            flight.suite = Some(sh.cipher.0);
            flight.compression = Some(sh.compression.0);
            flight.hello_retry = sh.random == HRR_RANDOM;
            if let Some(ext) = sh.ext
                && let Ok((_, exts)) = parse_tls_extensions(ext)
            {
                for e in exts {
                    match e {
                        TlsExtension::RenegotiationInfo(_) => flight.renegotiation_info = true,
                        TlsExtension::Heartbeat(_) => flight.heartbeat = true,
                        TlsExtension::SupportedVersions(v) => {
                            if let Some(v) = v.first() {
                                flight.version = Some(v.0);
                            }
                        }
                        _ => {}
                    }
                }
            }
            if flight.version == Some(0x0304) {
                // TLS 1.3: the rest is encrypted (or a retry is asked for).
                flight.done = true;
            }
        }
        TlsMessageHandshake::Certificate(c) => {
            flight.chain = c.cert_chain.iter().map(|c| c.data.to_vec()).collect();
        }
        // status_type 1: ocsp (RFC 6066).
        TlsMessageHandshake::CertificateStatus(cs) if cs.status_type == 1 => {
            flight.ocsp_staple = Some(cs.blob.to_vec());
        }
        TlsMessageHandshake::ServerKeyExchange(ske) => {
            let dhe = flight
                .suite
                .and_then(TlsCipherSuite::from_id)
                .is_some_and(|s| {
                    s.kx == tls_parser::TlsCipherKx::Dhe
                        || (s.kx == tls_parser::TlsCipherKx::Dh
                            && s.au == tls_parser::TlsCipherAu::Null)
                });
            if dhe && let Ok((_, p)) = parse_dh_params(ske.parameters) {
                let p = p.dh_p;
                let first = p.iter().position(|b| *b != 0).unwrap_or(p.len());
                let p = &p[first..];
                let bits = if p.is_empty() {
                    0
                } else {
                    (p.len() as u32 - 1) * 8 + (8 - p[0].leading_zeros())
                };
                flight.dh_bits = Some(bits);
            }
        }
        TlsMessageHandshake::ServerDone(_) => flight.done = true,
        _ => {}
    }
    Ok(())
}

async fn read_exact_by(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), WireError> {
    match tokio::time::timeout_at(deadline, stream.read_exact(buf)).await {
        Err(_) => Err(WireError::Timeout),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(WireError::Closed),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Err(WireError::Closed),
        Ok(Err(e)) => Err(WireError::Connect(e.to_string())),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Connect, send `hello`, read the answer; all within `timeout`.
pub async fn exchange(
    addr: std::net::SocketAddr,
    hello: &Hello<'_>,
    timeout: Duration,
) -> Result<ServerFlight, WireError> {
    open(addr, hello, Instant::now() + timeout)
        .await
        .map(|(_, f)| f)
}

/// Like [`exchange`], keeping the connection for what the caller sends next.
pub async fn open(
    addr: std::net::SocketAddr,
    hello: &Hello<'_>,
    deadline: Instant,
) -> Result<(TcpStream, ServerFlight), WireError> {
    let mut stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Err(_) => return Err(WireError::Timeout),
        Ok(Err(e)) => return Err(WireError::Connect(e.to_string())),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let bytes = client_hello(hello);
    match tokio::time::timeout_at(deadline, stream.write_all(&bytes)).await {
        Err(_) => return Err(WireError::Timeout),
        Ok(Err(_)) => return Err(WireError::Closed),
        Ok(Ok(())) => {}
    }
    let flight = read_flight(&mut stream, deadline).await?;
    Ok((stream, flight))
}

/// A hello offering `suites` under `p` (no compression), kept open once the server's
/// first flight has come in full and negotiated `p`: for the checks that send more.
pub async fn open_flight(
    addr: std::net::SocketAddr,
    p: Protocol,
    suites: &[u16],
    sni: Option<&str>,
    heartbeat: bool,
    deadline: Instant,
) -> Option<(TcpStream, ServerFlight)> {
    let h = Hello {
        protocol: p,
        suites,
        sni,
        offer_compression: false,
        heartbeat,
        status_request: false,
    };
    let (stream, flight) = open(addr, &h, deadline).await.ok()?;
    (flight.done && flight.accepted() && flight.version == Some(p.wire()))
        .then_some((stream, flight))
}

/// What came back after a probe record: the next record's header, an alert, or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reply {
    /// A record of this content type and length.
    Record {
        content_type: u8,
        len: u16,
    },
    /// A fatal alert with this description.
    Alert(u8),
    Closed,
    Silence,
}

/// Send `record` and read the header of whatever comes back (an alert in full)
/// before `deadline`.
pub async fn poke(stream: &mut TcpStream, record: &[u8], deadline: Instant) -> Reply {
    if tokio::time::timeout_at(deadline, stream.write_all(record))
        .await
        .map_or(true, |r| r.is_err())
    {
        return Reply::Closed;
    }
    let mut hdr = [0u8; 5];
    match read_exact_by(stream, &mut hdr, deadline).await {
        Ok(()) => {}
        Err(WireError::Timeout) => return Reply::Silence,
        Err(_) => return Reply::Closed,
    }
    let len = u16::from_be_bytes([hdr[3], hdr[4]]);
    if hdr[0] == 21 && len >= 2 {
        let mut a = [0u8; 2];
        return match read_exact_by(stream, &mut a, deadline).await {
            Ok(()) => Reply::Alert(a[1]),
            Err(_) => Reply::Closed,
        };
    }
    Reply::Record {
        content_type: hdr[0],
        len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_parse_back_with_what_was_offered() {
        let suites = candidate_suites(Protocol::Tls12);
        assert!(suites.len() > 250, "{}", suites.len());
        assert!(suites.contains(&0x002f) && suites.contains(&0xc02f));
        assert!(!suites.contains(&FALLBACK_SCSV) && !suites.contains(&0x1301));
        // The five of RFC 8446 and the later ones (SM4, AEGIS, integrity-only).
        let tls13 = candidate_suites(Protocol::Tls13);
        assert!(
            (0x1301..=0x1305).all(|id| tls13.contains(&id)),
            "{tls13:x?}"
        );
        assert!(tls13.len() < 16 && !tls13.contains(&0xc02f));
        let rec = client_hello(&Hello {
            protocol: Protocol::Tls11,
            suites: &suites,
            sni: Some("www.example.test"),
            offer_compression: true,
            heartbeat: true,
            status_request: true,
        });
        let (rest, plain) = tls_parser::parse_tls_plaintext(&rec).unwrap();
        assert!(rest.is_empty());
        let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)) = &plain.msg[0] else {
            panic!("not a ClientHello")
        };
        assert_eq!(ch.version.0, 0x0302);
        assert_eq!(ch.ciphers.len(), suites.len());
        assert_eq!(ch.comp.iter().map(|c| c.0).collect::<Vec<_>>(), vec![1, 0]);
        let (_, exts) = parse_tls_extensions(ch.ext.unwrap()).unwrap();
        assert!(
            exts.iter()
                .any(|e| matches!(e, TlsExtension::SNI(v) if v[0].1 == b"www.example.test"))
        );
        assert!(exts.iter().any(|e| matches!(e, TlsExtension::Heartbeat(1))));
        assert!(exts.iter().any(|e| matches!(
            e,
            TlsExtension::StatusRequest(Some((tls_parser::CertificateStatusType(1), _)))
        )));
        assert!(
            exts.iter()
                .any(|e| matches!(e, TlsExtension::RenegotiationInfo(_)))
        );
    }
}
