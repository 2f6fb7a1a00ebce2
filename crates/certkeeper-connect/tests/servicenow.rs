//! The ServiceNow connector against the in-process Table API simulator
//! (`certkeeper_testkit::servicenow_sim`), and the simulator's own checklist items
//! through raw HTTP.

use std::time::{Duration, Instant};

use certkeeper_connect::ticketing::servicenow::{NoteField, ServiceNow, ServiceNowConfig};
use certkeeper_connect::ticketing::{
    Connector, NewTicket, NormStatus, Priority, RetryPolicy, TicketError, token,
};
use certkeeper_core::tickets::{expiry_key_text, expiry_ticket};
use certkeeper_testkit::servicenow_sim::{self, ClosedWrites, SnFault, SnOptions, SnUser};
use serde_json::Value;

const USER: &str = "certkeeper";
const PASSWORD: &str = "integration-pw";

fn fast() -> RetryPolicy {
    RetryPolicy {
        tries: 5,
        base: Duration::from_millis(50),
        cap: Duration::from_millis(200),
        max_wait: Duration::from_secs(5),
        timeout: Duration::from_secs(1),
    }
}

fn config(sim: &servicenow_sim::ServiceNowSim) -> ServiceNowConfig {
    let mut c = ServiceNowConfig::new(&sim.url(), USER, PASSWORD);
    c.caller_id = Some("6816f79cc0a8016401c5a33be04be441".into());
    c.assignment_group = Some("287ebd7da9fe198100f92cc8d1d2154e".into());
    c.category = Some("network".into());
    c
}

fn connector(sim: &servicenow_sim::ServiceNowSim) -> ServiceNow {
    ServiceNow::new(config(sim), fast()).expect("valid config")
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

async fn create(sn: &ServiceNow, key: &str) -> certkeeper_connect::ticketing::TicketRef {
    let (subject, body) = ticket();
    sn.create(&NewTicket {
        subject: &subject,
        body: &body,
        priority: Priority::High,
        key,
    })
    .await
    .expect("create")
}

/// A plain client for raw calls to the simulator.
fn raw_client() -> reqwest::Client {
    // The connector brings its own TLS settings; a bare client needs the provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::new()
}

async fn raw_get(sim: &servicenow_sim::ServiceNowSim, path_query: &str) -> reqwest::Response {
    raw_client()
        .get(format!("{}{path_query}", sim.url()))
        .basic_auth(USER, Some(PASSWORD))
        .header("Accept", "application/json")
        .send()
        .await
        .expect("sim answers")
}

#[tokio::test]
async fn create_sends_high_priority_and_the_configured_fields() {
    let sim = servicenow_sim::start(SnOptions {
        mandatory_on_insert: vec![
            "caller_id".into(),
            "assignment_group".into(),
            "category".into(),
        ],
        ..SnOptions::default()
    })
    .await
    .unwrap();
    let sn = connector(&sim);
    let k = key(1);
    let t = create(&sn, &k).await;
    let rows = sim.incidents();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    let (subject, body) = ticket();
    assert_eq!(r["short_description"], subject);
    assert_eq!(
        r["short_description"],
        "SSL Certificate www.example.test expiry"
    );
    assert_eq!(r["description"], body);
    assert!(r["description"].contains("Expiry Date: Dec 24, 2026"));
    assert_eq!((r["impact"].as_str(), r["urgency"].as_str()), ("1", "2"));
    assert_eq!(r["priority"], "2", "High");
    assert_eq!(r["correlation_id"], k);
    assert_eq!(r["correlation_display"], "certkeeper");
    assert_eq!(r["caller_id"], "6816f79cc0a8016401c5a33be04be441");
    assert_eq!(r["category"], "network");
    assert_eq!(r["state"], "1");
    assert_eq!(t.id, r["sys_id"]);
    assert_eq!(t.id.len(), 32);
    assert!(
        t.id.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(t.display_no, r["number"]);
    assert!(t.display_no.starts_with("INC") && t.display_no.len() == 10);
    assert!(t.display_no[3..].chars().all(|c| c.is_ascii_digit()));
    assert_eq!(t.status, NormStatus::Active);
    assert_eq!(t.raw_status, "1");
}

#[tokio::test]
async fn find_by_key_returns_only_that_key_and_post_filters() {
    let sim = servicenow_sim::start(SnOptions::default()).await.unwrap();
    let sn = connector(&sim);
    let (a, b) = (key(1), key(2));
    let ta = create(&sn, &a).await;
    let tb = create(&sn, &b).await;
    assert!(sn.find_by_key(&key(3)).await.unwrap().is_empty());
    let found = sn.find_by_key(&a).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, ta.id);
    assert_eq!(found[0].status, NormStatus::Active);

    // An instance whose query parser does not know correlation_id ignores the
    // condition and answers every certkeeper incident: the post-filter keeps ours.
    sim.configure(|o| o.unqueryable = vec!["correlation_id".into()]);
    let resp = raw_get(
        &sim,
        &format!("/api/now/table/incident?sysparm_query=correlation_id={b}&sysparm_fields=sys_id"),
    )
    .await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["result"].as_array().unwrap().len(),
        2,
        "the sim ignored the field"
    );
    let found = sn.find_by_key(&b).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, tb.id);

    // A token that is not one is refused before any query is built.
    assert!(matches!(
        sn.find_by_key("cm1-00^ORstate=1").await,
        Err(TicketError::Rejected { .. })
    ));
}

