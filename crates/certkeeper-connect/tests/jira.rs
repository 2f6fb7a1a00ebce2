//! The Jira connector against the testkit's Jira simulator, as Cloud (v3, ADF,
//! `/search/jql`) and as Data Center (v2, `/search` with `startAt`).

use std::time::{Duration, Instant};

use certkeeper_connect::ticketing::jira::{Jira, JiraConfig};
use certkeeper_connect::ticketing::{
    Connector, NewTicket, NormStatus, Priority, RetryPolicy, TicketError, TicketRef, token,
};
use certkeeper_testkit::jira_sim::{Flavour, JiraSim, JiraSimConfig};
use serde_json::json;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const BOTH: [Flavour; 2] = [Flavour::Cloud, Flavour::DataCenter];

fn policy() -> RetryPolicy {
    RetryPolicy {
        tries: 3,
        base: Duration::from_millis(20),
        cap: Duration::from_millis(100),
        max_wait: Duration::from_secs(3),
        timeout: Duration::from_secs(5),
    }
}

fn config(sim: &JiraSim, flavour: Flavour) -> JiraConfig {
    let v = match flavour {
        Flavour::Cloud => json!({
            "url": sim.url(), "flavour": "cloud", "project": "OPS",
            "email": "bot@example.test", "api_token": "api-token-1",
        }),
        Flavour::DataCenter => json!({
            "url": sim.url(), "flavour": "datacenter", "project": "OPS", "pat": "pat-1",
        }),
    };
    serde_json::from_value(v).expect("config")
}

fn connector_with(cfg: JiraConfig, p: RetryPolicy) -> Connector {
    Connector::Jira(Jira::new(cfg, p).expect("connector"))
}

async fn sim(flavour: Flavour) -> JiraSim {
    JiraSim::start(JiraSimConfig::new(flavour))
        .await
        .expect("simulator")
}

async fn setup(flavour: Flavour) -> (JiraSim, Connector) {
    let s = sim(flavour).await;
    let c = connector_with(config(&s, flavour), policy());
    (s, c)
}

fn key(n: &str) -> String {
    token(&format!("expiry|0A1B{n}|192.0.2.10"))
}

fn expiry(cn: &str) -> (String, String) {
    certkeeper_core::tickets::expiry_ticket(
        cn,
        time::macros::datetime!(2026-12-20 10:00 UTC),
        "https://ck.example.test:8443",
    )
}

async fn create(c: &Connector, key: &str) -> Result<TicketRef> {
    let (subject, body) = expiry("www.example.test");
    Ok(c.create_deduped(&NewTicket {
        subject: &subject,
        body: &body,
        priority: Priority::High,
        key,
    })
    .await?)
}

#[tokio::test]
async fn create_high_with_labels_in_the_fixed_format_then_find() -> Result {
    for flavour in BOTH {
        let (sim, c) = setup(flavour).await;
        let k = key("1");
        assert!(c.find_by_key(&k).await?.is_empty());
        let t = create(&c, &k).await?;
        assert_eq!(t.id, "OPS-1");
        assert_eq!(t.display_no, "OPS-1");
        assert_eq!(t.status, NormStatus::Active);
        assert_eq!(t.raw_status, "To Do");

        let held = sim.issue("OPS-1").ok_or("issue")?;
        let (subject, body) = expiry("www.example.test");
        assert_eq!(held.summary, subject);
        assert_eq!(
            held.description, body,
            "{flavour:?}: ADF or plain text, same lines"
        );
        assert_eq!(held.priority, "High");
        assert_eq!(held.issue_type, "Task");
        assert_eq!(held.labels, vec!["certkeeper".to_string(), k.clone()]);

        let found = c.find_by_key(&k).await?;
        assert_eq!(found.len(), 1, "{flavour:?}: {found:?}");
        assert_eq!(found[0].id, "OPS-1");
        assert!(c.find_by_key(&key("other")).await?.is_empty());
        assert_eq!(sim.issues().len(), 1);
    }
    Ok(())
}

