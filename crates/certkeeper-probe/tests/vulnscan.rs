//! Vulnerability scans against real TLS servers on loopback (`openssl s_server`), each
//! with the findings it must produce and none it must not. Accepted suites are
//! checked against what `openssl s_client` itself can negotiate with the server.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use certkeeper_core::findings::{Protocol, TlsFacts, tls_findings};
use certkeeper_probe::{Target, VulnConfig, VulnError, VulnScan, vulnscan};
use certkeeper_testkit::peers::{self, Behaviour};
use certkeeper_testkit::{IsolatedServer, KeyKind, LeafSpec, OpensslServer, TestPki};

fn target(port: u16, sni: Option<&str>) -> Target {
    Target {
        host: sni.unwrap_or("127.0.0.1").to_string(),
        ip: IpAddr::from([127, 0, 0, 1]),
        port,
        sni: sni.map(str::to_string),
        named: true,
    }
}

fn cfg() -> VulnConfig {
    VulnConfig {
        timeout: Duration::from_secs(3),
        ..VulnConfig::default()
    }
}

async fn scan(port: u16) -> VulnScan {
    vulnscan(&target(port, Some("www.test")), &cfg())
        .await
        .expect("scan")
}

fn kinds(f: &TlsFacts) -> Vec<&'static str> {
    let mut k: Vec<&str> = tls_findings(f).iter().map(|f| f.kind.as_str()).collect();
    k.sort();
    k
}

fn supported(f: &TlsFacts) -> Vec<Protocol> {
    f.protocols
        .iter()
        .filter(|p| p.supported)
        .map(|p| p.protocol)
        .collect()
}

fn openssl_names(f: &TlsFacts, p: Protocol) -> Vec<String> {
    f.protocol(p)
        .unwrap()
        .suites
        .iter()
        .map(|s| s.openssl.clone().unwrap_or_else(|| s.iana.clone()))
        .collect()
}

/// The suites `openssl s_client` negotiates with the server under `flag`
/// (`-tls1`, `-tls1_2`, …), trying each suite OpenSSL knows one at a time.
fn openssl_truth(port: u16, flag: &str) -> BTreeSet<String> {
    let list = Command::new("openssl")
        .args(["ciphers", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"])
        .output()
        .unwrap();
    let mut ok = BTreeSet::new();
    for name in String::from_utf8(list.stdout).unwrap().trim().split(':') {
        if name.starts_with("TLS_") {
            continue; // TLS 1.3 suites are not chosen with -cipher
        }
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), flag])
            .args(["-cipher", &format!("{name}:@SECLEVEL=0"), "-noservername"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains(&format!("Cipher is {name}")) {
            ok.insert(name.to_string());
        }
    }
    ok
}

#[tokio::test]
async fn a_modern_server_has_no_findings_and_few_connections() {
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::EcdsaP256))
        .unwrap();
    let srv = OpensslServer::start(
        &leaf.cert_path,
        &leaf.key_path,
        Some(&pki.intermediate.cert_path),
        &[],
    )
    .unwrap();
    let s = scan(srv.port).await;
    assert_eq!(supported(&s.facts), [Protocol::Tls12, Protocol::Tls13]);
    assert_eq!(kinds(&s.facts), Vec::<&str>::new());
    assert_eq!(s.facts.fallback_scsv, Some(true));
    assert_eq!(s.facts.secure_renegotiation, Some(true));
    assert_eq!(s.facts.compression, Some(false));
    assert_eq!(s.facts.client_renegotiation, Some(false));
    assert_eq!(s.facts.dh_bits, None);
    assert_eq!(
        s.chain,
        vec![leaf.der.clone(), pki.intermediate.der.clone()]
    );
    assert_eq!(
        openssl_names(&s.facts, Protocol::Tls13),
        [
            "TLS_AES_128_GCM_SHA256",
            "TLS_AES_256_GCM_SHA384",
            "TLS_CHACHA20_POLY1305_SHA256"
        ]
    );
    let got: BTreeSet<String> = openssl_names(&s.facts, Protocol::Tls12)
        .into_iter()
        .collect();
    assert_eq!(got, openssl_truth(srv.port, "-tls1_2"));
    assert!(s.facts.connections <= 100, "{}", s.facts.connections);
}

