//! Does a presented chain lead to a trusted root? OpenSSL's verifier against the
//! system roots plus the administrator's CAs, without checking times and at
//! authentication level 0, so that expiry and weak signatures are
//! left to findings of their own and only trust is judged here.

use certkeeper_core::findings::ChainTrust;
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509VerifyParam;
use openssl::x509::{X509, X509StoreContext};

/// Roots a scan trusts.
#[derive(Debug, Clone, Default)]
pub struct TrustRoots {
    /// Use the operating system's roots (OpenSSL's default paths).
    pub system: bool,
    /// CA certificates (DER) the administrator added.
    pub extra: Vec<Vec<u8>>,
}

/// Why trust could not be judged at all.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("the chain is empty")]
    Empty,
    #[error("undecodable certificate in the chain: {0}")]
    Decode(String),
    #[error("unusable trusted CA: {0}")]
    Root(String),
}

/// Judge `chain` (leaf first, as presented) against `roots`.
pub fn evaluate(chain: &[Vec<u8>], roots: &TrustRoots) -> Result<ChainTrust, TrustError> {
    let leaf_der = chain.first().ok_or(TrustError::Empty)?;
    let dec = |d: &[u8]| X509::from_der(d).map_err(|e| TrustError::Decode(e.to_string()));
    let leaf = dec(leaf_der)?;
    let mut rest = Stack::new().map_err(|e| TrustError::Decode(e.to_string()))?;
    for d in &chain[1..] {
        rest.push(dec(d)?)
            .map_err(|e| TrustError::Decode(e.to_string()))?;
    }
    let root_err = |e: openssl::error::ErrorStack| TrustError::Root(e.to_string());
    let mut store = X509StoreBuilder::new().map_err(root_err)?;
    if roots.system {
        store.set_default_paths().map_err(root_err)?;
    }
    for d in &roots.extra {
        store.add_cert(dec(d)?).map_err(root_err)?;
    }
    let facts = crate::parse_der(leaf_der).map_err(|e| TrustError::Decode(e.to_string()))?;
    let mut param = X509VerifyParam::new().map_err(root_err)?;
    // Expiry is a finding of its own: trust is judged without the clock.
    param
        .set_flags(openssl::x509::verify::X509VerifyFlags::NO_CHECK_TIME)
        .map_err(root_err)?;
    param.set_auth_level(0);
    store.set_param(&param).map_err(root_err)?;
    let store = store.build();
    let mut ctx = X509StoreContext::new().map_err(root_err)?;
    let (ok, code, why) = ctx
        .init(&store, &leaf, &rest, |c| {
            let ok = c.verify_cert()?;
            Ok((ok, c.error().as_raw(), c.error().error_string().to_string()))
        })
        .map_err(root_err)?;
    if ok {
        return Ok(ChainTrust::Trusted);
    }
    let top = match chain.last() {
        Some(d) if chain.len() > 1 => {
            crate::parse_der(d).map_err(|e| TrustError::Decode(e.to_string()))?
        }
        _ => facts,
    };
    Ok(match code {
        // X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
        18 => ChainTrust::SelfSigned,
        // X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
        19 => ChainTrust::Untrusted {
            reason: format!(
                "the chain ends at {}, a root that is not trusted",
                top.subject
            ),
        },
        // UNABLE_TO_GET_ISSUER_CERT(_LOCALLY), UNABLE_TO_VERIFY_LEAF_SIGNATURE. A chain
        // that ends at an intermediate is what servers send (roots are left out): its
        // issuer unknown here means an untrusted CA. A chain that ends at the leaf, or
        // at a certificate that is no CA, lacks its intermediate.
        2 | 20 | 21 if top.is_ca => ChainTrust::Untrusted {
            reason: format!("issued by {}, which is not a trusted root", top.issuer),
        },
        2 | 20 | 21 => ChainTrust::Incomplete {
            missing_issuer: top.issuer,
        },
        _ => ChainTrust::Untrusted { reason: why },
    })
}