#[tokio::test]
async fn notes_go_to_the_journal() {
    let sim = servicenow_sim::start(SnOptions::default()).await.unwrap();
    let sn = connector(&sim);
    let t = create(&sn, &key(1)).await;
    sn.add_note(&t.id, "Scan results: TLS 1.0 still offered")
        .await
        .unwrap();
    let j = sim.journal(&t.id);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].element, "work_notes");
    assert_eq!(j[0].value, "Scan results: TLS 1.0 still offered");
    // The journal is queryable as sys_journal_field, and the record reads "" for it.
    let v: Value = raw_get(
        &sim,
        &format!(
            "/api/now/table/sys_journal_field?sysparm_query=element_id={}^element=work_notes",
            t.id
        ),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        v["result"][0]["value"],
        "Scan results: TLS 1.0 still offered"
    );
    assert_eq!(sim.incident(&t.id).unwrap()["work_notes"], "");

    let mut cfg = config(&sim);
    cfg.note_field = NoteField::Comments;
    let sn = ServiceNow::new(cfg, fast()).unwrap();
    sn.add_note(&t.id, "visible").await.unwrap();
    let j = sim.journal(&t.id);
    assert_eq!(j.len(), 2);
    assert_eq!(
        (j[1].element.as_str(), j[1].value.as_str()),
        ("comments", "visible")
    );
}

#[tokio::test]
async fn resolve_then_reopen_counts_the_reopen() {
    let sim = servicenow_sim::start(SnOptions::default()).await.unwrap();
    let sn = connector(&sim);
    let k = key(1);
    let t = create(&sn, &k).await;
    sn.resolve(&t.id, "renewed").await.unwrap();
    let r = sim.incident(&t.id).unwrap();
    assert_eq!(r["state"], "6");
    assert_eq!(r["close_code"], "Solution provided");
    assert_eq!(r["close_notes"], "renewed");
    assert_eq!(
        sn.find_by_key(&k).await.unwrap()[0].status,
        NormStatus::Resolved
    );

    sn.reopen(&t.id, "the certificate expires again")
        .await
        .unwrap();
    let r = sim.incident(&t.id).unwrap();
    assert_eq!(r["state"], "2");
    assert_eq!(r["reopen_count"], "1");
    let j = sim.journal(&t.id);
    assert_eq!(
        j.last().unwrap().value,
        "Reopened by certkeeper: the certificate expires again"
    );
    assert_eq!(
        sn.find_by_key(&k).await.unwrap()[0].status,
        NormStatus::Active
    );
    // One PATCH carried both the state and the note.
    let patches = sim
        .calls()
        .into_iter()
        .filter(|c| c.method == "PATCH")
        .count();
    assert_eq!(patches, 2, "resolve + reopen");
}

