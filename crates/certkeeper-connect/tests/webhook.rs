//! Push channels against in-process receivers (testkit `hooks`): the signed generic
//! webhook (signature checked here with `openssl dgst -hmac`, not with our code),
//! redirects refused, 429 and 5xx transient; a Slack-compatible webhook; PagerDuty
//! Events v2 with alerts kept by dedup_key. No secret in any error or Debug output.

use std::time::Duration;

use certkeeper_connect::notify::ChannelError;
use certkeeper_connect::notify::webhook::{
    self, PagerDutyConfig, PdAction, PdEvent, SlackConfig, WebhookConfig, WebhookEvent,
};
use certkeeper_testkit::hooks::{
    PagerDutyReceiver, Reply, SlackReceiver, SlackState, WebhookReceiver,
};
use time::OffsetDateTime;
use time::macros::datetime;

const HMAC_SECRET: &str = "whsec-SIGNING-s3cret-4242";
const URL_TOKEN: &str = "T0KEN-in-the-path-9876";
const ROUTING_KEY: &str = "R0UTINGkey0123456789abcdefABCDEF";

fn secrets() -> Vec<String> {
    vec![
        HMAC_SECRET.into(),
        URL_TOKEN.into(),
        ROUTING_KEY.into(),
        "T0CERTKEEP/B0HOOK0001".into(),
        "s3cr3tW3bh00kT0k3nXYZ".into(),
    ]
}

fn assert_no_secret(what: &str) {
    for s in secrets() {
        assert!(!what.contains(&s), "a secret ({s}) leaked: {what}");
    }
}

fn check(e: &ChannelError) -> String {
    let shown = format!("{e} / {e:?}");
    assert_no_secret(&shown);
    e.to_string()
}

fn event() -> WebhookEvent {
    WebhookEvent {
        event: "cert.expiring".into(),
        key: "cm1-0123456789abcdef0123456789abcdef".into(),
        subject: "SSL Certificate www.example.com expiry".into(),
        severity: "high".into(),
        occurred_at: datetime!(2026-11-24 06:55:00 UTC),
        data: serde_json::json!({"cn": "www.example.com", "ip": "192.0.2.10", "days": 7}),
    }
}

fn generic(rx: &WebhookReceiver) -> WebhookConfig {
    WebhookConfig {
        url: rx.url(&format!("/hooks/{URL_TOKEN}?src=certkeeper")),
        secret: HMAC_SECRET.into(),
    }
}

/// HMAC-SHA256 by OpenSSL's command line over `ts.body`, in hex.
fn openssl_hmac(key: &str, ts: &str, body: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hex", "-r", "-hmac", key])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(ts.as_bytes()).unwrap();
    stdin.write_all(b".").unwrap();
    stdin.write_all(body).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn the_generic_webhook_is_signed_timestamped_and_idempotent() {
    let rx = WebhookReceiver::start().await.unwrap();
    let cfg = generic(&rx);
    let now = OffsetDateTime::now_utc();
    webhook::post_generic(&cfg, &event(), "3f2b8c1e-7d4a-4e55-9a1b-0c6d2e8f9a10", now)
        .await
        .unwrap();
    let got = rx.requests();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/hooks/{URL_TOKEN}?src=certkeeper"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("idempotency-key"),
        Some("3f2b8c1e-7d4a-4e55-9a1b-0c6d2e8f9a10")
    );
    let ts = r.header("x-certkeeper-timestamp").expect("timestamp");
    assert_eq!(ts, now.unix_timestamp().to_string());
    // The receiver's side: recompute over the raw body, compare, check the age.
    let sig = r.header("x-certkeeper-signature").expect("signature");
    let expected = format!("sha256={}", openssl_hmac(HMAC_SECRET, ts, &r.body));
    assert_eq!(sig, expected);
    let age = OffsetDateTime::now_utc().unix_timestamp() - ts.parse::<i64>().unwrap();
    assert!((0..300).contains(&age), "{age}");
    // Another secret does not verify.
    assert_ne!(
        sig,
        format!("sha256={}", openssl_hmac("other", ts, &r.body))
    );
    let body = r.json().unwrap();
    assert_eq!(body["event"], "cert.expiring");
    assert_eq!(body["key"], "cm1-0123456789abcdef0123456789abcdef");
    assert_eq!(body["subject"], "SSL Certificate www.example.com expiry");
    assert_eq!(body["severity"], "high");
    assert_eq!(body["occurred_at"], "2026-11-24T06:55:00Z");
    assert_eq!(body["data"]["days"], 7);
    assert_no_secret(&String::from_utf8_lossy(&r.body));

    // Any 2xx is success.
    rx.respond_once(Reply::status(204));
    webhook::post_generic(&cfg, &event(), "k2", now)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let rx = WebhookReceiver::start().await.unwrap();
    let elsewhere = WebhookReceiver::start().await.unwrap();
    rx.respond(Reply::redirect(&elsewhere.url("/collect")));
    let e = webhook::post_generic(&generic(&rx), &event(), "k", OffsetDateTime::now_utc())
        .await
        .unwrap_err();
    assert!(!e.is_transient());
    let m = check(&e);
    assert!(
        m.contains("302") && m.contains("redirects are not followed"),
        "{m}"
    );
    assert_eq!(rx.requests().len(), 1);
    assert!(
        elsewhere.requests().is_empty(),
        "the Location target was reached"
    );
}

