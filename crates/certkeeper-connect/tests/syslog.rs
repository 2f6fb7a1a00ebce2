//! Syslog to a real rsyslog (Debian's) on loopback: UDP and TCP (octet counting), and
//! TLS to a listener of our own that checks the framing; rsyslog writes each message
//! back field by field, so what arrives is what a collector parses.

use std::net::SocketAddr;

use std::time::{Duration, Instant};

use certkeeper_connect::syslog::{self, Kind, Record, Severity, Transport};
use certkeeper_testkit::rsyslog::{lines, rsyslog};
use time::macros::datetime;

fn message(n: u32, sev: Severity) -> String {
    let params = [
        ("key", format!("cm1-{n:04}")),
        ("serial", "0a1b2c".to_string()),
        ("ip", "192.0.2.10".to_string()),
        ("days", "7".to_string()),
        ("cn", "quote\"and]back\\slash".to_string()),
    ];
    syslog::format(&Record {
        facility: syslog::facility("local0").unwrap(),
        severity: sev,
        timestamp: datetime!(2026-11-24 06:55:00 UTC),
        hostname: "scan01",
        app_name: "certkeeper",
        proc_id: Some("4242"),
        kind: Kind::CertExpiry,
        params: &params,
        msg: &format!("www{n}.example.com expires 2026-12-01"),
    })
}

#[tokio::test]
async fn rsyslog_receives_each_field_over_udp_and_tcp() {
    let r = rsyslog();
    let udp = SocketAddr::from(([127, 0, 0, 1], r.udp));
    let tcp = SocketAddr::from(([127, 0, 0, 1], r.tcp));
    let t = Duration::from_secs(5);
    syslog::send(udp, &Transport::Udp, &[message(1, Severity::Warning)], t)
        .await
        .unwrap();
    // Several messages in one TCP connection: the octet counts keep them apart.
    let batch = [message(2, Severity::Error), message(3, Severity::Critical)];
    syslog::send(tcp, &Transport::Tcp, &batch, t).await.unwrap();
    let got = lines(&r.out, 3);
    assert_eq!(got.len(), 3, "{got:?}");
    let by_key = |k: &str| {
        got.iter()
            .find(|l| l.contains(&format!("key=\"{k}\"")))
            .cloned()
            .unwrap()
    };
    assert_eq!(
        by_key("cm1-0001"),
        "132|2026-11-24T06:55:00Z|scan01|certkeeper|4242|CERTEXP|[certkeeper@32473 key=\"cm1-0001\" serial=\"0a1b2c\" ip=\"192.0.2.10\" days=\"7\" cn=\"quote\\\"and\\]back\\\\slash\"]|www1.example.com expires 2026-12-01"
    );
    let two = by_key("cm1-0002");
    assert!(
        two.starts_with("131|") && two.ends_with("www2.example.com expires 2026-12-01"),
        "{two}"
    );
    assert!(by_key("cm1-0003").starts_with("130|"));
}

#[tokio::test]
async fn errors_are_clear_and_nothing_hangs() {
    let closed = SocketAddr::from(([127, 0, 0, 1], certkeeper_testkit::free_port().unwrap()));
    let e = syslog::send(
        closed,
        &Transport::Tcp,
        &[message(1, Severity::Notice)],
        Duration::from_secs(2),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("cannot reach the syslog server"),
        "{e}"
    );
    let big = "x".repeat(3000);
    let e = syslog::send(closed, &Transport::Udp, &[big], Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(e, syslog::SyslogError::TooLong { .. }), "{e}");
    // A listener that never reads past the handshake: TLS fails within the time limit.
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stall.local_addr().unwrap();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = stall.accept().await.unwrap();
            held.push(s);
        }
    });
    let roots = std::sync::Arc::new(rustls::RootCertStore::empty());
    let started = Instant::now();
    let e = syslog::send(
        addr,
        &Transport::Tls {
            server_name: "logs.test".into(),
            roots,
        },
        &[message(1, Severity::Notice)],
        Duration::from_millis(800),
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(e, syslog::SyslogError::Timeout(_)), "{e}");
}

#[tokio::test]
async fn tls_carries_octet_counted_messages_to_a_verified_server() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pki = certkeeper_testkit::TestPki::new().unwrap();
    let leaf = pki
        .leaf(&certkeeper_testkit::LeafSpec::new(
            "logs.test",
            certkeeper_testkit::KeyKind::EcdsaP256,
        ))
        .unwrap();
    let cfg = certkeeper_testkit::peers::server_config(&leaf.chain_path, &leaf.key_path).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (s, _) = listener.accept().await.unwrap();
        let mut tls = tokio_rustls::TlsAcceptor::from(cfg)
            .accept(s)
            .await
            .unwrap();
        let mut all = Vec::new();
        tls.read_to_end(&mut all).await.unwrap();
        String::from_utf8(all).unwrap()
    });
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(pki.root.der.clone()))
        .unwrap();
    let msgs = [message(1, Severity::Warning), message(2, Severity::Error)];
    syslog::send(
        addr,
        &Transport::Tls {
            server_name: "logs.test".into(),
            roots: std::sync::Arc::new(roots),
        },
        &msgs,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let wire = server.await.unwrap();
    // RFC 5425: "<len> <message>" for each, nothing else.
    let mut rest = wire.as_str();
    let mut seen = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_once(' ').unwrap();
        let len: usize = len.parse().unwrap();
        seen.push(tail[..len].to_string());
        rest = &tail[len..];
    }
    assert_eq!(seen, msgs);
}