#[tokio::test]
async fn closed_and_canceled_cannot_be_reopened() {
    let sim = servicenow_sim::start(SnOptions::default()).await.unwrap();
    let sn = connector(&sim);
    let closed = create(&sn, &key(1)).await;
    let canceled = create(&sn, &key(2)).await;
    sim.force(&closed.id, &[("state", "7")]);
    sim.force(&canceled.id, &[("state", "8")]);
    assert_eq!(
        sn.find_by_key(&key(1)).await.unwrap()[0].status,
        NormStatus::Closed
    );
    assert_eq!(
        sn.find_by_key(&key(2)).await.unwrap()[0].status,
        NormStatus::Canceled
    );

    // The ACL answers 403.
    let e = sn.reopen(&closed.id, "again").await.unwrap_err();
    assert!(matches!(e, TicketError::NotAllowed { .. }), "{e:?}");
    // Or 200 with the state unchanged.
    sim.configure(|o| o.closed_writes = ClosedWrites::SilentlyIgnored);
    for t in [&closed, &canceled] {
        let e = sn.reopen(&t.id, "again").await.unwrap_err();
        assert!(matches!(e, TicketError::NotAllowed { .. }), "{e:?}");
    }
    assert_eq!(sim.incident(&closed.id).unwrap()["state"], "7");
    assert_eq!(sim.incident(&canceled.id).unwrap()["state"], "8");
    assert!(sim.journal(&canceled.id).is_empty(), "nothing was written");

    // The caller then opens a new one with the same key, citing the old number.
    let c = Connector::ServiceNow(sn);
    let (subject, body) = ticket();
    let body = certkeeper_core::tickets::cite_old(&body, &canceled.display_no);
    let k2 = key(2);
    let new = c
        .create_deduped(&NewTicket {
            subject: &subject,
            body: &body,
            priority: Priority::High,
            key: &k2,
        })
        .await
        .unwrap();
    assert_ne!(new.id, canceled.id);
    assert!(sim.incident(&new.id).unwrap()["description"].contains(&canceled.display_no));
}

#[tokio::test]
async fn set_priority_to_highest_sends_impact_and_urgency() {
    let sim = servicenow_sim::start(SnOptions::default()).await.unwrap();
    let sn = connector(&sim);
    let t = create(&sn, &key(1)).await;
    sn.set_priority(&t.id, Priority::Highest).await.unwrap();
    let r = sim.incident(&t.id).unwrap();
    assert_eq!((r["impact"].as_str(), r["urgency"].as_str()), ("1", "1"));
    assert_eq!(r["priority"], "1");
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_as_retry_after_says() {
    let sim = servicenow_sim::start(SnOptions::default()).await.unwrap();
    let sn = connector(&sim);
    let k = key(1);
    create(&sn, &k).await;
    sim.inject(
        0,
        SnFault::RateLimited {
            retry_after_secs: 1,
        },
        1,
    );
    let before = sim.calls().len();
    let t0 = Instant::now();
    let found = sn.find_by_key(&k).await.unwrap();
    let waited = t0.elapsed();
    assert_eq!(found.len(), 1);
    assert!(
        waited >= Duration::from_millis(950),
        "waited only {waited:?}"
    );
    let calls = sim.calls();
    assert_eq!(calls.len() - before, 2);
    assert_eq!(calls[before].status, 429);
    assert_eq!(calls[before + 1].status, 200);

    // A Retry-After longer than the policy allows ends the call at once.
    sim.inject(
        0,
        SnFault::RateLimited {
            retry_after_secs: 3600,
        },
        1,
    );
    let e = sn.find_by_key(&k).await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3600)));
    assert!(e.is_transient());
}

