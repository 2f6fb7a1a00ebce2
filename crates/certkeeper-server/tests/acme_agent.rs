//! http-01 answered by an agent, the server's half against Debian's pebble: the test
//! speaks the agent's side of the job channel over real HTTP (claim, ready, status)
//! and answers pebble's validation on its http-01 port itself, so each rule of the
//! protocol can be checked: what an http01 job carries (never the account key), that
//! the CA is told to validate only after the agent reports ready, that the job ends
//! with the order, that an agent's failure or silence fails the order quickly and
//! clearly. The real agent (`agent run`) is tested end to end in the binary's tests.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certkeeper_connect::acme::{AcmeConfig, DnsPublisher};
use certkeeper_server::{ServerConfig, prepare};
use certkeeper_testkit::db::{self, TestDb};
use certkeeper_testkit::pebble::{Pebble, PebbleOptions};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn acme_config(pebble: &Pebble) -> AcmeConfig {
    let mut cfg = AcmeConfig::with_hook(pebble.directory.clone(), pebble.dns_hook.clone());
    cfg.root_ca_file = Some(pebble.listener_ca.clone());
    cfg.dns = Some(DnsPublisher::Hook {
        command: pebble.dns_hook.clone(),
        timeout: Duration::from_secs(10),
    });
    cfg
}

struct Server {
    base: String,
    admin: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
    _db: TestDb,
}

impl Server {
    async fn start(acme: AcmeConfig, db: TestDb) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::new(dir.path());
        cfg.http = true;
        cfg.database_url = Some(db.url.clone());
        cfg.acme = Some(acme);
        cfg.http01_agent_wait = Duration::from_secs(3);
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

