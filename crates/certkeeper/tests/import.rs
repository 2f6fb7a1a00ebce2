//! Import and export end to end: the real binary against the real server, inputs made
//! with rcgen and the `openssl` CLI (PKCS#12 with and without `-legacy`).

use std::path::{Path, PathBuf};
use std::process::Command;

use certkeeper_testkit::{Issued, KeyKind, LeafSpec, TestPki, free_port};
use serde_json::Value;

mod common;
use common::*;

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Env {
    server: Server,
    work: tempfile::TempDir,
    pki: TestPki,
}

impl Env {
    fn new() -> Env {
        let work = tempfile::tempdir().unwrap();
        let server = start_server(&work.path().join("data"), free_port().unwrap(), None);
        Env {
            server,
            work,
            pki: TestPki::new().unwrap(),
        }
    }
    fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.work.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
    fn import(&self, args: &[&str]) -> std::process::Output {
        let mut full = vec!["import", "--output", "json"];
        full.extend(args);
        full.extend(admin_args(&self.server));
        ck(&full)
    }
    fn import_ok(&self, args: &[&str]) -> Value {
        serde_json::from_str(&ok(self.import(args))).unwrap()
    }
    fn refused(&self, args: &[&str], code: &str) {
        let out = self.import(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(code), "{args:?}: expected {code}, got {err}");
    }
    fn leaf(&self, name: &str) -> Issued {
        self.pki
            .leaf(&LeafSpec::new(name, KeyKind::EcdsaP256))
            .unwrap()
    }
}

