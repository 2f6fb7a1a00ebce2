//! Talking to the outside: certificate authorities over ACME (RFC 8555), and guarded
//! outbound fetches of CA-issuer certificates (AIA), and syslog (RFC 5424). E-mail,
//! webhooks and ticketing connectors belong here too (not yet written).

pub mod acme;
pub mod fetch;
pub mod rfc2136;
pub mod syslog;
