//! End to end: the real `certkeeper` binary as server, agent and admin CLI, against
//! real TLS servers (`openssl s_server`) and STARTTLS peers on loopback.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use certkeeper_testkit::peers::{self, Behaviour};
use certkeeper_testkit::{Issued, KeyKind, LeafSpec, OpensslServer, TestPki, db, free_port};
use serde_json::Value;

mod common;
use common::*;

fn certs(s: &Server, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["certs", "list", "--output", "json"];
    args.extend(extra);
    args.extend(admin_args(s));
    let v: Value = serde_json::from_str(&ok(ck(&args))).unwrap();
    v["items"].as_array().unwrap().clone()
}

/// Fields of `openssl x509 -text` for the same certificate file.
fn openssl_fields(cert: &Path) -> BTreeMap<&'static str, String> {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .arg("x509")
            .arg("-in")
            .arg(cert)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let mut m = BTreeMap::new();
    let serial = run(&["-noout", "-serial"]);
    let serial = serial.trim().trim_start_matches("serial=").to_lowercase();
    m.insert("serial", serial.trim_start_matches("00").to_string());
    let end = run(&["-noout", "-enddate", "-dateopt", "iso_8601"]);
    m.insert(
        "not_after",
        end.trim().trim_start_matches("notAfter=").replace(' ', "T"),
    );
    let text = run(&["-noout", "-text"]);
    let sig = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Signature Algorithm: "))
        .unwrap()
        .to_string();
    m.insert("signature_algorithm", sig);
    if let Some(bits) = text.lines().find_map(|l| {
        let l = l.trim();
        l.strip_prefix("Public-Key: (")
            .and_then(|r| r.strip_suffix(" bit)"))
    }) {
        m.insert("key_bits", bits.to_string());
    }
    let fp = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    let fp = String::from_utf8(fp.stdout).unwrap();
    m.insert(
        "sha256",
        fp.trim()
            .rsplit('=')
            .next()
            .unwrap()
            .replace(':', "")
            .to_lowercase(),
    );
    m
}