#[tokio::test]
async fn find_pages_through_results_and_post_filters() -> Result {
    for flavour in BOTH {
        let mut cfg = JiraSimConfig::new(flavour);
        cfg.page_cap = 2;
        let sim = JiraSim::start(cfg).await?;
        let c = connector_with(config(&sim, flavour), policy());
        let k = key("paging");
        let (subject, body) = expiry("paging.example.test");
        for _ in 0..5 {
            c.create(&NewTicket {
                subject: &subject,
                body: &body,
                priority: Priority::High,
                key: &k,
            })
            .await?;
        }
        c.create(&NewTicket {
            subject: &subject,
            body: &body,
            priority: Priority::High,
            key: &key("unrelated"),
        })
        .await?;
        let found = c.find_by_key(&k).await?;
        assert_eq!(found.len(), 5, "{flavour:?}: {found:?}");
        let searches = sim
            .calls()
            .iter()
            .filter(|c| c.path.contains("/search"))
            .count();
        assert_eq!(searches, 3, "{flavour:?}: pages of 2, 2 and 1");
        // Newest first.
        assert!(found.windows(2).all(|w| w[0].created >= w[1].created));

        // A search that ignores the label still yields only issues carrying the key.
        sim.ignore_labels_in_search(true);
        let found = c.find_by_key(&k).await?;
        assert_eq!(found.len(), 5, "{flavour:?}: post-filtered");
        assert!(c.find_by_key(&key("absent")).await?.is_empty());
    }
    Ok(())
}

#[tokio::test]
async fn cloud_finds_a_just_created_issue_the_search_does_not_show_yet() -> Result {
    let sim = sim(Flavour::Cloud).await;
    sim.hide_fresh_issues(Duration::from_secs(60));
    let c = connector_with(config(&sim, Flavour::Cloud), policy());
    let k = key("fresh");
    let t = create(&c, &k).await?;

    // Another connector (no memory of the create) sees what the search shows: nothing.
    let other = connector_with(config(&sim, Flavour::Cloud), policy());
    assert!(other.find_by_key(&k).await?.is_empty());

    // The creating one merges the key it remembers, read by key (status is current).
    let found = c.find_by_key(&k).await?;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].id, t.id);
    sim.set_status(&t.id, "Done", None);
    assert_eq!(c.find_by_key(&k).await?[0].status, NormStatus::Resolved);
    // And only for its own key.
    assert!(c.find_by_key(&key("fresh-other")).await?.is_empty());

    // Once visible to search, it is found once, not twice.
    sim.hide_fresh_issues(Duration::ZERO);
    assert_eq!(c.find_by_key(&k).await?.len(), 1);
    assert_eq!(other.find_by_key(&k).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn comments_plain_and_internal() -> Result {
    for flavour in BOTH {
        let (sim, c) = setup(flavour).await;
        let t = create(&c, &key("note")).await?;
        c.add_note(&t.id, "Scanned again\nstill expiring").await?;
        let held = sim.issue(&t.id).ok_or("issue")?;
        assert_eq!(held.comments.len(), 1);
        assert_eq!(held.comments[0].body, "Scanned again\nstill expiring");
        assert!(!held.comments[0].internal);

        let mut cfg = config(&sim, flavour);
        cfg.internal_comments = true;
        connector_with(cfg, policy())
            .add_note(&t.id, "for agents only")
            .await?;
        let held = sim.issue(&t.id).ok_or("issue")?;
        assert!(held.comments[1].internal, "sd.public.comment internal");
    }
    Ok(())
}

#[tokio::test]
async fn resolve_then_reopen_through_transitions() -> Result {
    for flavour in BOTH {
        let (sim, c) = setup(flavour).await;
        let k = key("reopen");
        let t = create(&c, &k).await?;

        // To Do has no direct way into Done: the resolve goes through In Progress.
        c.resolve(&t.id, "Renewed").await?;
        let held = sim.issue(&t.id).ok_or("issue")?;
        assert_eq!(held.status, "Done");
        assert_eq!(held.resolution.as_deref(), Some("Done"));
        assert_eq!(
            held.comments.last().map(|c| c.body.as_str()),
            Some("Renewed")
        );
        let found = c.find_by_key(&k).await?;
        assert_eq!(found[0].status, NormStatus::Resolved);
        assert_eq!(found[0].raw_status, "Done");

        c.reopen(&t.id, "Reopened by certkeeper: expiring again")
            .await?;
        let held = sim.issue(&t.id).ok_or("issue")?;
        assert_eq!(held.status, "To Do");
        assert_eq!(held.resolution, None);
        assert_eq!(
            held.comments.last().map(|c| c.body.as_str()),
            Some("Reopened by certkeeper: expiring again")
        );
        assert_eq!(c.find_by_key(&k).await?[0].status, NormStatus::Active);

        // A reopen of an issue that is not done only adds the note.
        c.reopen(&t.id, "again").await?;
        let held = sim.issue(&t.id).ok_or("issue")?;
        assert_eq!(held.status, "To Do");
        assert_eq!(held.comments.len(), 3);

        // Done with Won't Do is Canceled.
        sim.set_status(&t.id, "Done", Some("Won't Do"));
        assert_eq!(c.find_by_key(&k).await?[0].status, NormStatus::Canceled);
    }
    Ok(())
}

#[tokio::test]
async fn no_reopen_transition_is_not_allowed() -> Result {
    for flavour in BOTH {
        let (sim, c) = setup(flavour).await;
        let t = create(&c, &key("noreopen")).await?;
        sim.set_status(&t.id, "Done", None);
        sim.allow_reopen(false);
        let err = c.reopen(&t.id, "try").await.unwrap_err();
        assert!(matches!(err, TicketError::NotAllowed { .. }), "{err:?}");
        assert_eq!(sim.issue(&t.id).ok_or("issue")?.status, "Done");
        assert!(sim.issue(&t.id).ok_or("issue")?.comments.is_empty());
    }
    Ok(())
}

#[tokio::test]
async fn set_priority_to_highest() -> Result {
    for flavour in BOTH {
        let (sim, c) = setup(flavour).await;
        let t = create(&c, &key("prio")).await?;
        c.set_priority(&t.id, Priority::Highest).await?;
        assert_eq!(sim.issue(&t.id).ok_or("issue")?.priority, "Highest");

        // A name the site does not have is rejected with Jira's words.
        let mut cfg = config(&sim, flavour);
        cfg.priority_highest = "Blocker".into();
        let err = connector_with(cfg, policy())
            .set_priority(&t.id, Priority::Highest)
            .await
            .unwrap_err();
        assert!(
            matches!(err, TicketError::Rejected { status: 400, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("Blocker"), "{err}");
    }
    Ok(())
}

#[tokio::test]
async fn a_429_retry_after_is_honoured() -> Result {
    let sim = sim(Flavour::Cloud).await;
    // Backoff alone would wait at least 2.5 s; Retry-After says 1 s.
    let slow = RetryPolicy {
        base: Duration::from_secs(5),
        cap: Duration::from_secs(5),
        ..policy()
    };
    let c = connector_with(config(&sim, Flavour::Cloud), slow);
    sim.rate_limit(0, 1, "1");
    let started = Instant::now();
    assert!(c.find_by_key(&key("429")).await?.is_empty());
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_millis(2400), "{took:?}");
    let calls = sim.calls();
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        [429, 200]
    );
    assert!(calls[1].at.duration_since(calls[0].at) >= Duration::from_secs(1));

    // A Retry-After beyond max_wait ends the call at once, carrying it.
    sim.rate_limit(0, 1, "120");
    let started = Instant::now();
    let err = c.find_by_key(&key("429")).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)), "{err:?}");
    assert!(err.is_transient());
    Ok(())
}