#[tokio::test]
async fn statuses_sort_into_transient_and_permanent() {
    let rx = WebhookReceiver::start().await.unwrap();
    let cfg = generic(&rx);
    let now = OffsetDateTime::now_utc();

    rx.respond_once(Reply::too_many(7));
    let e = webhook::post_generic(&cfg, &event(), "k", now)
        .await
        .unwrap_err();
    let m = check(&e);
    match e {
        ChannelError::Transient { retry_after, .. } => {
            assert_eq!(retry_after, Some(Duration::from_secs(7)), "{m}")
        }
        other => panic!("429 must be transient: {other}"),
    }
    assert!(m.contains("429"), "{m}");

    for (status, transient) in [
        (500, true),
        (503, true),
        (400, false),
        (404, false),
        (410, false),
    ] {
        rx.respond_once(Reply::status(status).body("nope"));
        let e = webhook::post_generic(&cfg, &event(), "k", now)
            .await
            .unwrap_err();
        assert_eq!(e.is_transient(), transient, "{status}: {e}");
        assert!(check(&e).contains(&status.to_string()), "{e}");
    }
    assert_eq!(rx.requests().len(), 6);

    // Nothing listening: transient, and the URL is not named.
    let port = certkeeper_testkit::free_port().unwrap();
    let gone = WebhookConfig {
        url: format!("http://127.0.0.1:{port}/hooks/{URL_TOKEN}"),
        secret: HMAC_SECRET.into(),
    };
    let e = webhook::post_generic(&gone, &event(), "k", now)
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    check(&e);

    // Bad configuration: permanent, nothing quoted.
    for url in [
        format!("ftp://127.0.0.1/{URL_TOKEN}"),
        format!("not a url {URL_TOKEN}"),
    ] {
        let bad = WebhookConfig {
            url,
            secret: HMAC_SECRET.into(),
        };
        let e = webhook::post_generic(&bad, &event(), "k", now)
            .await
            .unwrap_err();
        assert!(!e.is_transient());
        check(&e);
    }
    let d = format!("{cfg:?}");
    assert!(d.contains("http://127.0.0.1/***"), "{d}");
    assert_no_secret(&d);
}

