//! How many ticket operations per second go through the ServiceNow connector to the
//! in-process simulator with 16 in flight, and their latency.
//!
//! One operation is what a run does for one finding: a find followed by a create (a
//! new key), or a find followed by a note (a key seen before). The two alternate per
//! worker, so the mix is half and half. Run with
//! `cargo bench -p certkeeper-connect --bench servicenow` (`BENCH_SECS` and
//! `BENCH_IN_FLIGHT` change the 5 s and the 16).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use certkeeper_connect::ticketing::servicenow::{ServiceNow, ServiceNowConfig};
use certkeeper_connect::ticketing::{NewTicket, Priority, RetryPolicy, token};
use certkeeper_testkit::servicenow_sim::{self, SnOptions};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(run());
}

async fn run() {
    let secs = env_u64("BENCH_SECS", 5);
    let in_flight = env_u64("BENCH_IN_FLIGHT", 16);
    let sim = servicenow_sim::start(SnOptions::default())
        .await
        .expect("simulator");
    let cfg = ServiceNowConfig::new(&sim.url(), "certkeeper", "integration-pw");
    let sn = ServiceNow::new(
        cfg,
        RetryPolicy {
            timeout: Duration::from_secs(10),
            ..RetryPolicy::default()
        },
    )
    .expect("connector");
    let next_key = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..in_flight {
        let sn = sn.clone();
        let next_key = next_key.clone();
        let failures = failures.clone();
        workers.push(tokio::spawn(async move {
            let mut creates = Vec::new();
            let mut notes = Vec::new();
            let subject = "SSL Certificate www.example.test expiry";
            let body = "The SSL Certificate www.example.test expiring soon, please take care";
            while Instant::now() < deadline {
                // find + create on a new key …
                let n = next_key.fetch_add(1, Ordering::Relaxed);
                let key = token(&format!("expiry|{n:016X}|192.0.2.10"));
                let t0 = Instant::now();
                let created = match sn.find_by_key(&key).await {
                    Ok(found) if found.is_empty() => sn
                        .create(&NewTicket {
                            subject,
                            body,
                            priority: Priority::High,
                            key: &key,
                        })
                        .await
                        .ok(),
                    _ => None,
                };
                creates.push(t0.elapsed());
                let Some(_created) = created else {
                    failures.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                // … then find + note on the same key.
                let t0 = Instant::now();
                let ok = match sn.find_by_key(&key).await {
                    Ok(found) if found.len() == 1 => sn
                        .add_note(&found[0].id, "Scan results: unchanged")
                        .await
                        .is_ok(),
                    _ => false,
                };
                notes.push(t0.elapsed());
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            (creates, notes)
        }));
    }
    let mut creates = Vec::new();
    let mut notes = Vec::new();
    for w in workers {
        let (c, n) = w.await.expect("worker");
        creates.extend(c);
        notes.extend(n);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut all: Vec<Duration> = creates.iter().chain(notes.iter()).copied().collect();
    all.sort();
    creates.sort();
    notes.sort();
    let ops = all.len();
    let http_calls = sim.calls().len();
    println!(
        "servicenow: {in_flight} in flight for {elapsed:.1} s: {ops} ticket operations ({} find+create, {} find+note), {:.0} ops/s, {:.0} HTTP calls/s, {} failed",
        creates.len(),
        notes.len(),
        ops as f64 / elapsed,
        http_calls as f64 / elapsed,
        failures.load(Ordering::Relaxed)
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "latency (ms): all p50 {:.2} p99 {:.2}; find+create p50 {:.2} p99 {:.2}; find+note p50 {:.2} p99 {:.2}",
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.99)),
        ms(percentile(&creates, 0.50)),
        ms(percentile(&creates, 0.99)),
        ms(percentile(&notes, 0.50)),
        ms(percentile(&notes, 0.99)),
    );
    println!("simulator: {} incidents at the end", sim.incidents().len());
}
