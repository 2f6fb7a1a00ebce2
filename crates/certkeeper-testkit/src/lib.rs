//! Test-only helpers: a throwaway PKI made with rcgen, and real TLS servers
//! (`openssl s_server`) on loopback ports, a real SMTP server (aiosmtpd) and
//! in-process receivers for webhooks, Slack and PagerDuty.

pub mod ari_front;
pub mod bind;
pub mod db;
pub mod flawed;
pub mod hooks;
pub mod https;
pub mod jira_sim;
pub mod pebble;
pub mod peers;
pub mod pki;
pub mod revocation;
pub mod rsyslog;
pub mod rt;
pub mod sdp_sim;
pub mod servers;
pub mod servicenow_sim;
pub mod smtp;

pub use pki::{Issued, KeyKind, LeafSpec, TestPki};
pub use servers::{
    IsolatedServer, NginxServer, OpensslServer, TlsliteServer, free_port, wait_for_port,
};
