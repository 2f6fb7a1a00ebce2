//! One full expiry-notification run over a large inventory: 1,000,000 certificates
//! (each served at an endpoint) of which 10,000 expire within 30 days, on the
//! embedded SQLite. The run evaluates the default policy (30/14/7/1 days) over what
//! is within its horizon, claims each message once, queues the digest and one
//! expiry ticket action per certificate and address, then delivers the digest (10,000
//! rows, HTML and CSV) to a real SMTP server (Debian's aiosmtpd). The same over
//! 100,000 certificates (the same 10,000 due) shows that time and memory follow what
//! expires, not the size of the inventory. Target (issue 4): under 10 s on 2 cores.
//!
//! `cargo bench -p certkeeper-server --bench notify` (BENCH_CERTS=N for another size).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use certkeeper_connect::notify::email::{SmtpConfig, SmtpTls};
use certkeeper_connect::ticketing::servicenow::{ServiceNow, ServiceNowConfig};
use certkeeper_connect::ticketing::{Connector, RetryPolicy};
use certkeeper_core::notify::{Channel, ExpiryPolicy};
use certkeeper_server::notify::{self, EmailSettings, NotifySettings, TicketSystem};
use certkeeper_server::{ServerConfig, prepare};
use certkeeper_testkit::smtp::{SinkOptions, SmtpSink};
use sqlx::Connection;
use time::OffsetDateTime;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Fill the inventory with `n` certificates, one endpoint each; `due` of them
/// expire within 30 days of `now`.
async fn fill(url: &str, n: u64, due: u64, now: i64) {
    let every = (n / due).max(1);
    let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
    let day = 86_400i64;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
         INSERT INTO certificates (sha256, der, sha1, serial, subject, common_name, sans, issuer, not_before, not_after, \
         key_type, key_bits, key_curve, signature_algorithm, is_ca, self_signed, subject_key_id, authority_key_id, \
         ocsp_urls, ca_issuer_urls, crl_urls, first_seen) \
         SELECT printf('%064x', i), x'00', printf('%040x', i), printf('%x', i), 'CN=host' || i || '.bench.test', \
         'host' || i || '.bench.test', '[\"host' || i || '.bench.test\"]', 'CN=Bench CA, O=Bench', {nb}, \
         CASE WHEN i % {every} = 0 THEN {now} + (i * 7919) % {month} + 60 ELSE {now} + {month} * 2 + (i * 7919) % (365 * {day}) END, \
         'ec', 256, 'P-256', 'ecdsa-with-SHA256', 0, 0, NULL, NULL, '[]', '[]', '[]', {nb} FROM n",
        nb = now - 60 * day,
        month = 30 * day,
    )))
    .execute(&mut c)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
         INSERT INTO endpoints (id, host, ip, port, first_seen, last_seen, last_checked, sha256) \
         SELECT i, 'host' || i || '.bench.test', '10.' || ((i >> 16) & 255) || '.' || ((i >> 8) & 255) || '.' || (i & 255), \
         443, {now}, {now}, {now}, printf('%064x', i) FROM n"
    )))
    .execute(&mut c)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO served_history (endpoint_id, sha256, first_seen, last_seen) \
         SELECT id, sha256, {now}, {now} FROM endpoints"
    )))
    .execute(&mut c)
    .await
    .unwrap();
    sqlx::query("ANALYZE").execute(&mut c).await.unwrap();
    c.close().await.unwrap();
}

struct Figures {
    certs: u64,
    due: usize,
    run: Duration,
    deliver: Duration,
    rss_growth_mib: f64,
    ticket_actions: usize,
}

async fn once(n: u64, due: u64, sink: &SmtpSink) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let url = certkeeper_store::sqlite_url_in(dir.path());
    let now = OffsetDateTime::now_utc();
    // Migrate first (an empty store), then fill behind its back.
    certkeeper_store::Store::open(&url)
        .await
        .unwrap()
        .close()
        .await;
    let t = Instant::now();
    fill(&url, n, due, now.unix_timestamp()).await;
    eprintln!(
        "  filled {n} certificates in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let mut cfg = ServerConfig::new(dir.path());
    cfg.http = true;
    cfg.external_url = Some("https://ck.bench.test:8443".into());
    let mut ns = NotifySettings::new();
    ns.background = false;
    ns.email = Some(EmailSettings {
        smtp: SmtpConfig {
            host: "127.0.0.1".into(),
            port: sink.port(),
            tls: SmtpTls::None,
            username: None,
            password: None,
            from: "certkeeper@bench.test".into(),
            ca_file: None,
            timeout_secs: 120,
        },
        to: vec!["ops@bench.test".into()],
    });
    ns.policies = vec![ExpiryPolicy::default_policy(vec![Channel::Email])];
    // A ticketing system takes expiry tickets: the run queues one action per
    // certificate and address (worked later; not part of this figure).
    ns.ticketing = vec![TicketSystem {
        connector: Connector::ServiceNow(
            ServiceNow::new(
                ServiceNowConfig::new("http://127.0.0.1:9", "bench", "bench"),
                RetryPolicy::default(),
            )
            .unwrap(),
        ),
        expiry: true,
        vulnerability: false,
        resolve_on_renewal: false,
        new_when_reopen_refused: true,
    }];
    cfg.notify = ns;
    let prepared = prepare(cfg).await.unwrap();
    let state = prepared.state.clone();

    let base = rss_kib();
    let peak = Arc::new(AtomicU64::new(base));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let t = Instant::now();
    let summary = notify::run_at(&state, now).await.unwrap();
    let run = t.elapsed();
    let t = Instant::now();
    let (sent, retried, failed) = notify::deliver_due(&state, now).await.unwrap();
    let deliver = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!((sent, retried, failed), (1, 0, 0), "the digest went out");
    let p = &summary.policies[0];
    state.store.close().await;
    Figures {
        certs: n,
        due: p.due,
        run,
        deliver,
        rss_growth_mib: (peak.load(Ordering::Relaxed).saturating_sub(base)) as f64 / 1024.0,
        ticket_actions: p.ticket_work_queued,
    }
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let big: u64 = std::env::var("BENCH_CERTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    rt.block_on(async {
        let sink = SmtpSink::start(&SinkOptions {
            raw_only: true,
            ..Default::default()
        })
        .unwrap();
        let mut rows = Vec::new();
        // The same 10,000 due in a tenth of the inventory and in all of it.
        for n in [big / 10, big] {
            eprintln!("inventory of {n}:");
            rows.push(once(n, 10_000, &sink).await);
        }
        println!(
            "{:>10} {:>8} {:>9} {:>10} {:>10} {:>14} {:>12}",
            "certs", "due", "run s", "deliver s", "total s", "RSS growth MiB", "ticket work"
        );
        for f in &rows {
            println!(
                "{:>10} {:>8} {:>9.2} {:>10.2} {:>10.2} {:>14.1} {:>12}",
                f.certs,
                f.due,
                f.run.as_secs_f64(),
                f.deliver.as_secs_f64(),
                (f.run + f.deliver).as_secs_f64(),
                f.rss_growth_mib,
                f.ticket_actions
            );
        }
        let total = (rows[1].run + rows[1].deliver).as_secs_f64();
        println!(
            "full run over {} certificates: {:.2} s against the 10 s target ({:.1}x under it)",
            rows[1].certs,
            total,
            10.0 / total
        );
        let mail = sink.messages().unwrap();
        println!(
            "digests received by the SMTP server: {} (last one {} bytes)",
            mail.len(),
            mail.last().map(|m| m.raw.len()).unwrap_or(0)
        );
    });
}
