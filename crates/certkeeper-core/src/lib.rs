//! The certkeeper domain: certificate facts, scan targets, agent reports and the
//! expiry rules. Pure code: no runtime, no database, no network. Time is always
//! passed in by the caller.

pub mod access;
pub mod cert;
pub mod deploy;
pub mod expiry;
pub mod findings;
pub mod inventory;
pub mod jobs;
pub mod notify;
pub mod policy;
pub mod report;
pub mod schedule;
pub mod target;
pub mod tickets;
pub mod watchlist;

pub use cert::{CertificateFacts, Fingerprint, KeyInfo, KeyType, Serial};
pub use report::{FailureKind, MAX_CERT_DER_BYTES, Observation, Outcome, ScanReport};
pub use target::{PortSet, TargetError};
pub use watchlist::Watchlist;
