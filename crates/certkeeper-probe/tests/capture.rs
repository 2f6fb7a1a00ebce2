//! Capture against real TLS servers (`openssl s_server`) and in-test peers on loopback.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use certkeeper_core::{FailureKind, Observation, Outcome};
use certkeeper_probe::{ProbeConfig, Target, probe};
use certkeeper_testkit::peers::{self, Behaviour};
use certkeeper_testkit::{KeyKind, LeafSpec, OpensslServer, TestPki};

fn target(port: u16, sni: Option<&str>) -> Target {
    Target {
        host: sni.unwrap_or("127.0.0.1").to_string(),
        ip: IpAddr::from([127, 0, 0, 1]),
        port,
        sni: sni.map(str::to_string),
        named: true,
    }
}

fn cfg() -> ProbeConfig {
    ProbeConfig {
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        ..ProbeConfig::default()
    }
}

fn tls(o: &Observation) -> (&str, &str, Vec<&[u8]>) {
    match &o.outcome {
        Outcome::Tls {
            protocol,
            cipher,
            chain,
            ..
        } => (
            protocol,
            cipher,
            chain.iter().map(|c| c.0.as_slice()).collect(),
        ),
        other => panic!("expected TLS, got {other:?}"),
    }
}

fn failure(o: &Observation) -> FailureKind {
    match &o.outcome {
        Outcome::Failed { kind, .. } => *kind,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn captures_full_chains_of_every_key_type_over_tls13_and_tls12() {
    let pki = TestPki::new().unwrap();
    for (kind, extra) in [
        (KeyKind::Rsa2048, &[][..]),
        (KeyKind::EcdsaP256, &["-tls1_3"][..]),
        (KeyKind::Ed25519, &[][..]),
        (KeyKind::EcdsaP256, &["-tls1_2"][..]),
    ] {
        let leaf = pki.leaf(&LeafSpec::new("www.test", kind)).unwrap();
        let srv = OpensslServer::start(
            &leaf.cert_path,
            &leaf.key_path,
            Some(&pki.intermediate.cert_path),
            extra,
        )
        .unwrap();
        let o = probe(&target(srv.port, Some("www.test")), &cfg()).await;
        let (protocol, cipher, chain) = tls(&o);
        assert_eq!(
            chain,
            vec![leaf.der.as_slice(), pki.intermediate.der.as_slice()],
            "{kind:?}"
        );
        if extra == ["-tls1_2"] {
            assert_eq!(protocol, "TLSv1.2");
            assert!(cipher.starts_with("TLS_ECDHE_ECDSA_WITH_"), "{cipher}");
        } else {
            assert_eq!(protocol, "TLSv1.3");
            assert!(
                cipher.starts_with("TLS_AES_") || cipher.starts_with("TLS_CHACHA20"),
                "{cipher}"
            );
        }
    }
}

#[tokio::test]
async fn captures_expired_self_signed_and_wrong_name_without_validating() {
    let pki = TestPki::new().unwrap();
    let expired = pki
        .leaf(&LeafSpec::new("old.test", KeyKind::EcdsaP256).valid_days(-400, 30))
        .unwrap();
    let selfsigned = pki
        .self_signed(&LeafSpec::new("self.test", KeyKind::Rsa2048))
        .unwrap();
    let wrong = pki
        .leaf(&LeafSpec::new("other.test", KeyKind::EcdsaP256))
        .unwrap();
    for leaf in [&expired, &selfsigned, &wrong] {
        let srv = OpensslServer::start(&leaf.cert_path, &leaf.key_path, None, &[]).unwrap();
        let o = probe(&target(srv.port, Some("www.test")), &cfg()).await;
        assert_eq!(tls(&o).2[0], leaf.der.as_slice());
    }
}

#[tokio::test]
async fn falls_back_to_openssl_for_tls10_and_static_rsa() {
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("legacy.test", KeyKind::Rsa2048))
        .unwrap();
    let srv = OpensslServer::start(
        &leaf.cert_path,
        &leaf.key_path,
        Some(&pki.intermediate.cert_path),
        &["-tls1", "-cipher", "AES128-SHA:@SECLEVEL=0"],
    )
    .unwrap();
    let o = probe(&target(srv.port, Some("legacy.test")), &cfg()).await;
    let (protocol, cipher, chain) = tls(&o);
    assert_eq!(protocol, "TLSv1.0");
    assert_eq!(cipher, "TLS_RSA_WITH_AES_128_CBC_SHA");
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0], leaf.der.as_slice());

    // Without the fallback the same server is a handshake failure, not a capture.
    let no_fallback = ProbeConfig {
        legacy_fallback: false,
        ..cfg()
    };
    let o = probe(&target(srv.port, Some("legacy.test")), &no_fallback).await;
    assert!(matches!(
        failure(&o),
        FailureKind::Handshake | FailureKind::Reset
    ));
}