#[tokio::test]
async fn a_legacy_server_shows_every_weak_class_it_has() {
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::Rsa2048))
        .unwrap();
    let srv = OpensslServer::start(
        &leaf.cert_path,
        &leaf.key_path,
        Some(&pki.intermediate.cert_path),
        &[
            "-min_protocol",
            "TLSv1",
            "-cipher",
            "ALL:COMPLEMENTOFALL:@SECLEVEL=0",
        ],
    )
    .unwrap();
    let started = Instant::now();
    let s = scan(srv.port).await;
    let took = started.elapsed();
    assert_eq!(
        supported(&s.facts),
        [
            Protocol::Tls10,
            Protocol::Tls11,
            Protocol::Tls12,
            Protocol::Tls13
        ]
    );
    // Debian's OpenSSL 3 has no RC4, DES, 3DES or EXPORT suites, and s_server's
    // automatic DH at security level 0 is 1024 bits.
    assert_eq!(
        kinds(&s.facts),
        [
            "cipher_anonymous",
            "cipher_cbc_legacy",
            "cipher_md5_mac",
            "cipher_null",
            "cipher_static_rsa",
            "protocol_tls10",
            "protocol_tls11",
            "weak_dh_params"
        ]
    );
    assert_eq!(s.facts.dh_bits, Some(1024));
    assert_eq!(s.facts.fallback_scsv, Some(true));
    for (p, flag) in [(Protocol::Tls10, "-tls1"), (Protocol::Tls12, "-tls1_2")] {
        let got: BTreeSet<String> = openssl_names(&s.facts, p).into_iter().collect();
        assert_eq!(got, openssl_truth(srv.port, flag), "{p:?}");
    }
    let findings = tls_findings(&s.facts);
    let null = findings
        .iter()
        .find(|f| f.kind.as_str() == "cipher_null")
        .unwrap();
    assert!(
        null.suites
            .contains(&"TLS_RSA_WITH_NULL_SHA256".to_string())
    );
    assert!(
        !null.suites.iter().any(|n| n.contains("AES")),
        "{:?}",
        null.suites
    );
    assert!(s.facts.connections <= 200, "{}", s.facts.connections);
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[tokio::test]
async fn server_preference_order_is_reported_as_the_server_has_it() {
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::EcdsaP256))
        .unwrap();
    let order = [
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-SHA",
    ];
    let srv = OpensslServer::start(
        &leaf.cert_path,
        &leaf.key_path,
        None,
        &["-tls1_2", "-serverpref", "-cipher", &order.join(":")],
    )
    .unwrap();
    let s = scan(srv.port).await;
    let p = s.facts.protocol(Protocol::Tls12).unwrap();
    assert_eq!(p.server_order, Some(true));
    assert_eq!(openssl_names(&s.facts, Protocol::Tls12), order);
    // Without -serverpref the server follows the client.
    let srv = OpensslServer::start(
        &leaf.cert_path,
        &leaf.key_path,
        None,
        &["-tls1_2", "-cipher", &order.join(":")],
    )
    .unwrap();
    let s = scan(srv.port).await;
    assert_eq!(
        s.facts.protocol(Protocol::Tls12).unwrap().server_order,
        Some(false)
    );
    assert_eq!(supported(&s.facts), [Protocol::Tls12]);
    // One protocol only: there is nothing to fall back to.
    assert_eq!(s.facts.fallback_scsv, None);
    assert_eq!(kinds(&s.facts), ["no_tls13"]);
}

#[tokio::test]
async fn client_initiated_renegotiation_is_found_where_the_server_allows_it() {
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::EcdsaP256))
        .unwrap();
    let srv = OpensslServer::start(
        &leaf.cert_path,
        &leaf.key_path,
        None,
        &["-client_renegotiation"],
    )
    .unwrap();
    let s = scan(srv.port).await;
    assert_eq!(s.facts.client_renegotiation, Some(true));
    assert_eq!(kinds(&s.facts), ["client_renegotiation"]);
}

#[tokio::test]
async fn a_tls13_only_server_is_enumerated_without_a_handshake() {
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::EcdsaP256))
        .unwrap();
    let srv = OpensslServer::start(
        &leaf.cert_path,
        &leaf.key_path,
        None,
        &["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"],
    )
    .unwrap();
    let s = scan(srv.port).await;
    assert_eq!(supported(&s.facts), [Protocol::Tls13]);
    assert_eq!(
        openssl_names(&s.facts, Protocol::Tls13),
        ["TLS_AES_256_GCM_SHA384"]
    );
    assert_eq!(kinds(&s.facts), ["no_tls12"]);
    assert_eq!(s.facts.secure_renegotiation, None);
    assert_eq!(s.facts.client_renegotiation, None);
    assert!(s.chain.is_empty(), "TLS 1.3 certificates are encrypted");
}

#[tokio::test]
async fn strong_dh_and_static_rsa_are_told_apart() {
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::Rsa2048))
        .unwrap();
    let srv = OpensslServer::start(
        &leaf.cert_path,
        &leaf.key_path,
        None,
        &[
            "-tls1_2",
            "-cipher",
            "DHE-RSA-AES128-GCM-SHA256:AES128-GCM-SHA256",
        ],
    )
    .unwrap();
    let s = scan(srv.port).await;
    assert_eq!(s.facts.dh_bits, Some(2048));
    assert_eq!(kinds(&s.facts), ["cipher_static_rsa", "no_tls13"]);
    let f = tls_findings(&s.facts);
    let rsa = f
        .iter()
        .find(|f| f.kind.as_str() == "cipher_static_rsa")
        .unwrap();
    assert_eq!(rsa.suites, ["TLS_RSA_WITH_AES_128_GCM_SHA256"]);
}

#[tokio::test]
async fn peers_that_are_not_tls_give_clear_errors_within_the_timeout() {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let quick = VulnConfig {
        timeout: Duration::from_millis(800),
        ..VulnConfig::default()
    };
    for b in [Behaviour::Garbage, Behaviour::Stall, Behaviour::Reset] {
        let peer = peers::start(any, b, None).await.unwrap();
        // Peers that answer at once get a timeout they will not need (a loaded machine
        // must not turn their answer into a timeout); the staller gets a short one.
        let cfg = if b == Behaviour::Stall {
            quick.clone()
        } else {
            VulnConfig {
                timeout: Duration::from_secs(3),
                ..quick.clone()
            }
        };
        let started = Instant::now();
        let err = vulnscan(&target(peer.addr.port(), None), &cfg)
            .await
            .unwrap_err();
        // Six probes (SSLv2 and five protocols), four connections at a time, a timed
        // out hello tried once more: bounded by a few timeouts, never a hang.
        assert!(
            started.elapsed() < cfg.timeout * 10,
            "{b:?}: {:?}",
            started.elapsed()
        );
        match (b, &err) {
            (Behaviour::Garbage, VulnError::NoTls(m)) => {
                assert!(m.contains("does not speak TLS"), "{m}")
            }
            (Behaviour::Stall, VulnError::Unreachable(m)) => {
                assert!(m.contains("timed out"), "{m}")
            }
            (Behaviour::Reset, VulnError::NoTls(_)) => {}
            _ => panic!("{b:?}: {err}"),
        }
    }
    let closed = certkeeper_testkit::free_port().unwrap();
    let err = vulnscan(&target(closed, None), &quick).await.unwrap_err();
    assert!(matches!(err, VulnError::Unreachable(_)), "{err}");
}

