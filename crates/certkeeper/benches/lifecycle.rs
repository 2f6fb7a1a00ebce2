//! Keys and certificates (issue 5): CSR+key generation, PKCS#12 import, and a renewal
//! run against an internal CA, each beside OpenSSL where OpenSSL does the same job.
//!
//! `cargo bench -p certkeeper --bench lifecycle`
//!
//! 1. CSR + new key per second, RSA 2048 and P-256: certkeeper's path
//!    (`certkeeper_pki::csr::generate`) vs `openssl req -new -newkey …` (one process per
//!    request, as an administrator runs it), and OpenSSL in-process (the openssl crate)
//!    for the library's own speed. `CK_BENCH_CSR_SECS` (default 5) per measurement.
//! 2. PKCS#12 imports per second: certkeeper's import path (`import::read`: parse, key
//!    match, chain order) vs `openssl pkcs12 -in … -nodes` parsing the same files, and
//!    whole imports through the API (checks, sealing the key, storing) on SQLite.
//!    `CK_BENCH_P12` (default 200) distinct files.
//! 3. One renewal run that finds `CK_BENCH_RENEWALS` (default 10,000) certificates due
//!    against an internal CA, end to end: the server in-process on SQLite over HTTPS,
//!    `POST /api/v1/renewals` until nothing is left (each pass renews at most 100:
//!    new P-256 key and CSR, key sealed, issued by the CA, stored).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use certkeeper_pki::csr::{CsrRequest, KeyAlgorithm, San};
use certkeeper_pki::import::{ImportInput, export};
use serde_json::{Value, json};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Run `f` repeatedly for at least `secs` (and at least 3 times); operations per second.
fn rate(secs: f64, mut f: impl FnMut()) -> (f64, usize) {
    let t = Instant::now();
    let mut n = 0;
    while n < 3 || t.elapsed().as_secs_f64() < secs {
        f();
        n += 1;
    }
    (n as f64 / t.elapsed().as_secs_f64(), n)
}

fn openssl_cli(args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl {args:?}");
}

/// OpenSSL in-process: a new key and a signed request with one DNS SAN.
fn openssl_lib_csr(rsa: bool) {
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::{X509NameBuilder, X509ReqBuilder, extension::SubjectAlternativeName};
    let key = if rsa {
        PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap()
    } else {
        let g = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&g).unwrap()).unwrap()
    };
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "www.bench.example")
        .unwrap();
    let mut b = X509ReqBuilder::new().unwrap();
    b.set_subject_name(&name.build()).unwrap();
    b.set_pubkey(&key).unwrap();
    let mut exts = openssl::stack::Stack::new().unwrap();
    exts.push(
        SubjectAlternativeName::new()
            .dns("www.bench.example")
            .build(&b.x509v3_context(None))
            .unwrap(),
    )
    .unwrap();
    b.add_extensions(&exts).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    std::hint::black_box(b.build().to_der().unwrap());
    std::hint::black_box(key.private_key_to_pem_pkcs8().unwrap());
}

fn csr_generation() {
    let secs = env_usize("CK_BENCH_CSR_SECS", 5) as f64;
    println!("CSR + new key per second ({secs:.0} s each):");
    println!(
        "  {:<8} {:>12} {:>16} {:>8} {:>18}",
        "key", "certkeeper", "openssl req CLI", "ratio", "openssl in-process"
    );
    for (label, alg, cli_key) in [
        ("RSA 2048", KeyAlgorithm::Rsa2048, "rsa:2048"),
        ("P-256", KeyAlgorithm::P256, "ec"),
    ] {
        let req = CsrRequest {
            common_name: "www.bench.example".into(),
            sans: vec![San::Dns("www.bench.example".into())],
            organization: Some("Bench".into()),
            key: alg,
            ..Default::default()
        };
        let (ours, _) = rate(secs, || {
            std::hint::black_box(certkeeper_pki::csr::generate(&req).unwrap());
        });
        let mut args = vec!["req", "-new", "-newkey", cli_key];
        if alg == KeyAlgorithm::P256 {
            args.extend(["-pkeyopt", "ec_paramgen_curve:P-256"]);
        }
        args.extend([
            "-nodes",
            "-keyout",
            "/dev/null",
            "-out",
            "/dev/null",
            "-subj",
            "/O=Bench/CN=www.bench.example",
            "-addext",
            "subjectAltName=DNS:www.bench.example",
        ]);
        let (cli, _) = rate(secs, || openssl_cli(&args));
        let rsa = alg == KeyAlgorithm::Rsa2048;
        let (lib, _) = rate(secs, || openssl_lib_csr(rsa));
        println!(
            "  {label:<8} {ours:>10.1}/s {cli:>14.1}/s {:>7.2}x {lib:>16.1}/s",
            ours / cli
        );
    }
}

