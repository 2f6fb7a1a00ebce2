//! Expiry and vulnerability tickets end to end with an injected clock: a real server
//! in-process, the ServiceNow simulator (the contract's checklist, faults included)
//! and Debian's real Request Tracker 5. Tickets are created once per certificate and
//! address, left alone while open, reopened after being resolved (a new one citing
//! the old when the system refuses), escalated, noted and resolved once renewed.

mod common;

use std::time::Duration as StdDuration;

use certkeeper_connect::ticketing::rt::{Rt, RtConfig};
use certkeeper_connect::ticketing::servicenow::{ServiceNow, ServiceNowConfig};
use certkeeper_connect::ticketing::{Connector, NormStatus, RetryPolicy, token};
use certkeeper_core::findings::{Finding, FindingKind, Severity};
use certkeeper_core::notify::ExpiryPolicy;
use certkeeper_core::tickets::{expiry_key_text, vuln_key_text};
use certkeeper_server::notify::{self, NotifySettings, TicketSystem};
use certkeeper_server::{AppState, ServerConfig};
use certkeeper_testkit::servicenow_sim::{self, SnFault, SnOptions};
use certkeeper_testkit::{TestPki, db};
use common::*;
use serde_json::Value;
use time::{Duration, OffsetDateTime};

fn fast() -> RetryPolicy {
    RetryPolicy {
        tries: 4,
        base: StdDuration::from_millis(50),
        cap: StdDuration::from_millis(200),
        max_wait: StdDuration::from_secs(3),
        timeout: StdDuration::from_secs(1),
    }
}

fn sn_connector(sim: &servicenow_sim::ServiceNowSim) -> Connector {
    let c = ServiceNowConfig::new(&sim.url(), "certkeeper", "integration-pw");
    Connector::ServiceNow(ServiceNow::new(c, fast()).unwrap())
}

fn rt_connector() -> Option<Connector> {
    let rt = certkeeper_testkit::rt::test_rt()?;
    let c: RtConfig = serde_json::from_value(serde_json::json!({"url": rt.url, "token": rt.token}))
        .expect("an RT config");
    Some(Connector::Rt(Rt::new(c, fast()).unwrap()))
}

fn configure(systems: Vec<TicketSystem>, url: Option<String>) -> impl FnOnce(&mut ServerConfig) {
    move |c: &mut ServerConfig| {
        let mut n = NotifySettings::new();
        n.background = false;
        n.retry_base = StdDuration::from_secs(5);
        // Tickets only: no channel is configured.
        n.policies = vec![ExpiryPolicy::default_policy(Vec::new())];
        n.ticketing = systems;
        c.notify = n;
        c.database_url = url;
        c.external_url = Some("https://ck.example.test:8443".into());
    }
}

async fn tick(state: &AppState, at: OffsetDateTime) -> (usize, usize, usize) {
    notify::run_at(state, at).await.unwrap();
    notify::work_tickets(state, at).await.unwrap()
}

fn system(connector: Connector) -> TicketSystem {
    TicketSystem {
        connector,
        expiry: true,
        vulnerability: true,
        resolve_on_renewal: true,
        new_when_reopen_refused: true,
    }
}

fn ours(
    sim: &servicenow_sim::ServiceNowSim,
    key: &str,
) -> Vec<std::collections::BTreeMap<String, String>> {
    sim.incidents()
        .into_iter()
        .filter(|i| i.get("correlation_id").map(String::as_str) == Some(key))
        .collect()
}