#[tokio::test]
async fn slack_ok_errors_and_rate_limit() {
    let rx = SlackReceiver::start(1).await.unwrap();
    let cfg = SlackConfig { url: rx.url() };
    let blocks = serde_json::json!([
        {"type": "section", "text": {"type": "mrkdwn", "text": "*www.example.com* expires in 7 days"}}
    ]);
    webhook::post_slack(
        &cfg,
        "www.example.com expires in 7 days",
        Some(blocks.clone()),
    )
    .await
    .unwrap();
    let got = rx.accepted();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["text"], "www.example.com expires in 7 days");
    assert_eq!(got[0]["blocks"], blocks);

    // Straight after: over the budget of one a second.
    let e = webhook::post_slack(&cfg, "again", None).await.unwrap_err();
    let m = check(&e);
    match &e {
        ChannelError::Transient { retry_after, .. } => {
            assert_eq!(*retry_after, Some(Duration::from_secs(1)), "{m}")
        }
        other => panic!("rate_limited must be transient: {other}"),
    }
    assert!(m.contains("429") && m.contains("rate_limited"), "{m}");

    for (state, status, word, transient) in [
        (
            SlackState::ChannelNotFound,
            "404",
            "channel_not_found",
            false,
        ),
        (SlackState::Revoked, "404", "no_service", false),
        (SlackState::Archived, "410", "channel_is_archived", false),
        (SlackState::Prohibited, "403", "action_prohibited", false),
        (SlackState::ServerError, "500", "", true),
    ] {
        rx.set_state(state);
        let e = webhook::post_slack(&cfg, "hello", None).await.unwrap_err();
        assert_eq!(e.is_transient(), transient, "{state:?}: {e}");
        let m = check(&e);
        assert!(m.contains(status) && m.contains(word), "{state:?}: {m}");
    }
    rx.set_state(SlackState::Ok);
    let revoked = SlackConfig {
        url: rx.revoked_url(),
    };
    let e = webhook::post_slack(&revoked, "hello", None)
        .await
        .unwrap_err();
    assert!(!e.is_transient() && check(&e).contains("no_service"), "{e}");
    // 200 is not enough: the body must be `ok`.
    let lookalike = WebhookReceiver::start().await.unwrap();
    lookalike.respond(Reply::status(200).body("{\"ok\":true}"));
    let e = webhook::post_slack(
        &SlackConfig {
            url: lookalike.url("/services/x"),
        },
        "hi",
        None,
    )
    .await
    .unwrap_err();
    assert!(
        !e.is_transient() && check(&e).contains("without \"ok\""),
        "{e}"
    );
    let e = webhook::post_slack(&cfg, "  ", None).await.unwrap_err();
    assert!(!e.is_transient(), "{e}");
    let d = format!("{cfg:?}");
    assert!(d.contains("***"), "{d}");
    assert_no_secret(&d);
    assert_eq!(rx.accepted().len(), 1);
}

#[tokio::test]
async fn the_slack_receiver_answers_bad_payloads_as_slack_does() {
    let rx = SlackReceiver::start(100).await.unwrap();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = reqwest::Client::new();
    for (body, want) in [
        ("not json", "invalid_payload"),
        ("{\"text\": \"\"}", "no_text"),
        ("{\"blocks\": 3, \"text\": \"x\"}", "invalid_payload"),
        ("{\"text\": \"fine\"}", "ok"),
    ] {
        let r = client.post(rx.url()).body(body).send().await.unwrap();
        let status = r.status().as_u16();
        assert_eq!(r.text().await.unwrap(), want, "{body}");
        assert_eq!(status, if want == "ok" { 200 } else { 400 }, "{body}");
    }
}

fn pd_event(action: PdAction, dedup_key: &str) -> PdEvent {
    PdEvent {
        action,
        dedup_key: dedup_key.into(),
        summary: "SSL Certificate www.example.com expires in 7 days".into(),
        source: "192.0.2.10:443".into(),
        severity: "error".into(),
        timestamp: datetime!(2026-11-24 06:55:00 UTC),
        class: "cert-expiry".into(),
        custom_details: serde_json::json!({"serial": "0A1B", "days": 7}),
        links: vec![(
            "https://certkeeper.example/certs/42".into(),
            "Certificate in certkeeper".into(),
        )],
    }
}

fn pd(rx: &PagerDutyReceiver, key: &str) -> PagerDutyConfig {
    PagerDutyConfig {
        routing_key: key.into(),
        url: rx.url(),
    }
}

