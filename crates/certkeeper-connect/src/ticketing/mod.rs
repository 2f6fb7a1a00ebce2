//! Ticketing connectors: ServiceNow, ServiceDesk Plus, Jira and Request Tracker, as
//! `shared/contracts/ticketing.md` describes them. Every connector offers the same
//! operations ([`Connector`]); the decision of what to do (create, note, reopen) is
//! `certkeeper_core::tickets::decide`, made by the caller.
//!
//! The shared rules live here: the dedupe token, retries with backoff honouring
//! `Retry-After` ([`RetryPolicy`], [`send_retrying`]), and the create that is never
//! blindly retried ([`Connector::create_deduped`]: after an ambiguous failure the key
//! is looked up first). Credentials never reach an error message or a log line.

pub mod jira;
pub mod rt;
pub mod sdp;
pub mod servicenow;

use std::time::Duration;

pub use certkeeper_core::tickets::NormStatus;
use time::OffsetDateTime;

/// The stored search token of a canonical key text (`expiry|SERIAL|ip`,
/// `vuln|domain|ip`): `cm1-` and the first 32 hex digits of its SHA-256.
pub fn token(key_text: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_text.as_bytes());
    let hex: String = d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("cm1-{hex}")
}

/// A ticket found by its key (or just created).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRef {
    /// The system's id for API calls (ServiceNow sys_id, SDP id, Jira key, RT id).
    pub id: String,
    /// What people call it (INC0010001, SDP display id, OPS-12, RT #12).
    pub display_no: String,
    pub status: NormStatus,
    /// The system's own status name or code.
    pub raw_status: String,
    pub created: OffsetDateTime,
}

impl TicketRef {
    /// The form `certkeeper_core::tickets::decide` takes.
    pub fn to_core(&self) -> certkeeper_core::tickets::TicketRef {
        certkeeper_core::tickets::TicketRef {
            id: self.id.clone(),
            display_no: self.display_no.clone(),
            status: self.status,
            created: self.created,
        }
    }
}

/// The priority asked for: High for a new ticket, Highest when escalated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    High,
    Highest,
}

/// A ticket to open.
#[derive(Debug, Clone)]
pub struct NewTicket<'a> {
    pub subject: &'a str,
    pub body: &'a str,
    pub priority: Priority,
    /// The dedupe token ([`token`]).
    pub key: &'a str,
}

/// Why a ticketing call failed. Messages name the system and what it said, never a
/// credential.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TicketError {
    /// The system refuses this move (a reopen of a closed ticket, say).
    #[error("{system} does not allow this: {message}")]
    NotAllowed {
        system: &'static str,
        message: String,
    },
    /// The credentials were refused (401, or 403 for a missing role).
    #[error("{system} refused the credentials: {message}")]
    Auth {
        system: &'static str,
        message: String,
    },
    /// A request the system rejected (400, 403 data policy, 404 …): retrying will
    /// not help.
    #[error("{system} rejected the request (HTTP {status}): {message}")]
    Rejected {
        system: &'static str,
        status: u16,
        message: String,
    },
    /// Down, rate limited or failing (429, 5xx, connect errors) after the tries the
    /// policy allows: try again later.
    #[error("{system} is unavailable: {message}")]
    Unavailable {
        system: &'static str,
        message: String,
        retry_after: Option<Duration>,
    },
    /// No answer in time: a write may or may not have happened.
    #[error("{system} did not answer in time")]
    Timeout { system: &'static str },
    /// An answer that does not follow the system's API.
    #[error("{system} answered unexpectedly: {message}")]
    Protocol {
        system: &'static str,
        message: String,
    },
    /// The configuration cannot work (bad URL, missing field).
    #[error("{system} configuration: {message}")]
    Config {
        system: &'static str,
        message: String,
    },
}

impl TicketError {
    /// Worth trying again later (the job is retried with backoff).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TicketError::Unavailable { .. } | TicketError::Timeout { .. }
        )
    }

    /// A write whose outcome is unknown: look before writing again.
    pub fn is_ambiguous(&self) -> bool {
        matches!(
            self,
            TicketError::Timeout { .. } | TicketError::Unavailable { .. }
        )
    }

    /// A stable snake_case code for APIs and the delivery log.
    pub fn code(&self) -> &'static str {
        match self {
            TicketError::NotAllowed { .. } => "not_allowed",
            TicketError::Auth { .. } => "auth_failed",
            TicketError::Rejected { .. } => "rejected",
            TicketError::Unavailable { .. } => "unavailable",
            TicketError::Timeout { .. } => "timeout",
            TicketError::Protocol { .. } => "protocol",
            TicketError::Config { .. } => "config",
        }
    }

    /// When the system said to come back (Retry-After), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TicketError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Retries inside one call: on 429, 502, 503, 504 and connect errors, honouring