    async fn call(
        &self,
        method: &str,
        token: &str,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = self
            .client
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn enroll(&self) -> (String, String) {
        let (_, tok) = self
            .call(
                "POST",
                &self.admin,
                "/api/v1/agents/enrollment-tokens",
                json!({"uses": 1}),
            )
            .await;
        let (_, r) = self
            .call(
                "POST",
                tok["token"].as_str().unwrap(),
                "/api/v1/agents/enroll",
                json!({"hostname": "web1", "version": "0.1.0"}),
            )
            .await;
        (
            r["agent_id"].as_str().unwrap().to_string(),
            r["credential"].as_str().unwrap().to_string(),
        )
    }

    async fn request(&self, names: &[&str]) -> String {
        let (status, r) = self
            .call(
                "POST",
                &self.admin,
                "/api/v1/requests",
                json!({"common_name": names[0], "sans": names, "key_type": "p256"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        r["id"].as_str().unwrap().to_string()
    }

    /// Start ordering `id` in the background (the order waits for the agent).
    fn order(
        self: &Arc<Self>,
        id: &str,
        body: Value,
    ) -> tokio::task::JoinHandle<(StatusCode, Value)> {
        let s = self.clone();
        let path = format!("/api/v1/requests/{id}/acme");
        tokio::spawn(async move {
            let admin = s.admin.clone();
            s.call("POST", &admin, &path, body).await
        })
    }

    /// Claim as the agent until an http01 job comes (or 10 s pass).
    async fn claim_http01(&self, credential: &str) -> Value {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, v) = self
                .call("POST", credential, "/api/v1/agent/jobs/claim", json!({}))
                .await;
            assert_eq!(status, StatusCode::OK, "{v}");
            if let Some(j) = v["jobs"].as_array().and_then(|a| a.first()) {
                return j.clone();
            }
            assert!(Instant::now() < until, "no http01 job came");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What the test serves on pebble's http-01 port (5002), as an agent would.
#[derive(Clone, Default)]
struct Responder(Arc<Mutex<HashMap<String, String>>>);

impl Responder {
    async fn start() -> Responder {
        let r = Responder::default();
        let map = r.0.clone();
        let app = axum::Router::new().route(
            "/.well-known/acme-challenge/{token}",
            axum::routing::get(move |axum::extract::Path(t): axum::extract::Path<String>| {
                let map = map.clone();
                async move {
                    match map.lock().unwrap().get(&t).cloned() {
                        Some(k) => (StatusCode::OK, k),
                        None => (StatusCode::NOT_FOUND, String::new()),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:5002")
            .await
            .unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        r
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_waits_for_the_agent_to_serve_http01_and_ends_its_job_with_the_order() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pebble = Pebble::start_with(&PebbleOptions::default())
        .expect("pebble (Debian package `pebble`) must be installed; .ci/run installs it");
    let responder = Responder::start().await;
    for tdb in db::all().unwrap() {
        let label = tdb.label;
        let s = Arc::new(Server::start(acme_config(&pebble), tdb).await);
        let (agent, credential) = s.enroll().await;
        let (_, other_credential) = s.enroll().await;

        // The order waits; the agent's job carries the token and key authorization only.
        let id = s.request(&["www.agent.test"]).await;
        let order = s.order(&id, json!({"http01_agent": agent}));
        let job = s.claim_http01(&credential).await;
        assert_eq!(job["kind"], "http01", "{job}");
        let keys: BTreeSet<&str> = job
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "attempt",
                "http01",
                "id",
                "kind",
                "lease",
                "lease_until",
                "max_attempts"
            ]
            .into(),
            "{job}"
        );
        let h = &job["http01"];
        let h_keys: BTreeSet<&str> = h.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(h_keys, ["key_authorization", "request", "token"].into());
        assert_eq!(h["request"], id.as_str());
        let token = h["token"].as_str().unwrap().to_string();
        let key_auth = h["key_authorization"].as_str().unwrap().to_string();
        assert!(key_auth.starts_with(&format!("{token}.")), "{job}");
        assert_eq!(job["max_attempts"], 1, "one attempt: a lost lease fails it");
        let job_id = job["id"].as_str().unwrap().to_string();
        let result = format!("/api/v1/agent/jobs/{job_id}/result");
        let status_path = format!("/api/v1/agent/jobs/{job_id}");

        // Another agent neither sees nor reports it; wrong results are refused.
        let (st, _) = s
            .call("GET", &other_credential, &status_path, json!({}))
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (st, _) = s
            .call(
                "POST",
                &other_credential,
                &result,
                json!({"lease": job["lease"], "status": "ready"}),
            )
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (st, v) = s
            .call(
                "POST",
                &credential,
                &result,
                json!({"lease": job["lease"], "status": "succeeded"}),
            )
            .await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{v}"
        );
        let (st, v) = s
            .call(
                "POST",
                &credential,
                &result,
                json!({"lease": "not-the-lease", "status": "ready"}),
            )
            .await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("lease_lost")),
            "{v}"
        );
        // Not ready yet: the CA has not been asked, the order still waits.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !order.is_finished(),
            "the order went on before the agent was ready"
        );
        assert!(
            !pebble.log().contains(&token),
            "pebble validated before the agent said it serves the token"
        );

        // Serving now: ready, then pebble validates and the certificate is issued.
        responder
            .0
            .lock()
            .unwrap()
            .insert(token.clone(), key_auth.clone());
        let (st, v) = s
            .call(
                "POST",
                &credential,
                &result,
                json!({"lease": job["lease"], "status": "ready"}),
            )
            .await;
        assert_eq!(
            (st, v["state"].as_str()),
            (StatusCode::OK, Some("leased")),
            "{v}"
        );
        let (st, issued) = tokio::time::timeout(Duration::from_secs(60), order)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(st, StatusCode::CREATED, "{label}: {issued}");
        assert_eq!(issued["challenge"], "http-01");
        assert!(pebble.log().contains(&token), "pebble fetched the token");
        responder.0.lock().unwrap().remove(&token);
        // The job ended with the order; a late ready counts for nothing.
        let (st, v) = s.call("GET", &credential, &status_path, json!({})).await;
        assert_eq!(
            (st, v["state"].as_str()),
            (StatusCode::OK, Some("succeeded")),
            "{v}"
        );
        let (st, v) = s
            .call(
                "POST",
                &credential,
                &result,
                json!({"lease": job["lease"], "status": "ready"}),
            )
            .await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("lease_lost")),
            "{v}"
        );

        // The renewal goes to the same agent: this server answers no http-01 itself
        // (no http01_listen), so an http-01 renewal can only be the agent's. Pebble may
        // reuse the valid authorization (no new challenge); any challenge is served.
        let sha = issued["sha256"].as_str().unwrap().to_string();
        let mut renewal = {
            let s = s.clone();
            tokio::spawn(async move {
                let admin = s.admin.clone();
                s.call(
                    "POST",
                    &admin,
                    &format!("/api/v1/certificates/{sha}/renew"),
                    json!({}),
                )
                .await
            })
        };
        let (st, renewed) = loop {
            tokio::select! {
                r = &mut renewal => break r.unwrap(),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            let (_, v) = s
                .call("POST", &credential, "/api/v1/agent/jobs/claim", json!({}))
                .await;
            for job in v["jobs"].as_array().unwrap() {
                let h = &job["http01"];
                responder.0.lock().unwrap().insert(
                    h["token"].as_str().unwrap().to_string(),
                    h["key_authorization"].as_str().unwrap().to_string(),
                );
                let (st, _) = s
                    .call(
                        "POST",
                        &credential,
                        &format!("/api/v1/agent/jobs/{}/result", job["id"].as_str().unwrap()),
                        json!({"lease": job["lease"], "status": "ready"}),
                    )
                    .await;
                assert_eq!(st, StatusCode::OK);
            }
        };
        assert_eq!(st, StatusCode::CREATED, "{renewed}");
        assert_eq!(renewed["certificate"]["challenge"], "http-01", "{renewed}");

        // The agent cannot serve: the order fails at once with its reason.
        let id = s.request(&["fail.agent.test"]).await;
        let began = Instant::now();
        let order = s.order(&id, json!({"http01_agent": agent, "challenge": "http-01"}));
        let job = s.claim_http01(&credential).await;
        let (st, _) = s
            .call(
                "POST",
                &credential,
                &format!("/api/v1/agent/jobs/{}/result", job["id"].as_str().unwrap()),
                json!({"lease": job["lease"], "status": "failed",
                       "error": {"code": "bad_job", "message": "no [acme] http01_listen here"}}),
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        let (st, v) = order.await.unwrap();
        assert_eq!(st, StatusCode::GATEWAY_TIMEOUT, "{v}");
        assert_eq!(v["error"]["code"], "http01_agent_unavailable", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("bad_job") && msg.contains("no [acme] http01_listen here"),
            "{msg}"
        );
        assert!(
            began.elapsed() < Duration::from_secs(15),
            "{:?}",
            began.elapsed()
        );

        // The agent takes the job and never reports: failed after the wait, job ended.
        let began = Instant::now();
        let order = s.order(&id, json!({"http01_agent": agent}));
        let job = s.claim_http01(&credential).await;
        let (st, v) = order.await.unwrap();
        assert_eq!(st, StatusCode::GATEWAY_TIMEOUT, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("did not report serving the token within 3 s"),
            "{v}"
        );
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "{:?}",
            began.elapsed()
        );
        let (_, v) = s
            .call(
                "GET",
                &credential,
                &format!("/api/v1/agent/jobs/{}", job["id"].as_str().unwrap()),
                json!({}),
            )
            .await;
        assert_eq!(v["state"], "failed", "{v}");
        assert_eq!(v["last_error"]["code"], "agent_timeout", "{v}");
        // Later attempts of that order were not queued: nothing left to claim.
        let (_, v) = s
            .call("POST", &credential, "/api/v1/agent/jobs/claim", json!({}))
            .await;
        assert_eq!(v["jobs"], json!([]), "{v}");
    }
}
