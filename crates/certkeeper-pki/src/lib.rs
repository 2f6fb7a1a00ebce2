//! X.509 at the edge: DER in, [`certkeeper_core::CertificateFacts`] out; PEM handling;
//! and the server's self-signed certificate.

pub mod ca;
pub mod csr;
pub mod import;
pub mod keys;
pub mod parse;
pub mod selfsigned;
pub mod trust;
pub mod vault;

pub use parse::{ParseError, cert_spki_sha256, parse_der, pem_to_ders, sha256, to_pem};