#[tokio::test]
async fn a_503_is_retried_and_a_lasting_one_is_unavailable() {
    let sim = servicenow_sim::start(SnOptions::default()).await.unwrap();
    let sn = connector(&sim);
    let t = create(&sn, &key(1)).await;
    sim.inject(0, SnFault::Status(503), 2);
    sn.add_note(&t.id, "through").await.unwrap();
    assert_eq!(sim.journal(&t.id).len(), 1);
    let statuses: Vec<u16> = sim.calls().iter().rev().take(3).map(|c| c.status).collect();
    assert_eq!(statuses, vec![200, 503, 503]);

    sim.inject(0, SnFault::Status(503), 5);
    let e = sn.add_note(&t.id, "never").await.unwrap_err();
    assert!(matches!(e, TicketError::Unavailable { .. }), "{e:?}");
    assert_eq!(sim.journal(&t.id).len(), 1);

    // A 500 is not retried inside the call (it is not one of 429/502/503/504).
    sim.inject(0, SnFault::Status(500), 1);
    let before = sim.calls().len();
    assert!(sn.add_note(&t.id, "x").await.is_err());
    assert_eq!(sim.calls().len() - before, 1);
}

#[tokio::test]
async fn a_create_that_committed_and_timed_out_is_found_not_repeated() {
    let sim = servicenow_sim::start(SnOptions::default()).await.unwrap();
    let c = Connector::ServiceNow(connector(&sim));
    let k = key(1);
    let (subject, body) = ticket();
    let t = NewTicket {
        subject: &subject,
        body: &body,
        priority: Priority::High,
        key: &k,
    };
    // One attempt alone reports the timeout (the row is stored all the same).
    sim.inject(0, SnFault::CommitThenStall(Duration::from_secs(3)), 1);
    let e = c.create(&t).await.unwrap_err();
    assert!(matches!(e, TicketError::Timeout { .. }), "{e:?}");
    assert_eq!(sim.incidents().len(), 1);
    let first = sim.incidents()[0]["sys_id"].clone();

    // create_deduped looks the key up before any new attempt.
    let k2 = key(2);
    let t2 = NewTicket { key: &k2, ..t };
    sim.inject(0, SnFault::CommitThenStall(Duration::from_secs(3)), 1);
    let got = c.create_deduped(&t2).await.unwrap();
    let rows = sim.incidents();
    assert_eq!(rows.len(), 2);
    let ours: Vec<_> = rows.iter().filter(|r| r["correlation_id"] == k2).collect();
    assert_eq!(ours.len(), 1, "exactly one incident for the key");
    assert_eq!(got.id, ours[0]["sys_id"]);
    assert_ne!(got.id, first);
    assert_eq!(sim.call_count("POST"), 2);

    // A 503 on a create: looked up, nothing there, tried again once.
    let k3 = key(3);
    let t3 = NewTicket { key: &k3, ..t };
    sim.inject(0, SnFault::Status(503), 1);
    let got = c.create_deduped(&t3).await.unwrap();
    assert_eq!(
        sim.incidents()
            .iter()
            .filter(|r| r["correlation_id"] == k3)
            .count(),
        1
    );
    assert_eq!(sim.incident(&got.id).unwrap()["correlation_id"], k3);
}

#[tokio::test]
async fn wrong_credentials_are_auth_errors_without_the_password() {
    let sim = servicenow_sim::start(SnOptions {
        users: vec![
            SnUser::itil(USER, PASSWORD),
            SnUser {
                itil: false,
                ..SnUser::itil("reader", "reader-secret-pw")
            },
        ],
        ..SnOptions::default()
    })
    .await
    .unwrap();
    let secret = "Wr0ng-Pa55word-XYZ";
    let sn = ServiceNow::new(ServiceNowConfig::new(&sim.url(), USER, secret), fast()).unwrap();
    for e in [
        sn.test_connection().await.unwrap_err(),
        sn.find_by_key(&key(1)).await.unwrap_err(),
        sn.add_note("0123456789abcdef0123456789abcdef", "x")
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(e, TicketError::Auth { .. }), "{e:?}");
        assert_eq!(e.code(), "auth_failed");
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("User Not Authenticated"), "{shown}");
    }
    assert!(!format!("{sn:?}").contains(secret));
    // A user without the itil role.
    let sn = ServiceNow::new(
        ServiceNowConfig::new(&sim.url(), "reader", "reader-secret-pw"),
        fast(),
    )
    .unwrap();
    let e = sn.test_connection().await.unwrap_err();
    assert!(matches!(e, TicketError::Auth { .. }), "{e:?}");
    assert!(!format!("{e} {e:?}").contains("reader-secret-pw"));
}