/// Suite ids GnuTLS enables for `priority` from `min` up (its minimum-version
/// column), without the ECDSA-authenticated ones (our fixtures carry an RSA key).
fn gnutls_truth(priority: &str, tls13: bool, legacy_only: bool) -> BTreeSet<u16> {
    let out = Command::new("gnutls-cli")
        .args(["--list", "--priority", priority])
        .output()
        .unwrap();
    let mut ids = BTreeSet::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let cols: Vec<&str> = line.split('\t').map(str::trim).collect();
        if cols.len() < 3 || !cols[1].starts_with("0x") || cols[0].contains("ECDSA") {
            continue;
        }
        let is13 = cols[2] == "TLS1.3";
        if is13 != tls13 || (legacy_only && cols[2] == "TLS1.2") {
            continue;
        }
        let b: Vec<u16> = cols[1]
            .split(", ")
            .map(|h| u16::from_str_radix(h.trim_start_matches("0x"), 16).unwrap())
            .collect();
        ids.insert((b[0] << 8) | b[1]);
    }
    ids
}

fn ids(f: &TlsFacts, p: Protocol) -> BTreeSet<u16> {
    f.protocol(p).unwrap().suites.iter().map(|s| s.id).collect()
}

/// gnutls-serv binds every interface, so it runs in a network namespace of its own.
#[tokio::test]
async fn gnutls_with_rc4_3des_and_no_secure_renegotiation() {
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::Rsa2048))
        .unwrap();
    let legacy =
        "NORMAL:+ARCFOUR-128:+3DES-CBC:+VERS-TLS1.0:+VERS-TLS1.1:%DISABLE_SAFE_RENEGOTIATION";
    let srv = IsolatedServer::gnutls(&leaf.cert_path, &leaf.key_path, legacy).unwrap();
    let s = scan(srv.port).await;
    assert_eq!(
        supported(&s.facts),
        [
            Protocol::Tls10,
            Protocol::Tls11,
            Protocol::Tls12,
            Protocol::Tls13
        ]
    );
    assert_eq!(
        kinds(&s.facts),
        [
            "cipher_3des",
            "cipher_cbc_legacy",
            "cipher_rc4",
            "cipher_static_rsa",
            // gnutls-serv answers a client's rehandshake request (seen with s_client too).
            "client_renegotiation",
            "no_secure_renegotiation",
            "protocol_tls10",
            "protocol_tls11"
        ]
    );
    assert_eq!(
        ids(&s.facts, Protocol::Tls12),
        gnutls_truth(legacy, false, false)
    );
    assert_eq!(
        ids(&s.facts, Protocol::Tls10),
        gnutls_truth(legacy, false, true)
    );
    assert_eq!(
        ids(&s.facts, Protocol::Tls13),
        gnutls_truth(legacy, true, false)
    );
    assert_eq!(s.chain, vec![leaf.der.clone()]);

    // TLS 1.2 and 1.3 with GnuTLS's default suites: none of those findings.
    let srv = IsolatedServer::gnutls(
        &leaf.cert_path,
        &leaf.key_path,
        "NORMAL:-VERS-TLS1.1:-VERS-TLS1.0",
    )
    .unwrap();
    let s = scan(srv.port).await;
    assert_eq!(supported(&s.facts), [Protocol::Tls12, Protocol::Tls13]);
    assert_eq!(
        kinds(&s.facts),
        ["cipher_static_rsa", "client_renegotiation"]
    );
    assert_eq!(s.facts.secure_renegotiation, Some(true));
    assert_eq!(s.facts.fallback_scsv, Some(true));
}

/// Heartbleed, CCS injection and compression, which no installable server still
/// has, against a peer that behaves on the wire as vulnerable OpenSSL 1.0.1 did:
/// each flaw found where the peer has it and not where it does not.
#[tokio::test]
async fn flaws_of_old_openssl_are_found_only_where_present() {
    use certkeeper_testkit::flawed::{self, Flaws};
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::Rsa2048))
        .unwrap();
    let none = Flaws::default();
    let cases = [
        (
            Flaws {
                heartbleed: true,
                ..none
            },
            "heartbleed",
        ),
        (
            Flaws {
                ccs_injection: true,
                ..none
            },
            "ccs_injection",
        ),
        (
            Flaws {
                compression: true,
                ..none
            },
            "tls_compression",
        ),
    ];
    // What the patched release still shows: TLS 1.0/1.1, static RSA, CBC under TLS 1.0,
    // no TLS 1.3, no fallback SCSV (1.0.1f predates it).
    let base = [
        "cipher_cbc_legacy",
        "cipher_static_rsa",
        "no_fallback_scsv",
        "no_tls13",
        "protocol_tls10",
        "protocol_tls11",
    ];
    let peer = flawed::start(leaf.der.clone(), none).await.unwrap();
    let s = scan(peer.addr.port()).await;
    assert_eq!(kinds(&s.facts), base);
    assert!(!s.facts.supports(Protocol::Ssl2));
    assert_eq!(s.facts.heartbleed, Some(false));
    assert_eq!(s.facts.ccs_injection, Some(false));
    assert_eq!(s.facts.compression, Some(false));
    assert_eq!(s.chain, vec![leaf.der.clone()]);
    for (flaws, kind) in cases {
        let peer = flawed::start(leaf.der.clone(), flaws).await.unwrap();
        let s = scan(peer.addr.port()).await;
        let mut want: Vec<&str> = base.to_vec();
        want.push(kind);
        want.sort();
        assert_eq!(kinds(&s.facts), want, "{flaws:?}");
    }
}

