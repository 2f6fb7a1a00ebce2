//! Push notifications over HTTPS (contract section 5): our signed generic webhook,
//! Slack-compatible incoming webhooks and PagerDuty Events API v2.
//!
//! Redirects are never followed (a 3xx is a permanent error): a redirect would carry
//! the signed body, or a URL that is a credential, somewhere not configured. The
//! webhook URL, the HMAC secret and the routing key never appear in an error or in
//! `Debug` output; reqwest's errors are taken without their URL.

use std::time::Duration;

use aws_lc_rs::hmac;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::ChannelError;
use crate::ticketing::parse_retry_after;

/// Longest time for one post: connection, TLS, request and answer.
const TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an answer is read.
const MAX_BODY: usize = 64 * 1024;
/// How much of an error body is quoted back.
const MAX_QUOTE: usize = 200;

// ---------------------------------------------------------------------------------
// The generic webhook

/// Where our signed webhook goes.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// May embed a secret (a token in the path or query): never printed.
    pub url: String,
    /// The HMAC-SHA256 key.
    pub secret: String,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redacted_url(&self.url))
            .field("secret", &"***")
            .finish()
    }
}

/// One event in our format.
#[derive(Debug, Clone)]
pub struct WebhookEvent {
    /// `cert.expiring`, `vuln.detected`, `ticket.reopened`, `cert.renewed` …
    pub event: String,
    /// The dedupe token, `cm1-…`.
    pub key: String,
    pub subject: String,
    pub severity: String,
    pub occurred_at: OffsetDateTime,
    pub data: serde_json::Value,
}

/// `sha256=<hex HMAC-SHA256(secret, ts + "." + body)>`.
pub fn signature(secret: &str, ts: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(ts.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex(ctx.sign().as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The JSON body of `ev`, exactly as signed and sent.
pub fn generic_body(ev: &WebhookEvent) -> Result<Vec<u8>, ChannelError> {
    let occurred_at = rfc3339(ev.occurred_at).map_err(|e| permanent(GENERIC, e))?;
    let body = serde_json::json!({
        "event": ev.event,
        "key": ev.key,
        "subject": ev.subject,
        "severity": ev.severity,
        "occurred_at": occurred_at,
        "data": ev.data,
    });
    serde_json::to_vec(&body).map_err(|e| permanent(GENERIC, format!("cannot encode: {e}")))
}

const GENERIC: &str = "webhook";

/// Post `ev` signed at `now`. Any 2xx is success; 429 and 5xx are transient
/// (with `Retry-After` when given); any other answer, a redirect included, is
/// permanent.
pub async fn post_generic(
    cfg: &WebhookConfig,
    ev: &WebhookEvent,
    idempotency_key: &str,
    now: OffsetDateTime,
) -> Result<(), ChannelError> {
    if cfg.secret.is_empty() {
        return Err(permanent(GENERIC, "the signing secret is empty".into()));
    }
    let url = checked_url(GENERIC, &cfg.url)?;
    let body = generic_body(ev)?;
    let ts = now.unix_timestamp();
    let request = client(GENERIC)?
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Certkeeper-Timestamp", ts.to_string())
        .header("X-Certkeeper-Signature", signature(&cfg.secret, ts, &body))
        .header("Idempotency-Key", idempotency_key)
        .body(body);
    let answer = send(GENERIC, request).await?;
    if answer.status.is_success() {
        return Ok(());
    }
    Err(status_error(GENERIC, &answer, quote(&answer.body)))
}

// ---------------------------------------------------------------------------------
// Slack

/// A Slack-compatible incoming webhook.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// `https://hooks.slack.com/services/T…/B…/…`: a secret.
    pub url: String,
}

impl std::fmt::Debug for SlackConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackConfig")
            .field("url", &redacted_url(&self.url))
            .finish()
    }
}

const SLACK: &str = "slack";

