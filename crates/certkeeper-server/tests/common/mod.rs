//! The server in-process for tests: a real server on 127.0.0.1:0 with a temp data
//! dir, spoken to over real HTTP(S) with reqwest.
#![allow(dead_code)]

use std::net::SocketAddr;

use anyhow::Result;
use certkeeper_server::{Prepared, ServerConfig, prepare};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::oneshot;

use std::net::IpAddr;

use certkeeper_server::AppState;
use certkeeper_store::{NewAgent, ParsedCert, ReportMeta, Sighting, SightingResult};
use certkeeper_testkit::{KeyKind, LeafSpec, TestPki};
use time::{Duration, OffsetDateTime};

pub struct Running {
    pub base: String,
    pub admin: String,
    pub fingerprint: Option<String>,
    pub client: reqwest::Client,
    pub _dir: Option<tempfile::TempDir>,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<()>,
    /// The server's state, for driving its jobs with an injected clock.
    pub state: certkeeper_server::AppState,
}

impl Running {
    /// `GET base+path` as the administrator.
    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
    }

    /// `POST base+path` with a JSON body as the administrator.
    pub async fn admin_post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub async fn start(config: impl FnOnce(&mut ServerConfig)) -> Result<Running> {
    let dir = tempfile::tempdir()?;
    let mut r = start_at(dir.path(), config).await?;
    r._dir = Some(dir);
    Ok(r)
}

/// A server on a data directory the caller keeps (to restart on it).
pub async fn start_at(
    data_dir: &std::path::Path,
    config: impl FnOnce(&mut ServerConfig),
) -> Result<Running> {
    install_provider();
    let mut cfg = ServerConfig::new(data_dir);
    cfg.http = true;
    config(&mut cfg);
    let http = cfg.http;
    let preset = cfg.admin_token.clone();
    let prepared: Prepared = prepare(cfg).await?;
    let admin = match (&prepared.created_admin_token, preset) {
        (Some(t), _) => t.clone(),
        (None, Some(p)) => p,
        (None, None) => std::fs::read_to_string(data_dir.join("admin.token"))?,
    };
    let fingerprint = prepared.certificate_fingerprint.map(|f| f.to_string());
    let state = prepared.state.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        prepared
            .launch(listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    let (base, client) = if http {
        (format!("http://{addr}"), reqwest::Client::new())
    } else {
        let pem = std::fs::read(data_dir.join("server.crt"))?;
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
            .build()?;
        (format!("https://{addr}"), client)
    };
    // Ready when /healthz answers, not after a sleep.
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await
            && r.status() == StatusCode::OK
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(Running {
        base,
        admin,
        fingerprint,
        client,
        _dir: None,
        stop: Some(tx),
        task,
        state,
    })
}

pub async fn enroll(state: &AppState, id: &str) {
    let now = OffsetDateTime::now_utc();
    let tok = format!("enroll-{id}");
    state
        .store
        .create_enrollment_token(&tok, now, now + Duration::hours(1), 1)
        .await
        .unwrap();
    state
        .store
        .enroll_agent(
            &tok,
            &NewAgent {
                id: id.into(),
                name: id.into(),
                hostname: "scanner".into(),
                version: "0.1.0".into(),
            },
            &format!("cred-{id}"),
            now,
        )
        .await
        .unwrap();
}

/// Record that `host` at `ip`:443 serves `der`, as an agent report would.
pub async fn serve(
    state: &AppState,
    report: &str,
    host: &str,
    ip: [u8; 4],
    der: &[u8],
    at: OffsetDateTime,
) {
    serve_at(state, report, host, ip, 443, der, at).await
}

/// [`serve`] on another port.
pub async fn serve_at(
    state: &AppState,
    report: &str,
    host: &str,
    ip: [u8; 4],
    port: u16,
    der: &[u8],
    at: OffsetDateTime,
) {
    let parsed = ParsedCert {
        facts: certkeeper_pki::parse_der(der).unwrap(),
        der: der.to_vec(),
    };
    state
        .store
        .ingest(
            &ReportMeta {
                agent_id: "ag1",
                report_id: report,
                watched_endpoints: 1,
                hostname: "scanner",
                agent_version: "0.1.0",
            },
            &[Sighting {
                host: host.into(),
                ip: IpAddr::from(ip),
                port,
                sni: Some(host.into()),
                seen_at: at,
                result: SightingResult::Tls {
                    protocol: "TLSv1.3".into(),
                    cipher: "TLS_AES_128_GCM_SHA256".into(),
                    starttls: None,
                    chain: vec![parsed],
                    note: None,
                },
            }],
            at,
        )
        .await
        .unwrap();
}

pub fn sha(der: &[u8]) -> String {
    certkeeper_pki::parse_der(der).unwrap().sha256.to_string()
}

/// A leaf of the test PKI with exactly this validity.
pub fn leaf(
    pki: &TestPki,
    name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Vec<u8> {
    let mut spec = LeafSpec::new(name, KeyKind::EcdsaP256);
    spec.not_before = not_before;
    spec.not_after = not_after;
    pki.leaf(&spec).unwrap().der
}