#[tokio::test]
async fn expiry_tickets_follow_the_certificate_from_first_warning_to_renewal() {
    let pki = TestPki::new().unwrap();
    let t0 = OffsetDateTime::now_utc().replace_time(time::Time::from_hms(9, 30, 0).unwrap());
    let day = |d: f64| t0 + Duration::seconds_f64(d * 86400.0);
    let a = leaf(
        &pki,
        "a.example.test",
        t0 - Duration::days(60),
        t0 + Duration::days(31),
    );
    let b = leaf(
        &pki,
        "b.example.test",
        t0 - Duration::days(60),
        t0 + Duration::days(40),
    );
    let a2 = leaf(
        &pki,
        "a.example.test",
        t0 + Duration::days(24),
        t0 + Duration::days(114),
    );
    let a_serial = certkeeper_pki::parse_der(&a).unwrap().serial.to_string();
    let b_serial = certkeeper_pki::parse_der(&b).unwrap().serial.to_string();
    for tdb in db::all().unwrap() {
        let sim = servicenow_sim::start(SnOptions::default()).await.unwrap();
        let url = (tdb.label == "postgres").then(|| tdb.url.clone());
        let s = start(configure(vec![system(sn_connector(&sim))], url))
            .await
            .unwrap();
        enroll(&s.state, "ag1").await;
        serve(
            &s.state,
            "r1",
            "a.example.test",
            [192, 0, 2, 10],
            &a,
            day(-1.0),
        )
        .await;
        // b is served at two addresses: two tickets, one per serial and IP.
        serve(
            &s.state,
            "r2",
            "b.example.test",
            [192, 0, 2, 20],
            &b,
            day(-1.0),
        )
        .await;
        serve(
            &s.state,
            "r3",
            "b.example.test",
            [192, 0, 2, 21],
            &b,
            day(-1.0),
        )
        .await;
        let ka = token(&expiry_key_text(&a_serial, "192.0.2.10".parse().unwrap()));
        let kb20 = token(&expiry_key_text(&b_serial, "192.0.2.20".parse().unwrap()));
        let kb21 = token(&expiry_key_text(&b_serial, "192.0.2.21".parse().unwrap()));

        // 29 days left for a, 38 for b: one ticket, High.
        assert_eq!(tick(&s.state, day(2.0)).await, (1, 0, 0), "{}", tdb.label);
        let inc = ours(&sim, &ka);
        assert_eq!(inc.len(), 1);
        assert_eq!(
            inc[0]["short_description"],
            "SSL Certificate a.example.test expiry"
        );
        assert!(inc[0]["description"].starts_with("The SSL Certificate a.example.test expiring soon, please take care\nCommon Name: a.example.test\nExpiry Date: "));
        assert!(
            inc[0]["description"]
                .ends_with("Scanned by: certkeeper running at https://ck.example.test:8443")
        );
        assert_eq!(inc[0]["priority"], "2", "High");
        let a_sys = inc[0]["sys_id"].clone();
        let a_number = inc[0]["number"].clone();

        // Open: left alone, on later runs of the period and the next days.
        tick(&s.state, day(2.2)).await;
        tick(&s.state, day(3.0)).await;
        assert_eq!(ours(&sim, &ka).len(), 1);
        assert_eq!(
            sim.journal(&a_sys).len(),
            0,
            "nothing written to an open ticket"
        );

        // b crosses 30 days: its two tickets.
        tick(&s.state, day(11.0)).await;
        assert_eq!((ours(&sim, &kb20).len(), ours(&sim, &kb21).len()), (1, 1));
        let list: Value = s.admin_get("/api/v1/tickets").await.json().await.unwrap();
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 3, "{list}");
        let rec = items.iter().find(|t| t["key"] == ka).unwrap();
        assert_eq!(rec["ticket_number"], a_number.as_str());
        assert_eq!(rec["status"], "active");
        assert_eq!(rec["ip"], "192.0.2.10");
        assert_eq!(rec["serial"], a_serial.as_str());
        assert_eq!(rec["system"], "servicenow");

        // Someone resolves a's ticket, but the certificate is not renewed: reopened.
        sim.force(
            &a_sys,
            &[
                ("state", "6"),
                ("close_code", "Solution provided"),
                ("close_notes", "done"),
            ],
        );
        tick(&s.state, day(12.0)).await;
        let inc = sim.incident(&a_sys).unwrap();
        assert_eq!(inc["state"], "2", "{}: reopened to In Progress", tdb.label);
        assert_eq!(inc["reopen_count"], "1");
        assert!(
            sim.journal(&a_sys)
                .iter()
                .any(|j| j.value.starts_with("Reopened by certkeeper"))
        );
        // ... and again later, each time it is resolved.
        sim.force(
            &a_sys,
            &[
                ("state", "6"),
                ("close_code", "Solution provided"),
                ("close_notes", "done"),
            ],
        );
        tick(&s.state, day(13.0)).await;
        assert_eq!(sim.incident(&a_sys).unwrap()["reopen_count"], "2");
        assert_eq!(
            ours(&sim, &ka).len(),
            1,
            "never a second ticket while one can be reopened"
        );

        // Closed (7) cannot be reopened: a new ticket citing the old number.
        let b20 = ours(&sim, &kb20)[0].clone();
        sim.force(&b20["sys_id"], &[("state", "7")]);
        tick(&s.state, day(14.0)).await;
        let twins = ours(&sim, &kb20);
        assert_eq!(twins.len(), 2, "{}", tdb.label);
        let newer = twins.iter().find(|i| i["sys_id"] != b20["sys_id"]).unwrap();
        assert!(
            newer["description"].starts_with(&format!("Follows {}", b20["number"])),
            "{}",
            newer["description"]
        );
        tick(&s.state, day(14.5)).await;
        assert_eq!(
            ours(&sim, &kb20).len(),
            2,
            "the new one is open: nothing more"
        );

        // ServiceNow is down for a while: retried later, no duplicate.
        sim.force(
            &a_sys,
            &[
                ("state", "6"),
                ("close_code", "Solution provided"),
                ("close_notes", "done"),
            ],
        );
        // Three keys are worked (a, b at .20, b at .21), each look-up tried 4 times.
        sim.inject(0, SnFault::Status(503), 12);
        let (_, retried, failed) = tick(&s.state, day(15.0)).await;
        assert_eq!((retried, failed), (3, 0));
        let list: Value = s.admin_get("/api/v1/tickets").await.json().await.unwrap();
        let rec = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["key"] == ka)
            .unwrap()
            .clone();
        assert_eq!(rec["pending_work"]["state"], "pending", "{rec}");
        assert!(
            rec["pending_work"]["last_error"]
                .as_str()
                .unwrap()
                .contains("unavailable")
        );
        assert!(
            !rec["pending_work"]["last_error"]
                .as_str()
                .unwrap()
                .contains("integration-pw")
        );
        // Due once its backoff has passed.
        let (done, _, _) = notify::work_tickets(&s.state, day(15.0) + Duration::minutes(5))
            .await
            .unwrap();
        assert!(done >= 1, "{}", tdb.label);
        assert_eq!(sim.incident(&a_sys).unwrap()["state"], "2");

        // 6 days left: escalated to the highest priority (impact 1, urgency 1).
        tick(&s.state, day(24.5)).await;
        let inc = sim.incident(&a_sys).unwrap();
        assert_eq!(
            (
                inc["impact"].as_str(),
                inc["urgency"].as_str(),
                inc["priority"].as_str()
            ),
            ("1", "1", "1"),
            "{inc:?}"
        );
        assert!(
            sim.journal(&a_sys)
                .iter()
                .any(|j| j.value.starts_with("Escalated by certkeeper"))
        );
        let notes = sim.journal(&a_sys).len();
        tick(&s.state, day(25.0)).await;
        assert_eq!(sim.journal(&a_sys).len(), notes, "escalated once");

        // Renewed: the endpoint serves a later certificate; the ticket gets a note
        // naming it and is resolved; later runs leave it so.
        serve(
            &s.state,
            "r4",
            "a.example.test",
            [192, 0, 2, 10],
            &a2,
            day(25.2),
        )
        .await;
        tick(&s.state, day(26.0)).await;
        let inc = sim.incident(&a_sys).unwrap();
        assert_eq!(inc["state"], "6", "{}: resolved after renewal", tdb.label);
        let a2_sha = sha(&a2);
        assert!(
            sim.journal(&a_sys)
                .iter()
                .any(|j| j.value.contains(&a2_sha)),
            "the note names the new certificate"
        );
        tick(&s.state, day(27.0)).await;
        tick(&s.state, day(33.0)).await;
        assert_eq!(
            sim.incident(&a_sys).unwrap()["state"],
            "6",
            "renewed means quiet"
        );
        assert_eq!(ours(&sim, &ka).len(), 1);
        let list: Value = s
            .admin_get("/api/v1/tickets?system=servicenow&kind=expiry")
            .await
            .json()
            .await
            .unwrap();
        let rec = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["key"] == ka)
            .unwrap()
            .clone();
        assert_eq!(rec["status"], "resolved");
        assert_eq!(rec["last_action"], "renewed");
        s.stop().await;
    }
}