#[tokio::test]
async fn a_5xx_is_retried_then_given_up() -> Result {
    for flavour in BOTH {
        let (sim, c) = setup(flavour).await;
        let t = create(&c, &key("5xx")).await?;
        let before = sim.calls().len();
        sim.fail(0, 2, 503);
        c.add_note(&t.id, "after two 503s").await?;
        let statuses: Vec<u16> = sim.calls()[before..].iter().map(|c| c.status).collect();
        assert_eq!(statuses, [503, 503, 201], "{flavour:?}");
        assert_eq!(sim.issue(&t.id).ok_or("issue")?.comments.len(), 1);

        sim.fail(0, 10, 502);
        let err = c.add_note(&t.id, "never").await.unwrap_err();
        assert!(matches!(err, TicketError::Unavailable { .. }), "{err:?}");
        assert_eq!(sim.issue(&t.id).ok_or("issue")?.comments.len(), 1);
        sim.fail(0, 0, 502);
    }
    Ok(())
}

#[tokio::test]
async fn a_create_that_commits_then_times_out_is_found_not_repeated() -> Result {
    for flavour in BOTH {
        let sim = sim(flavour).await;
        let quick = RetryPolicy {
            timeout: Duration::from_millis(500),
            ..policy()
        };
        let c = connector_with(config(&sim, flavour), quick);
        let k = key("stall");
        let (subject, body) = expiry("stall.example.test");
        let t = NewTicket {
            subject: &subject,
            body: &body,
            priority: Priority::High,
            key: &k,
        };

        // One attempt alone: a timeout, and the issue exists anyway.
        sim.stall_next_create(Duration::from_secs(3));
        let err = c.create(&t).await.unwrap_err();
        assert!(matches!(err, TicketError::Timeout { .. }), "{err:?}");
        assert_eq!(sim.issues().len(), 1, "{flavour:?}: committed once");

        // The deduped create looks before writing again and returns the committed one.
        sim.stall_next_create(Duration::from_secs(3));
        let k2 = key("stall2");
        let t2 = NewTicket { key: &k2, ..t };
        let got = c.create_deduped(&t2).await?;
        let held: Vec<_> = sim
            .issues()
            .into_iter()
            .filter(|i| i.labels.contains(&k2))
            .collect();
        assert_eq!(held.len(), 1, "{flavour:?}: exactly one issue");
        assert_eq!(got.id, held[0].key);
        let posts = sim
            .calls()
            .iter()
            .filter(|c| c.method == "POST" && c.path.ends_with("/issue"))
            .count();
        assert_eq!(posts, 2, "{flavour:?}: one POST per create call");
    }
    Ok(())
}

