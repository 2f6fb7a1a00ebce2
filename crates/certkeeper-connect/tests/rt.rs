//! The RT connector against a real Request Tracker 5 (Debian's, started by
//! `.ci/start-rt`; `CERTKEEPER_TEST_RT_URL` and `CERTKEEPER_TEST_RT_TOKEN`). Each test
//! makes its own tickets with its own key, so they do not depend on each other.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use certkeeper_connect::ticketing::rt::{NoteKind, Rt, RtConfig};
use certkeeper_connect::ticketing::{
    Connector, NewTicket, NormStatus, Priority, RetryPolicy, TicketError, token,
};
use certkeeper_testkit::rt::{TestRt, test_rt};
use serde_json::{Value, json};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// test_connection counts every ticket; it takes this for writing, the others for reading.
static COUNTING: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn policy() -> RetryPolicy {
    RetryPolicy {
        tries: 2,
        base: Duration::from_millis(50),
        cap: Duration::from_millis(200),
        max_wait: Duration::from_secs(1),
        timeout: Duration::from_secs(30),
    }
}

fn config(rt: &TestRt) -> RtConfig {
    serde_json::from_value(json!({ "url": rt.url, "token": rt.token })).expect("config")
}

fn connector(cfg: RtConfig) -> Connector {
    Connector::Rt(Rt::new(cfg, policy()).expect("connector"))
}