#[tokio::test]
async fn real_servers_are_not_reported_for_heartbleed_or_ccs_injection() {
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::Rsa2048))
        .unwrap();
    let srv = OpensslServer::start(&leaf.cert_path, &leaf.key_path, None, &["-tls1_2"]).unwrap();
    let s = scan(srv.port).await;
    assert_eq!(s.facts.heartbleed, Some(false));
    assert_eq!(s.facts.ccs_injection, Some(false));
}

/// SSLv3 is in no Debian TLS library any more: tlslite-ng (PyPI) serves it. With CBC
/// suites that is POODLE; TLS 1.0 beside it adds the BEAST-era findings.
#[tokio::test]
async fn sslv3_and_poodle_against_tlslite() {
    use certkeeper_testkit::TlsliteServer;
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::Rsa2048))
        .unwrap();
    let srv = TlsliteServer::start(&leaf.cert_path, &leaf.key_path, "ssl3", "tls1.0").unwrap();
    let s = scan(srv.port).await;
    assert_eq!(supported(&s.facts), [Protocol::Ssl3, Protocol::Tls10]);
    let k = kinds(&s.facts);
    for want in [
        "protocol_ssl3",
        "poodle",
        "protocol_tls10",
        "cipher_rc4",
        "cipher_3des",
        "cipher_cbc_legacy",
    ] {
        assert!(k.contains(&want), "{want} missing: {k:?}");
    }
    let f = tls_findings(&s.facts);
    let poodle = f.iter().find(|f| f.kind.as_str() == "poodle").unwrap();
    assert!(
        poodle.suites.iter().all(|n| n.contains("_CBC_")),
        "{:?}",
        poodle.suites
    );
    assert!(!poodle.suites.is_empty());
    // SSLv3 without CBC suites is SSLv3, not POODLE: the same server at TLS 1.2 only
    // has neither.
    let srv = TlsliteServer::start(&leaf.cert_path, &leaf.key_path, "tls1.2", "tls1.2").unwrap();
    let s = scan(srv.port).await;
    assert_eq!(supported(&s.facts), [Protocol::Tls12]);
    let k = kinds(&s.facts);
    assert!(
        !k.contains(&"protocol_ssl3") && !k.contains(&"poodle"),
        "{k:?}"
    );
}

/// EXPORT and single-DES suites (no installable server has them any more) from a
/// peer that picks them as OpenSSL 0.9.8 did, and nothing of the sort elsewhere.
#[tokio::test]
async fn export_and_des_suites_are_found_by_class() {
    use certkeeper_testkit::flawed::{self, Flaws};
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::Rsa2048))
        .unwrap();
    // RSA_EXPORT_WITH_RC4_40_MD5, RSA_EXPORT_WITH_DES40_CBC_SHA, RSA_WITH_DES_CBC_SHA.
    let flaws = Flaws {
        suites: Some(&[0x0003, 0x0008, 0x0009]),
        ..Flaws::default()
    };
    let peer = flawed::start(leaf.der.clone(), flaws).await.unwrap();
    let s = scan(peer.addr.port()).await;
    let ids: Vec<u16> = s
        .facts
        .protocol(Protocol::Tls12)
        .unwrap()
        .suites
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, [0x0003, 0x0008, 0x0009]);
    let f = tls_findings(&s.facts);
    let by = |k: &str| {
        f.iter()
            .find(|f| f.kind.as_str() == k)
            .map(|f| f.suites.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        by("cipher_export"),
        [
            "TLS_RSA_EXPORT_WITH_RC4_40_MD5",
            "TLS_RSA_EXPORT_WITH_DES40_CBC_SHA"
        ]
    );
    assert_eq!(
        by("cipher_des"),
        [
            "TLS_RSA_EXPORT_WITH_DES40_CBC_SHA",
            "TLS_RSA_WITH_DES_CBC_SHA"
        ]
    );
    assert_eq!(by("cipher_rc4"), ["TLS_RSA_EXPORT_WITH_RC4_40_MD5"]);
    assert_eq!(by("cipher_md5_mac"), ["TLS_RSA_EXPORT_WITH_RC4_40_MD5"]);
    // The same peer with AES only: none of these classes.
    let peer = flawed::start(leaf.der.clone(), Flaws::default())
        .await
        .unwrap();
    let k = kinds(&scan(peer.addr.port()).await.facts);
    for absent in [
        "cipher_export",
        "cipher_des",
        "cipher_rc4",
        "cipher_md5_mac",
    ] {
        assert!(!k.contains(&absent), "{absent}: {k:?}");
    }
}

/// Debian's nginx with TLS 1.0–1.2 and every suite at security level 0, in its own
/// order: the order reported is the server's (a subsequence of its cipher list) and
/// the set is what s_client can negotiate.
#[tokio::test]
async fn nginx_with_legacy_protocols_and_its_own_order() {
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::Rsa2048))
        .unwrap();
    let full = format!("{}{}", leaf.cert_pem, pki.intermediate.cert_pem);
    let srv = certkeeper_testkit::NginxServer::start(
        &full,
        &leaf.key_pem,
        "ssl_protocols TLSv1 TLSv1.1 TLSv1.2; ssl_ciphers \"ALL:@SECLEVEL=0\"; ssl_prefer_server_ciphers on;",
    )
    .unwrap();
    let s = scan(srv.port).await;
    assert_eq!(
        supported(&s.facts),
        [Protocol::Tls10, Protocol::Tls11, Protocol::Tls12]
    );
    assert_eq!(
        kinds(&s.facts),
        [
            "cipher_anonymous",
            "cipher_cbc_legacy",
            "cipher_static_rsa",
            "no_tls13",
            "protocol_tls10",
            "protocol_tls11"
        ]
    );
    assert_eq!(
        s.chain,
        vec![leaf.der.clone(), pki.intermediate.der.clone()]
    );
    let p = s.facts.protocol(Protocol::Tls12).unwrap();
    assert_eq!(p.server_order, Some(true));
    let got = openssl_names(&s.facts, Protocol::Tls12);
    let list = Command::new("openssl")
        .args(["ciphers", "ALL:@SECLEVEL=0"])
        .output()
        .unwrap();
    let configured: Vec<String> = String::from_utf8(list.stdout)
        .unwrap()
        .trim()
        .split(':')
        .map(str::to_string)
        .collect();
    let positions: Vec<usize> = got
        .iter()
        .map(|n| configured.iter().position(|c| c == n).unwrap_or(usize::MAX))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "not in the server's order: {got:?}"
    );
    let set: BTreeSet<String> = got.into_iter().collect();
    assert_eq!(set, openssl_truth(srv.port, "-tls1_2"));
}