/// `Retry-After`, else exponential backoff with jitter from `base` up to `cap`, at
/// most `tries` attempts (the contract's 1 s, 60 s, 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub tries: u32,
    pub base: Duration,
    pub cap: Duration,
    /// Longest Retry-After waited for inside a call; a longer one ends the call with
    /// `Unavailable { retry_after }` and the job comes back later.
    pub max_wait: Duration,
    /// How long one request may take.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            tries: 5,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            max_wait: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `n` (1-based, after `n` failures), without jitter above it.
    pub fn backoff(&self, failures: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        let d = exp.min(self.cap);
        // Full jitter over the upper half keeps replicas apart and never waits less
        // than half the step.
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let jitter = jitter_u64() % (nanos / 2 + 1);
        Duration::from_nanos(nanos / 2 + jitter)
    }
}

fn jitter_u64() -> u64 {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).ok();
    u64::from_le_bytes(b)
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(v: &str, now: OffsetDateTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    Some(Duration::try_from(at - now).unwrap_or(Duration::ZERO))
}

/// Send an idempotent request (find, note, status change) with the retry policy.
/// `build` makes a fresh request for each attempt. 2xx and 4xx answers are returned
/// to the caller (which maps them); 429/502/503/504, connect errors and timeouts are
/// retried, and after the last try become `Unavailable` or `Timeout`.
pub async fn send_retrying(
    system: &'static str,
    policy: &RetryPolicy,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, TicketError> {
    let mut failures = 0u32;
    loop {
        let err = match send_once(system, policy, build()).await {
            Ok(resp) => return Ok(resp),
            Err(e) if e.is_transient() => e,
            Err(e) => return Err(e),
        };
        failures += 1;
        if failures >= policy.tries {
            return Err(err);
        }
        let wait = match err.retry_after() {
            Some(d) if d > policy.max_wait => return Err(err),
            Some(d) => d,
            None => policy.backoff(failures),
        };
        tracing::debug!(system, code = err.code(), ?wait, "retrying");
        tokio::time::sleep(wait).await;
    }
}

/// One attempt: 429/502/503/504 and connect errors become `Unavailable` (with the
/// `Retry-After` of the answer), a timeout `Timeout`; any other answer is returned.
pub async fn send_once(
    system: &'static str,
    policy: &RetryPolicy,
    req: reqwest::RequestBuilder,
) -> Result<reqwest::Response, TicketError> {
    match req.timeout(policy.timeout).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            if matches!(status, 429 | 502 | 503 | 504) {
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, OffsetDateTime::now_utc()));
                return Err(TicketError::Unavailable {
                    system,
                    message: format!("HTTP {status}"),
                    retry_after,
                });
            }
            Ok(resp)
        }
        Err(e) if e.is_timeout() => Err(TicketError::Timeout { system }),
        Err(e) => Err(TicketError::Unavailable {
            system,
            // reqwest's message can hold the URL; ours never holds credentials, and
            // connectors keep them in headers, not URLs.
            message: describe_transport_error(&e),
            retry_after: None,
        }),
    }
}