/// `n` distinct PKCS#12 files (P-256 leaf + intermediate), certkeeper's export format
/// (AES-256, PBKDF2, SHA-256 MAC, as `openssl pkcs12 -export` writes by default).
fn p12_files(n: usize) -> (Vec<Vec<u8>>, tempfile::TempDir) {
    let pki = certkeeper_testkit::TestPki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let int = certkeeper_pki::pem_to_ders(pki.intermediate.cert_pem.as_bytes())
        .unwrap()
        .remove(0);
    let files = (0..n)
        .map(|i| {
            let leaf = pki
                .leaf(&certkeeper_testkit::LeafSpec::new(
                    &format!("p12-{i}.bench.example"),
                    certkeeper_testkit::KeyKind::EcdsaP256,
                ))
                .unwrap();
            let key = openssl::pkey::PKey::private_key_from_pem(leaf.key_pem.as_bytes())
                .unwrap()
                .private_key_to_pkcs8()
                .unwrap();
            let p12 = export::pkcs12(
                &leaf.der,
                std::slice::from_ref(&int),
                Some(&key),
                "bench-password",
                "bench",
            )
            .unwrap();
            std::fs::write(dir.path().join(format!("{i}.p12")), &p12).unwrap();
            p12
        })
        .collect();
    (files, dir)
}

async fn p12_imports(server: &Server) {
    let n = env_usize("CK_BENCH_P12", 200);
    let (files, dir) = p12_files(n);
    let now = time::OffsetDateTime::now_utc();
    let t = Instant::now();
    for f in &files {
        let input = ImportInput {
            pkcs12: Some(f.clone()),
            pkcs12_password: Some(b"bench-password".to_vec()),
            ..Default::default()
        };
        std::hint::black_box(certkeeper_pki::import::read(&input, now).unwrap());
    }
    let ours = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..n {
        let path = dir.path().join(format!("{i}.p12"));
        openssl_cli(&[
            "pkcs12",
            "-in",
            path.to_str().unwrap(),
            "-passin",
            "pass:bench-password",
            "-nodes",
            "-out",
            "/dev/null",
        ]);
    }
    let cli = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for f in &files {
        let r = server
            .post(
                "/api/v1/certificates/import",
                &json!({"pkcs12": base64::engine::general_purpose::STANDARD.encode(f), "pkcs12_password": "bench-password"}),
            )
            .await;
        assert_eq!(r["key_stored"], true, "{r}");
    }
    let api = n as f64 / t.elapsed().as_secs_f64();
    println!(
        "PKCS#12 imports per second ({n} distinct files, P-256 leaf + intermediate, AES-256):"
    );
    println!(
        "  certkeeper import path {ours:.1}/s, openssl pkcs12 CLI {cli:.1}/s, ratio {:.2}x; whole API import (checks, key sealed, stored on SQLite) {api:.1}/s",
        ours / cli
    );
}

struct Server {
    base: String,
    admin: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let prepared = certkeeper_server::prepare(certkeeper_server::ServerConfig::new(dir.path()))
            .await
            .unwrap();
        let admin = prepared.created_admin_token.clone().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            prepared
                .launch(listener, std::future::pending())
                .await
                .unwrap()
        });
        let pem = std::fs::read(dir.path().join("server.crt")).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .timeout(Duration::from_secs(600))
            .build()
            .unwrap();
        Server {
            base: format!("https://{addr}"),
            admin,
            client,
            _dir: dir,
        }
    }

    async fn post(&self, path: &str, body: &Value) -> Value {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }
}

async fn renewal_run(server: Arc<Server>) {
    let n = env_usize("CK_BENCH_RENEWALS", 10_000);
    server
        .post(
            "/api/v1/cas",
            &json!({"name": "bench", "common_name": "Bench Root", "profile": {"validity_days": 30}}),
        )
        .await;
    // n certificates valid for 3 days (due after 2); their renewals get the profile's
    // 30 days, so they are not due again in the same run.
    let t = Instant::now();
    let parallel = 4;
    let tasks: Vec<_> = (0..parallel)
        .map(|w| {
            let server = server.clone();
            tokio::spawn(async move {
                for i in (w..n).step_by(parallel) {
                    let req = server
                        .post(
                            "/api/v1/requests",
                            &json!({"common_name": format!("r{i}.bench.example"), "key_type": "p256"}),
                        )
                        .await;
                    server
                        .post(
                            "/api/v1/cas/bench/issue",
                            &json!({"request_id": req["id"], "validity_days": 3}),
                        )
                        .await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!("set up {n} issued certificates in {:.1?}", t.elapsed());
    let at = (time::OffsetDateTime::now_utc() + time::Duration::hours(60))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let t = Instant::now();
    let (mut renewed, mut passes) = (0, 0);
    loop {
        let r = server.post("/api/v1/renewals", &json!({"at": at})).await;
        assert_eq!(r["failed"], json!([]), "{r}");
        let k = r["renewed"].as_array().unwrap().len();
        passes += 1;
        if k == 0 {
            break;
        }
        renewed += k;
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(renewed, n);
    println!(
        "renewal run, internal CA, SQLite: {renewed} certificates due, renewed in {secs:.1} s ({passes} passes of up to 100) = {:.0} renewals/s",
        renewed as f64 / secs
    );
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    println!(
        "{}",
        String::from_utf8_lossy(
            &Command::new("openssl")
                .arg("version")
                .output()
                .unwrap()
                .stdout
        )
        .trim()
    );
    tokio::task::spawn_blocking(csr_generation).await.unwrap();
    let server = Arc::new(Server::start().await);
    p12_imports(&server).await;
    renewal_run(server).await;
}