#[tokio::test]
async fn pagerduty_trigger_merges_and_resolve_closes_the_alert() {
    assert_eq!(ROUTING_KEY.len(), 32);
    let rx = PagerDutyReceiver::start(120).await.unwrap();
    let cfg = pd(&rx, ROUTING_KEY);
    let key = "cm1-0123456789abcdef0123456789abcdef";
    let mut long = pd_event(PdAction::Trigger, key);
    long.summary = "x".repeat(2000);
    webhook::post_pagerduty(&cfg, &long).await.unwrap();
    webhook::post_pagerduty(&cfg, &pd_event(PdAction::Trigger, key))
        .await
        .unwrap();
    let open = rx.open_alerts();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].dedup_key, key);
    assert_eq!(open[0].triggers, 2);
    assert_eq!(open[0].summary.len(), 1024, "the summary is cut to 1024");

    let sent = &rx.events()[1];
    assert_eq!(sent["routing_key"], ROUTING_KEY);
    assert_eq!(sent["event_action"], "trigger");
    assert_eq!(sent["client"], "certkeeper");
    let p = &sent["payload"];
    assert_eq!(
        p["summary"],
        "SSL Certificate www.example.com expires in 7 days"
    );
    assert_eq!(p["source"], "192.0.2.10:443");
    assert_eq!(p["severity"], "error");
    assert_eq!(p["timestamp"], "2026-11-24T06:55:00Z");
    assert_eq!(p["component"], "tls");
    assert_eq!(p["group"], "certkeeper");
    assert_eq!(p["class"], "cert-expiry");
    assert_eq!(p["custom_details"]["days"], 7);
    assert_eq!(
        sent["links"][0]["href"],
        "https://certkeeper.example/certs/42"
    );

    webhook::post_pagerduty(&cfg, &pd_event(PdAction::Resolve, key))
        .await
        .unwrap();
    assert!(rx.open_alerts().is_empty(), "{:?}", rx.alerts());
    assert_eq!(rx.alerts()[0].status, "resolved");
    // After a resolve the same key opens a new alert.
    webhook::post_pagerduty(&cfg, &pd_event(PdAction::Trigger, key))
        .await
        .unwrap();
    assert_eq!(rx.alerts().len(), 2);
    assert_eq!(rx.open_alerts().len(), 1);
    // A resolve for a key never triggered is accepted and dropped.
    webhook::post_pagerduty(&cfg, &pd_event(PdAction::Resolve, "cm1-unknown"))
        .await
        .unwrap();
    assert_eq!(rx.dropped(), 1);
    assert_eq!(rx.alerts().len(), 2);
    let d = format!("{cfg:?}");
    assert!(d.contains("***"), "{d}");
    assert_no_secret(&d);
}

#[tokio::test]
async fn pagerduty_refusals_and_limits() {
    let rx = PagerDutyReceiver::start(3).await.unwrap();
    // A routing key of the wrong length: 400 with PagerDuty's errors[].
    let bad_key = "R0UTINGkey-short-SECRET";
    let e = webhook::post_pagerduty(&pd(&rx, bad_key), &pd_event(PdAction::Trigger, "cm1-a"))
        .await
        .unwrap_err();
    assert!(!e.is_transient(), "{e}");
    let m = check(&e);
    assert!(m.contains("400") && m.contains("routing_key"), "{m}");
    assert!(!m.contains(bad_key), "{m}");

    // Bad severity is refused before sending.
    let mut ev = pd_event(PdAction::Trigger, "cm1-a");
    ev.severity = "high".into();
    let e = webhook::post_pagerduty(&pd(&rx, ROUTING_KEY), &ev)
        .await
        .unwrap_err();
    assert!(!e.is_transient() && check(&e).contains("severity"), "{e}");

    // Three a minute for this key, then 429.
    let cfg = pd(&rx, ROUTING_KEY);
    for i in 0..3 {
        webhook::post_pagerduty(&cfg, &pd_event(PdAction::Trigger, &format!("cm1-{i}")))
            .await
            .unwrap();
    }
    let e = webhook::post_pagerduty(&cfg, &pd_event(PdAction::Trigger, "cm1-9"))
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(check(&e).contains("429"), "{e}");
    assert_eq!(rx.open_alerts().len(), 3);

    // 5xx is transient.
    let broken = WebhookReceiver::start().await.unwrap();
    broken.respond(Reply::status(503).header("retry-after", "30"));
    let cfg = PagerDutyConfig {
        routing_key: ROUTING_KEY.into(),
        url: broken.url("/v2/enqueue"),
    };
    let e = webhook::post_pagerduty(&cfg, &pd_event(PdAction::Trigger, "cm1-a"))
        .await
        .unwrap_err();
    match &e {
        ChannelError::Transient { retry_after, .. } => {
            assert_eq!(*retry_after, Some(Duration::from_secs(30)))
        }
        other => panic!("503 must be transient: {other}"),
    }
    check(&e);
    // The default endpoint is PagerDuty's.
    let parsed: PagerDutyConfig =
        serde_json::from_value(serde_json::json!({"routing_key": ROUTING_KEY})).unwrap();
    assert_eq!(parsed.url, "https://events.pagerduty.com/v2/enqueue");
    assert_no_secret(&format!("{parsed:?}"));
}