#[tokio::test]
async fn a_create_that_commits_then_times_out_makes_one_ticket() {
    let pki = TestPki::new().unwrap();
    let now = OffsetDateTime::now_utc();
    let c = leaf(
        &pki,
        "slow.example.test",
        now - Duration::days(60),
        now + Duration::days(10),
    );
    let sim = servicenow_sim::start(SnOptions::default()).await.unwrap();
    let s = start(configure(vec![system(sn_connector(&sim))], None))
        .await
        .unwrap();
    enroll(&s.state, "ag1").await;
    serve(
        &s.state,
        "r1",
        "slow.example.test",
        [192, 0, 2, 30],
        &c,
        now,
    )
    .await;
    // The first call is the look-up; the second, the create, commits and stalls.
    sim.inject(2, SnFault::CommitThenStall(StdDuration::from_secs(3)), 1);
    // And a rate limit on the call after.
    sim.inject(
        3,
        SnFault::RateLimited {
            retry_after_secs: 1,
        },
        1,
    );
    let (done, retried, failed) = tick(&s.state, now).await;
    assert_eq!((done, retried, failed), (1, 0, 0));
    let key = token(&expiry_key_text(
        &certkeeper_pki::parse_der(&c).unwrap().serial.to_string(),
        "192.0.2.30".parse().unwrap(),
    ));
    assert_eq!(ours(&sim, &key).len(), 1, "exactly one ticket");
    let list: Value = s.admin_get("/api/v1/tickets").await.json().await.unwrap();
    assert_eq!(
        list["items"][0]["ticket_number"],
        ours(&sim, &key)[0]["number"].as_str()
    );
    s.stop().await;
}

