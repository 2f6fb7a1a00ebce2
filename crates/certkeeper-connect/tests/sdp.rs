//! The ServiceDesk Plus connector against the in-process API v3 simulator
//! (`certkeeper_testkit::sdp_sim`), and the simulator's own checklist items through
//! raw HTTP.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use certkeeper_connect::ticketing::sdp::{Sdp, SdpConfig};
use certkeeper_connect::ticketing::{
    Connector, NewTicket, NormStatus, Priority, RetryPolicy, TicketError, TicketRef, token,
};
use certkeeper_core::tickets::{expiry_key_text, expiry_ticket};
use certkeeper_testkit::sdp_sim::{self, ReopenRefusal, SdpFault, SdpOptions, SdpSim};
use serde_json::{Value, json};

const KEY: &str = "0D2C5A17-1E0B-4C4E-9F1A-5B6E7C8D9E0F";

fn fast() -> RetryPolicy {
    RetryPolicy {
        tries: 5,
        base: Duration::from_millis(50),
        cap: Duration::from_millis(200),
        max_wait: Duration::from_secs(5),
        timeout: Duration::from_secs(1),
    }
}

fn config(sim: &SdpSim) -> SdpConfig {
    let mut c = SdpConfig::new(&sim.url(), KEY);
    c.group = Some("PKI".into());
    c.requester = Some("certkeeper".into());
    c
}

fn connector(sim: &SdpSim) -> Sdp {
    Sdp::new(config(sim), fast()).expect("valid config")
}

fn key(n: u32) -> String {
    token(&expiry_key_text(
        &format!("0A:1B:{n:02X}"),
        "192.0.2.10".parse().expect("ip"),
    ))
}

fn ticket() -> (String, String) {
    expiry_ticket(
        "www.example.test",
        time::macros::datetime!(2026-12-24 12:00 UTC),
        "https://certkeeper.example.test",
    )
}

async fn create(c: &Sdp, key: &str) -> TicketRef {
    let (subject, body) = ticket();
    c.create(&NewTicket {
        subject: &subject,
        body: &body,
        priority: Priority::High,
        key,
    })
    .await
    .expect("create")
}

fn raw_client() -> reqwest::Client {
    // The connector brings its own TLS settings; a bare client needs the provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::new()
}

/// A raw GET of `/api/v3/requests` with this `input_data`.
async fn raw_search(sim: &SdpSim, input: &Value) -> (u16, Value) {
    let r = raw_client()
        .get(format!("{}/api/v3/requests", sim.url()))
        .header("authtoken", KEY)
        .query(&[("input_data", input.to_string())])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn create_sends_high_priority_the_udf_key_and_html() {
    let sim = sdp_sim::start(SdpOptions {
        mandatory_by_template: BTreeMap::from([(
            "Default Request".to_string(),
            vec!["group".to_string(), "udf_fields.udf_sline_1201".to_string()],
        )]),
        ..SdpOptions::default()
    })
    .await
    .unwrap();
    let c = connector(&sim);
    let k = key(1);
    let t = create(&c, &k).await;
    let rs = sim.requests();
    assert_eq!(rs.len(), 1);
    let r = &rs[0];
    assert_eq!(r.subject, "SSL Certificate www.example.test expiry");
    assert!(
        r.description
            .starts_with("The SSL Certificate www.example.test expiring soon, please take care<br>Common Name: www.example.test<br>Expiry Date: Dec 24, 2026<br>"),
        "{}",
        r.description
    );
    assert_eq!(r.priority.as_deref(), Some("High"));
    assert_eq!(r.group.as_deref(), Some("PKI"));
    assert_eq!(r.requester, "certkeeper");
    assert_eq!(r.udf_fields["udf_sline_1201"], k);
    assert_eq!(t.id, r.id);
    assert!(t.id.len() >= 12 && t.id.chars().all(|c| c.is_ascii_digit()));
    assert_eq!(t.display_no, "1");
    assert_eq!(t.status, NormStatus::Active);
    assert_eq!(t.raw_status, "Open");
    // Display ids count up from 1; the build may answer 200 instead of 201.
    sim.configure(|o| o.create_status = 200);
    let t2 = create(&c, &key(2)).await;
    assert_eq!(t2.display_no, "2");
    assert!(t2.created > t.created);
}

#[tokio::test]
async fn find_by_key_returns_only_that_key_and_post_filters() {
    let sim = sdp_sim::start(SdpOptions::default()).await.unwrap();
    let c = connector(&sim);
    let (a, b) = (key(1), key(2));
    let ta = create(&c, &a).await;
    let tb = create(&c, &b).await;
    assert!(c.find_by_key(&key(3)).await.unwrap().is_empty());
    let found = c.find_by_key(&a).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, ta.id);

    // A build where the additional field is not searchable answers every request:
    // the post-filter keeps ours.
    sim.configure(|o| o.udf_search_ignored = true);
    let (_, v) = raw_search(
        &sim,
        &json!({"list_info": {"search_criteria": [{"field": "udf_fields.udf_sline_1201", "condition": "is", "value": b}]}}),
    )
    .await;
    assert_eq!(v["requests"].as_array().unwrap().len(), 2);
    let found = c.find_by_key(&b).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, tb.id);
}

