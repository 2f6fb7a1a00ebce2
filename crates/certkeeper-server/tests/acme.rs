//! ACME issuance against Debian's pebble and pebble-challtestsrv: dns-01 through a hook
//! script or an RFC 2136 update to a real BIND9, http-01 answered by the server itself,
//! external account binding, and pebble's nonce rejection; renewal information (ARI)
//! and rate limits through the testkit's ARI front before pebble (Debian's pebble 2.4
//! has no ARI). Pebble's ports are fixed:
//! each test starts its own pebble, and `Pebble::start_with` runs them one at a time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use certkeeper_connect::acme::{AcmeConfig, ChallengeKind, DnsPublisher, ExternalAccount};
use certkeeper_connect::rfc2136::{self, Rfc2136Config, TsigAlgorithm};
use certkeeper_server::{ServerConfig, prepare};
use certkeeper_testkit::ari_front::{AriFront, cert_id};
use certkeeper_testkit::bind::Bind;
use certkeeper_testkit::db::{self, TestDb};
use certkeeper_testkit::pebble::{Pebble, PebbleOptions};
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;
use time::{Duration as TDuration, OffsetDateTime};

fn start_pebble(opts: &PebbleOptions) -> Pebble {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    Pebble::start_with(opts)
        .expect("pebble (Debian package `pebble`) must be installed; .ci/run installs it")
}

/// dns-01 through the testkit's hook script (challtestsrv), as before.
fn hook_config(pebble: &Pebble) -> AcmeConfig {
    let mut cfg = AcmeConfig::with_hook(pebble.directory.clone(), pebble.dns_hook.clone());
    cfg.root_ca_file = Some(pebble.listener_ca.clone());
    cfg.contact = vec!["mailto:pki@example.com".into()];
    cfg.dns = Some(DnsPublisher::Hook {
        command: pebble.dns_hook.clone(),
        timeout: Duration::from_secs(10),
    });
    cfg
}

/// A server on a free port with `acme`, stopped when the test ends.
struct Server {
    base: String,
    admin: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
    _db: Option<TestDb>,
}

async fn serve(acme: AcmeConfig, db: Option<TestDb>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path());
    cfg.http = true;
    cfg.database_url = db.as_ref().map(|d| d.url.clone());
    cfg.acme = Some(acme);
    let prepared = prepare(cfg).await.unwrap();
    let admin = prepared.created_admin_token.clone().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { prepared.launch(listener, std::future::pending()).await });
    Server {
        base,
        admin,
        client: reqwest::Client::new(),
        _dir: dir,
        _db: db,
    }
}

impl Server {
    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A pending request (server-made key and CSR) for `names`.
    async fn request(&self, names: &[&str]) -> String {
        let r: Value = self
            .post(
                "/api/v1/requests",
                json!({"common_name": names[0], "sans": names, "key_type": "p256"}),
            )
            .await
            .json()
            .await
            .unwrap();
        r["id"].as_str().unwrap().to_string()
    }

