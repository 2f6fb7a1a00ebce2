//! ACME issuance against Debian's pebble and pebble-challtestsrv (dns-01 through a
//! hook script). Pebble's ports are fixed: this binary holds this one test.

use std::time::Duration;

use certkeeper_connect::acme::AcmeConfig;
use certkeeper_server::{ServerConfig, prepare};
use certkeeper_testkit::pebble::Pebble;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn orders_a_certificate_from_an_acme_ca() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pebble = Pebble::start()
        .expect("pebble (Debian package `pebble`) must be installed; .ci/run installs it");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path());
    cfg.http = true;
    cfg.acme = Some(AcmeConfig {
        directory_url: pebble.directory.clone(),
        root_ca_file: Some(pebble.listener_ca.clone()),
        contact: vec!["mailto:pki@example.com".into()],
        dns_hook: pebble.dns_hook.clone(),
        hook_timeout: Duration::from_secs(10),
        attempts: 3,
    });
    let prepared = prepare(cfg).await.unwrap();
    let admin = prepared.created_admin_token.clone().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { prepared.launch(listener, std::future::pending()).await });
    let client = reqwest::Client::new();
    let post = |path: String, body: Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };

    let root = pebble.issuing_root_pem().unwrap();
    let root_file = dir.path().join("pebble-root.pem");
    std::fs::write(&root_file, root).unwrap();
    for (i, names) in [
        vec!["shop.acme.test", "www.shop.acme.test"],
        vec!["api.acme.test"],
    ]
    .into_iter()
    .enumerate()
    {
        let req: Value = post(
            "/api/v1/requests".into(),
            json!({"common_name": names[0], "sans": names, "key_type": "p256"}),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let id = req["id"].as_str().unwrap().to_string();
        let r = post(format!("/api/v1/requests/{id}/acme"), json!({}))
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "order {i}: {}",
            r.text().await.unwrap_or_default()
        );
        let issued: Value = r.json().await.unwrap();
        assert_eq!(issued["key_stored"], true);
        let leaf = dir.path().join(format!("leaf{i}.pem"));
        let chain = dir.path().join(format!("chain{i}.pem"));
        std::fs::write(&leaf, issued["certificate"].as_str().unwrap()).unwrap();
        std::fs::write(&chain, issued["chain"].as_str().unwrap()).unwrap();
        let verify = std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&root_file)
            .arg("-untrusted")
            .arg(&chain)
            .arg(&leaf)
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stdout)
        );
        let text = String::from_utf8(
            std::process::Command::new("openssl")
                .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
                .arg(&leaf)
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        for n in &names {
            assert!(text.contains(&format!("DNS:{n}")), "{text}");
        }
        let done: Value = client
            .get(format!("{base}/api/v1/requests/{id}"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(done["status"], "issued");
    }
    // Renewal goes back to the same ACME CA, with a new key.
    let first: Value = client
        .get(format!("{base}/api/v1/requests"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sha = first["items"][0]["certificate_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let r = post(format!("/api/v1/certificates/{sha}/renew"), json!({}))
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let renewed: Value = r.json().await.unwrap();
    assert_eq!(renewed["renewed"], sha.as_str());
    assert_ne!(renewed["certificate"]["sha256"], sha.as_str());

    // Names ACME cannot validate here are refused before anything is ordered.
    let req: Value = post(
        "/api/v1/requests".into(),
        json!({"common_name": "ip.acme.test", "sans": ["192.0.2.1"], "key_type": "p256"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let r = post(
        format!("/api/v1/requests/{}/acme", req["id"].as_str().unwrap()),
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}