/// Post `text` (the fallback, always given) with optional Block Kit `blocks`.
/// Success is `200` with the body `ok` and nothing else.
pub async fn post_slack(
    cfg: &SlackConfig,
    text: &str,
    blocks: Option<serde_json::Value>,
) -> Result<(), ChannelError> {
    if text.trim().is_empty() {
        return Err(permanent(SLACK, "the message text is empty".into()));
    }
    let url = checked_url(SLACK, &cfg.url)?;
    let mut body = serde_json::json!({ "text": text });
    if let Some(b) = blocks {
        body["blocks"] = b;
    }
    let request = client(SLACK)?.post(url).json(&body);
    let answer = send(SLACK, request).await?;
    let word = slack_word(&answer.body);
    match answer.status.as_u16() {
        200 if answer.body.trim() == "ok" => Ok(()),
        200 => Err(permanent(
            SLACK,
            format!("200 without \"ok\": {}", quote(&answer.body)),
        )),
        _ => Err(status_error(SLACK, &answer, word)),
    }
}

/// Slack's error strings are single words (`channel_not_found`); anything else is
/// quoted shortened.
fn slack_word(body: &str) -> String {
    let b = body.trim();
    if !b.is_empty()
        && b.len() <= 64
        && b.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        b.to_string()
    } else {
        quote(body)
    }
}

// ---------------------------------------------------------------------------------
// PagerDuty Events API v2

/// A PagerDuty service integration.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    /// The 32-character integration key: a credential.
    pub routing_key: String,
    #[serde(default = "default_pd_url")]
    pub url: String,
}

/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

fn default_pd_url() -> String {
    PAGERDUTY_URL.into()
}

impl std::fmt::Debug for PagerDutyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagerDutyConfig")
            .field("routing_key", &"***")
            .field("url", &redacted_url(&self.url))
            .finish()
    }
}

/// `event_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PdAction {
    Trigger,
    Acknowledge,
    Resolve,
}

impl PdAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PdAction::Trigger => "trigger",
            PdAction::Acknowledge => "acknowledge",
            PdAction::Resolve => "resolve",
        }
    }
}

/// One event. For acknowledge and resolve only the action and `dedup_key` are sent.
#[derive(Debug, Clone)]
pub struct PdEvent {
    pub action: PdAction,
    /// The dedupe token, at most 255 characters.
    pub dedup_key: String,
    /// Cut to 1024 characters.
    pub summary: String,
    /// `192.0.2.10:443`.
    pub source: String,
    /// `critical`, `error`, `warning` or `info`.
    pub severity: String,
    pub timestamp: OffsetDateTime,
    /// `cert-expiry`, `vulnerability` …
    pub class: String,
    pub custom_details: serde_json::Value,
    /// `(href, text)`.
    pub links: Vec<(String, String)>,
}

const PAGERDUTY: &str = "pagerduty";
const MAX_SUMMARY: usize = 1024;
const MAX_DEDUP_KEY: usize = 255;

/// The request body of `ev` for `routing_key`, as the contract gives it.
pub fn pagerduty_body(routing_key: &str, ev: &PdEvent) -> Result<serde_json::Value, ChannelError> {
    if ev.dedup_key.is_empty() || ev.dedup_key.len() > MAX_DEDUP_KEY {
        return Err(permanent(
            PAGERDUTY,
            format!(
                "dedup_key must be 1 to {MAX_DEDUP_KEY} characters, not {}",
                ev.dedup_key.len()
            ),
        ));
    }
    let mut body = serde_json::json!({
        "routing_key": routing_key,
        "event_action": ev.action.as_str(),
        "dedup_key": ev.dedup_key,
        "client": "certkeeper",
    });
    if ev.action == PdAction::Trigger {
        if !matches!(
            ev.severity.as_str(),
            "critical" | "error" | "warning" | "info"
        ) {
            return Err(permanent(
                PAGERDUTY,
                format!(
                    "severity {:?} is not one of critical, error, warning, info",
                    ev.severity
                ),
            ));
        }
        let timestamp = rfc3339(ev.timestamp).map_err(|e| permanent(PAGERDUTY, e))?;
        body["payload"] = serde_json::json!({
            "summary": ev.summary.chars().take(MAX_SUMMARY).collect::<String>(),
            "source": ev.source,
            "severity": ev.severity,
            "timestamp": timestamp,
            "component": "tls",
            "group": "certkeeper",
            "class": ev.class,
            "custom_details": ev.custom_details,
        });
        body["links"] = ev
            .links
            .iter()
            .map(|(href, text)| serde_json::json!({ "href": href, "text": text }))
            .collect();
    }
    Ok(body)
}

