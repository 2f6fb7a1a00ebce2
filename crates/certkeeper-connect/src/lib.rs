//! Talking to the outside: certificate authorities over ACME (RFC 8555), guarded
//! outbound fetches of CA-issuer certificates (AIA), the notification channels
//! (syslog RFC 5424, e-mail, webhooks) and the ticketing connectors.

pub mod acme;
pub mod fetch;
pub mod notify;
pub mod rfc2136;
pub mod syslog;
pub mod ticketing;
