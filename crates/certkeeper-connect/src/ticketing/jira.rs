//! PLACEHOLDER: being written (issue 4). The Jira connector per
//! `shared/contracts/ticketing.md`.

use super::{NewTicket, Priority, RetryPolicy, TicketError, TicketRef};

const SYSTEM: &str = "jira";

/// Settings of the Jira connector.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct JiraConfig {
    pub url: String,
}

/// The Jira connector.
#[derive(Debug, Clone)]
pub struct Jira {
    retry: RetryPolicy,
}

impl Jira {
    pub fn new(_cfg: JiraConfig, retry: RetryPolicy) -> Result<Self, TicketError> {
        Ok(Jira { retry })
    }
    pub(super) fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }
    fn todo(&self) -> TicketError {
        TicketError::Config {
            system: SYSTEM,
            message: "not written yet".into(),
        }
    }
    pub async fn find_by_key(&self, _token: &str) -> Result<Vec<TicketRef>, TicketError> {
        Err(self.todo())
    }
    pub async fn create(&self, _t: &NewTicket<'_>) -> Result<TicketRef, TicketError> {
        Err(self.todo())
    }
    pub async fn add_note(&self, _id: &str, _text: &str) -> Result<(), TicketError> {
        Err(self.todo())
    }
    pub async fn reopen(&self, _id: &str, _note: &str) -> Result<(), TicketError> {
        Err(self.todo())
    }
    pub async fn set_priority(&self, _id: &str, _p: Priority) -> Result<(), TicketError> {
        Err(self.todo())
    }
    pub async fn resolve(&self, _id: &str, _note: &str) -> Result<(), TicketError> {
        Err(self.todo())
    }
    pub async fn test_connection(&self) -> Result<(), TicketError> {
        Err(self.todo())
    }
}