#[tokio::test]
async fn without_an_additional_field_the_key_is_a_description_marker() {
    let sim = sdp_sim::start(SdpOptions {
        udf_fields: Vec::new(),
        ..SdpOptions::default()
    })
    .await
    .unwrap();
    // With the default field name the instance refuses the create, naming the field.
    let e = create_err(&connector(&sim), &key(1)).await;
    match &e {
        TicketError::Rejected { message, .. } => {
            assert!(message.contains("udf_fields.udf_sline_1201"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let mut cfg = config(&sim);
    cfg.udf_field = String::new();
    let c = Sdp::new(cfg, fast()).unwrap();
    let (a, b) = (key(1), key(2));
    let ta = create(&c, &a).await;
    create(&c, &b).await;
    assert!(
        sim.request(&ta.id)
            .unwrap()
            .description
            .ends_with(&format!("[{a}]"))
    );
    let found = c.find_by_key(&a).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, ta.id);
}

async fn create_err(c: &Sdp, key: &str) -> TicketError {
    let (subject, body) = ticket();
    c.create(&NewTicket {
        subject: &subject,
        body: &body,
        priority: Priority::High,
        key,
    })
    .await
    .unwrap_err()
}

#[tokio::test]
async fn notes_are_kept_per_request() {
    let sim = sdp_sim::start(SdpOptions::default()).await.unwrap();
    let c = connector(&sim);
    let t = create(&c, &key(1)).await;
    let other = create(&c, &key(2)).await;
    c.add_note(&t.id, "Scan results:\nTLS 1.0 <still> offered")
        .await
        .unwrap();
    let r = sim.request(&t.id).unwrap();
    assert_eq!(r.notes.len(), 1);
    assert_eq!(
        r.notes[0].description,
        "Scan results:<br>TLS 1.0 &lt;still&gt; offered"
    );
    assert!(!r.notes[0].show_to_requester);
    assert!(sim.request(&other.id).unwrap().notes.is_empty());
    let v: Value = raw_client()
        .get(format!("{}/api/v3/requests/{}/notes", sim.url(), t.id))
        .header("authtoken", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["notes"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn resolve_then_reopen_sets_is_reopened() {
    let sim = sdp_sim::start(SdpOptions::default()).await.unwrap();
    let c = connector(&sim);
    let k = key(1);
    let t = create(&c, &k).await;
    c.resolve(&t.id, "renewed").await.unwrap();
    let r = sim.request(&t.id).unwrap();
    assert_eq!(r.status, "Resolved");
    assert_eq!(r.resolution.as_deref(), Some("renewed"));
    let f = c.find_by_key(&k).await.unwrap();
    assert_eq!(
        (f[0].status, f[0].raw_status.as_str()),
        (NormStatus::Resolved, "Resolved")
    );

    c.reopen(&t.id, "expires again").await.unwrap();
    let r = sim.request(&t.id).unwrap();
    assert_eq!(r.status, "Open");
    assert!(r.is_reopened);
    assert_eq!(
        r.notes.last().unwrap().description,
        "Reopened by certkeeper: expires again"
    );
    assert_eq!(
        c.find_by_key(&k).await.unwrap()[0].status,
        NormStatus::Active
    );
}

#[tokio::test]
async fn closed_and_canceled_reopens_can_be_refused() {
    let sim = sdp_sim::start(SdpOptions {
        allow_reopen_closed: false,
        ..SdpOptions::default()
    })
    .await
    .unwrap();
    let c = connector(&sim);
    let closed = create(&c, &key(1)).await;
    let canceled = create(&c, &key(2)).await;
    // Closed through the close call, as a technician would.
    let r = raw_client()
        .put(format!("{}/api/v3/requests/{}/close", sim.url(), closed.id))
        .header("authtoken", KEY)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!(
            "input_data={}",
            urlencode(&json!({"request": {"closure_info": {"requester_ack_resolution": true, "closure_comments": "done", "closure_code": {"name": "Success"}}}}).to_string())
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sim.request(&closed.id).unwrap().status, "Closed");
    sim.force_status(&canceled.id, "Canceled");
    assert_eq!(
        c.find_by_key(&key(1)).await.unwrap()[0].status,
        NormStatus::Closed
    );
    assert_eq!(
        c.find_by_key(&key(2)).await.unwrap()[0].status,
        NormStatus::Canceled
    );

    for t in [&closed, &canceled] {
        let e = c.reopen(&t.id, "again").await.unwrap_err();
        assert!(matches!(e, TicketError::NotAllowed { .. }), "{e:?}");
    }
    sim.configure(|o| o.reopen_refusal = ReopenRefusal::NonEditable4009);
    let e = c.reopen(&closed.id, "again").await.unwrap_err();
    assert!(matches!(e, TicketError::NotAllowed { .. }), "{e:?}");
    assert_eq!(sim.request(&closed.id).unwrap().status, "Closed");
    assert!(sim.request(&closed.id).unwrap().notes.is_empty());
    // Allowed on this instance: the reopen goes through.
    sim.configure(|o| o.allow_reopen_closed = true);
    c.reopen(&closed.id, "again").await.unwrap();
    assert!(sim.request(&closed.id).unwrap().is_reopened);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn set_priority_to_highest_uses_the_configured_name() {
    let sim = sdp_sim::start(SdpOptions {
        priorities: ["Low", "Normal", "Medium", "High", "Urgent"]
            .map(String::from)
            .to_vec(),
        ..SdpOptions::default()
    })
    .await
    .unwrap();
    let mut cfg = config(&sim);
    cfg.priority_highest = "Urgent".into();
    let c = Sdp::new(cfg, fast()).unwrap();
    let t = create(&c, &key(1)).await;
    c.set_priority(&t.id, Priority::Highest).await.unwrap();
    assert_eq!(
        sim.request(&t.id).unwrap().priority.as_deref(),
        Some("Urgent")
    );
    // An unknown name is refused, naming the field.
    let mut cfg = config(&sim);
    cfg.priority_highest = "Critical".into();
    let c = Sdp::new(cfg, fast()).unwrap();
    let e = c.set_priority(&t.id, Priority::Highest).await.unwrap_err();
    match e {
        TicketError::Rejected {
            status, message, ..
        } => {
            assert_eq!(status, 400);
            assert!(
                message.contains("4001") && message.contains("priority"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_as_retry_after_says() {
    let sim = sdp_sim::start(SdpOptions::default()).await.unwrap();
    let c = connector(&sim);
    let k = key(1);
    create(&c, &k).await;
    // After one more call, one 429/4015.
    sim.inject(
        1,
        SdpFault::RateLimited {
            retry_after_secs: 1,
        },
        1,
    );
    c.find_by_key(&k).await.unwrap();
    let t0 = Instant::now();
    let found = c.find_by_key(&k).await.unwrap();
    let waited = t0.elapsed();
    assert_eq!(found.len(), 1);
    assert!(
        waited >= Duration::from_millis(950),
        "waited only {waited:?}"
    );
    let statuses: Vec<u16> = sim.calls().iter().map(|x| x.status).collect();
    assert_eq!(statuses[1..], [200, 429, 200]);
}

#[tokio::test]
async fn unavailable_answers_are_retried_or_reported() {
    let sim = sdp_sim::start(SdpOptions::default()).await.unwrap();
    let c = connector(&sim);
    let t = create(&c, &key(1)).await;
    sim.inject(0, SdpFault::Status(503), 2);
    c.add_note(&t.id, "through").await.unwrap();
    assert_eq!(sim.request(&t.id).unwrap().notes.len(), 1);
    // 500/4004 is not retried inside the call and reads as unavailable.
    sim.inject(0, SdpFault::Internal, 1);
    let before = sim.calls().len();
    let e = c.add_note(&t.id, "x").await.unwrap_err();
    assert!(matches!(e, TicketError::Unavailable { .. }), "{e:?}");
    assert!(e.to_string().contains("4004"), "{e}");
    assert_eq!(sim.calls().len() - before, 1);
}

#[tokio::test]
async fn a_create_that_committed_and_timed_out_is_found_not_repeated() {
    let sim = sdp_sim::start(SdpOptions::default()).await.unwrap();
    let c = Connector::Sdp(connector(&sim));
    let k = key(1);
    let (subject, body) = ticket();
    let t = NewTicket {
        subject: &subject,
        body: &body,
        priority: Priority::High,
        key: &k,
    };
    sim.inject(0, SdpFault::CommitThenStall(Duration::from_secs(3)), 1);
    let got = c.create_deduped(&t).await.unwrap();
    let rs = sim.requests();
    assert_eq!(rs.len(), 1, "exactly one request");
    assert_eq!(got.id, rs[0].id);
    assert_eq!(sim.call_count("POST"), 1);
    // A 500/4004 on a create: looked up first, then tried again.
    let k2 = key(2);
    sim.inject(0, SdpFault::Internal, 1);
    let got = c
        .create_deduped(&NewTicket { key: &k2, ..t })
        .await
        .unwrap();
    assert_eq!(sim.requests().len(), 2);
    assert_eq!(
        sim.request(&got.id).unwrap().udf_fields["udf_sline_1201"],
        k2
    );
}

#[tokio::test]
async fn a_wrong_key_is_an_auth_error_without_the_key() {
    let sim = sdp_sim::start(SdpOptions::default()).await.unwrap();
    let secret = "FFFFFFFF-0000-WRONG-SECRET-KEY";
    let c = Sdp::new(SdpConfig::new(&sim.url(), secret), fast()).unwrap();
    for e in [
        c.test_connection().await.unwrap_err(),
        c.find_by_key(&key(1)).await.unwrap_err(),
        create_err(&c, &key(1)).await,
    ] {
        assert!(matches!(e, TicketError::Auth { .. }), "{e:?}");
        let shown = format!("{e} {e:?}");
        assert!(
            !shown.contains(secret) && !shown.contains("WRONG-SECRET"),
            "{shown}"
        );
        assert!(shown.contains("4022"), "{shown}");
    }
    assert!(!format!("{c:?}").contains("WRONG-SECRET"));
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn mandatory_fields_are_rejections_naming_the_field() {
    let sim = sdp_sim::start(SdpOptions {
        mandatory_by_template: BTreeMap::from([(
            "Default Request".to_string(),
            vec!["group".to_string()],
        )]),
        ..SdpOptions::default()
    })
    .await
    .unwrap();
    let mut cfg = config(&sim);
    cfg.group = None;
    let c = Sdp::new(cfg, fast()).unwrap();
    match create_err(&c, &key(1)).await {
        TicketError::Rejected {
            status, message, ..
        } => {
            assert_eq!(status, 400);
            assert!(message.contains("mandatory field group"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn test_connection_reads_and_creates_nothing() {
    let sim = sdp_sim::start(SdpOptions::default()).await.unwrap();
    let c = connector(&sim);
    c.test_connection().await.unwrap();
    assert!(sim.requests().is_empty());
    let calls = sim.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, "GET");
}

#[tokio::test]
async fn the_simulator_searches_pages_and_checks_input() {
    let sim = sdp_sim::start(SdpOptions::default()).await.unwrap();
    let c = connector(&sim);
    let mut ids = Vec::new();
    for n in 1..=5 {
        ids.push(create(&c, &key(n)).await.id);
    }
    sim.force_status(&ids[1], "Resolved");
    sim.force_status(&ids[2], "Closed");
    let count = |v: &Value| v["requests"].as_array().unwrap().len();
    // status.name with values[]
    let (_, v) = raw_search(&sim, &json!({"list_info": {"search_criteria": [{"field": "status.name", "condition": "is", "values": ["Resolved", "Closed"]}]}})).await;
    assert_eq!(count(&v), 2);
    assert!(
        v["list_info"].get("total_count").is_none(),
        "only with get_total_count"
    );
    // children with OR, AND at the top
    let (_, v) = raw_search(&sim, &json!({"list_info": {"get_total_count": true, "search_criteria": [
        {"field": "subject", "condition": "starts with", "value": "SSL Certificate"},
        {"logical_operator": "AND", "children": [
            {"field": "status.name", "condition": "is", "value": "Resolved"},
            {"field": "udf_fields.udf_sline_1201", "condition": "is", "value": key(5), "logical_operator": "OR"}
        ]}
    ]}})).await;
    assert_eq!(count(&v), 2);
    assert_eq!(v["list_info"]["total_count"], 2);
    // is not, contains, not contains, greater than on display_id
    let (_, v) = raw_search(&sim, &json!({"list_info": {"search_criteria": [{"field": "status.name", "condition": "is not", "value": "Open"}]}})).await;
    assert_eq!(count(&v), 2);
    let (_, v) = raw_search(&sim, &json!({"list_info": {"search_criteria": [{"field": "display_id", "condition": "greater than", "value": "3"}]}})).await;
    assert_eq!(count(&v), 2);
    let (_, v) = raw_search(&sim, &json!({"list_info": {"search_criteria": [{"field": "display_id", "condition": "between", "values": ["2", "4"]}]}})).await;
    assert_eq!(count(&v), 3);
    let (_, v) = raw_search(&sim, &json!({"list_info": {"search_criteria": [{"field": "subject", "condition": "not contains", "value": "example"}]}})).await;
    assert_eq!(count(&v), 0);
    // paging: two by two, newest first
    let (_, v) = raw_search(&sim, &json!({"list_info": {"row_count": 2, "start_index": 1, "sort_field": "created_time", "sort_order": "desc", "get_total_count": true}})).await;
    assert_eq!(count(&v), 2);
    assert_eq!(v["list_info"]["has_more_rows"], true);
    assert_eq!(v["list_info"]["total_count"], 5);
    assert_eq!(v["requests"][0]["id"], ids[4]);
    let (_, v) = raw_search(&sim, &json!({"list_info": {"row_count": 2, "start_index": 5, "sort_field": "created_time", "sort_order": "desc"}})).await;
    assert_eq!(count(&v), 1);
    assert_eq!(v["list_info"]["has_more_rows"], false);
    assert_eq!(v["response_status"][0]["status_code"], 2000);
    // unknown field and bad JSON
    let (st, v) = raw_search(&sim, &json!({"list_info": {"search_criteria": [{"field": "udf_fields.udf_nope", "condition": "is", "value": "x"}]}})).await;
    assert_eq!(st, 400);
    assert_eq!(v["response_status"]["messages"][0]["status_code"], 4001);
    assert_eq!(
        v["response_status"]["messages"][0]["field"],
        "udf_fields.udf_nope"
    );
    let r = raw_client()
        .get(format!(
            "{}/api/v3/requests?input_data=%7Bnot-json",
            sim.url()
        ))
        .header("authtoken", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["response_status"]["status_code"], 4000);
    // the status catalogue
    let v: Value = raw_client()
        .get(format!("{}/api/v3/requests/{}", sim.url(), ids[0]))
        .header("authtoken", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["request"]["status"]["in_progress"], true);
    assert_eq!(v["request"]["status"]["stop_timer"], false);
    let r = raw_client()
        .get(format!("{}/api/v3/requests", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["response_status"]["messages"][0]["status_code"], 4022);
}