/// Send `ev`. `202` is success; `400` is permanent with PagerDuty's `errors[]`;
/// `429` and 5xx are transient.
pub async fn post_pagerduty(cfg: &PagerDutyConfig, ev: &PdEvent) -> Result<(), ChannelError> {
    if cfg.routing_key.trim().is_empty() {
        return Err(permanent(PAGERDUTY, "the routing key is empty".into()));
    }
    let url = checked_url(PAGERDUTY, &cfg.url)?;
    let body = pagerduty_body(&cfg.routing_key, ev)?;
    let request = client(PAGERDUTY)?.post(url).json(&body);
    let answer = send(PAGERDUTY, request).await?;
    let scrub = |s: String| s.replace(&cfg.routing_key, "***");
    match answer.status.as_u16() {
        202 => Ok(()),
        400 => {
            let errors = serde_json::from_str::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|v| {
                    v.get("errors").and_then(|e| e.as_array()).map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| quote(&answer.body));
            Err(permanent(
                PAGERDUTY,
                scrub(format!("the event was refused (400): {errors}")),
            ))
        }
        s if (200..300).contains(&s) => Err(permanent(
            PAGERDUTY,
            format!("unexpected {s} (expected 202)"),
        )),
        _ => Err(
            match status_error(PAGERDUTY, &answer, quote(&answer.body)) {
                ChannelError::Transient {
                    channel,
                    message,
                    retry_after,
                } => ChannelError::Transient {
                    channel,
                    message: scrub(message),
                    retry_after,
                },
                ChannelError::Permanent { channel, message } => ChannelError::Permanent {
                    channel,
                    message: scrub(message),
                },
            },
        ),
    }
}

// ---------------------------------------------------------------------------------
// Shared HTTP plumbing

struct Answer {
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    body: String,
}

fn permanent(channel: &'static str, message: String) -> ChannelError {
    ChannelError::Permanent { channel, message }
}

fn rfc3339(t: OffsetDateTime) -> Result<String, String> {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .map_err(|e| format!("cannot format the time {t}: {e}"))
}

/// The scheme and host of `url`, the rest hidden: `https://hooks.slack.com/***`.
fn redacted_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match u.host_str() {
            Some(h) => format!("{}://{h}/***", u.scheme()),
            None => "***".into(),
        },
        Err(_) => "***".into(),
    }
}

/// `url` parsed; errors never quote it (it may hold a secret).
fn checked_url(channel: &'static str, url: &str) -> Result<reqwest::Url, ChannelError> {
    let u = reqwest::Url::parse(url).map_err(|e| {
        permanent(
            channel,
            format!("the configured URL is not a valid URL ({e})"),
        )
    })?;
    if !matches!(u.scheme(), "https" | "http") || u.host_str().is_none_or(str::is_empty) {
        return Err(permanent(
            channel,
            "the configured URL must be http(s) with a host".into(),
        ));
    }
    Ok(u)
}

/// A client as [`crate::fetch`] builds one: rustls with the platform's verifier, no
/// redirects, no proxy from the environment, timeouts.
fn client(channel: &'static str) -> Result<reqwest::Client, ChannelError> {
    let tls = tls_config().map_err(|e| permanent(channel, format!("TLS setup failed: {e}")))?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("certkeeper/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            permanent(
                channel,
                format!("cannot build the HTTP client: {}", e.without_url()),
            )
        })
}