    /// Order a request over ACME; the status and the body.
    async fn order(&self, id: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .post(&format!("/api/v1/requests/{id}/acme"), body)
            .await;
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Order and expect a certificate.
    async fn issue(&self, names: &[&str], body: Value) -> Value {
        let id = self.request(names).await;
        let (status, v) = self.order(&id, body).await;
        assert_eq!(status, StatusCode::CREATED, "{names:?}: {v}");
        assert_eq!(v["key_stored"], true);
        v
    }
}

/// The SANs of a PEM certificate, as openssl prints them.
fn sans_of(pem: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.pem");
    std::fs::write(&f, pem).unwrap();
    String::from_utf8(
        std::process::Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(&f)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_a_certificate_from_an_acme_ca() {
    let pebble = start_pebble(&PebbleOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let server = serve(hook_config(&pebble), None).await;

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
        let id = server.request(&names).await;
        let (status, issued) = server.order(&id, json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "order {i}: {issued}");
        assert_eq!(issued["key_stored"], true);
        assert_eq!(issued["challenge"], "dns-01");
        // Debian's pebble 2.4 offers no renewal information (no `renewalInfo` in its
        // directory): the renewal time is two thirds through the validity.
        assert_eq!(issued["renewal_time_source"], "two_thirds", "{issued}");
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
        let text = sans_of(issued["certificate"].as_str().unwrap());
        for n in &names {
            assert!(text.contains(&format!("DNS:{n}")), "{text}");
        }
        let done = server.get(&format!("/api/v1/requests/{id}")).await;
        assert_eq!(done["status"], "issued");
    }
    // Renewal goes back to the same ACME CA, with a new key (no `replaces`: no ARI).
    let first = server.get("/api/v1/requests").await;
    let sha = first["items"][0]["certificate_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let r = server
        .post(&format!("/api/v1/certificates/{sha}/renew"), json!({}))
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let renewed: Value = r.json().await.unwrap();
    assert_eq!(renewed["renewed"], sha.as_str());
    assert_ne!(renewed["certificate"]["sha256"], sha.as_str());
    assert_eq!(renewed["certificate"]["challenge"], "dns-01");

    // Names dns-01 cannot prove are refused before anything is ordered.
    let id = server.request(&["ip.acme.test", "192.0.2.1"]).await;
    let (status, v) = server.order(&id, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "invalid_request", "{v}");
    // http-01 is not configured on this server; unknown challenges are refused.
    let (status, v) = server.order(&id, json!({"challenge": "http-01"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "acme_challenge_unavailable", "{v}");
    let (status, v) = server.order(&id, json!({"challenge": "tls-alpn-01"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "invalid_request", "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http01_is_answered_by_the_server_only_for_orders_in_flight() {
    let pebble = start_pebble(&PebbleOptions::default());
    let mut cfg = hook_config(&pebble);
    cfg.challenge = ChallengeKind::Http01;
    // Pebble validates http-01 on port 5002 (its httpPort); challtestsrv answers DNS
    // with 127.0.0.1 and serves no http-01 itself.
    let responder = SocketAddr::from(([127, 0, 0, 1], 5002));
    cfg.http01_listen = Some(responder);
    // PostgreSQL when configured: the tokens live in the database, for every replica.
    let pg = db::postgres().unwrap();
    let server = serve(cfg, pg).await;
    let plain = reqwest::Client::new();
    let status_of = |path: &'static str| {
        let plain = plain.clone();
        async move {
            plain
                .get(format!("http://{responder}{path}"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // Nothing but challenge tokens on that listener, and none before an order.
    assert_eq!(status_of("/").await, StatusCode::NOT_FOUND);
    assert_eq!(status_of("/api/v1/requests").await, StatusCode::NOT_FOUND);
    assert_eq!(
        status_of("/.well-known/acme-challenge/LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of("/.well-known/acme-challenge/..%2f..%2fetc%2fpasswd").await,
        StatusCode::NOT_FOUND
    );

    let issued = server
        .issue(
            &["web.acme.test", "www.web.acme.test", "127.0.0.1"],
            json!({}),
        )
        .await;
    assert_eq!(issued["challenge"], "http-01");
    let sans = sans_of(issued["certificate"].as_str().unwrap());
    assert!(
        sans.contains("DNS:web.acme.test") && sans.contains("IP Address:127.0.0.1"),
        "{sans}"
    );
    // The request may ask for the other challenge.
    let by_dns = server
        .issue(&["dns.acme.test"], json!({"challenge": "dns-01"}))
        .await;
    assert_eq!(by_dns["challenge"], "dns-01");
    // A wildcard cannot be proved over http-01.
    let id = server.request(&["*.web.acme.test"]).await;
    let (status, v) = server.order(&id, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("wildcard"),
        "{v}"
    );
    // Renewal uses the challenge of the first order.
    let sha = issued["sha256"].as_str().unwrap();
    let r = server
        .post(&format!("/api/v1/certificates/{sha}/renew"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let renewed: Value = r.json().await.unwrap();
    assert_eq!(renewed["certificate"]["challenge"], "http-01", "{renewed}");
    // Tokens are withdrawn after their order: the pebble log names the tokens it
    // fetched, and none of them is answered any more.
    let log = pebble.log();
    let tokens: Vec<&str> = log
        .split("/.well-known/acme-challenge/")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .next()
        })
        .filter(|t| t.len() >= 16)
        .collect();
    assert!(tokens.len() >= 3, "pebble fetched our tokens: {log}");
    for t in &tokens {
        let s = plain
            .get(format!("http://{responder}/.well-known/acme-challenge/{t}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(s, StatusCode::NOT_FOUND, "token {t} still answered");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn external_account_binding_is_required_and_used() {
    // Pebble hands out EAB keys base64url-encoded.
    let kid = "kid-certkeeper";
    let key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let pebble = start_pebble(&PebbleOptions {
        eab_keys: vec![(kid.into(), key.into())],
        ..Default::default()
    });
    // Without EAB the CA refuses to register the account.
    let without = serve(hook_config(&pebble), None).await;
    let id = without.request(&["eab.acme.test"]).await;
    let started = Instant::now();
    let (status, v) = without.order(&id, json!({})).await;
    // Not retried: another attempt cannot change that (retries wait 0.5 s, then 1 s).
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(v["error"]["code"], "acme_failed");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("externalAccountRequired"),
        "{v}"
    );
    // A wrong HMAC key is refused too, and the key appears in no message.
    let mut wrong = hook_config(&pebble);
    wrong.eab = Some(ExternalAccount {
        kid: kid.into(),
        hmac_key: b"not the key pebble knows, not at all".to_vec(),
    });
    assert!(
        !format!("{wrong:?}").contains("not the key"),
        "Debug redacts"
    );
    let wrong = serve(wrong, None).await;
    let id = wrong.request(&["eab.acme.test"]).await;
    let (status, v) = wrong.order(&id, json!({})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
    // With the binding the account is created and the order goes through.
    let mut with = hook_config(&pebble);
    with.eab = Some(ExternalAccount {
        kid: kid.into(),
        hmac_key: base64_url(key),
    });
    let with = serve(with, None).await;
    with.issue(&["eab.acme.test"], json!({})).await;
    // The account is kept (sealed): a second order needs no new registration.
    with.issue(&["eab2.acme.test"], json!({})).await;
}

fn base64_url(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_survive_a_high_bad_nonce_rate() {
    // 40% of good nonces rejected: instant-acme's own three tries per request are not
    // enough for a whole order (account, order, authorizations, challenges, finalize,
    // certificate); the job-level retries are.
    let pebble = start_pebble(&PebbleOptions {
        nonce_reject_percent: Some(40),
        ..Default::default()
    });
    let mut cfg = hook_config(&pebble);
    cfg.attempts = 12;
    let server = serve(cfg, None).await;
    for n in ["nonce1.acme.test", "nonce2.acme.test", "nonce3.acme.test"] {
        server.issue(&[n], json!({})).await;
    }
    let log = pebble.log();
    assert!(
        log.contains("reject 40% of good nonces"),
        "pebble runs with the rejection rate: {log}"
    );
    // New orders sent, retries included (pebble does not log its rejections).
    let orders = log.matches("POST /order-plz").count();
    eprintln!("{orders} new-order requests for 3 certificates at 40% nonce rejection");
    assert!(orders >= 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn dns01_by_rfc2136_update_to_bind() {
    const SECRET: &str = "T2jT3qUbG9l1KZ2yQd0gZp2kq6D3Xo7v7cY1m1b6VZk=";
    let bind = Bind::start("rfc.test", "certkeeper", SECRET)
        .expect("named (Debian package bind9) must be installed; .ci/run installs it");
    // Pebble resolves the TXT records (and the names) through BIND.
    let pebble = start_pebble(&PebbleOptions {
        dns_server: Some(bind.addr),
        ..Default::default()
    });
    let rfc = |secret: &str| {
        DnsPublisher::Rfc2136(Rfc2136Config {
            server: bind.addr,
            zone: "rfc.test".into(),
            key_name: "certkeeper".into(),
            algorithm: TsigAlgorithm::HmacSha256,
            secret: rfc2136::read_secret(secret).unwrap(),
            ttl: 60,
            timeout: Duration::from_secs(5),
        })
    };
    let mut cfg = hook_config(&pebble);
    cfg.dns = Some(rfc(SECRET));
    let server = serve(cfg, None).await;
    let issued = server
        .issue(&["www.rfc.test", "*.rfc.test"], json!({}))
        .await;
    let sans = sans_of(issued["certificate"].as_str().unwrap());
    assert!(sans.contains("DNS:*.rfc.test"), "{sans}");
    // The records are removed after the order.
    assert_eq!(
        bind.dig("_acme-challenge.www.rfc.test.", "TXT").unwrap(),
        ""
    );
    assert_eq!(bind.dig("_acme-challenge.rfc.test.", "TXT").unwrap(), "");

    // A wrong TSIG key: BIND's BADSIG is the error, at once (no retries of a config error).
    let mut bad = hook_config(&pebble);
    bad.dns = Some(rfc("d3Jvbmcgc2VjcmV0IGZvciB0aGUga2V5IQ=="));
    let bad = serve(bad, None).await;
    let id = bad.request(&["bad.rfc.test"]).await;
    let started = Instant::now();
    let (status, v) = bad.order(&id, json!({})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("BADSIG") && msg.contains("TSIG"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(20), "not retried");
    assert!(!msg.contains(SECRET));
}

/// The ACME configuration for the ARI front (which forwards everything to pebble).
fn front_config(pebble: &Pebble, front: &AriFront) -> AcmeConfig {
    let mut cfg = hook_config(pebble);
    cfg.directory_url = front.directory.clone();
    cfg.root_ca_file = Some(front.ca_file.clone());
    cfg
}

fn at(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().unwrap(), &Rfc3339).unwrap()
}

fn leaf_der(issued: &Value) -> Vec<u8> {
    certkeeper_pki::pem_to_ders(issued["certificate"].as_str().unwrap().as_bytes())
        .unwrap()
        .remove(0)
}

impl Server {
    /// `POST /api/v1/renewals`, as of `when` (default now).
    async fn renewal_pass(&self, when: Option<OffsetDateTime>) -> Value {
        let body = match when {
            Some(t) => json!({"at": t.format(&Rfc3339).unwrap()}),
            None => json!({}),
        };
        let r = self.post("/api/v1/renewals", body).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }
}

// Debian's pebble 2.4 offers no ARI: these tests put the testkit's ARI front before
// the real pebble, which adds `renewalInfo` (windows set here) and forwards every
// other request to pebble unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn ari_window_from_the_ca_sets_the_renewal_time_and_replaces_names_the_old_certificate() {
    let pebble = start_pebble(&PebbleOptions::default());
    let front = AriFront::start(&pebble).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let (start, end) = (now + TDuration::days(10), now + TDuration::days(11));
    front.set_default_window(start, end);
    front.set_retry_after(3600);
    let server = serve(front_config(&pebble, &front), db::postgres().unwrap()).await;

    let issued = server.issue(&["ari.acme.test"], json!({})).await;
    // Inside the CA's window (to the second), not two thirds through (day 60 of 90).
    assert_eq!(issued["renewal_time_source"], "ari", "{issued}");
    let renewal = at(&issued["renewal_time"]);
    assert!(
        renewal >= start - TDuration::seconds(1) && renewal <= end,
        "{renewal} not in {start}..{end}"
    );
    let old_der = leaf_der(&issued);
    let old_id = cert_id(&old_der).unwrap();
    let asked = front.renewal_info_asked();
    assert!(asked.iter().any(|(id, _)| *id == old_id), "{asked:?}");
    assert_eq!(front.orders().len(), 1);
    assert_eq!(
        front.orders()[0].replaces,
        None,
        "a first order replaces nothing"
    );

    // Not due yet.
    let pass = server.renewal_pass(None).await;
    assert_eq!(pass["renewed"], json!([]), "{pass}");

    // The CA moves the window into the past (say, a mass revocation is coming).
    front.set_window(&old_id, now - TDuration::days(2), now - TDuration::days(1));
    // Its last answer said "ask again in an hour": a pass now neither asks nor renews.
    let asked_before = front.renewal_info_asked().len();
    let pass = server.renewal_pass(None).await;
    assert_eq!(pass["renewed"], json!([]), "{pass}");
    assert_eq!(front.renewal_info_asked().len(), asked_before);
    // The next pass after that asks again and renews at once.
    let pass = server.renewal_pass(Some(now + TDuration::hours(2))).await;
    let renewed = pass["renewed"].as_array().unwrap();
    assert_eq!(renewed.len(), 1, "{pass}");
    assert_eq!(renewed[0]["renewed"], issued["sha256"]);
    assert!(
        front.renewal_info_asked()[asked_before..]
            .iter()
            .any(|(id, _)| *id == old_id),
        "renewal information asked again"
    );
    // The new order named the certificate it replaces by its ARI identifier
    // (authority key id and serial, computed here with OpenSSL).
    let orders = front.orders();
    assert_eq!(orders.len(), 2, "{orders:?}");
    assert_eq!(orders[1].replaces.as_deref(), Some(old_id.as_str()));
    // The new certificate's renewal time comes from its own window again.
    assert_eq!(renewed[0]["certificate"]["renewal_time_source"], "ari");
    let again = server.renewal_pass(Some(now + TDuration::hours(4))).await;
    assert_eq!(again["renewed"], json!([]), "renewed once: {again}");

    // A CA without ARI (pebble itself): two thirds through the validity.
    let mut direct = hook_config(&pebble);
    direct.contact = vec!["mailto:plain@example.com".into()];
    let plain = serve(direct, None).await;
    let issued = plain.issue(&["plain.acme.test"], json!({})).await;
    assert_eq!(issued["renewal_time_source"], "two_thirds", "{issued}");
    let der = leaf_der(&issued);
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    let nb = x.validity().not_before.timestamp();
    let na = x.validity().not_after.timestamp();
    let two_thirds = OffsetDateTime::from_unix_timestamp(nb + (na - nb) * 2 / 3).unwrap();
    assert!((at(&issued["renewal_time"]) - two_thirds).abs() <= TDuration::seconds(1));
    let pass = plain
        .renewal_pass(Some(two_thirds - TDuration::hours(1)))
        .await;
    assert_eq!(pass["renewed"], json!([]), "{pass}");
    let pass = plain
        .renewal_pass(Some(two_thirds + TDuration::hours(1)))
        .await;
    assert_eq!(pass["renewed"].as_array().unwrap().len(), 1, "{pass}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_order_waits_for_the_cas_retry_after() {
    let pebble = start_pebble(&PebbleOptions::default());
    let front = AriFront::start(&pebble).await.unwrap();
    let now = OffsetDateTime::now_utc();
    // Every certificate is due at once (the window is over).
    front.set_default_window(now - TDuration::days(2), now - TDuration::days(1));
    let server = serve(front_config(&pebble, &front), db::postgres().unwrap()).await;

    // An order through the API: the CA's 429 comes back with its time, not retried.
    front.rate_limit_next_order(3);
    let id = server.request(&["rl.acme.test"]).await;
    let started = Instant::now();
    let r = server
        .post(&format!("/api/v1/requests/{id}/acme"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "acme_rate_limited", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rateLimited"),
        "{v}"
    );
    let until = at(&v["error"]["retry_after"]);
    let orders = front.orders();
    assert_eq!(
        orders.len(),
        1,
        "no retry of a rate-limited order: {orders:?}"
    );
    assert_eq!(orders[0].status, 429);
    assert!(until >= orders[0].at + TDuration::seconds(2), "{until}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no wait in the request"
    );
    // Asked again before the time: refused here; the CA is not contacted.
    let (status, v) = server.order(&id, json!({})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"]["code"], "acme_rate_limited");
    assert_eq!(front.orders().len(), 1);
    // After it: ordered and issued.
    sleep_until(until).await;
    let (status, issued) = server.order(&id, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let orders = front.orders();
    assert_eq!(orders.len(), 2);
    assert!(
        orders[1].at >= orders[0].at + TDuration::seconds(3),
        "{orders:?}"
    );

    // A renewal (due at once: the window is over) refused for a rate limit is put off
    // to the CA's time, not retried at the next pass nor after the usual lease.
    front.rate_limit_next_order(4);
    let pass = server.renewal_pass(None).await;
    assert_eq!(pass["renewed"], json!([]), "{pass}");
    let failed = &pass["failed"][0];
    assert_eq!(failed["error"]["code"], "acme_rate_limited", "{pass}");
    let until = at(&failed["error"]["retry_after"]);
    let orders = front.orders();
    assert_eq!(orders.len(), 3);
    assert_eq!(orders[2].status, 429);
    assert_eq!(
        orders[2].replaces.as_deref(),
        Some(cert_id(&leaf_der(&issued)).unwrap().as_str())
    );
    let pass = server.renewal_pass(None).await;
    assert_eq!(pass, json!({"renewed": [], "requested": [], "failed": []}));
    let pass = server
        .renewal_pass(Some(until - TDuration::seconds(1)))
        .await;
    assert_eq!(pass["renewed"], json!([]), "{pass}");
    assert_eq!(front.orders().len(), 3, "not sent before the CA's time");
    sleep_until(until).await;
    let pass = server.renewal_pass(None).await;
    assert_eq!(pass["renewed"].as_array().unwrap().len(), 1, "{pass}");
    let orders = front.orders();
    assert_eq!(orders.len(), 4);
    assert_eq!(orders[3].status, 201);
    assert!(
        orders[3].at >= orders[2].at + TDuration::seconds(4),
        "{orders:?}"
    );
}

async fn sleep_until(t: OffsetDateTime) {
    let left = t - OffsetDateTime::now_utc() + TDuration::milliseconds(1100);
    if left.is_positive() {
        tokio::time::sleep(left.unsigned_abs()).await;
    }
}
