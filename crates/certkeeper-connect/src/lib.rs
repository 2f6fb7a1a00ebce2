//! Talking to the outside: certificate authorities over ACME (RFC 8555) so far.
//! E-mail, syslog, webhooks and ticketing connectors belong here too (not yet written).

pub mod acme;
pub mod rfc2136;