#[tokio::test]
async fn data_policies_are_rejections_naming_the_field() {
    let sim = servicenow_sim::start(SnOptions {
        mandatory_on_insert: vec!["u_business_service".into()],
        ..SnOptions::default()
    })
    .await
    .unwrap();
    let sn = connector(&sim);
    let (subject, body) = ticket();
    let k = key(1);
    let t = NewTicket {
        subject: &subject,
        body: &body,
        priority: Priority::High,
        key: &k,
    };
    let e = sn.create(&t).await.unwrap_err();
    match &e {
        TicketError::Rejected {
            status, message, ..
        } => {
            assert_eq!(*status, 403);
            assert!(message.contains("u_business_service"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(sim.incidents().is_empty());
    // The same instance with the field configured as an extra field.
    let mut cfg = config(&sim);
    cfg.extra_fields
        .insert("u_business_service".into(), "PKI".into());
    let sn = ServiceNow::new(cfg, fast()).unwrap();
    let created = sn.create(&t).await.unwrap();
    assert_eq!(
        sim.incident(&created.id).unwrap()["u_business_service"],
        "PKI"
    );

    // Strict data policies through raw PATCHes: 6 without close fields, 3 without a
    // hold reason.
    let client = raw_client();
    let url = format!("{}/api/now/table/incident/{}", sim.url(), created.id);
    for (body, field) in [
        (
            r#"{"state":"6","close_code":"Solution provided"}"#,
            "close_notes",
        ),
        (r#"{"state":"3"}"#, "hold_reason"),
    ] {
        let r = client
            .patch(&url)
            .basic_auth(USER, Some(PASSWORD))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], "failure");
        assert!(
            v["error"]["detail"].as_str().unwrap().contains(field),
            "{v}"
        );
    }
    let r = client
        .patch(&url)
        .basic_auth(USER, Some(PASSWORD))
        .body(r#"{"state":"3","hold_reason":"4","priority":"5"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let row = sim.incident(&created.id).unwrap();
    assert_eq!(row["state"], "3");
    assert_eq!(row["priority"], "2", "a sent priority is ignored");
}

#[tokio::test]
async fn test_connection_reads_and_creates_nothing() {
    let sim = servicenow_sim::start(SnOptions::default()).await.unwrap();
    let sn = connector(&sim);
    sn.test_connection().await.unwrap();
    assert!(sim.incidents().is_empty());
    let calls = sim.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, "GET");
    // Not an instance at all: nothing listens there.
    let port = certkeeper_testkit::free_port().unwrap();
    let sn = ServiceNow::new(
        ServiceNowConfig::new(&format!("http://127.0.0.1:{port}"), USER, PASSWORD),
        RetryPolicy { tries: 2, ..fast() },
    )
    .unwrap();
    let e = sn.test_connection().await.unwrap_err();
    assert!(matches!(e, TicketError::Unavailable { .. }), "{e:?}");
}

#[tokio::test]
async fn the_simulator_speaks_the_encoded_query_subset() {
    let sim = servicenow_sim::start(SnOptions::default()).await.unwrap();
    let sn = connector(&sim);
    let a = create(&sn, &key(1)).await;
    let b = create(&sn, &key(2)).await;
    let c = create(&sn, &key(3)).await;
    sim.force(
        &b.id,
        &[("state", "2"), ("short_description", "caret ^ inside")],
    );
    sim.force(
        &c.id,
        &[("state", "6"), ("short_description", "Other thing")],
    );
    let ids = |v: &Value| -> Vec<String> {
        v["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["number"].as_str().unwrap().to_string())
            .collect()
    };
    let q = |query: &str| {
        format!(
            "/api/now/table/incident?sysparm_fields=number,state&sysparm_query={}",
            query.replace('^', "%5E")
        )
    };
    let get = |query: String| {
        let sim = &sim;
        async move { raw_get(sim, &query).await.json::<Value>().await.unwrap() }
    };
    let (na, nb, nc) = (
        a.display_no.clone(),
        b.display_no.clone(),
        c.display_no.clone(),
    );
    assert_eq!(
        ids(&get(q("stateIN1,2^ORDERBYnumber")).await),
        vec![na.clone(), nb.clone()]
    );
    assert_eq!(
        ids(&get(q("state!=6^ORDERBYDESCnumber")).await),
        vec![nb.clone(), na.clone()]
    );
    assert_eq!(
        ids(&get(q("short_descriptionLIKEother")).await),
        vec![nc.clone()]
    );
    assert_eq!(
        ids(&get(q("short_descriptionSTARTSWITHSSL^ORDERBYnumber")).await),
        vec![na.clone()]
    );
    assert_eq!(
        ids(&get(q("state=1^ORstate=6^ORDERBYnumber")).await),
        vec![na.clone(), nc.clone()]
    );
    assert_eq!(
        ids(&get(q("short_description=caret ^^ inside")).await),
        vec![nb.clone()]
    );
    // An unknown field is ignored … or, with the instance property, matches nothing.
    assert_eq!(ids(&get(q("no_such_field=1^ORDERBYnumber")).await).len(), 3);
    sim.configure(|o| o.invalid_query_returns_no_rows = true);
    assert!(ids(&get(q("no_such_field=1")).await).is_empty());
    sim.configure(|o| o.invalid_query_returns_no_rows = false);

    // Paging: limit, offset, X-Total-Count and Link.
    let r = raw_get(
        &sim,
        &format!("{}&sysparm_limit=2&sysparm_offset=1", q("ORDERBYnumber")),
    )
    .await;
    assert_eq!(r.headers()["X-Total-Count"], "3");
    let link = r.headers()["Link"].to_str().unwrap().to_string();
    assert!(
        link.contains("rel=\"first\"")
            && link.contains("rel=\"prev\"")
            && link.contains("rel=\"last\""),
        "{link}"
    );
    assert!(!link.contains("rel=\"next\""), "{link}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(ids(&v), vec![nb.clone(), nc.clone()]);

    // Display values: labels, or both.
    let v = get(format!("/api/now/table/incident/{}?sysparm_fields=state,priority,impact&sysparm_display_value=true", a.id)).await;
    assert_eq!(v["result"]["state"], "New");
    assert_eq!(v["result"]["priority"], "2 - High");
    let v = get(format!(
        "/api/now/table/incident/{}?sysparm_fields=state,caller_id&sysparm_display_value=all",
        c.id
    ))
    .await;
    assert_eq!(v["result"]["state"]["display_value"], "Resolved");
    assert_eq!(v["result"]["state"]["value"], "6");
    // Reference fields come with a link unless excluded.
    let v = get(format!(
        "/api/now/table/incident/{}?sysparm_fields=caller_id",
        a.id
    ))
    .await;
    assert_eq!(
        v["result"]["caller_id"]["value"],
        "6816f79cc0a8016401c5a33be04be441"
    );
    assert!(
        v["result"]["caller_id"]["link"]
            .as_str()
            .unwrap()
            .contains("/sys_user/")
    );
    let v = get(format!(
        "/api/now/table/incident/{}?sysparm_fields=caller_id&sysparm_exclude_reference_link=true",
        a.id
    ))
    .await;
    assert_eq!(v["result"]["caller_id"], "6816f79cc0a8016401c5a33be04be441");
    // Missing records and tables.
    let r = raw_get(
        &sim,
        "/api/now/table/incident/0123456789abcdef0123456789abcdef",
    )
    .await;
    assert_eq!(r.status(), 404);
    let r = raw_get(&sim, "/api/now/table/no_table").await;
    assert_eq!(r.status(), 400);
}
