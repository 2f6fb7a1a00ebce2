//! Expiry notifications, scheduled reports and tickets, wired to the store and the
//! outside. A run (scheduled, or `POST /api/v1/notifications/run`) evaluates every
//! policy over the certificates expiring within its horizon (paged; memory does not
//! grow with the inventory), claims each message once in the database and queues
//! one delivery per channel and recipient, and queues ticket work per key. Workers
//! claim deliveries and ticket work with leases, so a restart or a second replica
//! neither loses nor doubles anything; failures are retried with backoff and every
//! attempt is logged.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration as StdDuration;

use axum::Json;
use axum::extract::{Path, Query, State};
use certkeeper_connect::notify::{ChannelError, email, webhook};
use certkeeper_connect::syslog;
use certkeeper_connect::ticketing::{self, Connector, NewTicket, Priority, TicketError};
use certkeeper_core::notify::{
    self as rules, CertView, Channel, DigestItem, ExpiryPolicy, LeftOut, Scope, Stage,
};
use certkeeper_core::schedule::{Schedule, Zone};
use certkeeper_core::tickets::{self, Action, NormStatus, Run};
use certkeeper_store::{
    DeliveryOutcome, DeliveryRow, NewDelivery, TicketRecord, TicketWork, WorkOutcome,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::auth::Caller;
use crate::{ApiError, AppState};

/// A scheduled expiry report: every certificate expiring within `within_days`, on
/// its own schedule, to its recipients.
#[derive(Debug, Clone)]
pub struct ReportPolicy {
    pub name: String,
    pub within_days: u32,
    pub schedule: Schedule,
    /// The wall clock the schedule's times are read on.
    pub zone: Zone,
    pub scope: Scope,
    pub channels: Vec<Channel>,
    pub recipients: Vec<String>,
    /// Open and follow expiry tickets for what it reports, as the expiry policies do.
    pub tickets: bool,
}

/// Syslog destination.
#[derive(Debug, Clone)]
pub struct SyslogSettings {
    pub address: SocketAddr,
    pub transport: syslog::Transport,
    pub facility: u8,
}

/// E-mail: the relay and the default recipients.
#[derive(Clone)]
pub struct EmailSettings {
    pub smtp: email::SmtpConfig,
    pub to: Vec<String>,
}

/// One ticketing system and what it is used for.
#[derive(Debug, Clone)]
pub struct TicketSystem {
    pub connector: Connector,
    pub expiry: bool,
    pub vulnerability: bool,
    /// Resolve an open expiry ticket once its certificate is renewed (a note is
    /// always added).
    pub resolve_on_renewal: bool,
    /// Where the system refuses a reopen, create a new ticket citing the old one.
    pub new_when_reopen_refused: bool,
}

/// Everything notifications and tickets need.
#[derive(Clone, Default)]
pub struct NotifySettings {
    /// Empty: the default policy (30, 14, 7, 1 days, daily 09:00 UTC, every channel configured).
    pub policies: Vec<ExpiryPolicy>,
    pub reports: Vec<ReportPolicy>,
    pub email: Option<EmailSettings>,
    pub syslog: Option<SyslogSettings>,
    pub webhook: Option<webhook::WebhookConfig>,
    pub slack: Option<webhook::SlackConfig>,
    pub pagerduty: Option<webhook::PagerDutyConfig>,
    pub ticketing: Vec<TicketSystem>,
    /// Run the schedules and the workers in the background (tests drive them).
    pub background: bool,
    /// Attempts before a delivery or a piece of ticket work is given up.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt up to an hour.
    pub retry_base: StdDuration,
    /// The host name syslog messages carry.
    pub hostname: String,
}

impl std::fmt::Debug for NotifySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifySettings")
            .field(
                "policies",
                &self.policies.iter().map(|p| &p.name).collect::<Vec<_>>(),
            )
            .field(
                "reports",
                &self.reports.iter().map(|p| &p.name).collect::<Vec<_>>(),
            )
            .field("channels", &self.configured_channels())
            .field(
                "ticketing",
                &self
                    .ticketing
                    .iter()
                    .map(|t| t.connector.system())
                    .collect::<Vec<_>>(),
            )
            .field("background", &self.background)
            .finish()
    }
}

impl NotifySettings {
    pub fn new() -> Self {
        NotifySettings {
            background: true,
            max_attempts: 8,
            retry_base: StdDuration::from_secs(60),
            hostname: "certkeeper".into(),
            ..Default::default()
        }
    }

    /// The channels that have a configuration.
    pub fn configured_channels(&self) -> Vec<Channel> {
        let mut v = Vec::new();
        if self.email.is_some() {
            v.push(Channel::Email);
        }
        if self.syslog.is_some() {
            v.push(Channel::Syslog);
        }
        if self.webhook.is_some() {
            v.push(Channel::Webhook);
        }
        if self.slack.is_some() {
            v.push(Channel::Slack);
        }
        if self.pagerduty.is_some() {
            v.push(Channel::PagerDuty);
        }
        v
    }

    /// The policies in force.
    pub fn effective_policies(&self) -> Vec<ExpiryPolicy> {
        if self.policies.is_empty() {
            vec![ExpiryPolicy::default_policy(self.configured_channels())]
        } else {
            self.policies.clone()
        }
    }

    fn system(&self, name: &str) -> Option<&TicketSystem> {
        self.ticketing.iter().find(|t| t.connector.system() == name)
    }
}

fn external_url(state: &AppState) -> String {
    state
        .config
        .external_url
        .clone()
        .unwrap_or_else(|| "https://127.0.0.1:8443".into())
}

/// What a delivery carries, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payload {
    /// `expiry`, `report`, `renewed` or `test`.
    kind: String,
    policy: String,
    #[serde(with = "time::serde::rfc3339")]
    period: OffsetDateTime,
    items: Vec<DigestItem>,
}

/// Ticket work, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum TicketOp {
    Expiry {
        key_text: String,
        subject: String,
        body: String,
        highest: bool,
        ip: IpAddr,
        serial: String,
        sha256: String,
    },
    Vulnerability {
        key_text: String,
        subject: String,
        body: String,
        ip: IpAddr,
        serial: String,
        domain: String,
        sha256: Option<String>,
    },
    Renewed {
        note: String,
        sha256: String,
    },
}

/// What one run did, per policy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    pub policies: Vec<PolicyRun>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyRun {
    pub name: String,
    pub kind: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub period: OffsetDateTime,
    /// Certificates the policy notifies about now.
    pub due: usize,
    /// Messages claimed by this run (the rest went out earlier in the period).
    pub new_messages: usize,
    pub deliveries_queued: usize,
    pub ticket_work_queued: usize,
    pub renewed_followed_up: usize,
}

const PAGE: i64 = 1000;

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Run every expiry policy and scheduled report at `now`: claim new messages, queue
/// deliveries and ticket work. Safe to run any number of times and on every
/// replica: a message goes out once per its key.
pub async fn run_at(state: &AppState, now: OffsetDateTime) -> Result<RunSummary, ApiError> {
    let settings = &state.config.notify;
    let mut summary = RunSummary::default();
    for p in settings.effective_policies() {
        summary.policies.push(run_policy(state, &p, now).await?);
    }
    for r in &settings.reports {
        summary.policies.push(run_report(state, r, now).await?);
    }
    Ok(summary)
}