#[tokio::test]
async fn bad_credentials_are_auth_and_never_shown() -> Result {
    for flavour in BOTH {
        let sim = sim(flavour).await;
        let mut cfg = config(&sim, flavour);
        let secret = "wrong-secret-7f3a9c";
        match flavour {
            Flavour::Cloud => cfg.api_token = Some(secret.into()),
            Flavour::DataCenter => cfg.pat = Some(secret.into()),
        }
        let c = connector_with(cfg.clone(), policy());
        let (subject, body) = expiry("auth.example.test");
        for err in [
            c.test_connection().await.unwrap_err(),
            c.find_by_key(&key("auth")).await.unwrap_err(),
            c.create(&NewTicket {
                subject: &subject,
                body: &body,
                priority: Priority::High,
                key: &key("auth"),
            })
            .await
            .unwrap_err(),
        ] {
            assert!(matches!(err, TicketError::Auth { .. }), "{err:?}");
            assert!(err.to_string().contains("not authenticated"), "{err}");
            for shown in [err.to_string(), format!("{err:?}")] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
        assert!(!format!("{c:?}").contains(secret));
        assert!(!format!("{cfg:?}").contains(secret));
        assert!(sim.issues().is_empty());
    }
    Ok(())
}

#[tokio::test]
async fn test_connection_reads_and_creates_nothing() -> Result {
    for flavour in BOTH {
        let (sim, c) = setup(flavour).await;
        c.test_connection().await?;
        assert!(sim.issues().is_empty());
        assert!(sim.calls().iter().all(|c| c.method == "GET"));

        let mut cfg = config(&sim, flavour);
        cfg.project = "NOPE".into();
        let err = connector_with(cfg, policy())
            .test_connection()
            .await
            .unwrap_err();
        assert!(matches!(err, TicketError::Config { .. }), "{err:?}");
    }
    Ok(())
}

#[tokio::test]
async fn the_wrong_flavour_meets_cloud_s_410() -> Result {
    let sim = sim(Flavour::Cloud).await;
    let mut cfg = config(&sim, Flavour::Cloud);
    cfg.flavour = certkeeper_connect::ticketing::jira::JiraFlavour::Datacenter;
    let err = connector_with(cfg, policy())
        .find_by_key(&key("410"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TicketError::Rejected { status: 410, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("flavour"), "{err}");
    Ok(())
}

#[tokio::test]
async fn after_a_create_the_oldest_active_twin_wins() -> Result {
    for flavour in BOTH {
        let (sim, c) = setup(flavour).await;
        let k = key("twin");
        let (subject, body) = expiry("twin.example.test");
        let t = NewTicket {
            subject: &subject,
            body: &body,
            priority: Priority::High,
            key: &k,
        };
        // A twin made elsewhere a moment earlier.
        let first = c.create(&t).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let got = c.create_deduped(&t).await?;
        assert_eq!(got.id, first.id, "{flavour:?}");
        assert_eq!(sim.issues().len(), 2);
        let found = c.find_by_key(&k).await?;
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].id, first.id, "newest first");
    }
    Ok(())
}