#[tokio::test]
async fn vulnerability_tickets_per_domain_and_address_noted_and_reopened() {
    let pki = TestPki::new().unwrap();
    let now = OffsetDateTime::now_utc();
    let mut spec =
        certkeeper_testkit::LeafSpec::new("example.test", certkeeper_testkit::KeyKind::EcdsaP256);
    spec.names = vec!["example.test".into(), "test.example.test".into()];
    let der = pki.leaf(&spec).unwrap().der;
    let sim = servicenow_sim::start(SnOptions::default()).await.unwrap();
    let mut systems = vec![system(sn_connector(&sim))];
    let rt = rt_connector();
    if let Some(rt) = rt.clone() {
        systems.push(system(rt));
    }
    let s = start(configure(systems, None)).await.unwrap();
    enroll(&s.state, "ag1").await;
    serve(&s.state, "r1", "example.test", [192, 0, 2, 23], &der, now).await;
    let findings = vec![
        Finding {
            kind: FindingKind::CipherRc4,
            severity: Severity::High,
            title: "RC4 suites accepted".into(),
            evidence: "TLS1.2: TLS_RSA_WITH_RC4_128_SHA".into(),
            fix: "remove RC4".into(),
            suites: vec!["TLS_RSA_WITH_RC4_128_SHA".into()],
        },
        Finding {
            kind: FindingKind::Heartbleed,
            severity: Severity::Critical,
            title: "Heartbleed (CVE-2014-0160)".into(),
            evidence: "the server answered a heartbeat with 16384 bytes".into(),
            fix: "upgrade OpenSSL".into(),
            suites: vec![],
        },
        Finding {
            kind: FindingKind::NoTls13,
            severity: Severity::Low,
            title: "TLS 1.3 not offered".into(),
            evidence: "".into(),
            fix: "".into(),
            suites: vec![],
        },
    ];
    let ip = "192.0.2.23".parse().unwrap();
    let q = notify::queue_vulnerability_tickets(
        &s.state,
        "example.test",
        ip,
        443,
        &findings,
        None,
        now,
    )
    .await
    .unwrap();
    assert_eq!(
        q,
        2 * (1 + usize::from(rt.is_some())),
        "two domains at one address, per system"
    );
    let (done, retried, failed) = notify::work_tickets(&s.state, now).await.unwrap();
    assert_eq!((retried, failed), (0, 0));
    assert_eq!(done, q);
    let k1 = token(&vuln_key_text("example.test", ip));
    let k2 = token(&vuln_key_text("test.example.test", ip));
    let t1 = ours(&sim, &k1);
    assert_eq!((t1.len(), ours(&sim, &k2).len()), (1, 1));
    assert_eq!(
        t1[0]["short_description"],
        "Vulnerabilities for example.test"
    );
    let body = &t1[0]["description"];
    assert!(body.starts_with("example.test\nexample.test\n192.0.2.23\nWeak ciphers in use, which should be removed\nTLS_RSA_WITH_RC4_128_SHA\n"), "{body}");
    assert!(body.contains("Heartbleed (CVE-2014-0160)"), "{body}");
    assert!(
        !body.contains("TLS 1.3 not offered"),
        "only the ticket's findings"
    );
    assert!(body.contains("Scan Time: "));
    let t2 = &ours(&sim, &k2)[0];
    assert!(t2["description"].starts_with("test.example.test\nexample.test\n192.0.2.23\n"));

    // The next scan, still vulnerable: a note with the latest results.
    let later = now + Duration::days(1);
    notify::queue_vulnerability_tickets(&s.state, "example.test", ip, 443, &findings, None, later)
        .await
        .unwrap();
    notify::work_tickets(&s.state, later).await.unwrap();
    assert_eq!(ours(&sim, &k1).len(), 1);
    assert!(
        sim.journal(&t1[0]["sys_id"])
            .iter()
            .any(|j| j.value.contains("TLS_RSA_WITH_RC4_128_SHA"))
    );
    // Resolved but still vulnerable: reopened with the results.
    sim.force(
        &t1[0]["sys_id"],
        &[
            ("state", "6"),
            ("close_code", "Solution provided"),
            ("close_notes", "x"),
        ],
    );
    let later2 = now + Duration::days(2);
    notify::queue_vulnerability_tickets(&s.state, "example.test", ip, 443, &findings, None, later2)
        .await
        .unwrap();
    notify::work_tickets(&s.state, later2).await.unwrap();
    assert_eq!(sim.incident(&t1[0]["sys_id"]).unwrap()["state"], "2");
    // Fixed: nothing is queued, the ticket is left as it is.
    sim.force(
        &t1[0]["sys_id"],
        &[
            ("state", "6"),
            ("close_code", "Solution provided"),
            ("close_notes", "x"),
        ],
    );
    let healthy = vec![findings[2].clone()];
    let n = notify::queue_vulnerability_tickets(
        &s.state,
        "example.test",
        ip,
        443,
        &healthy,
        None,
        later2,
    )
    .await
    .unwrap();
    assert_eq!(n, 0);
    assert_eq!(sim.incident(&t1[0]["sys_id"]).unwrap()["state"], "6");

    // The same in Request Tracker, for real.
    if let Some(rt) = rt {
        let found = rt.find_by_key(&k1).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].status, NormStatus::Active);
        let list: Value = s
            .admin_get("/api/v1/tickets?system=rt")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(list["items"].as_array().unwrap().len(), 2);
        // Resolved in RT, still vulnerable: reopened.
        rt.resolve(&found[0].id, "fixed, they say").await.unwrap();
        let later3 = now + Duration::days(3);
        notify::queue_vulnerability_tickets(
            &s.state,
            "example.test",
            ip,
            443,
            &findings,
            None,
            later3,
        )
        .await
        .unwrap();
        notify::work_tickets(&s.state, later3).await.unwrap();
        let again = rt.find_by_key(&k1).await.unwrap();
        assert_eq!(again.len(), 1, "reopened, not duplicated");
        assert_eq!(again[0].status, NormStatus::Active);
    }
    s.stop().await;
}

