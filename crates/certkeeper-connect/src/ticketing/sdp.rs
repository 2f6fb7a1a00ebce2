//! PLACEHOLDER: being written (issue 4). The Sdp connector per
//! `shared/contracts/ticketing.md`.

use super::{NewTicket, Priority, RetryPolicy, TicketError, TicketRef};

const SYSTEM: &str = "servicedesk_plus";

/// Settings of the Sdp connector.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct SdpConfig {
    pub url: String,
}

/// The Sdp connector.
#[derive(Debug, Clone)]
pub struct Sdp {
    retry: RetryPolicy,
}

impl Sdp {
    pub fn new(_cfg: SdpConfig, retry: RetryPolicy) -> Result<Self, TicketError> {
        Ok(Sdp { retry })
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
