//! `certkeeper csr new|show`, cross-checked with `openssl req` on the same files.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_certkeeper");

fn ck(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("CERTKEEPER_KEY_PASSWORD")
        .output()
        .unwrap()
}

fn openssl_req_text(csr: &Path) -> String {
    let out = Command::new("openssl")
        .args(["req", "-noout", "-text", "-verify", "-in"])
        .arg(csr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl cannot read it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `-verify` reports on stderr ("Certificate request self-signature verify OK").
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn generates_keys_and_csrs_that_openssl_reads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for (key_type, expect) in [
        ("rsa2048", "Public-Key: (2048 bit)"),
        ("rsa3072", "Public-Key: (3072 bit)"),
        ("p256", "NIST CURVE: P-256"),
        ("p384", "NIST CURVE: P-384"),
        ("ed25519", "ED25519"),
    ] {
        let sub = dir.path().join(key_type);
        let out = ck(&[
            "csr",
            "new",
            "--cn",
            "www.example.com",
            "--san",
            "*.example.com,192.0.2.10,hostmaster@example.com",
            "--country",
            "de",
            "--state",
            "Berlin",
            "--locality",
            "Berlin",
            "--org",
            "Example GmbH",
            "--org-unit",
            "IT",
            "--key-type",
            key_type,
            "--out-dir",
            sub.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{key_type}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = openssl_req_text(&sub.join("server.csr"));
        assert!(text.contains("verify OK"), "{key_type}: {text}");
        assert!(text.contains(expect), "{key_type}: {text}");
        assert!(
            text.contains(
                "C = DE, ST = Berlin, L = Berlin, O = Example GmbH, OU = IT, CN = www.example.com"
            ),
            "{text}"
        );
        assert!(text.contains("DNS:www.example.com, DNS:*.example.com, IP Address:192.0.2.10, email:hostmaster@example.com"), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(sub.join("private.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{key_type}");
        }
        // The key belongs to the request.
        let key_pub = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(sub.join("private.key"))
            .output()
            .unwrap();
        let csr_pub = Command::new("openssl")
            .args(["req", "-noout", "-pubkey", "-in"])
            .arg(sub.join("server.csr"))
            .output()
            .unwrap();
        assert_eq!(key_pub.stdout, csr_pub.stdout, "{key_type}");
        // And `csr show` says the same as openssl.
        let shown: serde_json::Value = serde_json::from_slice(
            &ck(&[
                "csr",
                "show",
                sub.join("server.csr").to_str().unwrap(),
                "--output",
                "json",
            ])
            .stdout,
        )
        .unwrap();
        assert_eq!(shown["signature_valid"], true);
        assert_eq!(shown["common_name"], "www.example.com");
        assert_eq!(shown["sans"][1], "DNS:*.example.com");
    }
    let _ = d;
}

#[test]
fn refuses_bad_input_before_touching_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for (args, msg) in [
        (vec!["--cn", "https://www.example.com"], "scheme"),
        (vec!["--cn", "www.example.com:443"], "port"),
        (vec!["--cn", "www.example.com/app"], "path"),
        (
            vec!["--cn", "www.example.com", "--country", "UK"],
            "ISO 3166",
        ),
        (
            vec!["--cn", "www.example.com", "--san", "not a name"],
            "subject alternative name",
        ),
        (
            vec!["--cn", "www.example.com", "--key-type", "rsa1024"],
            "unknown key type",
        ),
        (
            vec!["--cn", "www.example.com", "--encrypt-key"],
            "needs a passphrase",
        ),
    ] {
        let mut full = vec!["csr", "new", "--out-dir", d];
        full.extend(args.iter().copied());
        let out = ck(&full);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(msg),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn backs_up_existing_files_and_encrypts_keys_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(
        ck(&[
            "csr",
            "new",
            "--cn",
            "a.example.com",
            "--key-type",
            "p256",
            "--out-dir",
            d
        ])
        .status
        .success()
    );
    let first_csr = std::fs::read(dir.path().join("server.csr")).unwrap();
    let first_key = std::fs::read(dir.path().join("private.key")).unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "a long passphrase\n").unwrap();
    let out = ck(&[
        "csr",
        "new",
        "--cn",
        "b.example.com",
        "--key-type",
        "p256",
        "--out-dir",
        d,
        "--encrypt-key",
        "--key-password-file",
        pw.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let backup_of = |stem: &str| {
        names
            .iter()
            .find(|n| n.starts_with(stem) && n.ends_with(".bak"))
            .unwrap()
            .clone()
    };
    assert_eq!(
        std::fs::read(dir.path().join(backup_of("server.csr."))).unwrap(),
        first_csr
    );
    assert_eq!(
        std::fs::read(dir.path().join(backup_of("private.key."))).unwrap(),
        first_key
    );
    let key = std::fs::read_to_string(dir.path().join("private.key")).unwrap();
    assert!(key.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    let opened = Command::new("openssl")
        .args(["pkey", "-noout", "-passin"])
        .arg(format!("file:{}", pw.display()))
        .arg("-in")
        .arg(dir.path().join("private.key"))
        .output()
        .unwrap();
    assert!(
        opened.status.success(),
        "openssl opens it with the passphrase"
    );
    let wrong = Command::new("openssl")
        .args(["pkey", "-noout", "-passin", "pass:wrongwrong", "-in"])
        .arg(dir.path().join("private.key"))
        .output()
        .unwrap();
    assert!(!wrong.status.success());
}

#[test]
fn reads_an_openssl_request_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("req.cnf");
    std::fs::write(
        &cfg,
        "[req]\ndefault_bits = 2048\nprompt = no\ndistinguished_name = req_distinguished_name\nreq_extensions = req_ext\n\n\
         [req_distinguished_name]\nC = US\nST = California\nL = San Francisco\nO = Example Inc\nOU = Ops\nCN = shop.example.com\n\n\
         [req_ext]\nsubjectAltName = @alt_names\n\n[alt_names]\nDNS.1 = shop.example.com\nDNS.2 = www.shop.example.com\nIP.1 = 198.51.100.4\n",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = ck(&[
        "csr",
        "new",
        "--openssl-config",
        cfg.to_str().unwrap(),
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = openssl_req_text(&out_dir.join("server.csr"));
    assert!(text.contains("C = US, ST = California, L = San Francisco, O = Example Inc, OU = Ops, CN = shop.example.com"), "{text}");
    assert!(
        text.contains("DNS:shop.example.com, DNS:www.shop.example.com, IP Address:198.51.100.4"),
        "{text}"
    );
    assert!(text.contains("Public-Key: (2048 bit)"));
    // A garbage file is not a CSR.
    let junk = dir.path().join("junk.csr");
    std::fs::write(&junk, "hello").unwrap();
    let out = ck(&["csr", "show", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a certificate signing request"));
}