#[tokio::test]
async fn a_scan_that_finds_weak_ciphers_and_heartbleed_opens_a_vulnerability_ticket() {
    use certkeeper_testkit::flawed::{self, Flaws};
    let pki = TestPki::new().unwrap();
    let now = OffsetDateTime::now_utc();
    // An RSA leaf: the flawed peer speaks static-RSA AES suites (weak: no forward
    // secrecy) and leaks memory on a heartbeat, as OpenSSL 1.0.1 did.
    let leaf = pki
        .leaf(&certkeeper_testkit::LeafSpec::new(
            "vuln.example.test",
            certkeeper_testkit::KeyKind::Rsa2048,
        ))
        .unwrap();
    let peer = flawed::start(
        leaf.der.clone(),
        Flaws {
            heartbleed: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let sim = servicenow_sim::start(SnOptions::default()).await.unwrap();
    let s = start(|c: &mut ServerConfig| {
        configure(vec![system(sn_connector(&sim))], None)(c);
        c.vulnscan.allow_local = vec!["127.0.0.0/8".parse().unwrap()];
        c.vulnscan.online_revocation = false;
    })
    .await
    .unwrap();
    enroll(&s.state, "ag1").await;
    serve_at(
        &s.state,
        "r1",
        "vuln.example.test",
        [127, 0, 0, 1],
        peer.addr.port(),
        &leaf.der,
        now,
    )
    .await;
    // No agent is running: revoked, so the server scans the endpoint itself.
    let r = s
        .client
        .delete(format!("{}/api/v1/agents/ag1", s.base))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let r = s
        .admin_post(
            "/api/v1/scans",
            &serde_json::json!({"endpoints": [format!("vuln.example.test:{}", peer.addr.port())]}),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut done = false;
    for _ in 0..300 {
        let v: Value = s
            .admin_get(&format!("/api/v1/scans/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if v["status"] == "done" {
            done = true;
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    assert!(done, "the scan finished");
    notify::work_tickets(&s.state, OffsetDateTime::now_utc())
        .await
        .unwrap();
    let key = token(&vuln_key_text(
        "vuln.example.test",
        "127.0.0.1".parse().unwrap(),
    ));
    let inc = ours(&sim, &key);
    assert_eq!(inc.len(), 1, "{:?}", sim.incidents());
    assert_eq!(
        inc[0]["short_description"],
        "Vulnerabilities for vuln.example.test"
    );
    let body = &inc[0]["description"];
    assert!(body.starts_with("vuln.example.test\nvuln.example.test\n127.0.0.1\nWeak ciphers in use, which should be removed\nTLS_RSA_WITH_AES_"), "{body}");
    assert!(body.contains("Heartbleed"), "{body}");
    assert!(
        body.contains("; signature algorithm ecdsa-with-SHA256; expires "),
        "{body}"
    );
    assert!(
        !body.contains(".")
            || !body
                .lines()
                .any(|l| l.starts_with("Scan Time:") && l.contains('.')),
        "whole seconds: {body}"
    );
    assert!(
        !body.contains("TLS_ECDHE"),
        "only weak suites are listed: {body}"
    );
    let list: Value = s
        .admin_get("/api/v1/tickets?kind=vulnerability")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["domain"], "vuln.example.test");
    s.stop().await;
}
