//! The vulnerability-scan benchmark's fixture set (bench/vulnscan.sh), out of process:
//! `openssl s_server`s, `gnutls-serv` in a network namespace of its own, and the
//! OpenSSL-1.0.1-like flawed peer, all reachable on 127.0.0.1 only. Dev-only.
//!
//!   vuln-fixtures DIR
//!
//! Writes DIR/root.pem (the CA every leaf chains to; leaves are for `www.test`) and,
//! once every server listens, DIR/fixtures.tsv ("NAME<TAB>PORT" lines). Runs until
//! SIGTERM or SIGINT, then stops every server.

use std::path::PathBuf;

use anyhow::{Context, Result};
use certkeeper_testkit::flawed::{self, Flaws};
use certkeeper_testkit::{IsolatedServer, KeyKind, LeafSpec, OpensslServer, TestPki};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: vuln-fixtures DIR")?,
    );
    std::fs::create_dir_all(&dir)?;
    let pki = TestPki::new()?;
    std::fs::copy(&pki.root.cert_path, dir.join("root.pem"))?;
    let ecdsa = pki.leaf(&LeafSpec::new("www.test", KeyKind::EcdsaP256))?;
    let rsa = pki.leaf(&LeafSpec::new("www.test", KeyKind::Rsa2048))?;
    let int = Some(pki.intermediate.cert_path.as_path());
    // s_server's automatic DH follows the certificate's strength (2048 bits for an
    // RSA-2048 leaf); a 1024-bit group has to be given.
    let dh1024 = dir.join("dh1024.pem");
    let st = std::process::Command::new("openssl")
        .args(["dhparam", "-out"])
        .arg(&dh1024)
        .arg("1024")
        .stderr(std::process::Stdio::null())
        .status()
        .context("openssl dhparam")?;
    anyhow::ensure!(st.success(), "openssl dhparam failed");
    let dh1024 = dh1024.to_str().context("non-UTF-8 directory")?;

    let mut ports: Vec<(&str, u16)> = Vec::new();
    let mut openssl = Vec::new();
    let s_servers: [(&str, &certkeeper_testkit::Issued, &[&str]); 5] = [
        ("openssl-modern", &ecdsa, &[]),
        (
            "openssl-legacy",
            &rsa,
            &[
                "-min_protocol",
                "TLSv1",
                "-cipher",
                "ALL:COMPLEMENTOFALL:@SECLEVEL=0",
            ],
        ),
        (
            "openssl-tls13-only",
            &ecdsa,
            &["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"],
        ),
        ("openssl-client-reneg", &ecdsa, &["-client_renegotiation"]),
        (
            "openssl-dhe1024",
            &rsa,
            &[
                "-tls1_2",
                "-cipher",
                "DHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0",
                "-dhparam",
                dh1024,
            ],
        ),
    ];
    for (name, leaf, extra) in s_servers {
        let s = OpensslServer::start(&leaf.cert_path, &leaf.key_path, int, extra)
            .with_context(|| name.to_string())?;
        ports.push((name, s.port));
        openssl.push(s);
    }
    let gnutls = IsolatedServer::gnutls(
        &rsa.chain_path,
        &rsa.key_path,
        "NORMAL:+ARCFOUR-128:+3DES-CBC:+VERS-TLS1.0:+VERS-TLS1.1:%DISABLE_SAFE_RENEGOTIATION",
    )
    .context("gnutls-serv")?;
    ports.push(("gnutls-legacy", gnutls.port));

    let none = Flaws::default();
    let mut peers = Vec::new();
    for (name, flaws) in [
        ("flawed-patched", none),
        (
            "flawed-heartbleed",
            Flaws {
                heartbleed: true,
                ..none
            },
        ),
        (
            "flawed-ccs",
            Flaws {
                ccs_injection: true,
                ..none
            },
        ),
        (
            "flawed-compression",
            Flaws {
                compression: true,
                ..none
            },
        ),
    ] {
        let p = flawed::start(rsa.der.clone(), flaws).await?;
        ports.push((name, p.addr.port()));
        peers.push(p);
    }

    let tsv: String = ports.iter().map(|(n, p)| format!("{n}\t{p}\n")).collect();
    let tmp = dir.join("fixtures.tsv.tmp");
    std::fs::write(&tmp, tsv)?;
    std::fs::rename(&tmp, dir.join("fixtures.tsv"))?;

    let mut term = signal(SignalKind::terminate())?;
    let mut int_sig = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int_sig.recv() => {}
    }
    drop(peers);
    drop(gnutls);
    drop(openssl);
    Ok(())
}