/// A server that refuses names it does not serve (a fatal unrecognized_name alert):
/// the scan tries once without SNI and goes on, saying so.
#[tokio::test]
async fn a_refused_name_is_retried_without_sni() {
    let pki = TestPki::new().unwrap();
    let default = pki
        .leaf(&LeafSpec::new("default.test", KeyKind::EcdsaP256))
        .unwrap();
    let only = pki
        .leaf(&LeafSpec::new("only.test", KeyKind::EcdsaP256))
        .unwrap();
    let srv = OpensslServer::start(
        &default.cert_path,
        &default.key_path,
        None,
        &[
            "-servername",
            "only.test",
            "-servername_fatal",
            "-cert2",
            only.cert_path.to_str().unwrap(),
            "-key2",
            only.key_path.to_str().unwrap(),
            "-tls1_2",
        ],
    )
    .unwrap();
    let cfg = cfg();
    let named = vulnscan(&target(srv.port, Some("only.test")), &cfg)
        .await
        .unwrap();
    assert!(!named.sni_dropped);
    assert_eq!(named.chain, vec![only.der.clone()]);
    let other = vulnscan(&target(srv.port, Some("other.test")), &cfg)
        .await
        .unwrap();
    assert!(other.sni_dropped, "the alert was not retried without SNI");
    assert_eq!(supported(&other.facts), [Protocol::Tls12]);
    assert_eq!(other.chain, vec![default.der.clone()]);
    // An IP literal is never sent as SNI (it would draw the fatal alert and a retry):
    // the server's default certificate answers at once.
    let by_ip = vulnscan(&target(srv.port, Some("127.0.0.1")), &cfg)
        .await
        .unwrap();
    assert!(!by_ip.sni_dropped);
    assert_eq!(by_ip.chain, vec![default.der.clone()]);
}

#[tokio::test]
async fn sslv2_lists_the_cipher_kinds_the_server_shares() {
    use certkeeper_testkit::flawed::{self, Flaws};
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::Rsa2048))
        .unwrap();
    let peer = flawed::start(
        leaf.der.clone(),
        Flaws {
            sslv2: true,
            ..Flaws::default()
        },
    )
    .await
    .unwrap();
    let s = scan(peer.addr.port()).await;
    let f = tls_findings(&s.facts);
    let ssl2 = f
        .iter()
        .find(|f| f.kind.as_str() == "protocol_ssl2")
        .unwrap();
    assert_eq!(ssl2.severity, certkeeper_core::findings::Severity::Critical);
    assert_eq!(
        ssl2.suites,
        [
            "SSL_CK_RC4_128_WITH_MD5",
            "SSL_CK_DES_192_EDE3_CBC_WITH_MD5",
            "SSL_CK_RC4_128_EXPORT40_WITH_MD5"
        ]
    );
    // Real servers of today refuse an SSLv2 hello.
    let srv = OpensslServer::start(&leaf.cert_path, &leaf.key_path, None, &[]).unwrap();
    let s = scan(srv.port).await;
    let p = s.facts.protocol(Protocol::Ssl2).unwrap();
    assert!(!p.supported && p.suites.is_empty());
}

/// ROBOT: a peer that answers bad PKCS#1 padding at once and good padding only after
/// the Finished is an oracle; the same peer answering all alike, and OpenSSL 3 (which
/// rejects implicitly), are not.
#[tokio::test]
async fn robot_oracles_are_found_and_implicit_rejection_is_not() {
    use certkeeper_testkit::flawed::{self, Flaws};
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::Rsa2048))
        .unwrap();
    let oracle = flawed::start_with_key(
        leaf.der.clone(),
        &leaf.key_pem,
        Flaws {
            robot: true,
            ..Flaws::default()
        },
    )
    .await
    .unwrap();
    let s = scan(oracle.addr.port()).await;
    assert_eq!(s.facts.robot, Some(true));
    assert!(kinds(&s.facts).contains(&"robot"));
    let patched = flawed::start_with_key(leaf.der.clone(), &leaf.key_pem, Flaws::default())
        .await
        .unwrap();
    let s = scan(patched.addr.port()).await;
    assert_eq!(s.facts.robot, Some(false));
    // OpenSSL with static RSA suites on offer: probed, no oracle.
    let srv = OpensslServer::start(
        &leaf.cert_path,
        &leaf.key_path,
        None,
        &["-tls1_2", "-cipher", "AES128-GCM-SHA256:AES256-SHA"],
    )
    .unwrap();
    let s = scan(srv.port).await;
    assert_eq!(s.facts.robot, Some(false));
    assert!(!kinds(&s.facts).contains(&"robot"));
    // No RSA key exchange at all: nothing to be an oracle for.
    let ec = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::EcdsaP256))
        .unwrap();
    let srv = OpensslServer::start(&ec.cert_path, &ec.key_path, None, &["-tls1_2"]).unwrap();
    assert_eq!(scan(srv.port).await.facts.robot, Some(false));
}

