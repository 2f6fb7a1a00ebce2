//! Notification channels besides syslog: e-mail over SMTP (`email`), the signed
//! generic webhook, Slack-compatible incoming webhooks and PagerDuty Events v2
//! (`webhook`). Each send either succeeds, or fails with a [`ChannelError`] that says
//! whether trying later can help; messages never carry a password, a secret or a
//! webhook URL (the URL of Slack and the routing key of PagerDuty are credentials).

pub mod email;
pub mod webhook;

use std::time::Duration;

/// Why a notification could not be delivered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChannelError {
    /// Worth another try later (connection refused, timeout, 429, 5xx, SMTP 4xx).
    #[error("{channel}: {message} (will retry)")]
    Transient {
        channel: &'static str,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Will fail again as it is (bad credentials, 4xx, SMTP 5xx, bad configuration).
    #[error("{channel}: {message}")]
    Permanent {
        channel: &'static str,
        message: String,
    },
}

impl ChannelError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ChannelError::Transient { .. })
    }
}