impl ReportPolicy {
    /// A report is a policy with one threshold and no escalation whose messages are
    /// keyed per period (everything within the window, every period).
    pub fn as_policy(&self) -> ExpiryPolicy {
        ExpiryPolicy {
            name: self.name.clone(),
            within_days: vec![self.within_days],
            schedule: self.schedule.clone(),
            zone: self.zone.clone(),
            scope: self.scope.clone(),
            channels: self.channels.clone(),
            recipients: self.recipients.clone(),
            escalation_days: 0,
            escalation_recipients: Vec::new(),
            tickets: self.tickets,
        }
    }
}

/// The key of a message of `kind` (`expiry` or `report`) for a certificate at a stage.
fn key_of(kind: &str, p: &ExpiryPolicy, sha: &str, stage: Stage, period: OffsetDateTime) -> String {
    if kind == "report" {
        format!("report|{}|{sha}|{}", p.name, period.unix_timestamp())
    } else {
        rules::message_key(&p.name, sha, stage, period)
    }
}

/// One expiry policy.
async fn run_policy(
    state: &AppState,
    p: &ExpiryPolicy,
    now: OffsetDateTime,
) -> Result<PolicyRun, ApiError> {
    run_kind(state, "expiry", p, now).await
}

/// One scheduled report: everything expiring within its window, once per period.
async fn run_report(
    state: &AppState,
    r: &ReportPolicy,
    now: OffsetDateTime,
) -> Result<PolicyRun, ApiError> {
    run_kind(state, "report", &r.as_policy(), now).await
}

async fn run_kind(
    state: &AppState,
    kind: &'static str,
    p: &ExpiryPolicy,
    now: OffsetDateTime,
) -> Result<PolicyRun, ApiError> {
    let period = rules::period(&p.schedule, &p.zone, now);
    let cutoff = now + Duration::days(i64::from(p.horizon()));
    let mut out = PolicyRun {
        name: p.name.clone(),
        kind,
        period,
        due: 0,
        new_messages: 0,
        deliveries_queued: 0,
        ticket_work_queued: 0,
        renewed_followed_up: 0,
    };
    // Keys and items of what is due: bounded by the certificates within the horizon.
    let mut due: Vec<(String, DigestItem, CertView)> = Vec::new();
    let mut after = None;
    loop {
        let page = state
            .store
            .notify_candidates(cutoff, after.as_ref(), PAGE)
            .await?;
        let full = page.items.len() as i64 == PAGE;
        for c in page.items {
            match rules::evaluate(p, &c, now) {
                Ok(d) => {
                    let key = key_of(kind, p, &c.sha256, d.stage, period);
                    due.push((key, DigestItem::from_view(&c, &d), c));
                }
                Err(LeftOut::Renewed { by }) if kind == "expiry" => {
                    out.renewed_followed_up += follow_up_renewal(state, &c, &by, now).await?;
                }
                Err(_) => {}
            }
        }
        match page.next {
            Some(n) if full => after = Some(n),
            _ => break,
        }
    }
    out.due = due.len();
    let settings = &state.config.notify;
    let everything: Vec<usize> = (0..due.len()).collect();
    let escalated: Vec<usize> = due
        .iter()
        .enumerate()
        .filter(|(_, (_, i, _))| i.escalated)
        .map(|(n, _)| n)
        .collect();
    for ch in &p.channels {
        let mut targets: Vec<(String, &[usize])> = recipients(settings, *ch, &p.recipients)
            .into_iter()
            .map(|r| (r, everything.as_slice()))
            .collect();
        // Escalation recipients hear about what escalated, by e-mail.
        if *ch == Channel::Email {
            targets.extend(
                p.escalation_recipients
                    .iter()
                    .map(|r| (r.clone(), escalated.as_slice())),
            );
        }
        for (recipient, picked) in targets {
            let (n, queued) = enqueue(
                state, kind, &p.name, *ch, &recipient, period, &due, picked, now,
            )
            .await?;
            out.new_messages += n;
            out.deliveries_queued += usize::from(queued);
        }
    }
    if p.tickets {
        let mut work = Vec::new();
        for (_, item, c) in &due {
            work.extend(expiry_ticket_work(state, item, c));
        }
        let refs: Vec<(&str, &str, &str)> = work
            .iter()
            .map(|(s, k, a)| (*s, k.as_str(), a.as_str()))
            .collect();
        state.store.queue_ticket_work_many(&refs, now).await?;
        out.ticket_work_queued = work.len();
    }
    Ok(out)
}

/// Who a channel's messages go to: e-mail addresses, or the channel itself.
fn recipients(s: &NotifySettings, ch: Channel, policy_recipients: &[String]) -> Vec<String> {
    match ch {
        Channel::Email => {
            if !policy_recipients.is_empty() {
                policy_recipients.to_vec()
            } else {
                s.email.as_ref().map(|e| e.to.clone()).unwrap_or_default()
            }
        }
        other => {
            let configured = match other {
                Channel::Syslog => s.syslog.is_some(),
                Channel::Webhook => s.webhook.is_some(),
                Channel::Slack => s.slack.is_some(),
                Channel::PagerDuty => s.pagerduty.is_some(),
                Channel::Email => unreachable!(),
            };
            if configured {
                vec![other.as_str().to_string()]
            } else {
                Vec::new()
            }
        }
    }
}

/// Claim the picked messages for one recipient and queue the delivery carrying the
/// new ones. Returns (new messages, whether a delivery was queued).
#[allow(clippy::too_many_arguments)]
async fn enqueue(
    state: &AppState,
    kind: &str,
    policy: &str,
    ch: Channel,
    recipient: &str,
    period: OffsetDateTime,
    due: &[(String, DigestItem, CertView)],
    picked: &[usize],
    now: OffsetDateTime,
) -> Result<(usize, bool), ApiError> {
    if picked.is_empty() {
        return Ok((0, false));
    }
    let keys: Vec<String> = picked.iter().map(|i| due[*i].0.clone()).collect();
    let d = NewDelivery {
        id: uuid(),
        policy: policy.to_string(),
        channel: ch.as_str().to_string(),
        recipient: recipient.to_string(),
    };
    let claimed = state
        .store
        .enqueue_delivery(&d, &keys, now, |idx| {
            let items = idx.iter().map(|i| due[picked[*i]].1.clone()).collect();
            serde_json::to_string(&Payload {
                kind: kind.to_string(),
                policy: policy.to_string(),
                period,
                items,
            })
            .expect("payload serialises")
        })
        .await?;
    Ok((claimed.len(), !claimed.is_empty()))
}

