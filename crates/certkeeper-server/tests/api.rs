//! The API in-process: a real server on 127.0.0.1:0 with a temp data dir, spoken to
//! over real HTTP(S) with reqwest.

use std::collections::BTreeSet;

use base64::Engine;
use certkeeper_server::{Prepared, ServerConfig, prepare};
use certkeeper_testkit::{KeyKind, LeafSpec, TestPki, db};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;

mod common;
use common::*;

async fn error_code(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

async fn enroll(s: &Running) -> (String, String) {
    let tok: Value = s
        .admin_post("/api/v1/agents/enrollment-tokens", &json!({"uses": 1}))
        .await
        .json()
        .await
        .unwrap();
    let r: Value = s
        .client
        .post(format!("{}/api/v1/agents/enroll", s.base))
        .bearer_auth(tok["token"].as_str().unwrap())
        .json(&json!({"hostname": "scanner1", "version": "0.1.0"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        r["agent_id"].as_str().unwrap().to_string(),
        r["credential"].as_str().unwrap().to_string(),
    )
}

fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

fn report(id: &str, observations: Vec<Value>) -> Value {
    json!({
        "report_id": id,
        "agent_version": "0.1.0",
        "hostname": "scanner1",
        "started_at": "2026-11-24T08:00:00Z",
        "finished_at": "2026-11-24T08:01:00Z",
        "watched_endpoints": 9,
        "observations": observations,
    })
}

fn tls_obs(host: &str, port: u16, chain: &[&[u8]]) -> Value {
    json!({
        "host": host, "ip": "192.0.2.7", "port": port, "sni": host,
        "seen_at": "2026-11-24T08:00:30Z",
        "outcome": {"status": "tls", "protocol": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384",
                    "chain": chain.iter().map(|d| b64(d)).collect::<Vec<_>>()}
    })
}

#[test]
fn openapi_document_lists_exactly_the_served_routes() {
    let doc: Value = serde_json::from_str(certkeeper_server::OPENAPI_JSON).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let served: BTreeSet<(String, String)> = certkeeper_server::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);
}

#[test]
fn report_schema_matches_the_report_type() {
    let doc: Value = serde_json::from_str(certkeeper_server::OPENAPI_JSON).unwrap();
    let sample = report("r", vec![tls_obs("a.test", 443, &[b"x"])]);
    let parsed: certkeeper_core::ScanReport = serde_json::from_value(sample.clone()).unwrap();
    let round = serde_json::to_value(&parsed).unwrap();
    let keys = |v: &Value| {
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    let schema = &doc["components"]["schemas"];
    assert_eq!(keys(&round), keys(&schema["ScanReport"]["properties"]));
    assert_eq!(
        keys(&round["observations"][0]),
        keys(&schema["Observation"]["properties"])
    );
    let tls = &schema["Observation"]["properties"]["outcome"]["oneOf"][0]["properties"];
    let mut outcome_keys = keys(&round["observations"][0]["outcome"]);
    outcome_keys.insert("starttls".into()); // optional, omitted when absent
    assert_eq!(outcome_keys, keys(tls));
    // The failure variant, and every failure kind the type knows, are in the schema.
    let failed = certkeeper_core::report::Outcome::Failed {
        kind: certkeeper_core::FailureKind::Reset,
        message: "m".into(),
    };
    let failed = serde_json::to_value(&failed).unwrap();
    let failed_schema = &schema["Observation"]["properties"]["outcome"]["oneOf"][1];
    assert_eq!(keys(&failed), keys(&failed_schema["properties"]));
    let kinds: Vec<&str> = failed_schema["properties"]["kind"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    use certkeeper_core::FailureKind::*;
    for k in [
        Dns,
        Refused,
        ConnectTimeout,
        HandshakeTimeout,
        NotTls,
        Handshake,
        Reset,
        Network,
    ] {
        assert!(
            kinds.contains(&k.as_str()),
            "{} missing from the schema",
            k.as_str()
        );
        let v = serde_json::to_value(k).unwrap();
        assert_eq!(v.as_str(), Some(k.as_str()), "serde name and as_str agree");
    }
}

#[tokio::test]
async fn every_call_is_authenticated_and_authorised() {
    let s = start(|_| {}).await.unwrap();
    let url = |p: &str| format!("{}{p}", s.base);
    for path in [
        "/api/v1/certificates",
        "/api/v1/endpoints",
        "/api/v1/agents",
        "/api/v1/openapi.json",
    ] {
        let r = s.client.get(url(path)).send().await.unwrap();
        assert_eq!(
            error_code(r).await,
            (StatusCode::UNAUTHORIZED, "unauthorized".into()),
            "{path}"
        );
    }
    let (_, cred) = enroll(&s).await;
    // Agents report; they cannot read the inventory or manage agents.
    for path in [
        "/api/v1/certificates",
        "/api/v1/endpoints",
        "/api/v1/agents",
    ] {
        let r = s
            .client
            .get(url(path))
            .bearer_auth(&cred)
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(r).await.0, StatusCode::FORBIDDEN, "{path}");
    }
    let r = s
        .client
        .post(url("/api/v1/agents/enrollment-tokens"))
        .bearer_auth(&cred)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The administrator cannot pose as an agent.
    let r = s
        .client
        .post(url("/api/v1/reports"))
        .bearer_auth(&s.admin)
        .json(&report("x", vec![]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = s
        .client
        .get(url("/api/v1/openapi.json"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn failed_authentication_is_rate_limited() {
    let s = start(|c| c.auth_failures_per_minute = 5).await.unwrap();
    let url = format!("{}/api/v1/certificates", s.base);
    for _ in 0..5 {
        let r = s
            .client
            .get(&url)
            .bearer_auth("ck_admin_wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = s
        .client
        .get(&url)
        .bearer_auth("ck_admin_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_auth_failures".into()
        )
    );
    // The right token still works from this address: a noisy neighbour behind the
    // same NAT or proxy cannot lock out real clients.
    let r = s
        .client
        .get(&url)
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = s.client.get(&url).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "no token is a failure too"
    );
    s.stop().await;
}

#[tokio::test]
async fn report_then_query_the_inventory_on_every_backend() {
    let pki = TestPki::new().unwrap();
    let soon = pki
        .leaf(
            &LeafSpec::new("soon.example.com", KeyKind::EcdsaP256)
                .valid_days(-80, 90)
                .names(&["soon.example.com", "www.soon.example.com"]),
        )
        .unwrap();
    let later = pki
        .leaf(&LeafSpec::new("later.example.com", KeyKind::Rsa2048).valid_days(-1, 300))
        .unwrap();
    for tdb in db::all().unwrap() {
        let url = tdb.url.clone();
        let s = start(move |c| c.database_url = Some(url)).await.unwrap();
        let (agent_id, cred) = enroll(&s).await;
        let body = report(
            "r1",
            vec![
                tls_obs("soon.example.com", 443, &[&soon.der, &pki.intermediate.der]),
                tls_obs("later.example.com", 8443, &[&later.der]),
                json!({"host": "down.example.com", "ip": "192.0.2.9", "port": 443, "sni": "down.example.com",
                       "seen_at": "2026-11-24T08:00:31Z", "outcome": {"status": "failed", "kind": "handshake", "message": "alert 40"}}),
            ],
        );
        let r = s
            .client
            .post(format!("{}/api/v1/reports", s.base))
            .bearer_auth(&cred)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", tdb.label);
        let summary: Value = r.json().await.unwrap();
        assert_eq!(summary["new_certificates"], 3);
        assert_eq!(summary["tls_endpoints"], 2);
        // Re-sent (from a spool, after a lost reply): acknowledged, nothing changes.
        let again: Value = s
            .client
            .post(format!("{}/api/v1/reports", s.base))
            .bearer_auth(&cred)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(again["duplicate"], true);

        let list: Value = s
            .client
            .get(format!(
                "{}/api/v1/certificates?expiring_within_days=30",
                s.base
            ))
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{}: {list}", tdb.label);
        let c = &items[0];
        assert_eq!(c["common_name"], "soon.example.com");
        assert_eq!(
            c["sans"],
            json!(["soon.example.com", "www.soon.example.com"])
        );
        assert_eq!(c["key_type"], "ec");
        assert_eq!(c["signature_algorithm"], "ecdsa-with-SHA256");
        assert_eq!(c["endpoints"][0]["host"], "soon.example.com");
        assert_eq!(c["endpoints"][0]["port"], 443);
        assert_eq!(c["endpoints"][0]["agent"], agent_id.as_str());
        assert_eq!(c["endpoints"][0]["protocol"], "TLSv1.3");

        let sha = c["sha256"].as_str().unwrap();
        let detail: Value = s
            .admin_get(&format!("/api/v1/certificates/{sha}"))
            .await
            .json()
            .await
            .unwrap();
        assert!(
            detail["pem"]
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert_eq!(detail["served_history"][0]["host"], "soon.example.com");

        let csv = s.admin_get("/api/v1/certificates?format=csv").await;
        assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
        let text = csv.text().await.unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "header + 3 certificates");
        assert!(lines[1].contains("soon.example.com:443"));

        let eps: Value = s.admin_get("/api/v1/endpoints").await.json().await.unwrap();
        let eps = eps["items"].as_array().unwrap();
        assert_eq!(eps.len(), 3);
        let down = eps
            .iter()
            .find(|e| e["host"] == "down.example.com")
            .unwrap();
        assert_eq!(down["last_error"]["kind"], "handshake");
        assert!(down["sha256"].is_null());

        let agents: Value = s.admin_get("/api/v1/agents").await.json().await.unwrap();
        assert_eq!(agents["items"][0]["watched_endpoints"], 9);
        assert_eq!(agents["items"][0]["hostname"], "scanner1");

        // Revocation takes effect with the next request.
        let r = s
            .client
            .delete(format!("{}/api/v1/agents/{agent_id}", s.base))
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let r = s
            .client
            .post(format!("{}/api/v1/reports", s.base))
            .bearer_auth(&cred)
            .json(&report("r2", vec![]))
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(r).await,
            (StatusCode::UNAUTHORIZED, "unauthorized".into())
        );
        s.stop().await;
    }
}

#[tokio::test]
async fn bad_reports_get_clear_errors_and_change_nothing() {
    let pki = TestPki::new().unwrap();
    let good = pki
        .leaf(&LeafSpec::new("good.test", KeyKind::EcdsaP256))
        .unwrap();
    let s = start(|c| c.max_report_bytes = 64 * 1024).await.unwrap();
    let (_, cred) = enroll(&s).await;
    let post = |body: String| {
        s.client
            .post(format!("{}/api/v1/reports", s.base))
            .bearer_auth(&cred)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let huge = report(
        "big",
        vec![tls_obs("x.test", 443, &[&vec![0x30u8; 100_000]])],
    )
    .to_string();
    assert_eq!(
        error_code(post(huge).await.unwrap()).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "report_too_large".into())
    );
    assert_eq!(
        error_code(post("{not json".into()).await.unwrap()).await,
        (StatusCode::BAD_REQUEST, "malformed_report".into())
    );
    let mut forged = report("f", vec![tls_obs("x.test", 443, &[&good.der])]);
    forged["observations"][0]["common_name"] = json!("forged");
    assert_eq!(
        error_code(post(forged.to_string()).await.unwrap()).await.1,
        "malformed_report"
    );
    let mut port0 = report("p", vec![tls_obs("x.test", 443, &[&good.der])]);
    port0["observations"][0]["port"] = json!(0);
    assert_eq!(
        error_code(post(port0.to_string()).await.unwrap()).await.1,
        "malformed_report"
    );
    let r = s.admin_get("/api/v1/certificates?bogus=1").await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );
    let r = s.admin_get("/api/v1/certificates?cursor=zzz").await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "invalid_cursor".into())
    );
    let list: Value = s
        .admin_get("/api/v1/certificates")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        0,
        "rejected reports stored nothing"
    );

    // A DER blob that does not parse is kept as a failure of that endpoint; the rest lands.
    let mixed = report(
        "m",
        vec![
            tls_obs("bad.test", 443, &[b"\x30\x03garbage"]),
            tls_obs("good.test", 443, &[&good.der]),
        ],
    );
    let r: Value = post(mixed.to_string()).await.unwrap().json().await.unwrap();
    assert_eq!(
        (r["rejected"].as_u64(), r["new_certificates"].as_u64()),
        (Some(1), Some(1))
    );
    let eps: Value = s
        .admin_get("/api/v1/endpoints?host=bad.test")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(eps["items"][0]["last_error"]["kind"], "bad_certificate");
    s.stop().await;
}

#[tokio::test]
async fn https_by_default_with_a_generated_certificate_and_one_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    install_provider();
    let first = prepare(ServerConfig::new(&d)).await.unwrap();
    let token = first
        .created_admin_token
        .clone()
        .expect("first start creates a token");
    let fp = first.certificate_fingerprint.unwrap();
    first.state.store.close().await;
    drop(first);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["admin.token", "server.key"] {
            let mode = std::fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
    }
    assert_eq!(
        std::fs::read_to_string(d.join("admin.token")).unwrap(),
        token
    );
    let pem = std::fs::read(d.join("server.crt")).unwrap();
    let der = certkeeper_pki::pem_to_ders(&pem).unwrap().remove(0);
    assert_eq!(certkeeper_pki::sha256(&der), fp);
    let second = prepare(ServerConfig::new(&d)).await.unwrap();
    assert!(
        second.created_admin_token.is_none(),
        "the token is printed once"
    );
    assert_eq!(
        second.certificate_fingerprint,
        Some(fp),
        "the certificate is kept"
    );
    second.state.store.close().await;

    let s = start(|c| c.http = false).await.unwrap();
    assert!(s.base.starts_with("https://"));
    let r = s.admin_get("/api/v1/agents").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(s.fingerprint.is_some());
    s.stop().await;
}

#[tokio::test]
async fn policy_violations_are_listed_by_rule() {
    let pki = TestPki::new().unwrap();
    let long = pki
        .leaf(&LeafSpec::new("long.example.com", KeyKind::EcdsaP256).valid_days(-1, 500))
        .unwrap();
    let s = start(|c| c.policy.max_validity_days = certkeeper_core::policy::PRESET_200)
        .await
        .unwrap();
    let r = s
        .admin_post(
            "/api/v1/certificates/import",
            &json!({"certificate": long.cert_pem}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "policy_violation");
    assert_eq!(v["error"]["violations"][0]["rule"], "max_validity");
    assert!(v["error"]["message"].as_str().unwrap().contains("200 days"));
    // Agents cannot import.
    let (_, cred) = enroll(&s).await;
    let r = s
        .client
        .post(format!("{}/api/v1/certificates/import", s.base))
        .bearer_auth(&cred)
        .json(&json!({"certificate": long.cert_pem}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    s.stop().await;
}

#[tokio::test]
async fn a_server_made_request_is_completed_by_importing_the_signed_certificate() {
    let pki = TestPki::new().unwrap();
    let s = start(|_| {}).await.unwrap();
    let r = s.admin_post("/api/v1/requests", &json!({"common_name": "app.example.com", "sans": ["api.example.com"], "country": "DE", "key_type": "p256"})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let req: Value = r.json().await.unwrap();
    assert_eq!(req["status"], "pending");
    assert_eq!(
        req["sans"],
        json!(["DNS:app.example.com", "DNS:api.example.com"])
    );
    let id = req["id"].as_str().unwrap();
    assert!(
        !req.to_string().contains("PRIVATE KEY"),
        "the key never leaves in a listing"
    );

    // A manual CA (here: openssl with the test intermediate) signs the CSR.
    let dir = tempfile::tempdir().unwrap();
    let csr = dir.path().join("app.csr");
    let crt = dir.path().join("app.crt");
    std::fs::write(&csr, req["csr"].as_str().unwrap()).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "x509",
            "-req",
            "-days",
            "90",
            "-copy_extensions",
            "copy",
            "-CAcreateserial",
            "-in",
        ])
        .arg(&csr)
        .arg("-CA")
        .arg(&pki.intermediate.cert_path)
        .arg("-CAkey")
        .arg(&pki.intermediate.key_path)
        .arg("-out")
        .arg(&crt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Importing the certificate alone picks up the request's key.
    let imported: Value = s
        .client
        .post(format!("{}/api/v1/certificates/import", s.base))
        .bearer_auth(&s.admin)
        .json(&json!({"certificate": std::fs::read_to_string(&crt).unwrap(), "chain": [pki.intermediate.cert_pem]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(imported["key_stored"], true, "{imported}");
    assert_eq!(imported["request"], id);
    let done: Value = s
        .admin_get(&format!("/api/v1/requests/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(done["status"], "issued");
    assert_eq!(done["certificate_sha256"], imported["sha256"]);

    // The exported key is the one in the certificate.
    let sha = imported["sha256"].as_str().unwrap();
    let pem = s
        .admin_post(
            &format!("/api/v1/certificates/{sha}/export"),
            &json!({"format": "pem", "with_key": true}),
        )
        .await
        .text()
        .await
        .unwrap();
    let key = dir.path().join("exported.key");
    std::fs::write(&key, &pem[pem.find("-----BEGIN PRIVATE KEY").unwrap()..]).unwrap();
    let pubkey = |args: &[&str], file: &std::path::Path| {
        std::process::Command::new("openssl")
            .args(args)
            .arg(file)
            .output()
            .unwrap()
            .stdout
    };
    assert_eq!(
        pubkey(&["pkey", "-pubout", "-in"], &key),
        pubkey(&["x509", "-noout", "-pubkey", "-in"], &crt)
    );
    s.stop().await;
}

#[tokio::test]
async fn an_internal_ca_issues_by_profile() {
    let s = start(|_| {}).await.unwrap();
    let post = |path: &str, body: Value| {
        s.client
            .post(format!("{}{path}", s.base))
            .bearer_auth(&s.admin)
            .json(&body)
            .send()
    };
    let r = post("/api/v1/cas", json!({"name": "corp", "common_name": "Corp Internal Root", "profile": {"validity_days": 30, "allowed_names": ["*.corp.example"]}}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let ca: Value = r.json().await.unwrap();
    assert_eq!(
        ca["subject"],
        "O=certkeeper internal CA, CN=Corp Internal Root"
    );
    let r = post(
        "/api/v1/cas",
        json!({"name": "corp", "common_name": "again"}),
    )
    .await
    .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::CONFLICT, "already_exists".into())
    );

    // For a pending request: the key stays on the server with the certificate.
    let req: Value = post(
        "/api/v1/requests",
        json!({"common_name": "db.corp.example", "key_type": "p256"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let r = post("/api/v1/cas/corp/issue", json!({"request_id": req["id"]}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let issued: Value = r.json().await.unwrap();
    assert_eq!(issued["key_stored"], true);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    let cert_file = dir.path().join("cert.pem");
    std::fs::write(&ca_file, ca["certificate"].as_str().unwrap()).unwrap();
    std::fs::write(&cert_file, issued["certificate"].as_str().unwrap()).unwrap();
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-purpose", "sslserver", "-CAfile"])
        .arg(&ca_file)
        .arg(&cert_file)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let text = String::from_utf8(
        std::process::Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&cert_file)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        text.contains("DNS:db.corp.example") && text.contains("TLS Web Server Authentication"),
        "{text}"
    );
    let done: Value = s
        .client
        .get(format!(
            "{}/api/v1/requests/{}",
            s.base,
            req["id"].as_str().unwrap()
        ))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["status"], "issued");
    let again = post("/api/v1/cas/corp/issue", json!({"request_id": req["id"]}))
        .await
        .unwrap();
    assert_eq!(error_code(again).await.1, "request_not_pending");

    // From a CSR made elsewhere; names outside the profile are refused; so is a
    // validity over the profile's.
    let outside = certkeeper_pki::csr::generate(&certkeeper_pki::csr::CsrRequest {
        common_name: "www.example.com".into(),
        key: certkeeper_pki::csr::KeyAlgorithm::P256,
        ..Default::default()
    })
    .unwrap();
    let r = post("/api/v1/cas/corp/issue", json!({"csr": outside.csr_pem}))
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "name_not_allowed".into())
    );
    let inside = certkeeper_pki::csr::generate(&certkeeper_pki::csr::CsrRequest {
        common_name: "web.corp.example".into(),
        key: certkeeper_pki::csr::KeyAlgorithm::Rsa2048,
        ..Default::default()
    })
    .unwrap();
    let r = post(
        "/api/v1/cas/corp/issue",
        json!({"csr": inside.csr_pem, "validity_days": 31}),
    )
    .await
    .unwrap();
    assert_eq!(error_code(r).await.0, StatusCode::BAD_REQUEST);
    let r = post(
        "/api/v1/cas/corp/issue",
        json!({"csr": inside.csr_pem, "validity_days": 7}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["key_stored"], false, "the CSR's owner keeps the key");
    let r = post("/api/v1/cas/nope/issue", json!({"csr": inside.csr_pem}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test]
async fn the_server_certificate_is_replaced_without_a_restart() {
    install_provider();
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("localhost", KeyKind::EcdsaP256).names(&["localhost", "127.0.0.1"]))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let serve = |prepared: Prepared| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            prepared
                .launch(listener, async {
                    let _ = rx.await;
                })
                .await
                .unwrap()
        });
        (format!("https://{addr}"), tx, task)
    };
    let first = prepare(ServerConfig::new(dir.path())).await.unwrap();
    let generated = first.certificate_fingerprint.unwrap();
    let admin = first.created_admin_token.clone().unwrap();
    let (base, stop, task) = serve(first).await;
    let old_pem = std::fs::read(dir.path().join("server.crt")).unwrap();
    let old_client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&old_pem).unwrap())
        .build()
        .unwrap();
    let new_client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.root.cert_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    // The generated certificate is in the inventory like any other.
    let r = old_client
        .get(format!("{base}/api/v1/certificates/{generated}"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        new_client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err(),
        "not trusted yet"
    );

    let imported: Value = old_client
        .post(format!("{base}/api/v1/certificates/import"))
        .bearer_auth(&admin)
        .json(&json!({"certificate": leaf.cert_pem, "private_key": leaf.key_pem, "chain": [pki.intermediate.cert_pem]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sha = imported["sha256"].as_str().unwrap().to_string();
    let r = old_client
        .put(format!("{base}/api/v1/server/certificate"))
        .bearer_auth(&admin)
        .json(&json!({"sha256": sha}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // New handshakes get the new certificate and its chain...
    let now: Value = new_client
        .get(format!("{base}/api/v1/server/certificate"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(now["sha256"], sha.as_str());
    // ...while the connection opened before the switch keeps working.
    let r = old_client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A certificate without a key cannot be served.
    let bare = pki
        .leaf(&LeafSpec::new("bare.test", KeyKind::EcdsaP256))
        .unwrap();
    let bare_sha: Value = new_client
        .post(format!("{base}/api/v1/certificates/import"))
        .bearer_auth(&admin)
        .json(&json!({"certificate": bare.cert_pem}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = new_client
        .put(format!("{base}/api/v1/server/certificate"))
        .bearer_auth(&admin)
        .json(&json!({"sha256": bare_sha["sha256"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "unusable_certificate".into())
    );
    let _ = stop.send(());
    task.await.unwrap();

    // After a restart the chosen certificate is still the one served.
    let again = prepare(ServerConfig::new(dir.path())).await.unwrap();
    assert_eq!(
        again.certificate_fingerprint.map(|f| f.to_string()),
        Some(sha.clone())
    );
    let (base, stop, task) = serve(again).await;
    let r = new_client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test]
async fn every_route_checks_who_calls() {
    // Sharpens `every_call_is_authenticated_and_authorised` to the whole route table;
    // a route served but missing from ROUTES fails the OpenAPI test instead.
    let s = start(|c| c.auth_failures_per_minute = 10_000)
        .await
        .unwrap();
    let (_, agent) = enroll(&s).await;
    let agent_may = [
        "/healthz",
        "/api/v1/openapi.json",
        "/api/v1/reports",
        "/api/v1/agents/enroll",
        "/api/v1/agent/jobs/claim",
        "/api/v1/agent/jobs/{id}/result",
        "/api/v1/agent/jobs/{id}",
        "/api/v1/agent/scans/{id}/results",
    ];
    for (method, path) in certkeeper_server::ROUTES {
        let url = format!(
            "{}{}",
            s.base,
            path.replace("{sha256}", &"00".repeat(32))
                .replace("{id}", "x")
                .replace("{name}", "x")
        );
        let req = |token: Option<&str>| {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = if *path == "/api/v1/agents/enroll" {
                json!({"hostname": "h", "version": "v"})
            } else {
                json!({})
            };
            let mut r = s.client.request(m, &url).json(&body);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send()
        };
        let anonymous = req(None).await.unwrap().status();
        let as_agent = req(Some(&agent)).await.unwrap().status();
        let as_admin = req(Some(&s.admin)).await.unwrap().status();
        if *path == "/healthz" {
            assert_eq!(
                (anonymous, as_agent, as_admin),
                (StatusCode::OK, StatusCode::OK, StatusCode::OK)
            );
            continue;
        }
        assert_eq!(
            anonymous,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token"
        );
        if !agent_may.contains(path) {
            assert_eq!(
                as_agent,
                StatusCode::FORBIDDEN,
                "{method} {path} as an agent"
            );
        }
        match *path {
            "/api/v1/reports" => assert_eq!(as_admin, StatusCode::FORBIDDEN, "only agents report"),
            "/api/v1/agent/jobs/claim"
            | "/api/v1/agent/jobs/{id}/result"
            | "/api/v1/agent/jobs/{id}"
            | "/api/v1/agent/scans/{id}/results" => {
                assert_eq!(as_admin, StatusCode::FORBIDDEN, "only agents take jobs")
            }
            "/api/v1/agents/enroll" => assert_eq!(
                as_admin,
                StatusCode::UNAUTHORIZED,
                "enrollment takes an enrollment token"
            ),
            _ => assert!(
                as_admin != StatusCode::UNAUTHORIZED && as_admin != StatusCode::FORBIDDEN,
                "{method} {path} as admin: {as_admin}"
            ),
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn issued_certificates_renew_two_thirds_through_with_a_new_key() {
    let s = start(|_| {}).await.unwrap();
    let post = |path: String, body: Value| {
        s.client
            .post(format!("{}{path}", s.base))
            .bearer_auth(&s.admin)
            .json(&body)
            .send()
    };
    post(
        "/api/v1/cas".into(),
        json!({"name": "corp", "common_name": "Corp Root", "profile": {"validity_days": 30}}),
    )
    .await
    .unwrap();
    let req: Value = post(
        "/api/v1/requests".into(),
        json!({"common_name": "db.corp.example", "key_type": "p256"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let first: Value = post(
        "/api/v1/cas/corp/issue".into(),
        json!({"request_id": req["id"]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let at = |days: i64| {
        (time::OffsetDateTime::now_utc() + time::Duration::days(days))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    // Not due yet at day 19 of 30; due at day 21.
    let early: Value = post("/api/v1/renewals".into(), json!({"at": at(19)}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(early["renewed"].as_array().unwrap().len(), 0, "{early}");
    let due: Value = post("/api/v1/renewals".into(), json!({"at": at(21)}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let renewed = due["renewed"].as_array().unwrap();
    assert_eq!(renewed.len(), 1, "{due}");
    assert_eq!(renewed[0]["renewed"], first["sha256"]);
    let second = &renewed[0]["certificate"];
    assert_ne!(second["sha256"], first["sha256"]);
    assert_eq!(second["key_stored"], true);
    let spki = |pem: &str| {
        let der = certkeeper_pki::pem_to_ders(pem.as_bytes())
            .unwrap()
            .remove(0);
        certkeeper_pki::cert_spki_sha256(&der).unwrap()
    };
    assert_ne!(
        spki(first["certificate"].as_str().unwrap()),
        spki(second["certificate"].as_str().unwrap()),
        "a new key at each renewal"
    );
    // Renewed once: a later pass does not renew the first certificate again (only its
    // successor, itself issued with 30 days and so due by then).
    let again: Value = post("/api/v1/renewals".into(), json!({"at": at(21)}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let olds: Vec<&Value> = again["renewed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["renewed"])
        .collect();
    assert!(!olds.contains(&&first["sha256"]), "{again}");
    assert_eq!(olds, [&second["sha256"]]);
    let latest = again["renewed"][0]["certificate"].clone();
    // Renewing by hand works at any time; imported certificates are not the server's to renew.
    let r = post(
        format!(
            "/api/v1/certificates/{}/renew",
            latest["sha256"].as_str().unwrap()
        ),
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let pki = TestPki::new().unwrap();
    let other = pki
        .leaf(&LeafSpec::new("x.test", KeyKind::EcdsaP256))
        .unwrap();
    let imported: Value = post(
        "/api/v1/certificates/import".into(),
        json!({"certificate": other.cert_pem}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let r = post(
        format!(
            "/api/v1/certificates/{}/renew",
            imported["sha256"].as_str().unwrap()
        ),
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "not_renewable".into())
    );
    s.stop().await;
}

#[tokio::test]
async fn rotating_the_kek_rewraps_every_key_while_the_server_runs() {
    use certkeeper_pki::vault::Kek;
    use certkeeper_store::KeyHolder;
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.kek");
    let new = dir.path().join("new.kek");
    std::fs::write(&old, Kek::generate().unwrap()).unwrap();
    std::fs::write(&new, Kek::generate().unwrap()).unwrap();
    let new_id = Kek::from_material(&std::fs::read(&new).unwrap())
        .unwrap()
        .id()
        .to_string();
    let config = |current: &std::path::Path, previous: Vec<std::path::PathBuf>| {
        let mut c = ServerConfig::new(dir.path().join("data"));
        c.http = true;
        c.kek_file = Some(current.to_path_buf());
        c.previous_kek_files = previous;
        c
    };
    let serve = |prepared: Prepared| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            prepared
                .launch(listener, async {
                    let _ = rx.await;
                })
                .await
                .unwrap()
        });
        (base, tx, task)
    };

    // Under the old KEK: a certificate with its key, and a pending request's key.
    let first = prepare(config(&old, vec![])).await.unwrap();
    let admin = first.created_admin_token.clone().unwrap();
    let (base, stop, task) = serve(first).await;
    let client = reqwest::Client::new();
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("rotate.test", KeyKind::EcdsaP256))
        .unwrap();
    let imported: Value = client
        .post(format!("{base}/api/v1/certificates/import"))
        .bearer_auth(&admin)
        .json(&json!({"certificate": leaf.cert_pem, "private_key": leaf.key_pem}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sha = imported["sha256"].as_str().unwrap().to_string();
    let req: Value = client
        .post(format!("{base}/api/v1/requests"))
        .bearer_auth(&admin)
        .json(&json!({"common_name": "pending.test", "key_type": "p256"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let _ = stop.send(());
    task.await.unwrap();

    // The new KEK in force, the old one kept for re-wrapping: everything moves over.
    let second = prepare(config(&new, vec![old.clone()])).await.unwrap();
    let store = second.state.store.clone();
    let (base, stop, task) = serve(second).await;
    let mut left = usize::MAX;
    for _ in 0..200 {
        left = store
            .keys_not_under(KeyHolder::Certificate, &new_id, 10)
            .await
            .unwrap()
            .len()
            + store
                .keys_not_under(KeyHolder::Request, &new_id, 10)
                .await
                .unwrap()
                .len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(left, 0, "every key re-wrapped under the new KEK");
    // Keys stay usable while it runs.
    let r = client
        .post(format!("{base}/api/v1/certificates/{sha}/export"))
        .bearer_auth(&admin)
        .json(&json!({"format": "pem", "with_key": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let _ = stop.send(());
    task.await.unwrap();

    // The old KEK can go: both keys open with the new one alone.
    let third = prepare(config(&new, vec![])).await.unwrap();
    let (base, stop, task) = serve(third).await;
    let pem = client
        .post(format!("{base}/api/v1/certificates/{sha}/export"))
        .bearer_auth(&admin)
        .json(&json!({"format": "pem", "with_key": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(pem.contains("BEGIN PRIVATE KEY"), "{pem}");
    let r = client
        .post(format!("{base}/api/v1/cas"))
        .bearer_auth(&admin)
        .json(&json!({"name": "rot", "common_name": "Rot Root"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = client
        .post(format!("{base}/api/v1/cas/rot/issue"))
        .bearer_auth(&admin)
        .json(&json!({"request_id": req["id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "the pending request's key opens too"
    );
    let _ = stop.send(());
    task.await.unwrap();
}

/// Create a scoped token as the administrator; returns (id, secret).
async fn scoped_token(
    s: &Running,
    name: &str,
    team: Option<&str>,
    perms: &[&str],
) -> (String, String) {
    let r = s
        .admin_post(
            "/api/v1/tokens",
            &json!({"name": name, "team": team, "permissions": perms}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED, "token {name}");
    let v: Value = r.json().await.unwrap();
    (
        v["id"].as_str().unwrap().to_string(),
        v["token"].as_str().unwrap().to_string(),
    )
}

impl Running {
    /// `METHOD base+path` with a JSON body and `token`.
    async fn call(&self, method: &str, token: &str, path: &str, body: &Value) -> reqwest::Response {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        self.client
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

#[test]
fn every_route_declares_what_it_needs() {
    let served: BTreeSet<(&str, &str)> = certkeeper_server::ROUTES.iter().copied().collect();
    let declared: BTreeSet<(&str, &str)> = certkeeper_server::ROUTE_NEEDS
        .iter()
        .map(|(m, p, _)| (*m, *p))
        .collect();
    assert_eq!(served, declared);
    assert_eq!(
        declared.len(),
        certkeeper_server::ROUTE_NEEDS.len(),
        "declared once"
    );
}

#[tokio::test]
async fn every_route_needs_its_permission() {
    use certkeeper_core::access::Permission;
    use certkeeper_server::Need;
    for tdb in db::all().unwrap() {
        let url = tdb.url.clone();
        let s = start(move |c| {
            c.auth_failures_per_minute = 10_000;
            c.database_url = Some(url);
        })
        .await
        .unwrap();
        // For each permission, a token holding only it and one holding all the others.
        let mut holding = std::collections::HashMap::new();
        let mut lacking = std::collections::HashMap::new();
        for p in Permission::ALL {
            let (_, has) = scoped_token(&s, &format!("has-{p}"), None, &[p.as_str()]).await;
            let others: Vec<&str> = Permission::ALL
                .iter()
                .filter(|q| **q != p && **q != Permission::Admin)
                .map(|q| q.as_str())
                .collect();
            let (_, lacks) = scoped_token(&s, &format!("lacks-{p}"), None, &others).await;
            holding.insert(p, has);
            lacking.insert(p, lacks);
        }
        for (method, path, need) in certkeeper_server::ROUTE_NEEDS {
            let concrete = path
                .replace("{sha256}", &"00".repeat(32))
                .replace("{id}", "x")
                .replace("{name}", "x");
            let m = method.to_uppercase();
            match need {
                Need::Permission(p) => {
                    let r = s.call(&m, &lacking[p], &concrete, &json!({})).await;
                    assert_eq!(
                        error_code(r).await,
                        (StatusCode::FORBIDDEN, "missing_permission".into()),
                        "{method} {path} without {p} ({})",
                        tdb.label
                    );
                    let r = s.call(&m, &holding[p], &concrete, &json!({})).await;
                    let st = r.status();
                    assert!(
                        st != StatusCode::UNAUTHORIZED && st != StatusCode::FORBIDDEN,
                        "{method} {path} with {p}: {st} {}",
                        r.text().await.unwrap()
                    );
                }
                Need::Authenticated => {
                    let r = s
                        .call(&m, &holding[&Permission::Read], &concrete, &json!({}))
                        .await;
                    assert_eq!(r.status(), StatusCode::OK, "{method} {path}");
                }
                Need::Public | Need::Enrollment | Need::Agent => {
                    // Checked by `every_route_checks_who_calls`: not a scoped token's business.
                    let r = s
                        .call(&m, &holding[&Permission::Admin], &concrete, &json!({}))
                        .await;
                    assert_ne!(
                        r.status(),
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "{method} {path}"
                    );
                }
            }
        }
        // Refusals are audited with who tried.
        let audit: Value = s.admin_get("/api/v1/audit").await.json().await.unwrap();
        assert!(
            audit["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == "denied"
                    && e["actor"] == "token:lacks-admin"
                    && e["subject"] == "admin GET /api/v1/tokens"),
            "{audit}"
        );
        s.stop().await;
    }
}

#[tokio::test]
async fn scoped_tokens_are_shown_once_and_revoked_at_once_on_every_replica() {
    for tdb in db::all().unwrap() {
        let kek = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let admin = "ck_admin_preset_for_two_replicas_000000".to_string();
        let cfg = |c: &mut ServerConfig| {
            c.database_url = Some(tdb.url.clone());
            c.kek = Some(kek.clone());
            c.admin_token = Some(admin.clone());
        };
        let a = start(cfg).await.unwrap();
        let b = start(cfg).await.unwrap();
        let r = a
            .admin_post(
                "/api/v1/tokens",
                &json!({"name": "ci-web", "team": "web", "permissions": ["read", "import"]}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let created: Value = r.json().await.unwrap();
        let secret = created["token"].as_str().unwrap().to_string();
        assert!(secret.starts_with("ck_token_"));
        assert_eq!(created["permissions"], json!(["read", "import"]));
        assert_eq!(created["team"], "web");
        assert!(
            created["warnings"][0]
                .as_str()
                .unwrap()
                .contains("[policy.teams.web]"),
            "a team without a policy of its own is pointed out"
        );
        let id = created["id"].as_str().unwrap().to_string();
        // Listed on the other replica, never with the secret.
        let listed = b.admin_get("/api/v1/tokens").await.text().await.unwrap();
        assert!(
            listed.contains("ci-web") && !listed.contains(&secret),
            "{listed}"
        );
        assert!(!listed.contains("token_hash") && !listed.contains("\"token\""));
        // It works on both; it may read but not manage tokens.
        for s in [&a, &b] {
            let r = s
                .call("GET", &secret, "/api/v1/certificates", &json!({}))
                .await;
            assert_eq!(r.status(), StatusCode::OK);
            let r = s.call("GET", &secret, "/api/v1/tokens", &json!({})).await;
            assert_eq!(
                error_code(r).await,
                (StatusCode::FORBIDDEN, "missing_permission".into())
            );
        }
        // Bad requests, each with its code; nothing is created.
        for (body, code, status) in [
            (
                json!({"name": "x", "permissions": ["read", "write"]}),
                "invalid_request",
                StatusCode::BAD_REQUEST,
            ),
            (
                json!({"name": "x", "permissions": []}),
                "invalid_request",
                StatusCode::BAD_REQUEST,
            ),
            (
                json!({"name": "x", "team": "web", "permissions": ["admin"]}),
                "invalid_request",
                StatusCode::BAD_REQUEST,
            ),
            (
                json!({"name": "a b", "permissions": ["read"]}),
                "invalid_request",
                StatusCode::BAD_REQUEST,
            ),
            (
                json!({"name": "ci-web", "permissions": ["read"]}),
                "already_exists",
                StatusCode::CONFLICT,
            ),
            (
                json!({"name": "x", "permissions": ["read"], "extra": 1}),
                "invalid_request",
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let r = a.admin_post("/api/v1/tokens", &body).await;
            assert_eq!(error_code(r).await, (status, code.into()), "{body}");
        }
        let listed: Value = a.admin_get("/api/v1/tokens").await.json().await.unwrap();
        assert_eq!(listed["items"].as_array().unwrap().len(), 1);
        // Revoked on one replica: refused on the other with the next request.
        let r = a
            .call(
                "DELETE",
                &admin,
                &format!("/api/v1/tokens/{id}"),
                &json!({}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let r = b
            .call("GET", &secret, "/api/v1/certificates", &json!({}))
            .await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::UNAUTHORIZED, "unauthorized".into())
        );
        let r = b
            .call(
                "DELETE",
                &admin,
                &format!("/api/v1/tokens/{id}"),
                &json!({}),
            )
            .await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::NOT_FOUND, "not_found".into())
        );
        // The bootstrap administrator token keeps working; the log says who did what.
        let audit: Value = b.admin_get("/api/v1/audit").await.json().await.unwrap();
        let actions: Vec<(&str, &str)> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap()))
            .collect();
        assert_eq!(
            &actions[..4],
            [
                ("admin", "revoke_token"),
                ("token:ci-web (team web)", "denied"),
                ("token:ci-web (team web)", "denied"),
                ("admin", "create_token")
            ]
        );
        assert!(!audit.to_string().contains(&secret));
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test]
async fn team_tokens_follow_their_team_policy_and_act_on_their_own_certificates() {
    use certkeeper_core::policy::PolicyOverride;
    let pki = TestPki::new().unwrap();
    let web_leaf = pki
        .leaf(&LeafSpec::new("a.web.example", KeyKind::EcdsaP256).valid_days(-1, 90))
        .unwrap();
    let other_leaf = pki
        .leaf(&LeafSpec::new("www.other.example", KeyKind::EcdsaP256).valid_days(-1, 90))
        .unwrap();
    let long_leaf = pki
        .leaf(&LeafSpec::new("b.web.example", KeyKind::EcdsaP256).valid_days(-1, 200))
        .unwrap();
    for tdb in db::all().unwrap() {
        let url = tdb.url.clone();
        let s = start(move |c| {
            c.database_url = Some(url);
            c.policy.teams.insert(
                "web".into(),
                PolicyOverride {
                    max_validity_days: Some(100),
                    allowed_names: Some(vec!["*.web.example".into()]),
                    ..Default::default()
                },
            );
        })
        .await
        .unwrap();
        let all = ["read", "import", "request", "issue", "export_key"];
        let (_, web) = scoped_token(&s, "web", Some("web"), &all).await;
        let (_, web_ro) = scoped_token(&s, "web-ro", Some("web"), &["read"]).await;
        let (_, db_team) = scoped_token(&s, "db", Some("db"), &all).await;
        let (_, ops) = scoped_token(&s, "ops", None, &["read", "export_key"]).await;
        let sr = &s;
        let import = |token: &str, leaf: &certkeeper_testkit::Issued, key: bool| {
            let mut body =
                json!({"certificate": leaf.cert_pem, "chain": [pki.intermediate.cert_pem]});
            if key {
                body["private_key"] = json!(leaf.key_pem);
            }
            let token = token.to_string();
            async move {
                sr.call("POST", &token, "/api/v1/certificates/import", &body)
                    .await
            }
        };

        // Imports are judged by the team's policy; the refusal names rule and team.
        let r = import(&web, &other_leaf, true).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "policy_violation");
        assert_eq!(v["error"]["team"], "web");
        assert_eq!(v["error"]["violations"][0]["rule"], "name");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("team web"),
            "{v}"
        );
        let r = import(&web, &long_leaf, false).await;
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["violations"][0]["rule"], "max_validity", "{v}");
        // Other teams and the server-wide policy are not bound by web's rules.
        let r = import(&db_team, &long_leaf, false).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.json::<Value>().await.unwrap()["team"], "db");
        let r = import(&web, &web_leaf, true).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let imported: Value = r.json().await.unwrap();
        assert_eq!(imported["team"], "web");
        let sha = imported["sha256"].as_str().unwrap().to_string();
        // Everyone who reads sees whose it is.
        let shown: Value = s
            .call(
                "GET",
                &db_team,
                &format!("/api/v1/certificates/{sha}"),
                &json!({}),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            (shown["managed"].as_bool(), shown["team"].as_str()),
            (Some(true), Some("web"))
        );
        // Another team cannot take it over, nor can the read-only token import.
        let r = import(&db_team, &web_leaf, false).await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::FORBIDDEN, "other_team".into())
        );
        let r = import(&web_ro, &web_leaf, false).await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::FORBIDDEN, "missing_permission".into())
        );

        // Export: the key needs export_key, and a team exports its own certificates only.
        let export = |token: &str, with_key: bool| {
            let (token, path) = (
                token.to_string(),
                format!("/api/v1/certificates/{sha}/export"),
            );
            async move {
                sr.call(
                    "POST",
                    &token,
                    &path,
                    &json!({"format": "pem", "with_key": with_key}),
                )
                .await
            }
        };
        let pem = export(&web, true).await.text().await.unwrap();
        assert!(pem.contains("BEGIN PRIVATE KEY"), "{pem}");
        let r = export(&web_ro, false).await;
        assert_eq!(r.status(), StatusCode::OK, "the certificate alone is read");
        let r = export(&web_ro, true).await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::FORBIDDEN, "missing_permission".into())
        );
        let r = export(&db_team, true).await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::FORBIDDEN, "other_team".into())
        );
        let r = export(&db_team, false).await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::FORBIDDEN, "other_team".into())
        );
        let r = export(&ops, true).await;
        assert_eq!(r.status(), StatusCode::OK, "server-wide tokens export any");
        // Every key export is audited, the refused ones with who tried; no key material.
        let audit: Value = s.admin_get("/api/v1/audit").await.json().await.unwrap();
        let of_sha: Vec<(String, String)> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["subject"] == sha.as_str()
                    && e["action"].as_str().unwrap().starts_with("export_key")
            })
            .map(|e| {
                (
                    e["actor"].as_str().unwrap().into(),
                    e["action"].as_str().unwrap().into(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = [
            ("token:ops", "export_key"),
            ("token:db (team db)", "export_key_denied"),
            ("token:web-ro (team web)", "export_key_denied"),
            ("token:web (team web)", "export_key"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(of_sha, want);
        let key_body: String = web_leaf
            .key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let text = audit.to_string();
        assert!(!text.contains("PRIVATE KEY") && !text.contains(&key_body[..40]));

        // Server-kept requests: the team's names; seen and completed by the team only.
        let r = s
            .call(
                "POST",
                &web,
                "/api/v1/requests",
                &json!({"common_name": "x.other.example", "key_type": "p256"}),
            )
            .await;
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "policy_violation", "{v}");
        assert_eq!(v["error"]["team"], "web");
        let r = s
            .call(
                "POST",
                &web,
                "/api/v1/requests",
                &json!({"common_name": "svc.web.example", "key_type": "p256"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let req: Value = r.json().await.unwrap();
        assert_eq!(req["team"], "web");
        let id = req["id"].as_str().unwrap().to_string();
        let listed: Value = s
            .call("GET", &db_team, "/api/v1/requests", &json!({}))
            .await
            .json()
            .await
            .unwrap();
        assert!(listed["items"].as_array().unwrap().is_empty(), "{listed}");
        let listed: Value = s
            .call("GET", &web_ro, "/api/v1/requests", &json!({}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(listed["items"].as_array().unwrap().len(), 1);
        let listed: Value = s.admin_get("/api/v1/requests").await.json().await.unwrap();
        assert_eq!(listed["items"].as_array().unwrap().len(), 1);
        let r = s
            .call(
                "GET",
                &db_team,
                &format!("/api/v1/requests/{id}"),
                &json!({}),
            )
            .await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::NOT_FOUND, "not_found".into())
        );

        // Internal-CA issuance: within the team's validity, for the team's request only.
        let r = s.admin_post("/api/v1/cas", &json!({"name": "corp", "common_name": "Corp Root", "profile": {"validity_days": 120}})).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let r = s
            .call(
                "POST",
                &db_team,
                "/api/v1/cas/corp/issue",
                &json!({"request_id": id, "validity_days": 60}),
            )
            .await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::FORBIDDEN, "other_team".into())
        );
        let r = s
            .call(
                "POST",
                &web,
                "/api/v1/cas/corp/issue",
                &json!({"request_id": id}),
            )
            .await;
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "policy_violation");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("team web's policy's 100 days"),
            "{v}"
        );
        // Someone else's certificate for web's pending key cannot pick that key up.
        let csr = req["csr"].as_str().unwrap();
        let r = s
            .admin_post(
                "/api/v1/cas/corp/issue",
                &json!({"csr": csr, "validity_days": 60}),
            )
            .await;
        let stray: Value = r.json().await.unwrap();
        assert_eq!(stray["key_stored"], false, "{stray}");
        let r = s
            .call(
                "POST",
                &db_team,
                "/api/v1/certificates/import",
                &json!({"certificate": stray["certificate"]}),
            )
            .await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::FORBIDDEN, "other_team".into())
        );
        let r = s
            .call(
                "POST",
                &web,
                "/api/v1/cas/corp/issue",
                &json!({"request_id": id, "validity_days": 60}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let issued: Value = r.json().await.unwrap();
        assert_eq!(
            (issued["team"].as_str(), issued["key_stored"].as_bool()),
            (Some("web"), Some(true))
        );
        let isha = issued["sha256"].as_str().unwrap().to_string();

        // Renewal: the owning team only, and from a CA it needs issue; the new request
        // belongs to the team too.
        let renew = |token: &str| {
            let (token, path) = (
                token.to_string(),
                format!("/api/v1/certificates/{isha}/renew"),
            );
            async move { sr.call("POST", &token, &path, &json!({})).await }
        };
        let r = renew(&db_team).await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::FORBIDDEN, "other_team".into())
        );
        let (_, web_req) = scoped_token(&s, "web-req", Some("web"), &["request"]).await;
        let r = renew(&web_req).await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::FORBIDDEN, "missing_permission".into())
        );
        // The CA's 120 days exceed web's 100 without a validity_days: renewal follows
        // the policy as it is now and says so.
        let r = renew(&web).await;
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "policy_violation", "{v}");
        let r = s.admin_post("/api/v1/cas", &json!({"name": "short", "common_name": "Short Root", "profile": {"validity_days": 30}})).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let r = s
            .call(
                "POST",
                &web,
                "/api/v1/requests",
                &json!({"common_name": "api.web.example", "key_type": "p256"}),
            )
            .await;
        let req2: Value = r.json().await.unwrap();
        // ACME orders too: another team's request is refused before anything else.
        let acme = format!("/api/v1/requests/{}/acme", req2["id"].as_str().unwrap());
        let r = s.call("POST", &db_team, &acme, &json!({})).await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::FORBIDDEN, "other_team".into())
        );
        let r = s.call("POST", &web, &acme, &json!({})).await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::CONFLICT, "acme_not_configured".into())
        );
        let r = s
            .call(
                "POST",
                &web,
                "/api/v1/cas/short/issue",
                &json!({"request_id": req2["id"]}),
            )
            .await;
        let issued2: Value = r.json().await.unwrap();
        let r = s
            .call(
                "POST",
                &web,
                &format!(
                    "/api/v1/certificates/{}/renew",
                    issued2["sha256"].as_str().unwrap()
                ),
                &json!({}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let renewed: Value = r.json().await.unwrap();
        assert_eq!(renewed["certificate"]["team"], "web");
        let r = s
            .call(
                "GET",
                &web_ro,
                &format!("/api/v1/requests/{}", renewed["request"].as_str().unwrap()),
                &json!({}),
            )
            .await;
        assert_eq!(r.json::<Value>().await.unwrap()["team"], "web");
        s.stop().await;
    }
}

#[tokio::test]
async fn deployments_check_their_input_and_count_only_what_the_inventory_shows_served() {
    let s = start(|_| {}).await.unwrap();
    let (agent, credential) = enroll(&s).await;
    let pki = TestPki::new().unwrap();
    let leaf = |n: &str| pki.leaf(&LeafSpec::new(n, KeyKind::EcdsaP256)).unwrap();
    let (new, old, keyless) = (leaf("web.test"), leaf("web.test"), leaf("bare.test"));
    let mut shas = Vec::new();
    for (c, with_key) in [(&new, true), (&old, true), (&keyless, false)] {
        let mut body = json!({"certificate": c.cert_pem, "chain": [pki.intermediate.cert_pem]});
        if with_key {
            body["private_key"] = json!(c.key_pem);
        }
        let r = s.admin_post("/api/v1/certificates/import", &body).await;
        assert!(r.status().is_success());
        shas.push(
            r.json::<Value>().await.unwrap()["sha256"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let good = json!({"agent_id": agent, "fullchain_path": "/etc/tls/web.pem", "key_path": "/etc/tls/web.key",
                      "reload_command": "systemctl reload nginx", "endpoint": "web.test:8443"});
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    let url = |sha: &str| format!("/api/v1/certificates/{sha}/deployments");
    let ca_sha = certkeeper_pki::sha256(&pki.intermediate.der).to_string();
    let cases = [
        (
            url("nothex"),
            good.clone(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            url(&"00".repeat(32)),
            good.clone(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            url(&shas[2]),
            good.clone(),
            StatusCode::CONFLICT,
            "no_private_key",
        ),
        (
            url(&ca_sha),
            good.clone(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            url(&shas[0]),
            json!({"agent_id": agent, "endpoint": "web.test:8443"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            url(&shas[0]),
            with("key_path", json!("tls/web.key")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            url(&shas[0]),
            with("key_path", json!("/etc/tls/../../shadow")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            url(&shas[0]),
            with("key_path", json!("/etc/tls/web.pem")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            url(&shas[0]),
            with("endpoint", json!("https://web.test/")),
            StatusCode::BAD_REQUEST,
            "invalid_endpoint",
        ),
        (
            url(&shas[0]),
            with("endpoint", json!("web.test:0")),
            StatusCode::BAD_REQUEST,
            "invalid_endpoint",
        ),
        (
            url(&shas[0]),
            with("agent_id", json!("no-such-agent")),
            StatusCode::BAD_REQUEST,
            "unknown_agent",
        ),
        (
            url(&shas[0]),
            with("mode", json!("4755")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            url(&shas[0]),
            with("mode", json!("rw-r--r--")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            url(&shas[0]),
            with("owner", json!("root; rm")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            url(&shas[0]),
            with("surprise", json!(1)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (path, body, status, code) in &cases {
        let r = s.admin_post(path, body).await;
        assert_eq!(
            error_code(r).await,
            (*status, code.to_string()),
            "{path} {body}"
        );
    }
    assert_eq!(
        s.admin_get("/api/v1/deployments")
            .await
            .json::<Value>()
            .await
            .unwrap()["items"],
        json!([]),
        "nothing created by a refused request"
    );

    let r = s.admin_post(&url(&shas[0]), &good).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let d: Value = r.json().await.unwrap();
    assert_eq!(
        (
            d["status"].as_str(),
            d["mode"].as_str(),
            d["key_mode"].as_str()
        ),
        (Some("pending"), Some("0644"), Some("0600"))
    );
    let id = d["id"].as_str().unwrap().to_string();

    let agent_post = |path: String, body: Value| {
        s.client
            .post(format!("{}{path}", s.base))
            .bearer_auth(&credential)
            .json(&body)
            .send()
    };
    let claim = || agent_post("/api/v1/agent/jobs/claim".into(), json!({}));
    let jobs: Value = claim().await.unwrap().json().await.unwrap();
    let job = &jobs["jobs"][0];
    assert_eq!(job["kind"], "deploy");
    let files = job["deploy"]["files"].as_array().unwrap();
    let parts: Vec<&str> = files.iter().map(|f| f["part"].as_str().unwrap()).collect();
    assert_eq!(parts, ["fullchain", "key"]);
    assert!(files[0]["pem"].as_str().unwrap().starts_with(&new.cert_pem));
    assert!(files[1]["pem"].as_str().unwrap().contains("PRIVATE KEY"));
    assert_eq!(files[1]["mode"], "0600");
    assert_eq!(
        job["deploy"]["reload"],
        json!(["systemctl", "reload", "nginx"])
    );
    let (job_id, lease) = (
        job["id"].as_str().unwrap().to_string(),
        job["lease"].as_str().unwrap().to_string(),
    );
    let result = |body: Value| agent_post(format!("/api/v1/agent/jobs/{job_id}/result"), body);
    for bad in [
        json!({"lease": lease, "status": "failed", "error": {"code": "made_up", "message": "x"}}),
        json!({"lease": lease, "status": "failed"}),
        json!({"lease": lease, "status": "maybe"}),
    ] {
        assert_eq!(
            error_code(result(bad.clone()).await.unwrap()).await,
            (StatusCode::BAD_REQUEST, "invalid_request".into()),
            "{bad}"
        );
    }
    // The agent says it worked, but no sighting reached the server: not done.
    let v: Value = result(json!({"lease": lease, "status": "succeeded"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["deployment"]["status"], "retrying", "{v}");
    assert_eq!(v["deployment"]["last_error"]["code"], "not_served");

    // A sighting of the old certificate: still not done.
    let now = time::OffsetDateTime::now_utc();
    let seen = |der: &[u8]| {
        let mut o = tls_obs("web.test", 8443, &[der]);
        o["seen_at"] = json!(
            now.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        );
        o
    };
    let push =
        |id: &str, der: &[u8]| agent_post("/api/v1/reports".into(), report(id, vec![seen(der)]));
    let retry_path = format!("/api/v1/deployments/{id}/retry");
    let empty = json!({});
    let retry = || s.admin_post(&retry_path, &empty);
    for (i, (der, expect)) in [(&old.der, "old_certificate_served"), (&new.der, "")]
        .into_iter()
        .enumerate()
    {
        assert_eq!(retry().await.status(), StatusCode::OK);
        let jobs: Value = claim().await.unwrap().json().await.unwrap();
        let job = &jobs["jobs"][0];
        let jid = job["id"].as_str().unwrap();
        assert!(
            push(&format!("r{i}"), der)
                .await
                .unwrap()
                .status()
                .is_success()
        );
        let v: Value = agent_post(
            format!("/api/v1/agent/jobs/{jid}/result"),
            json!({"lease": job["lease"], "status": "succeeded"}),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        if expect.is_empty() {
            assert_eq!(v["deployment"]["status"], "done", "{v}");
            assert_eq!(v["deployment"]["deployed_sha256"], shas[0].as_str());
        } else {
            assert_eq!(v["deployment"]["last_error"]["code"], expect, "{v}");
            assert!(
                v["deployment"]["last_error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(&shas[1])
            );
        }
    }
    // A done deployment has no job left to claim.
    let jobs: Value = claim().await.unwrap().json().await.unwrap();
    assert_eq!(jobs["jobs"], json!([]));
    assert_eq!(
        error_code(s.admin_get("/api/v1/deployments/nope").await).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    assert_eq!(
        error_code(s.admin_get("/api/v1/deployments?certificate=zz").await).await,
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );
    let listed: Value = s
        .admin_get(&format!("/api/v1/deployments?certificate={}", shas[0]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    s.stop().await;
}

/// A scan schedule whose occurrence is due starts one scan, however many replicas
/// share the database; the scan names its schedule.
#[tokio::test]
async fn a_due_scan_schedule_runs_once_across_replicas() {
    use certkeeper_server::vulnscans::ScanSchedule;
    for tdb in db::all().unwrap() {
        let kek = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        let admin = "ck_admin_preset_for_schedules_00000000".to_string();
        // Due a minute ago: within the grace, so the first pass of each replica tries it.
        let due = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
        let text = format!("daily {:02}:{:02}", due.hour(), due.minute());
        let cfg = |c: &mut ServerConfig| {
            c.database_url = Some(tdb.url.clone());
            c.kek = Some(kek.clone());
            c.admin_token = Some(admin.clone());
            c.vulnscan.schedules = vec![ScanSchedule {
                name: "nightly".into(),
                schedule: text.parse().unwrap(),
                hosts: vec!["*.example.com".into()],
                ports: vec![],
            }];
        };
        let a = start(cfg).await.unwrap();
        let b = start(cfg).await.unwrap();
        let mut scans = Vec::new();
        for _ in 0..50 {
            let v: Value = a.admin_get("/api/v1/scans").await.json().await.unwrap();
            scans = v["items"].as_array().unwrap().clone();
            if !scans.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // Give the other replica's pass its chance too.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let v: Value = b.admin_get("/api/v1/scans").await.json().await.unwrap();
        let on_b = v["items"].as_array().unwrap().clone();
        assert_eq!(on_b.len(), 1, "{} ({})", v, tdb.label);
        assert_eq!(on_b[0]["requested_by"], "schedule:nightly");
        assert_eq!(scans.len(), 1);
        let id = on_b[0]["id"].as_str().unwrap();
        // No endpoint matches *.example.com: done at once with nothing to scan.
        let mut s = json!({});
        for _ in 0..50 {
            s = a
                .admin_get(&format!("/api/v1/scans/{id}"))
                .await
                .json()
                .await
                .unwrap();
            if s["status"] == "done" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(
            (s["status"].as_str(), s["endpoints"].as_u64()),
            (Some("done"), Some(0)),
            "{s}"
        );
    }
}

/// A CA-issuers (AIA) extension naming `url`.
fn aia(url: &str) -> rcgen::CustomExtension {
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = body.len();
        if n < 128 {
            out.push(n as u8);
        } else {
            out.extend([0x82, (n >> 8) as u8, n as u8]);
        }
        out.extend_from_slice(body);
        out
    }
    // id-ad-caIssuers 1.3.6.1.5.5.7.48.2, then uniformResourceIdentifier [6].
    let mut desc = tlv(0x06, &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x02]);
    desc.extend(tlv(0x86, url.as_bytes()));
    let content = tlv(0x30, &tlv(0x30, &desc));
    rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], content)
}

/// Root → intermediate (AIA → the root's .p7c) → leaves with AIA URLs of our choice,
/// and a loopback HTTP server (axum) handing out the CA certificates, garbage, a
/// stranger's CA certificate and a redirect.
struct AiaPki {
    base: String,
    root: Vec<u8>,
    intermediate: Vec<u8>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl AiaPki {
    async fn new() -> AiaPki {
        use axum::routing::get;
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let ca = |cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p
        };
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca("AIA Test Root");
        let root = root_params.self_signed(&root_key).unwrap().der().to_vec();
        let root_issuer = rcgen::Issuer::new(root_params, root_key);
        let mut int_params = ca("AIA Test Intermediate");
        int_params.custom_extensions = vec![aia(&format!("{base}/root.p7c"))];
        let int_key = KeyPair::generate().unwrap();
        let intermediate = int_params
            .signed_by(&int_key, &root_issuer)
            .unwrap()
            .der()
            .to_vec();
        // Same name as the intermediate, another key: it does not sign the leaves.
        let impostor = ca("AIA Test Intermediate")
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .to_vec();
        // The root as a certs-only PKCS#7, made by openssl.
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("root.pem");
        std::fs::write(&pem, certkeeper_pki::to_pem(&root)).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["crl2pkcs7", "-nocrl", "-outform", "DER", "-certfile"])
            .arg(&pem)
            .output()
            .unwrap();
        assert!(out.status.success());
        let p7c = out.stdout;
        let int_der = intermediate.clone();
        let app = axum::Router::new()
            .route("/int.crt", get(move || async move { int_der }))
            .route("/root.p7c", get(move || async move { p7c }))
            .route("/impostor.crt", get(move || async move { impostor }))
            .route("/garbage", get(|| async { "<html>404 but 200</html>" }))
            .route(
                "/moved",
                get(|| async {
                    (
                        StatusCode::FOUND,
                        [("location", "http://ca.example.net/int.crt")],
                    )
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        AiaPki {
            base,
            root,
            intermediate,
            issuer: rcgen::Issuer::new(int_params, int_key),
        }
    }

    /// A leaf issued by the intermediate, its AIA pointing at `path` on our server.
    fn leaf(&self, name: &str, path: &str) -> String {
        self.leaf_at(name, &format!("{}{path}", self.base))
    }

    /// A leaf issued by the intermediate, its AIA pointing at `url`.
    fn leaf_at(&self, name: &str, url: &str) -> String {
        let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.custom_extensions = vec![aia(url)];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(90);
        p.signed_by(&rcgen::KeyPair::generate().unwrap(), &self.issuer)
            .unwrap()
            .pem()
    }
}

/// The intermediate at an https AIA URL whose server has a test CA's certificate:
/// fetched when the operator trusts that CA (`[fetch] ca_files`), a TLS error of its
/// own when not; redirects and private addresses are refused over https as well.
#[tokio::test]
async fn https_aia_urls_are_fetched_when_the_operator_trusts_their_ca() {
    use certkeeper_testkit::https::HttpsServer;
    use certkeeper_testkit::pki::{KeyKind, LeafSpec, TestPki};
    let pki = AiaPki::new().await;
    let tls = TestPki::new().unwrap();
    let cert = tls
        .leaf(&LeafSpec::new("localhost", KeyKind::EcdsaP256).names(&["localhost", "127.0.0.1"]))
        .unwrap();
    let int_der = pki.intermediate.clone();
    let app = axum::Router::new()
        .route(
            "/int.crt",
            axum::routing::get(move || async move { int_der }),
        )
        .route(
            "/moved",
            axum::routing::get(|| async {
                (
                    StatusCode::FOUND,
                    [("location", "https://ca.example.net/int.crt")],
                )
            }),
        );
    let https = HttpsServer::start(app, &cert.chain_path, &cert.key_path)
        .await
        .unwrap();
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", https.addr.port());
    let ca_file = tls.dir().join("aia-tls-ca.pem");
    std::fs::write(&ca_file, &tls.root.cert_pem).unwrap();
    let roots = certkeeper_connect::fetch::read_ca_files(&[ca_file]).unwrap();
    let loopback = vec!["127.0.0.0/8".parse().unwrap()];

    // The CA not trusted: the import fails with the TLS code; nothing is stored.
    let untrusting = start(|c| c.fetch.allow_private = loopback.clone())
        .await
        .unwrap();
    let r = untrusting
        .admin_post(
            "/api/v1/certificates/import",
            &json!({"certificate": pki.leaf_at("tls.aia.test", &url("/int.crt"))}),
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_GATEWAY, "fetch_tls_untrusted".into())
    );
    untrusting.stop().await;

    // Trusted: the intermediate comes over https, the root over http (its own AIA).
    let s = start(|c| {
        c.fetch.allow_private = loopback.clone();
        c.fetch.extra_roots = roots.clone();
    })
    .await
    .unwrap();
    let r = s
        .admin_post(
            "/api/v1/certificates/import",
            &json!({"certificate": pki.leaf_at("moved.aia.test", &url("/moved"))}),
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "fetch_redirect_refused".into())
    );
    let r = s
        .admin_post(
            "/api/v1/certificates/import",
            &json!({"certificate": pki.leaf_at("tls.aia.test", &url("/int.crt"))}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["chain_complete"], true, "{body}");
    let chain: Vec<&str> = body["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["subject"].as_str().unwrap())
        .collect();
    assert_eq!(chain, ["CN=AIA Test Intermediate", "CN=AIA Test Root"]);
    s.stop().await;

    // Trusting the CA does not open loopback.
    let strict = start(|c| c.fetch.extra_roots = roots.clone())
        .await
        .unwrap();
    let r = strict
        .admin_post(
            "/api/v1/certificates/import",
            &json!({"certificate": pki.leaf_at("strict.aia.test", &url("/int.crt"))}),
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "fetch_private_address".into())
    );
    strict.stop().await;
}

#[tokio::test]
async fn missing_intermediates_are_fetched_from_the_aia_url_under_the_fetch_rules() {
    let pki = AiaPki::new().await;
    let s = start(|c| {
        c.fetch.allow_private = vec!["127.0.0.0/8".parse().unwrap()];
        c.fetch.timeout = std::time::Duration::from_secs(3);
    })
    .await
    .unwrap();
    let import = async |pem: String| {
        s.admin_post("/api/v1/certificates/import", &json!({"certificate": pem}))
            .await
    };
    // Each bad answer is its own error, and nothing is stored.
    for (path, status, code) in [
        ("/garbage", StatusCode::BAD_REQUEST, "aia_unreadable"),
        ("/impostor.crt", StatusCode::BAD_REQUEST, "aia_not_issuer"),
        ("/moved", StatusCode::BAD_REQUEST, "fetch_redirect_refused"),
        (
            "/nothing-here",
            StatusCode::BAD_GATEWAY,
            "fetch_http_status",
        ),
    ] {
        let r = import(pki.leaf("bad.aia.test", path)).await;
        assert_eq!(error_code(r).await, (status, code.to_string()), "{path}");
    }
    let listed: Value = s
        .admin_get("/api/v1/certificates")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 0, "{listed}");

    // The intermediate is fetched (DER), then the root from the intermediate's own AIA
    // URL (PKCS#7): the stored chain is complete and in order.
    let r = import(pki.leaf("www.aia.test", "/int.crt")).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["chain_complete"], true, "{body}");
    let chain: Vec<&str> = body["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["subject"].as_str().unwrap())
        .collect();
    assert_eq!(chain, ["CN=AIA Test Intermediate", "CN=AIA Test Root"]);
    let sha = body["sha256"].as_str().unwrap();
    let full = s
        .admin_post(
            &format!("/api/v1/certificates/{sha}/export"),
            &json!({"format": "chain"}),
        )
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        full,
        certkeeper_pki::to_pem(&pki.intermediate),
        "the served chain stops below the root"
    );
    // A second leaf of the same intermediate completes from the inventory alone.
    let r = import(pki.leaf("api.aia.test", "/garbage")).await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "no fetch once the issuer is known"
    );
    s.stop().await;

    // Without the allow-list, a loopback AIA URL is refused.
    let strict = start(|_| {}).await.unwrap();
    let r = strict
        .admin_post(
            "/api/v1/certificates/import",
            &json!({"certificate": pki.leaf("x.aia.test", "/int.crt")}),
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "fetch_private_address".into())
    );
    // Given by hand instead, no fetch is needed.
    let r = strict
        .admin_post(
            "/api/v1/certificates/import",
            &json!({"certificate": pki.leaf("y.aia.test", "/int.crt"),
                    "chain": [certkeeper_pki::to_pem(&pki.intermediate), certkeeper_pki::to_pem(&pki.root)]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    strict.stop().await;
}

/// SHA-256 of the public key in a PEM certificate or CSR.
fn spki_of_pem(pem: &str) -> String {
    let der = certkeeper_pki::pem_to_ders(pem.as_bytes())
        .map(|mut d| d.remove(0))
        .unwrap_or_default();
    if pem.contains("CERTIFICATE REQUEST") {
        let der = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .contents;
        return certkeeper_pki::csr::csr_spki_sha256(&der).unwrap();
    }
    certkeeper_pki::cert_spki_sha256(&der).unwrap()
}

/// `openssl x509 -req`: the CA outside certkeeper signs a renewal request's CSR.
fn openssl_sign(pki: &TestPki, csr_pem: &str, name: &str) -> String {
    let csr = pki.dir().join(format!("{name}.csr"));
    let out = pki.dir().join(format!("{name}.crt"));
    std::fs::write(&csr, csr_pem).unwrap();
    let o = std::process::Command::new("openssl")
        .args([
            "x509",
            "-req",
            "-days",
            "90",
            "-copy_extensions",
            "copyall",
            "-set_serial",
        ])
        .arg(format!("{}", 1000 + name.len()))
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&pki.intermediate.cert_path)
        .arg("-CAkey")
        .arg(&pki.intermediate.key_path)
        .arg("-out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(out).unwrap()
}

#[tokio::test]
async fn imported_certificates_renew_through_a_pending_request_once_across_replicas() {
    let kek = certkeeper_pki::vault::Kek::generate().unwrap();
    let token = "ck_admin_shared_between_replicas_0123456789".to_string();
    let mut dbs = vec![db::sqlite().unwrap()];
    dbs.extend(db::postgres().unwrap());
    for testdb in &dbs {
        let label = testdb.label;
        let replica = || {
            let (kek, token, url) = (kek.clone(), token.clone(), testdb.url.clone());
            start(move |c| {
                c.kek = Some(kek);
                c.admin_token = Some(token);
                c.database_url = Some(url);
            })
        };
        let (a, b) = (replica().await.unwrap(), replica().await.unwrap());
        let pki = TestPki::new().unwrap();
        let leaf = pki
            .leaf(
                &LeafSpec::new("shop.example.com", KeyKind::Rsa2048)
                    .names(&["shop.example.com", "www.shop.example.com"]),
            )
            .unwrap();
        let imported: Value = a
            .admin_post(
                "/api/v1/certificates/import",
                &json!({"certificate": leaf.cert_pem, "private_key": leaf.key_pem,
                        "chain": [pki.intermediate.cert_pem, pki.root.cert_pem]}),
            )
            .await
            .json()
            .await
            .unwrap();
        let old_sha = imported["sha256"].as_str().unwrap().to_string();
        let at = |days: i64| {
            (time::OffsetDateTime::now_utc() + time::Duration::days(days))
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        // Valid from yesterday for 90 days: not due at day 57, due at day 60.
        let early: Value = a
            .admin_post("/api/v1/renewals", &json!({"at": at(57)}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(early["requested"], json!([]), "{label}: {early}");
        // Both replicas run the pass at once: one renewal request, not two.
        let day60 = json!({"at": at(60)});
        let (ra, rb) = tokio::join!(
            a.admin_post("/api/v1/renewals", &day60),
            b.admin_post("/api/v1/renewals", &day60)
        );
        let (ra, rb): (Value, Value) = (ra.json().await.unwrap(), rb.json().await.unwrap());
        let mut requested: Vec<Value> = ra["requested"].as_array().unwrap().clone();
        requested.extend(rb["requested"].as_array().unwrap().iter().cloned());
        assert_eq!(requested.len(), 1, "{label}: {ra} {rb}");
        let req = &requested[0]["request"];
        assert_eq!(requested[0]["renews"], old_sha.as_str());
        assert_eq!(requested[0]["reused_key"], false);
        assert_eq!(req["status"], "pending");
        assert_eq!(req["renews_sha256"], old_sha.as_str());
        assert_eq!(req["common_name"], "shop.example.com");
        assert_eq!(req["key_type"], "rsa2048");
        let sans: BTreeSet<&str> = req["sans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(
            sans,
            BTreeSet::from(["DNS:shop.example.com", "DNS:www.shop.example.com"]),
            "{label}"
        );
        let csr = req["csr"].as_str().unwrap();
        let info = certkeeper_pki::csr::inspect(csr.as_bytes()).unwrap();
        assert!(
            info.subject.contains("certkeeper tests"),
            "{label}: the subject is kept: {}",
            info.subject
        );
        assert_ne!(
            spki_of_pem(csr),
            spki_of_pem(&leaf.cert_pem),
            "{label}: a new key"
        );
        // Later passes, on either replica, make no second request.
        let again: Value = b
            .admin_post("/api/v1/renewals", &json!({"at": at(70)}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(again["requested"], json!([]), "{label}: {again}");
        // By hand while it waits: refused, naming the request that waits.
        let r = a
            .admin_post(&format!("/api/v1/certificates/{old_sha}/renew"), &json!({}))
            .await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::CONFLICT, "renewal_pending".into()),
            "{label}"
        );
        // The operator sees what is waiting; the CA signs; importing completes it.
        let listed: Value = b.admin_get("/api/v1/requests").await.json().await.unwrap();
        let waiting: Vec<&Value> = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["status"] == "pending" && r["renews_sha256"] == old_sha.as_str())
            .collect();
        assert_eq!(waiting.len(), 1, "{label}: {listed}");
        let signed = openssl_sign(&pki, csr, &format!("renewed-{label}"));
        let done: Value = b
            .admin_post(
                "/api/v1/certificates/import",
                &json!({"certificate": signed}),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(done["request"], req["id"], "{label}: {done}");
        assert_eq!(done["renews"], old_sha.as_str());
        assert_eq!(done["key_stored"], true);
        assert_eq!(
            done["chain_complete"], true,
            "the chain comes from the inventory"
        );
        let shown: Value = a
            .admin_get(&format!("/api/v1/requests/{}", req["id"].as_str().unwrap()))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(shown["status"], "issued");
        assert_eq!(shown["certificate_sha256"], done["sha256"]);

        // By hand, keeping the key: the renewal request certifies the same key.
        let new_sha = done["sha256"].as_str().unwrap();
        let kept: Value = a
            .admin_post(
                &format!("/api/v1/certificates/{new_sha}/renew"),
                &json!({"reuse_key": true}),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(kept["reused_key"], true, "{label}: {kept}");
        assert_eq!(
            spki_of_pem(kept["request"]["csr"].as_str().unwrap()),
            spki_of_pem(&signed),
            "{label}: the same key"
        );
        // Signed again and imported, the key pairs with it (the request's sealed copy).
        let again_signed = openssl_sign(
            &pki,
            kept["request"]["csr"].as_str().unwrap(),
            &format!("kept-{label}"),
        );
        let done2: Value = a
            .admin_post(
                "/api/v1/certificates/import",
                &json!({"certificate": again_signed}),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(done2["request"], kept["request"]["id"], "{label}: {done2}");
        assert_eq!(done2["key_stored"], true);
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test]
async fn reuse_key_renews_issued_certificates_with_the_same_key() {
    // Server-wide: every renewal keeps its key.
    let s = start(|c| c.reuse_key = true).await.unwrap();
    s.admin_post(
        "/api/v1/cas",
        &json!({"name": "corp", "common_name": "Corp Root", "profile": {"validity_days": 30}}),
    )
    .await;
    let req: Value = s
        .admin_post(
            "/api/v1/requests",
            &json!({"common_name": "db.corp.example", "key_type": "p256"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let first: Value = s
        .admin_post("/api/v1/cas/corp/issue", &json!({"request_id": req["id"]}))
        .await
        .json()
        .await
        .unwrap();
    let at = (time::OffsetDateTime::now_utc() + time::Duration::days(21))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let due: Value = s
        .admin_post("/api/v1/renewals", &json!({"at": at}))
        .await
        .json()
        .await
        .unwrap();
    let second = &due["renewed"][0]["certificate"];
    assert_ne!(second["sha256"], first["sha256"], "{due}");
    assert_eq!(
        spki_of_pem(second["certificate"].as_str().unwrap()),
        spki_of_pem(first["certificate"].as_str().unwrap()),
        "the same key"
    );
    s.stop().await;

    // Per request: asked for when the request is made, kept by its renewals; others
    // still get a new key.
    let s = start(|_| {}).await.unwrap();
    s.admin_post(
        "/api/v1/cas",
        &json!({"name": "corp", "common_name": "Corp Root", "profile": {"validity_days": 30}}),
    )
    .await;
    let mut issued = Vec::new();
    for (cn, reuse) in [("keep.corp.example", true), ("fresh.corp.example", false)] {
        let req: Value = s
            .admin_post(
                "/api/v1/requests",
                &json!({"common_name": cn, "key_type": "p256", "reuse_key": reuse}),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(req["reuse_key"], reuse);
        let c: Value = s
            .admin_post("/api/v1/cas/corp/issue", &json!({"request_id": req["id"]}))
            .await
            .json()
            .await
            .unwrap();
        issued.push(c);
    }
    for (c, same) in issued.iter().zip([true, false]) {
        let r: Value = s
            .admin_post(
                &format!(
                    "/api/v1/certificates/{}/renew",
                    c["sha256"].as_str().unwrap()
                ),
                &json!({}),
            )
            .await
            .json()
            .await
            .unwrap();
        let new = r["certificate"]["certificate"].as_str().unwrap();
        assert_eq!(
            spki_of_pem(new) == spki_of_pem(c["certificate"].as_str().unwrap()),
            same,
            "{r}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn deploy_routes_need_the_deploy_permission_which_admin_implies() {
    use certkeeper_core::access::Permission;
    use certkeeper_server::Need;
    // The deploy routes, and only they, ask for deploy.
    let deploy_routes: BTreeSet<(&str, &str)> = certkeeper_server::ROUTE_NEEDS
        .iter()
        .filter(|(_, _, n)| *n == Need::Permission(Permission::Deploy))
        .map(|(m, p, _)| (*m, *p))
        .collect();
    let expected: BTreeSet<(&str, &str)> = [
        ("post", "/api/v1/certificates/{sha256}/deployments"),
        ("get", "/api/v1/deployments"),
        ("get", "/api/v1/deployments/{id}"),
        ("post", "/api/v1/deployments/{id}/retry"),
    ]
    .into();
    assert_eq!(deploy_routes, expected);

    let s = start(|_| {}).await.unwrap();
    let (_, deployer) = scoped_token(&s, "deployer", None, &["deploy"]).await;
    let (_, reader) = scoped_token(&s, "reader", None, &["read", "import", "export_key"]).await;
    let (_, admin) = scoped_token(&s, "root2", None, &["admin"]).await;
    // The stable name: listed on the token as "deploy".
    let tokens: Value = s.admin_get("/api/v1/tokens").await.json().await.unwrap();
    let listed = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "deployer")
        .unwrap()
        .clone();
    assert_eq!(listed["permissions"], json!(["deploy"]), "{listed}");
    for token in [&deployer, &admin] {
        let r = s
            .call("GET", token, "/api/v1/deployments", &json!({}))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = s
        .call("GET", &reader, "/api/v1/deployments", &json!({}))
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "missing_permission", "{v}");
    assert_eq!(v["error"]["permission"], "deploy", "{v}");
    // A deploy token alone cannot export keys or manage tokens.
    let r = s.call("GET", &deployer, "/api/v1/tokens", &json!({})).await;
    assert_eq!(error_code(r).await.1, "missing_permission");
    // An unknown permission is refused with the list, deploy included.
    let r = s
        .admin_post(
            "/api/v1/tokens",
            &json!({"name": "bad", "permissions": ["deploy-all"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("deploy,"),
        "{v}"
    );
    s.stop().await;
}

#[tokio::test]
async fn team_tokens_deploy_their_own_certificates_and_see_only_their_deployments() {
    let pki = TestPki::new().unwrap();
    let leaf = |n: &str| pki.leaf(&LeafSpec::new(n, KeyKind::EcdsaP256)).unwrap();
    let (web_leaf, db_leaf, shared_leaf) = (leaf("a.web.test"), leaf("a.db.test"), leaf("x.test"));
    for tdb in db::all().unwrap() {
        let url = tdb.url.clone();
        let s = start(move |c| c.database_url = Some(url)).await.unwrap();
        let (agent, credential) = enroll(&s).await;
        let team_perms = ["read", "import", "deploy"];
        let (_, web) = scoped_token(&s, "web", Some("web"), &team_perms).await;
        let (_, db_team) = scoped_token(&s, "db", Some("db"), &team_perms).await;
        let (_, web_nodeploy) = scoped_token(&s, "web-ro", Some("web"), &["read", "import"]).await;
        let (_, ops) = scoped_token(&s, "ops", None, &["deploy"]).await;
        let import = |token: String, l: &certkeeper_testkit::Issued| {
            let body = json!({"certificate": l.cert_pem, "chain": [pki.intermediate.cert_pem],
                              "private_key": l.key_pem});
            let s = &s;
            async move {
                let r = s
                    .call("POST", &token, "/api/v1/certificates/import", &body)
                    .await;
                assert!(r.status().is_success(), "{}", r.text().await.unwrap());
                r.json::<Value>().await.unwrap()["sha256"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
        };
        let web_sha = import(web.clone(), &web_leaf).await;
        let db_sha = import(db_team.clone(), &db_leaf).await;
        let shared_sha = import(s.admin.clone(), &shared_leaf).await;
        let target = |host: &str| {
            json!({"agent_id": agent, "fullchain_path": format!("/etc/tls/{host}.pem"),
                   "key_path": format!("/etc/tls/{host}.key"), "endpoint": format!("{host}:443")})
        };
        let deploy = |token: &str, sha: &str, host: &str| {
            let body = target(host);
            let path = format!("/api/v1/certificates/{sha}/deployments");
            let token = token.to_string();
            let s = &s;
            async move { s.call("POST", &token, &path, &body).await }
        };
        // Its own certificate: deployed, audited under the token's name.
        let r = deploy(&web, &web_sha, "a.web.test").await;
        assert_eq!(r.status(), StatusCode::CREATED, "{}", tdb.label);
        let web_dep: Value = r.json().await.unwrap();
        let web_id = web_dep["id"].as_str().unwrap().to_string();
        // Another team's, or one of no team: refused, nothing created.
        for (sha, whose) in [(&db_sha, "db"), (&shared_sha, "none")] {
            let r = deploy(&web, sha, "a.web.test").await;
            assert_eq!(
                error_code(r).await,
                (StatusCode::FORBIDDEN, "other_team".into()),
                "{whose} ({})",
                tdb.label
            );
        }
        // Without deploy, a team token cannot even look.
        let r = deploy(&web_nodeploy, &web_sha, "a.web.test").await;
        assert_eq!(error_code(r).await.1, "missing_permission");
        let db_id = {
            let r = deploy(&db_team, &db_sha, "a.db.test").await;
            assert_eq!(r.status(), StatusCode::CREATED);
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        };
        // A server-wide deploy token deploys anything, the shared certificate too.
        let r = deploy(&ops, &shared_sha, "x.test").await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let shared_id = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();

        let ids_of = |token: String, query: &'static str| {
            let s = &s;
            async move {
                let r = s
                    .call(
                        "GET",
                        &token,
                        &format!("/api/v1/deployments{query}"),
                        &json!({}),
                    )
                    .await;
                assert_eq!(r.status(), StatusCode::OK);
                let v: Value = r.json().await.unwrap();
                v["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d["id"].as_str().unwrap().to_string())
                    .collect::<BTreeSet<String>>()
            }
        };
        assert_eq!(ids_of(web.clone(), "").await, [web_id.clone()].into());
        assert_eq!(ids_of(db_team.clone(), "").await, [db_id.clone()].into());
        assert_eq!(
            ids_of(ops.clone(), "").await,
            [web_id.clone(), db_id.clone(), shared_id.clone()].into()
        );
        // Others' ids are not found: show and retry alike.
        for id in [&db_id, &shared_id] {
            for (m, p) in [
                ("GET", format!("/api/v1/deployments/{id}")),
                ("POST", format!("/api/v1/deployments/{id}/retry")),
            ] {
                let r = s.call(m, &web, &p, &json!({})).await;
                assert_eq!(
                    error_code(r).await,
                    (StatusCode::NOT_FOUND, "not_found".into()),
                    "{m} {p}"
                );
            }
        }
        let r = s
            .call(
                "GET",
                &web,
                &format!("/api/v1/deployments/{web_id}"),
                &json!({}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        // Its own may be retried once the agent gave it back.
        let claim: Value = s
            .client
            .post(format!("{}/api/v1/agent/jobs/claim", s.base))
            .bearer_auth(&credential)
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let job = claim["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["deploy"]["deployment_id"] == web_id.as_str())
            .unwrap()
            .clone();
        let r = s
            .client
            .post(format!(
                "{}/api/v1/agent/jobs/{}/result",
                s.base,
                job["id"].as_str().unwrap()
            ))
            .bearer_auth(&credential)
            .json(&json!({"lease": job["lease"], "status": "failed",
                          "error": {"code": "path_not_allowed", "message": "not here"}}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let r = s
            .call(
                "POST",
                &web,
                &format!("/api/v1/deployments/{web_id}/retry"),
                &json!({}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
        let audit: Value = s.admin_get("/api/v1/audit").await.json().await.unwrap();
        let actions: Vec<(String, String)> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["actor"].as_str().unwrap_or("").to_string(),
                    e["action"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        for want in ["deployment_created", "deployment_retry"] {
            assert!(
                actions.contains(&("token:web (team web)".into(), want.into())),
                "{want}: {actions:?}"
            );
        }
        s.stop().await;
    }
}