fn tls_config() -> Result<rustls::ClientConfig, String> {
    use std::sync::Arc;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let verifier =
        rustls_platform_verifier::Verifier::new(provider.clone()).map_err(|e| e.to_string())?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// Send and read the answer (status, Retry-After, body up to a limit). Connection
/// failures and timeouts are transient.
async fn send(
    channel: &'static str,
    request: reqwest::RequestBuilder,
) -> Result<Answer, ChannelError> {
    let transient = |message: String| ChannelError::Transient {
        channel,
        message,
        retry_after: None,
    };
    let resp = request.send().await.map_err(|e| {
        let timeout = e.is_timeout();
        let e = e.without_url();
        if timeout {
            transient(format!("no answer within {} s", TIMEOUT.as_secs()))
        } else if e.is_builder() {
            permanent(channel, format!("cannot build the request: {}", chain(&e)))
        } else {
            transient(format!("cannot reach the endpoint: {}", chain(&e)))
        }
    })?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, OffsetDateTime::now_utc()));
    // Read at most MAX_BODY bytes of the answer: only a short quote is ever used.
    let mut resp = resp;
    let mut buf = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                buf.extend_from_slice(&c[..c.len().min(MAX_BODY - buf.len())]);
                if buf.len() >= MAX_BODY {
                    break;
                }
            }
            Ok(None) => break,
            Err(_) if !status.is_success() => break,
            Err(e) => {
                return Err(transient(format!(
                    "the answer broke off: {}",
                    chain(&e.without_url())
                )));
            }
        }
    }
    let body = String::from_utf8_lossy(&buf).into_owned();
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// The error for a non-success answer: 429 and 5xx transient, 3xx and other 4xx
/// permanent.
fn status_error(channel: &'static str, a: &Answer, detail: String) -> ChannelError {
    let code = a.status.as_u16();
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    match code {
        429 | 500..=599 => ChannelError::Transient {
            channel,
            message: match a.retry_after {
                Some(d) => format!("answered {code}{detail}; retry after {} s", d.as_secs()),
                None => format!("answered {code}{detail}"),
            },
            retry_after: a.retry_after,
        },
        300..=399 => permanent(
            channel,
            format!("answered {code} (a redirect); redirects are not followed"),
        ),
        _ => permanent(channel, format!("answered {code}{detail}")),
    }
}

/// A short, single-line quote of an answer body.
fn quote(body: &str) -> String {
    let one: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let one = one.trim();
    if one.chars().count() > MAX_QUOTE {
        format!("{}…", one.chars().take(MAX_QUOTE).collect::<String>())
    } else {
        one.to_string()
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn the_pagerduty_body_follows_the_contract() {
        let ev = PdEvent {
            action: PdAction::Trigger,
            dedup_key: "cm1-0123".into(),
            summary: "é".repeat(1500),
            source: "192.0.2.10:443".into(),
            severity: "error".into(),
            timestamp: datetime!(2026-11-24 06:55:00 UTC),
            class: "cert-expiry".into(),
            custom_details: serde_json::json!({"days": 7}),
            links: vec![("https://ck.example/c/1".into(), "certificate".into())],
        };
        let b = pagerduty_body("k".repeat(32).as_str(), &ev).unwrap();
        assert_eq!(b["event_action"], "trigger");
        assert_eq!(b["client"], "certkeeper");
        assert_eq!(b["payload"]["timestamp"], "2026-11-24T06:55:00Z");
        assert_eq!(b["payload"]["component"], "tls");
        assert_eq!(b["payload"]["group"], "certkeeper");
        assert_eq!(
            b["payload"]["summary"].as_str().unwrap().chars().count(),
            1024
        );
        assert_eq!(b["links"][0]["text"], "certificate");
        let resolve = PdEvent {
            action: PdAction::Resolve,
            ..ev.clone()
        };
        let b = pagerduty_body("k", &resolve).unwrap();
        assert!(b.get("payload").is_none());
        let long = PdEvent {
            dedup_key: "x".repeat(256),
            ..ev
        };
        assert!(!pagerduty_body("k", &long).unwrap_err().is_transient());
    }

    #[test]
    fn debug_and_url_errors_hide_secrets() {
        let w = WebhookConfig {
            url: "https://hooks.example.com/in/TOPSECRET?token=SECRET2".into(),
            secret: "hmac-secret".into(),
        };
        let d = format!("{w:?}");
        assert!(d.contains("https://hooks.example.com/***"), "{d}");
        assert!(!d.contains("SECRET") && !d.contains("hmac-secret"), "{d}");
        let e = checked_url(GENERIC, "ftp://x/SECRET").unwrap_err();
        assert!(!e.to_string().contains("SECRET"), "{e}");
        let e = checked_url(GENERIC, "not a url SECRET").unwrap_err();
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }
}