/// A transport error in words, without the URL (which may carry a token for some
/// systems).
pub fn describe_transport_error(e: &reqwest::Error) -> String {
    let mut s = if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// One configured ticketing system.
#[derive(Debug, Clone)]
pub enum Connector {
    ServiceNow(servicenow::ServiceNow),
    Sdp(sdp::Sdp),
    Jira(jira::Jira),
    Rt(rt::Rt),
}

macro_rules! dispatch {
    ($self:ident, $c:ident => $e:expr) => {
        match $self {
            Connector::ServiceNow($c) => $e,
            Connector::Sdp($c) => $e,
            Connector::Jira($c) => $e,
            Connector::Rt($c) => $e,
        }
    };
}

impl Connector {
    /// `servicenow`, `servicedesk_plus`, `jira` or `rt`: the name in settings and records.
    pub fn system(&self) -> &'static str {
        match self {
            Connector::ServiceNow(_) => "servicenow",
            Connector::Sdp(_) => "servicedesk_plus",
            Connector::Jira(_) => "jira",
            Connector::Rt(_) => "rt",
        }
    }

    /// Tickets carrying `token`, post-filtered so the stored key equals it.
    pub async fn find_by_key(&self, token: &str) -> Result<Vec<TicketRef>, TicketError> {
        dispatch!(self, c => c.find_by_key(token).await)
    }

    /// One create attempt, never retried by itself (see [`Connector::create_deduped`]).
    pub async fn create(&self, t: &NewTicket<'_>) -> Result<TicketRef, TicketError> {
        dispatch!(self, c => c.create(t).await)
    }

    /// Add an internal note (ServiceNow work notes, SDP note, Jira comment, RT comment).
    pub async fn add_note(&self, id: &str, text: &str) -> Result<(), TicketError> {
        dispatch!(self, c => c.add_note(id, text).await)
    }

    /// Reopen a terminal ticket with a note; `NotAllowed` when the system refuses.
    pub async fn reopen(&self, id: &str, note: &str) -> Result<(), TicketError> {
        dispatch!(self, c => c.reopen(id, note).await)
    }

    /// Change the priority (escalation to Highest).
    pub async fn set_priority(&self, id: &str, p: Priority) -> Result<(), TicketError> {
        dispatch!(self, c => c.set_priority(id, p).await)
    }

    /// Resolve with a note (the certificate was renewed), where the system allows it.
    pub async fn resolve(&self, id: &str, note: &str) -> Result<(), TicketError> {
        dispatch!(self, c => c.resolve(id, note).await)
    }

    /// Check URL and credentials without creating anything.
    pub async fn test_connection(&self) -> Result<(), TicketError> {
        dispatch!(self, c => c.test_connection().await)
    }

    fn retry(&self) -> &RetryPolicy {
        dispatch!(self, c => c.retry_policy())
    }

    /// Create a ticket exactly once: an ambiguous failure (timeout, 5xx, connection
    /// lost) is followed by a look-up of the key before any new attempt, and a ticket
    /// found that way is the result. After a create, the key is queried again; when
    /// two active tickets share it, the oldest is the one returned.
    pub async fn create_deduped(&self, t: &NewTicket<'_>) -> Result<TicketRef, TicketError> {
        let policy = *self.retry();
        let mut failures = 0u32;
        loop {
            match self.create(t).await {
                Ok(created) => {
                    // A twin made by a race elsewhere: the oldest active one wins.
                    if let Ok(found) = self.find_by_key(t.key).await
                        && let Some(oldest) = found
                            .into_iter()
                            .filter(|r| r.status == NormStatus::Active)
                            .min_by_key(|r| (r.created, r.id.clone()))
                    {
                        return Ok(oldest);
                    }
                    return Ok(created);
                }
                Err(e) if e.is_ambiguous() => {
                    failures += 1;
                    let found = self.find_by_key(t.key).await?;
                    if let Some(existing) = found
                        .into_iter()
                        .filter(|r| r.status == NormStatus::Active)
                        .min_by_key(|r| (r.created, r.id.clone()))
                    {
                        tracing::info!(
                            system = self.system(),
                            ticket = %existing.display_no,
                            "a create that failed had gone through"
                        );
                        return Ok(existing);
                    }
                    if failures >= policy.tries {
                        return Err(e);
                    }
                    let wait = match e.retry_after() {
                        Some(d) if d > policy.max_wait => return Err(e),
                        Some(d) => d,
                        None => policy.backoff(failures),
                    };
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_cm1_and_32_hex_of_sha256() {
        // SHA-256("expiry|0A1B|192.0.2.10"), first 16 bytes, checked with sha256sum.
        let t = token("expiry|0A1B|192.0.2.10");
        assert!(t.starts_with("cm1-"));
        assert_eq!(t.len(), 36);
        assert!(
            t[4..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(t, token("expiry|0A1B|192.0.2.11"));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = time::macros::datetime!(2026-12-02 10:00:00 UTC);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 02 Dec 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn backoff_grows_to_the_cap() {
        let p = RetryPolicy::default();
        for n in 1..10 {
            let d = p.backoff(n);
            let step = (p.base * (1 << (n - 1))).min(p.cap);
            assert!(d >= step / 2 && d <= step, "{n}: {d:?} vs {step:?}");
        }
    }
}