fn spool_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("spool"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_end_to_end() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pki = TestPki::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("server");
    let agent_dir = work.path().join("agent");
    let port = free_port().unwrap();
    let server = start_server(&data, port, None);
    assert_eq!(
        server.printed_token.as_deref(),
        Some(server.admin.as_str()),
        "first start prints the token"
    );
    let admin = server.admin.clone();

    // Real TLS servers of every kind the issue names.
    let soon = |n: &str, k| {
        LeafSpec::new(n, k)
            .valid_days(-70, 90)
            .names(&["localhost", n])
    };
    // label, common name, key, validity (days from now, length), extra s_server flags
    type Spec = (
        &'static str,
        &'static str,
        KeyKind,
        i64,
        i64,
        &'static [&'static str],
    );
    let specs: [Spec; 6] = [
        ("ecdsa", "localhost", KeyKind::EcdsaP256, -1, 200, &[]),
        ("ed25519", "localhost", KeyKind::Ed25519, -1, 200, &[]),
        (
            "tls13",
            "localhost",
            KeyKind::EcdsaP256,
            -1,
            200,
            &["-tls1_3"],
        ),
        (
            "tls10",
            "localhost",
            KeyKind::Rsa2048,
            -1,
            200,
            &["-tls1", "-cipher", "ALL:@SECLEVEL=0"],
        ),
        ("expired", "localhost", KeyKind::EcdsaP256, -100, 30, &[]),
        (
            "wrongname",
            "elsewhere.test",
            KeyKind::EcdsaP256,
            -1,
            200,
            &[],
        ),
    ];
    let mut leaves: Vec<(&str, Issued, Vec<&str>)> = vec![(
        "rsa",
        pki.leaf(&soon("rsa.test", KeyKind::Rsa2048)).unwrap(),
        vec![],
    )];
    for (label, cn, key, from, days, extra) in specs {
        let leaf = pki
            .leaf(&LeafSpec::new(cn, key).valid_days(from, days))
            .unwrap();
        leaves.push((label, leaf, extra.to_vec()));
    }
    let mut servers = Vec::new();
    let mut port_of = BTreeMap::new();
    for (label, leaf, extra) in &leaves {
        let s = OpensslServer::start(
            &leaf.cert_path,
            &leaf.key_path,
            Some(&pki.intermediate.cert_path),
            extra,
        )
        .unwrap();
        port_of.insert(*label, s.port);
        servers.push(s);
    }
    let closed = free_port().unwrap();
    // STARTTLS on the well-known plain-text ports, on a loopback address of its own.
    let mail_ip: IpAddr = [127, 0, 0, 26].into();
    let mail = pki
        .leaf(&LeafSpec::new("mail.test", KeyKind::EcdsaP256).valid_days(-1, 200))
        .unwrap();
    let tls_cfg = peers::server_config(&mail.chain_path, &mail.key_path).unwrap();
    let _smtp = peers::start(
        SocketAddr::new(mail_ip, 25),
        Behaviour::SmtpStartTls,
        Some(tls_cfg.clone()),
    )
    .await
    .unwrap();
    let _ldap = peers::start(
        SocketAddr::new(mail_ip, 389),
        Behaviour::LdapStartTls,
        Some(tls_cfg),
    )
    .await
    .unwrap();
    // LDAP over TLS (implicit, port 636) from a real TLS server.
    let ldaps_leaf = pki
        .leaf(&LeafSpec::new("ldap.test", KeyKind::Rsa2048).valid_days(-1, 200))
        .unwrap();
    let _ldaps = OpensslServer::start_at(
        Some(SocketAddr::new(mail_ip, 636)),
        &ldaps_leaf.cert_path,
        &ldaps_leaf.key_path,
        Some(&pki.intermediate.cert_path),
        &[],
    )
    .unwrap();

    enroll(&server, &agent_dir);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(agent_dir.join("credential"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
    let dir = agent_dir.to_str().unwrap();
    let mut ports: Vec<String> = port_of.values().map(u16::to_string).collect();
    ports.push(closed.to_string());
    let ports = ports.join(",");
    ok(ck(&[
        "agent",
        "discover",
        "--servers",
        "localhost",
        "--ports",
        &ports,
        "--config-dir",
        dir,
    ]));
    ok(ck(&[
        "agent",
        "discover",
        "--ips",
        "127.0.0.26",
        "--ports",
        "25,389,636",
        "--config-dir",
        dir,
    ]));
    let listed: Value = serde_json::from_str(&ok(ck(&[
        "agent",
        "discover",
        "--list",
        "--output",
        "json",
        "--config-dir",
        dir,
    ])))
    .unwrap();
    assert_eq!(listed["servers"][0]["name"], "localhost");
    assert_eq!(listed["ranges"][0]["range"], "127.0.0.26");
    assert_eq!(listed["ranges"][0]["ports"], "25,389,636");

    let summary: Value = serde_json::from_str(&ok(ck(&[
        "agent",
        "scan",
        "--output",
        "json",
        "--config-dir",
        dir,
    ])))
    .unwrap();
    // localhost resolves to 127.0.0.1 (and maybe ::1, where nothing listens).
    assert_eq!(summary["tls_found"], 7 + 3, "{summary}");
    assert!(summary["failures"]["refused"].as_u64().unwrap() >= 1);
    assert_eq!(summary["spooled_reports"], 0);
    assert_eq!(
        summary["new_certificates"],
        9 + 1,
        "9 leaves + the intermediate: {summary}"
    );

    // What expires in the next 30 days, and where is it served?
    let expiring = certs(&server, &["--expiring-within", "30"]);
    let names: Vec<&str> = expiring
        .iter()
        .map(|c| c["common_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["localhost", "rsa.test"],
        "expired first, then the RSA one expiring in 20 days"
    );
    let rsa = &expiring[1];
    assert_eq!(rsa["endpoints"][0]["host"], "localhost");
    assert_eq!(rsa["endpoints"][0]["port"], port_of["rsa"]);
    assert_eq!(rsa["endpoints"][0]["sni"], "localhost");

    // Every field the server parsed agrees with `openssl x509 -text` on the same file.
    let all = certs(&server, &[]);
    // 10 seen on the network, and the server's own certificate, watched like any other.
    assert_eq!(all.len(), 11);
    assert_eq!(
        all.iter()
            .filter(|c| c["common_name"] == "certkeeper server")
            .count(),
        1
    );
    for (label, leaf, _) in &leaves {
        let want = openssl_fields(&leaf.cert_path);
        let got = all
            .iter()
            .find(|c| c["sha256"] == want["sha256"].as_str())
            .unwrap_or_else(|| panic!("{label} missing"));
        assert_eq!(got["serial"], want["serial"].as_str(), "{label}");
        assert_eq!(
            got["not_after"].as_str().unwrap(),
            want["not_after"],
            "{label}"
        );
        assert_eq!(
            got["signature_algorithm"],
            want["signature_algorithm"].as_str(),
            "{label}"
        );
        if let Some(bits) = want.get("key_bits") {
            assert_eq!(got["key_bits"].to_string(), *bits, "{label}");
        }
        assert_eq!(
            got["issuer"], "O=certkeeper tests, CN=certkeeper test intermediate",
            "{label}"
        );
    }
    let by_label = |l: &str| {
        let sha = openssl_fields(&leaves.iter().find(|x| x.0 == l).unwrap().1.cert_path)["sha256"]
            .clone();
        all.iter()
            .find(|c| c["sha256"] == sha.as_str())
            .unwrap()
            .clone()
    };
    assert_eq!(by_label("ed25519")["key_type"], "ed25519");
    assert_eq!(by_label("rsa")["key_type"], "rsa");
    assert_eq!(by_label("tls10")["endpoints"][0]["protocol"], "TLSv1.0");
    assert_eq!(by_label("tls13")["endpoints"][0]["protocol"], "TLSv1.3");
    assert_eq!(by_label("wrongname")["common_name"], "elsewhere.test");
    let mail_cert = all
        .iter()
        .find(|c| c["common_name"] == "mail.test")
        .unwrap();
    let starttls: Vec<&str> = mail_cert["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["starttls"].as_str().unwrap())
        .collect();
    assert_eq!(starttls, ["starttls-smtp", "starttls-ldap"]);
    let ldaps = all
        .iter()
        .find(|c| c["common_name"] == "ldap.test")
        .unwrap();
    assert_eq!(ldaps["endpoints"][0]["port"], 636);
    assert_eq!(ldaps["endpoints"][0]["host"], "127.0.0.26");
    assert!(ldaps["endpoints"][0]["starttls"].is_null(), "implicit TLS");
    let inter = all.iter().find(|c| c["is_ca"] == true).unwrap();
    assert_eq!(inter["common_name"], "certkeeper test intermediate");

    // CSV export of the same answer.
    let mut args = vec![
        "certs",
        "list",
        "--expiring-within",
        "30",
        "--output",
        "csv",
    ];
    args.extend(admin_args(&server));
    let csv = ok(ck(&args));
    assert_eq!(csv.lines().count(), 3);
    assert!(
        csv.lines()
            .nth(2)
            .unwrap()
            .contains(&format!("localhost:{}", port_of["rsa"]))
    );

    // Agents are listed with what they watch.
    let mut args = vec!["admin", "agents", "list", "--output", "json"];
    args.extend(admin_args(&server));
    let agents: Value = serde_json::from_str(&ok(ck(&args))).unwrap();
    let agent = &agents["items"][0];
    assert_eq!(agent["watched_endpoints"], port_of.len() as u64 + 1 + 3);
    assert_eq!(agent["endpoints_seen"], 10);

    // Nothing is lost: with the server down, results wait in the spool...
    drop(server);
    let out = ck(&["agent", "scan", "--config-dir", dir]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kept in"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(spool_files(&agent_dir), 1);
    // ...and go out on the next run, once it is back.
    let server = start_server(&data, port, None);
    assert!(
        server.printed_token.is_none(),
        "the token is printed only at the first start"
    );
    let summary: Value = serde_json::from_str(&ok(ck(&[
        "agent",
        "scan",
        "--output",
        "json",
        "--config-dir",
        dir,
    ])))
    .unwrap();
    assert_eq!(summary["spooled_reports"], 0);
    assert_eq!(spool_files(&agent_dir), 0);

    // A revoked agent's credential stops working at once; its results stay spooled.
    let id = agent["id"].as_str().unwrap();
    let mut args = vec!["admin", "agents", "revoke", id];
    args.extend(admin_args(&server));
    ok(ck(&args));
    let out = ck(&["agent", "scan", "--config-dir", dir]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
    assert_eq!(spool_files(&agent_dir), 1);

    // Tokens and keys never appear in the server's (debug) log.
    drop(server);
    let log = std::fs::read_to_string(log_path(&data)).unwrap();
    assert!(
        log.contains("report applied"),
        "the log is really being written"
    );
    let credential = std::fs::read_to_string(agent_dir.join("credential")).unwrap();
    let enrollment = std::fs::read_to_string(agent_dir.with_extension("enrollment")).unwrap();
    let key = std::fs::read_to_string(data.join("server.key")).unwrap();
    let key_body = key.lines().nth(1).unwrap();
    let kek = std::fs::read_to_string(data.join("kek.key")).unwrap();
    for (what, secret) in [
        ("admin token", admin.as_str()),
        ("agent credential", credential.trim()),
        ("enrollment token", enrollment.trim()),
        ("server key", key_body),
        ("key-encryption key", kek.trim()),
    ] {
        assert!(
            !log.contains(secret),
            "the {what} appears in the server log"
        );
    }
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    ok(ck(&[
        "agent",
        "discover",
        "--servers",
        "mail.example.com",
        "--config-dir",
        d,
    ]));
    let before = std::fs::read(dir.path().join("watchlist.toml")).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--ips", "198.51.100.0/33"],
            "invalid IP address or CIDR block",
        ),
        (&["--ips", "10.0.0.0/8"], "more than the limit"),
        (
            &["--servers", "x.test", "--ports", "0"],
            "invalid port \"0\"",
        ),
        (
            &["--servers", "x.test", "--ports", "65536"],
            "invalid port \"65536\"",
        ),
        (
            &["--servers", "x.test", "--ports", "9000-8000"],
            "first port must not be greater",
        ),
        (&["--servers", "https://x.test/"], "invalid server name"),
    ];
    for (args, msg) in cases {
        let mut full = vec!["agent", "discover", "--config-dir", d];
        full.extend(*args);
        let out = ck(&full);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: a malformed flag value is a usage error"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "{args:?}: {err}");
    }
    assert_eq!(
        std::fs::read(dir.path().join("watchlist.toml")).unwrap(),
        before
    );
    let out = ck(&["agent", "discover", "--bogus", "--config-dir", d]);
    assert_eq!(out.status.code(), Some(2), "unknown flags are usage errors");
    // Default ports when none are given.
    let v: Value = serde_json::from_str(&ok(ck(&[
        "agent",
        "discover",
        "--list",
        "--output",
        "json",
        "--config-dir",
        d,
    ])))
    .unwrap();
    assert_eq!(
        v["servers"][0]["ports"],
        "443,465,636,853,989-990,992-993,995"
    );
    // Not enrolled: scanning says what to do.
    let out = ck(&["agent", "scan", "--config-dir", d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("certkeeper agent enroll"));
    // An unreachable server.
    let out = ck(&[
        "agent",
        "enroll",
        "--server",
        "https://127.0.0.1:1",
        "--token",
        "x",
        "--config-dir",
        d,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the server"));
}

#[test]
fn a_wrong_pin_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let server = start_server(&work.path().join("s"), port, None);
    let wrong = "00".repeat(32);
    let out = ck(&[
        "admin",
        "agents",
        "list",
        "--server",
        &server.url,
        "--token",
        &server.admin,
        "--ca-fingerprint",
        &wrong,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pinned fingerprint"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Trusting the server through a CA file works; so does the right pin.
    let ca = work.path().join("s").join("server.crt");
    ok(ck(&[
        "admin",
        "agents",
        "list",
        "--server",
        &server.url,
        "--token",
        &server.admin,
        "--ca-file",
        ca.to_str().unwrap(),
    ]));
    ok(ck(&[
        "admin",
        "agents",
        "list",
        "--server",
        &server.url,
        "--token",
        &server.admin,
        "--ca-fingerprint",
        &server.fingerprint,
    ]));
    // Without either, the system roots do not know a self-signed server.
    let out = ck(&[
        "admin",
        "agents",
        "list",
        "--server",
        &server.url,
        "--token",
        &server.admin,
    ]);
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_on_one_postgres_keep_one_row_per_certificate_and_endpoint() {
    let Some(tdb) = db::postgres().unwrap() else {
        eprintln!("CERTKEEPER_TEST_POSTGRES_URL not set: PostgreSQL part skipped");
        return;
    };
    let pki = TestPki::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut tls = Vec::new();
    for i in 0..12 {
        let leaf = pki
            .leaf(&LeafSpec::new(&format!("n{i}.test"), KeyKind::EcdsaP256))
            .unwrap();
        tls.push(
            OpensslServer::start(
                &leaf.cert_path,
                &leaf.key_path,
                Some(&pki.intermediate.cert_path),
                &[],
            )
            .unwrap(),
        );
    }
    let ports = tls
        .iter()
        .map(|s| s.port.to_string())
        .collect::<Vec<_>>()
        .join(",");
    // Replicas of one database share one key-encryption key.
    let kek = certkeeper_pki::vault::Kek::generate().unwrap();
    let env = [("CERTKEEPER_KEK", kek.as_str())];
    let s1 = start_server_env(
        &work.path().join("s1"),
        free_port().unwrap(),
        Some(&tdb.url),
        &env,
    );
    let s2 = start_server_env(
        &work.path().join("s2"),
        free_port().unwrap(),
        Some(&tdb.url),
        &env,
    );
    // A replica with another KEK refuses to start rather than seal keys the others
    // cannot open.
    let other = certkeeper_pki::vault::Kek::generate().unwrap();
    let refused = Command::new(BIN)
        .args([
            "server",
            "--listen",
            &format!("127.0.0.1:{}", free_port().unwrap()),
        ])
        .arg("--data-dir")
        .arg(work.path().join("s3"))
        .args(["--database-url", &tdb.url])
        .env("CERTKEEPER_KEK", &other)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("the same KEK"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // Only the first server of a shared database creates (and prints) the admin token.
    assert!(s1.printed_token.is_some());
    assert!(s2.printed_token.is_none() && s2.admin.is_empty());
    let mut s2 = s2;
    s2.admin = s1.admin.clone();
    let dirs: Vec<PathBuf> = (0..2)
        .map(|i| work.path().join(format!("agent{i}")))
        .collect();
    for (dir, server) in dirs.iter().zip([&s1, &s2]) {
        enroll(server, dir);
        ok(ck(&[
            "agent",
            "discover",
            "--ips",
            "127.0.0.1",
            "--ports",
            &ports,
            "--config-dir",
            dir.to_str().unwrap(),
        ]));
    }
    // Both agents scan and report to their own server at the same time, three times.
    for _ in 0..3 {
        let children: Vec<Child> = dirs
            .iter()
            .map(|d| {
                Command::new(BIN)
                    .args(["agent", "scan", "--config-dir", d.to_str().unwrap()])
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
    }
    for s in [&s1, &s2] {
        let all = certs(s, &[]);
        // Each server also keeps its own certificate in the shared inventory.
        let seen: Vec<&Value> = all
            .iter()
            .filter(|c| c["common_name"] != "certkeeper server")
            .collect();
        assert_eq!(seen.len(), 13, "12 leaves + 1 intermediate, once each");
        assert_eq!(all.len(), 13 + 2);
        for c in seen.iter().filter(|c| c["is_ca"] == false) {
            assert_eq!(
                c["endpoints"].as_array().unwrap().len(),
                1,
                "one endpoint row per (host, ip, port)"
            );
        }
    }
}
