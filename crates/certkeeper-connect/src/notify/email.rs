//! PLACEHOLDER (the channels branch replaces this file): e-mail over SMTP.
#![allow(dead_code)]

use std::path::PathBuf;

use super::ChannelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    StartTls,
    Implicit,
    None,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
    pub ca_file: Option<PathBuf>,
    pub timeout_secs: u64,
}

pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

pub struct Email {
    pub to: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
    pub attachment: Option<Attachment>,
    pub message_id: String,
    pub in_reply_to: Option<String>,
}

pub async fn send(_cfg: &SmtpConfig, _mail: &Email) -> Result<(), ChannelError> {
    Err(ChannelError::Permanent {
        channel: "email",
        message: "not written yet".into(),
    })
}

pub async fn test_connection(_cfg: &SmtpConfig) -> Result<(), ChannelError> {
    Err(ChannelError::Permanent {
        channel: "email",
        message: "not written yet".into(),
    })
}
