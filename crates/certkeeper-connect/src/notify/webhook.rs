//! PLACEHOLDER (the channels branch replaces this file): webhooks.
#![allow(dead_code)]

use time::OffsetDateTime;

use super::ChannelError;

fn todo() -> ChannelError {
    ChannelError::Permanent {
        channel: "webhook",
        message: "not written yet".into(),
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: String,
}

pub struct WebhookEvent {
    pub event: String,
    pub key: String,
    pub subject: String,
    pub severity: String,
    pub occurred_at: OffsetDateTime,
    pub data: serde_json::Value,
}

pub async fn post_generic(
    _cfg: &WebhookConfig,
    _ev: &WebhookEvent,
    _idempotency_key: &str,
    _now: OffsetDateTime,
) -> Result<(), ChannelError> {
    Err(todo())
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct SlackConfig {
    pub url: String,
}

pub async fn post_slack(
    _cfg: &SlackConfig,
    _text: &str,
    _blocks: Option<serde_json::Value>,
) -> Result<(), ChannelError> {
    Err(todo())
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct PagerDutyConfig {
    pub routing_key: String,
    pub url: String,
}

pub enum PdAction {
    Trigger,
    Acknowledge,
    Resolve,
}

pub struct PdEvent {
    pub action: PdAction,
    pub dedup_key: String,
    pub summary: String,
    pub source: String,
    pub severity: String,
    pub timestamp: OffsetDateTime,
    pub class: String,
    pub custom_details: serde_json::Value,
    pub links: Vec<(String, String)>,
}

pub async fn post_pagerduty(_cfg: &PagerDutyConfig, _ev: &PdEvent) -> Result<(), ChannelError> {
    Err(todo())
}
