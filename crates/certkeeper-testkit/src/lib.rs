//! Test-only helpers: a throwaway PKI made with rcgen, and real TLS servers
//! (`openssl s_server`) on loopback ports.

pub mod bind;
pub mod db;
pub mod flawed;
pub mod jira_sim;
pub mod pebble;
pub mod peers;
pub mod pki;
pub mod revocation;
pub mod rt;
pub mod servers;

pub use pki::{Issued, KeyKind, LeafSpec, TestPki};
pub use servers::{
    IsolatedServer, NginxServer, OpensslServer, TlsliteServer, free_port, wait_for_port,
};