/// A key no other test (or earlier run) uses.
fn unique_key(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    token(&format!(
        "expiry|{what}{nanos:X}{}|192.0.2.10",
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Plain REST2 calls to check what RT really holds.
struct Raw {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Raw {
    fn new(rt: &TestRt) -> Raw {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        Raw {
            base: format!("{}/REST/2.0", rt.url.trim_end_matches('/')),
            token: rt.token.clone(),
            client: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", format!("token {}", self.token));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            return Err(format!("{path}: HTTP {status}: {text}").into());
        }
        serde_json::from_str(&text).map_err(|e| format!("{path}: {e}: {text}").into())
    }

    async fn ticket(&self, id: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, &format!("/ticket/{id}"), None)
            .await
    }

    async fn status(&self, id: &str) -> Result<String> {
        Ok(self.ticket(id).await?["Status"]
            .as_str()
            .ok_or("Status")?
            .to_string())
    }

    async fn set_status(&self, id: &str, status: &str) -> Result {
        self.call(
            reqwest::Method::PUT,
            &format!("/ticket/{id}"),
            Some(json!({ "Status": status })),
        )
        .await?;
        if self.status(id).await? != status {
            return Err(format!("ticket {id} not {status}").into());
        }
        Ok(())
    }

    /// Transaction types of a ticket's history (Create, Comment, Status, …).
    async fn history_types(&self, id: &str) -> Result<Vec<String>> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/ticket/{id}/history?fields=Type&per_page=100"),
                None,
            )
            .await?;
        Ok(v["items"]
            .as_array()
            .ok_or("items")?
            .iter()
            .filter_map(|i| i["Type"].as_str().map(str::to_string))
            .collect())
    }

    async fn ticket_count(&self) -> Result<u64> {
        let v = self
            .call(
                reqwest::Method::GET,
                "/tickets?query=id%3E0&per_page=1",
                None,
            )
            .await?;
        Ok(v["total"].as_u64().ok_or("total")?)
    }
}

async fn create(
    c: &Connector,
    key: &str,
    cn: &str,
) -> Result<certkeeper_connect::ticketing::TicketRef> {
    let (subject, body) = certkeeper_core::tickets::expiry_ticket(
        cn,
        time::macros::datetime!(2026-12-20 10:00 UTC),
        "https://ck.example.test:8443",
    );
    Ok(c.create_deduped(&NewTicket {
        subject: &subject,
        body: &body,
        priority: Priority::High,
        key,
    })
    .await?)
}

#[tokio::test]
async fn create_with_priority_high_and_the_key_then_find_it() -> Result {
    let Some(rt) = test_rt() else { return Ok(()) };
    let _g = COUNTING.read().await;
    let c = connector(config(&rt));
    let raw = Raw::new(&rt);
    let key = unique_key("create");
    assert!(c.find_by_key(&key).await?.is_empty());

    let t = create(&c, &key, "create.example.test").await?;
    assert_eq!(t.status, NormStatus::Active);
    assert_eq!(t.raw_status, "new");
    assert_eq!(t.display_no, format!("RT #{}", t.id));

    let held = raw.ticket(&t.id).await?;
    assert_eq!(
        held["Subject"],
        "SSL Certificate create.example.test expiry"
    );
    assert_eq!(held["Priority"], "100", "High is 100 in RT's default map");
    let cf = held["CustomFields"]
        .as_array()
        .ok_or("CustomFields")?
        .iter()
        .find(|cf| cf["name"] == "ExternalKey")
        .ok_or("ExternalKey")?;
    assert_eq!(cf["values"], json!([key]));

    let found = c.find_by_key(&key).await?;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].id, t.id);
    assert_eq!(found[0].status, NormStatus::Active);
    // Another key finds nothing.
    assert!(c.find_by_key(&unique_key("other")).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn comment_resolve_and_reopen_from_resolved() -> Result {
    let Some(rt) = test_rt() else { return Ok(()) };
    let _g = COUNTING.read().await;
    let c = connector(config(&rt));
    let raw = Raw::new(&rt);
    let key = unique_key("resolve");
    let t = create(&c, &key, "resolve.example.test").await?;

    c.add_note(&t.id, "Scanned again: still expiring").await?;
    assert!(
        raw.history_types(&t.id)
            .await?
            .iter()
            .any(|t| t == "Comment")
    );
    assert_eq!(
        raw.status(&t.id).await?,
        "new",
        "a comment changes no status"
    );

    c.resolve(&t.id, "Renewed").await?;
    assert_eq!(raw.status(&t.id).await?, "resolved");
    let found = c.find_by_key(&key).await?;
    assert_eq!(found[0].status, NormStatus::Resolved);

    c.reopen(&t.id, "Reopened by certkeeper: expiring again")
        .await?;
    assert_eq!(raw.status(&t.id).await?, "open");
    let found = c.find_by_key(&key).await?;
    assert_eq!(found[0].status, NormStatus::Active);
    assert_eq!(found[0].raw_status, "open");
    let comments = raw
        .history_types(&t.id)
        .await?
        .iter()
        .filter(|t| *t == "Comment")
        .count();
    assert_eq!(
        comments, 3,
        "the note, the resolve note and the reopen note"
    );
    Ok(())
}

#[tokio::test]
async fn reopen_from_rejected() -> Result {
    let Some(rt) = test_rt() else { return Ok(()) };
    let _g = COUNTING.read().await;
    let c = connector(config(&rt));
    let raw = Raw::new(&rt);
    let key = unique_key("rejected");
    let t = create(&c, &key, "rejected.example.test").await?;
    raw.set_status(&t.id, "rejected").await?;
    assert_eq!(c.find_by_key(&key).await?[0].status, NormStatus::Canceled);

    c.reopen(&t.id, "Reopened by certkeeper").await?;
    assert_eq!(raw.status(&t.id).await?, "open");
    Ok(())
}

#[tokio::test]
async fn a_correspond_note_reopens_a_resolved_ticket() -> Result {
    let Some(rt) = test_rt() else { return Ok(()) };
    let _g = COUNTING.read().await;
    let mut cfg = config(&rt);
    cfg.note_kind = NoteKind::Correspond;
    let c = connector(cfg);
    let raw = Raw::new(&rt);
    let t = create(&c, &unique_key("correspond"), "correspond.example.test").await?;
    raw.set_status(&t.id, "resolved").await?;
    c.add_note(&t.id, "Still expiring").await?;
    assert!(
        raw.history_types(&t.id)
            .await?
            .iter()
            .any(|t| t == "Correspond")
    );
    assert_eq!(
        raw.status(&t.id).await?,
        "open",
        "RT's default scrip reopens"
    );
    Ok(())
}

#[tokio::test]
async fn set_priority_to_highest() -> Result {
    let Some(rt) = test_rt() else { return Ok(()) };
    let _g = COUNTING.read().await;
    let raw = Raw::new(&rt);

    // A site scale above the default: Highest is a label of the site's map.
    let mut cfg = config(&rt);
    cfg.priority_highest = "Critical".into();
    cfg.priority_labels.insert("Critical".into(), 150);
    let c = connector(cfg);
    let t = create(&c, &unique_key("prio"), "prio.example.test").await?;
    assert_eq!(raw.ticket(&t.id).await?["Priority"], "100");
    c.set_priority(&t.id, Priority::Highest).await?;
    assert_eq!(raw.ticket(&t.id).await?["Priority"], "150");

    // The default: Highest is High (100), the top of RT's default scale, and a number
    // works as well.
    let c = connector(config(&rt));
    c.set_priority(&t.id, Priority::Highest).await?;
    assert_eq!(raw.ticket(&t.id).await?["Priority"], "100");
    let mut cfg = config(&rt);
    cfg.priority_highest = "120".into();
    connector(cfg)
        .set_priority(&t.id, Priority::Highest)
        .await?;
    assert_eq!(raw.ticket(&t.id).await?["Priority"], "120");
    Ok(())
}

#[tokio::test]
async fn a_wrong_token_is_auth_and_never_shown() -> Result {
    let Some(rt) = test_rt() else { return Ok(()) };
    let _g = COUNTING.read().await;
    let secret = "1-99-notavalidtokenatall0123456789";
    let mut cfg = config(&rt);
    cfg.token = secret.into();
    let c = connector(cfg.clone());
    for err in [
        c.test_connection().await.unwrap_err(),
        c.find_by_key(&unique_key("auth")).await.unwrap_err(),
    ] {
        assert!(matches!(err, TicketError::Auth { .. }), "{err:?}");
        assert!(!err.to_string().contains("notavalidtoken"), "{err}");
        assert!(!format!("{err:?}").contains("notavalidtoken"), "{err:?}");
    }
    assert!(!format!("{c:?}").contains("notavalidtoken"));
    assert!(!format!("{cfg:?}").contains("notavalidtoken"));
    Ok(())
}

#[tokio::test]
async fn an_unknown_queue_is_rejected() -> Result {
    let Some(rt) = test_rt() else { return Ok(()) };
    let _g = COUNTING.read().await;
    let mut cfg = config(&rt);
    cfg.queue = "NoSuchQueue".into();
    let c = connector(cfg);
    let err = create(&c, &unique_key("queue"), "queue.example.test")
        .await
        .unwrap_err();
    let err = *err.downcast::<TicketError>().map_err(|e| e.to_string())?;
    assert!(
        matches!(err, TicketError::Rejected { status: 403, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("NoSuchQueue"), "{err}");
    assert!(matches!(
        c.test_connection().await,
        Err(TicketError::Config { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn test_connection_creates_nothing() -> Result {
    let Some(rt) = test_rt() else { return Ok(()) };
    let _g = COUNTING.write().await;
    let raw = Raw::new(&rt);
    let before = raw.ticket_count().await?;
    connector(config(&rt)).test_connection().await?;
    assert_eq!(raw.ticket_count().await?, before);
    Ok(())
}

#[tokio::test]
async fn a_missing_custom_field_is_a_config_error() -> Result {
    let Some(rt) = test_rt() else { return Ok(()) };
    let _g = COUNTING.read().await;
    let mut cfg = config(&rt);
    cfg.custom_field = "NoSuchField".into();
    let c = connector(cfg);
    let err = c.test_connection().await.unwrap_err();
    assert!(matches!(err, TicketError::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("NoSuchField"), "{err}");
    // RT drops an unknown field on create without a word; the connector notices.
    let err = create(&c, &unique_key("nocf"), "nocf.example.test")
        .await
        .unwrap_err();
    let err = *err.downcast::<TicketError>().map_err(|e| e.to_string())?;
    assert!(matches!(err, TicketError::Config { .. }), "{err:?}");
    Ok(())
}