/// The per-host cap holds (never more than N connections open to the endpoint), the
/// connection count reported is what the server saw, and a rate limit spaces them.
#[tokio::test]
async fn connection_limits_are_kept_and_counted() {
    use certkeeper_testkit::flawed::{self, Flaws};
    use std::sync::atomic::Ordering::SeqCst;
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::Rsa2048))
        .unwrap();
    for cap in [1usize, 4] {
        let (peer, counts) = flawed::start_counting(leaf.der.clone(), Flaws::default())
            .await
            .unwrap();
        let cfg = VulnConfig {
            per_host_connections: cap,
            ..cfg()
        };
        let s = vulnscan(&target(peer.addr.port(), None), &cfg)
            .await
            .unwrap();
        // The renegotiation check's s_client connection is not this scanner's socket
        // but still one connection.
        assert_eq!(
            counts.total.load(SeqCst),
            s.facts.connections as usize,
            "cap {cap}"
        );
        let max = counts.max_open.load(SeqCst);
        assert!(max <= cap, "cap {cap}: {max} open at once");
        assert!(cap == 1 || max > 1, "the protocols did not run in parallel");
    }
    // Two names on one address (a load balancer), scanned at once with one config:
    // the cap is per host, so the two scans share it.
    let (peer, counts) = flawed::start_counting(leaf.der.clone(), Flaws::default())
        .await
        .unwrap();
    let shared = VulnConfig {
        per_host_connections: 2,
        ..cfg()
    };
    let (ta, tb) = (
        target(peer.addr.port(), Some("a.test")),
        target(peer.addr.port(), Some("b.test")),
    );
    let (a, b) = tokio::join!(vulnscan(&ta, &shared), vulnscan(&tb, &shared));
    let total = a.unwrap().facts.connections + b.unwrap().facts.connections;
    assert_eq!(counts.total.load(SeqCst), total as usize);
    let max = counts.max_open.load(SeqCst);
    assert!(max <= 2, "two names, one host: {max} open at once");
    // 50 new connections a second: the scan cannot be faster than its count allows.
    let (peer, counts) = flawed::start_counting(leaf.der.clone(), Flaws::default())
        .await
        .unwrap();
    let cfg = VulnConfig {
        limiter: Some(std::sync::Arc::new(certkeeper_probe::RateLimiter::new(50))),
        ..cfg()
    };
    let started = Instant::now();
    let s = vulnscan(&target(peer.addr.port(), None), &cfg)
        .await
        .unwrap();
    let n = counts.total.load(SeqCst) as f64;
    assert_eq!(n as u32, s.facts.connections);
    assert!(
        started.elapsed().as_secs_f64() >= (n - 1.0) / 50.0 * 0.9,
        "{n} connections in {:?}",
        started.elapsed()
    );
}

/// A hello that times out is tried again before a protocol is called unsupported: a
/// server whose first connection stalls (busy, one connection at a time) still shows
/// every protocol; one that never answers is reported as not finished.
#[tokio::test]
async fn a_timed_out_hello_is_tried_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::EcdsaP256))
        .unwrap();
    let srv = OpensslServer::start(&leaf.cert_path, &leaf.key_path, None, &["-tls1_2"]).unwrap();
    let backend = SocketAddr::from(([127, 0, 0, 1], srv.port));
    // In front of it: the first TLS 1.2 hello's connection is held and never answered.
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = front.local_addr().unwrap().port();
    let stalled = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = stalled.clone();
    let proxy = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut c, _) = front.accept().await.unwrap();
            // A TLS 1.2 hello: version 3,3 and an empty session id (TLS 1.3 hellos carry one).
            let mut hello = [0u8; 44];
            if c.peek(&mut hello).await.unwrap_or(0) == 44
                && hello[9..11] == [3, 3]
                && hello[43] == 0
                && seen.fetch_add(1, Ordering::SeqCst) == 0
            {
                held.push(c);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut b) = tokio::net::TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut b).await;
                }
            });
        }
    });
    let quick = VulnConfig {
        timeout: Duration::from_millis(700),
        ..VulnConfig::default()
    };
    let s = vulnscan(&target(port, None), &quick).await.unwrap();
    assert!(
        stalled.load(Ordering::SeqCst) >= 2,
        "the stalled hello was not tried again"
    );
    assert_eq!(supported(&s.facts), [Protocol::Tls12]);
    assert!(s.facts.incomplete.is_empty(), "{:?}", s.facts.incomplete);
    proxy.abort();
}

// ---- Revocation: online OCSP (`openssl ocsp`), CRL over HTTP, stapling (`s_server
// -status_file`), and sources that stall, answer garbage, redirect or are refused.

mod revocation {
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    use certkeeper_core::findings::{
        RevocationCheck, RevocationSource, RevocationStatus, revocation_findings,
    };
    use certkeeper_probe::fetch::{FetchError, FetchPolicy, Method, fetch};
    use certkeeper_probe::revocation::{Stapling, check_revocation};
    use certkeeper_testkit::OpensslServer;
    use certkeeper_testkit::revocation::{CaLeaf, HttpBehaviour, HttpFixture, OpensslCa};

    fn loopback_allowed(timeout: Duration) -> FetchPolicy {
        FetchPolicy {
            timeout,
            allow_private: vec!["127.0.0.0/8".parse().unwrap()],
            ..FetchPolicy::default()
        }
    }

    fn status_of(checks: &[RevocationCheck], source: RevocationSource) -> &RevocationStatus {
        &checks
            .iter()
            .find(|c| c.source == source)
            .unwrap_or_else(|| panic!("no {source:?} check in {checks:?}"))
            .status
    }

