//! Talking to the outside: certificate authorities over ACME (RFC 8555), and guarded
//! outbound fetches of CA-issuer certificates (AIA). E-mail, syslog, webhooks and
//! ticketing connectors belong here too (not yet written).

pub mod acme;
pub mod fetch;
pub mod rfc2136;