#[test]
fn imports_with_key_and_chain_and_keeps_the_key_sealed() {
    let env = Env::new();
    let leaf = env.leaf("shop.example.com");
    let inter = &env.pki.intermediate;
    let v = env.import_ok(&[
        "--cert",
        s(&leaf.cert_path),
        "--key",
        s(&leaf.key_path),
        "--chain",
        s(&inter.cert_path),
    ]);
    assert_eq!(v["common_name"], "shop.example.com");
    assert_eq!(v["key_stored"], true);
    assert_eq!(v["policy"], "passed");
    assert_eq!(v["chain"].as_array().unwrap().len(), 1);
    assert_eq!(v["chain_complete"], false, "the root is not known yet");
    let sha = v["sha256"].as_str().unwrap().to_string();

    // The key is not in the database in any readable form, and the KEK is kept apart.
    let key_der = Command::new("openssl")
        .args(["pkey", "-outform", "DER", "-in", s(&leaf.key_path)])
        .output()
        .unwrap()
        .stdout;
    let data = env.work.path().join("data");
    let mut db = Vec::new();
    for f in ["certkeeper.db", "certkeeper.db-wal"] {
        db.extend(std::fs::read(data.join(f)).unwrap_or_default());
    }
    assert!(!db.is_empty());
    assert!(
        !db.windows(key_der.len()).any(|w| w == key_der.as_slice()),
        "the private key is stored in the clear"
    );
    // ECPrivateKey: version 1 (02 01 01), then the 32-byte scalar (04 20 …).
    let at = key_der
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .unwrap()
        + 5;
    let secret_scalar = &key_der[at..at + 32];
    assert!(!db.windows(32).any(|w| w == secret_scalar));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(data.join("kek.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }

    // Chain completion from the inventory: a second leaf of the same intermediate,
    // imported alone, gets its chain; once the root is known, the chain is complete.
    let other = env.leaf("api.example.com");
    let v = env.import_ok(&["--cert", s(&other.cert_path)]);
    assert_eq!(
        v["chain"][0]["subject"],
        "O=certkeeper tests, CN=certkeeper test intermediate"
    );
    env.import_ok(&["--cert", s(&env.pki.root.cert_path)]);
    let third = env.leaf("www.example.com");
    let v = env.import_ok(&["--cert", s(&third.cert_path)]);
    assert_eq!(v["chain_complete"], true);
    assert_eq!(v["chain"].as_array().unwrap().len(), 2);

    // Export: the key comes back whole, the PKCS#12 opens in OpenSSL, and it is audited.
    let mut args = vec![
        "export",
        sha.as_str(),
        "--format",
        "fullchain",
        "--with-key",
    ];
    args.extend(admin_args(&env.server));
    let pem = ok(ck(&args));
    assert_eq!(
        pem.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + intermediate"
    );
    let exported_key = env.file(
        "exported.key",
        &pem[pem.find("-----BEGIN PRIVATE KEY").unwrap()..],
    );
    let a = Command::new("openssl")
        .args(["pkey", "-pubout", "-in", s(&exported_key)])
        .output()
        .unwrap()
        .stdout;
    let b = Command::new("openssl")
        .args(["pkey", "-pubout", "-in", s(&leaf.key_path)])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(a, b);
    let pw = env.file("pw", "export-password\n");
    let pfx = env.work.path().join("out.pfx");
    let mut args = vec![
        "export",
        sha.as_str(),
        "--format",
        "pfx",
        "--with-key",
        "--password-file",
        s(&pw),
        "--out",
        s(&pfx),
    ];
    args.extend(admin_args(&env.server));
    ok(ck(&args));
    let opened = Command::new("openssl")
        .args([
            "pkcs12",
            "-in",
            s(&pfx),
            "-nodes",
            "-passin",
            &format!("file:{}", s(&pw)),
        ])
        .output()
        .unwrap();
    assert!(
        opened.status.success(),
        "{}",
        String::from_utf8_lossy(&opened.stderr)
    );
    let text = String::from_utf8_lossy(&opened.stdout);
    assert!(text.contains("PRIVATE KEY") && text.matches("BEGIN CERTIFICATE").count() == 2);
    let mut args = vec!["export", sha.as_str(), "--format", "der"];
    args.extend(admin_args(&env.server));
    assert_eq!(ck(&args).stdout, leaf.der);
    let mut args = vec!["admin", "audit", "--output", "json"];
    args.extend(admin_args(&env.server));
    let audit: Value = serde_json::from_str(&ok(ck(&args))).unwrap();
    let exports = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "export_key" && e["subject"] == sha.as_str())
        .count();
    assert_eq!(exports, 2);
    // A certificate without a stored key has no key to export.
    let mut args = vec!["export", v["sha256"].as_str().unwrap(), "--with-key"];
    args.extend(admin_args(&env.server));
    assert!(String::from_utf8_lossy(&ck(&args).stderr).contains("no_private_key"));
}

#[test]
fn imports_pkcs12_modern_and_legacy_and_encrypted_keys() {
    let env = Env::new();
    let leaf = env
        .pki
        .leaf(&LeafSpec::new("p12.example.com", KeyKind::Rsa2048))
        .unwrap();
    let pw = env.file("p12pw", "p12-password");
    for (name, legacy) in [("modern.p12", false), ("legacy.p12", true)] {
        let out = env.work.path().join(name);
        let mut args = vec![
            "pkcs12",
            "-export",
            "-inkey",
            s(&leaf.key_path),
            "-in",
            s(&leaf.cert_path),
            "-certfile",
            s(&env.pki.intermediate.cert_path),
            "-passout",
            "pass:p12-password",
            "-out",
            s(&out),
        ];
        if legacy {
            args.push("-legacy");
        }
        openssl(&args);
        let v = env.import_ok(&["--pfx", s(&out), "--password-file", s(&pw)]);
        assert_eq!(v["common_name"], "p12.example.com", "{name}");
        assert_eq!(v["chain"].as_array().unwrap().len(), 1, "{name}");
        let wrong = env.file("wrongpw", "not-the-password");
        env.refused(
            &["--pfx", s(&out), "--password-file", s(&wrong)],
            "wrong_password",
        );
    }
    let junk = env.file("junk.p12", "this is not a pkcs12 file");
    env.refused(
        &["--pfx", s(&junk), "--password-file", s(&pw)],
        "malformed_pkcs12",
    );

    // Encrypted keys: PKCS#8 and the legacy PEM form, with and without the passphrase.
    let key_pw = env.file("keypw", "key-passphrase");
    let enc8 = env.work.path().join("enc8.key");
    openssl(&[
        "pkcs8",
        "-topk8",
        "-v2",
        "aes256",
        "-in",
        s(&leaf.key_path),
        "-passout",
        "pass:key-passphrase",
        "-out",
        s(&enc8),
    ]);
    let legacy_pem = env.work.path().join("legacy.key");
    openssl(&[
        "rsa",
        "-aes256",
        "-traditional",
        "-in",
        s(&leaf.key_path),
        "-passout",
        "pass:key-passphrase",
        "-out",
        s(&legacy_pem),
    ]);
    for key in [&enc8, &legacy_pem] {
        env.import_ok(&[
            "--cert",
            s(&leaf.cert_path),
            "--key",
            s(key),
            "--key-password-file",
            s(&key_pw),
        ]);
        env.refused(
            &["--cert", s(&leaf.cert_path), "--key", s(key)],
            "key_unreadable",
        );
        let wrong = env.file("wrongkeypw", "wrong-passphrase");
        env.refused(
            &[
                "--cert",
                s(&leaf.cert_path),
                "--key",
                s(key),
                "--key-password-file",
                s(&wrong),
            ],
            "wrong_password",
        );
    }
}

#[test]
fn every_bad_input_gets_its_own_error() {
    let env = Env::new();
    let leaf = env.leaf("a.example.com");
    let other = env.leaf("b.example.com");
    // A key that belongs to another certificate.
    env.refused(
        &["--cert", s(&leaf.cert_path), "--key", s(&other.key_path)],
        "key_mismatch",
    );
    // Truncated DER.
    let der = env.work.path().join("trunc.der");
    std::fs::write(&der, &leaf.der[..leaf.der.len() / 2]).unwrap();
    env.refused(&["--cert", s(&der)], "malformed_certificate");
    // A chain in the wrong order, and a chain certificate from elsewhere.
    env.refused(
        &[
            "--cert",
            s(&leaf.cert_path),
            "--chain",
            s(&env.pki.root.cert_path),
            "--chain",
            s(&env.pki.intermediate.cert_path),
        ],
        "chain_misordered",
    );
    let stranger = TestPki::new().unwrap();
    env.refused(
        &[
            "--cert",
            s(&leaf.cert_path),
            "--chain",
            s(&stranger.intermediate.cert_path),
        ],
        "chain_unrelated",
    );
    // Expired.
    let old = env
        .pki
        .leaf(&LeafSpec::new("old.example.com", KeyKind::EcdsaP256).valid_days(-100, 30))
        .unwrap();
    env.refused(&["--cert", s(&old.cert_path)], "certificate_expired");
    // Policy: validity over 398 days, and an RSA key under 2048 bits.
    let long = env
        .pki
        .leaf(&LeafSpec::new("long.example.com", KeyKind::EcdsaP256).valid_days(-1, 500))
        .unwrap();
    let out = env.import(&["--cert", s(&long.cert_path)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policy_violation") && err.contains("max_validity"),
        "{err}"
    );
    let k = env.work.path().join("weak.key");
    let csr = env.work.path().join("weak.csr");
    let crt = env.work.path().join("weak.crt");
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:1024",
        "-nodes",
        "-keyout",
        s(&k),
        "-subj",
        "/CN=weak.example.com",
        "-out",
        s(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        s(&csr),
        "-CA",
        s(&env.pki.intermediate.cert_path),
        "-CAkey",
        s(&env.pki.intermediate.key_path),
        "-CAcreateserial",
        "-days",
        "90",
        "-out",
        s(&crt),
    ]);
    let out = env.import(&["--cert", s(&crt)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("key_size") && err.contains("1024"), "{err}");
    // Nothing of the refused inputs reached the inventory: only the server's own
    // certificate is there.
    let mut args = vec!["certs", "list", "--output", "json"];
    args.extend(admin_args(&env.server));
    let v: Value = serde_json::from_str(&ok(ck(&args))).unwrap();
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["common_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["certkeeper server"]);
}

#[test]
fn request_and_internal_ca_from_the_command_line() {
    let env = Env::new();
    let with = |args: &[&str]| {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(admin_args(&env.server));
        serde_json::from_str::<Value>(&ok(ck(&full))).unwrap()
    };
    let ca = with(&[
        "ca",
        "create",
        "corp",
        "--cn",
        "Corp Root",
        "--allowed-names",
        "*.corp.example",
        "--output",
        "json",
    ]);
    let req = with(&[
        "request",
        "new",
        "--cn",
        "db.corp.example",
        "--key-type",
        "p256",
        "--output",
        "json",
    ]);
    assert_eq!(req["status"], "pending");
    assert_eq!(
        req["reuse_key"], false,
        "a new key at each renewal by default"
    );
    let kept = with(&[
        "request",
        "new",
        "--cn",
        "kept.corp.example",
        "--reuse-key",
        "--output",
        "json",
    ]);
    assert_eq!(kept["reuse_key"], true);
    let id = req["id"].as_str().unwrap();
    let issued = with(&["ca", "issue", "corp", "--request", id, "--output", "json"]);
    assert_eq!(issued["key_stored"], true);
    let listed = with(&["request", "list", "--output", "json"]);
    let status_of = |id: &Value| {
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == *id)
            .map(|r| r["status"].clone())
    };
    assert_eq!(status_of(&req["id"]), Some(Value::from("issued")));
    assert_eq!(status_of(&kept["id"]), Some(Value::from("pending")));
    let ca_file = env.file("ca.pem", ca["certificate"].as_str().unwrap());
    let cert_file = env.file("db.pem", issued["certificate"].as_str().unwrap());
    openssl(&["verify", "-CAfile", s(&ca_file), s(&cert_file)]);
    // A CSR made locally, signed by the CA; the key never leaves this machine.
    let out_dir = env.work.path().join("local");
    ok(ck(&[
        "csr",
        "new",
        "--cn",
        "web.corp.example",
        "--key-type",
        "p256",
        "--out-dir",
        s(&out_dir),
    ]));
    let issued = with(&[
        "ca",
        "issue",
        "corp",
        "--csr",
        s(&out_dir.join("server.csr")),
        "--output",
        "json",
    ]);
    assert_eq!(issued["key_stored"], false);
    // Outside the CA's names: refused with its own code.
    let out_dir = env.work.path().join("outside");
    ok(ck(&[
        "csr",
        "new",
        "--cn",
        "www.example.com",
        "--key-type",
        "p256",
        "--out-dir",
        s(&out_dir),
    ]));
    let mut args = vec!["ca", "issue", "corp", "--csr"];
    let csr = out_dir.join("server.csr");
    args.push(s(&csr));
    args.extend(admin_args(&env.server));
    let out = ck(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("name_not_allowed"));
}

#[test]
fn team_tokens_from_the_command_line() {
    for tdb in certkeeper_testkit::db::all().unwrap() {
        let work = tempfile::tempdir().unwrap();
        let config = work.path().join("server.toml");
        std::fs::write(
            &config,
            "[policy]\nmax_validity_days = 398\n\n[policy.teams.web]\nmax_validity_days = 100\nallowed_names = [\"*.web.example\"]\n",
        )
        .unwrap();
        let data = work.path().join("data");
        let server = start_server_env(
            &data,
            free_port().unwrap(),
            Some(&tdb.url),
            &[("CERTKEEPER_CONFIG", s(&config))],
        );
        let pki = TestPki::new().unwrap();
        let as_token = |token: &str, args: &[&str]| {
            let mut full: Vec<&str> = args.to_vec();
            full.extend([
                "--server",
                server.url.as_str(),
                "--token",
                token,
                "--ca-fingerprint",
                server.fingerprint.as_str(),
            ]);
            ck(&full)
        };
        let admin = server.admin.trim().to_string();
        let created: Value = serde_json::from_str(&ok(as_token(
            &admin,
            &[
                "admin",
                "token",
                "create",
                "--name",
                "web",
                "--team",
                "web",
                "--permissions",
                "read,import,export_key",
                "--output",
                "json",
            ],
        )))
        .unwrap();
        let web = created["token"].as_str().unwrap().to_string();
        assert_eq!(
            created["permissions"],
            serde_json::json!(["read", "import", "export_key"])
        );
        // Text output: the secret alone on stdout, the rest on stderr.
        let out = as_token(
            &admin,
            &[
                "admin",
                "token",
                "create",
                "--name",
                "web-ro",
                "--team",
                "web",
                "--permissions",
                "read",
            ],
        );
        let web_ro = ok(out).trim().to_string();
        assert!(web_ro.starts_with("ck_token_") && !web_ro.contains(' '));
        let out = as_token(
            &admin,
            &[
                "admin",
                "token",
                "create",
                "--name",
                "bad",
                "--permissions",
                "read,write",
            ],
        );
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("unknown permission \"write\""));
        let listed = ok(as_token(&admin, &["admin", "token", "list"]));
        assert!(
            listed.contains("web-ro") && listed.contains("read, import, export_key"),
            "{listed}"
        );
        assert!(!listed.contains(&web) && !listed.contains(&web_ro));
        let listed: Value = serde_json::from_str(&ok(as_token(
            &admin,
            &["admin", "token", "list", "--output", "json"],
        )))
        .unwrap();
        let ro_id = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "web-ro")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();

        // web's policy applies to web's imports, and the refusal says so.
        let file = |name: &str, content: &str| {
            let p = work.path().join(name);
            std::fs::write(&p, content).unwrap();
            p
        };
        let other = pki
            .leaf(&LeafSpec::new("www.other.example", KeyKind::EcdsaP256))
            .unwrap();
        let other_crt = file("other.crt", &other.cert_pem);
        let out = as_token(&web, &["import", "--cert", s(&other_crt)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("policy_violation") && err.contains("team web"),
            "{err}"
        );
        let mine = pki
            .leaf(&LeafSpec::new("a.web.example", KeyKind::EcdsaP256).valid_days(-1, 90))
            .unwrap();
        let (crt, key, chain) = (
            file("mine.crt", &mine.cert_pem),
            file("mine.key", &mine.key_pem),
            file("chain.pem", &pki.intermediate.cert_pem),
        );
        let imported: Value = serde_json::from_str(&ok(as_token(
            &web,
            &[
                "import",
                "--cert",
                s(&crt),
                "--key",
                s(&key),
                "--chain",
                s(&chain),
                "--output",
                "json",
            ],
        )))
        .unwrap();
        assert_eq!(imported["team"], "web");
        let sha = imported["sha256"].as_str().unwrap().to_string();

        // Export with the key: export_key, or refused and audited with who tried.
        let out = as_token(&web_ro, &["export", &sha, "--format", "pem", "--with-key"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            err.contains("missing_permission") && err.contains("export_key"),
            "{err}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("PRIVATE KEY"));
        let pem = ok(as_token(&web_ro, &["export", &sha, "--format", "pem"]));
        assert!(pem.contains("BEGIN CERTIFICATE") && !pem.contains("PRIVATE KEY"));
        let pem = ok(as_token(
            &web,
            &["export", &sha, "--format", "pem", "--with-key"],
        ));
        assert!(pem.contains("BEGIN PRIVATE KEY"));
        let audit = ok(as_token(&admin, &["admin", "audit", "--output", "json"]));
        let v: Value = serde_json::from_str(&audit).unwrap();
        let actions: Vec<(String, String)> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["subject"] == sha.as_str())
            .map(|e| {
                (
                    e["actor"].as_str().unwrap().into(),
                    e["action"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            actions,
            [
                ("token:web (team web)".to_string(), "export_key".to_string()),
                ("token:web-ro (team web)".into(), "export_key_denied".into()),
                ("token:web (team web)".into(), "import_with_key".into()),
            ]
        );
        let key_line = mine.key_pem.lines().nth(1).unwrap();
        assert!(!audit.contains("PRIVATE KEY") && !audit.contains(key_line));
        let log = std::fs::read_to_string(log_path(&data)).unwrap();
        assert!(!log.contains(key_line) && !log.contains(&web) && !log.contains(&web_ro));

        // Revoked: refused at once; the bootstrap administrator token still works.
        ok(as_token(&admin, &["admin", "token", "revoke", &ro_id]));
        let out = as_token(&web_ro, &["export", &sha, "--format", "pem"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
        let out = as_token(&admin, &["admin", "token", "revoke", &ro_id]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));
        let listed: Value = serde_json::from_str(&ok(as_token(
            &admin,
            &["admin", "token", "list", "--output", "json"],
        )))
        .unwrap();
        assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    }
}
