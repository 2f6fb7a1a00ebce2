//! Ingest and query speed of a fresh SQLite server, in-process over HTTPS.
//!
//! `cargo bench -p certkeeper --bench ingest`
//!
//! 1. Ingests `CK_BENCH_CERTS` (default 100,000) distinct certificates as reports of
//!    100 observations, `CK_BENCH_PARALLEL` (default 2) reports in flight, and prints
//!    certificates ingested per second (target ≥ 5,000/s).
//! 2. Grows the inventory to `CK_BENCH_TOTAL` (default 1,000,000) certificates and prints
//!    the latency of `GET /api/v1/certificates?expiring_within_days=30&limit=100`
//!    (target p50 ≤ 50 ms).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
    SerialNumber,
};
use serde_json::{Value, json};
use time::OffsetDateTime;

const PER_REPORT: usize = 100;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Distinct leaves, cheaply: one key, one issuer, a serial and a name per certificate,
/// validity spread over the next 400 days (about 7% expire within 30 days).
struct Factory {
    issuer: Issuer<'static, KeyPair>,
    leaf_key: KeyPair,
    now: OffsetDateTime,
}

impl Factory {
    fn new() -> Self {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "bench intermediate");
        p.distinguished_name = dn;
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        Factory {
            issuer: Issuer::new(p, ca_key),
            leaf_key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
            now: OffsetDateTime::now_utc(),
        }
    }

    fn leaf(&self, n: u64) -> Vec<u8> {
        let name = format!("host{n}.bench.example");
        let mut p = CertificateParams::new(vec![name.clone()]).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        p.distinguished_name = dn;
        p.serial_number = Some(SerialNumber::from((n + 1).to_be_bytes().to_vec()));
        p.not_before = self.now - time::Duration::days(10);
        p.not_after = self.now + time::Duration::days(1 + (n % 400) as i64);
        p.signed_by(&self.leaf_key, &self.issuer)
            .unwrap()
            .der()
            .to_vec()
    }
}

/// Serialised reports `[from, to)` of `PER_REPORT` certificates each, built on all cores.
fn reports(factory: &Arc<Factory>, from: usize, to: usize) -> Vec<Vec<u8>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let chunk = (to - from).div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let f = factory.clone();
            std::thread::spawn(move || {
                let start = from + t * chunk;
                let end = (start + chunk).min(to);
                (start..end)
                    .map(|r| {
                        let obs: Vec<Value> = (0..PER_REPORT)
                            .map(|i| {
                                let n = (r * PER_REPORT + i) as u64;
                                let der = f.leaf(n);
                                json!({
                                    "host": format!("host{n}.bench.example"),
                                    "ip": format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255),
                                    "port": 443,
                                    "sni": format!("host{n}.bench.example"),
                                    "seen_at": "2026-11-24T08:00:00Z",
                                    "outcome": {"status": "tls", "protocol": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256",
                                                "chain": [base64::engine::general_purpose::STANDARD.encode(&der)]},
                                })
                            })
                            .collect();
                        serde_json::to_vec(&json!({
                            "report_id": format!("bench-{r}"),
                            "agent_version": "bench",
                            "hostname": "bench",
                            "started_at": "2026-11-24T08:00:00Z",
                            "finished_at": "2026-11-24T08:01:00Z",
                            "watched_endpoints": PER_REPORT,
                            "observations": obs,
                        }))
                        .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

async fn push_all(
    client: &reqwest::Client,
    url: &str,
    cred: &str,
    bodies: Vec<Vec<u8>>,
    parallel: usize,
) {
    let bodies = Arc::new(std::sync::Mutex::new(bodies.into_iter()));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (client, url, cred, bodies) = (
            client.clone(),
            url.to_string(),
            cred.to_string(),
            bodies.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let next = bodies.lock().unwrap().next();
                let Some(body) = next else { break };
                let r = client
                    .post(&url)
                    .bearer_auth(&cred)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(
                    r.status().is_success(),
                    "{}",
                    r.text().await.unwrap_or_default()
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let first = env_usize("CK_BENCH_CERTS", 100_000);
    let total = env_usize("CK_BENCH_TOTAL", 1_000_000).max(first);
    let parallel = env_usize("CK_BENCH_PARALLEL", 2);
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
        .build()
        .unwrap();
    let base = format!("https://{addr}");
    let tok: Value = client
        .post(format!("{base}/api/v1/agents/enrollment-tokens"))
        .bearer_auth(&admin)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let enrolled: Value = client
        .post(format!("{base}/api/v1/agents/enroll"))
        .bearer_auth(tok["token"].as_str().unwrap())
        .json(&json!({"hostname": "bench", "version": "bench"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cred = enrolled["credential"].as_str().unwrap().to_string();
    let url = format!("{base}/api/v1/reports");
    let factory = Arc::new(Factory::new());

    // 1. Ingest rate on a fresh SQLite inventory.
    let t = Instant::now();
    let bodies = reports(&factory, 0, first / PER_REPORT);
    eprintln!("generated {first} certificates in {:.1?}", t.elapsed());
    let t = Instant::now();
    push_all(&client, &url, &cred, bodies, parallel).await;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "ingest: {first} certificates in {} reports of {PER_REPORT}, {parallel} in flight: {secs:.1} s = {:.0} certificates/s (target >= 5000)",
        first / PER_REPORT,
        first as f64 / secs
    );

    // 2. Grow to `total`, in slices so memory stays bounded.
    let mut have = first;
    let t = Instant::now();
    while have < total {
        let n = (total - have).min(100_000);
        let bodies = reports(&factory, have / PER_REPORT, (have + n) / PER_REPORT);
        push_all(&client, &url, &cred, bodies, parallel).await;
        have += n;
        eprintln!("inventory: {have} certificates ({:.0?})", t.elapsed());
    }

    // 3. Query latency on the full inventory.
    let q = format!("{base}/api/v1/certificates?expiring_within_days=30&limit=100");
    let mut lat = Vec::new();
    for i in 0..220 {
        let t = Instant::now();
        let r = client.get(&q).bearer_auth(&admin).send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        let d = t.elapsed();
        assert_eq!(v["items"].as_array().unwrap().len(), 100);
        if i >= 20 {
            lat.push(d); // the first 20 warm the caches
        }
    }
    lat.sort();
    println!(
        "query: GET /api/v1/certificates?expiring_within_days=30&limit=100 on {have} certificates: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms (target p50 <= 50 ms)",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.95).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3
    );
}