    fn kinds(f: &certkeeper_core::findings::RevocationFacts) -> Vec<&'static str> {
        revocation_findings(f)
            .iter()
            .map(|f| f.kind.as_str())
            .collect()
    }

    fn assert_revoked(s: &RevocationStatus) {
        let now = time::OffsetDateTime::now_utc();
        match s {
            RevocationStatus::Revoked { revoked_at, reason } => {
                let at = revoked_at.expect("a revocation date");
                assert!(at <= now && at > now - time::Duration::minutes(10), "{at}");
                assert_eq!(reason.as_deref(), Some("keyCompromise"));
            }
            other => panic!("not revoked: {other:?}"),
        }
    }

    fn unreachable_reason(s: &RevocationStatus) -> &str {
        match s {
            RevocationStatus::Unreachable { reason } => reason,
            other => panic!("not unreachable: {other:?}"),
        }
    }

    struct Fixture {
        ca: OpensslCa,
        good: CaLeaf,
        revoked: CaLeaf,
        _responder: certkeeper_testkit::IsolatedServer,
        _crl: HttpFixture,
    }

    fn fixture() -> Fixture {
        let ca = OpensslCa::new().unwrap();
        let ocsp = TcpListener::bind("127.0.0.1:0").unwrap();
        let crl = TcpListener::bind("127.0.0.1:0").unwrap();
        let ocsp_url = format!("http://{}/", ocsp.local_addr().unwrap());
        let crl_url = format!("http://{}/ca.crl", crl.local_addr().unwrap());
        let good = ca.leaf("good.test", &ocsp_url, &crl_url).unwrap();
        let revoked = ca.leaf("revoked.test", &ocsp_url, &crl_url).unwrap();
        ca.revoke(&revoked, "keyCompromise").unwrap();
        let crl = HttpFixture::start_on(crl, HttpBehaviour::Body(ca.crl_der().unwrap())).unwrap();
        let responder = ca.responder(ocsp).unwrap();
        Fixture {
            ca,
            good,
            revoked,
            _responder: responder,
            _crl: crl,
        }
    }

    const NO_STAPLE: Stapling<'static> = Stapling {
        offered: None,
        response: None,
    };

    #[tokio::test]
    async fn ocsp_and_crl_say_good_and_revoked_with_date_and_reason() {
        let f = fixture();
        let now = time::OffsetDateTime::now_utc();
        let policy = loopback_allowed(Duration::from_secs(5));
        let good = check_revocation(
            &[f.good.der.clone(), f.ca.der.clone()],
            NO_STAPLE,
            Some(&policy),
            now,
        )
        .await;
        assert_eq!(
            status_of(&good.checks, RevocationSource::Ocsp),
            &RevocationStatus::Good
        );
        assert_eq!(
            status_of(&good.checks, RevocationSource::Crl),
            &RevocationStatus::Good
        );
        assert_eq!(kinds(&good), Vec::<&str>::new());

        let bad = check_revocation(
            &[f.revoked.der.clone(), f.ca.der.clone()],
            NO_STAPLE,
            Some(&policy),
            now,
        )
        .await;
        assert_revoked(status_of(&bad.checks, RevocationSource::Ocsp));
        assert_revoked(status_of(&bad.checks, RevocationSource::Crl));
        assert_eq!(kinds(&bad), ["cert_revoked"]);
        let finding = &revocation_findings(&bad)[0];
        assert!(
            finding
                .evidence
                .contains("reason keyCompromise (source: ocsp http://127.0.0.1:"),
            "{}",
            finding.evidence
        );
        assert!(
            finding.evidence.contains("(source: crl http://127.0.0.1:"),
            "{}",
            finding.evidence
        );

        // Without the issuer nothing can be verified: not tested, no finding.
        let alone = check_revocation(
            std::slice::from_ref(&f.revoked.der),
            NO_STAPLE,
            Some(&policy),
            now,
        )
        .await;
        assert!(alone.checks.is_empty());
        assert!(alone.not_tested.as_deref().unwrap().contains("issuer"));
        assert_eq!(kinds(&alone), Vec::<&str>::new());

        // The same sources on loopback without the allow-list: refused, said why.
        let started = Instant::now();
        let refused = check_revocation(
            &[f.revoked.der.clone(), f.ca.der.clone()],
            NO_STAPLE,
            Some(&FetchPolicy::default()),
            now,
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(1));
        for source in [RevocationSource::Ocsp, RevocationSource::Crl] {
            assert_eq!(
                unreachable_reason(status_of(&refused.checks, source)),
                "127.0.0.1 is a loopback address and not in the allow-list"
            );
        }
        assert_eq!(kinds(&refused), ["revocation_unreachable"]);
    }

    #[tokio::test]
    async fn stalling_garbage_redirecting_and_oversized_sources_are_unreachable_with_the_reason() {
        let ca = OpensslCa::new().unwrap();
        let stall = HttpFixture::start(HttpBehaviour::Stall).unwrap();
        let garbage =
            HttpFixture::start(HttpBehaviour::Body(b"<html>hello</html>".to_vec())).unwrap();
        let elsewhere = format!("http://localhost:{}/ca.crl", garbage.addr.port());
        let redirect = HttpFixture::start(HttpBehaviour::Redirect(elsewhere.clone())).unwrap();
        let policy = loopback_allowed(Duration::from_secs(1));
        let now = time::OffsetDateTime::now_utc();

        let a = ca
            .leaf("a.test", &stall.url("/"), &garbage.url("/ca.crl"))
            .unwrap();
        let started = Instant::now();
        let r = check_revocation(&[a.der, ca.der.clone()], NO_STAPLE, Some(&policy), now).await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_eq!(
            unreachable_reason(status_of(&r.checks, RevocationSource::Ocsp)),
            "timed out after 1s"
        );
        assert_eq!(
            unreachable_reason(status_of(&r.checks, RevocationSource::Crl)),
            "the answer is not a CRL"
        );
        assert_eq!(kinds(&r), ["revocation_unreachable"]);

        let b = ca
            .leaf("b.test", &garbage.url("/"), &redirect.url("/ca.crl"))
            .unwrap();
        let r = check_revocation(&[b.der, ca.der.clone()], NO_STAPLE, Some(&policy), now).await;
        assert_eq!(
            unreachable_reason(status_of(&r.checks, RevocationSource::Ocsp)),
            "the answer is not an OCSP response"
        );
        assert_eq!(
            unreachable_reason(status_of(&r.checks, RevocationSource::Crl)),
            format!("redirected to another host: {elsewhere}")
        );

        // A redirect to the same host is followed, but not for ever.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let again = format!("http://{}/again", listener.local_addr().unwrap());
        let _looping =
            HttpFixture::start_on(listener, HttpBehaviour::Redirect(again.clone())).unwrap();
        assert_eq!(
            fetch(&again, Method::Get, &policy).await,
            Err(FetchError::TooManyRedirects)
        );

        let small = FetchPolicy {
            max_bytes: 8,
            ..policy.clone()
        };
        assert_eq!(
            fetch(&garbage.url("/"), Method::Get, &small).await,
            Err(FetchError::TooLarge(8))
        );
        assert_eq!(
            fetch(&garbage.url("/"), Method::Get, &policy)
                .await
                .unwrap(),
            b"<html>hello</html>"
        );
        assert!(matches!(
            fetch("https://127.0.0.1/", Method::Get, &policy).await,
            Err(FetchError::Url(_))
        ));
        // A name that resolves to loopback is refused like the address itself.
        let by_name = format!("http://localhost:{}/", garbage.addr.port());
        assert!(matches!(
            fetch(&by_name, Method::Get, &FetchPolicy::default()).await,
            Err(FetchError::Refused { .. })
        ));
    }

    async fn scan_with_staple(
        leaf: &CaLeaf,
        ca: &OpensslCa,
        extra: &[&str],
    ) -> certkeeper_core::findings::RevocationFacts {
        let srv = OpensslServer::start(&leaf.cert_path, &leaf.key_path, Some(&ca.cert_path), extra)
            .unwrap();
        let s = super::scan(srv.port).await;
        check_revocation(
            &s.chain,
            Stapling {
                offered: s.stapling,
                response: s.ocsp_staple.as_deref(),
            },
            None,
            time::OffsetDateTime::now_utc(),
        )
        .await
    }

    #[tokio::test]
    async fn stapled_responses_are_read_from_the_first_flight_and_judged() {
        let ca = OpensslCa::new().unwrap();
        let url = "http://127.0.0.1:9/";
        let good = ca.leaf("www.test", url, url).unwrap();
        let revoked = ca.leaf("www.test", url, url).unwrap();
        ca.revoke(&revoked, "keyCompromise").unwrap();
        let good_resp = ca.ocsp_response_file(&good).unwrap();
        let revoked_resp = ca.ocsp_response_file(&revoked).unwrap();

        let r = scan_with_staple(&good, &ca, &["-status_file", good_resp.to_str().unwrap()]).await;
        assert_eq!(r.stapling, Some(true));
        assert_eq!(
            status_of(&r.checks, RevocationSource::Stapled),
            &RevocationStatus::Good
        );
        assert_eq!(kinds(&r), Vec::<&str>::new());

        let r = scan_with_staple(
            &revoked,
            &ca,
            &["-status_file", revoked_resp.to_str().unwrap()],
        )
        .await;
        assert_revoked(status_of(&r.checks, RevocationSource::Stapled));
        assert_eq!(kinds(&r), ["cert_revoked"]);
        assert!(
            revocation_findings(&r)[0]
                .evidence
                .ends_with("(source: stapled)")
        );

        // A staple about another certificate: unusable, said so.
        let r = scan_with_staple(
            &good,
            &ca,
            &["-status_file", revoked_resp.to_str().unwrap()],
        )
        .await;
        assert_eq!(kinds(&r), ["ocsp_staple_invalid"]);

        // Signed by a responder the CA delegated to: believed. Signed by another
        // CA's key: not.
        let delegate = ca.responder_cert().unwrap();
        let delegated = ca
            .ocsp_response_signed(&good, &delegate.cert_path, &delegate.key_path)
            .unwrap();
        let r = scan_with_staple(&good, &ca, &["-status_file", delegated.to_str().unwrap()]).await;
        assert_eq!(
            status_of(&r.checks, RevocationSource::Stapled),
            &RevocationStatus::Good
        );
        assert_eq!(kinds(&r), Vec::<&str>::new());
        let other = OpensslCa::new().unwrap();
        let forged = ca
            .ocsp_response_signed(&good, &other.cert_path, &other.key_path)
            .unwrap();
        let r = scan_with_staple(&good, &ca, &["-status_file", forged.to_str().unwrap()]).await;
        assert_eq!(kinds(&r), ["ocsp_staple_invalid"]);
        let reason = unreachable_reason(status_of(&r.checks, RevocationSource::Stapled));
        assert!(
            reason.starts_with("the OCSP response is not signed by the issuer"),
            "{reason}"
        );

        let r = scan_with_staple(&good, &ca, &[]).await;
        assert_eq!(r.stapling, Some(false));
        assert!(r.checks.is_empty());
        assert_eq!(kinds(&r), ["ocsp_stapling_missing"]);

        // TLS 1.3 only: the staple is encrypted there; not tested, no finding.
        let r = scan_with_staple(&good, &ca, &["-tls1_3"]).await;
        assert_eq!(r.stapling, None);
        assert_eq!(kinds(&r), Vec::<&str>::new());
    }
}