/// Expiry ticket work for each address serving the certificate, in every system that
/// takes expiry tickets: (system, key, action). A certificate served nowhere has no
/// ticket key.
fn expiry_ticket_work(
    state: &AppState,
    item: &DigestItem,
    c: &CertView,
) -> Vec<(&'static str, String, String)> {
    let settings = &state.config.notify;
    let mut out = Vec::new();
    let (subject, body) = tickets::expiry_ticket(&item.name, c.not_after, &external_url(state));
    for ip in &item.ips {
        let key_text = tickets::expiry_key_text(&c.serial, *ip);
        let key = ticketing::token(&key_text);
        let op = TicketOp::Expiry {
            key_text,
            subject: subject.clone(),
            body: body.clone(),
            highest: item.escalated,
            ip: *ip,
            serial: c.serial.clone(),
            sha256: c.sha256.clone(),
        };
        let op = serde_json::to_string(&op).expect("serialises");
        for sys in settings.ticketing.iter().filter(|t| t.expiry) {
            out.push((sys.connector.system(), key.clone(), op.clone()));
        }
    }
    out
}

/// A renewed certificate: its open expiry tickets get a note (and are resolved where
/// asked), once; PagerDuty alerts are resolved.
async fn follow_up_renewal(
    state: &AppState,
    c: &CertView,
    by: &str,
    now: OffsetDateTime,
) -> Result<usize, ApiError> {
    let mut n = 0;
    let records = state.store.tickets_of_certificate(&c.sha256).await?;
    let replacement = state.store.notify_view(by).await.ok();
    let note = match &replacement {
        Some(r) => format!(
            "Renewed: certificate {} (serial {}) replaced by {} (serial {}, expires {}). Reported by certkeeper running at {}",
            c.sha256,
            c.serial,
            r.sha256,
            r.serial,
            tickets::ticket_date(r.not_after),
            external_url(state)
        ),
        None => format!(
            "Renewed: certificate {} (serial {}) replaced by {by}. Reported by certkeeper running at {}",
            c.sha256,
            c.serial,
            external_url(state)
        ),
    };
    for rec in records {
        if rec.last_action == "renewed" || rec.status != "active" {
            continue;
        }
        let op = serde_json::to_string(&TicketOp::Renewed {
            note: note.clone(),
            sha256: c.sha256.clone(),
        })
        .expect("serialises");
        state
            .store
            .queue_ticket_work(&rec.system, &rec.key, &op, now)
            .await?;
        n += 1;
    }
    // PagerDuty: resolve the alert, once.
    if state.config.notify.pagerduty.is_some() {
        let item = DigestItem {
            name: c.display_name(),
            sans: c.sans.clone(),
            serial: c.serial.clone(),
            sha256: c.sha256.clone(),
            issuer: c.issuer.clone(),
            not_after: c.not_after,
            days_left: certkeeper_core::expiry::days_left(c.not_after, now),
            stage: Stage::Expired,
            escalated: false,
            endpoints: Vec::new(),
            ips: Vec::new(),
        };
        let due = vec![(format!("renewed|{}", c.sha256), item, c.clone())];
        enqueue(
            state,
            "renewed",
            "renewal",
            Channel::PagerDuty,
            "pagerduty",
            now,
            &due,
            &[0],
            now,
        )
        .await?;
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------
// Delivery

fn retry_at(
    settings: &NotifySettings,
    attempts: u32,
    hint: Option<StdDuration>,
    now: OffsetDateTime,
) -> OffsetDateTime {
    let step = settings
        .retry_base
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(10))
        .min(StdDuration::from_secs(3600));
    let wait = hint.map(|h| h.max(step.min(h))).unwrap_or(step);
    now + Duration::try_from(wait).unwrap_or(Duration::hours(1))
}

/// Deliver what is due: claim, send, record. Returns (sent, retried, failed).
pub async fn deliver_due(
    state: &AppState,
    now: OffsetDateTime,
) -> Result<(usize, usize, usize), ApiError> {
    let lease = uuid();
    let mut counts = (0, 0, 0);
    loop {
        let batch = state.store.claim_deliveries(&lease, now, 300, 20).await?;
        if batch.is_empty() {
            break;
        }
        for d in batch {
            let outcome = match send_delivery(state, &d, now).await {
                Ok(()) => {
                    counts.0 += 1;
                    DeliveryOutcome::Sent
                }
                Err(e) if e.is_transient() && d.attempts < state.config.notify.max_attempts => {
                    counts.1 += 1;
                    let hint = match &e {
                        ChannelError::Transient { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    DeliveryOutcome::Retry {
                        at: retry_at(&state.config.notify, d.attempts, hint, now),
                        error: e.to_string(),
                    }
                }
                Err(e) => {
                    counts.2 += 1;
                    DeliveryOutcome::Failed {
                        error: e.to_string(),
                    }
                }
            };
            if let DeliveryOutcome::Failed { error } | DeliveryOutcome::Retry { error, .. } =
                &outcome
            {
                tracing::warn!(delivery = %d.id, channel = %d.channel, error = %error, "delivery failed");
            }
            state
                .store
                .finish_delivery(&d.id, &lease, &outcome, now)
                .await?;
        }
    }
    Ok(counts)
}

fn not_configured(ch: &'static str) -> ChannelError {
    ChannelError::Permanent {
        channel: ch,
        message: "the channel is not configured".into(),
    }
}

/// The e-mail thread a recipient's digests of one policy belong to.
fn thread_root(policy: &str, recipient: &str) -> String {
    format!(
        "{}@certkeeper.local",
        ticketing::token(&format!("digest|{policy}|{recipient}"))
    )
}

async fn send_delivery(
    state: &AppState,
    d: &DeliveryRow,
    now: OffsetDateTime,
) -> Result<(), ChannelError> {
    let settings = &state.config.notify;
    let p: Payload = serde_json::from_str(&d.payload).map_err(|e| ChannelError::Permanent {
        channel: "store",
        message: format!("the stored delivery does not decode: {e}"),
    })?;
    let url = external_url(state);
    match d.channel.as_str() {
        "email" => {
            let e = settings
                .email
                .as_ref()
                .ok_or_else(|| not_configured("email"))?;
            let root = thread_root(&p.policy, &d.recipient);
            let (subject, text) = match p.kind.as_str() {
                "test" => (
                    "certkeeper: test message".to_string(),
                    format!("This is a test message from certkeeper running at {url}.\n"),
                ),
                "report" => (
                    format!(
                        "certkeeper report {}: {} certificates expiring",
                        p.policy,
                        p.items.len()
                    ),
                    rules::digest_text(&p.items, &url),
                ),
                _ => (
                    rules::digest_subject(&p.items),
                    rules::digest_text(&p.items, &url),
                ),
            };
            let mail = email::Email {
                to: vec![d.recipient.clone()],
                subject,
                text,
                html: (p.kind != "test").then(|| rules::digest_html(&p.items, &url)),
                attachment: (p.kind != "test").then(|| email::Attachment {
                    filename: "certificates.csv".into(),
                    content_type: "text/csv".into(),
                    bytes: rules::digest_csv(&p.items).into_bytes(),
                }),
                message_id: format!("{}.{}", d.id, root),
                in_reply_to: Some(root),
            };
            email::send(&e.smtp, &mail).await
        }
        "syslog" => {
            let s = settings
                .syslog
                .as_ref()
                .ok_or_else(|| not_configured("syslog"))?;
            let lines = syslog_lines(settings, s, &p, now);
            syslog::send(s.address, &s.transport, &lines, StdDuration::from_secs(10))
                .await
                .map_err(|e| ChannelError::Transient {
                    channel: "syslog",
                    message: e.to_string(),
                    retry_after: None,
                })
        }
        "webhook" => {
            let w = settings
                .webhook
                .as_ref()
                .ok_or_else(|| not_configured("webhook"))?;
            for (n, i) in p.items.iter().enumerate() {
                let ev = webhook_event(&p, i, now);
                webhook::post_generic(w, &ev, &format!("{}-{n}", d.id), now).await?;
            }
            if p.kind == "test" {
                let ev = webhook::WebhookEvent {
                    event: "test".into(),
                    key: "test".into(),
                    subject: "certkeeper: test message".into(),
                    severity: "info".into(),
                    occurred_at: now,
                    data: json!({"external_url": url}),
                };
                webhook::post_generic(w, &ev, &d.id, now).await?;
            }
            Ok(())
        }
        "slack" => {
            let s = settings
                .slack
                .as_ref()
                .ok_or_else(|| not_configured("slack"))?;
            let text = if p.kind == "test" {
                format!("certkeeper: test message from {url}")
            } else {
                format!(
                    "{}\n{}",
                    rules::digest_subject(&p.items),
                    rules::digest_text_limited(&p.items, &url, 20)
                )
            };
            webhook::post_slack(s, &text, None).await
        }
        "pagerduty" => {
            let pd = settings
                .pagerduty
                .as_ref()
                .ok_or_else(|| not_configured("pagerduty"))?;
            if p.kind == "test" {
                let ev = webhook::PdEvent {
                    action: webhook::PdAction::Trigger,
                    dedup_key: format!("certkeeper-test-{}", d.id),
                    summary: "certkeeper: test event".into(),
                    source: url.clone(),
                    severity: "info".into(),
                    timestamp: now,
                    class: "test".into(),
                    custom_details: json!({}),
                    links: Vec::new(),
                };
                return webhook::post_pagerduty(pd, &ev).await;
            }
            for i in &p.items {
                let ev = webhook::PdEvent {
                    action: if p.kind == "renewed" {
                        webhook::PdAction::Resolve
                    } else {
                        webhook::PdAction::Trigger
                    },
                    dedup_key: ticketing::token(&format!("expiry|{}", i.sha256)),
                    summary: format!("SSL Certificate {} {}", i.name, i.when()),
                    source: i
                        .endpoints
                        .first()
                        .cloned()
                        .unwrap_or_else(|| i.name.clone()),
                    severity: pd_severity(i).into(),
                    timestamp: now,
                    class: "cert-expiry".into(),
                    custom_details: serde_json::to_value(i).unwrap_or_default(),
                    links: vec![(
                        format!("{url}/api/v1/certificates/{}", i.sha256),
                        "certificate".into(),
                    )],
                };
                webhook::post_pagerduty(pd, &ev).await?;
            }
            Ok(())
        }
        other => Err(ChannelError::Permanent {
            channel: "store",
            message: format!("unknown channel {other}"),
        }),
    }
}

fn pd_severity(i: &DigestItem) -> &'static str {
    match (i.stage, i.days_left) {
        (Stage::Expired, _) => "critical",
        (_, d) if d <= 7 => "error",
        _ => "warning",
    }
}

fn webhook_event(p: &Payload, i: &DigestItem, now: OffsetDateTime) -> webhook::WebhookEvent {
    let key_text = match i.ips.first() {
        Some(ip) => tickets::expiry_key_text(&i.serial, *ip),
        None => format!("expiry|{}", i.sha256),
    };
    webhook::WebhookEvent {
        event: match (p.kind.as_str(), i.stage) {
            ("renewed", _) => "cert.renewed".into(),
            (_, Stage::Expired) => "cert.expired".into(),
            _ => "cert.expiring".into(),
        },
        key: ticketing::token(&key_text),
        subject: format!("SSL Certificate {} {}", i.name, i.when()),
        severity: match i.stage {
            Stage::Expired => "critical".into(),
            _ if i.escalated => "high".into(),
            _ => "medium".into(),
        },
        occurred_at: now,
        data: serde_json::to_value(i).unwrap_or_default(),
    }
}

fn syslog_lines(
    settings: &NotifySettings,
    s: &SyslogSettings,
    p: &Payload,
    now: OffsetDateTime,
) -> Vec<String> {
    let pid = std::process::id().to_string();
    if p.kind == "test" {
        return vec![syslog::format(&syslog::Record {
            facility: s.facility,
            severity: syslog::Severity::Notice,
            timestamp: now,
            hostname: &settings.hostname,
            app_name: "certkeeper",
            proc_id: Some(&pid),
            kind: syslog::Kind::CertExpiry,
            params: &[("key", "test".into())],
            msg: "certkeeper: test message",
        })];
    }
    p.items
        .iter()
        .map(|i| {
            let ip = i.ips.first().map(|ip| ip.to_string()).unwrap_or_default();
            let key_text = match i.ips.first() {
                Some(ip) => tickets::expiry_key_text(&i.serial, *ip),
                None => format!("expiry|{}", i.sha256),
            };
            let params = [
                ("key", ticketing::token(&key_text)),
                ("serial", i.serial.clone()),
                ("ip", ip),
                ("days", i.days_left.to_string()),
                ("sha256", i.sha256.clone()),
            ];
            let severity =
                syslog::expiry_severity(i.days_left).unwrap_or(syslog::Severity::Informational);
            let severity = if i.stage == Stage::Expired {
                syslog::Severity::Critical
            } else {
                severity
            };
            let msg = format!(
                "{} {} (policy {})",
                i.name,
                match i.stage {
                    Stage::Expired => format!("expired {}", i.not_after.date()),
                    _ => format!("expires {}", i.not_after.date()),
                },
                p.policy
            );
            syslog::format(&syslog::Record {
                facility: s.facility,
                severity,
                timestamp: now,
                hostname: &settings.hostname,
                app_name: "certkeeper",
                proc_id: Some(&pid),
                kind: syslog::Kind::CertExpiry,
                params: &params,
                msg: &msg,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Tickets

/// Work the due ticket actions: claim per key, ask the system, decide, act, record.
/// Returns (done, retried, failed).
pub async fn work_tickets(
    state: &AppState,
    now: OffsetDateTime,
) -> Result<(usize, usize, usize), ApiError> {
    let lease = uuid();
    let mut counts = (0, 0, 0);
    loop {
        let batch = state.store.claim_ticket_work(&lease, now, 300, 16).await?;
        if batch.is_empty() {
            break;
        }
        // Different keys in parallel; one key is one row, never worked twice at once.
        let results =
            futures_util::future::join_all(batch.iter().map(|w| do_work(state, w, now))).await;
        for (w, r) in batch.iter().zip(results) {
            let outcome = match r {
                Ok(()) => {
                    counts.0 += 1;
                    WorkOutcome::Done
                }
                Err(e) if e.is_transient() && w.attempts < state.config.notify.max_attempts => {
                    counts.1 += 1;
                    WorkOutcome::Retry {
                        at: retry_at(&state.config.notify, w.attempts, e.retry_after(), now),
                        error: e.to_string(),
                    }
                }
                Err(e) => {
                    counts.2 += 1;
                    WorkOutcome::Failed {
                        error: e.to_string(),
                    }
                }
            };
            if let WorkOutcome::Retry { error, .. } | WorkOutcome::Failed { error } = &outcome {
                tracing::warn!(system = %w.system, key = %w.key, error = %error, "ticket work failed");
            }
            match state.store.finish_ticket_work(w, &outcome, now).await {
                Ok(()) | Err(certkeeper_store::StoreError::LeaseLost) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(counts)
}

fn norm(s: NormStatus) -> &'static str {
    match s {
        NormStatus::Active => "active",
        NormStatus::Resolved => "resolved",
        NormStatus::Closed => "closed",
        NormStatus::Canceled => "canceled",
    }
}

async fn do_work(state: &AppState, w: &TicketWork, now: OffsetDateTime) -> Result<(), TicketError> {
    let Some(sys) = state.config.notify.system(&w.system) else {
        return Err(TicketError::Config {
            system: "ticketing",
            message: format!("{} is no longer configured", w.system),
        });
    };
    let op: TicketOp = serde_json::from_str(&w.action).map_err(|e| TicketError::Protocol {
        system: "store",
        message: format!("stored ticket work does not decode: {e}"),
    })?;
    let conn = &sys.connector;
    let found = conn.find_by_key(&w.key).await?;
    let cores: Vec<_> = found.iter().map(|t| t.to_core()).collect();
    let prior = state.store.ticket(&w.system, &w.key).await.ok().flatten();
    let record =
        |t: &ticketing::TicketRef, action: &str, priority: &str, base: &RecordBase| TicketRecord {
            system: w.system.clone(),
            key: w.key.clone(),
            kind: base.kind.into(),
            key_text: base.key_text.clone(),
            ticket_id: t.id.clone(),
            number: t.display_no.clone(),
            status: norm(t.status).into(),
            raw_status: t.raw_status.clone(),
            priority: priority.into(),
            ip: base.ip.to_string(),
            serial: base.serial.clone(),
            domain: base.domain.clone(),
            sha256: base.sha256.clone(),
            last_action: action.into(),
            created_at: prior.as_ref().map(|p| p.created_at).unwrap_or(now),
            updated_at: now,
        };
    match op {
        TicketOp::Expiry {
            key_text,
            subject,
            body,
            highest,
            ip,
            serial,
            sha256,
        } => {
            let base = RecordBase {
                kind: "expiry",
                key_text,
                ip,
                serial,
                domain: None,
                sha256: Some(sha256),
            };
            let priority = if highest {
                Priority::Highest
            } else {
                Priority::High
            };
            let pname = if highest { "highest" } else { "high" };
            match tickets::decide(&cores, Run::Expiry) {
                Action::Create => {
                    let t = conn
                        .create_deduped(&NewTicket {
                            subject: &subject,
                            body: &body,
                            priority,
                            key: &w.key,
                        })
                        .await?;
                    state
                        .store
                        .upsert_ticket(&record(&t, "created", pname, &base))
                        .await
                        .map_err(store_err)?;
                }
                Action::Nothing => {
                    let t = pick(&found);
                    let was = prior
                        .as_ref()
                        .map(|p| p.priority.as_str())
                        .unwrap_or("high");
                    let action = if highest && was != "highest" {
                        conn.set_priority(&t.id, Priority::Highest).await?;
                        conn.add_note(
                            &t.id,
                            "Escalated by certkeeper: the certificate expires within the escalation window and is still not renewed.",
                        )
                        .await?;
                        "escalated"
                    } else {
                        "unchanged"
                    };
                    let p = if highest || was == "highest" {
                        "highest"
                    } else {
                        "high"
                    };
                    state
                        .store
                        .upsert_ticket(&record(t, action, p, &base))
                        .await
                        .map_err(store_err)?;
                }
                Action::Reopen { id, display_no } => {
                    let note = format!(
                        "Reopened by certkeeper: the certificate is still not renewed.\n{body}"
                    );
                    match conn.reopen(&id, &note).await {
                        Ok(()) => {
                            if highest {
                                conn.set_priority(&id, Priority::Highest).await?;
                            }
                            let mut t = found
                                .iter()
                                .find(|t| t.id == id)
                                .cloned()
                                .expect("chosen from found");
                            t.status = NormStatus::Active;
                            state
                                .store
                                .upsert_ticket(&record(&t, "reopened", pname, &base))
                                .await
                                .map_err(store_err)?;
                        }
                        Err(TicketError::NotAllowed { .. }) if sys.new_when_reopen_refused => {
                            let cited = tickets::cite_old(&body, &display_no);
                            let t = conn
                                .create_deduped(&NewTicket {
                                    subject: &subject,
                                    body: &cited,
                                    priority,
                                    key: &w.key,
                                })
                                .await?;
                            state
                                .store
                                .upsert_ticket(&record(
                                    &t,
                                    "created_after_refused_reopen",
                                    pname,
                                    &base,
                                ))
                                .await
                                .map_err(store_err)?;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Action::Note { .. } => unreachable!("expiry runs never note"),
            }
        }
        TicketOp::Vulnerability {
            key_text,
            subject,
            body,
            ip,
            serial,
            domain,
            sha256,
        } => {
            let base = RecordBase {
                kind: "vulnerability",
                key_text,
                ip,
                serial,
                domain: Some(domain),
                sha256,
            };
            match tickets::decide(
                &cores,
                Run::Vulnerability {
                    still_vulnerable: true,
                },
            ) {
                Action::Create => {
                    let t = conn
                        .create_deduped(&NewTicket {
                            subject: &subject,
                            body: &body,
                            priority: Priority::High,
                            key: &w.key,
                        })
                        .await?;
                    state
                        .store
                        .upsert_ticket(&record(&t, "created", "high", &base))
                        .await
                        .map_err(store_err)?;
                }
                Action::Note { id } => {
                    conn.add_note(&id, &body).await?;
                    let t = found
                        .iter()
                        .find(|t| t.id == id)
                        .expect("chosen from found");
                    state
                        .store
                        .upsert_ticket(&record(t, "noted", "high", &base))
                        .await
                        .map_err(store_err)?;
                }
                Action::Reopen { id, display_no } => {
                    let note = format!("Reopened by certkeeper: still vulnerable.\n{body}");
                    match conn.reopen(&id, &note).await {
                        Ok(()) => {
                            let mut t = found
                                .iter()
                                .find(|t| t.id == id)
                                .cloned()
                                .expect("chosen from found");
                            t.status = NormStatus::Active;
                            state
                                .store
                                .upsert_ticket(&record(&t, "reopened", "high", &base))
                                .await
                                .map_err(store_err)?;
                        }
                        Err(TicketError::NotAllowed { .. }) if sys.new_when_reopen_refused => {
                            let cited = tickets::cite_old(&body, &display_no);
                            let t = conn
                                .create_deduped(&NewTicket {
                                    subject: &subject,
                                    body: &cited,
                                    priority: Priority::High,
                                    key: &w.key,
                                })
                                .await?;
                            state
                                .store
                                .upsert_ticket(&record(
                                    &t,
                                    "created_after_refused_reopen",
                                    "high",
                                    &base,
                                ))
                                .await
                                .map_err(store_err)?;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Action::Nothing => {}
            }
        }
        TicketOp::Renewed { note, sha256 } => {
            let Some(prior) = prior.clone() else {
                return Ok(());
            };
            let base = RecordBase {
                kind: "expiry",
                key_text: prior.key_text.clone(),
                ip: prior.ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
                serial: prior.serial.clone(),
                domain: None,
                sha256: Some(sha256),
            };
            let active = found
                .iter()
                .filter(|t| t.status == NormStatus::Active)
                .min_by_key(|t| t.created);
            match active {
                Some(t) => {
                    conn.add_note(&t.id, &note).await?;
                    let mut t = t.clone();
                    if sys.resolve_on_renewal {
                        conn.resolve(&t.id, &note).await?;
                        t.status = NormStatus::Resolved;
                    }
                    state
                        .store
                        .upsert_ticket(&record(&t, "renewed", &prior.priority, &base))
                        .await
                        .map_err(store_err)?;
                }
                None => {
                    // Closed by someone already: record what is there.
                    if let Some(t) = found.iter().max_by_key(|t| t.created) {
                        state
                            .store
                            .upsert_ticket(&record(t, "renewed", &prior.priority, &base))
                            .await
                            .map_err(store_err)?;
                    }
                }
            }
        }
    }
    Ok(())
}

struct RecordBase {
    kind: &'static str,
    key_text: String,
    ip: IpAddr,
    serial: String,
    domain: Option<String>,
    sha256: Option<String>,
}

/// The ticket `decide` keeps: the oldest active one, else the newest.
fn pick(found: &[ticketing::TicketRef]) -> &ticketing::TicketRef {
    found
        .iter()
        .filter(|t| t.status == NormStatus::Active)
        .min_by_key(|t| t.created)
        .or_else(|| found.iter().max_by_key(|t| t.created))
        .expect("decide saw at least one")
}

fn store_err(e: certkeeper_store::StoreError) -> TicketError {
    TicketError::Unavailable {
        system: "store",
        message: e.to_string(),
        retry_after: None,
    }
}

/// Vulnerability tickets for one scanned endpoint: one per domain (CN and each DNS
/// SAN of the certificate it serves) at its address, in every system that takes
/// them. Nothing is queued when nothing ticket-worthy was found.
pub async fn queue_vulnerability_tickets(
    state: &AppState,
    host: &str,
    ip: IpAddr,
    port: u16,
    findings: &[certkeeper_core::findings::Finding],
    leaf_sha256: Option<&str>,
    scanned_at: OffsetDateTime,
) -> Result<usize, ApiError> {
    let systems: Vec<&TicketSystem> = state
        .config
        .notify
        .ticketing
        .iter()
        .filter(|t| t.vulnerability)
        .collect();
    if systems.is_empty() {
        return Ok(0);
    }
    let mut weak: Vec<String> = Vec::new();
    let mut lines = Vec::new();
    for f in findings {
        for s in &f.suites {
            if !weak.contains(s) {
                weak.push(s.clone());
            }
        }
        if tickets::ticket_finding(f.kind) {
            lines.push(format!("{}: {}", f.title, f.evidence));
        }
    }
    if weak.is_empty() && lines.is_empty() {
        return Ok(0);
    }
    let sha = match leaf_sha256 {
        Some(s) => Some(s.to_string()),
        None => {
            state
                .store
                .endpoint_current_sha(host, &ip.to_string(), port)
                .await?
        }
    };
    let Some(sha) = sha else {
        return Ok(0);
    };
    let Ok(view) = state.store.notify_view(&sha).await else {
        return Ok(0);
    };
    let sig = state
        .store
        .signature_algorithm(&sha)
        .await?
        .unwrap_or_default();
    let cn = view.display_name();
    let mut domains: Vec<String> = Vec::new();
    for n in view.names() {
        let n = n.to_ascii_lowercase();
        if n.parse::<IpAddr>().is_err() && !domains.contains(&n) {
            domains.push(n);
        }
    }
    let mut queued = 0;
    for domain in domains {
        let facts = tickets::VulnFacts {
            domain: domain.clone(),
            common_name: cn.clone(),
            ip,
            weak_ciphers: weak.clone(),
            findings: lines.clone(),
            signature_algorithm: sig.clone(),
            not_after: view.not_after,
            scan_time: scanned_at,
        };
        let (subject, body) = tickets::vuln_ticket(&facts, &external_url(state));
        let key_text = tickets::vuln_key_text(&domain, ip);
        let key = ticketing::token(&key_text);
        let op = serde_json::to_string(&TicketOp::Vulnerability {
            key_text,
            subject,
            body,
            ip,
            serial: view.serial.clone(),
            domain,
            sha256: Some(sha.clone()),
        })
        .expect("serialises");
        for s in &systems {
            state
                .store
                .queue_ticket_work(s.connector.system(), &key, &op, scanned_at)
                .await?;
            queued += 1;
        }
    }
    Ok(queued)
}

// ---------------------------------------------------------------------------------
// Preview

/// What each policy would do at `at`, and why each certificate within its horizon
/// (or the one asked about) is left out.
pub async fn preview(
    state: &AppState,
    at: OffsetDateTime,
    only: Option<&str>,
) -> Result<Value, ApiError> {
    let settings = &state.config.notify;
    let mut policies = Vec::new();
    let mut all: Vec<(ExpiryPolicy, &'static str)> = settings
        .effective_policies()
        .into_iter()
        .map(|p| (p, "expiry"))
        .collect();
    all.extend(settings.reports.iter().map(|r| (r.as_policy(), "report")));
    for (p, kind) in all {
        let period = rules::period(&p.schedule, &p.zone, at);
        let views: Vec<CertView> = match only {
            Some(sha) => vec![state.store.notify_view(sha).await?],
            None => {
                let cutoff = at + Duration::days(i64::from(p.horizon()));
                let mut v = Vec::new();
                let mut after = None;
                loop {
                    let page = state
                        .store
                        .notify_candidates(cutoff, after.as_ref(), PAGE)
                        .await?;
                    v.extend(page.items);
                    match page.next {
                        Some(n) => after = Some(n),
                        None => break,
                    }
                }
                v
            }
        };
        let mut notify = Vec::new();
        let mut left_out = Vec::new();
        let mut keyed = Vec::new();
        for c in &views {
            match rules::evaluate(&p, c, at) {
                Ok(d) => {
                    keyed.push((key_of(kind, &p, &c.sha256, d.stage, period), c, d));
                }
                Err(why) => left_out.push(json!({
                    "sha256": c.sha256,
                    "name": c.display_name(),
                    "not_after": rfc3339(c.not_after),
                    "reason_code": why.code(),
                    "reason": why.to_string(),
                })),
            }
        }
        let keys: Vec<String> = keyed.iter().map(|k| k.0.clone()).collect();
        let sent = state.store.claimed_messages(&keys).await?;
        for (key, c, d) in keyed {
            let mut channels = Vec::new();
            for ch in &p.channels {
                let mut rs = recipients(settings, *ch, &p.recipients);
                if *ch == Channel::Email && d.escalated {
                    rs.extend(p.escalation_recipients.iter().cloned());
                }
                if rs.is_empty() {
                    channels.push(json!({"channel": ch.as_str(), "recipient": null, "status": "not_configured"}));
                }
                for r in rs {
                    channels.push(json!({
                        "channel": ch.as_str(),
                        "recipient": r,
                        "status": if sent.contains_key(&key) { "already_sent" } else { "would_send" },
                        "sent_at": sent.get(&key).map(|t| rfc3339(*t)),
                    }));
                }
            }
            let mut ticket_actions = Vec::new();
            if p.tickets {
                if c.served_at.is_empty() {
                    ticket_actions.push(json!({"system": null, "action": "none", "reason": "not served at any address, so there is no ticket key"}));
                }
                for ip in rules::distinct_ips(&c.served_at) {
                    let key_text = tickets::expiry_key_text(&c.serial, ip);
                    let tk = ticketing::token(&key_text);
                    for s in settings.ticketing.iter().filter(|t| t.expiry) {
                        let rec = state.store.ticket(s.connector.system(), &tk).await?;
                        let (action, reason) = match &rec {
                            None => (
                                "create".to_string(),
                                "no ticket for this certificate at this address".to_string(),
                            ),
                            Some(r) if r.status == "active" => {
                                if d.escalated && r.priority != "highest" {
                                    (
                                        "escalate".into(),
                                        format!(
                                            "ticket {} is open; it goes to the highest priority",
                                            r.number
                                        ),
                                    )
                                } else {
                                    ("nothing".into(), format!("ticket {} is open", r.number))
                                }
                            }
                            Some(r) => (
                                "reopen".into(),
                                format!(
                                    "ticket {} is {} but the certificate is not renewed",
                                    r.number, r.status
                                ),
                            ),
                        };
                        ticket_actions.push(json!({
                            "system": s.connector.system(),
                            "ip": ip.to_string(),
                            "key": tk,
                            "action": action,
                            "reason": reason,
                            "from": "the last known status",
                        }));
                    }
                }
            }
            notify.push(json!({
                "sha256": c.sha256,
                "name": c.display_name(),
                "not_after": rfc3339(c.not_after),
                "days_left": d.days_left,
                "stage": d.stage.to_string(),
                "escalated": d.escalated,
                "channels": channels,
                "tickets": ticket_actions,
            }));
        }
        policies.push(json!({
            "name": p.name,
            "kind": kind,
            "schedule": p.schedule.to_string(),
            "timezone": p.zone.to_string(),
            "period": rfc3339(period),
            "within_days": p.within_days,
            "notify": notify,
            "left_out": left_out,
            "beyond_horizon": format!("certificates expiring after {} are not looked at by this policy", rfc3339(at + Duration::days(i64::from(p.horizon())))),
        }));
    }
    Ok(json!({"at": rfc3339(at), "policies": policies}))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Schedules in the background: each policy's occurrence is claimed once across
/// replicas, then run; deliveries and ticket work are worked every pass.
pub async fn background_pass(state: &AppState, now: OffsetDateTime) {
    let settings = &state.config.notify;
    let grace = Duration::minutes(30);
    let mut due_any = false;
    let schedules: Vec<(String, Schedule, Zone)> = settings
        .effective_policies()
        .into_iter()
        .map(|p| (format!("notify:{}", p.name), p.schedule, p.zone))
        .chain(settings.reports.iter().map(|r| {
            (
                format!("report:{}", r.name),
                r.schedule.clone(),
                r.zone.clone(),
            )
        }))
        .collect();
    for (name, s, zone) in schedules {
        if let Some(at) = s.due_in(now, grace, &zone) {
            match state.store.claim_schedule_run(&name, at, "").await {
                Ok(true) => due_any = true,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "notification schedule claim failed"),
            }
        }
    }
    if due_any && let Err(e) = run_at(state, now).await {
        tracing::warn!(error = %e.message, "notification run failed");
    }
    if let Err(e) = deliver_due(state, now).await {
        tracing::warn!(error = %e.message, "delivery pass failed");
    }
    if let Err(e) = work_tickets(state, now).await {
        tracing::warn!(error = %e.message, "ticket pass failed");
    }
}

// ---------------------------------------------------------------------------------
// API

#[derive(Deserialize)]
pub struct PreviewQuery {
    at: Option<String>,
    certificate: Option<String>,
}

fn parse_at(s: &str) -> Result<OffsetDateTime, ApiError> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let d = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
        .map_err(|_| {
            ApiError::bad_request(
                "invalid_request",
                format!("at {s:?}: expected YYYY-MM-DD or an RFC 3339 time"),
            )
        })?;
    Ok(d.with_hms(9, 0, 0).expect("valid").assume_utc())
}

/// `GET /api/v1/notifications/preview?at=&certificate=`
pub async fn preview_route(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<PreviewQuery>,
) -> Result<Json<Value>, ApiError> {
    let at = match q.at.as_deref() {
        Some(s) => parse_at(s)?,
        None => OffsetDateTime::now_utc(),
    };
    Ok(Json(preview(&state, at, q.certificate.as_deref()).await?))
}

/// `POST /api/v1/notifications/run`: run now, then deliver and work the tickets.
pub async fn run_route(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let summary = run_at(&state, now).await?;
    let (sent, retried, failed) = deliver_due(&state, now).await?;
    let (done, t_retried, t_failed) = work_tickets(&state, now).await?;
    Ok(Json(json!({
        "run": summary,
        "deliveries": {"sent": sent, "will_retry": retried, "failed": failed},
        "tickets": {"done": done, "will_retry": t_retried, "failed": t_failed},
    })))
}

#[derive(Deserialize)]
pub struct TestRequest {
    channel: String,
    /// For e-mail: where to (default: the `[email] to` list).
    to: Option<String>,
}

/// `POST /api/v1/notifications/test`: send a test message through a channel now,
/// logged as a delivery.
pub async fn test_route(
    State(state): State<AppState>,
    _caller: Caller,
    Json(req): Json<TestRequest>,
) -> Result<Json<Value>, ApiError> {
    let ch: Channel = req
        .channel
        .parse()
        .map_err(|e: String| ApiError::bad_request("unknown_channel", e))?;
    let now = OffsetDateTime::now_utc();
    let settings = &state.config.notify;
    let rs = match (&req.to, ch) {
        (Some(to), Channel::Email) => vec![to.clone()],
        _ => recipients(settings, ch, &[]),
    };
    if rs.is_empty() {
        return Err(ApiError::bad_request(
            "channel_not_configured",
            format!("the {ch} channel is not configured"),
        ));
    }
    let mut results = Vec::new();
    for r in rs {
        let d = NewDelivery {
            id: uuid(),
            policy: "test".into(),
            channel: ch.as_str().into(),
            recipient: r.clone(),
        };
        let payload = serde_json::to_string(&Payload {
            kind: "test".into(),
            policy: "test".into(),
            period: now,
            items: Vec::new(),
        })
        .expect("serialises");
        state
            .store
            .enqueue_delivery(&d, &[format!("test|{}", d.id)], now, |_| payload)
            .await?;
        let lease = uuid();
        // Claim exactly this one: the test must not send other queued work.
        let row = state.store.claim_delivery(&d.id, &lease, now, 60).await?;
        let outcome = match send_delivery(&state, &row, now).await {
            Ok(()) => DeliveryOutcome::Sent,
            Err(e) => DeliveryOutcome::Failed {
                error: e.to_string(),
            },
        };
        state
            .store
            .finish_delivery(&d.id, &lease, &outcome, now)
            .await?;
        results.push(json!({
            "delivery": d.id,
            "recipient": r,
            "outcome": match &outcome { DeliveryOutcome::Sent => "sent", _ => "failed" },
            "error": match &outcome { DeliveryOutcome::Failed { error } => Some(error.clone()), _ => None },
        }));
    }
    let ok = results.iter().all(|r| r["outcome"] == "sent");
    let body = json!({"channel": ch.as_str(), "ok": ok, "results": results});
    if ok {
        Ok(Json(body))
    } else {
        Err(ApiError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "delivery_failed",
            results
                .iter()
                .filter_map(|r| r["error"].as_str())
                .collect::<Vec<_>>()
                .join("; "),
        )
        .with("results", body["results"].clone()))
    }
}

#[derive(Deserialize)]
pub struct DeliveriesQuery {
    state: Option<String>,
    limit: Option<u32>,
}

fn delivery_view(d: &DeliveryRow) -> Value {
    let items = serde_json::from_str::<Payload>(&d.payload)
        .map(|p| json!({"kind": p.kind, "certificates": p.items.iter().map(|i| json!({"sha256": i.sha256, "name": i.name, "stage": i.stage.to_string()})).collect::<Vec<_>>()}))
        .unwrap_or(Value::Null);
    json!({
        "id": d.id,
        "policy": d.policy,
        "channel": d.channel,
        "recipient": d.recipient,
        "state": d.state,
        "attempts": d.attempts,
        "next_attempt_at": (d.state == "pending").then(|| rfc3339(d.run_after)),
        "last_error": d.last_error,
        "created_at": rfc3339(d.created_at),
        "sent_at": d.sent_at.map(rfc3339),
        "content": items,
    })
}

/// `GET /api/v1/notifications/deliveries`
pub async fn list_deliveries(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = i64::from(q.limit.unwrap_or(100).min(state.config.max_page_size));
    let rows = state.store.deliveries(q.state.as_deref(), limit).await?;
    Ok(Json(
        json!({"items": rows.iter().map(delivery_view).collect::<Vec<_>>(), "next_cursor": null}),
    ))
}

/// `GET /api/v1/notifications/deliveries/{id}`: a delivery with every attempt.
pub async fn show_delivery(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let d = state.store.delivery(&id).await?;
    let attempts = state.store.delivery_attempts(&id).await?;
    let mut v = delivery_view(&d);
    v["attempts_log"] = json!(attempts
        .iter()
        .map(|a| json!({"attempt": a.attempt, "at": rfc3339(a.at), "outcome": a.outcome, "error": a.error}))
        .collect::<Vec<_>>());
    Ok(Json(v))
}

#[derive(Deserialize)]
pub struct TicketsQuery {
    system: Option<String>,
    kind: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/v1/tickets`: the local records with their last known status.
pub async fn list_tickets(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<TicketsQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = i64::from(q.limit.unwrap_or(100).min(state.config.max_page_size));
    let rows = state
        .store
        .tickets(q.system.as_deref(), q.kind.as_deref(), limit)
        .await?;
    let mut items = Vec::new();
    for t in rows {
        let work = state.store.ticket_work_state(&t.system, &t.key).await?;
        items.push(json!({
            "system": t.system,
            "key": t.key,
            "kind": t.kind,
            "key_text": t.key_text,
            "ticket_number": t.number,
            "ticket_id": t.ticket_id,
            "status": t.status,
            "raw_status": t.raw_status,
            "priority": t.priority,
            "ip": t.ip,
            "serial": t.serial,
            "domain": t.domain,
            "sha256": t.sha256,
            "last_action": t.last_action,
            "created_at": rfc3339(t.created_at),
            "updated_at": rfc3339(t.updated_at),
            "pending_work": work.map(|(s, a, e)| json!({"state": s, "attempts": a, "last_error": e})),
        }));
    }
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

/// `POST /api/v1/ticketing/{system}/test`: check URL and credentials, create nothing.
pub async fn test_ticketing(
    State(state): State<AppState>,
    _caller: Caller,
    Path(system): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let sys = state
        .config
        .notify
        .system(&system)
        .ok_or_else(|| ApiError::not_found(&format!("ticketing system {system:?}")))?;
    match sys.connector.test_connection().await {
        Ok(()) => Ok(Json(json!({"system": system, "ok": true}))),
        Err(e) => Err(ApiError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "ticketing_unreachable",
            e.to_string(),
        )
        .with("system", json!(system))
        .with("reason", json!(e.code()))),
    }
}

#[derive(Deserialize)]
pub struct MetaRequest {
    owner: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    retired: bool,
}

/// `PUT /api/v1/certificates/{sha256}/meta`: owner, tags, retired.
pub async fn put_meta(
    State(state): State<AppState>,
    _caller: Caller,
    Path(sha): Path<String>,
    Json(req): Json<MetaRequest>,
) -> Result<Json<Value>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let old = state.store.certificate_meta(&sha).await?;
    let meta = certkeeper_store::CertMeta {
        owner: req.owner.filter(|o| !o.trim().is_empty()),
        tags: req.tags,
        retired_at: if req.retired {
            old.retired_at.or(Some(now))
        } else {
            None
        },
    };
    state
        .store
        .set_certificate_meta(&sha, &meta, now)
        .await
        .map_err(|e| match e {
            certkeeper_store::StoreError::NotFound => ApiError::not_found("certificate"),
            e => e.into(),
        })?;
    Ok(Json(json!({
        "sha256": sha,
        "owner": meta.owner,
        "tags": meta.tags,
        "retired": meta.retired_at.is_some(),
        "retired_at": meta.retired_at.map(rfc3339),
    })))
}