#[tokio::test]
async fn sends_the_server_name_as_sni_and_none_for_addresses() {
    let pki = TestPki::new().unwrap();
    let default = pki
        .leaf(&LeafSpec::new("default.test", KeyKind::EcdsaP256))
        .unwrap();
    let named = pki
        .leaf(&LeafSpec::new("named.test", KeyKind::EcdsaP256))
        .unwrap();
    let cert2 = named.cert_path.to_string_lossy().to_string();
    let key2 = named.key_path.to_string_lossy().to_string();
    let srv = OpensslServer::start(
        &default.cert_path,
        &default.key_path,
        None,
        &[
            "-servername",
            "named.test",
            "-cert2",
            &cert2,
            "-key2",
            &key2,
        ],
    )
    .unwrap();
    let by_name = probe(&target(srv.port, Some("named.test")), &cfg()).await;
    assert_eq!(tls(&by_name).2[0], named.der.as_slice());
    let by_ip = probe(&target(srv.port, None), &cfg()).await;
    assert_eq!(tls(&by_ip).2[0], default.der.as_slice());
}

#[tokio::test]
async fn speaks_starttls_on_smtp_imap_pop3_and_ldap_ports() {
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("mail.test", KeyKind::EcdsaP256))
        .unwrap();
    let tls_cfg = peers::server_config(&leaf.chain_path, &leaf.key_path).unwrap();
    // Well-known ports on a loopback address of their own (the tests run as root).
    let ip: IpAddr = [127, 0, 0, 25].into();
    let smtp = peers::start(
        SocketAddr::new(ip, 587),
        Behaviour::SmtpStartTls,
        Some(tls_cfg.clone()),
    )
    .await
    .unwrap();
    let ldap = peers::start(
        SocketAddr::new(ip, 389),
        Behaviour::LdapStartTls,
        Some(tls_cfg),
    )
    .await
    .unwrap();
    for (peer, label) in [(&smtp, "starttls-smtp"), (&ldap, "starttls-ldap")] {
        let t = Target {
            ip,
            ..target(peer.addr.port(), Some("mail.test"))
        };
        let o = probe(&t, &cfg()).await;
        match &o.outcome {
            Outcome::Tls {
                starttls, chain, ..
            } => {
                assert_eq!(starttls.as_deref(), Some(label));
                assert_eq!(chain.len(), 2);
                assert_eq!(chain[0].0, leaf.der);
            }
            other => panic!("{label}: {other:?}"),
        }
    }
    // A plain-text peer that is not what the port promises: a clear failure, no capture.
    let odd = peers::start(SocketAddr::new(ip, 25), Behaviour::Garbage, None)
        .await
        .unwrap();
    let o = probe(
        &Target {
            ip,
            ..target(odd.addr.port(), Some("mail.test"))
        },
        &cfg(),
    )
    .await;
    match &o.outcome {
        Outcome::Failed { kind, message } => {
            assert_eq!(*kind, FailureKind::NotTls);
            assert!(message.contains("starttls-smtp"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn hostile_peers_cost_at_most_the_timeout() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cases = [
        (Behaviour::Garbage, FailureKind::NotTls),
        (Behaviour::Stall, FailureKind::HandshakeTimeout),
        (Behaviour::Reset, FailureKind::Reset),
        (Behaviour::HugeCertificate, FailureKind::Handshake),
    ];
    let c = cfg();
    for (behaviour, expected) in cases {
        let peer = peers::start(any, behaviour, None).await.unwrap();
        let start = Instant::now();
        let o = probe(&target(peer.addr.port(), Some("bad.test")), &c).await;
        let took = start.elapsed();
        assert_eq!(failure(&o), expected, "{behaviour:?}: {:?}", o.outcome);
        assert!(
            took <= c.connect_timeout + c.handshake_timeout + Duration::from_millis(1500),
            "{behaviour:?} took {took:?}"
        );
    }
}

#[tokio::test]
async fn closed_port_is_refused() {
    let port = certkeeper_testkit::free_port().unwrap();
    let o = probe(&target(port, None), &cfg()).await;
    assert_eq!(failure(&o), FailureKind::Refused);
}

#[tokio::test]
async fn scans_honour_the_concurrency_cap() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // A TCP peer that holds each connection 100 ms and records the peak in flight.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n2, p2) = (now.clone(), peak.clone());
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let (n, p) = (n2.clone(), p2.clone());
            tokio::spawn(async move {
                let cur = n.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(cur, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                drop(s);
            });
        }
    });
    let cfg = ProbeConfig {
        concurrency: 3,
        legacy_fallback: false,
        ..cfg()
    };
    let targets: Vec<Target> = (0..15).map(|_| target(port, None)).collect();
    let mut results = 0;
    certkeeper_probe::scan(targets, &cfg, |_, o| {
        results += 1;
        assert!(matches!(o.outcome, Outcome::Failed { .. }));
    })
    .await;
    assert_eq!(results, 15);
    assert_eq!(
        peak.load(Ordering::SeqCst),
        3,
        "never more than the cap, and the cap is used"
    );
}
